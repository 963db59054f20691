//! The job: plan a promotion or rollback (verify, render, observe; changes nothing) and
//! apply a plan. This is the only code that mutates hosts; it talks to them through
//! [`GoldenVm`] and decides nothing itself: the plan (`plan::build`, `plan::compare`),
//! each host's next step (`rollout::HostMove`), whether to go on (`rollout::continue_after`)
//! and the outcome (`rollout::outcome`) are the core's pure functions.
//!
//! A plan handed to [`Deployer::apply`] — from a file or just shown — is a request, never
//! authority: apply derives the plan again from the manifests, the store and the hosts,
//! refuses the request if it says anything else (tampered) or if hosts moved (stale), and
//! applies only what it derived itself.

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

    /// The recorded release `reference` names, by any of its names: a release id as plans,
    /// status and history show it (`r-…`, or a unique prefix of one, in any environment);
    /// its image digest (`repo@sha256:…`, `sha256:…` or a unique prefix); or a tag of the
    /// service's repository (`v2` or `repo:v2`), resolved now to its digest and shown pinned.
    pub async fn resolve_release(&self, service: &Service, reference: &str) -> Result<ReleaseRecord, DeployError> {
        let s = service.name.as_str();
        if reference.starts_with("r-") {
            let mut digests = std::collections::BTreeSet::new();
            for env in &self.set.environments {
                for id in self.release_ids(env, service, reference).await? {
                    if let Some(a) = self.store.applied_release(env.name.as_str(), s, &id).await? {
                        digests.insert(a.facts.digest);
                    }
                }
            }
            let unknown = || DeployError::UnknownRelease { service: s.into(), reference: reference.into() };
            return match digests.len() {
                0 => Err(unknown()),
                1 => crate::catalog::resolve(self.store, s, digests.first().ok_or_else(unknown)?).await,
                count => Err(DeployError::AmbiguousRelease { service: s.into(), reference: reference.into(), count }),
            };
        }
        match crate::catalog::resolve(self.store, s, reference).await {
            Err(DeployError::UnknownRelease { .. }) if tag_of(service, reference).is_some() => {
                let tag = tag_of(service, reference).unwrap_or_default();
                let digest = self.verifier.resolve_tag(&service.repository, tag).await?.ok_or_else(|| {
                    DeployError::UnknownRelease { service: s.into(), reference: format!("{reference} (no such tag)") }
                })?;
                self.sink.event(&format!("tag `{tag}` is {}@{digest} now", service.repository));
                crate::catalog::resolve(self.store, s, digest.as_str()).await.map_err(|e| match e {
                    DeployError::UnknownRelease { .. } => DeployError::UnknownRelease {
                        service: s.into(),
                        reference: format!("{reference} (now {digest})"),
                    },
                    other => other,
                })
            }
            other => other,
        }
    }

    /// The release ids in `env`'s recorded history of `service` that are `prefix` or start
    /// with it (the exact id alone when one is exactly it).
    async fn release_ids(
        &self,
        env: &Environment,
        service: &Service,
        prefix: &str,
    ) -> Result<Vec<String>, DeployError> {
        let mut ids: Vec<String> = Vec::new();
        for h in self.store.history(env.name.as_str(), service.name.as_str()).await? {
            if h.release_id == prefix {
                return Ok(vec![h.release_id]);
            }
            if !h.release_id.is_empty() && h.release_id.starts_with(prefix) && !ids.contains(&h.release_id) {
                ids.push(h.release_id);
            }
        }
        Ok(ids)
    }

    pub(crate) async fn verify_record(
        &self,
        env: &Environment,
        record: &ReleaseRecord,
    ) -> Result<Verified, DeployError> {
        let (image, req) = requirements(env, record)?;
        Ok(self.verifier.verify_release(&image, &req).await?)
    }

    /// A release reaches an environment only after it succeeded on every host of the one before.
    async fn gate(&self, env: &Environment, service: &Service, digest: &str) -> Result<(), DeployError> {
        let Some(after) = &env.after else { return Ok(()) };
        let gate =
            || DeployError::Gate { environment: env.name.to_string(), after: after.to_string(), digest: digest.into() };
        let Some(prev) = self.set.environment(after) else { return Err(gate()) };
        let recorded = self.store.deployments(after.as_str(), service.name.as_str()).await?;
        let everywhere =
            prev.hosts.iter().all(|h| recorded.iter().any(|d| d.host == h.name.as_str() && d.digest == digest));
        if everywhere {
            Ok(())
        } else {
            Err(gate())
        }
    }

    /// Where `env` requires it, the release must have been rehearsed in an environment
    /// that comes before it.
    async fn rehearsed(&self, env: &Environment, service: &Service, digest: &str) -> Result<(), DeployError> {
        if !env.require_rehearsal {
            return Ok(());
        }
        let earlier = self.set.earlier(env);
        let done = self.store.rehearsals(service.name.as_str(), digest).await?;
        if done.iter().any(|(e, _)| earlier.contains(e)) {
            return Ok(());
        }
        Err(DeployError::NotRehearsed {
            environment: env.name.to_string(),
            digest: digest.to_owned(),
            earlier: earlier.first().cloned().unwrap_or_default(),
        })
    }

    /// Rollback proof: promotes `reference` in `env`, rolls it back to the recorded way
    /// back, and promotes it again, each with its receipt; then writes the rehearsal
    /// receipt that environments with `require_rehearsal` look for.
    pub async fn rehearse(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
        receipts: &Receipts<'_>,
    ) -> Result<Rehearsal, DeployError> {
        let step = |name: &'static str, r: ApplyReport| {
            if r.succeeded() {
                Ok(r)
            } else {
                Err(DeployError::RehearsalFailed { step: name, receipt: r.receipt })
            }
        };
        // A rehearsal runs its three applies back to back: a pause point would stop it
        // after its first canary, its environment left paused.
        if self.environment(env_name)?.rollout.pause_after.is_some() {
            return Err(DeployError::PausedRehearsal { environment: env_name.to_owned() });
        }
        let forward = self.promotion(fleet, env_name, service_name, reference).await?;
        let first = step("promote", self.apply_derived(fleet, &forward, receipts).await?)?;
        let (forward, back) = (forward.plan, self.rollback(fleet, env_name, service_name, None).await?);
        if back.plan.release.release_id == forward.release.release_id {
            return Err(DeployError::RehearsalFailed {
                step: "roll back (no earlier release recorded)",
                receipt: first.receipt,
            });
        }
        let rolled = step("roll back", self.apply_derived(fleet, &back, receipts).await?)?;
        let (back, again) = (back.plan, self.promotion(fleet, env_name, service_name, reference).await?);
        let second = step("promote again", self.apply_derived(fleet, &again, receipts).await?)?;
        let again = again.plan;
        let detail = format!(
            "promoted `{}` ({}), rolled back to `{}` ({}), promoted again ({})",
            forward.release.release_id, first.receipt, back.release.release_id, rolled.receipt, second.receipt
        );
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Rehearsal,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(again.id().to_string()),
            environment: Some(again.environment.clone()),
            service: Some(again.service.clone()),
            release: Some(again.release.facts.clone()),
            hosts: second.hosts.clone(),
            approvals: Vec::new(),
            outcome: "succeeded".into(),
            detail: Some(detail.clone()),
        };
        let r = receipts.log.append(body, receipts.key, self.store).await?;
        self.store
            .put_rehearsal(
                &again.environment,
                &again.service,
                &again.release.facts.digest,
                &r.file_name(),
                self.clock.now(),
            )
            .await?;
        Ok(Rehearsal { receipt: r.file_name(), detail, back_to: back.release.release_id.to_string() })
    }

    /// Observes `service` on every host of `env` (one round trip each, all at once),
    /// hashing each host's `targets` besides the live release.
    pub async fn observe(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        targets: &BTreeMap<String, Vec<ReleaseId>>,
    ) -> Result<Vec<(String, Observation)>, DeployError> {
        let futs = env.hosts.iter().map(|h| async move {
            let vm = vm(fleet, h.name.as_str())?;
            let list: Vec<&ReleaseId> = targets.get(h.name.as_str()).into_iter().flatten().collect();
            Ok::<_, DeployError>((h.name.to_string(), vm.probe(service, &list).await?))
        });
        let observed: Vec<(String, Observation)> =
            futures::future::join_all(futs).await.into_iter().collect::<Result<_, _>>()?;
        if service.podman().is_some() {
            for (host, obs) in &observed {
                let report = obs.running.as_ref().map(|r| crate::podman::Report::parse(r.as_str()));
                if let Some(Err(reason)) | Some(Ok(Err(reason))) = report.map(|r| r.map(|r| r.ready())) {
                    return Err(DeployError::HostNotReady {
                        host: host.clone(),
                        service: service.name.to_string(),
                        hint: crate::podman::readiness_hint(&reason, service.name.as_str()),
                        reason,
                    });
                }
            }
        }
        Ok(observed)
    }

    /// What was recorded for (environment, service): each host's history as a stack, and
    /// the content identity of each recorded release.
    pub(crate) async fn recorded(&self, env: &Environment, service: &Service) -> Result<Recorded, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let deployments = self.store.deployments(e, s).await?;
        let mut stacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_host: BTreeMap<&str, Vec<crate::records::HistoryEntry>> = BTreeMap::new();
        let history = self.store.history(e, s).await?;
        for h in &history {
            by_host.entry(h.host.as_str()).or_default().push(h.clone());
        }
        for (host, entries) in by_host {
            stacks.insert(host.to_owned(), crate::history::stack(&entries));
        }
        // State recorded before histories were kept: the deployment and its way back.
        for d in &deployments {
            if !stacks.contains_key(&d.host) && !d.release_id.is_empty() {
                let stack = d.rollback_target.iter().filter(|t| !t.is_empty()).cloned().chain([d.release_id.clone()]);
                stacks.insert(d.host.clone(), stack.collect());
            }
        }
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        for d in &deployments {
            if !d.release_id.is_empty() {
                hashes.insert(d.release_id.clone(), d.content_hash.clone());
            }
        }
        let ids: std::collections::BTreeSet<&String> = stacks.values().flatten().collect();
        for id in ids {
            if !hashes.contains_key(id) {
                if let Some(a) = self.store.applied_release(e, s, id).await? {
                    hashes.insert(id.clone(), a.content_hash);
                }
            }
        }
        Ok(Recorded { stacks, hashes })
    }

    /// Plans a promotion of `reference` to `env`. Changes nothing anywhere.
    pub async fn plan_promotion(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
    ) -> Result<Plan, DeployError> {
        Ok(self.promotion(fleet, env_name, service_name, reference).await?.plan)
    }

    /// [`Deployer::plan_promotion`], keeping what the hosts reported for an apply now.
    pub async fn promotion(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
    ) -> Result<Derived, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let record = self.resolve_release(service, reference).await?;
        self.derive_promotion(fleet, env, service, &record, &self.made_now(), None).await
    }

    /// The promotion plan for `record`, derived from the manifests, the store and the hosts.
    async fn derive_promotion(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        record: &ReleaseRecord,
        made: &Made,
        seen: Option<&Observed>,
    ) -> Result<Derived, DeployError> {
        let verified = self.verify_record(env, record).await?;
        self.gate(env, service, &record.facts.digest).await?;
        self.rehearsed(env, service, &record.facts.digest).await?;
        let egress = if env.egress.enforce { Some(pin_egress(service).await?) } else { None };
        let platform_digest = verified.platform_digest(&service.platform)?;
        let content = release::render(&ReleaseInput {
            service,
            environment: &env.name,
            image: &verified.image,
            source_commit: &record.facts.source_commit,
            signer_key_id: &verified.signature.key_id,
            provenance: verified.provenance().map(|p| p.layer.as_str()),
            sbom: verified.sbom().map(|p| p.layer.as_str()),
            egress: egress.as_ref(),
            platform_digest: platform_digest.as_ref(),
        })?;
        let recorded = self.recorded(env, service).await?;
        let observed = match seen {
            Some(o) => o.clone(),
            None => self.observe(fleet, env, service, &recorded.probe_targets(&env.hosts, None)).await?,
        };
        let planned = PlannedRelease {
            release_id: ReleaseId::new(&content.id).map_err(|e| PlanError::Invalid(e.to_string()))?,
            content_hash: ContentHash::new(&content.content_hash).map_err(|e| PlanError::Invalid(e.to_string()))?,
            facts: ReleaseFacts {
                repository: verified.image.repository.to_string(),
                digest: verified.image.digest.to_string(),
                source_commit: record.facts.source_commit.clone(),
                signer_key_id: verified.signature.key_id.clone(),
                provenance: content.json.provenance.clone(),
                sbom: content.json.sbom.clone(),
                signature: Some(verified.signature_summary()),
                contents: crate::contents::ContentScan::from_evidence(&record.evidence).map(|s| s.summary()),
                platform_digest: platform_digest.map(|d| d.to_string()),
            },
        };
        let plan = self
            .build_plan(
                fleet,
                &PlanInput {
                    kind: PlanKind::Promote,
                    environment: env,
                    service,
                    release: planned,
                    content: Some(&content),
                    observed: &observed,
                    known_hashes: &recorded.hashes,
                    recorded: &recorded.current(),
                    created_at: made.at,
                    author: &made.by,
                },
            )
            .await?;
        Ok(Derived { plan, observed })
    }

    /// [`plan::build`], except that a live release with no record on a host while another
    /// apply holds the lock is that apply's move in progress: the refusal names the holder.
    ///
    /// A broken way back whose release was changed by hand names what changed (the
    /// recorded release's directory listed and compared with its recorded files).
    async fn build_plan(&self, fleet: &Fleet, input: &PlanInput<'_>) -> Result<Plan, DeployError> {
        match plan::build(input) {
            Err(PlanError::RollbackTargetBroken { host, reason }) => {
                let changes = match input.recorded.get(&host) {
                    Some(id) => self.changes_on(fleet, input.environment, input.service, &host, id).await,
                    None => Vec::new(),
                };
                Err(DeployError::WayBackBroken {
                    host,
                    service: input.service.name.to_string(),
                    environment: input.environment.name.to_string(),
                    reason,
                    changes,
                })
            }
            Err(e @ PlanError::Unadopted { .. }) => {
                let (env, service) = (input.environment.name.as_str(), input.service.name.as_str());
                match self.store.lock_holder(env, service).await? {
                    Some(holder) if !holder.expired(self.clock.now()) => {
                        let liveness = lock::holder(&holder, &self.machine, self.pid_exists);
                        Err(DeployError::Locked {
                            environment: env.to_owned(),
                            service: service.to_owned(),
                            holder: Box::new(holder),
                            liveness,
                        })
                    }
                    _ => Err(e.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// What changed in release `id`'s directory on `host` against its recorded files, as
    /// lines (empty when the files were not kept; a line saying why when it cannot be listed).
    async fn changes_on(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        host: &str,
        id: &str,
    ) -> Vec<String> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let files = match self.store.applied_release(e, s, id).await {
            Ok(Some(AppliedRelease { files: Some(f), .. })) => f,
            _ => return Vec::new(),
        };
        let (Ok(applied), Some(vm)) = (crate::repair::decode(&files), fleet.get(host)) else { return Vec::new() };
        match vm.list_release(service, id).await {
            Ok(listing) => crate::repair::describe(&crate::repair::changes(&applied, &listing)),
            Err(e) => vec![format!("what changed cannot be listed: {e}")],
        }
    }

    /// Plans a rollback to the recorded rollback target, or to release `to`.
    pub async fn plan_rollback(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        to: Option<&str>,
    ) -> Result<Plan, DeployError> {
        Ok(self.rollback(fleet, env_name, service_name, to).await?.plan)
    }

    /// [`Deployer::plan_rollback`], keeping what the hosts reported for an apply now.
    pub async fn rollback(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        to: Option<&str>,
    ) -> Result<Derived, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let (e, s) = (env.name.to_string(), service.name.to_string());
        let target = match to {
            // A release id as plans, `status` and `history` show it, or a unique prefix.
            Some(t) if t.starts_with("r-") => {
                let mut ids = self.release_ids(env, service, t).await?;
                match ids.len() {
                    // Not in the history: the store's record of applied releases decides.
                    0 => t.to_owned(),
                    1 => ids.remove(0),
                    count => return Err(DeployError::AmbiguousRelease { service: s, reference: t.to_owned(), count }),
                }
            }
            // A digest (or `repo@sha256:…`, or a prefix), as `promote --release` takes it.
            Some(t) => self.applied_release_for(env, service, t).await?,
            None => match self.paused_way_back(env, service).await? {
                // A paused rollout: its moved hosts go back where they came from.
                Some(t) => t,
                None => {
                    // One step back in each host's history; the hosts must agree.
                    let recorded = self.recorded(env, service).await?;
                    let mut targets: Vec<String> =
                        recorded.stacks.values().filter_map(|s| crate::history::back(s).map(str::to_owned)).collect();
                    targets.sort();
                    targets.dedup();
                    match targets.len() {
                        0 => return Err(DeployError::NoRollbackTarget { environment: e, service: s }),
                        1 => targets.remove(0),
                        _ => {
                            return Err(DeployError::SplitRollbackTarget {
                                environment: e,
                                targets: targets.join(", "),
                            })
                        }
                    }
                }
            },
        };
        self.derive_rollback(fleet, env, service, &target, &self.made_now(), None).await
    }

    /// The release applied to (environment, service) whose image `reference` names (a
    /// digest, `repo@sha256:…` or a digest prefix): its release id.
    async fn applied_release_for(
        &self,
        env: &Environment,
        service: &Service,
        reference: &str,
    ) -> Result<String, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let record = self.resolve_release(service, reference).await.map_err(|err| match err {
            DeployError::UnknownRelease { .. } => DeployError::UnknownRollbackRelease {
                environment: e.into(),
                service: s.into(),
                release: reference.into(),
            },
            other => other,
        })?;
        // Every release the hosts' recorded histories name.
        let recorded = self.recorded(env, service).await?;
        let ids: std::collections::BTreeSet<&String> = recorded.stacks.values().flatten().collect();
        let mut found = Vec::new();
        for id in ids {
            if let Some(a) = self.store.applied_release(e, s, id).await? {
                if a.facts.digest == record.facts.digest {
                    found.push(id.clone());
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(DeployError::UnknownRollbackRelease {
                environment: e.into(),
                service: s.into(),
                release: reference.into(),
            }),
            _ => Err(DeployError::AmbiguousRollbackImage {
                environment: e.into(),
                digest: record.facts.digest.clone(),
                releases: found.join(", "),
            }),
        }
    }

    /// The rollback plan to release `target`, derived from the store and the hosts.
    async fn derive_rollback(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        target: &str,
        made: &Made,
        seen: Option<&Observed>,
    ) -> Result<Derived, DeployError> {
        let (e, s) = (env.name.to_string(), service.name.to_string());
        let applied = self.store.applied_release(&e, &s, target).await?.ok_or_else(|| {
            DeployError::UnknownRollbackRelease { environment: e.clone(), service: s.clone(), release: target.into() }
        })?;
        // Going back is still a deployment: the image must still verify.
        let record = ReleaseRecord {
            service: s.clone(),
            facts: applied.facts.clone(),
            evidence: String::new(),
            added_at: applied.applied_at,
            added_by: String::new(),
        };
        let verified = match self.verify_record(env, &record).await {
            // The way back must not depend on the registry (the hosts keep the image): an
            // outage falls back to what was verified when the release was recorded and
            // applied, if its signer is still trusted. Only an unreachable registry: an
            // answer that does not match its digest, or any other wrong answer, stays a refusal.
            Err(DeployError::Verify(VerifyError::Registry {
                image,
                source: crate::registry::RegistryError::Unreachable { .. },
            })) => {
                self.sink.event(&format!(
                    "the registry is unreachable for `{image}`: going back on the recorded verification (signer still trusted)"
                ));
                let (pinned, req) = requirements(env, &record)?;
                self.verifier.verify_recorded(&pinned, &record.facts, &req)?
            }
            other => other?,
        };
        let corrupt = |e: crate::ids::IdError| {
            DeployError::Store(StoreError::Corrupt { what: "applied release", detail: e.to_string() })
        };
        let target_id = ReleaseId::new(target).map_err(corrupt)?;
        let recorded = self.recorded(env, service).await?;
        let observed = match seen {
            Some(o) => o.clone(),
            None => self.observe(fleet, env, service, &recorded.probe_targets(&env.hosts, Some(&target_id))).await?,
        };
        let planned = PlannedRelease {
            release_id: target_id,
            content_hash: ContentHash::new(&applied.content_hash).map_err(corrupt)?,
            facts: ReleaseFacts {
                signer_key_id: verified.signature.key_id.clone(),
                signature: Some(verified.signature_summary()),
                ..applied.facts
            },
        };
        let plan = self
            .build_plan(
                fleet,
                &PlanInput {
                    kind: PlanKind::Rollback,
                    environment: env,
                    service,
                    release: planned,
                    content: None,
                    observed: &observed,
                    known_hashes: &recorded.hashes,
                    recorded: &recorded.current(),
                    created_at: made.at,
                    author: &made.by,
                },
            )
            .await?;
        // A rollback that moves nothing is not a rollback: refused, never a success.
        if plan.is_noop() {
            return Err(DeployError::NothingToRollBack {
                environment: e,
                service: s,
                release: target.to_owned(),
                choices: self.rollback_choices(env, service, target).await?,
            });
        }
        Ok(Derived { plan, observed })
    }

    /// The releases (environment, service)'s hosts ran, other than `except`, newest first,
    /// as `--to` takes them: (release id, short digest and commit).
    async fn rollback_choices(
        &self,
        env: &Environment,
        service: &Service,
        except: &str,
    ) -> Result<Vec<(String, String)>, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let mut ids: Vec<String> = Vec::new();
        for h in self.store.history(e, s).await?.into_iter().rev() {
            if !h.release_id.is_empty() && h.release_id != except && !ids.contains(&h.release_id) {
                ids.push(h.release_id);
            }
        }
        let mut choices = Vec::new();
        for id in ids {
            if let Some(a) = self.store.applied_release(e, s, &id).await? {
                choices.push((id, a.facts.short()));
            }
        }
        Ok(choices)
    }

    /// Records a refusal that happened before a plan existed (verification, gate), when
    /// the operator asked to apply: every apply attempt ends with a receipt.
    pub async fn record_refusal(
        &self,
        env: &str,
        service: &str,
        e: &DeployError,
        receipts: &Receipts<'_>,
    ) -> Result<String, DeployError> {
        let r = self.write_refusal(None, Some(env.to_owned()), Some(service.to_owned()), e, receipts).await?;
        Ok(r.file_name())
    }

    /// Writes the receipt of a refusal: what was asked (plan, environment, service) and why not.
    async fn write_refusal(
        &self,
        plan_id: Option<String>,
        environment: Option<String>,
        service: Option<String>,
        e: &DeployError,
        receipts: &Receipts<'_>,
    ) -> Result<crate::receipt::Receipt, DeployError> {
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Refusal,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id,
            environment,
            service,
            release: None,
            hosts: Vec::new(),
            approvals: Vec::new(),
            outcome: "refused".into(),
            detail: Some(refusal_detail(e)),
        };
        Ok(receipts.log.append(body, receipts.key, self.store).await?)
    }

    /// Applies what `requested` asks for, or refuses it. `requested` is not believed: the
    /// plan is derived again here, and the request must match it exactly (policy fields
    /// come from the manifests, hosts must not have moved). Every outcome past reading the
    /// request ends with a receipt.
    pub async fn apply(
        &self,
        fleet: &Fleet,
        requested: &Plan,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        self.apply_seen(fleet, requested, None, receipts).await
    }

    /// Applies a plan this process derived: like [`Deployer::apply`], except that the
    /// hosts are not probed a second time (what they reported moments ago is used).
    /// Verification, the gate, the rendering and the store are consulted again.
    pub async fn apply_derived(
        &self,
        fleet: &Fleet,
        derived: &Derived,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        self.apply_seen(fleet, &derived.plan, Some(&derived.observed), receipts).await
    }

    async fn apply_seen(
        &self,
        fleet: &Fleet,
        requested: &Plan,
        seen: Option<&Observed>,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let env = self.environment(&requested.environment)?;
        let service = self.service(&requested.service)?;
        let requested_id = requested.id();
        let id = &requested_id;
        let refuse = |e: DeployError| async move {
            let (env, svc) = (Some(env.name.to_string()), Some(service.name.to_string()));
            self.write_refusal(Some(id.to_string()), env, svc, &e, receipts).await?;
            Err::<ApplyReport, _>(e)
        };

        // 0. A plan is single use and expires. One that was applied says so, with its receipt.
        let applied = self
            .store
            .receipts()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.plan_id.as_deref() == Some(id.as_str()) && matches!(r.kind.as_str(), "apply" | "rollback"));
        if let Some(r) = applied {
            return refuse(DeployError::AlreadyApplied { plan: id.clone(), receipt: r.file }).await;
        }
        if let Err(e) = plan::check_age(requested, self.clock.now(), self.set.settings.plan_max_age_secs) {
            return refuse(DeployError::Expired(e)).await;
        }
        let created = Made {
            at: DateTime::parse_from_rfc3339(&requested.created_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| self.clock.now()),
            by: requested.author.clone(),
        };
        // 1. Derive the plan again: verification, the gate, rendering and observation all
        //    run now. A release that is not recorded cannot be promoted from a file.
        let derived = match requested.kind {
            PlanKind::Promote => {
                let record = match self.store.release(service.name.as_str(), &requested.release.facts.digest).await? {
                    Some(r) => r,
                    None => {
                        return refuse(DeployError::UnknownRelease {
                            service: service.name.to_string(),
                            reference: requested.release.facts.digest.clone(),
                        })
                        .await
                    }
                };
                self.derive_promotion(fleet, env, service, &record, &created, seen).await
            }
            PlanKind::Rollback => {
                let id = requested.release.release_id.as_str();
                self.derive_rollback(fleet, env, service, id, &created, seen).await
            }
        };
        let plan = match derived {
            Ok(d) => d.plan,
            Err(
                e @ (DeployError::Verify(_)
                | DeployError::Gate { .. }
                | DeployError::Plan(_)
                | DeployError::WayBackBroken { .. }),
            ) => return refuse(e).await,
            Err(e @ (DeployError::UnknownRollbackRelease { .. } | DeployError::NothingToRollBack { .. })) => {
                return refuse(e).await
            }
            Err(e) => return Err(e),
        };
        match plan::compare(requested, &plan) {
            Ok(()) => {}
            Err(Mismatch::Stale(moved)) => {
                return refuse(DeployError::Stale { plan: requested_id.clone(), moved }).await
            }
            Err(Mismatch::Tampered(diffs)) => {
                return refuse(DeployError::PlanTampered { plan: requested_id.clone(), diffs }).await
            }
        }
        let plan_id = plan.id();

        // 2. Approvals: each signature verified against the environment's approvers now,
        //    each statement checked against this plan, counted per distinct approver.
        let (approval_records, counted, not_counted) = self.check_approvals(env, &plan, &plan_id).await?;
        if (counted as u32) < env.approvals {
            let e = DeployError::Approvals { plan: plan_id, need: env.approvals, have: counted, not_counted };
            return refuse(e).await;
        }
        let targets = plan.hosts.iter().map(|h| (h.host.clone(), h.rollback_target.clone())).collect();
        self.run_locked(fleet, &plan, &plan_id, env, service, approval_records, None, targets, true, receipts).await
    }

    /// Applies a checked plan under the lock: the egress expectations pinned, the lock
    /// taken (and, for a new plan, the plan recorded as applied once), the batches walked
    /// while the lease is renewed, and the lock released whatever happens.
    #[allow(clippy::too_many_arguments)]
    async fn run_locked(
        &self,
        fleet: &Fleet,
        plan: &Plan,
        plan_id: &PlanId,
        env: &'_ Environment,
        service: &'_ Service,
        approvals: Vec<ApprovalRecord>,
        resumed: Option<canary::Resumed>,
        targets: BTreeMap<String, Option<ReleaseId>>,
        record: bool,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let refuse = |e: DeployError| async move {
            let (env, svc) = (Some(env.name.to_string()), Some(service.name.to_string()));
            self.write_refusal(Some(plan_id.to_string()), env, svc, &e, receipts).await?;
            Err::<ApplyReport, _>(e)
        };
        if self.interrupt.requested() {
            return self.finish_interrupted_early(plan, plan_id, approvals, receipts).await;
        }

        let egress_checks = match env.egress.prove_on_apply && !plan.is_noop() {
            true => Some(crate::egress_proof::expectations(env, service).await?),
            false => None,
        };

        // 3. The lock: a lease in the store, renewed while the apply runs. A holder whose
        //    lease ran out (it died, or lost the database) is taken over, on the record.
        let lease = self.lease();
        let now = self.clock.now();
        match self.take_lock(&plan.environment, &plan.service, plan_id, receipts).await {
            Err(e @ DeployError::Locked { .. }) => return refuse(e).await,
            other => other?,
        };
        // A resume continues the pause it was checked against: still the last rollout, now
        // that the lock is held (a concurrent resume or rollback came first otherwise).
        if let Some(r) = &resumed {
            let last = self.last_rollout(&plan.environment, &plan.service).await?;
            if last.as_ref().map(|l| l.receipt.as_str()) != Some(r.from_receipt.as_str()) {
                self.store.unlock(&plan.environment, &plan.service, plan_id.as_str()).await?;
                let why = format!(
                    "another rollout of `{}` in `{}` ended its pause while this one waited for the lock (receipt {})",
                    plan.service,
                    plan.environment,
                    last.map(|l| l.receipt).unwrap_or_default()
                );
                return Err(DeployError::NotPaused { plan: plan_id.clone(), why });
            }
        }
        // A plan that changes something is applied once, whatever the outcome.
        if record && !plan.is_noop() && !self.store.record_plan(plan_id.as_str(), self.clock.now()).await? {
            self.store.unlock(&plan.environment, &plan.service, plan_id.as_str()).await?;
            return refuse(DeployError::Replayed(plan_id.clone())).await;
        }
        let run = Run {
            d: self,
            fleet,
            plan,
            plan_id,
            env,
            service,
            approvals,
            egress_checks,
            progress: std::sync::Mutex::new(BTreeMap::new()),
            batches: plan.batches.clone(),
            targets,
            resumed,
            soaked: std::sync::Mutex::new(Vec::new()),
        };
        self.interrupt.applying.store(true, Ordering::SeqCst);
        let result = tokio::select! {
            result = run.apply_locked(receipts) => result,
            never = self.keep_lease(plan, plan_id, lease, now) => match never {},
            () = self.interrupt.aborted() => run.aborted(receipts).await,
        };
        // A lock that cannot be released now runs out with its lease.
        let unlock = self.store.unlock(&plan.environment, &plan.service, plan_id.as_str());
        match tokio::time::timeout(ABORT_WRITE_BUDGET, unlock).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.sink.event(&format!("cannot release the lock ({e}); it ends when its lease runs out")),
            Err(_) => self.sink.event("the store did not answer the unlock; the lock ends when its lease runs out"),
        }
        self.interrupt.applying.store(false, Ordering::SeqCst);
        result
    }

    /// The approvals of `plan_id` that count (as receipt records), how many distinct
    /// approvers that is, and why each other stored approval does not count.
    async fn check_approvals(
        &self,
        env: &Environment,
        plan: &Plan,
        plan_id: &PlanId,
    ) -> Result<(Vec<ApprovalRecord>, usize, Vec<crate::approval::NotCounted>), DeployError> {
        use crate::approval::{self, NotCounted, Statement};
        let stored = self.store.approvals(plan_id.as_str()).await?;
        let mut verified = Vec::new();
        let mut not_counted = Vec::new();
        for a in &stored {
            let checked = crate::sshsig::verify(&env.approvers, a.statement.as_bytes(), &a.signature)
                .and_then(|who| Statement::parse(a.statement.as_bytes()).map(|s| (who, s)));
            match checked {
                Ok((approver, statement)) => verified.push((a, approval::Verified { approver, statement })),
                Err(reason) => not_counted.push(NotCounted { approver: a.approver.clone(), reason }),
            }
        }
        let list: Vec<approval::Verified> = verified.iter().map(|(_, v)| v.clone()).collect();
        let (counted, refused) = approval::count(
            &list,
            &approval::Expected {
                plan_id: plan_id.as_str(),
                environment: &plan.environment,
                service: &plan.service,
                release_digest: &plan.release.facts.digest,
                author: &plan.author,
                author_may_approve: env.author_may_approve,
                max_validity_secs: env.approval_valid_secs,
                now: self.clock.now(),
            },
        );
        not_counted.extend(refused);
        let records = verified
            .iter()
            .filter(|(_, v)| counted.contains(&v.approver))
            .map(|(a, v)| ApprovalRecord {
                approver: v.approver.clone(),
                at: a.approved_at.to_rfc3339(),
                statement: Some(a.statement.clone()),
                signature: Some(a.signature.clone()),
            })
            .collect();
        Ok((records, counted.len(), not_counted))
    }

    fn made_now(&self) -> Made {
        Made { at: self.clock.now(), by: self.operator.clone() }
    }

    pub(crate) fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.set.settings.lock_lease_secs).unwrap_or(i64::MAX / 1000))
    }

    /// Renews the lock lease every third of its length, for as long as it is polled. If
    /// another control plane took the lock over (this one stalled past its lease), or the
    /// lease cannot be confirmed before it runs out (the store fails or does not answer),
    /// the apply stops — while the lease is still its own, a ninth of it ahead of expiry —
    /// and no further host step starts; the receipt says why.
    async fn keep_lease(
        &self,
        plan: &Plan,
        plan_id: &PlanId,
        lease: chrono::Duration,
        taken: DateTime<Utc>,
    ) -> std::convert::Infallible {
        let every = lease.to_std().unwrap_or(Duration::from_secs(60)) / 3;
        let margin = every / 3;
        // The lease is ours until this instant, as far as this process can tell (the time a
        // renewal was asked for plus the lease: the store may have written it later).
        let mut confirmed_until = taken + lease;
        let mut wait = every;
        let stop = |why: String| {
            self.sink.event(&format!("{why}: stopping"));
            self.interrupt.lose_lease(why);
        };
        loop {
            // Never sleep past the point where the run must stop.
            let left = (confirmed_until - self.clock.now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait.min(left.saturating_sub(margin))).await;
            let asked = self.clock.now();
            let left = (confirmed_until - asked).to_std().unwrap_or_default();
            if left <= margin {
                stop(format!(
                    "the lock's lease could not be renewed before it expires at {}",
                    confirmed_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
                return std::future::pending().await;
            }
            // A store that does not answer is a store that cannot renew: bounded so that the
            // answer, or its absence, comes while the lease is still ours.
            let budget = every.min(left - margin);
            let renewed = tokio::time::timeout(
                budget,
                self.store.renew_lock(&plan.environment, &plan.service, plan_id.as_str(), asked + lease),
            )
            .await
            .unwrap_or_else(|_| Err(StoreError::Unanswered { what: "renew lock", secs: budget.as_secs_f64() }));
            match renewed {
                Ok(true) => {
                    confirmed_until = asked + lease;
                    wait = every;
                }
                Ok(false) => {
                    stop("the lock's lease was taken over by another control plane".to_owned());
                    return std::future::pending().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lock lease");
                    self.sink.event(&format!("cannot renew the lock's lease ({e}); trying again"));
                    wait = margin;
                }
            }
        }
    }

    /// Takes `(env, service)`'s lock for `token` (the plan, or an adoption's token) as a
    /// lease from now; a holder whose lease ran out is taken over, with a receipt; a live
    /// holder is [`DeployError::Locked`]. The fence is the token of writes under the lock.
    pub(crate) async fn take_lock(
        &self,
        env: &str,
        service: &str,
        token: &PlanId,
        receipts: &Receipts<'_>,
    ) -> Result<Fence, DeployError> {
        let now = self.clock.now();
        let lock = LockRecord {
            environment: env.to_owned(),
            service: service.to_owned(),
            holder_user: self.operator.clone(),
            holder_host: self.machine.hostname.clone(),
            holder_pid: i64::from(std::process::id()),
            holder_boot: self.machine.boot_id.clone(),
            plan_id: token.to_string(),
            since: now,
            expires_at: Some(now + self.lease()),
        };
        match self.store.try_lock(&lock, now).await? {
            LockOutcome::Taken => {}
            LockOutcome::TakenOver(previous) => self.record_takeover(&previous, token, receipts).await?,
            LockOutcome::Held(holder) => {
                let liveness = lock::holder(&holder, &self.machine, self.pid_exists);
                return Err(DeployError::Locked {
                    environment: env.to_owned(),
                    service: service.to_owned(),
                    holder: Box::new(holder),
                    liveness,
                });
            }
        }
        Ok(Fence { environment: env.to_owned(), service: service.to_owned(), plan_id: token.to_string() })
    }

    /// The receipt of a takeover of an expired lease.
    pub(crate) async fn record_takeover(
        &self,
        previous: &LockRecord,
        plan_id: &PlanId,
        receipts: &Receipts<'_>,
    ) -> Result<(), DeployError> {
        let expired = previous.expires_at.map_or_else(|| "never".into(), |t| t.to_rfc3339());
        let detail = format!(
            "lock taken over by plan {plan_id}: the lease of {} on {} (pid {}, plan {}, since {}) expired at {expired}",
            previous.holder_user,
            previous.holder_host,
            previous.holder_pid,
            previous.plan_id,
            previous.since.to_rfc3339()
        );
        self.sink.event(&detail);
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::LockOverride,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(previous.plan_id.clone()),
            environment: Some(previous.environment.clone()),
            service: Some(previous.service.clone()),
            release: None,
            hosts: vec![],
            approvals: vec![],
            outcome: "recorded".into(),
            detail: Some(detail),
        };
        receipts.log.append(body, receipts.key, self.store).await?;
        Ok(())
    }

    /// A stop asked for before the lock: nothing moved; the receipt says so.
    async fn finish_interrupted_early(
        &self,
        plan: &Plan,
        plan_id: &PlanId,
        approvals: Vec<ApprovalRecord>,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let body = receipt_body(self, plan, plan_id, approvals, Outcome::Interrupted.as_str(), None, Vec::new());
        receipts.log.append(body, receipts.key, self.store).await?;
        Err(DeployError::Interrupted)
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

impl Deployer<'_> {
    /// Applies a saved plan: the id it was shown with must be the hash of what it says,
    /// then [`Deployer::apply`] derives the plan again and compares.
    pub async fn apply_saved(
        &self,
        fleet: &Fleet,
        saved: &plan::SavedPlan,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let actual = saved.plan.id();
        if actual != saved.plan_id {
            let e = DeployError::PlanTampered {
                plan: saved.plan_id.clone(),
                diffs: vec![FieldDiff {
                    field: "plan_id".into(),
                    file: saved.plan_id.to_string(),
                    derived: actual.to_string(),
                }],
            };
            let env = self.environment(&saved.plan.environment).ok().map(|e| e.name.to_string());
            let svc = self.service(&saved.plan.service).ok().map(|s| s.name.to_string());
            self.write_refusal(Some(saved.plan_id.to_string()), env, svc, &e, receipts).await?;
            return Err(e);
        }
        self.apply(fleet, &saved.plan, receipts).await
    }
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

impl Run<'_, '_> {
    /// The fencing token of this run's writes under the lock.
    fn fence(&self) -> Fence {
        Fence {
            environment: self.plan.environment.clone(),
            service: self.plan.service.clone(),
            plan_id: self.plan_id.to_string(),
        }
    }

    fn body(&self, outcome: &str, detail: Option<String>, hosts: Vec<HostOutcome>) -> ReceiptBody {
        let mut body = receipt_body(self.d, self.plan, self.plan_id, self.approvals.clone(), outcome, detail, hosts);
        body.rollout = self.rollout_record(None, None);
        body
    }

    fn deployment(&self, host: &str, prev: Option<&DeploymentRecord>) -> DeploymentRecord {
        prev.cloned().unwrap_or_else(|| DeploymentRecord {
            environment: self.plan.environment.clone(),
            service: self.plan.service.clone(),
            host: host.to_owned(),
            release_id: String::new(),
            digest: String::new(),
            source_commit: String::new(),
            content_hash: String::new(),
            rollback_target: None,
            plan_id: String::new(),
            updated_at: self.d.clock.now(),
        })
    }

    async fn apply_locked(&self, receipts: &Receipts<'_>) -> Result<ApplyReport, DeployError> {
        let (d, plan) = (self.d, self.plan);
        let existing: BTreeMap<String, DeploymentRecord> = d
            .store
            .deployments(&plan.environment, &plan.service)
            .await?
            .into_iter()
            .map(|r| (r.host.clone(), r))
            .collect();
        let moving: Vec<&String> = self.batches.iter().flatten().collect();

        // 4. Record the way back before the first host is touched, under the lock.
        let mut way_back = Vec::new();
        for h in plan.hosts.iter().filter(|h| h.action == Action::Change && moving.contains(&&h.host)) {
            let mut r = self.deployment(&h.host, existing.get(&h.host));
            r.rollback_target = h.rollback_target.as_ref().map(ToString::to_string);
            r.plan_id = self.plan_id.to_string();
            r.updated_at = d.clock.now();
            way_back.push(r);
        }
        let applied = AppliedRelease {
            environment: plan.environment.clone(),
            service: plan.service.clone(),
            release_id: plan.release.release_id.to_string(),
            content_hash: plan.release.content_hash.to_string(),
            facts: plan.release.facts.clone(),
            applied_at: d.clock.now(),
            // What `repair` stages again (a rollback's plan carries no files: kept as recorded).
            files: (!plan.files.is_empty()).then(|| plan.files.clone()),
        };
        let mut writes: Vec<Write<'_>> = way_back.iter().map(Write::Deployment).collect();
        writes.push(Write::Applied(&applied));
        d.store.fenced(&self.fence(), &writes).await?;

        let mut outcomes: BTreeMap<String, HostOutcome> = plan
            .hosts
            .iter()
            .map(|h| {
                let id = |r: &Option<ReleaseId>| r.as_ref().map(ToString::to_string);
                let (outcome, after) = match h.action {
                    Action::None => ("unchanged", Some(h.after.to_string())),
                    Action::Change => ("untouched", id(&h.before)),
                };
                let o = HostOutcome {
                    host: h.host.clone(),
                    before: id(&h.before),
                    after,
                    rollback_target: id(&h.rollback_target),
                    outcome: outcome.into(),
                    detail: None,
                };
                (h.host.clone(), o)
            })
            .collect();
        // A resumed run: the hosts the paused run moved (or failed) are as it left them.
        if let Some(r) = &self.resumed {
            outcomes.extend(r.settled.iter().map(|(h, o)| (h.clone(), o.clone())));
        }
        self.note_progress(&outcomes, &[]);

        // 5. Stage everywhere first: staging changes nothing live, and a failure here stops
        //    the rollout before any host moved.
        if plan.kind == PlanKind::Promote && !plan.is_noop() {
            if let Err(e) = self.stage_all().await {
                let r = receipts
                    .log
                    .append(
                        self.body("failed", Some(e.to_string()), outcomes.into_values().collect()),
                        receipts.key,
                        d.store,
                    )
                    .await?;
                d.sink.event(&format!("receipt {}", r.file_name()));
                return Err(e);
            }
        }

        // 6. Batch by batch: each host walks its steps (the core decides each next one);
        //    a soaking batch is watched; the core decides whether the next batch starts.
        let offset = self.resumed.as_ref().map_or(0, |r| r.offset);
        let total = offset + self.batches.len();
        let policy = rollout::Policy { max_failures: plan.max_failures, pause_after: plan.pause_after };
        let mut failed = self.resumed.as_ref().map_or(0, |r| r.failed_before);
        let mut ends: BTreeMap<String, HostEnd> = BTreeMap::new();
        let mut failure = None;
        let mut decision = rollout::AfterBatch::Next;
        let mut last = offset;
        for (i, batch) in self.batches.iter().enumerate() {
            let number = offset + i + 1;
            if d.interrupt.requested() {
                decision = rollout::AfterBatch::Stop;
                break;
            }
            last = number;
            self.note_progress(&outcomes, batch);
            d.sink.event(&format!(
                "batch {number} of {total}{}: {}",
                if number == 1 { " (canary)" } else { "" },
                batch.join(", ")
            ));
            let results = futures::future::join_all(batch.iter().map(|name| self.move_host(name))).await;
            for (name, end) in batch.iter().zip(results) {
                self.settle(name, &end, number, total, &existing, &mut outcomes, &mut failure).await;
                ends.insert(name.clone(), end);
            }
            self.note_progress(&outcomes, &[]);
            // The soak: a healthy batch keeps running under watch before the rollout goes on;
            // a host whose workload changes goes back like one that failed its health check.
            let soaks = plan.soak.filter(|s| number == 1 || s.every_batch);
            if let (Some(soak), false) = (soaks, d.interrupt.requested()) {
                let healthy: Vec<String> =
                    batch.iter().filter(|n| ends.get(*n) == Some(&HostEnd::Changed)).cloned().collect();
                for (name, why) in self.soak_batch(number, &healthy, soak).await {
                    let end = self.revert_host(&name, format!("soak failed: {why}")).await;
                    self.settle_revert(&name, &end, number, total, &mut outcomes, &mut failure).await;
                    ends.insert(name, end);
                }
            }
            self.note_progress(&outcomes, &[]);
            let batch_ends: Vec<HostEnd> = batch.iter().filter_map(|n| ends.get(n).cloned()).collect();
            decision = rollout::after_batch(policy, number, total, &batch_ends, failed, d.interrupt.requested());
            failed += batch_ends.iter().filter(|e| **e != HostEnd::Changed).count();
            if decision != rollout::AfterBatch::Next {
                break;
            }
        }
        let interrupted = d.interrupt.requested();
        let changing: Vec<Option<HostEnd>> = plan
            .hosts
            .iter()
            .filter(|h| h.action == Action::Change && moving.contains(&&h.host))
            .map(|h| ends.get(&h.host).cloned())
            .collect();
        let mut outcome = rollout::outcome(&changing, interrupted);
        if outcome == Outcome::Succeeded && self.resumed.as_ref().is_some_and(|r| r.failed_before > 0) {
            outcome = Outcome::Failed;
            failure.get_or_insert_with(|| "hosts failed before the pause (within the failure budget)".into());
        }
        let mut paused_after = None;
        match decision {
            rollout::AfterBatch::Halt => {
                let max = plan.max_failures.unwrap_or_default();
                let why = format!("halted: failure budget spent ({failed} host(s) failed; the budget is {max})");
                d.sink.event(&why);
                // Without the lease this run no longer owns the hosts: they stay as they are.
                if plan.on_budget_spent != Some(crate::manifest::OnBudgetSpent::Keep)
                    && d.interrupt.lease_lost().is_none()
                {
                    self.return_moved(&mut outcomes).await;
                }
                failure = Some(match failure {
                    Some(first) => format!("{why}; first: {first}"),
                    None => why,
                });
                outcome = Outcome::Halted;
            }
            rollout::AfterBatch::Pause if !interrupted => {
                paused_after = Some(last);
                outcome = Outcome::Paused;
                let which = if last == 1 { "the canary".to_owned() } else { format!("batch {last} of {total}") };
                let why = format!(
                    "paused after {which}: `agentctl resume PLAN.json` continues with batch {} of {total}; `agentctl rollback {} --env {} --apply` returns the hosts that moved",
                    last + 1,
                    plan.service,
                    plan.environment
                );
                d.sink.event(&why);
                failure = Some(why);
            }
            _ => {}
        }
        // Without its lease the run cannot vouch for the state: never "succeeded", even when
        // every host moved (their records may have been refused).
        if d.interrupt.lease_lost().is_some()
            && matches!(outcome, Outcome::Succeeded | Outcome::Paused | Outcome::Halted)
        {
            outcome = Outcome::Interrupted;
        }
        if outcome == Outcome::Interrupted {
            match d.interrupt.lease_lost() {
                Some(why) => {
                    failure = Some(format!("stopped: {why}; no further host step was started"));
                    d.sink.event(&format!("stopped: {why}; no further host step was started"));
                }
                None => {
                    failure.get_or_insert_with(|| "interrupted: no further host was started".into());
                    d.sink.event("interrupted: the hosts that were moving finished; no further host was started");
                }
            }
        }
        let hosts: Vec<HostOutcome> = outcomes.into_values().collect();
        let mut body = self.body(outcome.as_str(), failure.clone(), hosts.clone());
        body.rollout = self.rollout_record(Some(failed), paused_after);
        let r = self.final_receipt(body, receipts).await?;
        Ok(ApplyReport { plan_id: self.plan_id.clone(), outcome, hosts, receipt: r.file_name(), failure })
    }

    /// Records how host `name` ended in batch `number` of `total`: its outcome, and, when it
    /// moved, its deployment and history (under the lock's fence).
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        name: &str,
        end: &HostEnd,
        number: usize,
        total: usize,
        existing: &BTreeMap<String, DeploymentRecord>,
        outcomes: &mut BTreeMap<String, HostOutcome>,
        failure: &mut Option<String>,
    ) {
        let (d, plan) = (self.d, self.plan);
        let Some(o) = outcomes.get_mut(name) else { return };
        o.outcome = end.outcome().into();
        match end {
            HostEnd::Changed => {
                o.after = Some(plan.release.release_id.to_string());
                let mut r = self.deployment(name, existing.get(name));
                r.release_id = plan.release.release_id.to_string();
                r.digest = plan.release.facts.digest.clone();
                r.source_commit = plan.release.facts.source_commit.clone();
                r.content_hash = plan.release.content_hash.to_string();
                r.rollback_target = o.rollback_target.clone().or(r.rollback_target);
                r.plan_id = self.plan_id.to_string();
                r.updated_at = d.clock.now();
                let kind = if plan.kind == PlanKind::Promote { "promote" } else { "rollback" };
                let entry = self.history_entry(name, plan.release.release_id.as_str(), kind);
                match d.store.fenced(&self.fence(), &[Write::Deployment(&r), Write::History(&entry)]).await {
                    Ok(()) => d.sink.event(&format!("{name}: {} is live and healthy", plan.release.release_id)),
                    // Another control plane holds the lock now, or the store cannot be
                    // written: what this host runs is not recorded by us, and nothing
                    // more starts.
                    Err(e) => {
                        o.detail = Some(HostText::new(&format!("live, but not recorded: {e}")));
                        d.sink.event(&format!("{name}: live, but not recorded: {e}"));
                        d.interrupt.lose_lease(e.to_string());
                    }
                }
            }
            HostEnd::RolledBack { reason } => {
                // Back on its way back: the recorded release, or nothing.
                o.after = o.rollback_target.clone();
                o.detail = Some(HostText::new(reason));
                d.sink.event(&format!("{name}: FAILED: {reason}; rolled back"));
                failure.get_or_insert(format!("host `{name}` failed in batch {number} of {total}: {reason}"));
            }
            HostEnd::Failed { reason, back } => {
                o.after = None;
                o.detail = Some(HostText::new(&format!("{reason}; the way back failed too: {back}")));
                d.sink.event(&format!("{name}: FAILED: {reason}; could not be rolled back: {back}"));
                failure.get_or_insert(format!(
                    "host `{name}` failed in batch {number} of {total} and could not be rolled back: {reason}"
                ));
            }
        }
    }

    /// A history entry of this run for `host`.
    fn history_entry(&self, host: &str, release_id: &str, kind: &str) -> crate::records::HistoryEntry {
        crate::records::HistoryEntry {
            environment: self.plan.environment.clone(),
            service: self.plan.service.clone(),
            host: host.to_owned(),
            seq: 0,
            release_id: release_id.to_owned(),
            kind: kind.into(),
            plan_id: self.plan_id.to_string(),
            at: self.d.clock.now(),
        }
    }

    /// Keeps each host's outcome so far; the hosts of `moving` are marked as such.
    fn note_progress(&self, outcomes: &BTreeMap<String, HostOutcome>, moving: &[String]) {
        let mut now = outcomes.clone();
        for name in moving {
            if let Some(o) = now.get_mut(name) {
                o.outcome = "unknown".into();
                o.after = None;
                o.detail = Some(HostText::new(
                    "aborted while it moved: it runs its old or its new release (`agentctl status` shows which)",
                ));
            }
        }
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// A second interrupt dropped the run where it was: an `aborted` receipt with what is
    /// known of each host, written once within a bounded time.
    async fn aborted(&self, receipts: &Receipts<'_>) -> Result<ApplyReport, DeployError> {
        self.d.sink.event("aborted: the moving hosts' steps were dropped where they were");
        let hosts: Vec<HostOutcome> =
            self.progress.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let detail = "aborted by a second interrupt: hosts marked `unknown` were moving".to_owned();
        let body = self.body("aborted", Some(detail), hosts);
        match tokio::time::timeout(ABORT_WRITE_BUDGET, receipts.log.append(body, receipts.key, self.d.store)).await {
            Ok(Ok(r)) => Err(DeployError::Aborted { receipt: r.file_name() }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DeployError::Store(StoreError::Unanswered {
                what: "the aborted run's receipt",
                secs: ABORT_WRITE_BUDGET.as_secs_f64(),
            })),
        }
    }

    /// Appends the run's last receipt. Hosts may have moved, so a store that cannot be
    /// reached is tried again for a bounded time (about two minutes) before giving up.
    async fn final_receipt(
        &self,
        body: ReceiptBody,
        receipts: &Receipts<'_>,
    ) -> Result<crate::receipt::Receipt, DeployError> {
        let mut wait = Duration::from_millis(500);
        for attempt in 1.. {
            match receipts.log.append(body.clone(), receipts.key, self.d.store).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 8 => {
                    self.d
                        .sink
                        .event(&format!("cannot write the receipt ({e}); trying again in {}s", wait.as_secs_f32()));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    async fn stage_all(&self) -> Result<(), DeployError> {
        let plan = self.plan;
        let files = plan
            .decoded_files()
            .map_err(|reason| DeployError::Staging { host: "*".into(), reason: HostText::new(&reason) })?;
        let tar = crate::tarball::tar(&files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect::<Vec<_>>())?;
        // The hosts of this run's batches (a resumed run's are what the pause left).
        let moving: Vec<&String> = self.batches.iter().flatten().collect();
        let stage_all =
            plan.hosts.iter().filter(|h| h.action == Action::Change && moving.contains(&&h.host)).map(|h| {
                let tar = &tar;
                async move {
                    let result = match self.fleet.get(&h.host) {
                        Some(vm) => {
                            let (id, hash) = (plan.release.release_id.as_str(), plan.release.content_hash.as_str());
                            vm.stage(self.service, id, hash, tar).await
                        }
                        None => Err(HostText::new("the host is not connected")),
                    };
                    (h.host.clone(), result)
                }
            });
        for (name, result) in futures::future::join_all(stage_all).await {
            match result {
                Ok(()) => self.d.sink.event(&format!("staged `{}` on {name}", plan.release.release_id)),
                Err(reason) => return Err(DeployError::Staging { host: name, reason }),
            }
        }
        Ok(())
    }

    /// After a healthy check: the digest the host's runtime reports as running must be the
    /// release's (or, for an image index, its platform manifest's).
    async fn read_back(&self, vm: &dyn GoldenVm) -> Result<(), String> {
        let obs = vm.probe(self.service, &[]).await.map_err(|e| format!("cannot read back what runs: {e}"))?;
        let facts = &self.plan.release.facts;
        let running = obs.running.as_ref().map(|r| r.as_str().trim().to_owned()).unwrap_or_default();
        if running == facts.digest || Some(&running) == facts.platform_digest.as_ref() {
            return Ok(());
        }
        Err(format!(
            "the runtime reports `{}` running, not the release's `{}`",
            if running.is_empty() { "nothing" } else { &running },
            facts.running_digest()
        ))
    }

    /// Walks one host through its steps; the core's [`HostMove`] decides each next one.
    async fn move_host(&self, name: &str) -> HostEnd {
        let target = self.plan.hosts.iter().find(|h| h.host == name).and_then(|h| h.rollback_target.as_ref());
        let release = self.plan.release.release_id.as_str();
        let mut machine = match self.service.runtime {
            // Podman: the new container is healthy before `current` moves (docs/RUNTIME.md).
            crate::manifest::Runtime::Podman(_) => HostMove::start_first(release),
            crate::manifest::Runtime::Command(_) => HostMove::new(release, target.map(ReleaseId::as_str)),
        };
        let Some(vm) = self.fleet.get(name) else {
            return HostEnd::Failed { reason: "the host is not connected".into(), back: "not attempted".into() };
        };
        let health = Duration::from_secs(self.env.rollout.health_timeout_secs);
        let mut step = machine.first();
        loop {
            // Without a lease this run may no longer own the hosts: no step forward starts
            // (the way back still runs, so a host that was moving returns).
            let lost = if step.is_forward() { self.d.interrupt.lease_lost() } else { None };
            let mut result = match lost {
                Some(why) => Err(format!("not started: {why}")),
                None => vm.step(self.service, &step, health, self.plan_id.as_str()).await.map_err(|t| t.to_string()),
            };
            // The egress proof is part of the health gate: a host whose workload reaches what
            // it must not (or not what it must) fails like an unhealthy one.
            if let (Ok(()), true, Some(checks)) = (&result, step.is_health(), &self.egress_checks) {
                let proof = crate::egress_proof::prove_host(vm, self.service, checks).await;
                if !proof.held() {
                    result = Err(format!("egress proof failed: {}", proof.failures().join("; ")));
                }
            }
            // What was started must be what runs: the runtime's own report is read back
            // (the Podman runtime reads its container's image in the health check itself).
            if let (Ok(()), true, crate::manifest::Runtime::Command(_)) =
                (&result, step.is_health(), &self.service.runtime)
            {
                if let Err(why) = self.read_back(vm).await {
                    result = Err(why);
                }
            }
            if let Err(e) = &result {
                if !step.is_forward() {
                    self.d.sink.event(&format!("{name}: the way back failed: {e}"));
                }
            }
            match machine.after(&step, result) {
                Next::Run(s) => step = s,
                Next::Done(end) => return end,
            }
        }
    }
}

mod canary;
pub use canary::{last_rollout, LastRollout};
#[cfg(test)]
mod tests;
