//! The OCI registry edge: manifests and blobs by digest, over oci-client.
//!
//! Errors keep "the registry said no such thing" apart from "the registry could not be
//! asked", so that an outage is never reported as a missing signature.

use crate::image::{Digest, Repository};
use crate::manifest::RegistrySettings;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Manifests bigger than this are refused: a registry is not trusted to bound itself.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Blobs the control plane reads (signature payloads, attestations) are small.
pub const MAX_BLOB_BYTES: usize = 16 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// What a manifest request accepts: image manifests and image indexes, OCI and Docker
/// (an image pinned by an index digest — `docker buildx`'s default — is an index).
const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// At most this many referrers of one image that their list gives no type are read one by
/// one (their manifests say what they are); typed entries cost nothing and are not counted.
pub const MAX_UNTYPED_REFERRERS: usize = 256;

mod http;
pub use http::{Precondition, MAX_REFERRER_PAGES};

/// A manifest that refers to an image (its `subject`), as the referrers API or the
/// referrers tag schema lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    /// The referrer's type: its own manifest's `artifactType`, else its config's media
    /// type, else its first layer's (see [`artifact_type_of`]); the index entry's only
    /// when it names a type other than the empty one.
    pub artifact_type: Option<String>,
    /// The referrer's manifest, when it was read to learn its type (so it is not asked for
    /// twice).
    pub manifest: Option<Vec<u8>>,
}

/// The OCI empty descriptor's media type: what cosign 3 puts as an index entry's
/// `artifactType` for a bundle whose own manifest says what it is.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry `{registry}` is unreachable")]
    Unreachable {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry `{registry}` answered with an error")]
    Failed {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry `{registry}` sent {what} over the size limit of {limit} bytes")]
    TooLarge { registry: String, what: &'static str, limit: usize },
    #[error("SECURITY: registry `{registry}` sent content whose digest is `{actual}`, not the requested `{expected}`")]
    DigestMismatch { registry: String, expected: String, actual: String },
    #[error("SECURITY: registry `{registry}` sent content that does not match its digest: {detail}")]
    Substituted { registry: String, detail: String },
    #[error("registry `{registry}` sent an invalid manifest: {detail}")]
    Invalid { registry: String, detail: String },
    #[error("credentials for registry `{registry}`: environment variable `{var}` is not set")]
    MissingCredential { registry: String, var: String },
    /// What a blob streamed into stopped taking it (its reader failed first): not the
    /// registry's doing.
    #[error("the reader of a blob from registry `{registry}` stopped before its end")]
    SinkClosed { registry: String },
}

impl RegistryError {
    /// The registry could not be reached or is failing (a connection error, a 5xx or 429
    /// answer): worth retrying later, never a judgement on the image.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Failed { source: OciDistributionError::ServerError { code, .. }, .. } => *code >= 500 || *code == 429,
            Self::Failed { source: OciDistributionError::RequestError(e), .. } => {
                e.is_connect() || e.is_timeout() || e.status().is_some_and(|s| s.is_server_error())
            }
            _ => false,
        }
    }
}

/// A registry client for the registries a manifest set lists.
#[derive(Clone)]
pub struct Registry {
    client: Arc<Client>,
    /// For the requests oci-client cannot make (see `http`).
    http: reqwest::Client,
    settings: Vec<RegistrySettings>,
    round_trips: Arc<AtomicU64>,
    /// Registries that answered 404 to the referrers API: by the OCI 1.1 spec they do not
    /// implement it (one that does answers an empty index), so the tag schema is asked
    /// directly from then on.
    no_referrers_api: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("registries", &self.settings.len()).finish()
    }
}

impl Registry {
    /// Plain HTTP is used only for registries listed with `insecure = true`.
    pub fn new(settings: &[RegistrySettings]) -> Self {
        let insecure: Vec<String> = settings.iter().filter(|r| r.insecure).map(|r| r.host.clone()).collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
            use_monolithic_push: true,
            ..ClientConfig::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            // A redirect is an answer of its own: credentials never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS backend is compiled in");
        Self {
            client: Arc::new(Client::new(config)),
            http,
            settings: settings.to_vec(),
            round_trips: Arc::default(),
            no_referrers_api: Arc::default(),
        }
    }

    /// Requests sent so far (an upper bound for chunked uploads: one per call).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn count(&self, n: u64) {
        self.round_trips.fetch_add(n, Ordering::Relaxed);
    }

    /// Credentials from the environment variables the manifests name.
    pub fn auth(&self, repo: &Repository) -> Result<RegistryAuth, RegistryError> {
        let Some(s) = self.settings.iter().find(|r| r.host == repo.registry()) else {
            return Ok(RegistryAuth::Anonymous);
        };
        let var = |name: &String| {
            std::env::var(name)
                .map_err(|_| RegistryError::MissingCredential { registry: s.host.clone(), var: name.clone() })
        };
        match (&s.username_env, &s.password_env) {
            (Some(u), Some(p)) => Ok(RegistryAuth::Basic(var(u)?, var(p)?)),
            (None, Some(p)) => Ok(RegistryAuth::Bearer(var(p)?)),
            _ => Ok(RegistryAuth::Anonymous),
        }
    }

    fn reference(repo: &Repository, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(repo.registry().into(), repo.path().into(), tag_or_digest.into())
        } else {
            Reference::with_tag(repo.registry().into(), repo.path().into(), tag_or_digest.into())
        }
    }

    fn classify(repo: &Repository, e: OciDistributionError) -> RegistryError {
        let registry = repo.registry().to_owned();
        if let OciDistributionError::DigestError(d) = &e {
            return RegistryError::Substituted { registry, detail: d.to_string() };
        }
        let unreachable = match &e {
            OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout() || r.is_request(),
            OciDistributionError::ServerError { code, .. } => *code >= 500,
            OciDistributionError::IoError(_) => true,
            _ => false,
        };
        if unreachable {
            RegistryError::Unreachable { registry, source: e }
        } else {
            RegistryError::Failed { registry, source: e }
        }
    }

    fn is_not_found(e: &OciDistributionError) -> bool {
        match e {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 404,
            OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                        | oci_client::errors::OciErrorCode::ManifestBlobUnknown
                        // Harbor's 404 (and others'): not an OCI code, but what it says.
                        | oci_client::errors::OciErrorCode::NotFound
                )
            }),
            _ => false,
        }
    }

    /// The manifest at `tag_or_digest`, its digest checked, or `None` if there is none.
    pub async fn manifest(
        &self,
        repo: &Repository,
        tag_or_digest: &str,
    ) -> Result<Option<(Vec<u8>, Digest)>, RegistryError> {
        let auth = self.auth(repo)?;
        self.count(1);
        let started = std::time::Instant::now();
        let r = self.client.pull_manifest_raw(&Self::reference(repo, tag_or_digest), &auth, MANIFEST_TYPES).await;
        tracing::debug!(repository = %repo, reference = tag_or_digest, ok = r.is_ok(), ms = started.elapsed().as_millis() as u64, "registry: manifest");
        let (bytes, _) = match r {
            Ok(x) => x,
            Err(e) if Self::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Self::classify(repo, e)),
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                registry: repo.registry().into(),
                what: "a manifest",
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let digest = Digest::of(&bytes);
        if tag_or_digest.starts_with("sha256:") && digest.as_str() != tag_or_digest {
            return Err(RegistryError::DigestMismatch {
                registry: repo.registry().into(),
                expected: tag_or_digest.into(),
                actual: digest.to_string(),
            });
        }
        Ok(Some((bytes, digest)))
    }

    /// The referrers of `digest`: through the OCI 1.1 referrers API (every page), or, on a
    /// registry without it, the referrers tag schema (an index under the tag
    /// `sha256-<hex>`). Lists of any length are read whole (each page or index bounded in
    /// bytes); an entry that names its type costs nothing more, one that does not costs its
    /// manifest (at most [`MAX_UNTYPED_REFERRERS`] of them). Empty when there are none; a
    /// registry error stays an error, never "none".
    pub async fn referrers(&self, repo: &Repository, digest: &Digest) -> Result<Vec<Referrer>, RegistryError> {
        let auth = self.auth(repo)?;
        self.client.store_auth_if_needed(repo.registry(), &auth).await;
        let known_without = self.no_referrers_api.lock().unwrap_or_else(|p| p.into_inner()).contains(repo.registry());
        if !known_without {
            match self.referrers_list(repo, digest).await? {
                http::ApiAnswer::Listed(found) if !found.is_empty() => return self.typed(repo, found).await,
                // An empty answer is believed only if the tag schema lists nothing either
                // (referrers pushed before the registry gained the API are listed there).
                http::ApiAnswer::Listed(_) => {}
                // Only the OCI 1.1 signal (a 404) is remembered for the run; any other odd
                // answer (an error page from a proxy) is read past for this image alone.
                http::ApiAnswer::Absent { not_found } => {
                    if not_found {
                        self.no_referrers_api
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(repo.registry().to_owned());
                    }
                }
            }
        }
        let Some(bytes) = self.tag_schema_index(repo, digest).await? else { return Ok(Vec::new()) };
        let listed = listed_in_index(&bytes)
            .map_err(|detail| RegistryError::Invalid { registry: repo.registry().into(), detail })?;
        self.typed(repo, listed).await
    }

    /// Each listed referrer with its type: the list's, else its own manifest's (read once).
    async fn typed(&self, repo: &Repository, listed: Vec<http::Listed>) -> Result<Vec<Referrer>, RegistryError> {
        let untyped = listed.iter().filter(|l| l.artifact_type.is_none()).count();
        if untyped > MAX_UNTYPED_REFERRERS {
            return Err(RegistryError::Invalid {
                registry: repo.registry().into(),
                detail: format!(
                    "{untyped} referrers are listed without an artifact type (at most {MAX_UNTYPED_REFERRERS} are read one by one)"
                ),
            });
        }
        let mut out = Vec::with_capacity(listed.len());
        for l in listed {
            match l.artifact_type {
                Some(t) => out.push(Referrer { digest: l.digest, artifact_type: Some(t), manifest: None }),
                None => {
                    let Some((bytes, _)) = self.manifest(repo, &l.digest).await? else { continue };
                    out.push(Referrer {
                        digest: l.digest,
                        artifact_type: artifact_type_of(&bytes),
                        manifest: Some(bytes),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The referrers tag schema's index of `digest` (the manifest under the tag
    /// `sha256-<hex>`), bounded, or `None` when there is none.
    pub async fn tag_schema_index(&self, repo: &Repository, digest: &Digest) -> Result<Option<Vec<u8>>, RegistryError> {
        let auth = self.auth(repo)?;
        let hex = digest.as_str().trim_start_matches("sha256:");
        self.count(1);
        let r =
            self.client.pull_manifest_raw(&Self::reference(repo, &format!("sha256-{hex}")), &auth, &[OCI_INDEX]).await;
        let bytes = match r {
            Ok((b, _)) => b,
            Err(e) if Self::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Self::classify(repo, e)),
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                registry: repo.registry().into(),
                what: "a referrers index",
                limit: MAX_MANIFEST_BYTES,
            });
        }
        Ok(Some(bytes))
    }

    /// The blob `digest`, checked against its digest and bounded in size.
    pub async fn blob(&self, repo: &Repository, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
        self.auth(repo)?;
        self.count(1);
        // The bound holds while the body streams in: the download stops at the limit.
        let mut out = Bounded { buf: Vec::new(), limit: MAX_BLOB_BYTES, over: false };
        let started = std::time::Instant::now();
        let pulled = self.client.pull_blob(&Self::reference(repo, digest.as_str()), digest.as_str(), &mut out).await;
        tracing::debug!(repository = %repo, %digest, bytes = out.buf.len(), ms = started.elapsed().as_millis() as u64, "registry: blob");
        if out.over {
            return Err(RegistryError::TooLarge {
                registry: repo.registry().into(),
                what: "a blob",
                limit: MAX_BLOB_BYTES,
            });
        }
        pulled.map_err(|e| Self::classify(repo, e))?;
        let out = out.buf;
        let actual = Digest::of(&out);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                registry: repo.registry().into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(out)
    }

    /// Streams the blob `digest` into `sink` as it arrives (memory: the sink's own), at
    /// most `limit` bytes, and checks the digest of what streamed. `sink` is shut down at
    /// the end (a reader on its other side sees the end of the stream). Returns the bytes
    /// streamed.
    pub async fn blob_into<W>(
        &self,
        repo: &Repository,
        digest: &Digest,
        sink: W,
        limit: u64,
    ) -> Result<u64, RegistryError>
    where
        W: tokio::io::AsyncWrite + Unpin + Send,
    {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        self.auth(repo)?;
        self.count(1);
        let mut out = Hashing { inner: sink, hasher: sha2::Sha256::new(), bytes: 0, limit, over: false, closed: false };
        let started = std::time::Instant::now();
        let pulled = self.client.pull_blob(&Self::reference(repo, digest.as_str()), digest.as_str(), &mut out).await;
        let _ = out.inner.shutdown().await;
        tracing::debug!(repository = %repo, %digest, bytes = out.bytes, ms = started.elapsed().as_millis() as u64, "registry: blob streamed");
        if out.closed {
            return Err(RegistryError::SinkClosed { registry: repo.registry().into() });
        }
        if out.over {
            return Err(RegistryError::TooLarge {
                registry: repo.registry().into(),
                what: "a layer",
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        pulled.map_err(|e| Self::classify(repo, e))?;
        let actual = format!("sha256:{}", hex::encode(out.hasher.finalize()));
        if actual != digest.as_str() {
            return Err(RegistryError::DigestMismatch {
                registry: repo.registry().into(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(out.bytes)
    }

    /// Uploads `data` as a blob; returns its digest.
    pub async fn push_blob(&self, repo: &Repository, data: &[u8]) -> Result<Digest, RegistryError> {
        let auth = self.auth(repo)?;
        let digest = Digest::of(data);
        let reference = Self::reference(repo, digest.as_str());
        self.client.store_auth_if_needed(repo.registry(), &auth).await;
        self.count(2);
        self.client.push_blob(&reference, data, digest.as_str()).await.map_err(|e| Self::classify(repo, e))?;
        Ok(digest)
    }

    /// Uploads a manifest under `tag` (or by digest when `tag` is `None`); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &Repository,
        tag: Option<&str>,
        manifest: Vec<u8>,
    ) -> Result<Digest, RegistryError> {
        let auth = self.auth(repo)?;
        let digest = Digest::of(&manifest);
        let reference = Self::reference(repo, tag.unwrap_or(digest.as_str()));
        self.client.store_auth_if_needed(repo.registry(), &auth).await;
        self.count(1);
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|m| m.get("mediaType").and_then(|t| t.as_str()).map(str::to_owned))
            .filter(|t| t == OCI_INDEX)
            .unwrap_or_else(|| OCI_MANIFEST.to_owned());
        let content_type = media_type.parse().expect("a static header value");
        self.client.push_manifest_raw(&reference, manifest, content_type).await.map_err(|e| Self::classify(repo, e))?;
        Ok(digest)
    }

    /// Pushes an image or artifact (config + layers) and returns the manifest digest.
    pub async fn push_artifact(
        &self,
        repo: &Repository,
        tag: Option<&str>,
        artifact: &Artifact,
    ) -> Result<Digest, RegistryError> {
        let config = self.push_blob(repo, &artifact.config).await?;
        let mut layers = Vec::new();
        for layer in &artifact.layers {
            let digest = self.push_blob(repo, &layer.data).await?;
            let mut desc =
                serde_json::json!({ "mediaType": layer.media_type, "digest": digest, "size": layer.data.len() });
            if !layer.annotations.is_empty() {
                desc["annotations"] = serde_json::to_value(&layer.annotations).expect("string map");
            }
            layers.push(desc);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": artifact.config_media_type, "digest": config, "size": artifact.config.len() },
            "layers": layers,
        });
        self.push_manifest(repo, tag, serde_json::to_vec(&manifest).expect("JSON")).await
    }
}

/// A sink that refuses to hold more than `limit` bytes: the write that would pass it fails
/// (and sets `over`), so a streaming download ends there.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other("over the size limit")));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A sink that hashes and counts what passes through it, and stops at a bound.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
    limit: u64,
    over: bool,
    /// The sink refused a write (its reader is gone).
    closed: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Hashing<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use sha2::Digest as _;
        if self.bytes + data.len() as u64 > self.limit {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other("over the size limit")));
        }
        let this = &mut *self;
        let written = std::pin::Pin::new(&mut this.inner).poll_write(cx, data);
        match &written {
            std::task::Poll::Ready(Ok(n)) => {
                this.hasher.update(&data[..*n]);
                this.bytes += *n as u64;
            }
            std::task::Poll::Ready(Err(_)) => this.closed = true,
            std::task::Poll::Pending => {}
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The entries of a referrers index (the tag schema's `sha256-…` index): each well-formed
/// digest with its artifact type; entries without a valid digest are skipped. `Err`: not
/// JSON. The bytes are bounded by the manifest fetch ([`MAX_MANIFEST_BYTES`]).
pub(crate) fn listed_in_index(bytes: &[u8]) -> Result<Vec<http::Listed>, String> {
    let index: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("referrers index: {e}"))?;
    let entries = index.get("manifests").and_then(|m| m.as_array()).map(Vec::as_slice).unwrap_or_default();
    Ok(entries
        .iter()
        .filter_map(|e| {
            Some(http::Listed {
                digest: e.get("digest")?.as_str().filter(|d| Digest::new(d).is_ok())?.to_owned(),
                artifact_type: e
                    .get("artifactType")
                    .and_then(|t| t.as_str())
                    .filter(|t| *t != OCI_EMPTY)
                    .map(str::to_owned),
            })
        })
        .collect())
}

/// What a referrer is, from its own manifest (the OCI 1.1 rule): `artifactType`, else
/// the config's media type unless that is the empty one, else the first layer's.
pub fn artifact_type_of(manifest: &[u8]) -> Option<String> {
    fn named(t: Option<&serde_json::Value>) -> Option<&str> {
        t.and_then(|t| t.as_str()).filter(|t| *t != OCI_EMPTY)
    }
    let m: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    named(m.get("artifactType"))
        .or_else(|| named(m.get("config").and_then(|c| c.get("mediaType"))))
        .or_else(|| named(m.get("layers")?.as_array()?.first()?.get("mediaType")))
        .map(str::to_owned)
}

/// An image or artifact to push: config blob and layers.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub config_media_type: String,
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub data: Vec<u8>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A registry that answers a blob with an endless body: the download stops at the
    /// bound (what was sent is at most the bound plus what the sockets buffer), and the
    /// answer is "too large", never a blob held whole in memory.
    #[tokio::test]
    async fn a_blob_past_the_bound_stops_downloading_at_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if !String::from_utf8_lossy(&head).contains("/blobs/") {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                            .await;
                        return;
                    }
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").await;
                    let chunk = vec![0u8; 64 * 1024];
                    while conn.write_all(&chunk).await.is_ok() {
                        counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        let host = format!("127.0.0.1:{port}");
        let reg = Registry::new(&[crate::manifest::RegistrySettings {
            host: host.clone(),
            insecure: true,
            username_env: None,
            password_env: None,
        }]);
        let repo = Repository::new(&format!("{host}/demo/api")).unwrap();
        let err = reg.blob(&repo, &Digest::of(b"anything")).await.unwrap_err();
        assert!(matches!(err, RegistryError::TooLarge { what: "a blob", .. }), "{err:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let total = sent.load(Ordering::SeqCst);
        assert!(
            total < (MAX_BLOB_BYTES + (32 << 20)) as u64,
            "the registry sent {total} bytes before the client stopped"
        );
        server.abort();
    }
}
