//! Cosign's formats, byte for byte, as pure functions: the simple-signing payload and
//! its `.sig` manifest, DSSE envelopes with in-toto statements in `.att` manifests, and
//! the evaluation of what a registry returned against the trusted keys.

#[cfg(test)]
use crate::image::Repository;
use crate::image::{Digest, PinnedImage};
use crate::keys::{PublicKey, SigningKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sigstore::cosign::payload::SimpleSigning;
use std::collections::BTreeMap;

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

/// The simple-signing payload cosign signs, with the same bytes `cosign sign` writes.
pub fn simple_signing_payload(image: &PinnedImage) -> Vec<u8> {
    // serde_json orders keys alphabetically, which is Go's field order for this struct.
    let v = serde_json::json!({
        "critical": {
            "identity": { "docker-reference": image.repository.as_str() },
            "image": { "docker-manifest-digest": image.digest.as_str() },
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).expect("JSON")
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

/// DSSE pre-authentication encoding: what a DSSE signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope as cosign writes it in `.att` layers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

/// What kind of attestation: the `--type` of `agentctl attest`, as cosign names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredicateKind {
    Slsaprovenance,
    Spdx,
    Cyclonedx,
}

impl PredicateKind {
    pub fn predicate_type(self) -> &'static str {
        match self {
            Self::Slsaprovenance => "https://slsa.dev/provenance/v0.2",
            Self::Spdx => "https://spdx.dev/Document",
            Self::Cyclonedx => "https://cyclonedx.org/bom",
        }
    }

    pub fn from_predicate_type(t: &str) -> Option<Self> {
        match t {
            "https://slsa.dev/provenance/v0.2" | "https://slsa.dev/provenance/v1" => Some(Self::Slsaprovenance),
            "https://spdx.dev/Document" => Some(Self::Spdx),
            "https://cyclonedx.org/bom" => Some(Self::Cyclonedx),
            _ => None,
        }
    }

    pub fn is_sbom(self) -> bool {
        matches!(self, Self::Spdx | Self::Cyclonedx)
    }
}

/// An in-toto statement about `image` with `predicate`, in a signed DSSE envelope.
pub fn attestation_envelope(
    image: &PinnedImage,
    kind: PredicateKind,
    predicate: serde_json::Value,
    key: &SigningKey,
) -> Envelope {
    let statement = serde_json::json!({
        "_type": IN_TOTO_STATEMENT,
        "predicateType": kind.predicate_type(),
        "subject": [{ "name": image.repository.as_str(), "digest": { "sha256": image.digest.hex() } }],
        "predicate": predicate,
    });
    let payload = serde_json::to_vec(&statement).expect("JSON");
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
    Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
        payload: B64.encode(&payload),
        signatures: vec![EnvelopeSignature { keyid: String::new(), sig: B64.encode(sig) }],
    }
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

/// Finds a layer that is a trusted key's signature of exactly `image`.
pub fn evaluate_signatures(
    image: &PinnedImage,
    layers: &[FetchedLayer],
    keys: &[PublicKey],
) -> Result<SignatureEvidence, SignatureProblem> {
    let mut problems = Vec::new();
    for layer in layers {
        if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
            problems.push(SignatureProblem::Malformed(format!("layer media type `{}`", layer.media_type)));
            continue;
        }
        let Some(sig_b64) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            problems.push(SignatureProblem::Malformed("layer without signature annotation".into()));
            continue;
        };
        let Ok(sig) = B64.decode(sig_b64.trim()) else {
            problems.push(SignatureProblem::Malformed("signature is not base64".into()));
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.verify(&layer.data, &sig)) else {
            problems.push(SignatureProblem::UntrustedKey);
            continue;
        };
        let payload: SimpleSigning = match serde_json::from_slice(&layer.data) {
            Ok(p) => p,
            Err(e) => {
                problems.push(SignatureProblem::Malformed(format!("payload: {e}")));
                continue;
            }
        };
        if payload.critical.type_name != SIGNATURE_TYPE {
            problems.push(SignatureProblem::Malformed(format!("payload type `{}`", payload.critical.type_name)));
        } else if payload.critical.image.docker_manifest_digest != image.digest.as_str() {
            problems.push(SignatureProblem::OtherDigest { signed: payload.critical.image.docker_manifest_digest });
        } else if payload.critical.identity.docker_reference != image.repository.as_str() {
            // sigstore does not check this; a signature for `evil/x` must not admit `demo/api`.
            problems.push(SignatureProblem::OtherRepository { signed: payload.critical.identity.docker_reference });
        } else {
            return Ok(SignatureEvidence {
                key_id: key.key_id.clone(),
                layer: layer.digest.to_string(),
                payload: B64.encode(&layer.data),
                signature: sig_b64.trim().to_owned(),
                format: legacy_format(),
            });
        }
    }
    Err(most_telling(problems))
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

/// An attestation that verified, as evidence to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationEvidence {
    pub kind: PredicateKind,
    pub predicate_type: String,
    pub key_id: String,
    /// The `.att` layer digest.
    pub layer: String,
    /// For provenance: the builder id and source commit it names.
    pub builder: Option<String>,
    pub commit: Option<String>,
}

/// Why an attestation layer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationProblem {
    Malformed(String),
    UntrustedKey,
    OtherSubject,
    /// A keyless attestation that did not verify, or by an identity not allowed.
    Keyless(crate::keyless::KeylessProblem),
}

/// Every layer of an `.att` manifest that is a trusted, well-formed statement about `image`.
pub fn evaluate_attestations(
    image: &PinnedImage,
    layers: &[FetchedLayer],
    keys: &[PublicKey],
) -> (Vec<AttestationEvidence>, Vec<AttestationProblem>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for layer in layers {
        match evaluate_attestation(image, layer, keys) {
            Ok(e) => good.push(e),
            Err(p) => bad.push(p),
        }
    }
    (good, bad)
}

fn evaluate_attestation(
    image: &PinnedImage,
    layer: &FetchedLayer,
    keys: &[PublicKey],
) -> Result<AttestationEvidence, AttestationProblem> {
    let malformed = |m: String| AttestationProblem::Malformed(m);
    if layer.media_type != DSSE_MEDIA_TYPE {
        return Err(malformed(format!("layer media type `{}`", layer.media_type)));
    }
    let env: Envelope = serde_json::from_slice(&layer.data).map_err(|e| malformed(format!("envelope: {e}")))?;
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(malformed(format!("payload type `{}`", env.payload_type)));
    }
    let payload = B64.decode(env.payload.trim()).map_err(|_| malformed("payload is not base64".into()))?;
    let signed = pae(&env.payload_type, &payload);
    let key = env
        .signatures
        .iter()
        .filter_map(|s| B64.decode(s.sig.trim()).ok())
        .find_map(|sig| keys.iter().find(|k| k.verify(&signed, &sig)))
        .ok_or(AttestationProblem::UntrustedKey)?;
    attestation_from_statement(image, &payload, key.key_id.clone(), layer.digest.to_string())
}

/// What a statement whose signature verified (by `signer`) says about `image`;
/// `location` is the layer or bundle it came from.
fn attestation_from_statement(
    image: &PinnedImage,
    payload: &[u8],
    signer: String,
    location: String,
) -> Result<AttestationEvidence, AttestationProblem> {
    let malformed = |m: String| AttestationProblem::Malformed(m);
    let st: serde_json::Value = serde_json::from_slice(payload).map_err(|e| malformed(format!("statement: {e}")))?;
    let about_us = st["subject"]
        .as_array()
        .is_some_and(|subjects| subjects.iter().any(|s| s["digest"]["sha256"].as_str() == Some(image.digest.hex())));
    if !about_us {
        return Err(AttestationProblem::OtherSubject);
    }
    let predicate_type = st["predicateType"].as_str().unwrap_or_default().to_owned();
    let kind = PredicateKind::from_predicate_type(&predicate_type)
        .ok_or_else(|| malformed(format!("unknown predicate type `{predicate_type}`")))?;
    let (builder, commit) =
        if kind == PredicateKind::Slsaprovenance { provenance_facts(&st["predicate"]) } else { (None, None) };
    Ok(AttestationEvidence { kind, predicate_type, key_id: signer, layer: location, builder, commit })
}

/// Every bundle (`(layer digest, bytes)`, from the image's referrers) that is a trusted
/// attestation about `image`: a DSSE statement other than cosign's image signature,
/// signed by a policy key or keyless by an allowed identity. Signatures and message
/// signatures are not attestations and are passed over.
pub fn evaluate_bundle_attestations(
    image: &PinnedImage,
    bundles: &[(Digest, Vec<u8>)],
    keys: &[PublicKey],
    keyless: Option<&crate::keyless::Keyless>,
) -> (Vec<AttestationEvidence>, Vec<AttestationProblem>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (digest, bytes) in bundles {
        match bundle_attestation(image, digest, bytes, keys, keyless) {
            Ok(Some(e)) => good.push(e),
            Ok(None) => {}
            Err(p) => bad.push(p),
        }
    }
    (good, bad)
}

/// The predicate type of a bundle's DSSE statement, if it has one.
pub(crate) fn dsse_predicate(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return None;
    }
    let b: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let payload = B64.decode(b.get("dsseEnvelope")?.get("payload")?.as_str()?).ok()?;
    let st: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    st.get("predicateType")?.as_str().map(str::to_owned)
}

fn bundle_attestation(
    image: &PinnedImage,
    digest: &Digest,
    bytes: &[u8],
    keys: &[PublicKey],
    keyless: Option<&crate::keyless::Keyless>,
) -> Result<Option<AttestationEvidence>, AttestationProblem> {
    let malformed = |m: String| AttestationProblem::Malformed(m);
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(malformed(format!("bundle over {MAX_BUNDLE_BYTES} bytes")));
    }
    let b: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(format!("bundle: {e}")))?;
    let Some(env) = b.get("dsseEnvelope") else { return Ok(None) };
    let env: Envelope = serde_json::from_value(env.clone()).map_err(|e| malformed(format!("DSSE envelope: {e}")))?;
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(malformed(format!("DSSE payload type `{}`", env.payload_type)));
    }
    let payload = B64.decode(&env.payload).map_err(|_| malformed("DSSE payload is not base64".into()))?;
    if dsse_predicate(bytes).is_none_or(|p| p == COSIGN_SIGN_PREDICATE) {
        return Ok(None);
    }
    let material = b.get("verificationMaterial");
    let keyless_signed =
        material.is_some_and(|m| m.get("certificate").is_some() || m.get("x509CertificateChain").is_some());
    let signer = if keyless_signed {
        let Some(keyless) = keyless else {
            return Err(malformed("a keyless attestation, and the trust policy names no `trusted_root`".into()));
        };
        keyless.verify_statement(image, bytes).map_err(AttestationProblem::Keyless)?.0.key_id()
    } else {
        let signed = pae(&env.payload_type, &payload);
        env.signatures
            .iter()
            .filter_map(|s| B64.decode(&s.sig).ok())
            .find_map(|sig| keys.iter().find(|k| k.verify(&signed, &sig)))
            .ok_or(AttestationProblem::UntrustedKey)?
            .key_id
            .clone()
    };
    attestation_from_statement(image, &payload, signer, digest.to_string()).map(Some)
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

/// The media type (and artifact type) of a Sigstore bundle v0.3, as cosign 3 writes it.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The predicate type of cosign 3's image signatures (an in-toto statement in DSSE).
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// A bundle bigger than this is not believed.
const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// What a referrer's artifact type says it is, when it is a Sigstore bundle (the format
/// cosign 3 writes by default, signatures and attestations alike).
pub fn bundle_format(artifact_type: &str) -> Option<&'static str> {
    match artifact_type {
        BUNDLE_V03 | "application/vnd.dev.sigstore.bundle+json;version=0.3" => {
            Some("a Sigstore bundle v0.3 (cosign 3's default) attached as an OCI referrer")
        }
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => {
            Some("a Sigstore bundle v0.2 attached as an OCI referrer")
        }
        "application/vnd.dev.sigstore.bundle+json;version=0.1" | "application/vnd.dev.sigstore.bundle+json" => {
            Some("a Sigstore bundle v0.1 attached as an OCI referrer")
        }
        _ => None,
    }
}

/// A Sigstore bundle signing `image` as cosign 3 does with a key: an in-toto v1 statement
/// (subject the image digest, predicate type `https://sigstore.dev/cosign/sign/v1`) in a
/// DSSE envelope, the key named by its id, no transparency-log entry (nothing public is
/// contacted).
pub fn signature_bundle(image: &PinnedImage, key: &SigningKey, key_id: &str) -> Vec<u8> {
    dsse_bundle(image, COSIGN_SIGN_PREDICATE, None, key, key_id)
}

/// A Sigstore bundle v0.3 as cosign 3 writes for `cosign attest --key`: an in-toto v1
/// statement about `image` with `predicate`, in a DSSE envelope signed by `key`.
pub fn attestation_bundle(
    image: &PinnedImage,
    kind: PredicateKind,
    predicate: serde_json::Value,
    key: &SigningKey,
) -> Vec<u8> {
    dsse_bundle(image, kind.predicate_type(), Some(predicate), key, &key.public().key_id)
}

fn dsse_bundle(
    image: &PinnedImage,
    predicate_type: &str,
    predicate: Option<serde_json::Value>,
    key: &SigningKey,
    key_id: &str,
) -> Vec<u8> {
    let mut statement = serde_json::json!({
        "_type": IN_TOTO_STATEMENT_V1,
        "subject": [{ "name": image.repository.as_str(), "digest": { "sha256": image.digest.hex() } }],
        "predicateType": predicate_type,
    });
    if let Some(p) = predicate {
        statement["predicate"] = p;
    }
    let payload = serde_json::to_vec(&statement).expect("JSON");
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": { "publicKey": { "hint": key_id }, "tlogEntries": [] },
        "dsseEnvelope": {
            "payload": B64.encode(&payload),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{ "sig": B64.encode(sig), "keyid": "" }],
        },
    });
    serde_json::to_vec(&bundle).expect("JSON")
}

/// Why a bundle did not prove a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleProblem {
    /// A kind of bundle this version does not verify (message signatures, or keyless
    /// without a trusted root in the policy): what it is.
    Unsupported(String),
    Signature(SignatureProblem),
    /// A keyless bundle that did not prove a signature by an allowed identity.
    Keyless(crate::keyless::KeylessProblem),
}

/// Finds a bundle (`(layer digest, bytes)`) that is a trusted key's signature of exactly
/// `image`: the DSSE signature verifies with a policy key, the statement is cosign's image
/// signature and its subject is the image's digest.
pub fn evaluate_bundles(
    image: &PinnedImage,
    manifest: &[u8],
    bundles: &[(Digest, Vec<u8>)],
    keys: &[PublicKey],
    keyless: Option<&crate::keyless::Keyless>,
) -> Result<SignatureEvidence, BundleProblem> {
    let mut problems = Vec::new();
    let mut unsupported = None;
    let mut keyless_problem = None;
    // Attestations (statements other than the image signature) are not signatures.
    let signatures = bundles.iter().filter(|(_, b)| dsse_predicate(b).is_none_or(|p| p == COSIGN_SIGN_PREDICATE));
    for (digest, bytes) in signatures {
        match evaluate_bundle(image, manifest, bytes, keys, keyless) {
            Ok(key_id) => {
                let format = if key_id.starts_with("keyless:") { "bundle-keyless" } else { "bundle" };
                return Ok(SignatureEvidence {
                    key_id,
                    layer: digest.to_string(),
                    payload: B64.encode(bytes),
                    signature: String::new(),
                    format: format.into(),
                });
            }
            Err(BundleProblem::Unsupported(what)) => unsupported = Some(what),
            Err(BundleProblem::Signature(p)) => problems.push(p),
            Err(BundleProblem::Keyless(p)) => keyless_problem = Some(p),
        }
    }
    // A keyless bundle that verified as far as its identity says the most.
    if let Some(p) = keyless_problem {
        return Err(BundleProblem::Keyless(p));
    }
    match (problems.is_empty(), unsupported) {
        (true, Some(what)) => Err(BundleProblem::Unsupported(what)),
        _ => Err(BundleProblem::Signature(most_telling(problems))),
    }
}

/// A bundle's message signature (no DSSE): over the image manifest's bytes, whose digest
/// it must name, by a policy key.
fn message_signature(
    image: &PinnedImage,
    manifest: &[u8],
    b: &serde_json::Value,
    keys: &[PublicKey],
) -> Result<String, BundleProblem> {
    let malformed = |d: &str| BundleProblem::Signature(SignatureProblem::Malformed(d.into()));
    let msg =
        b.get("messageSignature").ok_or_else(|| malformed("a bundle with neither DSSE nor a message signature"))?;
    let named = msg["messageDigest"]["digest"]
        .as_str()
        .and_then(|d| B64.decode(d).ok())
        .ok_or_else(|| malformed("a message signature without its digest"))?;
    if named != hex::decode(image.digest.hex()).unwrap_or_default() {
        let signed = format!("sha256:{}", hex::encode(&named));
        return Err(BundleProblem::Signature(SignatureProblem::OtherDigest { signed }));
    }
    let sig = msg["signature"]
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| malformed("a message signature that is not base64"))?;
    keys.iter()
        .find(|k| k.verify(manifest, &sig))
        .map(|k| k.key_id.clone())
        .ok_or(BundleProblem::Signature(SignatureProblem::UntrustedKey))
}

fn evaluate_bundle(
    image: &PinnedImage,
    manifest: &[u8],
    bytes: &[u8],
    keys: &[PublicKey],
    keyless: Option<&crate::keyless::Keyless>,
) -> Result<String, BundleProblem> {
    let malformed = |d: String| BundleProblem::Signature(SignatureProblem::Malformed(d));
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(malformed(format!("bundle over {MAX_BUNDLE_BYTES} bytes")));
    }
    let b: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(format!("bundle: {e}")))?;
    let media = b.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let format = bundle_format(media).ok_or_else(|| malformed(format!("bundle media type `{media}`")))?;
    let material =
        b.get("verificationMaterial").ok_or_else(|| malformed("bundle without verification material".into()))?;
    if material.get("certificate").is_some() || material.get("x509CertificateChain").is_some() {
        let Some(keyless) = keyless else {
            return Err(BundleProblem::Unsupported(format!(
                "{format}, signed keyless (a Fulcio certificate), and the trust policy names no `trusted_root`"
            )));
        };
        return keyless.verify_image(image, bytes).map(|who| who.key_id()).map_err(BundleProblem::Keyless);
    }
    let Some(env) = b.get("dsseEnvelope") else {
        return message_signature(image, manifest, &b, keys);
    };
    let env: Envelope = serde_json::from_value(env.clone()).map_err(|e| malformed(format!("DSSE envelope: {e}")))?;
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(malformed(format!("DSSE payload type `{}`", env.payload_type)));
    }
    let payload = B64.decode(&env.payload).map_err(|_| malformed("DSSE payload is not base64".into()))?;
    let signed = pae(&env.payload_type, &payload);
    let key = env
        .signatures
        .iter()
        .filter_map(|s| B64.decode(&s.sig).ok())
        .find_map(|sig| keys.iter().find(|k| k.verify(&signed, &sig)))
        .ok_or(BundleProblem::Signature(SignatureProblem::UntrustedKey))?;
    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| malformed(format!("statement: {e}")))?;
    let predicate = statement.get("predicateType").and_then(|p| p.as_str()).unwrap_or("");
    if predicate != COSIGN_SIGN_PREDICATE {
        return Err(malformed(format!("statement predicate type `{predicate}` is not an image signature")));
    }
    let digests: Vec<&str> = statement
        .get("subject")
        .and_then(|s| s.as_array())
        .map(|s| s.iter().filter_map(|x| x.get("digest")?.get("sha256")?.as_str()).collect())
        .unwrap_or_default();
    if !digests.contains(&image.digest.hex()) {
        let signed = digests.first().map_or_else(|| "nothing".to_owned(), |d| format!("sha256:{d}"));
        return Err(BundleProblem::Signature(SignatureProblem::OtherDigest { signed }));
    }
    Ok(key.key_id.clone())
}

/// A keyed bundle made offline (no log entry, no timestamp: `cosign sign-blob --key …
/// --bundle` with `--tlog-upload=false`) as a signature of an artifact whose SHA-256 is
/// `sha256`: a message signature naming that digest and verifying over it (`prehashed`), or
/// a DSSE envelope verifying over its pre-authentication encoding whose in-toto statement
/// names the digest as a subject. `verify(message, signature, prehashed)` is the key.
pub fn evaluate_blob_bundle(
    sha256: &[u8; 32],
    bundle: &[u8],
    verify: impl Fn(&[u8], &[u8], bool) -> bool,
) -> Result<(), SignatureProblem> {
    let malformed = |d: &str| SignatureProblem::Malformed(d.into());
    let other = || SignatureProblem::OtherDigest { signed: "another artifact".into() };
    let b: serde_json::Value = serde_json::from_slice(bundle).map_err(|e| malformed(&format!("bundle: {e}")))?;
    if let Some(env) = b.get("dsseEnvelope") {
        let env: Envelope = serde_json::from_value(env.clone()).map_err(|e| malformed(&format!("DSSE: {e}")))?;
        let payload = B64.decode(&env.payload).map_err(|_| malformed("DSSE payload is not base64"))?;
        let signed = pae(&env.payload_type, &payload);
        if !env.signatures.iter().filter_map(|s| B64.decode(&s.sig).ok()).any(|sig| verify(&signed, &sig, false)) {
            return Err(SignatureProblem::UntrustedKey);
        }
        let statement: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|e| malformed(&format!("statement: {e}")))?;
        let want = hex::encode(sha256);
        let subjects = statement.get("subject").and_then(|s| s.as_array()).cloned().unwrap_or_default();
        let named =
            subjects.iter().any(|x| x.pointer("/digest/sha256").and_then(|d| d.as_str()) == Some(want.as_str()));
        return if named { Ok(()) } else { Err(other()) };
    }
    let msg =
        b.get("messageSignature").ok_or_else(|| malformed("a bundle with neither DSSE nor a message signature"))?;
    let named = msg.pointer("/messageDigest/digest").and_then(|d| d.as_str()).and_then(|d| B64.decode(d).ok());
    if named.as_deref() != Some(sha256.as_slice()) {
        return Err(other());
    }
    let sig = msg["signature"]
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| malformed("signature is not base64"))?;
    if verify(sha256, &sig, true) {
        Ok(())
    } else {
        Err(SignatureProblem::UntrustedKey)
    }
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
