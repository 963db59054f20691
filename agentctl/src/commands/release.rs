//! `agentctl release add | list`.

use super::context::Context;
use super::verify::refusal;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::catalog::{self, CatalogError, Registration};
use controlplane::store::Store as _;
use controlplane::verify::Verifier;

pub async fn add(g: &Globals, r: Registration<'_>) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let operator = ctx.operator();
    let verifier = Verifier {
        registry: &ctx.registry,
        keys: ctx.trusted_keys(&[])?,
        builders: ctx.set.trust.builders.clone(),
        keyless: ctx.keyless()?,
    };
    let store = ctx.store().await?;
    let record = catalog::register(&ctx.set, &verifier, &store, &Registration { operator: &operator, ..r })
        .await
        .map_err(|e| match e {
            CatalogError::Verify(v) => refusal(v),
            CatalogError::EvidenceMismatch { .. } => Failure::new(Code::Refused, e),
            CatalogError::Store(_) => Failure::new(Code::Failed, e),
            other => Failure::new(Code::Invalid, other),
        })?;
    let format = controlplane::catalog::signature_of(&record.evidence);
    let text = format!(
        "recorded release of `{}`: {}@{}\n  commit {}\n  signed by {} ({format})\n  provenance {}\n  sbom {}",
        record.service,
        record.facts.repository,
        record.facts.digest,
        record.facts.source_commit,
        record.facts.signer_key_id,
        record.facts.provenance.as_deref().unwrap_or("none"),
        record.facts.sbom.as_deref().unwrap_or("none")
    );
    let text = match &record.facts.platform_digest {
        Some(d) => format!("{text}\n  an image index: hosts run its manifest {d}"),
        None => text,
    };
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
            "\n  {}@{}  commit {}  signed by {} ({})  added {} by {}",
            r.facts.repository,
            r.facts.digest,
            &r.facts.source_commit,
            r.facts.signer_key_id,
            controlplane::catalog::signature_of(&r.evidence),
            r.added_at.format("%Y-%m-%d %H:%M:%S"),
            r.added_by
        ));
        if let Some(d) = &r.facts.platform_digest {
            text.push_str(&format!("\n    an image index: hosts run its manifest {d}"));
        }
    }
    Ok(Report::new(text, serde_json::to_value(&releases)?))
}
