//! However an apply ends — SIGKILL, SIGINT from a terminal, SIGTERM — every host is on
//! its old or its new release, no ssh process or temp directory of agentctl's survives
//! it, and a rerun converges. And what an untrusted workload prints never reaches the
//! terminal or a receipt raw.

mod common;

use common::*;
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line names `dir` (agentctl's ssh masters, clients and guard
/// all name their run directory, which lives under the TMPDIR the test gave).
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            cmd.windows(needle.len())
                .any(|w| w == needle.as_slice())
                .then(|| String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Waits (bounded) until no process names `tmp` and `tmp` is empty.
fn assert_nothing_left(tmp: &Path, case: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_naming(tmp);
        let files: Vec<_> = std::fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        if procs.is_empty() && files.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{case}: left behind: processes {procs:#?}, files {files:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    Kill,
    /// Ctrl-C on a terminal: SIGINT to the whole process group.
    TerminalInterrupt,
    Term,
}

#[tokio::test(flavor = "multi_thread")]
async fn however_an_apply_ends_hosts_are_old_or_new_nothing_survives_and_a_rerun_converges() {
    let w = World::start(fleet(3)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let old = w.current("prod-1").unwrap();
    let dry = w.agentctl(&["--json", "promote", "api", "--env", "prod", "--release", v2.digest.as_str()]);
    assert_ok(&dry);
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let new = format!("releases/{}", plan["plan"]["release"]["release_id"].as_str().unwrap());
    // Two points: during the canary's health check, and during the second batch's activation.
    let points = [("prod-1", "hang-health"), ("prod-2", "hang-activate")];
    let endings = [Ending::Kill, Ending::TerminalInterrupt, Ending::Term];
    for ((host, control), ending) in points.iter().flat_map(|p| endings.iter().map(move |e| (*p, *e))) {
        let case = format!("{ending:?} during {host} {control}");
        let tmp = tempfile::tempdir().unwrap();
        // The step takes 3 s: the signal arrives while the host is moving.
        w.runtime(host, control, "3");
        let mut cmd = Command::new(BIN);
        cmd.arg("--manifests")
            .arg(w.manifests())
            .args(["promote", "api", "--env", "prod", "--release", v2.digest.as_str(), "--apply"])
            .env("TMPDIR", tmp.path())
            .env("COSIGN_PASSWORD", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while w.current(host).as_deref() == Some(old.as_str()) {
            assert!(Instant::now() < deadline, "{case}: apply never swapped {host}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!processes_naming(tmp.path()).is_empty(), "{case}: the run's ssh processes are findable");
        match ending {
            Ending::Kill => kill_process(pid, Signal::KILL).unwrap(),
            Ending::TerminalInterrupt => kill_process_group(pid, Signal::INT).unwrap(),
            Ending::Term => kill_process(pid, Signal::TERM).unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{case}: exits non-zero");
        w.clear_runtime(host, control);
        assert_nothing_left(tmp.path(), &case);
        // A killed run's remote step may still be running on the host (sshd does not stop
        // it): the rerun starts once it has ended, or it would race the rerun's read-back of
        // what runs (seen once in ten runs: "the runtime reports … running, not …").
        let deadline = Instant::now() + Duration::from_secs(30);
        while !processes_naming(&w.lab.host(host).root()).is_empty() {
            assert!(Instant::now() < deadline, "{case}: the remote step never ended");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every host is on its old or its new release.
        for h in ["prod-1", "prod-2", "prod-3"] {
            let c = w.current(h).unwrap();
            let complete = w.lab.host(h).root().join("api").join(&c).join("release.json").is_file();
            assert!((c == old || c == new) && complete, "{case}: {h} on {c}");
        }
        match ending {
            Ending::Kill => {
                assert_exit(&w.promote("prod", &v2, &["--apply"]), 4, "the holder is gone (no process");
                assert_ok(&w.agentctl(&["unlock", "api", "--env", "prod", "--force"]));
            }
            Ending::TerminalInterrupt | Ending::Term => {
                let last = w.receipts().last().unwrap().clone();
                assert_eq!(last["outcome"], "interrupted", "{case}: {last}");
                assert!(stderr(&out).contains("interrupted"), "{case}: {}", stderr(&out));
                assert_eq!(w.current("prod-3").as_deref(), Some(old.as_str()), "{case}: no further host started");
            }
        }
        // A rerun converges; then back to v1 for the next case.
        assert_ok(&w.promote("prod", &v2, &["--apply"]));
        assert_ok(&w.agentctl(&["status", "--env", "prod"]));
        // The way back is what was recorded, whatever the interruption left live.
        assert_ok(&w.agentctl(&["rollback", "api", "--env", "prod", "--apply"]));
        for h in ["prod-1", "prod-2", "prod-3"] {
            assert_eq!(w.current(h).as_deref(), Some(old.as_str()), "{case}: {h} rolled back");
        }
    }
    assert_ok(&w.agentctl(&["receipts", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_failing_health_check_prints_reaches_no_terminal_log_or_receipt_raw() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    let token = "ghp_0123456789abcdefABCDEF0123456789";
    w.runtime("stage-1", "fail-health", &format!("\x1b]0;owned\x07\x1b[2J\x1b[31mtoken {token} leaked\x1b[0m"));
    let out = w.agentctl(&["-v", "promote", "api", "--env", "staging", "--release", img.digest.as_str(), "--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let receipts = std::fs::read_dir(w.lab.dir().join("receipts"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .concat();
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr), ("receipts", &receipts)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(token), "{what} holds the token:\n{text}");
        assert!(!bytes.contains(&0x1b) && !text.contains("\\u001b"), "{what} holds an escape:\n{text}");
    }
    assert!(stderr(&out).contains("token [redacted] leaked"), "{}", stderr(&out));
}

/// Regression: kill an apply after a host's `current` was swapped but before it was
/// recorded, rerun with that host unhealthy: the plan offered the unrecorded release as
/// the way back, the host "rolled back" onto it, and the receipt said `rolled-back` with
/// before = after.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_then_an_unhealthy_rerun_ends_on_the_release_recorded_before_the_rollout() {
    let w = World::start(fleet(2)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let old = w.current("prod-1").unwrap();
    w.runtime("prod-1", "hang-health", "30");
    let mut child = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["promote", "api", "--env", "prod", "--release", v2.digest.as_str(), "--apply"])
        .env("COSIGN_PASSWORD", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.current("prod-1").as_deref() == Some(old.as_str()) {
        assert!(Instant::now() < deadline, "apply never swapped prod-1");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    w.clear_runtime("prod-1", "hang-health");
    assert_ok(&w.agentctl(&["unlock", "api", "--env", "prod", "--force"]));
    let new = w.current("prod-1").unwrap();
    assert_ne!(new, old, "prod-1 is on v2, unrecorded");

    let plan = w.promote("prod", &v2, &[]);
    assert_ok(&plan);
    let text = stdout(&plan);
    let old_id = old.trim_start_matches("releases/");
    assert!(
        text.lines().any(|l| l.contains("prod-1")
            && l.contains("[unrecorded")
            && l.contains(&format!("(rollback target: {old_id})"))),
        "{text}"
    );
    w.runtime("prod-1", "fail-health", "");
    let out = w.promote("prod", &v2, &["--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(w.current("prod-1"), Some(old.clone()), "back on the release recorded before the rollout");
    let receipt = w.receipts().last().unwrap().clone();
    let host = receipt["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "prod-1").unwrap().clone();
    assert_eq!(host["outcome"], "rolled-back", "{receipt}");
    assert_eq!(host["after"], old_id, "{receipt}");
    assert_ne!(host["before"], host["after"], "{receipt}");
}

/// A second SIGTERM/SIGINT aborts at once (exit 130) instead of waiting for the moving
/// host; the guard still leaves nothing behind. Regression: the abort left no receipt and
/// held the lock — now it ends with an `aborted` receipt and the lock released.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_interrupt_aborts_at_once_and_still_leaves_nothing() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let old = w.current("prod-1").unwrap();
    w.runtime("prod-1", "hang-health", "30");
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["promote", "api", "--env", "prod", "--release", v2.digest.as_str(), "--apply"])
        .env("TMPDIR", tmp.path())
        .env("COSIGN_PASSWORD", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.current("prod-1").as_deref() == Some(old.as_str()) {
        assert!(Instant::now() < deadline, "apply never swapped prod-1");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_process(pid, Signal::TERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let aborted = Instant::now();
    kill_process(pid, Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(aborted.elapsed() < Duration::from_secs(5), "did not wait for the 30 s health check");
    assert!(stderr(&out).contains("aborted by a second interrupt"), "{}", stderr(&out));
    w.clear_runtime("prod-1", "hang-health");
    assert_nothing_left(tmp.path(), "second interrupt");
    let last = w.receipts().last().cloned().unwrap();
    assert_eq!(last["outcome"], "aborted", "{last}");
    assert_eq!(last["hosts"][0]["outcome"], "unknown", "{last}");
    assert!(stderr(&out).contains("records it"), "{}", stderr(&out));
    assert_ok(&w.agentctl(&["receipts", "verify"]));
    // The lock was released: the same promotion runs now and converges.
    assert_ok(&w.promote("prod", &v2, &["--apply"]));
    assert_ne!(w.current("prod-1").unwrap(), old);
}
