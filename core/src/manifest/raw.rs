//! The manifest files exactly as written: serde types, spans kept for error messages.
//!
//! Nothing here is trusted; `validate` turns these into the domain model. Every struct
//! denies unknown fields, so a misspelt safety setting is an error, never a silent default.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

/// `controlplane.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    pub controlplane: S<Settings>,
    #[serde(default)]
    pub registry: Vec<S<Registry>>,
    pub trust: S<Trust>,
    pub ssh: S<Ssh>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub state: S<String>,
    pub state_password_env: Option<S<String>>,
    pub lock_lease_secs: Option<S<u64>>,
    pub receipts: S<String>,
    pub receipt_key: S<String>,
    pub receipt_key_password_env: Option<S<String>>,
    pub receipt_public_key: S<String>,
    pub operator_env: Option<S<String>>,
    pub plan_max_age_secs: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub host: S<String>,
    #[serde(default)]
    pub insecure: bool,
    pub username_env: Option<S<String>>,
    pub password_env: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub keys: S<Vec<S<String>>>,
    #[serde(default)]
    pub builders: Vec<S<String>>,
    /// A Sigstore `trusted_root.json` (Fulcio CAs, Rekor logs, CT logs, TSAs) for keyless
    /// signatures.
    pub trusted_root: Option<S<String>>,
    /// The keyless identities allowed.
    #[serde(default)]
    pub identity: Vec<S<Identity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub issuer: S<String>,
    pub subject: Option<S<String>>,
    pub subject_regexp: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    pub identity: S<String>,
    pub concurrency: Option<S<i64>>,
    pub connect_timeout_secs: Option<S<i64>>,
    pub key_exchange: Option<S<Vec<S<String>>>>,
}

/// `environments/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    pub after: Option<S<String>>,
    pub approvals: Option<S<i64>>,
    /// `allowed_signers` file (inside the manifest directory) listing the approvers.
    pub approvers: Option<S<String>>,
    pub approval_valid_secs: Option<S<i64>>,
    #[serde(default)]
    pub author_may_approve: bool,
    #[serde(default)]
    pub require_rehearsal: bool,
    #[serde(default)]
    pub require_provenance: bool,
    #[serde(default)]
    pub require_sbom: bool,
    pub rollout: S<Rollout>,
    pub egress: Option<S<Egress>>,
    #[serde(default)]
    pub host: Vec<S<Host>>,
}

/// `[egress]` of an environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub enforce: bool,
    #[serde(default)]
    pub prove_on_apply: bool,
    #[serde(default)]
    pub canaries: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub batch: S<BatchValue>,
    pub health_timeout_secs: Option<S<i64>>,
    pub soak_secs: Option<S<i64>>,
    pub soak_interval_secs: Option<S<i64>>,
    /// `"canary"` (the default) or `"every-batch"`.
    pub soak: Option<S<String>>,
    pub max_failures: Option<S<BatchValue>>,
    /// `"roll-back"` (the default) or `"keep"`.
    pub on_budget_spent: Option<S<String>>,
    /// `"canary"` or a batch number.
    pub pause_after: Option<S<BatchValue>>,
}

/// `batch = 2` or `batch = "34%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BatchValue {
    Count(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: S<String>,
    pub address: S<String>,
    pub port: Option<S<i64>>,
    pub user: S<String>,
    pub host_key: S<String>,
    pub root: S<String>,
}

/// `services/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub image: S<String>,
    /// `kind = "command"` only (at the top level, as before `[runtime]` existed).
    pub activate: Option<S<Vec<S<String>>>>,
    pub health: Option<S<Vec<S<String>>>>,
    pub probe: Option<S<Vec<S<String>>>>,
    pub runtime: Option<S<Runtime>>,
    #[serde(default)]
    pub template: Vec<S<Template>>,
    #[serde(default)]
    pub secrets: Vec<S<String>>,
    #[serde(default)]
    pub egress: Vec<S<String>>,
    #[serde(default)]
    pub egress_loopback: bool,
    pub egress_connect: Option<S<Vec<S<String>>>>,
    pub egress_rules: Option<S<Vec<S<String>>>>,
    /// `[contents]`: what the image's layers may hold (`release add` scans them).
    pub contents: Option<S<Contents>>,
}

/// `[contents]` of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// `[[contents.allow]]`: paths allowed to hold a secret-looking value, each with why.
    #[serde(default)]
    pub allow: Vec<S<ContentsAllow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentsAllow {
    pub path: S<String>,
    pub reason: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub source: S<String>,
    pub target: S<String>,
}

/// `[runtime]` of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub kind: S<String>,
    /// `os/architecture[/variant]`: the manifest of an image index the hosts run.
    pub platform: Option<S<String>>,
    pub auth_file: Option<S<String>>,
    pub env_file: Option<S<String>>,
    pub mount: Option<S<String>>,
    pub command: Option<S<Vec<S<String>>>>,
    pub memory: Option<S<String>>,
    pub cpus: Option<S<f64>>,
    pub pids: Option<S<i64>>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    pub writable_root: Option<S<bool>>,
    #[serde(default)]
    pub capabilities: Vec<S<String>>,
    pub overlap: Option<S<bool>>,
    pub stop_timeout_secs: Option<S<i64>>,
    pub retain: Option<S<i64>>,
    pub health: Option<S<Health>>,
}

/// `[runtime.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub http: Option<S<String>>,
    pub tcp: Option<S<bool>>,
    pub exec: Option<S<Vec<S<String>>>>,
    pub port: Option<S<i64>>,
    pub start_period_secs: Option<S<i64>>,
    pub interval_secs: Option<S<i64>>,
    pub retries: Option<S<i64>>,
    pub timeout_secs: Option<S<i64>>,
}
