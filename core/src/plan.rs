//! Plans: a pure function of (desired release, recorded state, observed live state).
//! A plan lists per host what changes, the rollback target (what is live now), the
//! batches and the verification evidence. Its id is the hash of its canonical form, so a
//! saved plan is applied exactly or refused.

use crate::canonical;
use crate::ids::{ContentHash, PlanId, ReleaseId};
use crate::manifest::{Environment, OnBudgetSpent, Service, Soak};
use crate::observe::{Current, Fingerprint, Observation};
use crate::release::{ReleaseContent, ReleaseFacts};
use crate::untrusted::HostText;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 2: ids are validated types; the release is `repository` + `digest` (was `image`).
pub const PLAN_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    Promote,
    Rollback,
}

/// The release a plan moves hosts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRelease {
    pub release_id: ReleaseId,
    pub content_hash: ContentHash,
    #[serde(flatten)]
    pub facts: ReleaseFacts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Stage, swap, activate, health-check.
    Change,
    /// Already live and intact: nothing to do.
    None,
}

/// One host in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub before: Option<ReleaseId>,
    pub after: ReleaseId,
    pub action: Action,
    /// What the control plane recorded as this host's release (its history's top). When it
    /// differs from `before`, the live release is unrecorded (an apply killed mid-host, a
    /// hand edit) and is never a way back.
    pub recorded: Option<ReleaseId>,
    /// Where this host goes back to if it fails: its recorded release, never an unrecorded one.
    pub rollback_target: Option<ReleaseId>,
    /// What the host reported when the plan was made.
    pub observed: Fingerprint,
}

/// A plan, complete enough to be applied later exactly as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub version: u32,
    pub kind: PlanKind,
    /// When the plan was made (RFC 3339, UTC): every plan is unique, and a saved plan expires.
    pub created_at: String,
    /// Who made it (the operator), for separation of duties.
    pub author: String,
    pub environment: String,
    pub service: String,
    pub release: PlannedRelease,
    /// Rendered files (base64), empty for a rollback to a release already on the hosts.
    pub files: BTreeMap<String, String>,
    pub hosts: Vec<HostPlan>,
    /// Host names per batch; the first batch is the canary.
    pub batches: Vec<Vec<String>>,
    pub approvals_required: u32,
    pub health_timeout_secs: u64,
    /// A promotion's soak (`[rollout] soak_secs`): how long the canary (or every batch)
    /// is watched once healthy. Absent: none (and the plan's id is as before soaks existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
    /// A promotion's failure budget: how many hosts may fail (each rolled back) before the
    /// rollout halts. Absent: the first failing batch stops the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<usize>,
    /// With a failure budget: what happens to the hosts that moved once it is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_budget_spent: Option<OnBudgetSpent>,
    /// The apply stops after this batch (1: the canary), until `agentctl resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("host `{host}` cannot be planned: {reason}")]
    HostUnfit { host: String, reason: String },
    #[error("the way back is broken on host `{host}`: {reason}")]
    RollbackTargetBroken { host: String, reason: String },
    #[error("the release cannot be planned: {0}")]
    Invalid(String),
    #[error(
        "the live release of {} {} no record here: a failed rollout would leave {} with no release",
        if hosts.len() == 1 { "host" } else { "hosts" },
        hosts.iter().map(|(h, r)| format!("`{h}` (`{r}`)")).collect::<Vec<_>>().join(", ") + if hosts.len() == 1 { " has" } else { " have" },
        if hosts.len() == 1 { "it" } else { "them" }
    )]
    Unadopted { service: String, environment: String, hosts: Vec<(String, String)> },
}

/// What a plan is computed from.
#[derive(Debug)]
pub struct PlanInput<'a> {
    pub kind: PlanKind,
    pub environment: &'a Environment,
    pub service: &'a Service,
    pub release: PlannedRelease,
    /// The rendered release (for a promotion); `None` for a rollback.
    pub content: Option<&'a ReleaseContent>,
    /// Per host of the environment, in order.
    pub observed: &'a [(String, Observation)],
    /// Recorded content identities of releases, by release id.
    pub known_hashes: &'a BTreeMap<String, String>,
    /// The release recorded for each host (its history's top). A host is left alone only
    /// when what is live is also what was recorded, and it goes back only to what was
    /// recorded — never to an unrecorded live release. The probe must have hashed it.
    pub recorded: &'a BTreeMap<String, String>,
    /// When the plan is made (or, re-deriving a saved plan, when that one was made).
    pub created_at: DateTime<Utc>,
    /// Who makes it (or made the saved plan).
    pub author: &'a str,
}

/// Computes the plan.
pub fn build(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let mut hosts = Vec::new();
    let mut unadopted = Vec::new();
    for (name, obs) in input.observed {
        let unfit = |reason: String| PlanError::HostUnfit { host: name.clone(), reason };
        let before = match &obs.current {
            Current::Outside(t) => {
                return Err(unfit(format!(
                    "`current` points outside the releases directory, at `{t}`; repair the host first"
                )))
            }
            Current::Missing => None,
            Current::Release(id) => Some(id.clone()),
        };
        let recorded = input.recorded.get(name).and_then(|r| ReleaseId::new(r).ok());
        let in_place = before.as_ref() == Some(&input.release.release_id)
            && recorded.as_ref() == Some(&input.release.release_id)
            && obs.content_hash.as_ref() == Some(&input.release.content_hash)
            && runs(obs.running.as_ref(), &input.release.release_id, &input.release.facts);
        let broken = |reason: String| PlanError::RollbackTargetBroken { host: name.clone(), reason };
        if !in_place {
            // The way back is the recorded release, and it must be intact on the host.
            if let Some(target) = &recorded {
                let want = input.known_hashes.get(target.as_str());
                match obs.target_hashes.get(target) {
                    None => return Err(broken(format!("the recorded release `{target}` is no longer on the host"))),
                    Some(h) if want.is_some_and(|w| w != h.as_str()) => {
                        return Err(broken(format!(
                        "the recorded release `{target}` was changed on the host (content identity {h} instead of {})",
                        want.map(String::as_str).unwrap_or_default()
                    )))
                    }
                    Some(_) => {}
                }
            }
        }
        if input.kind == PlanKind::Rollback && !in_place {
            let id = &input.release.release_id;
            match obs.target_hashes.get(id) {
                None => return Err(broken(format!("release `{id}` is no longer on the host"))),
                Some(h) if *h != input.release.content_hash => {
                    return Err(broken(format!(
                        "release `{id}` on the host has content identity {h}, not the recorded {}",
                        input.release.content_hash
                    )))
                }
                Some(_) => {}
            }
        }
        // A live release with no record at all: its host has no way back but "none".
        if let (Some(live), None, false) = (&before, &recorded, in_place) {
            unadopted.push((name.clone(), live.to_string()));
        }
        hosts.push(HostPlan {
            host: name.clone(),
            rollback_target: recorded.clone(),
            recorded,
            before,
            after: input.release.release_id.clone(),
            action: if in_place { Action::None } else { Action::Change },
            observed: obs.fingerprint(),
        });
    }
    if !unadopted.is_empty() {
        return Err(PlanError::Unadopted {
            service: input.service.name.to_string(),
            environment: input.environment.name.to_string(),
            hosts: unadopted,
        });
    }
    let changing: Vec<String> = hosts.iter().filter(|h| h.action == Action::Change).map(|h| h.host.clone()).collect();
    let per = input.environment.rollout.batch.per_batch(input.environment.hosts.len());
    let batches: Vec<Vec<String>> = changing.chunks(per).map(<[String]>::to_vec).collect();
    // The canary's proof applies to promotions; a rollback is the way back and runs at once.
    let rollout = &input.environment.rollout;
    let promote = input.kind == PlanKind::Promote;
    let max_failures = rollout.max_failures.filter(|_| promote).map(|b| b.budget(input.environment.hosts.len()));
    let files =
        input.content.map(|c| c.files.iter().map(|(p, b)| (p.clone(), B64.encode(b))).collect()).unwrap_or_default();
    Ok(Plan {
        version: PLAN_VERSION,
        kind: input.kind,
        // Milliseconds: two plans for the same change made within one second (a rehearsal's
        // first and last promotion) are two plans, each applied once.
        created_at: input.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        author: input.author.to_owned(),
        environment: input.environment.name.to_string(),
        service: input.service.name.to_string(),
        release: input.release.clone(),
        files,
        hosts,
        approvals_required: input.environment.approvals,
        health_timeout_secs: input.environment.rollout.health_timeout_secs,
        soak: rollout.soak.filter(|_| promote),
        max_failures,
        on_budget_spent: max_failures.map(|_| rollout.on_budget_spent),
        pause_after: rollout.pause_after.filter(|n| promote && *n < batches.len()),
        batches,
    })
}

impl Plan {
    /// `sha256:` of the canonical JSON form.
    pub fn id(&self) -> PlanId {
        let bytes = canonical::to_canonical(self).unwrap_or_default();
        PlanId::new(&crate::receipt::hash(&bytes)).unwrap_or_else(|_| unreachable!("a sha256 is a plan id"))
    }

    pub fn is_noop(&self) -> bool {
        self.batches.is_empty()
    }

    /// The rendered files, decoded.
    pub fn decoded_files(&self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        self.files
            .iter()
            .map(|(p, b)| {
                B64.decode(b).map(|v| (p.clone(), v)).map_err(|_| format!("file `{p}` in the plan is not base64"))
            })
            .collect()
    }
}

/// A saved plan as written: the plan and the id it had when shown. It is input, never
/// authority: `apply` re-derives the plan from the manifests, the store and the hosts
/// and applies only that, after [`compare`] found the file to say the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    pub plan_id: PlanId,
    pub plan: Plan,
}

/// One thing that moved on a host since the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub host: String,
    pub field: &'static str,
    pub planned: String,
    pub now: String,
}

/// Why a plan may not be applied any more, by age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Expiry {
    #[error("plan was made at {created}, {age_secs} s ago; plans expire after {max_secs} s")]
    Expired { created: String, age_secs: i64, max_secs: u64 },
    #[error("plan claims to be made at {0}, which is in the future or not a time")]
    BadTime(String),
}

/// Checks a plan's age at `now` against `max_secs`.
pub fn check_age(plan: &Plan, now: DateTime<Utc>, max_secs: u64) -> Result<(), Expiry> {
    let created = DateTime::parse_from_rfc3339(&plan.created_at)
        .map_err(|_| Expiry::BadTime(crate::untrusted::HostText::new(&plan.created_at).to_string()))?;
    let age = now.signed_duration_since(created).num_seconds();
    // A minute of clock skew between the machines that plan and apply is tolerated.
    if age < -60 {
        return Err(Expiry::BadTime(plan.created_at.clone()));
    }
    if age > i64::try_from(max_secs).unwrap_or(i64::MAX) {
        return Err(Expiry::Expired { created: plan.created_at.clone(), age_secs: age, max_secs });
    }
    Ok(())
}

/// A policy or content field of a saved plan that differs from what is derived now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    pub field: String,
    /// The value in the plan file.
    pub file: String,
    /// The value the manifests, the store and the release give now.
    pub derived: String,
}

/// Why a saved plan cannot be applied as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Hosts moved since the plan was made.
    Stale(Vec<Moved>),
    /// The file says something the manifests do not (edited, forged, or the manifests
    /// changed since): each field with both values.
    Tampered(Vec<FieldDiff>),
}

/// Compares a plan file with the plan derived now for the same request. Hosts that
/// moved make it stale; any other difference is tampering. Never panics, whatever the
/// file holds.
pub fn compare(file: &Plan, derived: &Plan) -> Result<(), Mismatch> {
    let now: Vec<(String, &Fingerprint)> = derived.hosts.iter().map(|h| (h.host.clone(), &h.observed)).collect();
    let moved = staleness(file, &now);
    if !moved.is_empty() {
        return Err(Mismatch::Stale(moved));
    }
    let mut diffs = Vec::new();
    let mut cmp = |field: &str, a: serde_json::Value, b: serde_json::Value| {
        if a != b {
            // The file is untrusted input: its values are sanitized like a host's.
            diffs.push(FieldDiff {
                field: HostText::new(field).to_string(),
                file: HostText::new(&show(&a)).to_string(),
                derived: show(&b),
            });
        }
    };
    cmp("version", v(&file.version), v(&derived.version));
    cmp("kind", v(&file.kind), v(&derived.kind));
    cmp("environment", v(&file.environment), v(&derived.environment));
    cmp("service", v(&file.service), v(&derived.service));
    let (fr, dr) = (v(&file.release), v(&derived.release));
    if let (serde_json::Value::Object(fr), serde_json::Value::Object(dr)) = (&fr, &dr) {
        for (k, dv) in dr {
            cmp(&format!("release.{k}"), fr.get(k).cloned().unwrap_or_default(), dv.clone());
        }
    }
    cmp("files", v(&file.files), v(&derived.files));
    for (i, (f, d)) in file.hosts.iter().zip(&derived.hosts).enumerate() {
        cmp(&format!("hosts[{i}] ({})", d.host), v(f), v(d));
    }
    cmp("batches", v(&file.batches), v(&derived.batches));
    cmp("approvals_required", v(&file.approvals_required), v(&derived.approvals_required));
    cmp("health_timeout_secs", v(&file.health_timeout_secs), v(&derived.health_timeout_secs));
    cmp("soak", v(&file.soak), v(&derived.soak));
    cmp("max_failures", v(&file.max_failures), v(&derived.max_failures));
    cmp("on_budget_spent", v(&file.on_budget_spent), v(&derived.on_budget_spent));
    cmp("pause_after", v(&file.pause_after), v(&derived.pause_after));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Mismatch::Tampered(diffs))
    }
}

/// Compares a paused plan's file with the plan derived now, to resume it from batch
/// `next` (0-based): the hosts of `moved` must still run the plan's release in place (they
/// moved before the pause: else stale), the hosts of the batches from `next` on must be
/// exactly those that still change, but for `failed` (they failed before the pause and
/// stay back: else tampered), and everything else must be as [`compare`] wants it.
pub fn compare_resumed(
    file: &Plan,
    derived: &Plan,
    moved: &[String],
    failed: &[String],
    next: usize,
) -> Result<(), Mismatch> {
    let mut expected = file.clone();
    let mut left = Vec::new();
    for h in &mut expected.hosts {
        if !moved.contains(&h.host) {
            continue;
        }
        match derived.hosts.iter().find(|d| d.host == h.host) {
            Some(d) if d.action == Action::None => *h = d.clone(),
            Some(d) => left.push(Moved {
                host: h.host.clone(),
                field: "current",
                planned: format!("releases/{} (moved before the pause)", file.release.release_id),
                now: d.observed.current.clone().unwrap_or_else(|| "none".into()),
            }),
            None => {}
        }
    }
    if !left.is_empty() {
        return Err(Mismatch::Stale(left));
    }
    // What is left to move: the hosts of the batches after the pause, which must be the
    // hosts that still change now, but for those that failed before it (they stay back).
    let left = file.batches.get(next..).unwrap_or_default();
    let mut want: Vec<&String> = left.iter().flatten().collect();
    let mut changing: Vec<&String> = derived
        .hosts
        .iter()
        .filter(|h| h.action == Action::Change && !failed.contains(&h.host))
        .map(|h| &h.host)
        .collect();
    want.sort();
    changing.sort();
    if want != changing {
        let join = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        return Err(Mismatch::Tampered(vec![FieldDiff {
            field: "batches".into(),
            file: HostText::new(&join(&want)).to_string(),
            derived: join(&changing),
        }]));
    }
    // The rest as `compare` wants it; the batches are the file's (checked above) and the
    // pause point is the file's.
    expected.batches = derived.batches.clone();
    expected.pause_after = derived.pause_after;
    compare(&expected, derived)
}

/// A short rendering of a JSON value for messages.
fn show(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// A value as JSON, for field-by-field comparison (plan types always serialize).
fn v<T: Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap_or_default()
}

/// What changed between the plan's observations and `now` (per host, in order).
fn staleness(plan: &Plan, now: &[(String, &Fingerprint)]) -> Vec<Moved> {
    let mut moved = Vec::new();
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    let planned: Vec<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
    let current: Vec<&str> = now.iter().map(|(h, _)| h.as_str()).collect();
    if planned != current {
        moved.push(Moved { host: "*".into(), field: "hosts", planned: planned.join(","), now: current.join(",") });
        return moved;
    }
    for (h, (_, f)) in plan.hosts.iter().zip(now) {
        let mut cmp = |field: &'static str, a: &Option<String>, b: &Option<String>| {
            if a != b {
                moved.push(Moved { host: h.host.clone(), field, planned: show(a), now: show(b) });
            }
        };
        cmp("current", &h.observed.current, &f.current);
        cmp("release.json", &h.observed.release_json_sha256, &f.release_json_sha256);
        let text = |t: &Option<HostText>| t.as_ref().map(ToString::to_string);
        cmp("running digest", &text(&h.observed.running), &text(&f.running));
    }
    moved
}

/// Whether what the runtime reports as running is release `id` with image `digest`: the
/// digest itself (the command runtime), or the Podman runtime's report of a running,
/// agentctl-made container of that release on that image.
/// Whether the runtime's report says release `id` runs as released: Podman reports the
/// digest it pulled (an image index's platform manifest); a runtime of the host's own may
/// report the index's digest or the platform's.
fn runs(running: Option<&HostText>, id: &ReleaseId, facts: &ReleaseFacts) -> bool {
    match running.map(HostText::as_str) {
        Some(r) if r.starts_with("podman=") => crate::podman::Report::parse(r)
            .is_ok_and(|rep| rep.findings(id.as_str(), facts.running_digest()).is_empty()),
        Some(r) => r == facts.digest || r == facts.running_digest(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::BatchSize;
    use crate::release::tests_support::example;

    const NEW: &str = "r-1111111111111111";
    const OLD: &str = "r-0000000000000000";

    fn release() -> PlannedRelease {
        PlannedRelease {
            release_id: crate::ids::test_id(NEW),
            content_hash: crate::ids::test_hash("sha256:newhash"),
            facts: ReleaseFacts {
                repository: "r/x".into(),
                digest: "sha256:new".into(),
                source_commit: "c".into(),
                signer_key_id: "k".into(),
                provenance: None,
                sbom: None,
                signature: None,
                contents: None,
                platform_digest: None,
            },
        }
    }

    /// What a host reports; the probe hashed the live release as the way back too (the
    /// tests record what is live).
    fn obs(current: Current, hash: Option<&str>, running: Option<&str>) -> Observation {
        let target_hashes = match (&current, hash) {
            (Current::Release(id), Some(h)) => BTreeMap::from([(id.clone(), crate::ids::test_hash(h))]),
            _ => BTreeMap::new(),
        };
        Observation {
            current,
            release_json: None,
            release_json_sha256: None,
            content_hash: hash.map(crate::ids::test_hash),
            odd_entries: vec![],
            target_hashes,
            running: running.map(HostText::new),
        }
    }

    fn plan_for(observed: Vec<(String, Observation)>, batch: BatchSize) -> Result<Plan, PlanError> {
        let (set, _) = example();
        let mut env = set.environments[1].clone();
        env.rollout.batch = batch;
        let hosts: Vec<_> = (0..observed.len())
            .map(|i| {
                let mut h = env.hosts[0].clone();
                h.name = crate::names::HostName::new(&format!("vm-{i}")).unwrap();
                h
            })
            .collect();
        env.hosts = hosts;
        let svc = set.services.values().next().unwrap();
        let known = BTreeMap::from([(OLD.to_owned(), crate::ids::test_hash("sha256:oldhash").to_string())]);
        // Everything live is recorded, except where a test says otherwise.
        let recorded: BTreeMap<String, String> =
            observed.iter().filter_map(|(h, o)| o.release_id().map(|id| (h.clone(), id.to_string()))).collect();
        build(&PlanInput {
            kind: PlanKind::Promote,
            environment: &env,
            service: svc,
            release: release(),
            content: None,
            observed: &observed,
            known_hashes: &known,
            recorded: &recorded,
            created_at: DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
            author: "alice",
        })
    }

    #[test]
    fn plans_changes_rollback_targets_and_batches() {
        let observed = vec![
            (
                "vm-0".to_owned(),
                obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
            ),
            ("vm-1".to_owned(), obs(Current::Missing, None, None)),
            (
                "vm-2".to_owned(),
                obs(Current::Release(crate::ids::test_id(NEW)), Some("sha256:newhash"), Some("sha256:new")),
            ),
            (
                "vm-3".to_owned(),
                obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
            ),
        ];
        let p = plan_for(observed, BatchSize::Count(2)).unwrap();
        assert_eq!(p.hosts[0].rollback_target.as_ref().map(ReleaseId::as_str), Some(OLD));
        assert_eq!(p.hosts[1].rollback_target, None);
        assert_eq!(p.hosts[2].action, Action::None, "already live: idempotent");
        assert_eq!(p.batches, vec![vec!["vm-0".to_owned(), "vm-1".to_owned()], vec!["vm-3".to_owned()]]);
        assert_eq!((p.hosts[0].before.as_ref().map(ReleaseId::as_str), p.hosts[0].after.as_str()), (Some(OLD), NEW));
        assert_eq!(p.id(), p.clone().id(), "the id is a function of the content");
    }

    #[test]
    fn refuses_tampered_hosts_and_broken_ways_back() {
        let e = plan_for(
            vec![("vm-0".into(), obs(Current::Outside(HostText::new("../../etc")), None, None))],
            BatchSize::Count(1),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::HostUnfit { .. }), "{e}");
        let e = plan_for(
            vec![("vm-0".into(), obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:edited"), None))],
            BatchSize::Count(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("was changed on the host"), "{e}");
        let e = plan_for(
            vec![("vm-0".into(), obs(Current::Release(crate::ids::test_id(OLD)), None, None))],
            BatchSize::Count(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no longer on the host"), "{e}");
    }

    #[test]
    fn a_plan_goes_stale_when_a_host_moves() {
        let observed = vec![(
            "vm-0".to_owned(),
            obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
        )];
        let p = plan_for(observed.clone(), BatchSize::Count(1)).unwrap();
        assert_eq!(compare(&p, &plan_for(observed, BatchSize::Count(1)).unwrap()), Ok(()));
        let moved = vec![(
            "vm-0".to_owned(),
            obs(Current::Release(crate::ids::test_id(NEW)), Some("sha256:x"), Some("sha256:old")),
        )];
        let now = plan_for(moved, BatchSize::Count(1)).unwrap();
        let Err(Mismatch::Stale(s)) = compare(&p, &now) else { panic!("stale expected") };
        assert_eq!(
            s,
            vec![Moved {
                host: "vm-0".into(),
                field: "current",
                planned: format!("releases/{OLD}"),
                now: format!("releases/{NEW}")
            }]
        );
    }

    #[test]
    fn a_plan_file_that_says_what_is_derived_now_compares_equal() {
        let observed = vec![(
            "vm-0".to_owned(),
            obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
        )];
        let p = plan_for(observed, BatchSize::Count(1)).unwrap();
        assert_eq!(compare(&p, &p.clone()), Ok(()));
    }

    #[test]
    fn every_edited_policy_field_is_named_with_both_values() {
        let observed = vec![
            (
                "vm-0".to_owned(),
                obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
            ),
            (
                "vm-1".to_owned(),
                obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
            ),
        ];
        let derived = plan_for(observed, BatchSize::Count(1)).unwrap();
        type Edit = Box<dyn Fn(&mut Plan)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("approvals_required", Box::new(|p| p.approvals_required = 0)),
            ("health_timeout_secs", Box::new(|p| p.health_timeout_secs = 99_999)),
            ("batches", Box::new(|p| p.batches = vec![vec!["vm-0".into(), "vm-1".into()]])),
            ("batches", Box::new(|p| p.batches.push(vec!["vm-9".into()]))),
            ("batches", Box::new(|p| p.batches[0][0] = "renamed".into())),
            ("batches", Box::new(|p| p.batches.clear())),
            ("release.digest", Box::new(|p| p.release.facts.digest = "sha256:other".into())),
            ("environment", Box::new(|p| p.environment = "staging".into())),
            ("files", Box::new(|p| drop(p.files.insert("evil".into(), "eA==".into())))),
            ("version", Box::new(|p| p.version = 7)),
        ];
        for (field, edit) in edits {
            let mut file = derived.clone();
            edit(&mut file);
            match compare(&file, &derived) {
                Err(Mismatch::Tampered(diffs)) => {
                    assert!(diffs.iter().any(|d| d.field == field), "{field}: {diffs:?}");
                    let d = diffs.iter().find(|d| d.field == field).unwrap();
                    assert_ne!(d.file, d.derived, "{field}");
                }
                other => panic!("{field}: expected tampered, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_host_that_moved_makes_the_file_stale_not_tampered() {
        let before = vec![(
            "vm-0".to_owned(),
            obs(Current::Release(crate::ids::test_id(OLD)), Some("sha256:oldhash"), Some("sha256:old")),
        )];
        let after = vec![("vm-0".to_owned(), obs(Current::Missing, None, None))];
        let file = plan_for(before, BatchSize::Count(1)).unwrap();
        let derived = plan_for(after, BatchSize::Count(1)).unwrap();
        assert!(matches!(compare(&file, &derived), Err(Mismatch::Stale(m)) if m[0].field == "current"));
        let mut fewer = file.clone();
        fewer.hosts.clear();
        assert!(matches!(compare(&fewer, &derived), Err(Mismatch::Stale(m)) if m[0].field == "hosts"));
    }

    /// Regression: a host whose live release was not recorded (an apply killed after the
    /// swap, a hand edit) offered that release as its way back, so a failed health check
    /// "rolled back" onto the bad release.
    #[test]
    fn an_unrecorded_live_release_is_never_the_way_back() {
        let observed = vec![(
            "vm-0".to_owned(),
            obs(Current::Release(crate::ids::test_id(NEW)), Some("sha256:newhash"), Some("sha256:new")),
        )];
        let (set, _) = example();
        let mut env = set.environments[1].clone();
        env.hosts.truncate(1);
        env.hosts[0].name = crate::names::HostName::new("vm-0").unwrap();
        let mut observed = observed;
        // The probe hashed the recorded release too: it is intact.
        observed[0].1.target_hashes.insert(crate::ids::test_id(OLD), crate::ids::test_hash("sha256:oldhash"));
        let known = BTreeMap::from([(OLD.to_owned(), crate::ids::test_hash("sha256:oldhash").to_string())]);
        let recorded = BTreeMap::from([("vm-0".to_owned(), OLD.to_owned())]);
        let input = |recorded| PlanInput {
            kind: PlanKind::Promote,
            environment: &env,
            service: set.services.values().next().unwrap(),
            release: release(),
            content: None,
            observed: &observed,
            known_hashes: &known,
            recorded,
            created_at: DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
            author: "alice",
        };
        let p = build(&input(&recorded)).unwrap();
        let h = &p.hosts[0];
        assert_eq!(h.action, Action::Change, "live but unrecorded: checked again");
        assert_eq!(h.before.as_ref().map(ReleaseId::as_str), Some(NEW));
        assert_eq!(h.rollback_target.as_ref().map(ReleaseId::as_str), Some(OLD), "the recorded release");
        // Nothing recorded at all (a hand-made release, a fleet deployed before): a failure
        // would leave the host with nothing, so the rollout is refused until it is adopted.
        let err = build(&input(&BTreeMap::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the live release of host `vm-0` (`{NEW}`) has no record here: a failed rollout would leave it with no release")
        );
    }

    #[test]
    fn a_saved_plan_expires() {
        let observed = vec![("vm-0".to_owned(), obs(Current::Missing, None, None))];
        let p = plan_for(observed, BatchSize::Count(1)).unwrap();
        let made = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        assert_eq!(check_age(&p, made + chrono::Duration::seconds(3600), 3600), Ok(()));
        assert!(matches!(check_age(&p, made + chrono::Duration::seconds(3601), 3600), Err(Expiry::Expired { .. })));
        assert!(matches!(check_age(&p, made - chrono::Duration::seconds(120), 3600), Err(Expiry::BadTime(_))));
        let mut forged = p.clone();
        forged.created_at = "yesterday".into();
        assert!(matches!(check_age(&forged, made, 3600), Err(Expiry::BadTime(_))));
    }
}
