//! The two requests oci-client 0.15 cannot make, over its own credentials: the OCI 1.1
//! referrers API read page by page (its `Link: <…>; rel="next"` header, with each entry's
//! `artifactType`), and a manifest `PUT` with a precondition (`If-Match` /
//! `If-None-Match: *`), which registries that honour conditional requests answer with
//! `412 Precondition Failed` when another writer came first.
//!
//! Sources: the OCI distribution specification 1.1 ("Listing Referrers", pagination by
//! `Link` header, RFC 8288) and RFC 9110 §13 (conditional requests).

use super::{Registry, RegistryError, MAX_MANIFEST_BYTES, OCI_EMPTY, OCI_INDEX};
use crate::image::{Digest, Repository};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

/// At most this many pages of one referrers list are read.
pub const MAX_REFERRER_PAGES: usize = 64;

/// One entry of a referrers list: its digest and the artifact type the list gives it
/// (`None` when it gives none, or the empty one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub digest: String,
    pub artifact_type: Option<String>,
}

/// What the referrers API answered.
pub enum ApiAnswer {
    /// An OCI index (every page of it).
    Listed(Vec<Listed>),
    /// The registry has no such API: a 404 (`true`: the OCI 1.1 signal, remembered for the
    /// run), or a 400, 405, 406, or an answer that is not an OCI index (`false`).
    Absent { not_found: bool },
}

/// What must hold for a conditional manifest `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The tag still names the manifest with this digest (`If-Match: "<digest>"`).
    Matches(Digest),
    /// The tag names nothing yet (`If-None-Match: *`).
    Absent,
}

impl Registry {
    fn base(&self, repo: &Repository) -> String {
        let insecure = self.settings.iter().any(|s| s.host == repo.registry() && s.insecure);
        format!("{}://{}", if insecure { "http" } else { "https" }, repo.registry())
    }

    /// Sends `build()`'s request with the repository's credentials; on a `401` that asks
    /// for a bearer token, once more with the token oci-client obtains for `op`.
    async fn send(
        &self,
        repo: &Repository,
        op: RegistryOperation,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let auth = self.auth(repo)?;
        let fail = |e: reqwest::Error| Self::classify(repo, OciDistributionError::RequestError(e));
        let with = |rb: reqwest::RequestBuilder| match &auth {
            RegistryAuth::Basic(u, p) => rb.basic_auth(u, Some(p)),
            RegistryAuth::Bearer(t) => rb.bearer_auth(t),
            RegistryAuth::Anonymous => rb,
        };
        self.count(1);
        let resp = with(build()).send().await.map_err(fail)?;
        let asks_token = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"));
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || !asks_token {
            return Ok(resp);
        }
        let reference = Reference::with_tag(repo.registry().into(), repo.path().into(), "latest".into());
        self.count(1);
        let token = self.client.auth(&reference, &auth, op).await.map_err(|e| Self::classify(repo, e))?;
        let Some(token) = token else { return Ok(resp) };
        self.count(1);
        build().bearer_auth(token).send().await.map_err(fail)
    }

    /// The body of `resp`, at most [`MAX_MANIFEST_BYTES`] (the read stops there).
    async fn bounded_body(repo: &Repository, mut resp: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::new();
        while let Some(chunk) =
            resp.chunk().await.map_err(|e| Self::classify(repo, OciDistributionError::RequestError(e)))?
        {
            if out.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::TooLarge {
                    registry: repo.registry().into(),
                    what: "a referrers list page",
                    limit: MAX_MANIFEST_BYTES,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn status_error(repo: &Repository, url: &str, status: reqwest::StatusCode) -> RegistryError {
        Self::classify(
            repo,
            OciDistributionError::ServerError { code: status.as_u16(), url: url.to_owned(), message: String::new() },
        )
    }

    /// The referrers API's list for `digest`, every page of it (at most
    /// [`MAX_REFERRER_PAGES`], each at most [`MAX_MANIFEST_BYTES`]). A `next` link to
    /// another host is not followed (the credentials stay with their registry).
    pub(super) async fn referrers_list(&self, repo: &Repository, digest: &Digest) -> Result<ApiAnswer, RegistryError> {
        let base = self.base(repo);
        let mut url = format!("{base}/v2/{}/referrers/{digest}", repo.path());
        let mut out = Vec::new();
        for page in 0..MAX_REFERRER_PAGES {
            let resp = self
                .send(repo, RegistryOperation::Pull, || self.http.get(&url).header(reqwest::header::ACCEPT, OCI_INDEX))
                .await?;
            let status = resp.status().as_u16();
            match status {
                200 => {}
                404 if page == 0 => return Ok(ApiAnswer::Absent { not_found: true }),
                400 | 405 | 406 if page == 0 => return Ok(ApiAnswer::Absent { not_found: false }),
                _ => return Err(Self::status_error(repo, &url, resp.status())),
            }
            let next = match next_link(resp.headers(), &base) {
                Next::End => None,
                Next::At(url) => Some(url),
                // The list goes on where agentctl will not follow: an error, never a list cut short.
                Next::Refused(target) => {
                    return Err(RegistryError::Invalid {
                        registry: repo.registry().into(),
                        detail: format!(
                            "the referrers list continues at `{}`, which is not on this registry; it is not followed",
                            crate::untrusted::HostText::new(&target)
                        ),
                    })
                }
            };
            let body = Self::bounded_body(repo, resp).await?;
            match parse_list(&body) {
                Some(entries) => out.extend(entries),
                // Not an OCI index: a proxy's page, another API under the same path.
                None if page == 0 => return Ok(ApiAnswer::Absent { not_found: false }),
                None => {
                    return Err(RegistryError::Invalid {
                        registry: repo.registry().into(),
                        detail: format!("page {} of the referrers list is not an OCI index", page + 1),
                    })
                }
            }
            match next {
                Some(n) => url = n,
                None => return Ok(ApiAnswer::Listed(out)),
            }
        }
        Err(RegistryError::Invalid {
            registry: repo.registry().into(),
            detail: format!("the referrers list of {digest} runs past {MAX_REFERRER_PAGES} pages"),
        })
    }

    /// Uploads `manifest` (an OCI index) under `tag` only if `precondition` holds. `None`
    /// when the registry answered `412 Precondition Failed` (another writer came first);
    /// a registry that ignores preconditions stores it as any `PUT`.
    pub async fn push_index_if(
        &self,
        repo: &Repository,
        tag: &str,
        manifest: Vec<u8>,
        precondition: &Precondition,
    ) -> Result<Option<Digest>, RegistryError> {
        let digest = Digest::of(&manifest);
        let url = format!("{}/v2/{}/manifests/{tag}", self.base(repo), repo.path());
        let (name, value) = match precondition {
            Precondition::Matches(d) => (reqwest::header::IF_MATCH, format!("\"{d}\"")),
            Precondition::Absent => (reqwest::header::IF_NONE_MATCH, "*".to_owned()),
        };
        let resp = self
            .send(repo, RegistryOperation::Push, || {
                self.http
                    .put(&url)
                    .header(reqwest::header::CONTENT_TYPE, OCI_INDEX)
                    .header(name.clone(), value.clone())
                    .body(manifest.clone())
            })
            .await?;
        match resp.status().as_u16() {
            200..=299 => Ok(Some(digest)),
            412 => Ok(None),
            _ => Err(Self::status_error(repo, &url, resp.status())),
        }
    }
}

/// Where a referrers list goes on.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// No `rel="next"` link: the list ends here.
    End,
    /// The next page, as an absolute URL on the same registry.
    At(String),
    /// A next page agentctl does not follow (another host or scheme, a link it cannot read).
    Refused(String),
}

/// The `rel="next"` target of a `Link` header: a path is resolved against `base`, an
/// absolute URL must be on `base`; anything else is [`Next::Refused`].
fn next_link(headers: &reqwest::header::HeaderMap, base: &str) -> Next {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { return Next::Refused("(a Link header that is not text)".into()) };
        for link in value.split(',') {
            let (target, params) = link.split_once(';').unwrap_or((link, ""));
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
            });
            if !is_next {
                continue;
            }
            let target = target.trim().strip_prefix('<').and_then(|t| t.strip_suffix('>'));
            return match target {
                Some(t) if t.starts_with('/') && !t.starts_with("//") => Next::At(format!("{base}{t}")),
                Some(t) if t.starts_with(&format!("{base}/")) => Next::At(t.to_owned()),
                Some(t) => Next::Refused(t.to_owned()),
                None => Next::Refused(link.trim().to_owned()),
            };
        }
    }
    Next::End
}

/// The entries of one page: `None` when it is not an OCI index.
fn parse_list(body: &[u8]) -> Option<Vec<Listed>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("mediaType").and_then(|t| t.as_str()).is_some_and(|t| t != OCI_INDEX) {
        return None;
    }
    let entries = v.get("manifests")?.as_array()?;
    Some(
        entries
            .iter()
            .filter_map(|e| {
                // Only a well-formed digest is ever asked for (never read as a tag).
                let digest = e.get("digest")?.as_str().filter(|d| Digest::new(d).is_ok())?.to_owned();
                let artifact_type =
                    e.get("artifactType").and_then(|t| t.as_str()).filter(|t| *t != OCI_EMPTY).map(str::to_owned);
                Some(Listed { digest, artifact_type })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_stay_on_the_registry() {
        let base = "http://127.0.0.1:5000";
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::LINK, v.parse().unwrap());
            next_link(&m, base)
        };
        let at = |u: &str| Next::At(u.to_owned());
        assert_eq!(
            h(r#"</v2/demo/api/referrers/sha256:a?n=2&last=x>; rel="next""#),
            at("http://127.0.0.1:5000/v2/demo/api/referrers/sha256:a?n=2&last=x")
        );
        assert_eq!(h(r#"<http://127.0.0.1:5000/v2/x?p=2>; rel=next"#), at("http://127.0.0.1:5000/v2/x?p=2"));
        let refused = |u: &str| Next::Refused(u.to_owned());
        assert_eq!(h(r#"<https://elsewhere.example/v2/x>; rel="next""#), refused("https://elsewhere.example/v2/x"));
        assert_eq!(h(r#"<//elsewhere.example/v2/x>; rel="next""#), refused("//elsewhere.example/v2/x"));
        assert_eq!(h(r#"<v2/x>; rel="next""#), refused("v2/x"), "relative without a leading slash");
        assert_eq!(h(r#"</v2/x>; rel="prev""#), Next::End);
        assert_eq!(h(r#"</v2/x>; rel="prev", </v2/y>; rel="next""#), at("http://127.0.0.1:5000/v2/y"));
    }

    #[test]
    fn a_page_is_an_oci_index_or_nothing() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let page = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"digest":"{}","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}},
            {{"digest":"{}","artifactType":"application/vnd.oci.empty.v1+json"}},
            {{"digest":"{}"}},{{"nodigest":1}},{{"digest":"latest"}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let got = parse_list(page.as_bytes()).unwrap();
        assert_eq!(got.len(), 3, "a tag or a missing digest is no entry");
        assert_eq!(got[0].artifact_type.as_deref(), Some("application/vnd.dev.sigstore.bundle.v0.3+json"));
        assert_eq!((got[1].artifact_type.as_deref(), got[2].artifact_type.as_deref()), (None, None));
        assert!(parse_list(b"<html></html>").is_none());
        assert!(parse_list(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#).is_none());
        assert!(parse_list(br#"{"errors":[]}"#).is_none());
    }
}
