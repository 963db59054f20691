//! The apply job against fake golden VMs (an in-memory release tree per host), a real
//! in-memory SQLite store and a real receipt log: every failure path in milliseconds.
//! The lab tests in `tests/promotion.rs` run the same job over SSH end to end.

use super::*;
use crate::keys::SigningKey;
use crate::observe::Current;
use crate::rollout::Step;
use crate::store::{LockOutcome, SqlStore};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const DIGEST_1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST_2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const DIGEST_3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const DIGEST_4: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const REPO: &str = "127.0.0.1:5000/demo/api";

/// The example manifests with `prod` made of four hosts in batches of two (the command
/// runtime).
fn manifests(prod_extra: &str) -> ManifestSet {
    manifests_with(prod_extra, false)
}

/// The same, on the Podman runtime (start-first moves) when `podman`.
fn manifests_with(prod_extra: &str, podman: bool) -> ManifestSet {
    rollout_manifests(prod_extra, "batch = 2", podman)
}

/// The same with `rollout` as prod's `[rollout]` table (besides its health timeout).
fn rollout_manifests(prod_extra: &str, rollout: &str, podman: bool) -> ManifestSet {
    let mut files: BTreeMap<PathBuf, String> =
        crate::manifest::example::FILES.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect();
    if !podman {
        let api = files[Path::new("services/api.toml")].clone();
        files.insert(PathBuf::from("services/api.toml"), crate::manifest::example::with_command_runtime(&api));
    }
    let staging = files[Path::new("environments/staging.toml")].clone();
    let host = |n: usize| {
        staging
            .split("[[host]]")
            .nth(1)
            .unwrap()
            .replace("stage-1", &format!("prod-{n}"))
            .replace("2201", &format!("23{n:02}"))
    };
    let prod = format!(
        "after = \"staging\"\napprovals = 0\n{prod_extra}\n[rollout]\n{rollout}\nhealth_timeout_secs = 30\n{}",
        (1..=4).map(|n| format!("[[host]]{}", host(n))).collect::<String>()
    );
    files.insert(PathBuf::from("environments/prod.toml"), prod);
    crate::manifest::validate(Path::new("m"), &files).unwrap_or_else(|d| panic!("{d:#?}"))
}

/// One host's tree: releases by id (files), `current`, and what the runtime runs.
#[derive(Debug, Default, Clone)]
struct Tree {
    releases: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    current: Option<String>,
    running: Option<String>,
    /// Probes since the workload last started.
    looks: u32,
}

/// What the fakes should do: fail a step on a host, or deliver an interrupt while a
/// host runs a step (as SIGINT would arrive mid-step).
#[derive(Default)]
struct Script {
    fail: Vec<(String, &'static str)>,
    fail_stage: Vec<String>,
    interrupt_at: Option<(String, &'static str)>,
    /// Another control plane takes the lock over while a host runs a step (this one
    /// stalled past its lease).
    take_over_at: Option<(String, &'static str)>,
    /// Health output, as an untrusted workload might print it.
    health_stderr: String,
    /// A step that takes this long on a host (a slow activation).
    stall: Option<(String, &'static str, Duration)>,
    /// A host whose runtime runs this digest once activated, whatever the release says.
    report: Option<(String, String)>,
    /// (host, digest): once the host runs the digest, its workload stops after the first
    /// look (a crash after its health check passed).
    crashes: Vec<(String, String)>,
}

struct FakeVm {
    name: String,
    tree: Arc<Mutex<Tree>>,
    script: Arc<Mutex<Script>>,
    interrupt: &'static Interrupt,
    log: Arc<Mutex<Vec<String>>>,
    store: SqlStore,
}

#[async_trait::async_trait]
impl GoldenVm for FakeVm {
    fn name(&self) -> &str {
        &self.name
    }

    async fn probe(&self, service: &Service, targets: &[&ReleaseId]) -> Result<Observation, VmError> {
        let mut t = self.tree.lock().unwrap().clone();
        let crashes = self.script.lock().unwrap().crashes.clone();
        if crashes.iter().any(|(h, d)| *h == self.name && t.running.as_ref() == Some(d)) {
            self.tree.lock().unwrap().looks += 1;
            if t.looks >= 1 {
                t.running = None;
            }
        }
        let live = t.current.as_ref().and_then(|id| t.releases.get(id));
        let json = live.and_then(|f| f.get("release.json").cloned());
        Ok(Observation {
            current: t
                .current
                .as_deref()
                .and_then(|id| ReleaseId::new(id).ok())
                .map_or(Current::Missing, Current::Release),
            release_json_sha256: json.as_ref().map(|b| crate::image::Digest::of(b).to_string()),
            release_json: json,
            content_hash: live.and_then(|f| ContentHash::new(&release::content_hash(f)).ok()),
            odd_entries: Vec::new(),
            target_hashes: targets
                .iter()
                .filter_map(|id| {
                    let files = t.releases.get(id.as_str())?;
                    Some(((*id).clone(), ContentHash::new(&release::content_hash(files)).ok()?))
                })
                .collect(),
            running: match (service.podman(), &t.current, &t.running) {
                (Some(_), Some(id), Some(d)) => {
                    Some(HostText::new(&format!("podman=1 container=running digest={d} restarts=0 release={id}")))
                }
                (Some(_), Some(id), None) => {
                    Some(HostText::new(&format!("podman=1 container=exited digest= restarts=0 release={id}")))
                }
                (Some(_), _, _) => Some(HostText::new("podman=1")),
                (None, _, r) => r.as_deref().map(HostText::new),
            },
        })
    }

    async fn stage(&self, _service: &Service, id: &str, content_hash: &str, tar: &[u8]) -> Result<(), HostText> {
        self.log.lock().unwrap().push(format!("{}: stage {id}", self.name));
        if self.script.lock().unwrap().fail_stage.contains(&self.name) {
            return Err(HostText::new("staging exited with status 1: disk full"));
        }
        let mut files = BTreeMap::new();
        for entry in tar::Archive::new(tar).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(path, bytes);
        }
        if release::content_hash(&files) != content_hash {
            return Err(HostText::new("staged content does not hash as planned"));
        }
        self.tree.lock().unwrap().releases.insert(id.to_owned(), files);
        Ok(())
    }

    async fn step(&self, _service: &Service, step: &Step, _health: Duration, _plan: &str) -> Result<(), HostText> {
        let what = step.describe();
        self.log.lock().unwrap().push(format!("{}: {what}", self.name));
        let stall = {
            let script = self.script.lock().unwrap();
            if script.interrupt_at.as_ref().is_some_and(|(h, s)| *h == self.name && *s == what) {
                self.interrupt.request();
            }
            if script.fail.iter().any(|(h, s)| *h == self.name && *s == what) {
                return Err(HostText::new(&format!("exited with status 1: {}", script.health_stderr)));
            }
            script.stall.clone().filter(|(h, s, _)| *h == self.name && *s == what).map(|(_, _, d)| d)
        };
        let take_over =
            self.script.lock().unwrap().take_over_at.as_ref().is_some_and(|(h, s)| *h == self.name && *s == what);
        if take_over {
            let holder = self.store.lock_holder("prod", "api").await.unwrap().unwrap();
            let expired = LockRecord { expires_at: Some(FixedClock.now() - chrono::Duration::seconds(1)), ..holder };
            self.store.force_unlock("prod", "api").await.unwrap();
            assert_eq!(
                self.store.try_lock(&expired, FixedClock.now() - chrono::Duration::seconds(60)).await.unwrap(),
                LockOutcome::Taken
            );
            let other = LockRecord { holder_user: "bob".into(), plan_id: "sha256:bobs-plan".into(), ..expired };
            assert!(matches!(self.store.try_lock(&other, FixedClock.now()).await.unwrap(), LockOutcome::TakenOver(_)));
        }
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        let mut t = self.tree.lock().unwrap();
        if matches!(step, Step::Start(_) | Step::Activate(_) | Step::Reactivate(_) | Step::Restore) {
            t.looks = 0;
        }
        match step {
            Step::Swap(id) | Step::SwapBack(id) => {
                if !t.releases.contains_key(id) {
                    return Err(HostText::new(&format!("release {id} is not staged")));
                }
                t.current = Some(id.clone());
            }
            Step::Activate(id) | Step::Reactivate(id) => {
                let json: release::ReleaseJson = serde_json::from_slice(&t.releases[id]["release.json"])
                    .map_err(|e| HostText::new(&e.to_string()))?;
                let other = self.script.lock().unwrap().report.clone().filter(|(h, _)| *h == self.name);
                t.running = Some(match (step, other) {
                    (Step::Activate(_), Some((_, digest))) => digest,
                    _ => json.digest,
                });
            }
            Step::Health | Step::Check(_) => {}
            Step::Unset => {
                t.current = None;
                t.running = None;
            }
            Step::Start(id) => {
                let json: release::ReleaseJson = serde_json::from_slice(&t.releases[id]["release.json"])
                    .map_err(|e| HostText::new(&e.to_string()))?;
                t.running = Some(json.digest);
            }
            Step::Discard(_) | Step::Restore => {
                t.running = match t.current.clone() {
                    Some(c) => Some(
                        serde_json::from_slice::<release::ReleaseJson>(&t.releases[&c]["release.json"])
                            .map_err(|e| HostText::new(&e.to_string()))?
                            .digest,
                    ),
                    None => None,
                };
            }
        }
        Ok(())
    }
}

struct Verifies;

#[async_trait::async_trait]
impl VerifyRelease for Verifies {
    async fn verify_release(&self, image: &PinnedImage, _req: &Requirements) -> Result<Verified, VerifyError> {
        Ok(Verified::for_tests(image.clone(), "release-key"))
    }
}

struct Quiet;

impl Sink for Quiet {
    fn event(&self, _line: &str) {}
}

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }
}

/// A control plane and four fake prod hosts (plus one staging host).
struct World {
    set: ManifestSet,
    store: SqlStore,
    trees: BTreeMap<String, Arc<Mutex<Tree>>>,
    script: Arc<Mutex<Script>>,
    interrupt: &'static Interrupt,
    log: Arc<Mutex<Vec<String>>>,
    receipts_dir: tempfile::TempDir,
    key: SigningKey,
}

impl World {
    async fn new() -> Self {
        Self::with(manifests("")).await
    }

    async fn with(set: ManifestSet) -> Self {
        let store = SqlStore::in_memory().await.unwrap();
        for (digest, commit) in
            [(DIGEST_1, "aaaaaaa"), (DIGEST_2, "bbbbbbb"), (DIGEST_3, "ccccccc"), (DIGEST_4, "ddddddd")]
        {
            store
                .put_release(&ReleaseRecord {
                    service: "api".into(),
                    facts: ReleaseFacts {
                        digest: digest.into(),
                        repository: REPO.into(),
                        source_commit: commit.into(),
                        signer_key_id: "release-key".into(),
                        provenance: None,
                        sbom: None,
                        signature: None,
                        contents: None,
                        platform_digest: None,
                    },
                    evidence: String::new(),
                    added_at: FixedClock.now(),
                    added_by: "ci".into(),
                })
                .await
                .unwrap();
        }
        let trees = set
            .environments
            .iter()
            .flat_map(|e| &e.hosts)
            .map(|h| (h.name.to_string(), Arc::new(Mutex::new(Tree::default()))))
            .collect();
        Self {
            set,
            store,
            trees,
            script: Arc::default(),
            interrupt: Box::leak(Box::new(Interrupt::new())),
            log: Arc::default(),
            receipts_dir: tempfile::tempdir().unwrap(),
            key: SigningKey::generate().unwrap(),
        }
    }

    fn fleet(&self, env: &str) -> Fleet {
        let env = self.set.environments.iter().find(|e| e.name.as_str() == env).unwrap();
        Fleet::new(env.hosts.iter().map(|h| {
            Box::new(FakeVm {
                name: h.name.to_string(),
                tree: self.trees[h.name.as_str()].clone(),
                script: self.script.clone(),
                interrupt: self.interrupt,
                log: self.log.clone(),
                store: self.store.clone(),
            }) as Box<dyn GoldenVm>
        }))
    }

    fn deployer<'a>(&'a self, verifier: &'a dyn VerifyRelease) -> Deployer<'a> {
        Deployer {
            set: &self.set,
            store: &self.store,
            verifier,
            operator: "alice".into(),
            sink: &Quiet,
            clock: &FixedClock,
            interrupt: self.interrupt,
            machine: Machine { hostname: "ops-1".into(), boot_id: "boot-1".into() },
            pid_exists: |pid| pid == i64::from(std::process::id()),
        }
    }

    fn log(&self) -> ReceiptLog {
        ReceiptLog::new(self.receipts_dir.path())
    }

    async fn plan(&self, env: &str, digest: &str) -> Result<Plan, DeployError> {
        self.deployer(&Verifies).plan_promotion(&self.fleet(env), env, "api", digest).await
    }

    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DeployError> {
        let log = self.log();
        let receipts = Receipts { log: &log, key: &self.key };
        self.deployer(&Verifies).apply(&self.fleet(&plan.environment), plan, &receipts).await
    }

    /// Plans and applies `digest` to `env`, expecting success.
    async fn promote(&self, env: &str, digest: &str) -> ApplyReport {
        let plan = self.plan(env, digest).await.unwrap();
        let mut r = self.apply(&plan).await.unwrap();
        // A rollout with a pause point is resumed at once.
        while r.outcome == Outcome::Paused {
            r = self.resume(&plan).await.unwrap();
        }
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
        r
    }

    async fn rollback(&self, to: Option<&str>) -> Result<ApplyReport, DeployError> {
        let plan = self.deployer(&Verifies).plan_rollback(&self.fleet("prod"), "prod", "api", to).await?;
        self.apply(&plan).await
    }

    fn current(&self, host: &str) -> Option<String> {
        self.trees[host].lock().unwrap().current.clone()
    }

    /// `current` of prod-1..prod-4.
    fn prod(&self) -> Vec<Option<String>> {
        (1..=4).map(|n| self.current(&format!("prod-{n}"))).collect()
    }

    fn receipts(&self) -> Vec<crate::receipt::Receipt> {
        let (files, _) = self.log().read().unwrap();
        files.iter().map(|f| serde_json::from_slice(&f.bytes).unwrap()).collect()
    }

    fn last_receipt(&self) -> crate::receipt::Receipt {
        self.receipts().pop().expect("a receipt")
    }

    /// v1 everywhere (staging first, as the gate wants), then v2 through staging; returns
    /// prod's v1 release and the plan that takes prod to v2.
    async fn v1_live_and_v2_in_staging(&self) -> (String, Plan) {
        self.promote("staging", DIGEST_1).await;
        let v1 = self.promote("prod", DIGEST_1).await.hosts[0].after.clone().unwrap();
        self.promote("staging", DIGEST_2).await;
        (v1, self.plan("prod", DIGEST_2).await.unwrap())
    }
}

#[tokio::test]
async fn a_rollout_moves_every_batch_and_records_the_way_back() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    assert_eq!(plan.batches, vec![vec!["prod-1", "prod-2"], vec!["prod-3", "prod-4"]]);
    let r = w.apply(&plan).await.unwrap();
    let v2 = plan.release.release_id.to_string();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(w.prod(), vec![Some(v2.clone()); 4]);
    let recorded = w.store.deployments("prod", "api").await.unwrap();
    assert!(recorded.iter().all(|d| d.release_id == v2 && d.rollback_target.as_deref() == Some(v1.as_str())));
    let receipt = w.last_receipt();
    assert_eq!((receipt.body.kind, receipt.body.outcome.as_str()), (ReceiptKind::Apply, "succeeded"));
    assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "lock released");
}

/// The lock taken over by another control plane while the canary batch runs (this one
/// stalled past its lease): the store refuses this run's records of the hosts it moved
/// (the plan is the fencing token), no further host step starts, and the receipt says why.
#[tokio::test]
async fn a_run_whose_lock_was_taken_over_records_nothing_more_and_starts_no_further_step() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    w.script.lock().unwrap().take_over_at = Some(("prod-1".into(), "health check"));
    w.log.lock().unwrap().clear();
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Interrupted, "{r:#?}");
    let failure = r.failure.clone().unwrap();
    assert!(failure.starts_with("stopped: the lock of `api` in `prod` is no longer held by plan"), "{failure}");
    assert!(failure.contains("taken over by plan sha256:bobs-plan"), "{failure}");
    let log = w.log.lock().unwrap().clone();
    let steps = |h: &str| log.iter().filter(|l| l.starts_with(h) && !l.contains(": stage ")).count();
    assert_eq!((steps("prod-3"), steps("prod-4")), (0, 0), "no host step after the takeover: {log:?}");
    let recorded = w.store.deployments("prod", "api").await.unwrap();
    assert!(recorded.iter().all(|d| d.release_id == v1), "nothing recorded after the takeover: {recorded:?}");
    let receipt = w.last_receipt();
    assert_eq!(receipt.body.outcome, "interrupted");
    let p1 = receipt.body.hosts.iter().find(|h| h.host == "prod-1").unwrap();
    assert!(p1.detail.as_ref().unwrap().as_str().contains("live, but not recorded"), "{p1:?}");
    assert_eq!(w.store.lock_holder("prod", "api").await.unwrap().unwrap().holder_user, "bob", "Bob's lock stays");
}

/// The same takeover in the last batch: every host moved, yet the run cannot vouch for the
/// state (the last records were refused), so it never reports success.
#[tokio::test]
async fn a_run_that_lost_its_lock_in_the_last_batch_does_not_report_success() {
    let w = World::new().await;
    let (_, plan) = w.v1_live_and_v2_in_staging().await;
    w.script.lock().unwrap().take_over_at = Some(("prod-4".into(), "health check"));
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Interrupted, "{r:#?}");
    assert!(r.failure.unwrap().contains("is no longer held by plan"));
    assert_eq!(w.last_receipt().body.outcome, "interrupted");
}

#[tokio::test]
async fn a_health_check_failing_in_batch_two_rolls_that_host_back_and_stops() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().fail.push(("prod-3".into(), "health check"));
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(w.prod(), vec![Some(v2.clone()), Some(v2.clone()), Some(v1), Some(v2)]);
    let outcomes: Vec<&str> = r.hosts.iter().map(|h| h.outcome.as_str()).collect();
    // prod-4 is in batch two with prod-3 and moved while prod-3 failed.
    assert_eq!(outcomes, ["changed", "changed", "rolled-back", "changed"]);
    let receipt = w.last_receipt();
    assert_eq!(receipt.body.outcome, "failed");
    assert!(receipt.body.detail.unwrap().contains("host `prod-3` failed in batch 2 of 2"));
}

/// The Podman runtime moves start-first: a host whose new container fails its health
/// check never had `current` moved, its new container is discarded and the old one
/// restored; a healthy host swaps last.
#[tokio::test]
async fn podman_hosts_swap_only_after_the_new_container_is_healthy() {
    let w = World::with(manifests_with("", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().fail.push(("prod-2".into(), "health check"));
    w.log.lock().unwrap().clear();
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(w.prod(), vec![Some(v2), Some(v1.clone()), Some(v1.clone()), Some(v1)]);
    let log = w.log.lock().unwrap().clone();
    let of = |h: &str| log.iter().filter(|l| l.starts_with(h)).map(|l| l[h.len() + 2..].to_owned()).collect::<Vec<_>>();
    assert_eq!(of("prod-1")[1..], ["start", "health check", "swap"]);
    assert_eq!(of("prod-2")[1..], ["start", "health check", "discard", "restore"]);
    assert_eq!(r.hosts[1].outcome, "rolled-back");
    assert!(r.hosts[1].detail.as_ref().unwrap().as_str().contains("health check failed"));
}

#[tokio::test]
async fn a_failure_in_the_canary_batch_leaves_later_batches_untouched() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().fail.push(("prod-1".into(), "activation"));
    w.log.lock().unwrap().clear();
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(w.prod(), vec![Some(v1.clone()), Some(v2), Some(v1.clone()), Some(v1)]);
    assert_eq!(r.hosts[2].outcome, "untouched");
    assert!(!w.log.lock().unwrap().iter().any(|l| l.starts_with("prod-3: swap")), "batch two never started");
}

#[tokio::test]
async fn staging_that_fails_on_one_host_changes_no_host() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    w.script.lock().unwrap().fail_stage.push("prod-4".into());
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(&e, DeployError::Staging { host, .. } if host == "prod-4"), "{e}");
    assert_eq!(w.prod(), vec![Some(v1); 4]);
    assert_eq!(w.last_receipt().body.outcome, "failed");
    assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "lock released");
}

#[tokio::test]
async fn a_broken_way_back_is_reported_as_failed_not_rolled_back() {
    let w = World::new().await;
    let (_, plan) = w.v1_live_and_v2_in_staging().await;
    w.script.lock().unwrap().fail.extend([("prod-2".into(), "health check"), ("prod-2".into(), "re-activation")]);
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.hosts[1].outcome, "failed");
    assert!(r.hosts[1].detail.as_ref().unwrap().as_str().contains("the way back failed too"));
}

#[tokio::test]
async fn an_interrupt_at_any_step_leaves_every_host_on_old_or_new_and_a_receipt() {
    for host in ["prod-1", "prod-2", "prod-3", "prod-4"] {
        for step in ["swap", "activation", "health check"] {
            let w = World::new().await;
            let (v1, plan) = w.v1_live_and_v2_in_staging().await;
            let v2 = plan.release.release_id.to_string();
            w.script.lock().unwrap().interrupt_at = Some((host.into(), step));
            let r = w.apply(&plan).await.unwrap();
            let case = format!("interrupt at {host} {step}");
            let second_batch = host == "prod-3" || host == "prod-4";
            // The batch that was moving finishes; no later batch starts.
            let want = if second_batch {
                (Outcome::Succeeded, vec![Some(v2.clone()); 4])
            } else {
                (Outcome::Interrupted, vec![Some(v2.clone()), Some(v2.clone()), Some(v1.clone()), Some(v1.clone())])
            };
            assert_eq!((r.outcome, w.prod()), want, "{case}");
            let receipt = w.last_receipt();
            assert_eq!(receipt.body.outcome, want.0.as_str(), "{case}");
            assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "{case}: lock released");
            // A rerun converges.
            if !second_batch {
                w.interrupt.requests.store(0, Ordering::SeqCst);
                w.script.lock().unwrap().interrupt_at = None;
                w.promote("prod", DIGEST_2).await;
                assert_eq!(w.prod(), vec![Some(v2.clone()); 4], "{case}: rerun");
            }
        }
    }
}

#[tokio::test]
async fn an_interrupt_before_the_lock_changes_nothing_and_says_so() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    w.interrupt.request();
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(e, DeployError::Interrupted), "{e}");
    assert_eq!(w.prod(), vec![Some(v1); 4]);
    assert_eq!(w.last_receipt().body.outcome, "interrupted");
}

#[tokio::test]
async fn prod_refuses_a_release_that_never_passed_staging() {
    let w = World::new().await;
    let e = w.plan("prod", DIGEST_1).await.unwrap_err();
    assert!(matches!(e, DeployError::Gate { .. }), "{e}");
    // The same check runs at apply: a plan made while the gate held is refused when the
    // store no longer shows the release in staging.
    let (_, plan) = w.v1_live_and_v2_in_staging().await;
    w.promote("staging", DIGEST_1).await;
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(e, DeployError::Gate { .. }), "{e}");
    assert_eq!(w.last_receipt().body.kind, ReceiptKind::Refusal);
}

#[tokio::test]
async fn an_edited_plan_is_refused_naming_the_field_and_never_panics() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    type Edit = Box<dyn Fn(&mut Plan)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("health_timeout_secs", Box::new(|p| p.health_timeout_secs = 1)),
        ("batches", Box::new(|p| p.batches = vec![p.batches.concat()])),
        ("batches", Box::new(|p| p.batches.push(vec!["prod-9".into()]))),
        ("batches", Box::new(|p| p.batches[1][0] = "no-such-host".into())),
        ("approvals_required", Box::new(|p| p.approvals_required = 3)),
        ("release.signer_key_id", Box::new(|p| p.release.facts.signer_key_id = "another-key".into())),
    ];
    for (field, edit) in edits {
        let mut forged = plan.clone();
        edit(&mut forged);
        let e = w.apply(&forged).await.unwrap_err();
        match &e {
            DeployError::PlanTampered { diffs, .. } => {
                assert!(diffs.iter().any(|d| d.field == field), "{field}: {diffs:?}")
            }
            other => panic!("{field}: {other}"),
        }
        assert!(e.details().iter().any(|l| l.contains(field)), "{field}");
        assert_eq!(w.prod(), vec![Some(v1.clone()); 4], "{field}: no host moved");
        assert_eq!(w.last_receipt().body.kind, ReceiptKind::Refusal, "{field}");
    }
}

#[tokio::test]
async fn approvals_are_counted_against_the_manifests_not_the_plan_file() {
    let keys = tempfile::tempdir().unwrap();
    let key = |who: &str| {
        let path = keys.path().join(who);
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", who, "-f"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        (path, format!("{who} {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")))
    };
    let (bob, bob_line) = key("bob");
    let (carol, carol_line) = key("carol");
    let (alice, alice_line) = key("alice");
    let (mallory, _) = key("mallory");
    let set = {
        let mut s = manifests("");
        let prod = s.environments.iter_mut().find(|e| e.name.as_str() == "prod").unwrap();
        prod.approvals = 2;
        prod.approval_valid_secs = 3600;
        prod.approvers =
            crate::approval::parse_allowed_signers(&[bob_line, carol_line, alice_line].join("\n")).unwrap();
        s
    };
    let w = World::with(set).await;
    w.promote("staging", DIGEST_1).await;
    let plan = w.plan("prod", DIGEST_1).await.unwrap();
    assert_eq!((plan.approvals_required, plan.author.as_str()), (2, "alice"));
    let mut zero = plan.clone();
    zero.approvals_required = 0;
    let e = w.apply(&zero).await.unwrap_err();
    assert!(matches!(&e, DeployError::PlanTampered { diffs, .. } if diffs[0].field == "approvals_required"), "{e}");
    let statement = |plan_id: &str, hours: i64| crate::approval::Statement {
        plan_id: plan_id.into(),
        environment: "prod".into(),
        service: "api".into(),
        release_digest: plan.release.facts.digest.clone(),
        signed_at: FixedClock.now().to_rfc3339(),
        expires_at: (FixedClock.now() + chrono::Duration::hours(hours)).to_rfc3339(),
    };
    let approve = |who: &str, key: &std::path::Path, st: crate::approval::Statement| {
        let signature = crate::sshsig::sign(key, &st).unwrap();
        crate::store::Approval {
            plan_id: plan.id().to_string(),
            approver: who.into(),
            approved_at: FixedClock.now(),
            statement: String::from_utf8(st.to_bytes()).unwrap(),
            signature,
        }
    };
    let id = plan.id().to_string();
    // Each of these is stored and refused with its own reason.
    for a in [
        approve("mallory", &mallory, statement(&id, 1)),
        approve("bob", &bob, statement("sha256:another-plan", 1)),
        approve("alice", &alice, statement(&id, 1)),
        approve("carol", &carol, statement(&id, 48)),
    ] {
        w.store.approve(&a).await.unwrap();
    }
    let e = w.apply(&plan).await.unwrap_err();
    let DeployError::Approvals { need: 2, have: 0, .. } = &e else { panic!("{e}") };
    let details = e.details().join("\n");
    for reason in ["not one of the environment's approvers", "not this one", "separation of duties", "longer than"] {
        assert!(details.contains(reason), "{reason} in {details}");
    }
    // Valid approvals by bob (twice) and carol: two distinct approvers.
    w.store.approve(&approve("bob", &bob, statement(&id, 1))).await.unwrap();
    w.store.approve(&approve("carol", &carol, statement(&id, 1))).await.unwrap();
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    let receipt = w.last_receipt();
    let who: Vec<&str> = receipt.body.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(who, ["bob", "carol"]);
    assert!(receipt.body.approvals.iter().all(|a| a.signature.as_deref().is_some_and(|s| s.contains("SSH SIGNATURE"))));
}

#[tokio::test]
async fn a_host_that_moved_since_the_plan_makes_it_stale() {
    let w = World::new().await;
    let (_, plan) = w.v1_live_and_v2_in_staging().await;
    w.trees["prod-2"].lock().unwrap().current = None;
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(&e, DeployError::Stale { moved, .. } if moved[0].host == "prod-2"), "{e}");
}

#[tokio::test]
async fn a_lock_held_by_a_dead_process_is_reported_as_such() {
    let w = World::new().await;
    w.promote("staging", DIGEST_1).await;
    let plan = w.plan("prod", DIGEST_1).await.unwrap();
    let dead = LockRecord {
        environment: "prod".into(),
        service: "api".into(),
        holder_user: "bob".into(),
        holder_host: "ops-1".into(),
        holder_pid: 999_999_999,
        holder_boot: "boot-1".into(),
        plan_id: "sha256:old".into(),
        since: FixedClock.now(),
        // Its lease still runs: only the pid tells it is gone.
        expires_at: Some(FixedClock.now() + chrono::Duration::hours(1)),
    };
    assert_eq!(w.store.try_lock(&dead, FixedClock.now()).await.unwrap(), LockOutcome::Taken);
    let e = w.apply(&plan).await.unwrap_err();
    assert!(
        matches!(&e, DeployError::Locked { liveness: Holder::Dead(why), .. } if why.contains("no process 999999999")),
        "{e}"
    );
    let rebooted = LockRecord { holder_pid: i64::from(std::process::id()), holder_boot: "boot-0".into(), ..dead };
    w.store.force_unlock("prod", "api").await.unwrap();
    assert_eq!(w.store.try_lock(&rebooted, FixedClock.now()).await.unwrap(), LockOutcome::Taken);
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(&e, DeployError::Locked { liveness: Holder::Dead(why), .. } if why.contains("rebooted")), "{e}");
}

/// bob's lock from another control plane (`ci-7`), taken at `since`, its lease ending
/// `lease_end_secs` from now (negative: already expired).
fn bobs_lock(since: DateTime<Utc>, lease_end_secs: i64) -> LockRecord {
    LockRecord {
        environment: "prod".into(),
        service: "api".into(),
        holder_user: "bob".into(),
        holder_host: "ci-7".into(),
        holder_pid: 4242,
        holder_boot: String::new(),
        plan_id: "sha256:old".into(),
        since,
        expires_at: Some(FixedClock.now() + chrono::Duration::seconds(lease_end_secs)),
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_a_receipt_before_the_apply() {
    let w = World::new().await;
    w.promote("staging", DIGEST_1).await;
    let plan = w.plan("prod", DIGEST_1).await.unwrap();
    let stale = bobs_lock(FixedClock.now() - chrono::Duration::minutes(10), -1);
    let earlier = FixedClock.now() - chrono::Duration::minutes(10);
    assert_eq!(w.store.try_lock(&stale, earlier).await.unwrap(), LockOutcome::Taken);
    let before = w.receipts().len();
    w.apply(&plan).await.unwrap();
    let receipts = w.receipts();
    let kinds: Vec<_> = receipts[before..].iter().map(|r| r.body.kind.as_str()).collect();
    assert_eq!(kinds, ["lock-override", "apply"]);
    let detail = receipts[before].body.detail.as_deref().unwrap();
    assert!(detail.contains("the lease of bob on ci-7 (pid 4242, plan sha256:old"), "{detail}");
    assert_eq!(w.store.lock_holder("prod", "api").await.unwrap(), None, "released after the apply");
}

#[tokio::test]
async fn an_apply_whose_lease_was_taken_over_starts_no_further_host() {
    let mut set = manifests("");
    set.settings.lock_lease_secs = 3;
    let w = World::with(set).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    // prod-1's activation takes 2.5 s; meanwhile another control plane takes the lock over
    // (as it would once this one's lease had run out); the renewal every second notices.
    w.script.lock().unwrap().stall = Some(("prod-1".into(), "activation", Duration::from_millis(2500)));
    let store = w.store.clone();
    let thief = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let holder = store.force_unlock("prod", "api").await.unwrap().expect("the apply holds the lock");
        let other = LockRecord { holder_user: "mallory".into(), plan_id: "sha256:other".into(), ..holder };
        assert_eq!(store.try_lock(&other, FixedClock.now()).await.unwrap(), LockOutcome::Taken);
    });
    let r = w.apply(&plan).await.unwrap();
    thief.await.unwrap();
    assert_eq!(r.outcome, Outcome::Interrupted, "{r:#?}");
    assert_eq!(w.prod()[2..], [Some(v1.clone()), Some(v1)], "no host of the second batch started");
    assert_eq!(
        w.store.lock_holder("prod", "api").await.unwrap().unwrap().holder_user,
        "mallory",
        "its lock is left alone"
    );
}

#[tokio::test]
async fn a_lease_that_has_not_expired_is_not_taken_over() {
    let w = World::new().await;
    w.promote("staging", DIGEST_1).await;
    let plan = w.plan("prod", DIGEST_1).await.unwrap();
    let live = bobs_lock(FixedClock.now(), 1);
    assert_eq!(w.store.try_lock(&live, FixedClock.now()).await.unwrap(), LockOutcome::Taken);
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(&e, DeployError::Locked { liveness: Holder::Unknown, .. }), "{e}");
    assert!(e.to_string().contains("lease until"), "{e}");
}

#[tokio::test]
async fn what_a_failing_health_check_prints_reaches_the_receipt_sanitized() {
    let w = World::new().await;
    let (_, plan) = w.v1_live_and_v2_in_staging().await;
    {
        let mut s = w.script.lock().unwrap();
        s.fail.push(("prod-1".into(), "health check"));
        s.health_stderr = "\u{1b}]0;pwned\u{7}\u{1b}[2J token ghp_0123456789abcdefABCDEF0123 down".into();
    }
    w.apply(&plan).await.unwrap();
    let (files, _) = w.log().read().unwrap();
    let bytes = &files.last().unwrap().bytes;
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.contains("ghp_0123456789"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains("\\u001b"), "{text}");
    assert!(text.contains("token [redacted] down"), "{text}");
}

/// Regression: an apply killed after `prod-3`'s swap left it on the new release,
/// unrecorded; the rerun took that release as the way back, "rolled back" onto it when
/// its health check failed, and signed a receipt saying `rolled-back` with before = after.
#[tokio::test]
async fn recovery_after_a_crash_goes_back_to_the_release_recorded_before_the_rollout() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    // The crash: prod-3 got v2's files and `current`, and nothing was recorded.
    {
        let mut t = w.trees["prod-3"].lock().unwrap();
        t.releases.insert(v2.clone(), plan.decoded_files().unwrap());
        t.current = Some(v2.clone());
    }
    let rerun = w.plan("prod", DIGEST_2).await.unwrap();
    let h = rerun.hosts.iter().find(|h| h.host == "prod-3").unwrap();
    assert_eq!(h.before.as_ref().map(ReleaseId::as_str), Some(v2.as_str()));
    assert_eq!(h.rollback_target.as_ref().map(ReleaseId::as_str), Some(v1.as_str()), "the recorded release");
    w.script.lock().unwrap().fail.push(("prod-3".into(), "health check"));
    let r = w.apply(&rerun).await.unwrap();
    assert_eq!(w.current("prod-3"), Some(v1.clone()), "back on the release recorded before the rollout");
    let o = r.hosts.iter().find(|h| h.host == "prod-3").unwrap();
    assert_eq!(
        (o.outcome.as_str(), o.before.as_deref(), o.after.as_deref()),
        ("rolled-back", Some(v2.as_str()), Some(v1.as_str()))
    );
    let receipt = w.last_receipt();
    let o = receipt.body.hosts.iter().find(|h| h.host == "prod-3").unwrap();
    assert_eq!(o.after.as_deref(), Some(v1.as_str()), "the receipt says so");
}

/// Regression: a hand-made `releases/r-0123…` set as `current` was offered as the way
/// back and re-activated when health failed.
#[tokio::test]
async fn an_unrecorded_live_release_is_never_reactivated() {
    let w = World::new().await;
    w.promote("staging", DIGEST_1).await;
    let evil = "r-0123456789abcdef".to_owned();
    {
        let mut t = w.trees["prod-1"].lock().unwrap();
        t.releases.insert(evil.clone(), BTreeMap::from([("release.json".to_owned(), b"{\"EVIL\":1}".to_vec())]));
        t.current = Some(evil.clone());
    }
    // Nothing recorded: a failure would leave the host with nothing, so the rollout is
    // refused before any host changes (and the hand-made release cannot be adopted).
    w.log.lock().unwrap().clear();
    let err = w.plan("prod", DIGEST_1).await.unwrap_err();
    assert!(matches!(&err, DeployError::Plan(PlanError::Unadopted { hosts, .. }) if hosts[0].0 == "prod-1"), "{err}");
    assert_eq!(w.current("prod-1"), Some(evil), "nothing moved");
    assert!(w.log.lock().unwrap().iter().all(|l| !l.contains("activation")), "{:?}", w.log.lock().unwrap());
}

/// Regression: v1, v2, v3 promoted; `rollback` went to v2, and `rollback` again flipped
/// forward to v3, the release just rolled away from.
#[tokio::test]
async fn rollback_walks_back_one_release_at_a_time() {
    let w = World::new().await;
    let mut ids = Vec::new();
    for d in [DIGEST_1, DIGEST_2, DIGEST_3, DIGEST_4] {
        w.promote("staging", d).await;
        ids.push(w.promote("prod", d).await.hosts[0].after.clone().unwrap());
    }
    for want in [2, 1, 0] {
        let r = w.rollback(None).await.unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(w.prod(), vec![Some(ids[want].clone()); 4], "rollback to v{}", want + 1);
    }
    let e = w.rollback(None).await.unwrap_err();
    assert!(matches!(e, DeployError::NoRollbackTarget { .. }), "{e}");
    // `--to` picks any earlier release that is still intact, forward too.
    w.rollback(Some(&ids[3])).await.unwrap();
    assert_eq!(w.prod(), vec![Some(ids[3].clone()); 4]);
}

/// Regression: a plan applied earlier applied again once the hosts happened to match its
/// fingerprints again.
#[tokio::test]
async fn an_applied_plan_replayed_after_the_hosts_return_to_its_fingerprints_is_refused() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    w.apply(&plan).await.unwrap();
    w.rollback(None).await.unwrap();
    assert_eq!(w.prod(), vec![Some(v1.clone()); 4], "the hosts match the plan's fingerprints again");
    let e = w.apply(&plan).await.unwrap_err();
    // Said as what it is, with the receipt of the first apply (it said "stale" once).
    assert!(matches!(&e, DeployError::AlreadyApplied { receipt, .. } if receipt.ends_with("-apply.json")), "{e}");
    assert_eq!(w.prod(), vec![Some(v1); 4]);
    assert_eq!(w.last_receipt().body.kind, ReceiptKind::Refusal);
    assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "lock released");
}

#[tokio::test]
async fn a_saved_plan_older_than_the_configured_age_is_refused_as_expired() {
    let w = World::new().await;
    let (_, mut plan) = w.v1_live_and_v2_in_staging().await;
    plan.created_at = "2026-01-01T00:00:00Z".into();
    let e = w.apply(&plan).await.unwrap_err();
    assert!(matches!(e, DeployError::Expired(plan::Expiry::Expired { .. })), "{e}");
}

/// Regression: with the runtime reporting another digest after activation, the apply said
/// "live and healthy". What runs is read back after the health check: a host that runs
/// anything but the release fails like an unhealthy one and goes back.
#[tokio::test]
async fn a_host_whose_runtime_runs_another_digest_after_activation_fails_and_goes_back() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let other = format!("sha256:{}", "e".repeat(64));
    w.script.lock().unwrap().report = Some(("prod-1".into(), other.clone()));
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:#?}");
    assert_eq!(w.prod(), vec![Some(v1.clone()), Some(plan.release.release_id.to_string()), Some(v1.clone()), Some(v1)]);
    let detail = r.hosts[0].detail.as_ref().unwrap().to_string();
    assert!(detail.contains(&format!("the runtime reports `{other}` running")), "{detail}");
}

/// Regression (the rollback loop): v1, v2, then v2 promoted again to repair it: the way
/// back is still v1; and a rollback that would move nothing is refused (never recorded
/// as a success), naming the `--to` choices.
#[tokio::test]
async fn re_promoting_what_runs_keeps_the_way_back_and_a_rollback_that_moves_nothing_is_refused() {
    let w = World::new().await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    w.apply(&plan).await.unwrap();
    w.promote("prod", DIGEST_2).await;
    let back = w.deployer(&Verifies).plan_rollback(&w.fleet("prod"), "prod", "api", None).await.unwrap();
    assert_eq!(back.release.release_id.as_str(), v1);
    let receipts = w.receipts().len();
    let e = w.rollback(Some(plan.release.release_id.as_str())).await.unwrap_err();
    match &e {
        DeployError::NothingToRollBack { choices, .. } => {
            assert_eq!(choices.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), [v1.as_str()])
        }
        other => panic!("{other}"),
    }
    assert!(e.is_refusal());
    assert_eq!(w.receipts().len(), receipts, "nothing recorded, no success above all");
}

// ---- the canary's proof: soak, failure budget, pause ---------------------------------

impl World {
    async fn resume(&self, plan: &Plan) -> Result<ApplyReport, DeployError> {
        let log = self.log();
        let receipts = Receipts { log: &log, key: &self.key };
        let saved = plan::SavedPlan { plan_id: plan.id(), plan: plan.clone() };
        self.deployer(&Verifies).resume_saved(&self.fleet(&plan.environment), &saved, &receipts).await
    }

    fn outcomes(r: &ApplyReport) -> Vec<&str> {
        r.hosts.iter().map(|h| h.outcome.as_str()).collect()
    }
}

/// A workload that passes its health check and stops a moment later is caught by the
/// canary's soak, on either runtime: that host goes back, the rest of its batch (healthy
/// through the soak) stays, no later batch starts, and the receipt records each soak.
#[tokio::test]
async fn a_soak_catches_a_workload_that_stops_after_its_health_check() {
    for podman in [false, true] {
        let w = World::with(rollout_manifests("", "batch = 2\nsoak_secs = 2\nsoak_interval_secs = 1", podman)).await;
        let (v1, plan) = w.v1_live_and_v2_in_staging().await;
        assert_eq!(plan.soak.map(|s| (s.secs, s.interval_secs, s.every_batch)), Some((2, 1, false)));
        let v2 = plan.release.release_id.to_string();
        w.script.lock().unwrap().crashes.push(("prod-1".into(), DIGEST_2.into()));
        w.log.lock().unwrap().clear();
        let r = w.apply(&plan).await.unwrap();
        let case = if podman { "podman" } else { "command" };
        assert_eq!(r.outcome, Outcome::Failed, "{case}: {r:#?}");
        assert_eq!(w.prod(), vec![Some(v1.clone()), Some(v2.clone()), Some(v1.clone()), Some(v1.clone())], "{case}");
        assert_eq!(World::outcomes(&r), ["rolled-back", "changed", "untouched", "untouched"], "{case}");
        let detail = r.hosts[0].detail.as_ref().unwrap().to_string();
        assert!(detail.starts_with("soak failed: "), "{case}: {detail}");
        let log = w.log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.starts_with("prod-3") && !l.contains("stage")), "{case}: {log:?}");
        let receipt = w.last_receipt();
        let soak = &receipt.body.rollout.as_ref().unwrap().soak;
        assert_eq!(soak.len(), 2, "{case}: {soak:?}");
        let of = |h: &str| soak.iter().find(|s| s.host == h).unwrap();
        assert_eq!((of("prod-2").verdict.as_str(), of("prod-2").batch), ("held", 1), "{case}");
        assert!(of("prod-2").checks >= 1, "{case}: {soak:?}");
        assert!(of("prod-1").verdict.starts_with("failed after "), "{case}: {soak:?}");
        // The way back is on the record: prod-1 runs v1 again, and its history says so.
        let recorded = w.store.deployments("prod", "api").await.unwrap();
        assert_eq!(recorded.iter().find(|d| d.host == "prod-1").unwrap().release_id, v1, "{case}");
        let history = w.store.history("prod", "api").await.unwrap();
        let last = history.iter().rev().find(|h| h.host == "prod-1").unwrap();
        assert_eq!((last.kind.as_str(), last.release_id.as_str()), ("rollback", v1.as_str()), "{case}");
    }
}

/// `soak = "every-batch"` watches each batch; a crash in the last one is caught there.
#[tokio::test]
async fn every_batch_soaks_when_asked() {
    let rollout = "batch = 2\nsoak_secs = 1\nsoak_interval_secs = 1\nsoak = \"every-batch\"";
    let w = World::with(rollout_manifests("", rollout, true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().crashes.push(("prod-4".into(), DIGEST_2.into()));
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(w.prod(), vec![Some(v2.clone()), Some(v2.clone()), Some(v2), Some(v1)]);
    let soak = &w.last_receipt().body.rollout.unwrap().soak;
    assert_eq!(soak.iter().map(|s| s.batch).collect::<Vec<_>>().iter().filter(|b| **b == 2).count(), 2);
}

/// A failure budget of one host in four, two failing hosts: the first failure is rolled
/// back and the rollout goes on; the second spends the budget, the rollout halts (no
/// further host starts) and the hosts that moved go back — or stay, when the plan keeps them.
#[tokio::test]
async fn a_spent_failure_budget_halts_the_rollout_and_returns_the_moved_hosts() {
    for keep in [false, true] {
        let extra = if keep { "\non_budget_spent = \"keep\"" } else { "" };
        let w = World::with(rollout_manifests("", &format!("batch = 1\nmax_failures = 1{extra}"), true)).await;
        let (v1, plan) = w.v1_live_and_v2_in_staging().await;
        assert_eq!((plan.max_failures, plan.batches.len()), (Some(1), 4));
        let v2 = plan.release.release_id.to_string();
        w.script.lock().unwrap().fail.extend([("prod-2".into(), "health check"), ("prod-3".into(), "health check")]);
        w.log.lock().unwrap().clear();
        let r = w.apply(&plan).await.unwrap();
        assert_eq!(r.outcome, Outcome::Halted, "{r:#?}");
        assert!(r
            .failure
            .as_ref()
            .unwrap()
            .starts_with("halted: failure budget spent (2 host(s) failed; the budget is 1)"));
        let log = w.log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.starts_with("prod-4") && !l.contains("stage")), "prod-4 never started: {log:?}");
        let first = if keep { Some(v2.clone()) } else { Some(v1.clone()) };
        assert_eq!(w.prod(), vec![first, Some(v1.clone()), Some(v1.clone()), Some(v1.clone())], "keep: {keep}");
        let want = if keep { "changed" } else { "returned" };
        assert_eq!(World::outcomes(&r), [want, "rolled-back", "rolled-back", "untouched"]);
        let receipt = w.last_receipt();
        assert_eq!(receipt.body.outcome, "halted");
        let budget = receipt.body.rollout.unwrap().failures.unwrap();
        assert_eq!((budget.failed, budget.max), (2, 1));
        assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "lock released");
    }
}

/// Within the budget the rollout goes on past a failure: every other host moves, and the
/// outcome still says a host did not.
#[tokio::test]
async fn failures_within_the_budget_do_not_stop_the_rollout() {
    let w = World::with(rollout_manifests("", "batch = 1\nmax_failures = \"50%\"", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    assert_eq!(plan.max_failures, Some(2));
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().fail.push(("prod-1".into(), "health check"));
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(w.prod(), vec![Some(v1), Some(v2.clone()), Some(v2.clone()), Some(v2)]);
}

/// A pause after each batch in turn: the apply stops there with the lock released and a
/// `paused` receipt; `resume` derives the plan again and completes it; a second resume,
/// or the plan applied again, is refused.
#[tokio::test]
async fn a_pause_at_every_batch_then_resume_completes_the_rollout() {
    for at in 1..=3 {
        let w = World::with(rollout_manifests("", &format!("batch = 1\npause_after = {at}"), true)).await;
        let (v1, plan) = w.v1_live_and_v2_in_staging().await;
        assert_eq!(plan.pause_after, Some(at));
        let v2 = plan.release.release_id.to_string();
        let r = w.apply(&plan).await.unwrap();
        assert_eq!(r.outcome, Outcome::Paused, "pause after {at}: {r:#?}");
        let moved: Vec<Option<String>> = (1..=4).map(|n| Some(if n <= at { v2.clone() } else { v1.clone() })).collect();
        assert_eq!(w.prod(), moved, "pause after {at}");
        assert!(w.store.lock_holder("prod", "api").await.unwrap().is_none(), "lock released");
        let paused = w.last_receipt();
        assert_eq!(paused.body.outcome, "paused");
        assert_eq!(paused.body.rollout.as_ref().unwrap().paused_after, Some(at));
        assert!(r.failure.unwrap().contains("agentctl resume"));
        let last = w.deployer(&Verifies).last_rollout("prod", "api").await.unwrap().unwrap();
        assert_eq!(last.held().unwrap().0, "paused");

        w.log.lock().unwrap().clear();
        let r = w.resume(&plan).await.unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded, "resume after {at}: {r:#?}");
        assert_eq!(w.prod(), vec![Some(v2.clone()); 4]);
        assert!(World::outcomes(&r).iter().all(|o| *o == "changed"), "{r:#?}");
        let log = w.log.lock().unwrap().clone();
        for n in 1..=at {
            let host = format!("prod-{n}");
            assert!(!log.iter().any(|l| l.starts_with(&host)), "{host} moved before the pause: {log:?}");
        }
        let done = w.last_receipt();
        assert_eq!(done.body.rollout.unwrap().resumed_from.as_deref(), Some(paused.file_name().as_str()));
        assert!(w.deployer(&Verifies).last_rollout("prod", "api").await.unwrap().unwrap().held().is_none());
        assert!(matches!(w.resume(&plan).await, Err(DeployError::NotPaused { .. })), "a finished rollout");
        assert!(matches!(w.apply(&plan).await, Err(DeployError::AlreadyApplied { .. })));
    }
}

/// `rollback` from a paused rollout returns the hosts that moved, and only them; the
/// paused plan cannot be resumed after it.
#[tokio::test]
async fn rollback_from_a_pause_returns_every_moved_host() {
    let w = World::with(rollout_manifests("", "batch = 1\npause_after = 2", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    assert_eq!(w.prod(), vec![Some(v2.clone()), Some(v2), Some(v1.clone()), Some(v1.clone())]);
    w.log.lock().unwrap().clear();
    let r = w.rollback(None).await.unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(w.prod(), vec![Some(v1); 4]);
    assert_eq!(World::outcomes(&r), ["changed", "changed", "unchanged", "unchanged"]);
    let e = w.resume(&plan).await.unwrap_err();
    assert!(e.to_string().contains("came after it"), "{e}");
}

/// Resuming what was never paused, or an edited plan file, is refused naming the plan and
/// changes nothing (no host, no receipt).
#[tokio::test]
async fn a_resume_of_a_plan_never_paused_changes_nothing() {
    let w = World::with(rollout_manifests("", "batch = 1\npause_after = \"canary\"", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let before = w.receipts().len();
    let e = w.resume(&plan).await.unwrap_err();
    assert!(matches!(e, DeployError::NotPaused { .. }), "{e}");
    assert!(e.to_string().contains("was never paused"), "{e}");
    assert!(e.is_invalid_input());
    assert_eq!(w.prod(), vec![Some(v1.clone()); 4]);
    assert_eq!(w.receipts().len(), before, "no receipt");
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    let mut edited = plan.clone();
    edited.pause_after = None;
    let saved = plan::SavedPlan { plan_id: plan.id(), plan: edited };
    let log = w.log();
    let e = w
        .deployer(&Verifies)
        .resume_saved(&w.fleet("prod"), &saved, &Receipts { log: &log, key: &w.key })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the file was edited"), "{e}");
}

/// A host that failed within the budget before the pause stays where it went back to; a
/// resume moves the rest, and the outcome still says a host did not move.
#[tokio::test]
async fn a_resume_after_a_failure_within_the_budget_keeps_it_back() {
    let w = World::with(rollout_manifests("", "batch = 1\nmax_failures = 1\npause_after = 2", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    let v2 = plan.release.release_id.to_string();
    w.script.lock().unwrap().fail.push(("prod-2".into(), "health check"));
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    assert_eq!(w.prod(), vec![Some(v2.clone()), Some(v1.clone()), Some(v1.clone()), Some(v1.clone())]);
    w.log.lock().unwrap().clear();
    let r = w.resume(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:#?}");
    assert_eq!(w.prod(), vec![Some(v2.clone()), Some(v1), Some(v2.clone()), Some(v2)]);
    assert_eq!(World::outcomes(&r), ["changed", "rolled-back", "changed", "changed"]);
    assert!(!w.log.lock().unwrap().iter().any(|l| l.starts_with("prod-2")), "prod-2 is not tried again");
    assert_eq!(w.last_receipt().body.rollout.unwrap().failures.map(|f| (f.failed, f.max)), Some((1, 1)));
}

/// A budget spent after a resume returns the hosts moved before the pause too.
#[tokio::test]
async fn a_budget_spent_after_a_resume_returns_the_hosts_moved_before_the_pause() {
    let w = World::with(rollout_manifests("", "batch = 1\nmax_failures = 0\npause_after = 1", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    w.script.lock().unwrap().fail.push(("prod-3".into(), "health check"));
    let r = w.resume(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Halted, "{r:#?}");
    assert_eq!(w.prod(), vec![Some(v1); 4]);
    assert_eq!(World::outcomes(&r), ["returned", "returned", "rolled-back", "untouched"]);
    let history = w.store.history("prod", "api").await.unwrap();
    let last = history.iter().rev().find(|h| h.host == "prod-1").unwrap();
    assert_eq!(last.kind, "rollback", "the return is on the record");
}

/// A host that ran nothing before goes back to nothing (the command runtime unsets
/// `current`) and its history starts again: the failed release is never its way back.
#[tokio::test]
async fn a_soak_failure_on_a_first_deployment_leaves_no_way_back_to_the_failed_release() {
    let w = World::with(rollout_manifests("", "batch = 1\nsoak_secs = 2\nsoak_interval_secs = 1", false)).await;
    w.promote("staging", DIGEST_1).await;
    w.script.lock().unwrap().crashes.push(("prod-1".into(), DIGEST_1.into()));
    let plan = w.plan("prod", DIGEST_1).await.unwrap();
    let r = w.apply(&plan).await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:#?}");
    assert_eq!(w.prod(), vec![None; 4]);
    assert_eq!(r.hosts[0].after, None);
    let history = w.store.history("prod", "api").await.unwrap();
    assert_eq!(history.last().map(|h| h.kind.as_str()), Some("forget"));
    assert!(matches!(w.rollback(None).await, Err(DeployError::NoRollbackTarget { .. })));
    let soak = &w.last_receipt().body.rollout.unwrap().soak[0];
    assert!(soak.observed.contains("running"), "what the first look saw: {soak:?}");
}

/// From a pause, `rollback` goes back to where the moved hosts came from, even where the
/// hosts that never moved have a history of their own that points elsewhere.
#[tokio::test]
async fn rollback_from_a_pause_uses_the_pause_not_each_hosts_history() {
    let w = World::with(rollout_manifests("", "batch = 1\npause_after = 1", true)).await;
    w.promote("staging", DIGEST_1).await;
    w.promote("prod", DIGEST_1).await;
    w.promote("staging", DIGEST_2).await;
    w.promote("prod", DIGEST_2).await;
    let v2 = w.current("prod-1").unwrap();
    w.promote("staging", DIGEST_3).await;
    let plan = w.plan("prod", DIGEST_3).await.unwrap();
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    // Each host's history alone would send prod-1 to v2 and the others to v1.
    let r = w.rollback(None).await.unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(w.prod(), vec![Some(v2); 4]);
}

/// A resume whose moved host no longer runs the release is stale; one whose approvals
/// are not enough is refused; a rehearsal where rollouts pause is refused.
#[tokio::test]
async fn a_resume_is_derived_again_and_rehearsals_do_not_pause() {
    let w = World::with(rollout_manifests("", "batch = 1\npause_after = 1", true)).await;
    let (v1, plan) = w.v1_live_and_v2_in_staging().await;
    assert_eq!(w.apply(&plan).await.unwrap().outcome, Outcome::Paused);
    w.trees["prod-1"].lock().unwrap().current = Some(v1.clone());
    let e = w.resume(&plan).await.unwrap_err();
    assert!(matches!(e, DeployError::Stale { .. }), "{e}");
    assert!(e.details().iter().any(|d| d.contains("moved before the pause")), "{:?}", e.details());
    let log = w.log();
    let e = w
        .deployer(&Verifies)
        .rehearse(&w.fleet("prod"), "prod", "api", DIGEST_2, &Receipts { log: &log, key: &w.key })
        .await
        .unwrap_err();
    assert!(matches!(e, DeployError::PausedRehearsal { .. }), "{e}");
}
