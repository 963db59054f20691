//! OCI image references: repositories, digests, and the difference between a pinned
//! reference (`repo@sha256:...`) and a mutable tag, which is never promoted.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an image reference was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("`{0}` is not an image repository: expected `registry-host[:port]/path` in lower case, like `127.0.0.1:5000/demo/api`")]
    Repository(String),
    #[error("`{0}` is not a sha256 digest: expected `sha256:` followed by 64 lower-case hex digits")]
    Digest(String),
    #[error("`{0}` carries a tag or digest, but a repository is written without one")]
    RepositoryWithVersion(String),
}

/// `registry/path`, with no tag and no digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Repository(String);

impl Repository {
    pub fn new(s: &str) -> Result<Self, ImageError> {
        if s.contains('@') || last_segment(s).contains(':') {
            return Err(ImageError::RepositoryWithVersion(s.to_owned()));
        }
        let Some((registry, path)) = s.split_once('/') else {
            return Err(ImageError::Repository(s.to_owned()));
        };
        let registry_ok = !registry.is_empty()
            && registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && (registry.contains('.') || registry.contains(':') || registry == "localhost");
        let path_ok = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            });
        if registry_ok && path_ok && s.len() <= 255 {
            Ok(Self(s.to_owned()))
        } else {
            Err(ImageError::Repository(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry host (with port) this repository lives on.
    pub fn registry(&self) -> &str {
        self.0.split_once('/').map_or("", |(r, _)| r)
    }

    /// The path inside the registry (`demo/api`).
    pub fn path(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, p)| p)
    }
}

fn last_segment(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Repository {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A content digest, `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    pub fn new(s: &str) -> Result<Self, ImageError> {
        let ok = s
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ImageError::Digest(s.to_owned()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An image reference as an operator typed it: pinned or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `repo@sha256:...`: immutable, the only form that is ever promoted.
    Pinned(PinnedImage),
    /// `repo:tag` or a bare `repo` (implicitly `latest`): mutable, refused.
    Tagged { repository: Repository, tag: String },
}

/// A digest-pinned image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PinnedImage {
    pub repository: Repository,
    pub digest: Digest,
}

impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        if let Some((repo, digest)) = s.split_once('@') {
            return Ok(Self::Pinned(PinnedImage { repository: Repository::new(repo)?, digest: Digest::new(digest)? }));
        }
        let last = last_segment(s);
        let (repo, tag) = match last.rsplit_once(':') {
            Some((_, tag)) => (&s[..s.len() - tag.len() - 1], tag),
            None => (s, "latest"),
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !tag_ok {
            return Err(ImageError::Repository(s.to_owned()));
        }
        Ok(Self::Tagged { repository: Repository::new(repo)?, tag: tag.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn repositories() {
        for ok in ["127.0.0.1:5000/demo/api", "ghcr.io/org/x", "localhost/a", "reg.example:443/a/b-c.d_e"] {
            assert!(Repository::new(ok).is_ok(), "{ok}");
        }
        for bad in ["api", "demo/api", "127.0.0.1:5000/Demo", "127.0.0.1:5000/a//b", "r.io/a b", "r.io/"] {
            assert!(matches!(Repository::new(bad), Err(ImageError::Repository(_))), "{bad}");
        }
        assert!(matches!(Repository::new("r.io/a:v1"), Err(ImageError::RepositoryWithVersion(_))));
        assert!(matches!(Repository::new(&format!("r.io/a@{D}")), Err(ImageError::RepositoryWithVersion(_))));
        let r = Repository::new("127.0.0.1:5000/demo/api").unwrap();
        assert_eq!((r.registry(), r.path()), ("127.0.0.1:5000", "demo/api"));
    }

    #[test]
    fn digests() {
        assert!(Digest::new(D).is_ok());
        assert!(Digest::new(&D.to_uppercase()).is_err());
        assert!(Digest::new("sha256:abc").is_err());
        assert!(Digest::new(&D.replace("sha256", "sha512")).is_err());
        assert_eq!(Digest::of(b"test").as_str(), D);
    }

    #[test]
    fn references() {
        let pinned = ImageRef::parse(&format!("127.0.0.1:5000/demo/api@{D}")).unwrap();
        assert!(matches!(pinned, ImageRef::Pinned(_)));
        match ImageRef::parse("127.0.0.1:5000/demo/api:v2").unwrap() {
            ImageRef::Tagged { repository, tag } => {
                assert_eq!(repository.as_str(), "127.0.0.1:5000/demo/api");
                assert_eq!(tag, "v2");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(ImageRef::parse("127.0.0.1:5000/demo/api").unwrap(), ImageRef::Tagged { tag, .. } if tag == "latest")
        );
        assert!(ImageRef::parse("127.0.0.1:5000/demo/api@sha256:zz").is_err());
    }
}
