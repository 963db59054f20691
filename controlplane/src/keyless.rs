//! Keyless signatures: a Sigstore bundle signed with a Fulcio-style certificate is
//! verified, offline, against the trust policy's `trusted_root.json` by the maintained
//! `sigstore-verify` crate (certificate chain at the log-proven signing time, inclusion
//! proof and signed checkpoint, SET, RFC 3161 timestamps, SCTs where the root lists CT
//! logs), and then its identity — the certificate's OIDC issuer and subject — is matched
//! against the identities the policy allows. Why this crate: docs/SIGSTORE.md.
//!
//! Pure: no I/O; the bundle bytes come from the registry edge.

use crate::cosign::COSIGN_SIGN_PREDICATE;
use crate::image::PinnedImage;
use crate::manifest::{AllowedIdentity, KeylessPolicy};
use crate::untrusted::HostText;
use sigstore_verify::types::{Artifact, ArtifactDigest, Bundle, Sha256Hash};
use sigstore_verify::{Error as SigstoreError, VerificationPolicy};

/// The keyless half of the trust policy, prepared once per run.
pub struct Keyless {
    verifier: sigstore_verify::Verifier,
    identities: Vec<AllowedIdentity>,
    /// Whether the root lists CT logs: certificates' SCTs are checked only then.
    has_ct_logs: bool,
}

impl std::fmt::Debug for Keyless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyless").field("identities", &self.identities.len()).finish_non_exhaustive()
    }
}

/// Why a keyless trust policy cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{}` cannot be used as a Sigstore trusted root: {detail}", path.display())]
pub struct RootError {
    pub path: std::path::PathBuf,
    pub detail: String,
}

/// Who signed, as the certificate says (after it verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
}

impl Identity {
    /// How a release records who signed it (where a key signature records its key id).
    pub fn key_id(&self) -> String {
        format!("keyless:{} issuer={}", self.subject, self.issuer)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (issuer `{}`)", self.subject, self.issuer)
    }
}

/// Why a keyless bundle did not prove a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeylessProblem {
    /// Everything verified, but the identity is not one the policy allows.
    NotAllowed { found: Identity, allowed: Vec<String> },
    /// The certificate chain, the transparency evidence, the signing time or the
    /// signature did not verify: which, and why.
    Invalid { what: &'static str, detail: String },
    /// A valid signature for another image digest.
    OtherDigest,
}

impl Keyless {
    pub fn new(policy: &KeylessPolicy) -> Result<Self, RootError> {
        let err = |detail: String| RootError { path: policy.trusted_root.clone(), detail };
        let root = sigstore_verify::trust_root::TrustedRoot::from_json(&policy.trusted_root_json)
            .map_err(|e| err(e.to_string()))?;
        let has_ct_logs = !root.ctlogs.is_empty();
        let verifier = sigstore_verify::Verifier::new(&root).map_err(|e| err(e.to_string()))?;
        Ok(Self { verifier, identities: policy.identities.clone(), has_ct_logs })
    }

    /// Verifies `bundle` as a keyless signature of exactly `image` by an allowed identity:
    /// cosign 3's image-signature statement in DSSE, or a message signature over the image
    /// manifest (the crate checks its digest against the image's).
    pub fn verify_image(&self, image: &PinnedImage, bundle: &[u8]) -> Result<Identity, KeylessProblem> {
        let (found, predicate) = self.verify_statement(image, bundle)?;
        let dsse = serde_json::from_slice::<serde_json::Value>(bundle).is_ok_and(|b| b.get("dsseEnvelope").is_some());
        if dsse && predicate != COSIGN_SIGN_PREDICATE {
            return Err(KeylessProblem::Invalid {
                what: "statement",
                detail: format!("predicate type `{predicate}` is not an image signature"),
            });
        }
        Ok(found)
    }

    /// Verifies a keyless bundle about `image` (a DSSE statement naming it, or a message
    /// signature of it), and its identity; returns the identity and the statement's
    /// predicate type (empty for a message signature).
    pub fn verify_statement(&self, image: &PinnedImage, bundle: &[u8]) -> Result<(Identity, String), KeylessProblem> {
        let digest = Sha256Hash::from_hex(image.digest.hex()).map_err(|e| invalid("image digest", e.to_string()))?;
        let found = self.verify_artifact(Artifact::Digest(ArtifactDigest::sha256(digest)), bundle)?;
        let predicate = crate::cosign::dsse_predicate(bundle).unwrap_or_default();
        Ok((found, predicate))
    }

    /// Verifies `bundle` as a keyless signature of `artifact` (its bytes, or its SHA-256
    /// digest) by an allowed identity: what `cosign verify-blob --bundle` checks, and the
    /// path every image signature takes too.
    pub fn verify_artifact(&self, artifact: Artifact<'_>, bundle: &[u8]) -> Result<Identity, KeylessProblem> {
        let parsed = parse_bundle(bundle)?;
        // The identity is checked here, after the cryptography, so a refusal can name
        // both the identity found and those allowed.
        let mut policy = VerificationPolicy::any_identity();
        if !self.has_ct_logs {
            policy = policy.skip_sct();
        }
        let result = self.verifier.verify(artifact, &parsed, &policy).map_err(problem)?;
        let (Some(subject), Some(issuer)) = (result.identity(), result.issuer()) else {
            return Err(invalid("certificate", "it names no identity or no OIDC issuer".into()));
        };
        let found = Identity { issuer: issuer.to_owned(), subject: subject.as_str().to_owned() };
        if !self.identities.iter().any(|a| a.allows(&found.issuer, &found.subject)) {
            let allowed = self.identities.iter().map(ToString::to_string).collect();
            let shown = Identity {
                issuer: HostText::new(&found.issuer).to_string(),
                subject: HostText::new(&found.subject).to_string(),
            };
            return Err(KeylessProblem::NotAllowed { found: shown, allowed });
        }
        Ok(found)
    }
}

/// Verifies `bundle` as a signature of `artifact` by `public_key` (a keyed bundle, as
/// `cosign sign-blob --key … --bundle` writes): the signature with that key, and the
/// bundle's transparency-log entries and RFC 3161 timestamps against `root` when it holds
/// any (a bundle made offline has none; one that has them must prove them).
pub fn verify_with_key(
    root: &sigstore_verify::trust_root::TrustedRoot,
    public_key: sigstore_verify::types::DerPublicKey,
    artifact: Artifact<'_>,
    bundle: &[u8],
) -> Result<(), KeylessProblem> {
    let parsed = parse_bundle(bundle)?;
    let logged = serde_json::from_slice::<serde_json::Value>(bundle).is_ok_and(|b| {
        b.pointer("/verificationMaterial/tlogEntries").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty())
    });
    let mut policy = sigstore_verify::PublicKeyVerificationPolicy::new(public_key);
    if !logged {
        policy = policy.skip_tlog_unsafe();
    }
    let verifier = sigstore_verify::Verifier::new(root).map_err(|e| invalid("trusted root", e.to_string()))?;
    verifier.verify(artifact, &parsed, &policy).map_err(problem)?;
    Ok(())
}

/// What a bundle says is shown sanitized and bounded (it came from a registry or a file).
fn invalid(what: &'static str, detail: String) -> KeylessProblem {
    KeylessProblem::Invalid { what, detail: HostText::new(&detail).to_string() }
}

fn parse_bundle(bundle: &[u8]) -> Result<Bundle, KeylessProblem> {
    let text = std::str::from_utf8(bundle).map_err(|_| invalid("bundle", "not UTF-8".into()))?;
    Bundle::from_json(text).map_err(|e| invalid("bundle", e.to_string()))
}

fn problem(e: SigstoreError) -> KeylessProblem {
    match e {
        SigstoreError::ArtifactMismatch(_) => KeylessProblem::OtherDigest,
        SigstoreError::Certificate(c) => invalid("certificate chain", c.to_string()),
        SigstoreError::TransparencyLog(t) => invalid("transparency log evidence", t.to_string()),
        SigstoreError::Timestamp(t) => invalid("signing time", t.to_string()),
        SigstoreError::SignatureInvalid(s) => invalid("signature", s),
        other => invalid("bundle", other.to_string()),
    }
}
