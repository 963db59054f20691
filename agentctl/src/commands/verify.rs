//! `agentctl verify`: one image against the trust policy.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::verify::{Requirements, Verifier, VerifyError};
use std::path::PathBuf;

/// Every verification refusal is a policy refusal (exit 4), with its own message and hint.
pub fn refusal(e: VerifyError) -> Failure {
    let hint = e.hint();
    let code = if matches!(e, VerifyError::BadReference(..)) { Code::Invalid } else { Code::Refused };
    let mut f = Failure::new(code, e);
    f.hint = hint;
    f
}

pub async fn run(g: &Globals, image: &str, keys: &[PathBuf]) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let verifier = Verifier {
        registry: &ctx.registry,
        keys: ctx.trusted_keys(keys)?,
        builders: ctx.set.trust.builders.clone(),
        keyless: ctx.keyless()?,
    };
    let verified = verifier.verify(image, &Requirements::default()).await.map_err(refusal)?;
    let mut text = format!(
        "verified `{}`\n  signed by {}\n  signature {} ({})",
        verified.image, verified.signature.key_id, verified.signature.layer, verified.signature.format
    );
    for a in &verified.attestations {
        text.push_str(&format!("\n  attestation {} ({})", a.layer, a.predicate_type));
        if let Some(c) = &a.commit {
            text.push_str(&format!(", source commit {c}"));
        }
    }
    text.push_str(&format!("\n  registry round trips: {}", ctx.registry.round_trips()));
    Ok(Report::new(text, serde_json::json!({ "verified": verified, "round_trips": ctx.registry.round_trips() })))
}
