//! The catalog of releases CI registered: a release is recorded only after it verified,
//! with the evidence, so it can be re-checked offline and re-verified before every use.

use crate::image::{ImageRef, PinnedImage};
use crate::manifest::ManifestSet;
use crate::names::ServiceName;
use crate::store::{ReleaseRecord, Store, StoreError};
use crate::verify::{Requirements, Verifier, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no service `{service}` in the manifests (known: {known})")]
    UnknownService { service: String, known: String },
    #[error(
        "`{0}` is not a source commit: expected 7 to 64 lower-case hex digits, e.g. `--commit $(git rev-parse HEAD)`"
    )]
    BadCommit(String),
    #[error("`{image}` is not in service `{service}`'s repository `{repository}`; release the image the service's manifest names")]
    OtherRepository { image: String, service: String, repository: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("the {what} attestation that verifies is `{found}`, not the expected `{expected}`")]
    EvidenceMismatch { what: &'static str, found: String, expected: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scan(#[from] crate::content_scan::ScanError),
    #[error("`{image}` holds {} secret value(s) in its layers: {}", findings.len(), findings.iter().map(|f| format!("`{}` in layer `{}` ({})", f.path, f.layer, f.kind)).collect::<Vec<_>>().join("; "))]
    SecretsInImage { image: String, findings: Vec<crate::contents::Finding> },
}

impl CatalogError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::SecretsInImage { .. } => Some("rebuild the image without the value (deleting it in a later layer leaves it in the image: use a multi-stage build or a build secret), rotate the credential, or, if it is not a secret, allow the path with a reason under `[[contents.allow]]` in the service's manifest".into()),
            Self::Scan(e) => e.hint(),
            Self::Verify(e) => e.hint(),
            _ => None,
        }
    }
}

/// Scans the layers of what hosts on `platform` run of `verified` (the platform's
/// manifest of an index, chosen from the verified index); a secret value in any layer —
/// a later layer's deletion does not remove it from the image — that `allow` does not
/// cover refuses it. Returns the scan and the platform manifest's digest (for an index).
pub async fn scan_layers(
    registry: &crate::registry::Registry,
    verified: &crate::verify::Verified,
    platform: &crate::platform::Platform,
    allow: &[crate::contents::Allowed],
) -> Result<(crate::contents::ContentScan, Option<crate::image::Digest>), CatalogError> {
    let platform_digest = verified.platform_digest(platform)?;
    let runs = platform_digest.clone().unwrap_or_else(|| verified.image.digest.clone());
    let scan = crate::content_scan::scan_image(registry, &verified.image, &runs, allow).await?;
    if !scan.clean() {
        return Err(CatalogError::SecretsInImage { image: verified.image.to_string(), findings: scan.findings });
    }
    Ok((scan, platform_digest))
}

/// The release's evidence: the verification (signature, attestations) and the scan of
/// its layers, as one JSON object.
fn evidence(verified: &crate::verify::Verified, scan: &crate::contents::ContentScan) -> String {
    let mut v = serde_json::to_value(verified).expect("evidence serializes");
    v["contents"] = serde_json::to_value(scan).expect("a scan serializes");
    v.to_string()
}

/// The scan summary a recorded release's evidence holds, if it was scanned.
pub fn contents_of(evidence: &str) -> Option<String> {
    crate::contents::ContentScan::from_evidence(evidence).map(|s| s.summary())
}

/// What CI says about a release.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub service: &'a str,
    pub image: &'a str,
    pub commit: &'a str,
    /// Attestation layer digests CI expects to verify, if it names them.
    pub provenance: Option<&'a str>,
    pub sbom: Option<&'a str>,
    pub operator: &'a str,
}

/// A lower-case hex commit id of 7 to 64 digits.
pub fn valid_commit(commit: &str) -> bool {
    (7..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Verifies `r` against the trust policy and records it with its evidence.
pub async fn register(
    set: &ManifestSet,
    verifier: &Verifier<'_>,
    store: &dyn Store,
    r: &Registration<'_>,
) -> Result<ReleaseRecord, CatalogError> {
    let service =
        ServiceName::new(r.service).ok().and_then(|n| set.service(&n)).ok_or_else(|| CatalogError::UnknownService {
            service: r.service.to_owned(),
            known: set.services.keys().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        })?;
    if !valid_commit(r.commit) {
        return Err(CatalogError::BadCommit(r.commit.to_owned()));
    }
    if let Ok(ImageRef::Pinned(PinnedImage { repository, .. })) = ImageRef::parse(r.image) {
        if repository != service.repository {
            return Err(CatalogError::OtherRepository {
                image: r.image.to_owned(),
                service: r.service.to_owned(),
                repository: service.repository.to_string(),
            });
        }
    }
    let req =
        Requirements { provenance: r.provenance.is_some(), sbom: r.sbom.is_some(), commit: Some(r.commit.to_owned()) };
    let verified = verifier.verify(r.image, &req).await?;
    for (expected, found, what) in
        [(r.provenance, verified.provenance(), "provenance"), (r.sbom, verified.sbom(), "SBOM")]
    {
        if let (Some(expected), Some(found)) = (expected, found) {
            if expected != found.layer {
                return Err(CatalogError::EvidenceMismatch {
                    what,
                    found: found.layer.clone(),
                    expected: expected.to_owned(),
                });
            }
        }
    }
    // An image index runs as its entry for the service's platform: chosen now, from the
    // index that verified, and recorded (an index without that platform is refused).
    let (scan, platform_digest) =
        scan_layers(verifier.registry, &verified, &service.platform, &service.contents_allow).await?;
    let record = ReleaseRecord {
        service: service.name.to_string(),
        facts: crate::release::ReleaseFacts {
            digest: verified.image.digest.to_string(),
            repository: verified.image.repository.to_string(),
            source_commit: r.commit.to_owned(),
            signer_key_id: verified.signature.key_id.clone(),
            provenance: verified.provenance().map(|p| p.layer.clone()),
            sbom: verified.sbom().map(|p| p.layer.clone()),
            signature: Some(verified.signature_summary()),
            platform_digest: platform_digest.map(|d| d.to_string()),
            contents: Some(scan.summary()),
        },
        evidence: evidence(&verified, &scan),
        added_at: chrono::Utc::now(),
        added_by: r.operator.to_owned(),
    };
    store.put_release(&record).await?;
    Ok(record)
}

/// The recorded release of `service` that `reference` names: `repo@sha256:...`,
/// `sha256:...` or a digest prefix.
pub async fn resolve(
    store: &dyn Store,
    service: &str,
    reference: &str,
) -> Result<ReleaseRecord, crate::deploy::DeployError> {
    use crate::deploy::DeployError;
    let all = store.releases(service).await?;
    let needle = reference.rsplit('@').next().unwrap_or(reference);
    let needle = needle.strip_prefix("sha256:").unwrap_or(needle);
    let mut matches: Vec<_> = all
        .into_iter()
        .filter(|r| !needle.is_empty() && r.facts.digest.trim_start_matches("sha256:").starts_with(needle))
        .collect();
    match (matches.pop(), matches.len()) {
        (Some(one), 0) => Ok(one),
        (None, _) => Err(DeployError::UnknownRelease { service: service.into(), reference: reference.into() }),
        (Some(_), more) => {
            Err(DeployError::AmbiguousRelease { service: service.into(), reference: reference.into(), count: more + 1 })
        }
    }
}

/// What carried a recorded release's signature and its digest (`bundle sha256:…`), from the
/// release's evidence; evidence recorded before formats were kept was a legacy `.sig`.
pub fn signature_of(evidence: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(evidence).unwrap_or_default();
    let format = v["signature"]["format"].as_str().unwrap_or("legacy");
    match v["signature"]["layer"].as_str() {
        Some(layer) => format!("{format} {layer}"),
        None => format.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commits() {
        assert!(super::valid_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(super::valid_commit("abc1234"));
        for bad in ["HEAD", "abc12", "ABC1234", "0123456789abcdef0123456789abcdef0123456g", &"a".repeat(65)] {
            assert!(!super::valid_commit(bad), "{bad}");
        }
    }
}
