//! DSSE envelopes and the in-toto statements they carry: cosign's `.att` attestations
//! (provenance, SBOM), signed over the pre-authentication encoding.

use super::*;

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

pub(crate) fn evaluate_attestation(
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
pub(crate) fn attestation_from_statement(
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
