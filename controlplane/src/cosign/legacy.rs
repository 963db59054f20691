//! cosign's legacy format: a `.sig` tag whose layers are simple-signing payloads, each
//! signed (an annotation) by a key.

use super::*;

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
