//! Every user-visible output of the deploy path, pinned as text snapshots of the real
//! binary against the lab: plans (text and JSON), apply reports, the status table, and
//! the `error:` / `hint:` layout of each refusal class. Filters replace what differs
//! from run to run (digests, release and plan ids, ports, temp paths, times, pids,
//! key ids) with placeholders.

#[macro_use]
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_path_as_an_operator_sees_it() {
    let w = World::start(fleet(2)).await;
    let v1 = w.release("v1").await;

    snap!("plan_text", shown(&w.promote("staging", &v1, &[])));
    let json = w.agentctl(&["--json", "promote", "api", "--env", "staging", "--release", v1.digest.as_str()]);
    snap!("plan_json", shown(&json));
    snap!("apply_report", shown(&w.promote("staging", &v1, &["--apply"])));
    // The apply receipt names what carried the signature (cosign 3's bundle, the default).
    let receipts = w.receipts();
    let applied = receipts.iter().rev().find(|r| r["kind"] == "apply").expect("an apply receipt");
    assert!(applied["release"]["signature"].as_str().is_some_and(|s| s.starts_with("bundle sha256:")), "{applied}");
    snap!("status_in_sync", shown(&w.agentctl(&["status", "--env", "staging"])));

    // Refusals, each with its layout.
    let v2 = w.release("v2-unstaged").await;
    snap!("refused_gate", shown(&w.promote("prod", &v2, &["--apply"])));
    let unsigned = w.lab.push_image("demo/api", "unsigned", "unsigned").await.unwrap();
    snap!("refused_unsigned", shown(&w.agentctl(&["verify", &unsigned.to_string()])));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let path = path.to_str().unwrap();
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 1\napprovers = \"trust/prod.allowed_signers\"", 1),
    )
    .unwrap();
    std::fs::write(
        w.manifests().join("trust/prod.allowed_signers"),
        "carol ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILhqBR2WieBUf41zC9+tDzOZVjQZwEvY+3xbct3E4vNn\n",
    )
    .unwrap();
    let v3 = w.deploy("v3", &["staging"]).await;
    assert_ok(&w.promote("prod", &v3, &["--out", path]));
    let saved = std::fs::read_to_string(path).unwrap();
    let mut edited: serde_json::Value = serde_json::from_str(&saved).unwrap();
    edited["plan"]["approvals_required"] = 0.into();
    edited["plan"]["health_timeout_secs"] = 1.into();
    edited["plan"]["batches"] = serde_json::json!([["prod-1", "prod-2", "prod-9"]]);
    let forged: controlplane::plan::Plan = serde_json::from_value(edited["plan"].clone()).unwrap();
    edited["plan_id"] = forged.id().to_string().into();
    std::fs::write(path, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    snap!("refused_tampered_plan", shown(&w.agentctl(&["apply", path])));

    std::fs::write(path, &saved).unwrap();
    snap!("refused_no_approval", shown(&w.agentctl(&["apply", path])));
    w.runtime("prod-1", "report", "sha256:0000000000000000000000000000000000000000000000000000000000000000");
    snap!("refused_stale_plan", shown(&w.agentctl(&["apply", path])));
    snap!("refused_stale_plan_json", shown(&w.agentctl(&["--json", "apply", path])));
    w.clear_runtime("prod-1", "report");
    w.runtime("stage-1", "report", "sha256:0000000000000000000000000000000000000000000000000000000000000000");
    snap!("status_drifted", shown(&w.agentctl(&["status", "--env", "staging"])));
    w.clear_runtime("stage-1", "report");

    std::fs::write(path, "{\n  \"plan_id\": \"x\",\n  \"plan\": 7\n}\n").unwrap();
    snap!("invalid_plan_file", shown(&w.agentctl(&["apply", path])));

    // A failed rollout: the report names each host.
    w.runtime("stage-1", "fail-health", "health: 503 from /healthz");
    let v4 = w.release("v4").await;
    snap!("apply_failed", shown(&w.promote("staging", &v4, &["--apply"])));
    w.clear_runtime("stage-1", "fail-health");

    snap!("receipts_list", shown(&w.agentctl(&["receipts", "list"])));

    // Invalid manifests: one problem per line (this caught a literal `\n` once).
    let env = w.manifests().join("environments/staging.toml");
    let text = std::fs::read_to_string(&env).unwrap();
    std::fs::write(&env, text.replace("approvals = 0", "approvals = -1\nbogus = true")).unwrap();
    snap!("invalid_manifests", shown(&w.promote("staging", &v1, &[])));
}

/// The messages that say what happens next (#28): a saved plan and the commands that take
/// it further, an applied plan applied again, a public key given to `approve`, an approval
/// by the plan's own author, every
/// unknown field of a file with what it probably meant, and a rollback that moves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn what_happens_next_is_said() {
    let w = World::start(fleet(1)).await;
    let keys = tempfile::tempdir().unwrap();
    let tester = keys.path().join("tester");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tester", "-f"])
        .arg(&tester)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(tester.with_extension("pub")).unwrap();
    let line = format!("tester {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    std::fs::write(w.manifests().join("trust/prod.allowed_signers"), format!("{line}\n")).unwrap();
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 1\napprovers = \"trust/prod.allowed_signers\"", 1),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let path = path.to_str().unwrap();
    let v1 = w.release("v1").await;
    snap!("saved_plan", shown(&w.promote("staging", &v1, &["--out", path])));
    assert_ok(&w.agentctl(&["apply", path]));
    snap!("already_applied", shown(&w.agentctl(&["apply", path])));

    assert_ok(&w.promote("prod", &v1, &["--out", path]));
    let public = tester.with_extension("pub");
    snap!("approve_with_a_public_key", shown(&w.agentctl(&["approve", path, "--key", public.to_str().unwrap()])));
    snap!("author_approval", shown(&w.agentctl(&["approve", path, "--key", tester.to_str().unwrap()])));

    snap!("nothing_to_roll_back", shown(&w.agentctl(&["rollback", "api", "--env", "staging", "--to", "r-"])));

    let service = w.manifests().join("services/api.toml");
    let text = std::fs::read_to_string(&service).unwrap();
    std::fs::write(&service, format!("repostory = \"x\"\n{text}\nhelth_timeout = 3\n\n[runtim]\nkind = \"podman\"\n"))
        .unwrap();
    snap!("every_unknown_field", shown(&w.agentctl(&["check"])));
}

/// The canary's proof as an operator sees it: the plan with its soak, failure budget and
/// pause point, the paused apply, the paused rollout in `status`, the resume, and a
/// resume that is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_rollout_as_an_operator_sees_it() {
    let w = World::start(fleet(3)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    let canary =
        "health_timeout_secs = 10\nsoak_secs = 2\nsoak_interval_secs = 1\nmax_failures = 1\npause_after = \"canary\"\n";
    std::fs::write(&prod, text.replacen("health_timeout_secs = 10\n", canary, 1)).unwrap();
    let v2 = w.deploy("v2", &["staging"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let path = path.to_str().unwrap();
    snap!("canary_plan", shown(&w.promote("prod", &v2, &["--out", path])));
    snap!("canary_paused", shown(&w.agentctl(&["apply", path])));
    snap!("canary_status_paused", shown(&w.agentctl(&["status", "--env", "prod"])));
    snap!("canary_resumed", shown(&w.agentctl(&["resume", path])));
    snap!("canary_resume_refused", shown(&w.agentctl(&["resume", path])));
}
