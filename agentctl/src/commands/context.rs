//! What most commands need: the validated manifest set, a registry client, trusted keys,
//! and the state store. Built once per run from the global flags.

use crate::failure::{Code, Failure};
use crate::Globals;
use controlplane::keys::{PublicKey, SigningKey};
use controlplane::manifest::{self, ManifestError, ManifestSet, StateUrl};
use controlplane::registry::Registry;
use controlplane::store::{Location, SqlStore};
use std::path::Path;

pub struct Context {
    pub set: ManifestSet,
    pub registry: Registry,
}

impl Context {
    pub fn load(g: &Globals) -> Result<Self, Failure> {
        let set = manifest::load(&g.manifests).map_err(|e| match e {
            ManifestError::Invalid { ref diagnostics, .. } => {
                let list: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                Failure::new(Code::Invalid, anyhow::anyhow!("{e}:\n{}", list.join("\n")))
                    .hint("run `agentctl check` and fix the fields named")
            }
            ManifestError::Io { .. } => Failure::new(Code::Invalid, e)
                .hint("point `--manifests` at a manifest directory, or create one with `agentctl init`"),
        })?;
        let registry = Registry::new(&set.registries);
        Ok(Self { set, registry })
    }

    /// The trust policy's keys, or `keys` when given.
    /// The keyless half of the trust policy, prepared (its trusted root parsed).
    pub fn keyless(&self) -> Result<Option<controlplane::keyless::Keyless>, Failure> {
        let Some(policy) = &self.set.trust.keyless else { return Ok(None) };
        controlplane::keyless::Keyless::new(policy).map(Some).map_err(|e| {
            Failure::new(Code::Invalid, e).hint(
                "write it with `cosign trusted-root create` or `gh attestation trusted-root`, or fetch your private Sigstore's",
            )
        })
    }

    pub fn trusted_keys(&self, keys: &[std::path::PathBuf]) -> Result<Vec<PublicKey>, Failure> {
        if keys.is_empty() {
            self.set
                .trust
                .keys
                .iter()
                .map(|k| {
                    PublicKey::from_pem(&k.path.display().to_string(), &k.pem)
                        .map_err(|e| Failure::new(Code::Invalid, e))
                })
                .collect()
        } else {
            keys.iter().map(|p| PublicKey::load(p).map_err(|e| Failure::new(Code::Invalid, e))).collect()
        }
    }

    /// Where the state store is: a SQLite path resolved against the manifest directory,
    /// or a PostgreSQL URL with the password read from the variable the manifests name.
    pub fn location(&self) -> Result<Location, Failure> {
        match &self.set.settings.state {
            StateUrl::Sqlite(path) => Ok(Location::Sqlite(self.set.resolve(path))),
            StateUrl::Postgres { url, password_env } => {
                let password = match password_env {
                    Some(name) => Some(std::env::var(name).map_err(|_| {
                        Failure::new(
                            Code::Invalid,
                            anyhow::anyhow!("`{name}` (controlplane.state_password_env) is not set"),
                        )
                        .hint(format!("export the state database's password as `{name}`"))
                    })?),
                    None => None,
                };
                Ok(Location::Postgres { url: url.clone(), password })
            }
        }
    }

    /// The state store, created on first use.
    pub async fn store(&self) -> Result<SqlStore, Failure> {
        Ok(SqlStore::open(&self.location()?).await?)
    }

    /// The state store if it exists, writable (never created here).
    pub async fn existing_store(&self) -> Result<Option<SqlStore>, Failure> {
        Ok(SqlStore::open_existing(&self.location()?).await?)
    }

    /// The state store if it exists, read-only: for dry-runs and probes.
    pub async fn read_store(&self) -> Result<Option<SqlStore>, Failure> {
        Ok(SqlStore::open_read_only(&self.location()?).await?)
    }

    /// Who is operating, for records and receipts.
    pub fn operator(&self) -> String {
        std::env::var(&self.set.settings.operator_env).unwrap_or_else(|_| "unknown".into())
    }
}

/// A cosign private key, decrypted with `COSIGN_PASSWORD`.
pub fn signing_key(path: &Path) -> Result<SigningKey, Failure> {
    let Ok(password) = std::env::var("COSIGN_PASSWORD") else {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("`COSIGN_PASSWORD` is not set"))
            .hint("set it to the key's password (it may be empty: `COSIGN_PASSWORD=`)"));
    };
    SigningKey::load(path, password.as_bytes()).map_err(|e| {
        let hint = match e {
            controlplane::keys::KeyError::IsPublic { .. } => {
                "`--key` takes the private key (`cosign.key`); the `.pub` is what the trust policy lists"
            }
            _ => "check the key file and `COSIGN_PASSWORD`",
        };
        Failure::new(Code::Invalid, e).hint(hint)
    })
}
