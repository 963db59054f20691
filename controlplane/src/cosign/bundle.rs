//! Sigstore bundles (v0.3, cosign 3's default): signatures and attestations as OCI
//! referrers, keyed or keyless, and blob bundles (`verify-blob`).

use super::*;

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

pub(crate) fn bundle_attestation(
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

/// The media type (and artifact type) of a Sigstore bundle v0.3, as cosign 3 writes it.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The predicate type of cosign 3's image signatures (an in-toto statement in DSSE).
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

pub(crate) const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";

/// A bundle bigger than this is not believed.
pub(crate) const MAX_BUNDLE_BYTES: usize = 1 << 20;

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

pub(crate) fn dsse_bundle(
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
pub(crate) fn message_signature(
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

pub(crate) fn evaluate_bundle(
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
