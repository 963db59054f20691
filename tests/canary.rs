//! The canary's proof on real containers (Podman golden VMs, busybox apps): a workload
//! that passes its first health check and crashes 5 s later is caught by a 15 s soak on
//! the canary; a failure budget of 1 of 4 hosts halts at the second failing host and
//! returns the host that moved; a pause after the canary, then `resume`, completes; a
//! pause, then `rollback`, returns every moved host.

mod common;

use common::*;
use lab::{Behaviour, LabConfig};

/// staging (stage-1) and prod (prod-1 … prod-4, one host per batch), all on Podman.
fn canary_lab() -> LabConfig {
    LabConfig { hosts: 5, staging: 1, registry: true, dir: None, egress: false, podman: true }
}

const PROD: [&str; 4] = ["prod-1", "prod-2", "prod-3", "prod-4"];

impl World {
    /// Sets prod's `[rollout]` table after `batch = 1` to `fields`.
    fn prod_rollout(&self, fields: &str) {
        let path = self.lab.manifests().join("environments/prod.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = text.split_once("[rollout]\n").unwrap();
        let hosts = &rest[rest.find("[[host]]").unwrap()..];
        std::fs::write(&path, format!("{head}[rollout]\nbatch = 1\nhealth_timeout_secs = 10\n{fields}\n\n{hosts}"))
            .unwrap();
    }

    /// What each prod host's workload serves on `/`.
    fn prod_pages(&self) -> Vec<String> {
        PROD.iter().map(|h| self.page(h)).collect()
    }

    fn last_receipt(&self) -> serde_json::Value {
        self.receipts().pop().unwrap()
    }
}

fn pages(v: &[&str]) -> Vec<String> {
    v.iter().map(|v| format!("api {v}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canary_soaks_a_failure_budget_halts_and_a_pause_resumes_or_rolls_back_on_real_containers() {
    let w = World::start(canary_lab()).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    for env in ["staging", "prod"] {
        assert_ok(&w.promote(env, &v1, &["--apply"]));
    }
    assert_eq!(w.prod_pages(), pages(&["v1"; 4]));

    // 1. A 15 s soak on the canary catches a workload that crashes 5 s after it started
    //    (its first health check passed): the canary goes back, no other host moves.
    let crashes = w.app("v2", Behaviour::CrashesAfter(5), None).await;
    assert_ok(&w.promote("staging", &crashes, &["--apply"]));
    w.prod_rollout("soak_secs = 15\nsoak_interval_secs = 2");
    let plan = w.promote("prod", &crashes, &[]);
    assert_ok(&plan);
    assert!(stdout(&plan).contains("then soak 15s"), "the plan shows the soak: {}", stdout(&plan));
    let started = std::time::Instant::now();
    let out = w.promote("prod", &crashes, &["--apply"]);
    assert_exit(&out, 1, "soak failed");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "caught during the soak, not after it");
    assert_eq!(w.prod_pages(), pages(&["v1"; 4]), "the canary answers v1 again; no other host moved");
    let receipt = w.last_receipt();
    assert_eq!(receipt["outcome"], "failed", "{receipt:#}");
    let hosts = receipt["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["outcome"], "rolled-back", "{receipt:#}");
    assert!(hosts[0]["detail"].as_str().unwrap().starts_with("soak failed: "), "{receipt:#}");
    assert!(hosts[1..].iter().all(|h| h["outcome"] == "untouched"), "{receipt:#}");
    let soak = &receipt["rollout"]["soak"][0];
    assert_eq!((soak["host"].as_str(), soak["batch"].as_u64()), (Some("prod-1"), Some(1)), "{receipt:#}");
    let verdict = soak["verdict"].as_str().unwrap();
    assert!(verdict.contains("the container is") || verdict.contains("health check failed"), "{verdict}");
    assert_ok(&w.agentctl(&["status", "--env", "prod"]));

    // 2. A failure budget of 1 of 4 hosts; prod-2 and prod-3 fail to start the release:
    //    the first is rolled back and the rollout goes on, the second halts it, prod-1
    //    (which moved) goes back, prod-4 never starts.
    let v3 = w.app("v3", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v3, &["--apply"]));
    w.prod_rollout("max_failures = 1");
    for h in ["prod-2", "prod-3"] {
        w.lab.mark_failing(h, true).unwrap();
    }
    let out = w.promote("prod", &v3, &["--apply"]);
    assert_exit(&out, 5, "halted: failure budget spent (2 host(s) failed; the budget is 1)");
    assert_eq!(w.prod_pages(), pages(&["v1"; 4]));
    let receipt = w.last_receipt();
    assert_eq!(receipt["outcome"], "halted", "{receipt:#}");
    let outcomes: Vec<&str> =
        receipt["hosts"].as_array().unwrap().iter().map(|h| h["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["returned", "rolled-back", "rolled-back", "untouched"], "{receipt:#}");
    assert_eq!(receipt["rollout"]["failures"], serde_json::json!({ "failed": 2, "max": 1 }));
    let status = w.agentctl(&["status", "--env", "prod"]);
    assert!(stdout(&status).contains("rollout of `api` in `prod` HALTED"), "{}", stdout(&status));
    for h in ["prod-2", "prod-3"] {
        w.lab.mark_failing(h, false).unwrap();
    }

    // 3. A pause after the canary: the apply stops there (exit 0, lock released), status
    //    and watch show it; `resume PLAN.json` completes the rollout.
    w.prod_rollout("pause_after = \"canary\"");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.json");
    let file = file.to_str().unwrap();
    assert_ok(&w.promote("prod", &v3, &["--out", file]));
    let out = w.agentctl(&["apply", file]);
    assert_ok(&out);
    assert!(stdout(&out).contains("plan sha256:") && stdout(&out).contains(": paused"), "{}", stdout(&out));
    assert!(stdout(&out).contains("agentctl resume PLAN.json"), "{}", stdout(&out));
    assert_eq!(w.prod_pages(), pages(&["v3", "v1", "v1", "v1"]));
    let status = w.agentctl(&["status", "--env", "prod"]);
    assert_ok(&status);
    assert!(
        stdout(&status).contains("rollout of `api` in `prod` PAUSED: paused after the canary"),
        "{}",
        stdout(&status)
    );
    let watch = watch_until(&w, "\"to\":\"rollout-paused\"");
    assert!(watch.contains("paused after the canary"), "{watch}");
    let out = w.agentctl(&["resume", file]);
    assert_ok(&out);
    assert_eq!(w.prod_pages(), pages(&["v3"; 4]));
    let receipt = w.last_receipt();
    assert_eq!(receipt["outcome"], "succeeded", "{receipt:#}");
    assert!(receipt["rollout"]["resumed_from"].as_str().unwrap().ends_with("-apply.json"), "{receipt:#}");
    assert_exit(&w.agentctl(&["resume", file]), 2, "cannot be resumed");

    // 4. A pause, then `rollback`: every moved host returns; the others never moved.
    let v4 = w.app("v4", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v4, &["--apply"]));
    w.prod_rollout("pause_after = 1");
    assert_ok(&w.promote("prod", &v4, &["--out", file]));
    assert_ok(&w.agentctl(&["apply", file]));
    assert_eq!(w.prod_pages(), pages(&["v4", "v3", "v3", "v3"]));
    let out = w.agentctl(&["rollback", "api", "--env", "prod", "--apply"]);
    assert_ok(&out);
    assert_eq!(w.prod_pages(), pages(&["v3"; 4]));
    let receipt = w.last_receipt();
    let outcomes: Vec<&str> =
        receipt["hosts"].as_array().unwrap().iter().map(|h| h["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["changed", "unchanged", "unchanged", "unchanged"], "{receipt:#}");
    assert_exit(&w.agentctl(&["resume", file]), 2, "came after it");
}

/// `agentctl watch --json` over prod until a line holds `needle` (or 30 s pass); that
/// line. The watch is stopped with SIGTERM either way.
fn watch_until(w: &World, needle: &str) -> String {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["--json", "watch", "--env", "prod", "--interval", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("no watch line with {needle} in 30 s: {seen:#?}"))
}
