//! `agentctl sign` and `agentctl attest`: CI pushes signatures and attestations.

use super::context::{signing_key, Context};
use crate::cli::{PredicateType, SignatureFormat};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::cosign::PredicateKind;
use controlplane::image::{ImageRef, PinnedImage};
use controlplane::sign::{self, Pushed, SignError};
use std::path::Path;

fn pinned(reference: &str) -> Result<PinnedImage, Failure> {
    match ImageRef::parse(reference).map_err(|e| Failure::new(Code::Invalid, e))? {
        ImageRef::Pinned(p) => Ok(p),
        ImageRef::Tagged { repository, .. } => Err(Failure::new(
            Code::Refused,
            anyhow::anyhow!("refusing to sign `{reference}`: it is a tag, not a digest"),
        )
        .hint(format!("sign exactly what CI pushed: `{repository}@sha256:...`"))),
    }
}

fn failure(e: SignError) -> Failure {
    match e {
        SignError::ImageNotFound(_) => Failure::new(Code::Invalid, e),
        SignError::Registry(_) => {
            Failure::new(Code::Failed, e).hint("check that the registry is reachable; nothing was pushed")
        }
        SignError::LostUpdate { .. } => Failure::new(Code::Failed, e)
            .hint("the signature manifest was pushed but is not listed yet; run the same `sign` again"),
    }
}

fn report(what: &str, image: &PinnedImage, p: &Pushed) -> Report {
    let text = if p.added {
        format!("pushed {what} for `{image}` to `{}:{}` (layer {}, {} kept)", image.repository, p.tag, p.layer, p.kept)
    } else {
        format!("`{image}` already carries this {what} (`{}:{}`); nothing pushed", image.repository, p.tag)
    };
    Report::new(text, serde_json::json!({ "image": image.to_string(), "pushed": p }))
}

pub async fn sign(g: &Globals, image: &str, key: &Path, format: SignatureFormat) -> Result<Report, Failure> {
    let image = pinned(image)?;
    let key = signing_key(key)?;
    let ctx = Context::load(g)?;
    match format {
        SignatureFormat::Legacy => {
            let pushed = sign::sign(&ctx.registry, &image, &key).await.map_err(failure)?;
            Ok(report("signature", &image, &pushed))
        }
        SignatureFormat::Bundle => {
            let pushed = sign::sign_bundle(&ctx.registry, &image, &key).await.map_err(failure)?;
            Ok(report("Sigstore bundle signature (OCI referrer)", &image, &pushed))
        }
    }
}

pub async fn attest(
    g: &Globals,
    image: &str,
    predicate: &Path,
    kind: PredicateType,
    key: &Path,
    format: SignatureFormat,
) -> Result<Report, Failure> {
    let image = pinned(image)?;
    let text = std::fs::read_to_string(predicate).map_err(|e| {
        Failure::new(
            Code::Invalid,
            anyhow::Error::new(e).context(format!("cannot read predicate `{}`", predicate.display())),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            Code::Invalid,
            anyhow::anyhow!("`{}` is not JSON: line {}, column {}: {e}", predicate.display(), e.line(), e.column()),
        )
    })?;
    let kind = match kind {
        PredicateType::Slsaprovenance => PredicateKind::Slsaprovenance,
        PredicateType::Spdx => PredicateKind::Spdx,
        PredicateType::Cyclonedx => PredicateKind::Cyclonedx,
    };
    let key = signing_key(key)?;
    let ctx = Context::load(g)?;
    match format {
        SignatureFormat::Legacy => {
            let pushed = sign::attest(&ctx.registry, &image, kind, value, &key).await.map_err(failure)?;
            Ok(report("attestation", &image, &pushed))
        }
        SignatureFormat::Bundle => {
            let pushed = sign::attest_bundle(&ctx.registry, &image, kind, value, &key).await.map_err(failure)?;
            Ok(report("Sigstore bundle attestation (OCI referrer)", &image, &pushed))
        }
    }
}
