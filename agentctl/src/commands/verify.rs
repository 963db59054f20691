//! `agentctl verify`: one image against the trust policy.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::verify::{Requirements, Verifier, VerifyError};
use controlplane::verify_blob::{self, Blob, BlobError, Signer};
use std::path::{Path, PathBuf};

/// A verification refusal is a policy refusal (exit 4), with its own message and hint; a
/// registry outage is a retryable failure (exit 1); a bad reference is bad input (exit 2).
pub fn refusal(e: VerifyError) -> Failure {
    let hint = e.hint();
    let code = match &e {
        VerifyError::BadReference(..) => Code::Invalid,
        e if e.is_outage() => Code::Failed,
        _ => Code::Refused,
    };
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
    // The layers too, as `release add` would scan them for the service of this
    // repository (its platform and `[[contents.allow]]`), or for linux/amd64 and no
    // allowances when no service has it.
    let service = ctx.set.service_of(&verified.image.repository);
    let platform = service.map(|s| s.platform.clone()).unwrap_or_default();
    let allow = service.map(|s| s.contents_allow.clone()).unwrap_or_default();
    let (scan, _) = controlplane::catalog::scan_layers(&ctx.registry, &verified, &platform, &allow)
        .await
        .map_err(catalog_failure)?;
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
    text.push_str(&format!("\n  contents {}", scan.summary()));
    text.push_str(&format!("\n  registry round trips: {}", ctx.registry.round_trips()));
    Ok(Report::new(
        text,
        serde_json::json!({ "verified": verified, "contents": scan, "round_trips": ctx.registry.round_trips() }),
    ))
}

/// `--certificate-identity[-regexp]` and `--certificate-oidc-issuer`, as given.
pub struct Identity {
    pub exact: Option<String>,
    pub regexp: Option<String>,
    pub issuer: Option<String>,
}

/// `verify-blob`: offline, no manifests needed.
pub fn blob(
    artifact: &str,
    bundle: &Path,
    key: Option<PathBuf>,
    identity: Identity,
    trusted_root: Option<&Path>,
) -> Result<Report, Failure> {
    use controlplane::manifest::SubjectMatch;
    let invalid = |m: String| Failure::new(Code::Invalid, anyhow::anyhow!(m));
    let signer = match (key, identity.exact, identity.regexp, identity.issuer) {
        (Some(k), None, None, None) => Signer::Key(k),
        (None, Some(s), None, Some(issuer)) => Signer::Identity { issuer, subject: SubjectMatch::Exact(s) },
        (None, None, Some(r), Some(issuer)) => {
            let subject = SubjectMatch::anchored(&r)
                .map_err(|e| invalid(format!("--certificate-identity-regexp `{r}`: {e}")))?;
            Signer::Identity { issuer, subject }
        }
        _ => {
            return Err(invalid(
                "say who must have signed: `--key KEY.pub`, or `--certificate-identity[-regexp]` with `--certificate-oidc-issuer`".into(),
            )
            .hint("as `cosign verify-blob` is given"))
        }
    };
    let who = verify_blob::verify_blob(bundle, &Blob::parse(artifact), &signer, trusted_root).map_err(|e| {
        let code = match e {
            BlobError::Refused(_) => Code::Refused,
            _ => Code::Invalid,
        };
        Failure::new(code, e)
    })?;
    let text = format!("verified `{artifact}`\n  signed by {who}\n  bundle {}", bundle.display());
    Ok(Report::new(text, serde_json::json!({ "verified": artifact, "signer": who })))
}

/// How a catalog error ends the command: a refusal by policy (exit 4), an outage or a
/// store failure (exit 1), or bad input (exit 2).
pub fn catalog_failure(e: controlplane::catalog::CatalogError) -> Failure {
    let code = match &e {
        controlplane::catalog::CatalogError::Verify(_) => None,
        controlplane::catalog::CatalogError::Scan(s) if s.is_outage() => Some(Code::Failed),
        controlplane::catalog::CatalogError::EvidenceMismatch { .. }
        | controlplane::catalog::CatalogError::SecretsInImage { .. }
        | controlplane::catalog::CatalogError::Scan(_) => Some(Code::Refused),
        controlplane::catalog::CatalogError::Store(_) => Some(Code::Failed),
        _ => Some(Code::Invalid),
    };
    match (e, code) {
        (controlplane::catalog::CatalogError::Verify(v), _) => refusal(v),
        (other, code) => {
            let hint = other.hint();
            let mut f = Failure::new(code.unwrap_or(Code::Invalid), other);
            f.hint = hint;
            f
        }
    }
}
