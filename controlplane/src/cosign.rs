//! Cosign's formats, byte for byte, as pure functions: the simple-signing payload and
//! its `.sig` manifest, DSSE envelopes with in-toto statements in `.att` manifests, and
//! the evaluation of what a registry returned against the trusted keys.
//!
//! One file per format: `cosign/legacy.rs` (`.sig` simple-signing payloads),
//! `cosign/dsse.rs` (DSSE envelopes and in-toto statements, `.att`), `cosign/bundle.rs`
//! (Sigstore bundles as referrers, and blob bundles); this file holds what they share.

#[cfg(test)]
use crate::image::Repository;
use crate::image::{Digest, PinnedImage};
use crate::keys::{PublicKey, SigningKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sigstore::cosign::payload::SimpleSigning;
use std::collections::BTreeMap;

mod bundle;
mod dsse;
mod legacy;
pub use bundle::*;
pub use dsse::*;
pub use legacy::*;

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const IN_TOTO_STATEMENT: &str = "https://in-toto.io/Statement/v0.1";

/// The tag cosign stores signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The tag cosign stores attestations of `digest` under: `sha256-<hex>.att`.
pub fn attestation_tag(digest: &Digest) -> String {
    format!("sha256-{}.att", digest.hex())
}

/// The config blob cosign puts in signature and attestation manifests.
pub fn empty_config(layer_digests: &[Digest]) -> Vec<u8> {
    let v = serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": layer_digests },
    });
    serde_json::to_vec(&v).expect("JSON")
}

/// One layer of a `.sig` or `.att` manifest, with its blob fetched.
#[derive(Debug, Clone)]
pub struct FetchedLayer {
    pub media_type: String,
    pub digest: Digest,
    pub annotations: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// A layer as an OCI manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Layer descriptors of an OCI manifest.
pub fn manifest_layers(manifest: &[u8]) -> Result<Vec<LayerDescriptor>, String> {
    #[derive(Deserialize)]
    struct M {
        #[serde(default)]
        layers: Vec<LayerDescriptor>,
    }
    serde_json::from_slice::<M>(manifest).map(|m| m.layers).map_err(|e| format!("not an OCI manifest: {e}"))
}

/// Why no layer proved the image signed, most telling reason first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    /// The signature is for another image digest (copied from elsewhere).
    OtherDigest { signed: String },
    /// A trusted key signed this digest, but under another repository name.
    OtherRepository { signed: String },
    /// Signatures exist, but none by a trusted key.
    UntrustedKey,
    /// Layers exist, but none is a readable cosign signature.
    Malformed(String),
    /// No layers at all.
    Empty,
}

/// The layer that proved the signature, as evidence to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEvidence {
    pub key_id: String,
    /// The `.sig` layer digest (the payload's digest), or the bundle's.
    pub layer: String,
    pub payload: String,
    pub signature: String,
    /// What carried the signature: `legacy` (cosign's `.sig` tag), `bundle` (a Sigstore
    /// bundle signed with a policy key) or `bundle-keyless` (a Fulcio certificate).
    #[serde(default = "legacy_format")]
    pub format: String,
}

fn legacy_format() -> String {
    "legacy".into()
}

fn most_telling(problems: Vec<SignatureProblem>) -> SignatureProblem {
    let rank = |p: &SignatureProblem| match p {
        SignatureProblem::OtherDigest { .. } => 0,
        SignatureProblem::OtherRepository { .. } => 1,
        SignatureProblem::UntrustedKey => 2,
        SignatureProblem::Malformed(_) => 3,
        SignatureProblem::Empty => 4,
    };
    problems.into_iter().min_by_key(rank).unwrap_or(SignatureProblem::Empty)
}

/// The builder id and source commit a SLSA provenance predicate (v0.2 or v1) names.
pub fn provenance_facts(p: &serde_json::Value) -> (Option<String>, Option<String>) {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let builder = s(&p["builder"]["id"]).or_else(|| s(&p["runDetails"]["builder"]["id"]));
    let commit = s(&p["invocation"]["configSource"]["digest"]["sha1"])
        .or_else(|| p["materials"].as_array().and_then(|m| m.iter().find_map(|x| s(&x["digest"]["sha1"]))))
        .or_else(|| {
            p["buildDefinition"]["resolvedDependencies"]
                .as_array()
                .and_then(|d| d.iter().find_map(|x| s(&x["digest"]["gitCommit"]).or_else(|| s(&x["digest"]["sha1"]))))
        });
    (builder, commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(d: &[u8]) -> PinnedImage {
        PinnedImage { repository: Repository::new("127.0.0.1:5000/demo/api").unwrap(), digest: Digest::of(d) }
    }

    fn sig_layer(payload: Vec<u8>, key: &SigningKey) -> FetchedLayer {
        let sig = B64.encode(key.sign(&payload));
        FetchedLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
            digest: Digest::of(&payload),
            annotations: [(SIGNATURE_ANNOTATION.to_owned(), sig)].into(),
            data: payload,
        }
    }

    #[test]
    fn payload_matches_cosign_bytes() {
        let img = image(b"x");
        let want = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/demo/api\"}},\"image\":{{\"docker-manifest-digest\":\"{}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
            img.digest
        );
        assert_eq!(String::from_utf8(simple_signing_payload(&img)).unwrap(), want);
        assert_eq!(signature_tag(&img.digest), format!("sha256-{}.sig", img.digest.hex()));
    }

    #[test]
    fn signatures_are_evaluated_honestly() {
        let ours = SigningKey::generate().unwrap();
        let theirs = SigningKey::generate().unwrap();
        let keys = [ours.public().clone()];
        let img = image(b"a");
        let good = sig_layer(simple_signing_payload(&img), &ours);
        assert_eq!(evaluate_signatures(&img, std::slice::from_ref(&good), &keys).unwrap().key_id, ours.public().key_id);

        let untrusted = sig_layer(simple_signing_payload(&img), &theirs);
        assert_eq!(
            evaluate_signatures(&img, std::slice::from_ref(&untrusted), &keys),
            Err(SignatureProblem::UntrustedKey)
        );

        let other = image(b"b");
        let copied = sig_layer(simple_signing_payload(&other), &ours);
        assert!(matches!(evaluate_signatures(&img, &[copied], &keys), Err(SignatureProblem::OtherDigest { .. })));

        let mut elsewhere = img.clone();
        elsewhere.repository = Repository::new("127.0.0.1:5000/evil/api").unwrap();
        let renamed = sig_layer(simple_signing_payload(&elsewhere), &ours);
        assert!(matches!(evaluate_signatures(&img, &[renamed], &keys), Err(SignatureProblem::OtherRepository { .. })));

        let mut tampered = good.clone();
        tampered.data[10] ^= 1;
        assert_eq!(evaluate_signatures(&img, &[tampered], &keys), Err(SignatureProblem::UntrustedKey));
        assert_eq!(evaluate_signatures(&img, &[], &keys), Err(SignatureProblem::Empty));
        // One good layer among bad ones is enough; the order does not matter.
        assert!(evaluate_signatures(&img, &[untrusted, good], &keys).is_ok());
    }

    #[test]
    fn attestations_round_trip_and_name_their_commit() {
        let key = SigningKey::generate().unwrap();
        let img = image(b"a");
        let predicate = serde_json::json!({
            "builder": { "id": "https://github.com/actions/runner" },
            "invocation": { "configSource": { "uri": "git+https://x", "digest": { "sha1": "abc123" } } },
        });
        let env = attestation_envelope(&img, PredicateKind::Slsaprovenance, predicate, &key);
        let data = serde_json::to_vec(&env).unwrap();
        let layer = FetchedLayer {
            media_type: DSSE_MEDIA_TYPE.into(),
            digest: Digest::of(&data),
            annotations: BTreeMap::new(),
            data,
        };
        let (good, bad) = evaluate_attestations(&img, std::slice::from_ref(&layer), &[key.public().clone()]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(good[0].commit.as_deref(), Some("abc123"));
        assert_eq!(good[0].builder.as_deref(), Some("https://github.com/actions/runner"));

        let (good, bad) =
            evaluate_attestations(&image(b"other"), std::slice::from_ref(&layer), &[key.public().clone()]);
        assert!(good.is_empty() && bad == [AttestationProblem::OtherSubject]);
        let other = SigningKey::generate().unwrap();
        let (_, bad) = evaluate_attestations(&img, &[layer], &[other.public().clone()]);
        assert_eq!(bad, [AttestationProblem::UntrustedKey]);
    }

    #[test]
    fn pae_is_the_dsse_encoding() {
        assert_eq!(pae("t", b"body"), b"DSSEv1 1 t 4 body");
    }
}
