//! Image platforms (`os/architecture[/variant]`) and the choice of one manifest from an
//! OCI image index (or Docker manifest list): an image pinned by an index digest is
//! signed as the index, and runs on a host as the manifest for the host's platform.
//!
//! Sources: the OCI image index specification (`manifests[].platform`), and the platform
//! names of `GOOS`/`GOARCH` that registries and Podman use.

use crate::image::Digest;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a host runs, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`.
    fn default() -> Self {
        Self { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }
}

/// Why a platform name or an index did not give a platform manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("`{0}` is not a platform: expected `os/architecture` or `os/architecture/variant` in lower case, like `linux/amd64` or `linux/arm64/v8`")]
    Name(String),
    #[error("the image index has no manifest for {wanted} (it has: {offered})")]
    Missing { wanted: String, offered: String },
    #[error("the image index is malformed: {0}")]
    Malformed(String),
}

impl Platform {
    /// Parses `os/architecture[/variant]` (each part 1 to 32 of `[a-z0-9_.-]`).
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let part = |p: &str| {
            (1..=32).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if part(os) && part(arch) => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: None })
            }
            [os, arch, v] if part(os) && part(arch) && part(v) => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: Some((*v).into()) })
            }
            _ => Err(PlatformError::Name(s.escape_debug().to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Media types of an image index.
const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

#[derive(Deserialize)]
struct Index {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    digest: String,
    platform: Option<EntryPlatform>,
}

/// An entry's platform as an index writes it (any field may be missing or extra).
#[derive(Deserialize)]
struct EntryPlatform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

impl EntryPlatform {
    fn to_platform(&self) -> Option<Platform> {
        Some(Platform { os: self.os.clone()?, architecture: self.architecture.clone()?, variant: self.variant.clone() })
    }
}

/// Whether `manifest` is an image index (by its `mediaType`, or, when it names none, by
/// its `manifests` list, as the OCI specification allows).
pub fn is_index(manifest: &[u8]) -> bool {
    match serde_json::from_slice::<Index>(manifest) {
        Ok(i) => match i.media_type {
            Some(t) => INDEX_TYPES.contains(&t.as_str()),
            None => i.manifests.is_some(),
        },
        Err(_) => false,
    }
}

/// The digest of the manifest for `wanted` in `manifest`, when `manifest` is an image
/// index; `Ok(None)` when it is an image manifest (it is what runs). An entry without a
/// variant matches a wanted platform without one; when several match, the first listed
/// wins (the index's order is the publisher's preference). Entries of other platforms —
/// buildx's `unknown/unknown` attestation manifests among them — are never chosen.
pub fn manifest_for(manifest: &[u8], wanted: &Platform) -> Result<Option<Digest>, PlatformError> {
    if !is_index(manifest) {
        return Ok(None);
    }
    let index: Index = serde_json::from_slice(manifest).map_err(|e| PlatformError::Malformed(e.to_string()))?;
    let entries = index.manifests.unwrap_or_default();
    let matches = |p: &Platform| {
        p.os == wanted.os
            && p.architecture == wanted.architecture
            && (wanted.variant.is_none() || p.variant == wanted.variant)
    };
    let chosen =
        entries.iter().find(|e| e.platform.as_ref().and_then(EntryPlatform::to_platform).is_some_and(|p| matches(&p)));
    match chosen {
        Some(e) => Digest::new(&e.digest).map(Some).map_err(|e| PlatformError::Malformed(e.to_string())),
        None => {
            let mut offered: Vec<String> =
                entries.iter().filter_map(|e| Some(e.platform.as_ref()?.to_platform()?.to_string())).collect();
            offered.dedup();
            let offered = if offered.is_empty() { "no platforms".to_owned() } else { offered.join(", ") };
            Err(PlatformError::Missing {
                wanted: wanted.to_string(),
                offered: crate::untrusted::HostText::new(&offered).as_str().to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    /// The shape `docker buildx` pushes: two platforms and an attestation manifest.
    fn buildx() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": A, "size": 1,
                  "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" } },
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": B, "size": 1,
                  "platform": { "architecture": "amd64", "os": "linux" } },
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": C, "size": 1,
                  "platform": { "architecture": "unknown", "os": "unknown" },
                  "annotations": { "vnd.docker.reference.type": "attestation-manifest" } }
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_wanted_platform_is_chosen_from_an_index() {
        assert_eq!(manifest_for(&buildx(), &Platform::default()).unwrap().unwrap().as_str(), B);
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(manifest_for(&buildx(), &arm).unwrap().unwrap().as_str(), A);
        let arm_v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(manifest_for(&buildx(), &arm_v8).unwrap().unwrap().as_str(), A);
    }

    #[test]
    fn a_platform_the_index_lacks_names_what_it_has() {
        let err = manifest_for(&buildx(), &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image index has no manifest for linux/s390x (it has: linux/arm64/v8, linux/amd64, unknown/unknown)"
        );
        let v7 = Platform::parse("linux/arm64/v7").unwrap();
        assert!(matches!(manifest_for(&buildx(), &v7), Err(PlatformError::Missing { .. })));
    }

    #[test]
    fn an_image_manifest_is_what_runs() {
        let m =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        assert_eq!(manifest_for(m, &Platform::default()).unwrap(), None);
        assert!(!is_index(b"not json"));
        // An index that names no media type is known by its list.
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
    }

    #[test]
    fn a_malformed_entry_digest_is_refused() {
        let bad = br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:zz","platform":{"os":"linux","architecture":"amd64"}}]}"#;
        assert!(matches!(manifest_for(bad, &Platform::default()), Err(PlatformError::Malformed(_))));
    }

    #[test]
    fn platform_names() {
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64/v8");
        for bad in ["linux", "Linux/amd64", "linux/amd64/v8/x", "linux//amd64", "linux/a md64", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
