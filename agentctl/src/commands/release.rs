//! `agentctl release add | list`.

use super::context::Context;
use super::verify::refusal;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::image::{ImageRef, PinnedImage};
use controlplane::names::ServiceName;
use controlplane::store::{ReleaseRecord, Store as _};
use controlplane::verify::{Requirements, Verifier};

fn invalid(msg: String, hint: &str) -> Failure {
    Failure::new(Code::Invalid, anyhow::anyhow!(msg)).hint(hint.to_owned())
}

pub struct AddArgs<'a> {
    pub service: &'a str,
    pub image: &'a str,
    pub commit: &'a str,
    pub provenance: Option<&'a str>,
    pub sbom: Option<&'a str>,
}

pub async fn add(g: &Globals, a: AddArgs<'_>) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let name = ServiceName::new(a.service).map_err(|e| Failure::new(Code::Invalid, e))?;
    let service = ctx.set.service(&name).ok_or_else(|| {
        let known: Vec<_> = ctx.set.services.keys().map(ToString::to_string).collect();
        invalid(format!("no service `{name}` in the manifests"), &format!("known services: {}", known.join(", ")))
    })?;
    let commit_ok = (7..=64).contains(&a.commit.len())
        && a.commit.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !commit_ok {
        return Err(invalid(
            format!("`{}` is not a source commit", a.commit),
            "give the full lower-case hex commit id, e.g. `--commit $(git rev-parse HEAD)`",
        ));
    }
    if let Ok(ImageRef::Pinned(PinnedImage { repository, .. })) = ImageRef::parse(a.image) {
        if repository != service.repository {
            return Err(invalid(
                format!("`{}` is not in service `{name}`'s repository `{}`", a.image, service.repository),
                "release the image the service's manifest names",
            ));
        }
    }
    let verifier =
        Verifier { registry: &ctx.registry, keys: ctx.trusted_keys(&[])?, builders: ctx.set.trust.builders.clone() };
    let req =
        Requirements { provenance: a.provenance.is_some(), sbom: a.sbom.is_some(), commit: Some(a.commit.to_owned()) };
    let verified = verifier.verify(a.image, &req).await.map_err(refusal)?;
    for (asked, found, what) in [(a.provenance, verified.provenance(), "provenance"), (a.sbom, verified.sbom(), "SBOM")]
    {
        if let (Some(asked), Some(found)) = (asked, found) {
            if asked != found.layer {
                return Err(Failure::new(
                    Code::Refused,
                    anyhow::anyhow!("the {what} attestation that verifies is `{}`, not `{asked}`", found.layer),
                ));
            }
        }
    }
    let record = ReleaseRecord {
        service: name.to_string(),
        digest: verified.image.digest.to_string(),
        repository: verified.image.repository.to_string(),
        source_commit: a.commit.to_owned(),
        signer_key_id: verified.signature.key_id.clone(),
        provenance: verified.provenance().map(|p| p.layer.clone()),
        sbom: verified.sbom().map(|p| p.layer.clone()),
        evidence: serde_json::to_string(&verified)?,
        added_at: chrono::Utc::now(),
        added_by: ctx.operator(),
    };
    ctx.store().await?.put_release(&record).await?;
    let text = format!(
        "recorded release of `{name}`: {}\n  commit {}\n  signed by {}\n  provenance {}\n  sbom {}",
        verified.image,
        record.source_commit,
        record.signer_key_id,
        record.provenance.as_deref().unwrap_or("none"),
        record.sbom.as_deref().unwrap_or("none")
    );
    Ok(Report::new(text, serde_json::to_value(&record)?))
}

pub async fn list(g: &Globals, service: &str) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let releases = match ctx.read_store().await? {
        Some(store) => store.releases(service).await?,
        None => Vec::new(),
    };
    let mut text = format!("{} release(s) of `{service}`", releases.len());
    for r in &releases {
        text.push_str(&format!(
            "\n  {}@{}  commit {}  added {} by {}",
            r.repository,
            r.digest,
            &r.source_commit,
            r.added_at.format("%Y-%m-%d %H:%M:%S"),
            r.added_by
        ));
    }
    Ok(Report::new(text, serde_json::to_value(&releases)?))
}
