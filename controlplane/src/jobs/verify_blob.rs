//! `verify-blob`: a Sigstore bundle for a file (or a SHA-256 digest), offline — what
//! `cosign verify-blob --bundle` checks, through the same verifier as image signatures
//! ([`crate::keyless`]): keyless against a trusted root and an allowed identity, or with a
//! public key (and the bundle's log entries and timestamps, when it has any, against the
//! trusted root).

use crate::keyless::{self, Keyless, KeylessProblem};
use crate::manifest::{AllowedIdentity, KeylessPolicy, SubjectMatch};
use sha2::Digest as _;
use sigstore_verify::types::{Artifact, ArtifactDigest, DerPublicKey, Sha256Hash};
use std::path::{Path, PathBuf};

/// The largest bundle read (a bundle is a few KiB; a file this size is not one).
const MAX_BUNDLE_BYTES: u64 = 4 << 20;

/// What signed it, as the request says it must be.
#[derive(Debug, Clone)]
pub enum Signer {
    /// A public key (PEM, `PUBLIC KEY`).
    Key(PathBuf),
    /// A keyless identity: the certificate's OIDC issuer, and its subject exactly or by an
    /// anchored regular expression.
    Identity { issuer: String, subject: SubjectMatch },
}

/// What was signed.
#[derive(Debug, Clone)]
pub enum Blob {
    /// A file, read to its end.
    File(PathBuf),
    /// `sha256:<64 hex>`: the file's digest, when the file itself is not at hand.
    Digest(String),
}

impl Blob {
    /// `sha256:<hex>` is a digest; anything else a path.
    pub fn parse(arg: &str) -> Self {
        match arg.strip_prefix("sha256:") {
            Some(hex) => Self::Digest(hex.to_owned()),
            None => Self::File(arg.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is larger than {MAX_BUNDLE_BYTES} bytes: not a Sigstore bundle", .0.display())]
    TooLarge(PathBuf),
    #[error("`sha256:{0}` is not a SHA-256 digest (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("`{}` is not a PEM public key: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error(transparent)]
    Root(#[from] keyless::RootError),
    #[error("a keyless bundle needs `--trusted-root` (a Sigstore trusted_root.json)")]
    NoRoot,
    /// The bundle did not verify (exit 4): which check failed, and why.
    #[error("the bundle does not verify: {0}")]
    Refused(String),
}

/// Verifies `bundle` for `blob` as signed by `signer`; `root` is the trusted root (required
/// for keyless; for a key, needed only when the bundle carries log entries or timestamps).
/// Returns who signed (`key` or the identity).
pub fn verify_blob(bundle: &Path, blob: &Blob, signer: &Signer, root: Option<&Path>) -> Result<String, BlobError> {
    let bundle_bytes = read_bounded(bundle)?;
    let (sha256, bytes): ([u8; 32], Option<Vec<u8>>) = match blob {
        Blob::Digest(hex) => {
            let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            let raw = hex::decode(hex).ok().filter(|_| ok).and_then(|v| <[u8; 32]>::try_from(v).ok());
            (raw.ok_or_else(|| BlobError::BadDigest(hex.clone()))?, None)
        }
        Blob::File(path) => {
            let b = std::fs::read(path).map_err(|source| BlobError::Read { path: path.clone(), source })?;
            (sha2::Sha256::digest(&b).into(), Some(b))
        }
    };
    let artifact = match &bytes {
        Some(b) => Artifact::Blob(b),
        None => Artifact::Digest(ArtifactDigest::sha256(Sha256Hash::new(sha256))),
    };
    let root_json = match root {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|source| BlobError::Read { path: p.into(), source })?),
        None => None,
    };
    let refused = |p: KeylessProblem| {
        BlobError::Refused(match p {
            KeylessProblem::NotAllowed { found, allowed } => {
                format!("signed by {found}, not by {}", allowed.join(", "))
            }
            KeylessProblem::Invalid { what, detail } => format!("{what}: {detail}"),
            KeylessProblem::OtherDigest => "it signs another artifact".into(),
        })
    };
    match signer {
        Signer::Identity { issuer, subject } => {
            let (root_path, json) = root.zip(root_json).ok_or(BlobError::NoRoot)?;
            let policy = KeylessPolicy {
                trusted_root: root_path.into(),
                trusted_root_json: json,
                identities: vec![AllowedIdentity { issuer: issuer.clone(), subject: subject.clone() }],
            };
            let found = Keyless::new(&policy)?.verify_artifact(artifact, &bundle_bytes).map_err(refused)?;
            Ok(found.to_string())
        }
        Signer::Key(path) => {
            let pem = std::fs::read_to_string(path).map_err(|source| BlobError::Read { path: path.clone(), source })?;
            let bad_key = |detail: String| BlobError::BadKey { path: path.clone(), detail };
            let key = DerPublicKey::from_pem(&pem).map_err(|e| bad_key(e.to_string()))?;
            if !has_evidence(&bundle_bytes) {
                // Made offline: nothing for a log or timestamp authority to prove; the
                // signature itself is checked, over the digest (any key type sigstore knows).
                use sigstore_verify::crypto::VerificationKey;
                use sigstore_verify::types::SignatureBytes;
                let vk = VerificationKey::from_spki(&key).map_err(|e| bad_key(e.to_string()))?;
                let check = |msg: &[u8], sig: &[u8], prehashed: bool| {
                    let sig = SignatureBytes::from_bytes(sig);
                    if prehashed {
                        vk.verify_prehashed(msg, &sig).is_ok()
                    } else {
                        vk.verify(msg, &sig).is_ok()
                    }
                };
                crate::cosign::evaluate_blob_bundle(&sha256, &bundle_bytes, check).map_err(|p| {
                    BlobError::Refused(match p {
                        crate::cosign::SignatureProblem::UntrustedKey => format!("not signed by `{}`", path.display()),
                        crate::cosign::SignatureProblem::OtherDigest { .. } => "it signs another artifact".into(),
                        crate::cosign::SignatureProblem::Malformed(d) => d,
                        other => format!("{other:?}"),
                    })
                })?;
                return Ok(format!("key `{}`", path.display()));
            }
            let json = root_json.unwrap_or_else(|| EMPTY_ROOT.to_owned());
            let trusted = sigstore_verify::trust_root::TrustedRoot::from_json(&json).map_err(|e| {
                keyless::RootError { path: root.map_or_else(PathBuf::new, Into::into), detail: e.to_string() }
            })?;
            keyless::verify_with_key(&trusted, key, artifact, &bundle_bytes).map_err(refused)?;
            Ok(format!("key `{}`", path.display()))
        }
    }
}

/// A trusted root that trusts nothing: a keyed bundle with log entries or timestamps
/// cannot prove them against it (and is refused), one without verifies by its key alone.
const EMPTY_ROOT: &str = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[],"certificateAuthorities":[],"ctlogs":[],"timestampAuthorities":[]}"#;

/// Whether the bundle carries transparency-log entries or RFC 3161 timestamps.
fn has_evidence(bundle: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bundle).is_ok_and(|b| {
        ["/verificationMaterial/tlogEntries", "/verificationMaterial/timestampVerificationData/rfc3161Timestamps"]
            .iter()
            .any(|p| b.pointer(p).and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty()))
    })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, BlobError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|source| BlobError::Read { path: path.into(), source })?;
    let mut out = Vec::new();
    f.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|source| BlobError::Read { path: path.into(), source })?;
    if out.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BlobError::TooLarge(path.into()));
    }
    Ok(out)
}
