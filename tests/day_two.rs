//! Day two on a fleet the control plane did not build or no longer matches: releases it has
//! no record of (adopted, after verification), hosts re-imaged under the same name
//! (forgotten, on the record), and bad names given to either.

mod common;

use common::*;

fn hosts_only(
    snap: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    snap.into_iter().filter(|(p, _)| p.components().any(|c| c.as_os_str() == "hosts")).collect()
}

/// The control plane forgets everything (a fresh state database and receipts directory).
fn fresh_state(w: &World) {
    for f in ["controlplane.db", "controlplane.db-wal", "controlplane.db-shm"] {
        let _ = std::fs::remove_file(w.lab.dir().join("state").join(f));
    }
    let _ = std::fs::remove_dir_all(w.lab.dir().join("receipts"));
    std::fs::create_dir_all(w.lab.dir().join("receipts")).unwrap();
}

/// A host runs r1, which a fresh state has no record of. Promoting r2, whose health check
/// fails, would leave it with nothing: refused before any host changes, naming the host and
/// `adopt`. `adopt` (a dry run, then `--apply`) verifies r1 and records it; the same
/// promotion then fails on its health check and the host goes back to r1, which runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_unrecorded_release_is_adopted_before_a_rollout_may_fail_over_it() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let r1 = w.current("stage-1").unwrap();
    fresh_state(&w);
    let v2 = w.release("v2").await;
    w.runtime("stage-1", "fail-health", "");

    let before = hosts_only(w.snapshot());
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 4, "the live release of host `stage-1`");
    assert!(stderr(&out).contains("has no record here"), "{}", stderr(&out));
    assert!(stderr(&out).contains("agentctl adopt api --env staging"), "{}", stderr(&out));
    assert_same(&before, &hosts_only(w.snapshot()), "the refusal changes no host");

    let out = w.agentctl(&["adopt", "api", "--env", "staging"]);
    assert_ok(&out);
    let id = r1.trim_start_matches("releases/");
    assert!(stdout(&out).contains(&format!("+ adopt {id}: {v1}")), "{}", stdout(&out));
    assert!(stdout(&out).contains("nothing was recorded"), "{}", stdout(&out));
    assert_exit(&w.promote("staging", &v2, &[]), 4, "has no record here");

    let out = w.agentctl(&["adopt", "api", "--env", "staging", "--apply"]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("adopted {id}")), "{}", stdout(&out));
    assert_eq!(w.receipts().last().unwrap()["kind"], "adoption");
    let out = w.agentctl(&["adopt", "api", "--env", "staging"]);
    assert!(stdout(&out).contains(&format!("already recorded: {id}")), "{}", stdout(&out));

    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 1, "failed");
    assert_eq!(w.current("stage-1").unwrap(), r1, "back on the adopted release");
    let running = std::fs::read_to_string(w.lab.host("stage-1").runtime().join("api.running")).unwrap();
    assert_eq!(running.trim(), v1.digest.as_str(), "and it runs");
    assert_ok(&w.agentctl(&["receipts", "verify"]));
}

/// What cannot be verified cannot be adopted: a live release whose image is signed by no
/// trusted key is refused, saying why, and nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_whose_image_does_not_verify_is_not_adopted() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    fresh_state(&w);
    // The trust policy no longer holds the key that signed v1.
    let trust = w.manifests().join("trust/release.pub");
    let other = controlplane::keys::SigningKey::generate().unwrap();
    std::fs::write(&trust, other.public().pem()).unwrap();
    let out = w.agentctl(&["adopt", "api", "--env", "staging", "--apply"]);
    assert_exit(&out, 4, "cannot be adopted");
    assert!(stderr(&out).contains("host `stage-1`: its image does not verify"), "{}", stderr(&out));
    let receipts = std::fs::read_dir(w.lab.dir().join("receipts")).unwrap().count();
    assert_eq!(receipts, 0, "nothing recorded, not even a receipt");
}

/// A host re-imaged under the same name (its runtime root gone): every promotion is refused
/// "the way back is broken", naming `host forget`; forgetting (a dry run, then `--apply`,
/// with a receipt naming what was recorded) lets the next promotion treat it as new.
#[tokio::test(flavor = "multi_thread")]
async fn a_re_imaged_host_is_forgotten_and_then_promoted_to() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let r1 = w.current("stage-1").unwrap();
    let vm = w.lab.host("stage-1");
    std::fs::remove_dir_all(vm.root().join("api")).unwrap();
    for f in ["api.running", "api.log"] {
        let _ = std::fs::remove_file(vm.runtime().join(f));
    }
    let v2 = w.release("v2").await;
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 4, "the way back is broken on host `stage-1`");
    assert!(stderr(&out).contains("agentctl host forget stage-1 --env staging"), "{}", stderr(&out));

    let out = w.agentctl(&["host", "forget", "stage-1", "--env", "staging"]);
    assert_ok(&out);
    let id = r1.trim_start_matches("releases/");
    assert!(stdout(&out).contains(&format!("api          recorded history, oldest first: {id}")), "{}", stdout(&out));
    assert_exit(&w.promote("staging", &v2, &[]), 4, "the way back is broken");

    assert_ok(&w.agentctl(&["host", "forget", "stage-1", "--env", "staging", "--apply"]));
    let last = w.receipts().last().unwrap().clone();
    assert_eq!(last["kind"], "host-forget");
    assert!(last.to_string().contains(id), "the receipt names what was recorded: {last}");
    assert_ok(&w.promote("staging", &v2, &["--apply"]));
    assert_eq!(w.live_digest("stage-1").as_deref(), Some(v2.digest.as_str()));
    let _ = v1;
}

/// `adopt` and `host forget` of a host, service or environment that does not exist: exit 2
/// naming it, nothing written anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn adopt_and_forget_of_unknown_names_change_nothing() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let before = w.snapshot();
    for (args, says) in [
        (vec!["adopt", "api", "--env", "staging", "--host", "stage-9"], "no host `stage-9` in environment `staging`"),
        (vec!["adopt", "nope", "--env", "staging"], "no service `nope`"),
        (vec!["adopt", "api", "--env", "nowhere", "--apply"], "no environment `nowhere`"),
        (
            vec!["host", "forget", "stage-9", "--env", "staging", "--apply"],
            "no host `stage-9` in environment `staging`",
        ),
        (vec!["host", "forget", "stage-1", "--env", "nowhere", "--apply"], "no environment `nowhere`"),
    ] {
        let out = w.agentctl(&args);
        assert_exit(&out, 2, says);
    }
    assert_same(&before, &w.snapshot(), "nothing written");
}
