//! `agentctl release add | list`.

use super::context::Context;
use super::verify::catalog_failure;
use crate::failure::Failure;
use crate::render::Report;
use crate::Globals;
use controlplane::catalog::{self, Registration};
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
        .map_err(catalog_failure)?;
    let text = describe(&record);
    Ok(Report::new(text, record_json(&record)?))
}

/// `release show SERVICE REF`: the recorded release REF names (id, digest, prefix or tag),
/// and the release ids it was applied as in each environment.
pub async fn show(g: &Globals, service: &str, reference: &str) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let store = super::deploy::store_for(&ctx, false).await?;
    let verifier = super::deploy::verifier(&ctx)?;
    let deployer = super::deploy::deployer(&ctx, &store, &verifier);
    let svc = deployer.service(service).map_err(super::deploy::failure)?;
    let record = deployer.resolve_release(svc, reference).await.map_err(super::deploy::failure)?;
    let mut text = describe(&record);
    let mut applied = Vec::new();
    for env in &ctx.set.environments {
        let mut ids: Vec<String> = Vec::new();
        for h in store.history(env.name.as_str(), service).await? {
            if ids.contains(&h.release_id) || h.release_id.is_empty() {
                continue;
            }
            let same = store.applied_release(env.name.as_str(), service, &h.release_id).await?;
            if same.is_some_and(|a| a.facts.digest == record.facts.digest) {
                ids.push(h.release_id);
            }
        }
        for id in ids {
            text.push_str(&format!("\n  applied to `{}` as {id}", env.name));
            applied.push(serde_json::json!({ "environment": env.name.to_string(), "release_id": id }));
        }
    }
    let mut json = record_json(&record)?;
    if let Some(o) = json.as_object_mut() {
        o.insert("applied".into(), serde_json::Value::Array(applied));
    }
    Ok(Report::new(text, json))
}

fn describe(record: &controlplane::store::ReleaseRecord) -> String {
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
    let contents =
        catalog::contents_of(&record.evidence).unwrap_or_else(|| "not scanned (recorded before layer scans)".into());
    let text = format!("{text}\n  contents {contents}");
    match &record.facts.platform_digest {
        Some(d) => format!("{text}\n  an image index: hosts run its manifest {d}"),
        None => text,
    }
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
        if let Some(c) = catalog::contents_of(&r.evidence) {
            text.push_str(&format!("\n    contents {c}"));
        }
    }
    let json: Vec<serde_json::Value> = releases.iter().map(record_json).collect::<Result<_, _>>()?;
    Ok(Report::new(text, serde_json::Value::Array(json)))
}

/// A release record as JSON all the way down: its evidence (stored as JSON text) is a
/// JSON value, not a string holding JSON.
fn record_json(r: &controlplane::store::ReleaseRecord) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(r)?;
    if let Some(obj) = v.as_object_mut() {
        let evidence =
            serde_json::from_str(&r.evidence).unwrap_or_else(|_| serde_json::Value::String(r.evidence.clone()));
        obj.insert("evidence".into(), evidence);
    }
    Ok(v)
}
