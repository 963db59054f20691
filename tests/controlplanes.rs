//! Several control planes, one truth: three `agentctl` processes, each with its own working
//! directory, manifests copy and receipts directory, on one real PostgreSQL and one lab.

mod common;

use common::*;
use lab::postgres::{self, Postgres};
use rustix::process::{kill_process, Pid, Signal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One control plane: its own directory with a copy of the lab's manifests and keys.
struct ControlPlane {
    dir: tempfile::TempDir,
    operator: String,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else if e.file_name() != "controlplane.db" {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

impl ControlPlane {
    fn new(w: &World, pg: &Postgres, n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&w.manifests(), &dir.path().join("manifests"));
        copy_tree(&w.lab.dir().join("state"), &dir.path().join("state"));
        let toml = dir.path().join("manifests/controlplane.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let state = text.lines().find(|l| l.starts_with("state = ")).unwrap().to_owned();
        let shared = format!(
            "state = \"{}\"\nstate_password_env = \"CP_DB_PASSWORD\"\nlock_lease_secs = 3",
            pg.url("controlplane")
        );
        std::fs::write(&toml, text.replace(&state, &shared)).unwrap();
        // A second service on the same hosts.
        let api = std::fs::read_to_string(dir.path().join("manifests/services/api.toml")).unwrap();
        std::fs::write(dir.path().join("manifests/services/web.toml"), api.replace("/demo/api", "/demo/web")).unwrap();
        Self { dir, operator: format!("cp{n}") }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--manifests")
            .arg(self.dir.path().join("manifests"))
            .args(args)
            .current_dir(self.dir.path())
            .env("COSIGN_PASSWORD", "")
            .env("USER", &self.operator)
            .env("CP_DB_PASSWORD", postgres::PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    fn receipts(&self) -> PathBuf {
        self.dir.path().join("receipts")
    }
}

fn promote(service: &str, env: &str, digest: &str) -> Vec<String> {
    ["promote", service, "--env", env, "--release", digest, "--apply"].map(str::to_owned).to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_control_planes_share_one_lock_and_one_chain() {
    let w = World::start(fleet(1)).await;
    let pg = Postgres::start().unwrap();
    pg.create_database("controlplane").unwrap();
    let cps: Vec<ControlPlane> = (1..=3).map(|n| ControlPlane::new(&w, &pg, n)).collect();

    // CI (control plane 1) records the releases; every control plane can promote them.
    let api1 = w.signed_image("demo/api", "api v1").await;
    let web1 = w.signed_image("demo/web", "web v1").await;
    assert_ok(&cps[0].run(&["release", "add", "api", &s(&api1), "--commit", COMMIT]));
    assert_ok(&cps[0].run(&["release", "add", "web", &s(&web1), "--commit", COMMIT]));

    // 1. Different services at once, from different control planes: both succeed.
    let a = cps[1].spawn(&args(&promote("api", "staging", api1.digest.as_str())));
    let b = cps[2].spawn(&args(&promote("web", "staging", web1.digest.as_str())));
    assert_ok(&a.wait_with_output().unwrap());
    assert_ok(&b.wait_with_output().unwrap());

    // 2. One service from all three at once: one winner, two refusals naming it.
    let api2 = w.signed_image("demo/api", "api v2").await;
    assert_ok(&cps[0].run(&["release", "add", "api", &s(&api2), "--commit", COMMIT]));
    w.runtime("stage-1", "hang-activate", "4");
    let racers: Vec<Child> =
        cps.iter().map(|cp| cp.spawn(&args(&promote("api", "staging", api2.digest.as_str())))).collect();
    let outs: Vec<Output> = racers.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    w.clear_runtime("stage-1", "hang-activate");
    let winners: Vec<usize> = (0..3).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(winners.len(), 1, "{:?}", outs.iter().map(|o| (o.status.code(), stderr(o))).collect::<Vec<_>>());
    let winner = &cps[winners[0]].operator;
    // A loser that reaches the lock while the winner holds it is refused naming the
    // holder; one that took its plan before the winner moved the host and reaches the
    // lock after the winner finished is refused as stale. Both are refusals (exit 4);
    // which one a loser meets depends on the scheduler, never on correctness.
    for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
        assert_eq!(out.status.code(), Some(4), "cp{}: {}", i + 1, stderr(out));
        let err = stderr(out);
        if err.contains("is stale") {
            assert!(
                err.contains(&format!(
                    "is `releases/{}",
                    w.current("stage-1").unwrap().trim_start_matches("releases/")
                )),
                "cp{}: {err}",
                i + 1
            );
        } else {
            assert!(err.contains(&format!("is locked by {winner} on")), "cp{}: {err}", i + 1);
            assert!(err.contains("lease until"), "cp{}: {err}", i + 1);
        }
    }
    assert_eq!(w.live_digest("stage-1").as_deref(), Some(api2.digest.as_str()));

    // 3. The holder is SIGKILLed mid-apply: its lease runs out and another control plane
    //    takes the lock over, on the record.
    let api3 = w.signed_image("demo/api", "api v3").await;
    assert_ok(&cps[0].run(&["release", "add", "api", &s(&api3), "--commit", COMMIT]));
    w.runtime("stage-1", "hang-activate", "30");
    let holder = cps[0].spawn(&args(&promote("api", "staging", api3.digest.as_str())));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cps[1].run(&["unlock", "api", "--env", "staging"]);
        if out.status.code() == Some(0) && stdout(&out).contains("locked by cp1") {
            break;
        }
        assert!(Instant::now() < deadline, "cp1 never took the lock: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_process(Pid::from_raw(holder.id() as i32).unwrap(), Signal::KILL).unwrap();
    let killed = holder.wait_with_output().unwrap();
    assert_eq!(killed.status.code(), None, "killed by the signal");
    w.clear_runtime("stage-1", "hang-activate");
    // Right after the kill the lease still runs: the lock is held.
    // Showing the lock is not a failure (exit 0), and says what to do next.
    let shown = cps[1].run(&["unlock", "api", "--env", "staging"]);
    assert_ok(&shown);
    assert!(stdout(&shown).contains("locked by cp1") && stdout(&shown).contains("next:"), "{}", stdout(&shown));
    std::thread::sleep(Duration::from_secs(4));
    let took_over = cps[1].run(&args(&promote("api", "staging", api3.digest.as_str())));
    assert_ok(&took_over);
    assert!(stderr(&took_over).contains("lock taken over by plan"), "{}", stderr(&took_over));
    assert_eq!(w.live_digest("stage-1").as_deref(), Some(api3.digest.as_str()));

    // 4. One unbroken chain: exported by a third control plane, verified offline.
    let export = tempfile::tempdir().unwrap();
    let out = cps[2].run(&["receipts", "export", "--dir", &export.path().display().to_string()]);
    assert_ok(&out);
    let key = cps[2].dir.path().join("manifests/trust/receipts.pub");
    let out = cps[2].run(&[
        "receipts",
        "verify",
        "--dir",
        &export.path().display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    assert_ok(&out);
    assert_ok(&cps[0].run(&["receipts", "verify", "--store"]));
    let mut seqs = Vec::new();
    let mut kinds = Vec::new();
    for e in std::fs::read_dir(export.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".json") {
            let (seq, kind) = stem.split_once('-').unwrap();
            seqs.push(seq.parse::<u64>().unwrap());
            kinds.push(kind.to_owned());
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no duplicate or missing sequence number");
    // api and web to staging, the race's winner and two refusals, the takeover, its apply.
    assert_eq!(kinds.iter().filter(|k| *k == "apply").count(), 4, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "refusal").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "lock-override").count(), 1, "{kinds:?}");
    let override_receipt = std::fs::read_dir(export.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-lock-override.json"))
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(override_receipt).unwrap()).unwrap();
    assert!(body["detail"].as_str().unwrap().contains("the lease of cp1 on"), "{body}");
    assert_eq!(body["operator"], "cp2");
    // Each control plane's own receipts directory is the same chain up to its last append.
    for cp in &cps {
        for e in std::fs::read_dir(cp.receipts()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let name = p.file_name().unwrap();
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(export.path().join(name)).unwrap(),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_migrate_to_postgresql_and_back_loses_nothing() {
    use controlplane::store::{Location, SqlStore, Store as _};
    let w = World::start(fleet(1)).await;
    // A SQLite state with real records: releases, deployments, history, receipts.
    let v1 = w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let sqlite = Location::Sqlite(w.lab.dir().join("state/controlplane.db"));
    let original = SqlStore::open(&sqlite).await.unwrap().dump().await.unwrap();
    assert!(original.receipts.len() >= 3 && !original.history.is_empty(), "{:?}", original.counts());
    let _ = (v1, v2);
    let migrate = |url: &str| {
        Command::new(BIN)
            .arg("--manifests")
            .arg(w.manifests())
            .args(["state", "migrate", "--to", url, "--to-password-env", "CP_DB_PASSWORD"])
            .env("CP_DB_PASSWORD", postgres::PASSWORD)
            .output()
            .unwrap()
    };

    let pg = Postgres::start().unwrap();
    pg.create_database("controlplane").unwrap();
    let url = pg.url("controlplane");
    // A wrong password: refused by the server, and the password appears in no output.
    let wrong = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["state", "migrate", "--to", &url, "--to-password-env", "CP_DB_PASSWORD"])
        .env("CP_DB_PASSWORD", "wrong-s3cret-pw")
        .output()
        .unwrap();
    assert_ne!(wrong.status.code(), Some(0));
    assert!(stderr(&wrong).contains("password authentication failed"), "{}", stderr(&wrong));
    assert!(!stderr(&wrong).contains("wrong-s3cret-pw") && !stdout(&wrong).contains("wrong-s3cret-pw"));
    let out = migrate(&url);
    assert_ok(&out);
    assert!(stdout(&out).contains("every table matches"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(postgres::PASSWORD) && !stderr(&out).contains(postgres::PASSWORD));
    let on_pg = Location::Postgres { url: url.clone(), password: Some(postgres::PASSWORD.into()) };
    let copied = SqlStore::open(&on_pg).await.unwrap().dump().await.unwrap();
    assert_eq!(copied.differences(&original), Vec::<String>::new());

    // A second migration into the same (now full) database is refused and changes nothing.
    let again = migrate(&url);
    assert_exit(&again, 4, "not empty");
    assert_eq!(SqlStore::open(&on_pg).await.unwrap().dump().await.unwrap(), copied);

    // A control plane on PostgreSQL goes on from there, and migrates back to SQLite.
    let cp = ControlPlane::new(&w, &pg, 1);
    assert_ok(&cp.run(&["receipts", "verify", "--store"]));
    let back = cp.dir.path().join("back/controlplane.db");
    let out = cp.run(&["state", "migrate", "--to", &format!("sqlite:{}", back.display())]);
    assert_ok(&out);
    let round_trip = SqlStore::open(&Location::Sqlite(back)).await.unwrap().dump().await.unwrap();
    assert_eq!(round_trip.differences(&original), Vec::<String>::new());
    assert_eq!(round_trip.receipts.last().map(|r| &r.index), original.receipts.last().map(|r| &r.index), "chain heads");
    // The source was only read.
    assert_eq!(SqlStore::open(&sqlite).await.unwrap().dump().await.unwrap(), original);
}

/// The store stops in the middle of an apply (lease 3 s, renewed every second) while the
/// canary host activates (5 s): the run cannot renew its lease, and from the moment it can
/// no longer count on it no host step forward starts — the canary's health check never
/// runs, so the canary goes back (to nothing: it had no release), and the hosts after it
/// are never touched. When the store is back, the run's receipt says why it stopped.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_that_loses_its_store_starts_no_host_step_after_its_lease() {
    let w = World::start(lab::LabConfig { hosts: 3, staging: 3, ..fleet(0) }).await;
    let pg = Postgres::start().unwrap();
    pg.create_database("controlplane").unwrap();
    let cp = ControlPlane::new(&w, &pg, 1);
    let v1 = w.signed_image("demo/api", "api v1").await;
    assert_ok(&cp.run(&["release", "add", "api", &s(&v1), "--commit", COMMIT]));
    w.runtime("stage-1", "hang-activate", "5");
    let run = cp.spawn(&args(&promote("api", "staging", v1.digest.as_str())));
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.current("stage-1").is_none() {
        assert!(Instant::now() < deadline, "stage-1 never swapped");
        std::thread::sleep(Duration::from_millis(20));
    }
    // stage-1 swapped and is activating: the store goes away.
    pg.stop();
    std::thread::sleep(Duration::from_secs(8));
    for h in ["stage-2", "stage-3"] {
        assert_eq!(w.current(h), None, "{h} was touched after the store stopped");
    }
    pg.start_again().unwrap();
    let out = run.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.current("stage-1"), None, "the canary's health check never started; it went back");
    for h in ["stage-2", "stage-3"] {
        assert_eq!(w.current(h), None, "{h} was never touched");
        assert!(!w.lab.host(h).runtime().join("api.log").exists(), "{h} never activated");
    }
    let receipts = cp.run(&["receipts", "list", "--json"]);
    assert_ok(&receipts);
    let list: serde_json::Value = serde_json::from_slice(&receipts.stdout).unwrap();
    let last = list.as_array().unwrap().last().unwrap().to_string();
    assert!(last.contains("interrupted"), "{last}");
    assert!(last.contains("the lock's lease could not be renewed before it expires"), "{last}");
    assert!(last.contains("not started: the lock's lease"), "the canary's detail: {last}");
}
