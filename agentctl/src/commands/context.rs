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

/// The environment `name` of the manifests (exit 2 naming the known ones, when none).
pub fn environment<'a>(ctx: &'a Context, name: &str) -> Result<&'a controlplane::manifest::Environment, Failure> {
    ctx.set.environments.iter().find(|e| e.name.as_str() == name).ok_or_else(|| {
        let known: Vec<_> = ctx.set.environments.iter().map(|e| e.name.to_string()).collect();
        Failure::new(Code::Invalid, anyhow::anyhow!("no environment `{name}` in the manifests"))
            .hint(format!("known environments: {}", known.join(", ")))
    })
}

/// The key that signs receipts, with its password from the variable the manifests name.
pub fn receipt_key(ctx: &Context) -> Result<SigningKey, Failure> {
    let password =
        ctx.set.settings.receipt_key_password_env.as_ref().and_then(|v| std::env::var(v).ok()).unwrap_or_default();
    let path = ctx.set.resolve(&ctx.set.settings.receipt_key);
    SigningKey::load(&path, password.as_bytes()).map_err(|e| {
        Failure::new(Code::Invalid, e).hint(format!(
            "the receipt key's password comes from `{}`",
            ctx.set.settings.receipt_key_password_env.as_deref().unwrap_or("(no variable configured: empty password)")
        ))
    })
}

/// The receipt log the manifests name.
pub fn receipts(ctx: &Context) -> controlplane::receipt_log::ReceiptLog {
    controlplane::receipt_log::ReceiptLog::new(ctx.set.resolve(&ctx.set.settings.receipts_dir))
}

/// Reads a saved plan file (exit 2, with line and column, when it is not one).
pub fn read_plan(path: &Path) -> Result<controlplane::plan::SavedPlan, Failure> {
    let text = controlplane::bounded::read_to_string(path, controlplane::bounded::MAX_PLAN_BYTES).map_err(|e| {
        Failure::new(Code::Invalid, anyhow::Error::new(e).context(format!("cannot read plan `{}`", path.display())))
    })?;
    controlplane::deploy::read_saved(&text).map_err(|e| {
        Failure::new(
            Code::Invalid,
            anyhow::anyhow!("`{}` line {}, column {}: not a plan file: {e}", path.display(), e.line(), e.column()),
        )
        .hint("write plans with `agentctl promote ... --out PLAN.json` and apply them unedited")
    })
}
