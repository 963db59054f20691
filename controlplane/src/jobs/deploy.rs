//! The job: plan a promotion or rollback (verify, render, observe; changes nothing) and
//! apply a plan. This is the only code that mutates hosts; it talks to them through
//! [`GoldenVm`] and decides nothing itself: the plan (`plan::build`, `plan::compare`),
//! each host's next step (`rollout::HostMove`), whether to go on (`rollout::after_batch`)
//! and the outcome (`rollout::outcome`) are the core's pure functions.
//!
//! A plan handed to [`Deployer::apply`] — from a file or just shown — is a request, never
//! authority: apply derives the plan again from the manifests, the store and the hosts,
//! refuses the request if it says anything else (tampered) or if hosts moved (stale), and
//! applies only what it derived itself.
//!
//! This file holds the job's types (errors, collaborators, reports); the work is in
//! `deploy/`, one file per seam: `derive` (resolve, verify, gate, observe, build),
//! `rollback` (choose the target, derive), `rehearse`, `apply` (compare, approvals,
//! refusals, the run under the lock), `lease` (the lock), `run` (one apply's batches,
//! host by host), `canary` (soak, failure budget, pause and resume).

use crate::ids::{ContentHash, PlanId, ReleaseId};
use crate::image::{Digest, PinnedImage, Repository};
use crate::keys::SigningKey;
use crate::lock::{self, Holder, Machine};
use crate::manifest::{Environment, ManifestSet, Service};
use crate::names::{EnvName, ServiceName};
use crate::observe::Observation;
use crate::plan::{self, Action, FieldDiff, Mismatch, Moved, Plan, PlanError, PlanInput, PlanKind, PlannedRelease};
use crate::receipt::{ApprovalRecord, HostOutcome, ReceiptBody, ReceiptKind};
use crate::receipt_log::{ReceiptError, ReceiptLog};
use crate::release::ReleaseFacts;
use crate::release::{self, ReleaseInput};
use crate::rollout::{self, HostEnd, HostMove, Next, Outcome};
use crate::store::{
    AppliedRelease, DeploymentRecord, Fence, LockOutcome, LockRecord, ReleaseRecord, Store, StoreError, Write,
};
use crate::untrusted::HostText;
use crate::verify::{Requirements, Verified, VerifyError, VerifyRelease};
use crate::vm::{Fleet, GoldenVm, VmError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no environment `{0}` in the manifests")]
    UnknownEnvironment(String),
    #[error("no service `{0}` in the manifests")]
    UnknownService(String),
    #[error("no recorded release of `{service}` matches `{reference}`")]
    UnknownRelease { service: String, reference: String },
    #[error("`{reference}` matches {count} releases of `{service}`; give more of it")]
    AmbiguousRelease { service: String, reference: String, count: usize },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("release `{digest}` has not succeeded in `{after}`, which comes before `{environment}`")]
    Gate { environment: String, after: String, digest: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error(transparent)]
    Render(#[from] release::ReleaseError),
    #[error(transparent)]
    Tar(#[from] crate::tarball::TarError),
    #[error("the plan was edited or forged: {} field(s) differ from what the manifests give now", diffs.len())]
    PlanTampered { plan: PlanId, diffs: Vec<FieldDiff> },
    #[error("plan `{plan}` is stale: {} thing(s) moved since it was made", moved.len())]
    Stale { plan: PlanId, moved: Vec<Moved> },
    #[error("`{service}` in `{environment}` is locked by {} on {} (pid {}, plan {}, since {}{})", holder.holder_user, holder.holder_host, holder.holder_pid, holder.plan_id, holder.since.to_rfc3339(), holder.expires_at.map(|t| format!(", lease until {}", t.to_rfc3339())).unwrap_or_default())]
    Locked { environment: String, service: String, holder: Box<LockRecord>, liveness: Holder },
    #[error("plan `{plan}` needs {need} approval(s) and has {have}")]
    Approvals { plan: PlanId, need: u32, have: usize, not_counted: Vec<crate::approval::NotCounted> },
    #[error("no rollback target is recorded for `{service}` in `{environment}`")]
    NoRollbackTarget { environment: String, service: String },
    #[error("hosts of `{environment}` record different rollback targets ({targets}); choose one with `--to`")]
    SplitRollbackTarget { environment: String, targets: String },
    #[error(
        "rolling `{service}` in `{environment}` back to `{release}` would change nothing: every host already runs it"
    )]
    NothingToRollBack { environment: String, service: String, release: String, choices: Vec<(String, String)> },
    #[error("release `{release}` was never applied to `{service}` in `{environment}`, so it cannot be rolled back to")]
    UnknownRollbackRelease { environment: String, service: String, release: String },
    #[error("image `{digest}` was applied to `{environment}` as several releases ({releases}); roll back `--to` one of them")]
    AmbiguousRollbackImage { environment: String, digest: String, releases: String },
    #[error("staging failed on host `{host}`: {reason}; no host was changed")]
    Staging { host: String, reason: HostText },
    #[error("cannot pin the egress rules of `{service}`: {detail}")]
    Egress { service: String, detail: String },
    #[error("interrupted before any host was changed")]
    Interrupted,
    #[error("aborted by a second interrupt; the receipt {receipt} records it")]
    Aborted { receipt: String },
    #[error(transparent)]
    Expired(plan::Expiry),
    #[error("release `{digest}` has no rollback rehearsal before `{environment}`")]
    NotRehearsed { environment: String, digest: String, earlier: String },
    #[error("the rehearsal failed at step `{step}` (receipt {receipt})")]
    RehearsalFailed { step: &'static str, receipt: String },
    #[error("plan `{0}` was applied before; a plan is applied once")]
    Replayed(PlanId),
    #[error("plan `{plan}` is already applied (receipt {receipt}); a plan is applied once")]
    AlreadyApplied { plan: PlanId, receipt: String },
    #[error("plan `{plan}` cannot be resumed: {why}")]
    NotPaused { plan: PlanId, why: String },
    #[error(
        "`{environment}` pauses its rollouts (`pause_after`): a rehearsal there would stop after its first canary"
    )]
    PausedRehearsal { environment: String },
    #[error("host `{host}` cannot run `{service}`: {reason}")]
    HostNotReady { host: String, service: String, reason: String, hint: String },
    #[error("no host `{host}` in environment `{environment}` (known: {known})")]
    UnknownHost { host: String, environment: String, known: String },
    #[error("host `{host}` cannot be repaired: {reason}")]
    NotRepairable { host: String, service: String, environment: String, reason: String },
    #[error("the way back is broken on host `{host}`: {reason}")]
    WayBackBroken { host: String, service: String, environment: String, reason: String, changes: Vec<String> },
    #[error("what runs of `{service}` in `{environment}` cannot be adopted: {}", hosts.iter().map(|(h, why)| format!("host `{h}`: {why}")).collect::<Vec<_>>().join("; "))]
    NotAdoptable { service: String, environment: String, hosts: Vec<(String, String)> },
}

impl DeployError {
    /// A refusal by policy (exit 4) rather than a failure (exit 1) or bad input (exit 2).
    pub fn is_refusal(&self) -> bool {
        if let Self::Verify(v) = self {
            return !v.is_outage();
        }
        matches!(
            self,
            Self::Gate { .. }
                | Self::Stale { .. }
                | Self::Locked { .. }
                | Self::Approvals { .. }
                | Self::PlanTampered { .. }
                | Self::Plan(_)
                | Self::Expired(_)
                | Self::Replayed(_)
                | Self::AlreadyApplied { .. }
                | Self::NotRehearsed { .. }
                | Self::HostNotReady { .. }
                | Self::NotAdoptable { .. }
                | Self::NothingToRollBack { .. }
                | Self::NotRepairable { .. }
                | Self::WayBackBroken { .. }
        )
    }

    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownEnvironment(_)
                | Self::UnknownService(_)
                | Self::UnknownRelease { .. }
                | Self::AmbiguousRelease { .. }
                | Self::UnknownRollbackRelease { .. }
                | Self::AmbiguousRollbackImage { .. }
                | Self::UnknownHost { .. }
                | Self::NotPaused { .. }
                | Self::PausedRehearsal { .. }
        )
    }

    /// The lines that explain a refusal: each host and field that moved, or each field
    /// of a plan that differs, with both values.
    pub fn details(&self) -> Vec<String> {
        match self {
            Self::Stale { moved, .. } => moved
                .iter()
                .map(|m| format!("host `{}`: {} was `{}` when planned, is `{}` now", m.host, m.field, m.planned, m.now))
                .collect(),
            Self::Approvals { not_counted, .. } => not_counted
                .iter()
                .map(|n| format!("the approval by `{}` does not count: {}", n.approver, n.reason))
                .collect(),
            Self::PlanTampered { diffs, .. } => diffs
                .iter()
                .map(|d| format!("`{}`: the plan file says `{}`, the manifests give `{}`", d.field, d.file, d.derived))
                .collect(),
            Self::WayBackBroken { changes, .. } => changes.clone(),
            Self::NothingToRollBack { choices, .. } if choices.is_empty() => {
                vec!["no other release was applied here to go back to".into()]
            }
            Self::NothingToRollBack { choices, .. } => {
                choices.iter().map(|(id, name)| format!("`--to {id}` goes back to {name}")).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Progress of an apply, for whoever shows it.
pub trait Sink: Send + Sync {
    fn event(&self, line: &str);
}

/// The time, injected so the job can be tested.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Set when the operator asks the run to stop (SIGINT, SIGTERM). The apply finishes the
/// hosts it is moving, starts no more, and ends with an `interrupted` receipt. Set too,
/// with a reason, when the run loses its lock's lease ([`Interrupt::lease_lost`]): then
/// no further host step starts at all (a host that was moving goes back).
///
/// A second request aborts ([`Interrupt::abort`]): the hosts' steps are dropped where they
/// are, and the apply ends with a bounded write of an `aborted` receipt and the lock
/// released, then returns [`DeployError::Aborted`].
#[derive(Debug, Default)]
pub struct Interrupt {
    requests: AtomicU32,
    lease_lost: std::sync::Mutex<Option<String>>,
    abort: AtomicBool,
    /// An apply holds its lock (an abort then writes its receipt before the process exits).
    applying: AtomicBool,
}

impl Interrupt {
    pub const fn new() -> Self {
        Self {
            requests: AtomicU32::new(0),
            lease_lost: std::sync::Mutex::new(None),
            abort: AtomicBool::new(false),
            applying: AtomicBool::new(false),
        }
    }

    /// Asks a running apply to stop now, without waiting for the moving hosts.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Whether an apply holds its lock now (an abort is then worth waiting for).
    pub fn applying(&self) -> bool {
        self.applying.load(Ordering::SeqCst)
    }

    /// Resolves once [`Interrupt::abort`] was called.
    async fn aborted(&self) {
        while !self.abort.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records one request to stop; returns how many there were.
    pub fn request(&self) -> u32 {
        self.requests.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn requested(&self) -> bool {
        self.requests.load(Ordering::SeqCst) > 0
    }

    /// Stops the run because its lock can no longer be trusted to be held (`why`).
    pub fn lose_lease(&self, why: String) {
        self.lease_lost.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
        self.request();
    }

    /// Why the lease was lost, if it was.
    pub fn lease_lost(&self) -> Option<String> {
        self.lease_lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long an aborted apply may spend writing its receipt (and, again, releasing its lock).
const ABORT_WRITE_BUDGET: Duration = Duration::from_secs(5);

/// What happened on each host, and how the rollout ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub plan_id: PlanId,
    pub outcome: Outcome,
    pub hosts: Vec<HostOutcome>,
    pub receipt: String,
    pub failure: Option<String>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }
}

/// Everything the job needs, gathered by the caller.
pub struct Deployer<'a> {
    pub set: &'a ManifestSet,
    pub store: &'a dyn Store,
    pub verifier: &'a dyn VerifyRelease,
    pub operator: String,
    pub sink: &'a dyn Sink,
    pub clock: &'a dyn Clock,
    pub interrupt: &'a Interrupt,
    /// Where this control plane runs (lock records), and how to ask whether a pid exists.
    pub machine: Machine,
    pub pid_exists: fn(i64) -> bool,
}

/// What a rehearsal did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rehearsal {
    pub receipt: String,
    pub detail: String,
    pub back_to: String,
}

/// What each host reported, by host name (one probe each).
type Observed = Vec<(String, Observation)>;

/// A plan this process derived, with what the hosts reported for it: applying it
/// ([`Deployer::apply_derived`]) consults the manifests, the registry and the store again
/// but not the hosts, which it observed moments ago (`promote --apply`).
pub struct Derived {
    plan: Plan,
    observed: Observed,
}

impl Derived {
    /// The plan (what the operator is shown).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn into_plan(self) -> Plan {
        self.plan
    }
}

/// When a plan was made, and by whom.
struct Made {
    at: DateTime<Utc>,
    by: String,
}

/// What the store says about (environment, service).
pub(crate) struct Recorded {
    /// Each host's history, read as a stack (see `controlplane_core::history`).
    pub(crate) stacks: BTreeMap<String, Vec<String>>,
    /// Content identity of recorded releases, by release id.
    pub(crate) hashes: BTreeMap<String, String>,
}

impl Recorded {
    /// The release recorded as live on each host.
    pub(crate) fn current(&self) -> BTreeMap<String, String> {
        self.stacks.iter().filter_map(|(h, s)| crate::history::current(s).map(|c| (h.clone(), c.to_owned()))).collect()
    }

    /// The releases to hash on each host: its recorded release, and `also`.
    pub(crate) fn probe_targets(
        &self,
        hosts: &[crate::manifest::Host],
        also: Option<&ReleaseId>,
    ) -> BTreeMap<String, Vec<ReleaseId>> {
        let current = self.current();
        hosts
            .iter()
            .map(|h| {
                let mut t: Vec<ReleaseId> = also.cloned().into_iter().collect();
                t.extend(current.get(h.name.as_str()).and_then(|c| ReleaseId::new(c).ok()));
                (h.name.to_string(), t)
            })
            .collect()
    }
}

/// The receipts of a run: where they go and what signs them.
pub struct Receipts<'a> {
    pub log: &'a ReceiptLog,
    pub key: &'a SigningKey,
}

impl<'a> Deployer<'a> {
    pub fn environment(&self, name: &str) -> Result<&'a Environment, DeployError> {
        EnvName::new(name)
            .ok()
            .and_then(|n| self.set.environment(&n))
            .ok_or_else(|| DeployError::UnknownEnvironment(name.into()))
    }

    pub fn service(&self, name: &str) -> Result<&'a Service, DeployError> {
        ServiceName::new(name)
            .ok()
            .and_then(|n| self.set.service(&n))
            .ok_or_else(|| DeployError::UnknownService(name.into()))
    }

    pub(crate) fn now(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn made_now(&self) -> Made {
        Made { at: self.clock.now(), by: self.operator.clone() }
    }

    pub(crate) fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.set.settings.lock_lease_secs).unwrap_or(i64::MAX / 1000))
    }
}

/// The tag `reference` names in `service`'s repository (`v2`, or `REPOSITORY:v2`), if it
/// is one: a tag as OCI allows it (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
fn tag_of<'r>(service: &Service, reference: &'r str) -> Option<&'r str> {
    if reference.contains('@') {
        return None;
    }
    let repo = service.repository.as_str();
    let tag = match reference.strip_prefix(repo).and_then(|t| t.strip_prefix(':')) {
        Some(t) => t,
        None if reference.contains('/') || reference.contains(':') => return None,
        None => reference,
    };
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    (first_ok && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))).then_some(tag)
}

/// Resolves the names of `service`'s egress allowlist (now: at plan time, and again at
/// apply time, when the plan is derived again) and pins the rules to the addresses.
pub async fn pin_egress(service: &Service) -> Result<crate::egress::Pinned, DeployError> {
    use crate::egress::Destination;
    let fail = |detail: String| DeployError::Egress { service: service.name.to_string(), detail };
    let mut resolved = BTreeMap::new();
    for rule in &service.egress_rules {
        if let Destination::Name(name) = &rule.to {
            if resolved.contains_key(name) {
                continue;
            }
            let addrs =
                tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host((name.as_str(), rule.port)))
                    .await
                    .map_err(|_| fail(format!("resolving `{name}` timed out")))?
                    .map_err(|e| fail(format!("`{name}` does not resolve: {e}")))?;
            let mut ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.sort();
            ips.dedup();
            resolved.insert(name.clone(), ips);
        }
    }
    crate::egress::pin(service.name.as_str(), &service.egress_rules, service.egress_loopback, &resolved).map_err(fail)
}

/// A saved plan file, read strictly. Its content is checked against its `plan_id` and then
/// treated as a request ([`Deployer::apply_saved`]).
pub fn read_saved(text: &str) -> Result<plan::SavedPlan, serde_json::Error> {
    serde_json::from_str(text)
}

/// The recorded release's image and what the environment asks of it.
fn requirements(env: &Environment, record: &ReleaseRecord) -> Result<(PinnedImage, Requirements), DeployError> {
    let image = PinnedImage {
        repository: Repository::new(&record.facts.repository)
            .map_err(|e| VerifyError::BadReference(record.facts.repository.clone(), e))?,
        digest: Digest::new(&record.facts.digest)
            .map_err(|e| VerifyError::BadReference(record.facts.digest.clone(), e))?,
    };
    let req = Requirements {
        provenance: env.require_provenance,
        sbom: env.require_sbom,
        commit: Some(record.facts.source_commit.clone()),
    };
    Ok((image, req))
}

pub(crate) fn vm<'f>(fleet: &'f Fleet, name: &str) -> Result<&'f dyn GoldenVm, DeployError> {
    fleet.get(name).ok_or_else(|| {
        DeployError::Vm(VmError::Probe { host: name.into(), reason: HostText::new("the host is not connected") })
    })
}

/// The text a refusal receipt carries: the error and its details.
fn refusal_detail(e: &DeployError) -> String {
    std::iter::once(e.to_string()).chain(e.details()).collect::<Vec<_>>().join("\n")
}

fn receipt_body(
    d: &Deployer<'_>,
    plan: &Plan,
    plan_id: &PlanId,
    approvals: Vec<ApprovalRecord>,
    outcome: &str,
    detail: Option<String>,
    hosts: Vec<HostOutcome>,
) -> ReceiptBody {
    ReceiptBody {
        rollout: None,
        kind: if plan.kind == PlanKind::Promote { ReceiptKind::Apply } else { ReceiptKind::Rollback },
        time: d.now(),
        operator: d.operator.clone(),
        plan_id: Some(plan_id.to_string()),
        environment: Some(plan.environment.clone()),
        service: Some(plan.service.clone()),
        release: Some(plan.release.facts.clone()),
        hosts,
        approvals,
        outcome: outcome.into(),
        detail,
    }
}

/// One apply under the lock: a derived plan walked through the fleet.
struct Run<'r, 'a> {
    d: &'r Deployer<'a>,
    fleet: &'r Fleet,
    plan: &'r Plan,
    plan_id: &'r PlanId,
    env: &'a Environment,
    service: &'a Service,
    approvals: Vec<ApprovalRecord>,
    /// With `prove_on_apply`: what each host's workload must (not) reach after its health check.
    egress_checks: Option<Vec<crate::egress::Expectation>>,
    /// Each host's outcome so far (what an aborted run's receipt says).
    progress: std::sync::Mutex<BTreeMap<String, HostOutcome>>,
    /// The batches this run walks: all of the plan's, or what a paused run left.
    batches: Vec<Vec<String>>,
    /// Each changing host's way back (for a resumed run, as the paused plan recorded it).
    targets: BTreeMap<String, Option<ReleaseId>>,
    /// A resumed run: what the paused run left.
    resumed: Option<canary::Resumed>,
    /// What the soaks saw, for the receipt.
    soaked: std::sync::Mutex<Vec<crate::soak::SoakRecord>>,
}

mod apply;
mod canary;
mod derive;
mod lease;
mod rehearse;
mod rollback;
mod run;
pub use canary::{last_rollout, LastRollout};
#[cfg(test)]
mod tests;
