//! Validated names for the things an operator refers to.
//!
//! A name is checked once, at the manifest boundary, and then carried as a type, so no
//! later layer (remote commands, file paths, SQL) ever sees a name with a shell
//! metacharacter, a path separator or an upper-case surprise.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid name; the message is shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, NameError> {
                $check(s, $what).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

/// Lower-case DNS-label style: what services, environments and hosts are called.
fn check_label(s: &str, what: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "{what} `{}` is not a valid name: use 1 to 63 lower-case letters, digits and `-`, \
             not starting or ending with `-`",
            s.escape_debug()
        )))
    }
}

/// Upper-case environment-variable style: how secrets are referenced.
fn check_secret(s: &str, what: &str) -> Result<(), NameError> {
    let mut bytes = s.bytes();
    let ok = s.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "{what} `{}` is not a valid secret name: use upper-case letters, digits and `_` \
             (like `API_TOKEN`); the value itself never belongs in a manifest",
            s.escape_debug()
        )))
    }
}

/// POSIX login name.
fn check_user(s: &str, what: &str) -> Result<(), NameError> {
    let mut bytes = s.bytes();
    let ok = s.len() <= 32
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "{what} `{}` is not a valid login name: use lower-case letters, digits, `_` and `-`",
            s.escape_debug()
        )))
    }
}

name_type!(
    /// A service deployed to golden VMs (`api`).
    ServiceName, "service", check_label
);
name_type!(
    /// An environment (`staging`, `prod`).
    EnvName, "environment", check_label
);
name_type!(
    /// A golden VM, unique within its environment (`vm-1`).
    HostName, "host", check_label
);
name_type!(
    /// The name of a secret the service needs; its value lives elsewhere.
    SecretName, "secret", check_secret
);
name_type!(
    /// The SSH login user on a golden VM.
    UserName, "user", check_user
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["api", "vm-1", "a", "prod2"] {
            assert!(ServiceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Api", "-a", "a-", "a b", "a;rm -rf /", "a/b", "a$(x)", "é", &"a".repeat(64)] {
            assert!(HostName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert!(SecretName::new("API_TOKEN").is_ok());
        assert!(SecretName::new("_X1").is_ok());
        for bad in ["api_token", "1X", "", "A-B", "A B"] {
            assert!(SecretName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert!(UserName::new("deploy").is_ok());
        assert!(UserName::new("root").is_ok());
        assert!(UserName::new("x;y").is_err());
        assert!(UserName::new("-o").is_err());
    }
}
