//! The command line as clap sees it. Nothing here decides anything.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Deployment control plane with signed promotion.
///
/// Every command that could change something is a dry-run unless given `--apply`.
/// Exit codes: 0 done / in sync, 1 operation failed, 2 invalid input or usage,
/// 3 drift found, 4 refused by policy.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The manifest set to use.
    #[arg(long, global = true, default_value = "manifests", env = "AGENTCTL_MANIFESTS")]
    pub manifests: PathBuf,

    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log output on stderr: `-v` each SSH connection, remote step and receipt with timings;
    /// `-vv` also each registry request; `-vvv` everything (SQL, SSH and HTTP internals).
    /// `AGENTCTL_LOG` sets a filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Internal: the guard process that cleans up after a run (see `controlplane::hygiene`).
    #[command(name = "__guard", hide = true)]
    Guard { dir: PathBuf },
    /// Scaffold a manifest set, the state database and signing keys in DIR.
    ///
    /// Creates DIR/manifests (a commented example), DIR/state (SQLite database,
    /// the receipt key encrypted with `AGENTCTL_RECEIPT_KEY_PASSWORD`, the release-signing
    /// key with `COSIGN_PASSWORD` (what `sign` and cosign read),
    /// an SSH client key) and DIR/receipts. Refuses to touch anything that exists.
    Init {
        /// Where to scaffold.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Validate the manifest set: fields, references, pinning, secret values.
    ///
    /// Reports every problem with file, line, column and field; exits 2 if any.
    /// With `--ci DIR`: check GitHub Actions workflows instead (untrusted event data in
    /// `run:` scripts, write permissions without a stated need).
    Check {
        /// A repository (its `.github/workflows/`) or a directory of workflow files.
        #[arg(long, value_name = "DIR")]
        ci: Option<PathBuf>,
    },
    /// Cosign-format signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// CI: sign IMAGE@DIGEST and push the cosign signature (`sha256-<hex>.sig`).
    ///
    /// The key is a cosign-format private key; its password comes from `COSIGN_PASSWORD`.
    /// Signatures already there are kept.
    Sign {
        image: String,
        #[arg(long)]
        key: PathBuf,
        /// `bundle`: a Sigstore bundle as an OCI referrer, as cosign 3 writes by default (with
        /// the referrers tag schema); `legacy`: cosign's `.sig` tag.
        #[arg(long, value_enum, default_value = "bundle")]
        format: SignatureFormat,
    },
    /// CI: push a signed in-toto attestation (provenance or SBOM) for IMAGE@DIGEST.
    Attest {
        image: String,
        /// The predicate: a JSON file (SLSA provenance, SPDX or CycloneDX document).
        #[arg(long)]
        predicate: PathBuf,
        #[arg(long = "type", value_enum)]
        kind: PredicateType,
        #[arg(long)]
        key: PathBuf,
        /// `bundle`: a Sigstore bundle as an OCI referrer (cosign 3's default); `legacy`:
        /// a layer of cosign's `.att` tag.
        #[arg(long, value_enum, default_value = "bundle")]
        format: SignatureFormat,
    },
    /// Verify IMAGE@DIGEST against the trust policy (or only the keys given).
    ///
    /// Exit 0 when the signature verifies; exit 4 with the reason otherwise: not pinned,
    /// no signature, untrusted key, signature for another image, registry unreachable.
    Verify {
        image: String,
        /// Trust only these public keys instead of the policy's.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Verify a Sigstore bundle for a file (or `sha256:HEX`), offline, as `cosign
    /// verify-blob --bundle` does: with `--key`, or keyless with `--certificate-identity`
    /// (or `--certificate-identity-regexp`), `--certificate-oidc-issuer` and
    /// `--trusted-root`. Exit 0 only when it verifies; 4 with the reason otherwise.
    VerifyBlob {
        /// The file, or its digest as `sha256:<64 hex>`.
        artifact: String,
        /// The Sigstore bundle (`.sigstore.json`).
        #[arg(long)]
        bundle: PathBuf,
        /// A PEM public key that must have signed it.
        #[arg(long, conflicts_with_all = ["certificate_identity", "certificate_identity_regexp"])]
        key: Option<PathBuf>,
        /// The certificate's subject (SAN), exactly.
        #[arg(long, conflicts_with = "certificate_identity_regexp", requires = "certificate_oidc_issuer")]
        certificate_identity: Option<String>,
        /// The certificate's subject, by a regular expression matching all of it.
        #[arg(long, requires = "certificate_oidc_issuer")]
        certificate_identity_regexp: Option<String>,
        /// The certificate's OIDC issuer, exactly.
        #[arg(long)]
        certificate_oidc_issuer: Option<String>,
        /// A Sigstore `trusted_root.json` (required keyless; with `--key`, for a bundle's
        /// log entries and timestamps).
        #[arg(long)]
        trusted_root: Option<PathBuf>,
    },
    /// Releases: verified, digest-pinned images of a service.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Plan promoting a release of SERVICE to an environment; apply it with `--apply`.
    ///
    /// Without `--apply` nothing changes: not a host, not the state, not the receipts.
    Promote {
        service: String,
        #[arg(long)]
        env: String,
        /// The release: its id (`r-…`, or a unique prefix), its image digest (`sha256:…`, a
        /// unique prefix, or `REPO@sha256:…`), or a tag (`v2`, `REPO:v2`; resolved now and
        /// shown pinned). It must have been recorded with `release add`.
        #[arg(long)]
        release: String,
        #[arg(long)]
        apply: bool,
        /// Save the plan to apply it later with `agentctl apply`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Apply a saved plan exactly, or refuse it (exit 4).
    ///
    /// The file is a request, not authority: the plan is derived again from the manifests,
    /// the state and the hosts; a file that says anything else is refused as tampered, one
    /// whose hosts moved as stale.
    Apply {
        plan: PathBuf,
        /// Approval files (`approve --out`) made elsewhere; recorded before the apply.
        #[arg(long = "approval")]
        approvals: Vec<PathBuf>,
    },
    /// Continue a rollout paused at its `pause_after` point, from the next batch.
    ///
    /// The plan file is the one the paused apply ran; it is derived again like any saved
    /// plan (the hosts that moved must still run its release) and its approvals counted
    /// again. `agentctl rollback` instead returns the hosts that moved.
    Resume { plan: PathBuf },
    /// Plan going back to the recorded rollback target (or `--to RELEASE`); `--apply` applies.
    Rollback {
        service: String,
        #[arg(long)]
        env: String,
        /// A release applied to the environment before, by any of its names as
        /// `promote --release` takes them: its id (`r-…` or a unique prefix), its image
        /// digest (`sha256:…`, a prefix, `REPO@sha256:…`) or a tag (`v2`, resolved now).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What each host of SERVICE in ENV came to run, when and how (promote, rollback,
    /// adopt, forget), oldest first, each release by id, short digest and commit; `*`
    /// marks what each host should run now. Reads the state store only.
    History {
        service: String,
        #[arg(long)]
        env: String,
    },
    /// Continuous drift watch: held connections, Prometheus metrics, one JSON event per
    /// change of state on stdout (and optionally a signed webhook). SIGTERM/SIGINT stop it
    /// cleanly; SIGHUP reloads the manifests.
    Watch {
        #[arg(long)]
        env: Option<String>,
        /// Seconds between probes over the held connections.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Seconds between fresh connections to each host.
        #[arg(long, default_value_t = 60.0)]
        fresh_interval: f64,
        /// Seconds between full hashes of each live release; between them, a probe whose
        /// metadata stamp (every entry's inode, size, mode and change time) still holds
        /// skips hashing the content.
        #[arg(long, default_value_t = 300.0)]
        full_interval: f64,
        /// Where to serve `/metrics` and `/healthz` (port 0: any free port, printed on stderr).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: std::net::SocketAddr,
        /// POST each event here, signed with HMAC-SHA256.
        #[arg(long, requires = "webhook_secret_env")]
        webhook: Option<String>,
        /// Name of the environment variable holding the webhook secret.
        #[arg(long)]
        webhook_secret_env: Option<String>,
        /// Also write a signed `drift` receipt into the chain when a target leaves `in-sync`.
        #[arg(long)]
        drift_receipts: bool,
    },
    /// Rollback proof: promote RELEASE in ENV, roll back, promote again, with receipts.
    ///
    /// Environments with `require_rehearsal` accept a release only after a rehearsal
    /// succeeded in an environment before them. A dry-run unless `--apply`.
    Rehearse {
        service: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        release: String,
        #[arg(long)]
        apply: bool,
    },
    /// Approve a saved plan with an SSH signature (sshsig) by one of the environment's
    /// approvers; records it (store and receipt) and optionally writes it to a file.
    ///
    /// Sign with `--key` (an OpenSSH private key file), or sign elsewhere: print the
    /// statement with `--print-statement`, sign it with
    /// `ssh-keygen -Y sign -f KEY -n agentctl-approval FILE`, and record it with
    /// `--statement FILE --signature FILE.sig`.
    Approve {
        /// The plan file `promote --out` wrote.
        plan: PathBuf,
        #[arg(long, conflicts_with_all = ["statement", "print_statement"])]
        key: Option<PathBuf>,
        /// Print the statement to sign and stop.
        #[arg(long)]
        print_statement: bool,
        #[arg(long, requires = "signature")]
        statement: Option<PathBuf>,
        #[arg(long, requires = "statement")]
        signature: Option<PathBuf>,
        /// Also write the approval (statement and signature) to this file, for `apply --approval`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record what SERVICE runs on the environment's hosts, where this control plane has no
    /// record of it (a fleet deployed before, a fresh state): each live release is checked on
    /// its host and its image verified against the trust policy, then recorded as the host's
    /// release — its way back — with a receipt. Without `--apply` nothing is recorded.
    Adopt {
        service: String,
        #[arg(long)]
        env: String,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        apply: bool,
    },
    /// Put back a host's recorded release after it was changed by hand (`status` says
    /// `tampered`): a dry run names each changed path; `--apply` stages the recorded
    /// files again (the changed directory is set aside, not deleted), verifies the image,
    /// restarts the workload from them, and writes a `repair` receipt.
    Repair {
        service: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        apply: bool,
    },
    /// Hosts of an environment.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Show, or with `--force` take over, the (environment, service) lock; writes a receipt.
    Unlock {
        service: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        force: bool,
    },
    /// Probe every host and classify drift: in-sync, drifted, missing, tampered, unreachable,
    /// and egress (loaded egress rules that differ from the release's) where egress is enforced.
    ///
    /// Exit 0 when all are in sync, 3 when anything is not.
    Status {
        /// Only this service.
        service: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// Probe again every SECONDS and print only what changed.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        /// Probes in flight at once (default: the manifests' `ssh.concurrency`).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Per-host timeout in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Receipts: list, show, verify the signed chain, export it from the store, report for auditors.
    Receipts {
        #[command(subcommand)]
        command: ReceiptsCommand,
    },
    /// Prove that ENV meets the production controls, or one control (`prove egress`).
    ///
    /// `agentctl prove ENV` re-derives now, per service that runs there: its signature
    /// (with the provenance and SBOM ENV requires), its layers' scan, the egress proof
    /// (run from every host), a rollback rehearsal, no secret value in its rendered files;
    /// and for ENV: approvals where it is the production end of the chain, every host's
    /// pinned key, the receipt chain, and `check --ci` of `--workflows DIR` when given.
    /// Prints a table (control, result, evidence, the fix) and writes a signed `readiness`
    /// receipt; changes nothing else. Exit 0 only when every control holds, 4 otherwise.
    #[command(args_conflicts_with_subcommands = true)]
    Prove {
        #[command(subcommand)]
        command: Option<ProveCommand>,
        /// The environment to check.
        env: Option<String>,
        /// A repository (with `.github/workflows/`) or a workflows directory for `check --ci`.
        #[arg(long)]
        workflows: Option<PathBuf>,
        /// A receipt-signing public key the chain verifies with (default: the manifests'
        /// `receipt_public_key`); repeat it for a chain signed across a key rotation.
        #[arg(long = "receipt-key")]
        receipt_keys: Vec<PathBuf>,
    },
    /// The state store: move it to another backend.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProveCommand {
    /// On every host, as the service's workload identity: connect to each allowed
    /// destination (must succeed), to the environment's canaries and to one destination
    /// outside the allowlist (must fail). Prints a per-host table, writes a signed
    /// `egress-proof` receipt; exit 0 only when every expectation held, 1 otherwise.
    Egress {
        service: String,
        #[arg(long)]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Copy every table and the receipt chain from the manifests' state store into an
    /// empty store at URL (`postgres://USER@HOST:PORT/DB` or `sqlite:PATH`), then compare
    /// both table by table and verify the copied chain. Point the manifests' `state` at
    /// URL afterwards. Nothing is written to the source.
    Migrate {
        /// The destination store.
        #[arg(long)]
        to: String,
        /// The environment variable holding the destination's password (never the password).
        #[arg(long)]
        to_password_env: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an ECDSA P-256 key pair: PREFIX.key (encrypted with `COSIGN_PASSWORD`)
    /// and PREFIX.pub, readable by cosign.
    Generate {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureFormat {
    Legacy,
    Bundle,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PredicateType {
    Slsaprovenance,
    Spdx,
    Cyclonedx,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Retire HOST's recorded history in an environment, for every service (a host
    /// re-imaged or replaced under the same name: its recorded releases are gone), with a
    /// receipt naming what was recorded. Without `--apply` nothing is recorded.
    Forget {
        host: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Verify IMAGE@DIGEST and record it as a release of SERVICE (with its evidence).
    Add {
        service: String,
        image: String,
        /// The source commit the image was built from.
        #[arg(long)]
        commit: String,
        /// Expected provenance attestation layer digest (default: whatever verifies).
        #[arg(long)]
        provenance: Option<String>,
        /// Expected SBOM attestation layer digest (default: whatever verifies).
        #[arg(long)]
        sbom: Option<String>,
    },
    /// List the recorded releases of SERVICE.
    List { service: String },
    /// Show the recorded release of SERVICE that RELEASE names — a release id (`r-…`) or
    /// a unique prefix, an image digest (`sha256:…`, a prefix, `REPO@sha256:…`) or a tag
    /// (`v2`, `REPO:v2`, resolved now) — and where it was applied, under which ids.
    Show { service: String, release: String },
}

#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// One line per receipt.
    List {
        /// The receipts directory (default: the manifests' `receipts`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print one receipt (by sequence number or file name).
    Show {
        id: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check every signature and the whole hash chain, offline.
    ///
    /// Needs only the directory and the public key. When the manifests' state store is
    /// available, its chain head is compared too, so that a removed tail is noticed.
    /// Exit 0 when everything holds, 1 otherwise, naming each bad receipt.
    ///
    /// With `--store`, checks the chain in the state store instead (the copy every
    /// control plane appends to), for instance before an export.
    Verify {
        #[arg(long, conflicts_with = "store")]
        dir: Option<PathBuf>,
        /// Verify the chain in the manifests' state store, not a directory.
        #[arg(long)]
        store: bool,
        /// A receipt-signing public key (default: the manifests' `receipt_public_key`).
        /// Give it more than once for a chain signed across a key rotation: a
        /// signature holds when any of the keys verifies it.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Write every receipt of the state store's chain into DIR (receipt and `.sig` files),
    /// the directory an auditor verifies offline. Files already there are kept; one whose
    /// bytes differ from the store's is reported and the command exits 1.
    Export {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write an HTML report: per environment and service, a timeline with the evidence.
    Report {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A receipt-signing public key, as for `verify` (repeatable).
        #[arg(long)]
        key: Vec<PathBuf>,
    },
}

impl Command {
    /// Whether the command opens SSH connections (and so runs under the cleanup guard).
    pub fn reaches_hosts(&self) -> bool {
        matches!(
            self,
            Self::Promote { .. }
                | Self::Rollback { .. }
                | Self::Apply { .. }
                | Self::Resume { .. }
                | Self::Status { .. }
                | Self::Rehearse { .. }
                | Self::Prove { .. }
                | Self::Adopt { .. }
                | Self::Repair { .. }
        )
    }
}
