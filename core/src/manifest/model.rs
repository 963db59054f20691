//! The validated manifest set: what the rest of the control plane works with.
//!
//! Every value here passed `validate`, so code that holds a `Host` may put its address,
//! user and root into a remote command without re-checking them.

use crate::image::Repository;
use crate::names::{EnvName, HostName, SecretName, ServiceName, UserName};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A whole manifest directory, validated.
#[derive(Debug, Clone)]
pub struct ManifestSet {
    /// The manifest directory; relative paths in settings are resolved against it.
    pub dir: PathBuf,
    pub settings: Settings,
    pub registries: Vec<RegistrySettings>,
    pub trust: TrustPolicy,
    pub ssh: SshSettings,
    /// In promotion order: each environment's `after` comes before it.
    pub environments: Vec<Environment>,
    pub services: BTreeMap<ServiceName, Service>,
}

impl ManifestSet {
    pub fn environment(&self, name: &EnvName) -> Option<&Environment> {
        self.environments.iter().find(|e| &e.name == name)
    }

    /// The environments a release passes before `env` (its `after`, that one's `after`,
    /// …), nearest first; a loop in the chain ends it.
    pub fn earlier(&self, env: &Environment) -> Vec<String> {
        let mut earlier: Vec<String> = Vec::new();
        let mut at = env.after.as_ref();
        while let Some(name) = at.filter(|n| !earlier.contains(&n.to_string()) && **n != env.name) {
            earlier.push(name.to_string());
            at = self.environment(name).and_then(|e| e.after.as_ref());
        }
        earlier
    }

    /// The service whose image repository is `repository`, if any.
    pub fn service_of(&self, repository: &crate::image::Repository) -> Option<&Service> {
        self.services.values().find(|s| &s.repository == repository)
    }

    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.get(name)
    }

    /// `path` from a manifest, resolved against the manifest directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub state: StateUrl,
    pub receipts_dir: PathBuf,
    pub receipt_key: PathBuf,
    /// Name of the environment variable holding the receipt key's password.
    pub receipt_key_password_env: Option<String>,
    pub receipt_public_key: PathBuf,
    /// Name of the environment variable naming the operator (defaults to `USER`).
    pub operator_env: String,
    /// A saved plan older than this is refused as expired (default one hour).
    pub plan_max_age_secs: u64,
    /// How long an apply's lock lease lasts without renewal (default 60 s): a holder that
    /// died is taken over this long after its last renewal.
    pub lock_lease_secs: u64,
}

/// Where the state store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// A SQLite file, relative to the manifest directory unless absolute.
    Sqlite(PathBuf),
    /// A PostgreSQL database: the URL without a password (TLS settings such as `sslmode`
    /// and `sslrootcert` pass through), and the name of the environment variable that
    /// holds the password.
    Postgres { url: String, password_env: Option<String> },
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub host: String,
    /// Plain HTTP: allowed only for registries listed so.
    pub insecure: bool,
    /// Names of environment variables with the credentials; never the values.
    pub username_env: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TrustPolicy {
    /// Cosign public keys (PEM), by the file they came from.
    pub keys: Vec<TrustedKey>,
    /// Builder ids a provenance attestation may name.
    pub builders: Vec<String>,
    /// Keyless signatures: the trusted root and the identities allowed.
    pub keyless: Option<KeylessPolicy>,
}

/// Who may sign keyless, and under which roots of trust.
#[derive(Debug, Clone)]
pub struct KeylessPolicy {
    /// The `trusted_root.json` file, relative to the manifest directory.
    pub trusted_root: PathBuf,
    /// Its text (parsed by the verifier).
    pub trusted_root_json: String,
    pub identities: Vec<AllowedIdentity>,
}

/// One identity allowed to sign keyless: the certificate's OIDC issuer, exactly, and its
/// subject (SAN), exactly or by a regular expression matching the whole subject (as
/// cosign's `--certificate-oidc-issuer` / `--certificate-identity[-regexp]`).
#[derive(Debug, Clone)]
pub struct AllowedIdentity {
    pub issuer: String,
    pub subject: SubjectMatch,
}

#[derive(Debug, Clone)]
pub enum SubjectMatch {
    Exact(String),
    /// Anchored: the whole subject must match.
    Regexp(regex::Regex),
}

impl SubjectMatch {
    /// A pattern that must match the whole subject (`cosign --certificate-identity-regexp`).
    pub fn anchored(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self::Regexp(regex::Regex::new(&format!("^(?:{pattern})$"))?))
    }
}

impl AllowedIdentity {
    pub fn allows(&self, issuer: &str, subject: &str) -> bool {
        issuer == self.issuer
            && match &self.subject {
                SubjectMatch::Exact(s) => s == subject,
                SubjectMatch::Regexp(r) => r.is_match(subject),
            }
    }
}

impl fmt::Display for AllowedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            SubjectMatch::Exact(s) => write!(f, "`{s}` (issuer `{}`)", self.issuer),
            SubjectMatch::Regexp(r) => {
                let whole = r.as_str();
                let inner = whole.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(whole);
                write!(f, "subjects matching `{inner}` (issuer `{}`)", self.issuer)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub path: PathBuf,
    pub pem: String,
}

#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Private key the control plane logs in with (a path, never inline).
    pub identity: PathBuf,
    pub concurrency: usize,
    pub connect_timeout_secs: u64,
    /// SSH key-exchange algorithms, in order; `None` keeps OpenSSH's defaults.
    pub key_exchange: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: EnvName,
    /// The environment a release must have succeeded in first.
    pub after: Option<EnvName>,
    /// Distinct approvers a plan needs.
    pub approvals: u32,
    /// Who may approve: the environment's `allowed_signers`.
    pub approvers: Vec<crate::approval::AllowedSigner>,
    /// The `allowed_signers` file, relative to the manifest directory.
    pub approvers_file: Option<PathBuf>,
    /// The longest life an approval may have.
    pub approval_valid_secs: u64,
    /// Whether the plan's author may approve it (separation of duties when not).
    pub author_may_approve: bool,
    /// A release must have been rehearsed (promoted, rolled back, promoted again) in an
    /// earlier environment before it may be promoted here.
    pub require_rehearsal: bool,
    pub require_provenance: bool,
    pub require_sbom: bool,
    pub rollout: Rollout,
    pub egress: EgressPolicy,
    pub hosts: Vec<Host>,
}

/// How an environment treats its services' egress allowlists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Render default-deny rules into each release and have the runtime load them.
    pub enforce: bool,
    /// A passing egress proof is part of apply's health gate.
    pub prove_on_apply: bool,
    /// Destinations that must be unreachable (besides one outside every allowlist).
    pub canaries: Vec<crate::egress::Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub batch: BatchSize,
    pub health_timeout_secs: u64,
    /// How long the canary (or every batch) keeps running under watch before the rollout
    /// goes on; `None`: the next batch starts once the last one is healthy.
    pub soak: Option<Soak>,
    /// How many hosts may fail (each rolled back) before the rollout halts; `None`: the
    /// first failing batch stops the rollout (hosts that moved stay).
    pub max_failures: Option<BatchSize>,
    /// Once the failure budget is spent: roll the hosts that moved back (the default), or keep them.
    pub on_budget_spent: OnBudgetSpent,
    /// Stop the apply after this batch (1 is the canary), lock released, until `agentctl resume`.
    pub pause_after: Option<usize>,
}

impl Rollout {
    /// A rollout of `batch` hosts at a time with a health timeout and nothing else.
    pub const fn plain(batch: BatchSize, health_timeout_secs: u64) -> Self {
        Self {
            batch,
            health_timeout_secs,
            soak: None,
            max_failures: None,
            on_budget_spent: OnBudgetSpent::RollBack,
            pause_after: None,
        }
    }
}

/// `soak_secs`, `soak_interval_secs`, `soak = "canary" | "every-batch"` of `[rollout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Soak {
    /// How long a batch is watched after it is healthy, in seconds.
    pub secs: u64,
    /// Seconds between two checks of the workload during the soak.
    pub interval_secs: u64,
    /// Every batch soaks, not only the canary.
    pub every_batch: bool,
}

/// What happens to the hosts that moved once the failure budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnBudgetSpent {
    #[default]
    RollBack,
    Keep,
}

/// How many hosts change at once; the first batch is the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BatchSize {
    Count(usize),
    Percent(u8),
}

impl BatchSize {
    /// Hosts per batch for a fleet of `hosts` (at least one).
    pub fn per_batch(self, hosts: usize) -> usize {
        match self {
            Self::Count(n) => n.max(1),
            Self::Percent(p) => (hosts * usize::from(p)).div_ceil(100).max(1),
        }
    }

    /// How many batches `hosts` changing hosts make.
    pub fn batches(self, hosts: usize) -> usize {
        hosts.div_ceil(self.per_batch(hosts))
    }

    /// As a failure budget: how many of `hosts` may fail (a percentage rounds down).
    pub fn budget(self, hosts: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => hosts * usize::from(p) / 100,
        }
    }
}

/// A golden VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: HostName,
    pub address: String,
    pub port: u16,
    pub user: UserName,
    pub host_key: HostKey,
    pub root: RemotePath,
}

/// A pinned SSH host public key, `algorithm base64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostKey {
    pub algorithm: String,
    pub key: String,
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, self.key)
    }
}

/// An absolute path on a golden VM made only of safe characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RemotePath(pub(crate) String);

impl RemotePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: ServiceName,
    pub repository: Repository,
    /// How the workload runs on a golden VM.
    pub runtime: Runtime,
    /// Which manifest of an image index the hosts run (`[runtime] platform`, default
    /// `linux/amd64`); an image manifest runs as it is.
    pub platform: crate::platform::Platform,
    pub templates: Vec<Template>,
    pub secrets: Vec<SecretName>,
    /// The egress allowlist as written (templates see it).
    pub egress: Vec<String>,
    /// The same, parsed.
    pub egress_rules: Vec<crate::egress::Rule>,
    /// Whether the workload may talk to loopback.
    pub egress_loopback: bool,
    /// Paths of the image allowed to hold a secret-looking value (`[[contents.allow]]`),
    /// each with its reason; `release add` refuses any other finding.
    pub contents_allow: Vec<crate::contents::Allowed>,
}

impl Service {
    /// The Podman runtime's settings, when the service runs on it.
    pub fn podman(&self) -> Option<&PodmanRuntime> {
        match &self.runtime {
            Runtime::Podman(p) => Some(p),
            Runtime::Command(_) => None,
        }
    }

    /// Whether the runtime can list the loaded egress rules (Podman always can).
    pub fn lists_egress_rules(&self) -> bool {
        self.commands().is_none_or(|c| c.egress_list.is_some())
    }

    /// Whether the runtime can try a connection as the workload (Podman always can).
    pub fn connects_as_workload(&self) -> bool {
        self.commands().is_none_or(|c| c.egress_connect.is_some())
    }

    /// The command runtime's settings, when the service runs on it.
    pub fn commands(&self) -> Option<&CommandRuntime> {
        match &self.runtime {
            Runtime::Command(c) => Some(c),
            Runtime::Podman(_) => None,
        }
    }
}

/// How a service's workload runs on its hosts (`[runtime] kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// `kind = "command"`: the host's own runtime, driven through argv commands the
    /// manifest names (`activate`, `health`, `probe`, …).
    Command(CommandRuntime),
    /// `kind = "podman"`: agentctl drives Podman on the host itself (docs/RUNTIME.md).
    Podman(PodmanRuntime),
}

impl Runtime {
    /// `command` or `podman`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Command(_) => "command",
            Self::Podman(_) => "podman",
        }
    }
}

/// A runtime of the host's own, reached through commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRuntime {
    /// argv run on the host as `activate... <service> <release-dir>`.
    pub activate: Vec<String>,
    /// argv run on the host as `health... <service>`; exit 0 means healthy.
    pub health: Vec<String>,
    /// argv run on the host as `probe... <service>`; prints the running image digest.
    pub probe: Vec<String>,
    /// argv run on the host as `egress_connect... <service> <address> <port>`: a TCP connection
    /// attempt as the workload identity, from its network; exit 0 when it connected.
    pub egress_connect: Option<Vec<String>>,
    /// argv run on the host as `egress_rules... <service>`: prints the service's loaded
    /// ruleset as `nft -j list table inet agentctl_<service>` does (nothing when none).
    pub egress_list: Option<Vec<String>>,
}

/// The built-in Podman runtime: one container per release, sandboxed by default. Each
/// field that relaxes the sandbox is named here and shown by `check` and in plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodmanRuntime {
    /// The host's registry credentials: a path to an auth file on the host
    /// (`podman login --authfile`), never a credential.
    pub auth_file: Option<RemotePath>,
    /// A rendered file of the release (a template's `target`) passed as `--env-file`.
    pub env_file: Option<String>,
    /// Where the release directory is mounted, read-only, inside the container.
    pub mount: String,
    /// Arguments to the image's entrypoint (none: the image's own `CMD`).
    pub command: Vec<String>,
    /// `--memory`, e.g. `256m` (bytes with an optional k/m/g suffix).
    pub memory: String,
    /// `--cpus`, a decimal number of CPUs, e.g. `0.5`.
    pub cpus: String,
    /// `--pids-limit`.
    pub pids: u32,
    /// Named volumes (`agentctl.<service>.<name>` on the host), mounted read-write.
    pub volumes: Vec<Volume>,
    /// Relaxation: the container's root filesystem is writable (default read-only).
    pub writable_root: bool,
    /// Relaxation: capabilities added back after dropping all (default none).
    pub capabilities: Vec<String>,
    /// Whether the new release's container may run beside the old one until it is
    /// healthy (default); `false` stops the old one first (a workload that cannot run twice).
    pub overlap: bool,
    /// How long `podman stop` waits before SIGKILL.
    pub stop_timeout_secs: u64,
    /// How many releases' containers and images stay on each host for the way back.
    pub retain: u32,
    pub health: HealthCheck,
}

impl PodmanRuntime {
    /// The sandbox defaults this service relaxes, in words (empty: none).
    pub fn relaxations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.writable_root {
            out.push("writable root filesystem".to_owned());
        }
        if !self.capabilities.is_empty() {
            out.push(format!("capabilities {}", self.capabilities.join(", ")));
        }
        out
    }
}

/// A named volume: `name:/path/in/container`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub name: String,
    pub target: String,
}

/// How the runtime decides the workload is healthy (`[runtime.health]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// Failures during this long after start do not count.
    pub start_period_secs: u64,
    /// Between two attempts.
    pub interval_secs: u64,
    /// Failed attempts (after the start period) before the workload is unhealthy.
    pub retries: u32,
    /// How long one attempt may take.
    pub timeout_secs: u64,
}

/// One health attempt against the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthProbe {
    /// `GET path` on `127.0.0.1:port` of the host's network; 2xx or 3xx is healthy.
    Http { port: u16, path: String },
    /// A TCP connection to `127.0.0.1:port`.
    Tcp { port: u16 },
    /// A command run inside the container (`podman exec`); exit 0 is healthy.
    Exec(Vec<String>),
}

impl fmt::Display for HealthProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { port, path } => write!(f, "http :{port}{path}"),
            Self::Tcp { port } => write!(f, "tcp :{port}"),
            Self::Exec(argv) => write!(f, "exec {}", argv.join(" ")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Template {
    /// Path of the template in the manifest directory (for messages).
    pub source: PathBuf,
    pub text: String,
    /// Relative path inside the release directory.
    pub target: String,
}
