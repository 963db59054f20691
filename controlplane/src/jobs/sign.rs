//! CI's side: pushing cosign signatures and attestations next to an image, keeping the
//! ones already there (cosign appends; so do we).

use crate::cosign::{self, Envelope, LayerDescriptor, PredicateKind};
use crate::image::{Digest, PinnedImage, Repository};
use crate::keys::SigningKey;
use crate::registry::{Layer, Precondition, Registry, RegistryError, OCI_CONFIG};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("image `{0}` does not exist in its registry; push it before signing")]
    ImageNotFound(PinnedImage),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "the referrers index `{tag}` kept changing under us ({attempts} attempts): another tool is writing it; sign again"
    )]
    LostUpdate { tag: String, attempts: u32 },
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    /// `repo:sha256-<hex>.sig` or `.att`.
    pub tag: String,
    /// The new manifest's digest.
    pub manifest: Digest,
    /// The layer that holds our signature or attestation.
    pub layer: Digest,
    /// Layers that were there before and were kept.
    pub kept: usize,
    /// False when an identical layer was already there.
    pub added: bool,
}

/// Signs `image` with `key` and pushes the signature to `sha256-<hex>.sig`.
pub async fn sign(registry: &Registry, image: &PinnedImage, key: &SigningKey) -> Result<Pushed, SignError> {
    ensure_exists(registry, image).await?;
    let payload = cosign::simple_signing_payload(image);
    let sig = B64.encode(key.sign(&payload));
    let annotations: BTreeMap<String, String> = [(cosign::SIGNATURE_ANNOTATION.to_owned(), sig)].into();
    let layer = Layer { media_type: cosign::SIMPLE_SIGNING_MEDIA_TYPE.into(), data: payload, annotations };
    append(registry, &image.repository, &cosign::signature_tag(&image.digest), layer, Some(key)).await
}

/// Signs `image` as cosign 3 does by default: a Sigstore bundle (DSSE, in-toto v1 statement)
/// pushed as an OCI 1.1 referrer (a manifest whose `subject` is the image), listed in the
/// referrers tag schema's index `sha256-<hex>` for registries without the referrers API
/// (entries already there are kept).
pub async fn sign_bundle(registry: &Registry, image: &PinnedImage, key: &SigningKey) -> Result<Pushed, SignError> {
    // Signing again with the same key adds nothing (as for `.sig`).
    let repo = &image.repository;
    let public = key.public();
    let Some((image_manifest, _)) = registry.manifest(repo, image.digest.as_str()).await? else {
        return Err(SignError::ImageNotFound(image.clone()));
    };
    let referrers = registry.referrers(repo, &image.digest).await?;
    for r in referrers.iter().filter(|r| r.artifact_type.as_deref().and_then(cosign::bundle_format).is_some()) {
        let Some((manifest, digest)) = registry.manifest(repo, &r.digest).await? else { continue };
        let layers = cosign::manifest_layers(&manifest).unwrap_or_default();
        for l in layers.into_iter().filter(|l| cosign::bundle_format(&l.media_type).is_some()) {
            let bytes = registry.blob(repo, &l.digest).await?;
            let ours = [(l.digest.clone(), bytes)];
            if cosign::evaluate_bundles(image, &image_manifest, &ours, std::slice::from_ref(public), None).is_ok() {
                let tag = format!("sha256-{}", image.digest.hex());
                return Ok(Pushed { tag, manifest: digest, layer: l.digest, kept: referrers.len(), added: false });
            }
        }
    }
    push_bundle(registry, image, &cosign::signature_bundle(image, key, &public.key_id)).await
}

/// Pushes a signed in-toto attestation of `kind` with `predicate` as a Sigstore bundle
/// referrer of `image` (cosign 3's `cosign attest` default).
pub async fn attest_bundle(
    registry: &Registry,
    image: &PinnedImage,
    kind: PredicateKind,
    predicate: serde_json::Value,
    key: &SigningKey,
) -> Result<Pushed, SignError> {
    push_bundle(registry, image, &cosign::attestation_bundle(image, kind, predicate, key)).await
}

/// Pushes `bundle` (a Sigstore bundle) as a referrer of `image` (its `subject` is the
/// image, with the image manifest's own media type: an image index stays one), listed in
/// the referrers tag schema's index. Every entry already there is kept byte for byte
/// (media type, size, digest, artifact type, annotations, and the index's own fields);
/// the index is read again after the push and the merge retried when another writer's
/// push replaced ours (registries honour no conditional manifest PUT to prevent that).
pub async fn push_bundle(registry: &Registry, image: &PinnedImage, bundle: &[u8]) -> Result<Pushed, SignError> {
    use crate::registry::{OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
    const ATTEMPTS: u32 = 4;
    let Some((image_manifest, _)) = registry.manifest(&image.repository, image.digest.as_str()).await? else {
        return Err(SignError::ImageNotFound(image.clone()));
    };
    let subject_type = serde_json::from_slice::<serde_json::Value>(&image_manifest)
        .ok()
        .and_then(|m| m.get("mediaType").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    let repo = &image.repository;
    let empty = registry.push_blob(repo, b"{}").await?;
    let layer = registry.push_blob(repo, bundle).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": cosign::BUNDLE_V03,
        "config": { "mediaType": OCI_EMPTY, "digest": empty, "size": 2 },
        "layers": [{ "mediaType": cosign::BUNDLE_V03, "digest": layer, "size": bundle.len() }],
        "subject": { "mediaType": subject_type, "digest": image.digest.as_str(), "size": image_manifest.len() },
    });
    let bytes = serde_json::to_vec(&manifest).expect("JSON");
    let digest = registry.push_manifest(repo, None, bytes.clone()).await?;
    let ours = serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": cosign::BUNDLE_V03,
    });
    let tag = format!("sha256-{}", image.digest.hex());
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // Another writer, or a registry whose reads lag its writes: give it a moment.
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let (mut index, entries, was) = tag_schema(registry, repo, &image.digest).await?;
        let kept: Vec<serde_json::Value> =
            entries.into_iter().filter(|e| e.get("digest").and_then(|d| d.as_str()) != Some(digest.as_str())).collect();
        let n = kept.len();
        let mut all = kept.clone();
        all.push(ours.clone());
        index.insert("schemaVersion".into(), 2.into());
        index.insert("mediaType".into(), OCI_INDEX.into());
        index.insert("manifests".into(), serde_json::Value::Array(all));
        // Conditional: a registry that honours `If-Match` refuses the write (412) when
        // another writer replaced the index since our read, and the merge runs again.
        let precondition = was.clone().map_or(Precondition::Absent, Precondition::Matches);
        let bytes = serde_json::to_vec(&index).expect("JSON");
        if registry.push_index_if(repo, &tag, bytes.clone(), &precondition).await?.is_none() {
            // Refused: another writer came first — unless the index is still the one read
            // (a registry whose entity tags are not digests): then write it plainly, and
            // the read-back below decides.
            let (_, _, now) = tag_schema(registry, repo, &image.digest).await?;
            if now != was {
                continue;
            }
            registry.push_manifest(repo, Some(&tag), bytes).await?;
        }
        // One that ignores preconditions may have let another writer in between our read
        // and our write: ours and every entry we kept must be there now, or the merge runs
        // again on what is there.
        let (_, now, _) = tag_schema(registry, repo, &image.digest).await?;
        if now.contains(&ours) && kept.iter().all(|e| now.contains(e)) {
            return Ok(Pushed { tag, manifest: digest, layer, kept: n, added: true });
        }
    }
    Err(SignError::LostUpdate { tag, attempts: ATTEMPTS })
}

/// The referrers tag schema's index of `digest` as JSON: its top-level fields, its
/// entries, unchanged, and its own digest (empty and `None` when there is none).
async fn tag_schema(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<serde_json::Value>, Option<Digest>), SignError> {
    let Some(bytes) = registry.tag_schema_index(repo, digest).await? else {
        return Ok((serde_json::Map::new(), Vec::new(), None));
    };
    let was = Digest::of(&bytes);
    let invalid = |detail: String| RegistryError::Invalid { registry: repo.registry().into(), detail };
    let serde_json::Value::Object(mut index) =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("referrers index: {e}")))?
    else {
        return Err(invalid("the referrers index is not a JSON object".into()).into());
    };
    let entries = match index.remove("manifests") {
        Some(serde_json::Value::Array(a)) => a,
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(_) => return Err(invalid("the referrers index's `manifests` is not a list".into()).into()),
    };
    Ok((index, entries, Some(was)))
}

/// Pushes a signed in-toto attestation of `kind` with `predicate` to `sha256-<hex>.att`.
pub async fn attest(
    registry: &Registry,
    image: &PinnedImage,
    kind: PredicateKind,
    predicate: serde_json::Value,
    key: &SigningKey,
) -> Result<Pushed, SignError> {
    ensure_exists(registry, image).await?;
    let envelope: Envelope = cosign::attestation_envelope(image, kind, predicate, key);
    // cosign writes the signature annotation empty on attestation layers (the signature
    // is inside the envelope) and `cosign verify-attestation` refuses a layer without it.
    let annotations: BTreeMap<String, String> = [
        (cosign::PREDICATE_TYPE_ANNOTATION.to_owned(), kind.predicate_type().to_owned()),
        (cosign::SIGNATURE_ANNOTATION.to_owned(), String::new()),
    ]
    .into();
    let layer = Layer {
        media_type: cosign::DSSE_MEDIA_TYPE.into(),
        data: serde_json::to_vec(&envelope).expect("JSON"),
        annotations,
    };
    append(registry, &image.repository, &cosign::attestation_tag(&image.digest), layer, None).await
}

async fn ensure_exists(registry: &Registry, image: &PinnedImage) -> Result<(), SignError> {
    match registry.manifest(&image.repository, image.digest.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(SignError::ImageNotFound(image.clone())),
    }
}

/// Adds `layer` to the manifest at `tag`, keeping what is there. A layer identical to
/// one there, or (with `signer`) a payload this key has already signed, is not added twice.
async fn append(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    layer: Layer,
    signer: Option<&SigningKey>,
) -> Result<Pushed, SignError> {
    let mut existing: Vec<LayerDescriptor> = Vec::new();
    if let Some((manifest, digest)) = registry.manifest(repo, tag).await? {
        existing = cosign::manifest_layers(&manifest)
            .map_err(|detail| RegistryError::Invalid { registry: repo.registry().into(), detail })?;
        let our_payload = Digest::of(&layer.data);
        let signed_by_us = |e: &LayerDescriptor| {
            let sig = e.annotations.get(cosign::SIGNATURE_ANNOTATION).and_then(|s| B64.decode(s.trim()).ok());
            matches!((signer, sig), (Some(k), Some(sig)) if k.public().verify(&layer.data, &sig))
        };
        let already =
            existing.iter().any(|e| e.digest == our_payload && (e.annotations == layer.annotations || signed_by_us(e)));
        if already {
            return Ok(Pushed {
                tag: tag.into(),
                manifest: digest,
                layer: our_payload,
                kept: existing.len(),
                added: false,
            });
        }
    }
    let layer_digest = registry.push_blob(repo, &layer.data).await?;
    let ours = LayerDescriptor {
        media_type: layer.media_type.clone(),
        digest: layer_digest.clone(),
        size: layer.data.len() as u64,
        annotations: layer.annotations.clone(),
    };
    let kept = existing.len();
    let mut descriptors = existing;
    descriptors.push(ours);
    let all: Vec<Digest> = descriptors.iter().map(|d| d.digest.clone()).collect();
    let config = cosign::empty_config(&all);
    let config_digest = registry.push_blob(repo, &config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": descriptors,
    });
    let digest = registry.push_manifest(repo, Some(tag), serde_json::to_vec(&manifest).expect("JSON")).await?;
    Ok(Pushed { tag: tag.into(), manifest: digest, layer: layer_digest, kept, added: true })
}
