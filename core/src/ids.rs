//! The identifiers a plan and a release carry, validated once: a plan file or a host
//! that names a malformed one is refused where it is read, not somewhere later.

use serde::{Deserialize, Serialize};

/// Why a string is not an identifier of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}: expected {expected}")]
pub struct IdError {
    pub value: String,
    pub what: &'static str,
    pub expected: &'static str,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $expected:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(value) {
                    Ok(Self(value.to_owned()))
                } else {
                    let shown: String = value.chars().take(80).collect();
                    Err(IdError { value: crate::untrusted::HostText::new(&shown).to_string(), what: $what, expected: $expected })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

id!(
    /// A release directory's name: `r-` and 16 hex digits derived from its content.
    ReleaseId,
    "release id",
    "`r-` followed by 16 lower-case hex digits",
    |s| s.strip_prefix("r-").is_some_and(|h| is_hex(h, 16))
);

id!(
    /// The hash of a release directory's content: `sha256:` and 64 hex digits.
    ContentHash,
    "content hash",
    "`sha256:` followed by 64 lower-case hex digits",
    |s| s.strip_prefix("sha256:").is_some_and(|h| is_hex(h, 64))
);

id!(
    /// A plan's id: `sha256:` and the 64 hex digits of its canonical form's hash.
    PlanId,
    "plan id",
    "`sha256:` followed by 64 lower-case hex digits, as `agentctl promote` prints it",
    |s| s.strip_prefix("sha256:").is_some_and(|h| is_hex(h, 64))
);

/// A valid content hash standing for `label` in tests (`sha256:` + sha256 of the label;
/// a label that already is a content hash stands for itself).
#[cfg(test)]
pub(crate) fn test_hash(label: &str) -> ContentHash {
    use sha2::{Digest as _, Sha256};
    ContentHash::new(label)
        .unwrap_or_else(|_| ContentHash(format!("sha256:{}", hex::encode(Sha256::digest(label.as_bytes())))))
}

/// A release id for a test constant.
#[cfg(test)]
pub(crate) fn test_id(id: &str) -> ReleaseId {
    ReleaseId::new(id).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_where_they_are_read() {
        assert!(ReleaseId::new("r-0123456789abcdef").is_ok());
        for bad in ["r-0123", "r-0123456789ABCDEF", "../../etc", "r-0123456789abcdef/x", ""] {
            assert!(ReleaseId::new(bad).is_err(), "{bad}");
        }
        let h = format!("sha256:{}", "a".repeat(64));
        assert!(ContentHash::new(&h).is_ok() && PlanId::new(&h).is_ok());
        assert!(PlanId::new("sha256:xyz").is_err());
        let e = serde_json::from_str::<ReleaseId>("\"r-\\u001b[2J\"").unwrap_err().to_string();
        assert!(e.contains("is not a release id") && !e.contains('\u{1b}'), "{e}");
    }
}
