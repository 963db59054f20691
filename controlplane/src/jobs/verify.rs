//! Verification of a release against the trust policy: digest pinning, the cosign
//! signature, and provenance/SBOM attestations. The registry is asked through
//! [`Registry`]; the decisions are `cosign`'s pure functions.
//!
//! sigstore's high-level cosign client logs and swallows fetch errors (a failed `.sig`
//! fetch yields zero layers) and accepts an empty constraint list, so the fetching is
//! done here, where "no signature" and "registry unreachable" stay distinct.

use crate::cosign::{self, AttestationEvidence, FetchedLayer, SignatureEvidence, SignatureProblem};
use crate::image::{Digest, ImageRef, PinnedImage, Repository};
use crate::keyless::KeylessProblem;
use crate::keys::PublicKey;
use crate::registry::{Registry, RegistryError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("image `{reference}` is not pinned by digest")]
    NotPinned { reference: String, repository: Repository, resolves_to: Option<Digest> },
    #[error("`{0}` is not an image reference")]
    BadReference(String, #[source] crate::image::ImageError),
    #[error("image `{0}` does not exist in its registry")]
    ImageNotFound(PinnedImage),
    #[error("image `{0}` has no signature")]
    NoSignature(PinnedImage),
    #[error("image `{image}` is signed, but as {format}, which this version of agentctl does not verify yet")]
    UnsupportedFormat { image: PinnedImage, format: String },
    #[error("image `{0}` is signed, but by no trusted key")]
    UntrustedKey(PinnedImage),
    #[error("image `{image}` is signed, but no signature verifies: {}", found.join("; "))]
    NoneVerifies { image: PinnedImage, found: Vec<String> },
    #[error(
        "the signature found for `{image}` was made for another image digest, `{signed}` (copied from another image?)"
    )]
    OtherDigest { image: PinnedImage, signed: String },
    #[error("the signature found for `{image}` names another repository, `{signed}`")]
    OtherRepository { image: PinnedImage, signed: String },
    #[error("the signature of `{image}` is malformed: {detail}")]
    Malformed { image: PinnedImage, detail: String },
    #[error("cannot verify `{image}`: the registry could not be asked, or did not answer correctly")]
    Registry {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("policy requires a provenance attestation for `{0}`, and none verifies")]
    MissingProvenance(PinnedImage),
    #[error("policy requires an SBOM attestation for `{0}`, and none verifies")]
    MissingSbom(PinnedImage),
    #[error("provenance of `{image}` names source commit `{provenance}`, but the release is commit `{release}`")]
    CommitMismatch { image: PinnedImage, release: String, provenance: String },
    #[error(
        "the provenance attestation `{layer}` of `{image}` verifies but does not name {}: the policy checks them",
        missing.join(" or ")
    )]
    IncompleteProvenance { image: PinnedImage, layer: String, missing: Vec<&'static str> },
    #[error("provenance of `{image}` was built by `{builder}`, which the trust policy does not allow")]
    UntrustedBuilder { image: PinnedImage, builder: String },
    #[error("image `{image}` is signed keyless by {found}, which the trust policy does not allow")]
    IdentityNotAllowed { image: PinnedImage, found: crate::keyless::Identity, allowed: Vec<String> },
    #[error("the keyless signature of `{image}` does not verify: {what}: {detail}")]
    KeylessInvalid { image: PinnedImage, what: &'static str, detail: String },
    #[error("no trusted keys or keyless identities to verify against")]
    NoKeys,
    #[error("cannot go back to `{image}` while its registry is unreachable: {why}")]
    NotOffline { image: PinnedImage, why: String },
    #[error("image `{image}` cannot run on the service's platform")]
    Platform {
        image: PinnedImage,
        #[source]
        source: crate::platform::PlatformError,
    },
}

impl VerifyError {
    /// The registry is unreachable or failing: a retryable failure (exit 1), not a
    /// refusal by policy (exit 4).
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Registry { source, .. } if source.is_outage())
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotPinned { repository, resolves_to: Some(d), .. } => {
                format!("pin it as `{repository}@{d}` (what the tag resolves to now)")
            }
            Self::NotPinned { .. } => "pin it as `REPOSITORY@sha256:...`".into(),
            Self::Platform { .. } => "set `platform` under `[runtime]` in the service's manifest to one the index has, or publish the image for this one".into(),
            Self::NoSignature(i) => {
                format!("sign it in CI: `agentctl sign {i} --key KEY` (or `cosign sign --key KEY {i}`)")
            }
            Self::IdentityNotAllowed { allowed, .. } => format!(
                "allowed: {}; if this signer is trusted, add it under `[[trust.identity]]` (`issuer` and `subject` or `subject_regexp`), as `cosign verify --certificate-oidc-issuer … --certificate-identity …` would be given",
                allowed.join(", ")
            ),
            Self::KeylessInvalid { .. } => {
                "the bundle's certificate, log entry or signature does not verify against `trust.trusted_root`: re-sign in CI (`cosign sign IMAGE` with cosign 3), or update the trusted root (`cosign trusted-root create`) if the CA or log keys rotated".into()
            }
            Self::UnsupportedFormat { format, .. } if format.contains("signed keyless") => {
                "to trust keyless signatures, name a Sigstore trusted root (`trusted_root = \"trust/trusted_root.json\"`) and the allowed identities (`[[trust.identity]]`) under `[trust]`".into()
            }
            Self::UnsupportedFormat { image, .. } => format!(
                "agentctl verifies cosign's legacy signatures (`sha256-<hex>.sig`): sign with `agentctl sign {image} --key KEY`, or with cosign 3 `cosign sign --key KEY --new-bundle-format=false --use-signing-config=false {image}`"
            ),
            Self::UntrustedKey(_) | Self::NoneVerifies { .. } => {
                "sign with a key listed under `[trust] keys`, or add the signer's public key there".into()
            }
            Self::OtherDigest { .. } | Self::OtherRepository { .. } => {
                "a signature is valid only for the exact repository and digest it names; sign this image".into()
            }
            Self::Registry { source: RegistryError::Substituted { .. } | RegistryError::DigestMismatch { .. }, .. } => {
                "the registry serves bytes that do not match their digest: treat it as a security incident; nothing was changed".into()
            }
            Self::Registry { .. } => {
                "check that the registry is up and reachable, then retry; nothing was changed".into()
            }
            Self::MissingProvenance(i) => {
                format!("attach one: `agentctl attest {i} --type slsaprovenance --predicate FILE --key KEY`")
            }
            Self::MissingSbom(i) => format!("attach one: `agentctl attest {i} --type spdx --predicate FILE --key KEY`"),
            Self::UntrustedBuilder { .. } => "add the builder id to `[trust] builders` if it is trusted".into(),
            Self::IncompleteProvenance { image, .. } => format!(
                "attest a SLSA predicate that names both (v0.2: `builder.id` and `invocation.configSource.digest.sha1`; v1: `runDetails.builder.id` and a `buildDefinition.resolvedDependencies` entry with `digest.gitCommit`): `agentctl attest {image} --type slsaprovenance --predicate FILE --key KEY`"
            ),
            Self::NotOffline { .. } => {
                "bring the registry back and plan again (`agentctl status` shows what runs meanwhile)".into()
            }
            _ => return None,
        })
    }
}

/// What the environment's policy asks for beyond the signature.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub provenance: bool,
    pub sbom: bool,
    /// The release's source commit; a provenance attestation must name it.
    pub commit: Option<String>,
}

/// A release whose verification succeeded. Only [`Verifier`] constructs one (the field
/// `_sealed` is private and there is no `Deserialize`), so code that requires it —
/// planning does — can only ever see verified images. The compiler refuses both forgeries
/// (these examples are doctests that must fail to compile, with these error codes):
///
/// ```compile_fail,E0451
/// use controlplane::verify::Verified;
/// fn forge(v: &Verified) -> Verified {
///     Verified { image: v.image.clone(), signature: v.signature.clone(), attestations: vec![], _sealed: Default::default() }
/// }
/// ```
///
/// ```compile_fail,E0277
/// fn forge(json: &str) -> controlplane::verify::Verified {
///     serde_json::from_str(json).unwrap()
/// }
/// ```
///
/// The same code for a type without the seal compiles (so the failures above are the seal's):
///
/// ```
/// #[derive(Clone, Default, serde::Deserialize)]
/// pub struct Open { pub image: String, pub attestations: Vec<String> }
/// fn copy(v: &Open) -> Open { Open { image: v.image.clone(), attestations: vec![] } }
/// fn read(json: &str) -> Open { serde_json::from_str(json).unwrap() }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub image: PinnedImage,
    pub signature: SignatureEvidence,
    pub attestations: Vec<AttestationEvidence>,
    /// What the image's own manifest says it is (an index or an image), for the choice of
    /// the manifest a host runs.
    #[serde(skip)]
    runs: Runs,
    #[serde(skip)]
    _sealed: Sealed,
}

/// Where the manifest a host runs comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Runs {
    /// The image's manifest as the registry served it (digest-checked).
    Manifest(Vec<u8>),
    /// Verified offline from the records: the platform manifest recorded with the release.
    Recorded(Option<Digest>),
    /// Not known (tests without a registry): the image itself.
    #[default]
    Image,
}

/// The refusal for what was wrong with the signatures found for `image`.
fn refusal(image: &PinnedImage, p: SignatureProblem) -> VerifyError {
    match p {
        SignatureProblem::Empty => VerifyError::NoSignature(image.clone()),
        SignatureProblem::UntrustedKey => VerifyError::UntrustedKey(image.clone()),
        SignatureProblem::OtherDigest { signed } => VerifyError::OtherDigest { image: image.clone(), signed },
        SignatureProblem::OtherRepository { signed } => VerifyError::OtherRepository { image: image.clone(), signed },
        SignatureProblem::Malformed(detail) => VerifyError::Malformed { image: image.clone(), detail },
    }
}

/// What the jobs need from verification: a [`Verified`], or why not.
#[async_trait::async_trait]
pub trait VerifyRelease: Send + Sync {
    async fn verify_release(&self, image: &PinnedImage, req: &Requirements) -> Result<Verified, VerifyError>;

    /// The way back while the registry is unreachable: a release that verified when it
    /// was recorded and applied (`facts`), pinned by digest, is accepted again only if
    /// its recorded signer is still one of the policy's keys and it carries what `req`
    /// asks for. Keyless signers cannot be re-checked offline and are refused.
    fn verify_recorded(
        &self,
        image: &PinnedImage,
        facts: &crate::release::ReleaseFacts,
        req: &Requirements,
    ) -> Result<Verified, VerifyError> {
        let _ = (facts, req);
        Err(VerifyError::UntrustedKey(image.clone()))
    }

    /// What `repository:tag` points at now (`None`: no such tag). Only ever used to find
    /// a recorded release by a tag an operator typed; the digest is what is believed.
    async fn resolve_tag(&self, repository: &Repository, tag: &str) -> Result<Option<Digest>, VerifyError> {
        let _ = (repository, tag);
        Ok(None)
    }
}

#[async_trait::async_trait]
impl VerifyRelease for Verifier<'_> {
    async fn verify_release(&self, image: &PinnedImage, req: &Requirements) -> Result<Verified, VerifyError> {
        if self.keys.is_empty() && self.keyless.is_none() {
            return Err(VerifyError::NoKeys);
        }
        self.verify_pinned(image, req).await
    }

    async fn resolve_tag(&self, repository: &Repository, tag: &str) -> Result<Option<Digest>, VerifyError> {
        let reg = |source| VerifyError::Registry { image: format!("{repository}:{tag}"), source };
        Ok(self.registry.manifest(repository, tag).await.map_err(reg)?.map(|(_, d)| d))
    }

    fn verify_recorded(
        &self,
        image: &PinnedImage,
        facts: &crate::release::ReleaseFacts,
        req: &Requirements,
    ) -> Result<Verified, VerifyError> {
        if facts.digest != image.digest.as_str() || facts.repository != image.repository.as_str() {
            return Err(VerifyError::OtherDigest { image: image.clone(), signed: facts.image() });
        }
        let not = |why: &str| VerifyError::NotOffline { image: image.clone(), why: why.to_owned() };
        if !self.keys.iter().any(|k| k.key_id == facts.signer_key_id) {
            return Err(not("its recorded signer is no longer a key of the trust policy (keyless signers are never re-checked offline)"));
        }
        if req.provenance || req.sbom {
            return Err(not(
                "the environment requires attestations, whose builder and commit cannot be re-checked offline",
            ));
        }
        let signature = SignatureEvidence {
            key_id: facts.signer_key_id.clone(),
            layer: facts.signature.clone().unwrap_or_default(),
            payload: String::new(),
            signature: String::new(),
            format: "recorded".into(),
        };
        let recorded = facts.platform_digest.as_deref().and_then(|d| Digest::new(d).ok());
        Ok(Verified {
            image: image.clone(),
            signature,
            attestations: Vec::new(),
            runs: Runs::Recorded(recorded),
            _sealed: Sealed,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sealed;

impl Verified {
    /// What carried the signature, and its digest (`bundle sha256:…`), for the records.
    pub fn signature_summary(&self) -> String {
        format!("{} {}", self.signature.format, self.signature.layer)
    }

    /// A stand-in for the apply job's unit tests, which run without a registry.
    #[cfg(test)]
    pub(crate) fn for_tests(image: PinnedImage, key_id: &str) -> Self {
        let signature = SignatureEvidence {
            key_id: key_id.into(),
            layer: String::new(),
            payload: String::new(),
            signature: String::new(),
            format: "legacy".into(),
        };
        Self { image, signature, attestations: Vec::new(), runs: Runs::Image, _sealed: Sealed }
    }

    /// The digest of the manifest a host runs for `platform` when the image is an image
    /// index (its entry for the platform); `None` when the image is an image manifest.
    /// An index without an entry for `platform` is refused.
    pub fn platform_digest(&self, platform: &crate::platform::Platform) -> Result<Option<Digest>, VerifyError> {
        match &self.runs {
            Runs::Manifest(m) => crate::platform::manifest_for(m, platform)
                .map_err(|source| VerifyError::Platform { image: self.image.clone(), source }),
            Runs::Recorded(d) => Ok(d.clone()),
            Runs::Image => Ok(None),
        }
    }

    pub fn provenance(&self) -> Option<&AttestationEvidence> {
        self.attestations.iter().find(|a| a.kind == cosign::PredicateKind::Slsaprovenance)
    }
    pub fn sbom(&self) -> Option<&AttestationEvidence> {
        self.attestations.iter().find(|a| a.kind.is_sbom())
    }
}

/// Verifies images against a set of trusted keys and builders.
#[derive(Debug)]
pub struct Verifier<'a> {
    pub registry: &'a Registry,
    pub keys: Vec<PublicKey>,
    pub builders: Vec<String>,
    /// Keyless signatures: the trusted root and allowed identities, if the policy has them.
    pub keyless: Option<crate::keyless::Keyless>,
}

impl Verifier<'_> {
    /// Verifies `reference` (which must be `repo@sha256:...`).
    #[tracing::instrument(skip_all, fields(image = %reference))]
    pub async fn verify(&self, reference: &str, req: &Requirements) -> Result<Verified, VerifyError> {
        if self.keys.is_empty() && self.keyless.is_none() {
            return Err(VerifyError::NoKeys);
        }
        let image = match ImageRef::parse(reference).map_err(|e| VerifyError::BadReference(reference.into(), e))? {
            ImageRef::Pinned(p) => p,
            ImageRef::Tagged { repository, tag } => {
                let resolves_to = self.registry.manifest(&repository, &tag).await.ok().flatten().map(|(_, d)| d);
                return Err(VerifyError::NotPinned { reference: reference.into(), repository, resolves_to });
            }
        };
        self.verify_pinned(&image, req).await
    }

    pub async fn verify_pinned(&self, image: &PinnedImage, req: &Requirements) -> Result<Verified, VerifyError> {
        let reg = |source| VerifyError::Registry { image: image.to_string(), source };
        let repo = &image.repository;
        let Some((manifest, _)) = self.registry.manifest(repo, image.digest.as_str()).await.map_err(reg)? else {
            return Err(VerifyError::ImageNotFound(image.clone()));
        };
        let problem = |p| refusal(image, p);
        let sig_layers = self.layers(repo, &cosign::signature_tag(&image.digest)).await.map_err(reg)?;
        // Every attestation is read, in every format, whatever format the signature is in: a
        // provenance that names another commit must never go unchecked. Sigstore bundles are
        // OCI referrers (cosign 3's default).
        let att_layers = self.layers(repo, &cosign::attestation_tag(&image.digest)).await.map_err(reg)?;
        let bundles = self.bundles(image).await?;
        // Every signature found, in every place, is tried: the image verifies if any
        // trusted one does (a legacy `.sig` by a retired key beside a bundle by today's).
        let legacy = sig_layers.as_ref().map(|l| cosign::evaluate_signatures(image, l, &self.keys).map_err(problem));
        let signature = match legacy {
            Some(Ok(evidence)) => evidence,
            // What cannot be verified is named as such, never "no signature".
            None if bundles.is_empty() => return Err(VerifyError::NoSignature(image.clone())),
            None => self.verify_bundles(image, &manifest, &bundles)?,
            Some(Err(e)) if bundles.is_empty() => return Err(e),
            Some(Err(legacy)) => match self.verify_bundles(image, &manifest, &bundles) {
                Ok(evidence) => evidence,
                Err(bundle) => {
                    return Err(VerifyError::NoneVerifies {
                        image: image.clone(),
                        found: vec![format!("`.sig` tag: {legacy}"), format!("Sigstore bundle referrer: {bundle}")],
                    })
                }
            },
        };
        let (mut attestations, mut problems) =
            cosign::evaluate_attestations(image, &att_layers.unwrap_or_default(), &self.keys);
        let (more, more_problems) =
            cosign::evaluate_bundle_attestations(image, &bundles, &self.keys, self.keyless.as_ref());
        attestations.extend(more);
        problems.extend(more_problems);
        if !problems.is_empty() {
            tracing::warn!(?problems, "attestations that did not verify were ignored");
        }
        let verified =
            Verified { image: image.clone(), signature, attestations, runs: Runs::Manifest(manifest), _sealed: Sealed };
        self.check_requirements(&verified, req)?;
        Ok(verified)
    }

    /// The Sigstore bundles among the image's referrers: `(layer digest, bytes)`.
    async fn bundles(&self, image: &PinnedImage) -> Result<Vec<(Digest, Vec<u8>)>, VerifyError> {
        let reg = |source| VerifyError::Registry { image: image.to_string(), source };
        let repo = &image.repository;
        let referrers = self.registry.referrers(repo, &image.digest).await.map_err(reg)?;
        let mut bundles = Vec::new();
        for r in referrers.iter().filter(|r| r.artifact_type.as_deref().and_then(cosign::bundle_format).is_some()) {
            let layers = match &r.manifest {
                Some(m) => Some(self.layers_of(repo, m).await.map_err(reg)?),
                None => self.layers(repo, &r.digest).await.map_err(reg)?,
            }
            .unwrap_or_default();
            bundles.extend(
                layers
                    .into_iter()
                    .filter(|l| cosign::bundle_format(&l.media_type).is_some())
                    .map(|l| (l.digest, l.data)),
            );
        }
        Ok(bundles)
    }

    /// The signature among the bundles, or why none proves one.
    fn verify_bundles(
        &self,
        image: &PinnedImage,
        manifest: &[u8],
        bundles: &[(Digest, Vec<u8>)],
    ) -> Result<SignatureEvidence, VerifyError> {
        match cosign::evaluate_bundles(image, manifest, bundles, &self.keys, self.keyless.as_ref()) {
            Ok(evidence) => Ok(evidence),
            Err(cosign::BundleProblem::Unsupported(format)) => {
                Err(VerifyError::UnsupportedFormat { image: image.clone(), format })
            }
            Err(cosign::BundleProblem::Signature(p)) => Err(refusal(image, p)),
            Err(cosign::BundleProblem::Keyless(p)) => Err(match p {
                KeylessProblem::NotAllowed { found, allowed } => {
                    VerifyError::IdentityNotAllowed { image: image.clone(), found, allowed }
                }
                KeylessProblem::Invalid { what, detail } => {
                    VerifyError::KeylessInvalid { image: image.clone(), what, detail }
                }
                KeylessProblem::OtherDigest => {
                    VerifyError::OtherDigest { image: image.clone(), signed: "a digest other than this image's".into() }
                }
            }),
        }
    }

    fn check_requirements(&self, v: &Verified, req: &Requirements) -> Result<(), VerifyError> {
        let image = &v.image;
        for p in v.attestations.iter().filter(|a| a.kind == cosign::PredicateKind::Slsaprovenance) {
            // What the policy checks must be there: a predicate without it (`{}`) would be
            // recorded now and refused later with no reason.
            let missing: Vec<&'static str> = [
                (p.builder.is_none(), "a builder id"),
                (p.commit.is_none() && req.commit.is_some(), "a source commit"),
            ]
            .into_iter()
            .filter_map(|(absent, what)| absent.then_some(what))
            .collect();
            if !missing.is_empty() {
                return Err(VerifyError::IncompleteProvenance {
                    image: image.clone(),
                    layer: p.layer.clone(),
                    missing,
                });
            }
            if let (Some(release), Some(named)) = (&req.commit, &p.commit) {
                if release != named {
                    return Err(VerifyError::CommitMismatch {
                        image: image.clone(),
                        release: release.clone(),
                        provenance: named.clone(),
                    });
                }
            }
            if let Some(b) = &p.builder {
                if !self.builders.contains(b) {
                    return Err(VerifyError::UntrustedBuilder { image: image.clone(), builder: b.clone() });
                }
            }
        }
        if req.provenance {
            let ok =
                v.provenance().is_some_and(|p| p.builder.is_some() && (req.commit.is_none() || p.commit.is_some()));
            if !ok {
                return Err(VerifyError::MissingProvenance(image.clone()));
            }
        }
        if req.sbom && v.sbom().is_none() {
            return Err(VerifyError::MissingSbom(image.clone()));
        }
        Ok(())
    }

    /// The layers of the manifest at `tag`, with their blobs, or `None` if there is none.
    async fn layers(&self, repo: &Repository, tag: &str) -> Result<Option<Vec<FetchedLayer>>, RegistryError> {
        let Some((manifest, _)) = self.registry.manifest(repo, tag).await? else { return Ok(None) };
        self.layers_of(repo, &manifest).await.map(Some)
    }

    /// The layers `manifest` names, with their blobs.
    async fn layers_of(&self, repo: &Repository, manifest: &[u8]) -> Result<Vec<FetchedLayer>, RegistryError> {
        let descriptors = cosign::manifest_layers(manifest)
            .map_err(|detail| RegistryError::Invalid { registry: repo.registry().into(), detail })?;
        let mut out = Vec::with_capacity(descriptors.len());
        for d in descriptors {
            let data = self.registry.blob(repo, &d.digest).await?;
            out.push(FetchedLayer { media_type: d.media_type, digest: d.digest, annotations: d.annotations, data });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offline way back: accepted only for a recorded signer that is still a policy
    /// key, and never where the environment requires attestations.
    #[test]
    fn recorded_verification_needs_a_still_trusted_signer_and_no_attestation_policy() {
        let registry = crate::registry::Registry::new(&[]);
        let key = crate::keys::SigningKey::generate().unwrap();
        let verifier =
            Verifier { registry: &registry, keys: vec![key.public().clone()], builders: vec![], keyless: None };
        let image = PinnedImage {
            repository: crate::image::Repository::new("127.0.0.1:5000/demo/api").unwrap(),
            digest: crate::image::Digest::of(b"v1"),
        };
        let facts = crate::release::ReleaseFacts {
            repository: image.repository.to_string(),
            digest: image.digest.to_string(),
            signer_key_id: key.public().key_id.clone(),
            signature: Some("bundle sha256:ab".into()),
            ..Default::default()
        };
        let none = Requirements { provenance: false, sbom: false, commit: None };
        let v = verifier.verify_recorded(&image, &facts, &none).unwrap();
        assert_eq!(v.signature_summary(), "recorded bundle sha256:ab");

        let retired = crate::release::ReleaseFacts { signer_key_id: "sha256:retired".into(), ..facts.clone() };
        let e = verifier.verify_recorded(&image, &retired, &none).unwrap_err();
        assert!(e.to_string().contains("no longer a key of the trust policy"), "{e}");

        let attested = Requirements { provenance: true, sbom: false, commit: None };
        let e = verifier.verify_recorded(&image, &facts, &attested).unwrap_err();
        assert!(e.to_string().contains("requires attestations"), "{e}");

        let other = PinnedImage { digest: crate::image::Digest::of(b"v2"), ..image.clone() };
        assert!(verifier.verify_recorded(&other, &facts, &none).is_err(), "the facts are of another image");
    }
}
