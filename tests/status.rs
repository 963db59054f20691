//! `status` against the lab: each class is produced by really changing a host.

mod common;

use common::*;

fn row<'a>(doc: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    doc["hosts"].as_array().unwrap().iter().find(|r| r["host"] == host).unwrap_or_else(|| panic!("no row for {host}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_class_is_detected_from_the_host_itself() {
    let mut w = World::start(fleet(6)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let old = w.current("prod-1").unwrap();
    w.deploy("v2", &["staging", "prod"]).await;
    let out = w.agentctl(&["status"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("7 in sync"), "{}", stdout(&out));

    let dir = w.lab.dir().to_path_buf();
    let root = |h: &str| dir.join("hosts").join(h).join("root/api");
    // prod-1: `current` repointed at the previous release.
    let link = root("prod-1").join("current");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&old, &link).unwrap();
    // prod-2: a file of the live release edited.
    let live = root("prod-2").join(w.current("prod-2").unwrap());
    std::fs::write(live.join("config/api.env"), "IMAGE=evil\n").unwrap();
    // prod-3: the runtime runs something else.
    w.runtime("prod-3", "report", "sha256:1111111111111111111111111111111111111111111111111111111111111111");
    // prod-4: `current` deleted.
    std::fs::remove_file(root("prod-4").join("current")).unwrap();
    // prod-5: `current` pointed outside the releases directory.
    let link = root("prod-5").join("current");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../etc", &link).unwrap();
    // prod-6: sshd stopped.
    w.lab.stop_host("prod-6");
    // stage-1: its host key changed (the manifests pin another key).
    let env = w.manifests().join("environments/staging.toml");
    let text = std::fs::read_to_string(&env).unwrap();
    let other_key = w.lab.host("prod-1").host_key.clone();
    std::fs::write(&env, text.replace(&w.lab.host("stage-1").host_key, &other_key)).unwrap();

    let out = w.agentctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |host: &str, status: &str, needle: &str| {
        let r = row(&doc, host);
        assert_eq!(r["status"], status, "{host}: {r}");
        assert!(r.to_string().contains(needle), "{host}: expected `{needle}` in {r}");
    };
    check("prod-1", "drifted", "symlink target");
    check("prod-2", "tampered", "is not what was applied");
    check("prod-3", "drifted", "sha256:1111");
    check("prod-4", "missing", "no `current`");
    check("prod-5", "tampered", "../../etc");
    check("prod-6", "unreachable", "refused the connection");
    check("stage-1", "unreachable", "SECURITY");
    assert_eq!(row(&doc, "stage-1")["security"], true);

    let out = w.agentctl(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    let table = stdout(&out);
    assert!(table.contains("0 in sync, 2 drifted, 1 missing, 2 tampered, 2 unreachable"), "{table}");
    assert!(stderr(&out).contains("security incident"), "{}", stderr(&out));
    // Nothing extra on a pipe: no progress indicator in the captured output.
    assert!(!stderr(&out).contains("probing"));

    // A malformed release.json is tampering too.
    let live = root("prod-2").join(w.current("prod-2").unwrap());
    std::fs::write(live.join("release.json"), "{not json").unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&w.agentctl(&["status", "--env", "prod", "--json"]).stdout).unwrap();
    assert_eq!(row(&doc, "prod-2")["status"], "tampered");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_filters_by_environment_and_service() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let out = w.agentctl(&["status", "--env", "staging", "api"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("1 probed: 1 in sync"), "{}", stdout(&out));
    // prod has nothing recorded and nothing live: not deployed, which is not drift.
    assert_ok(&w.agentctl(&["status", "--env", "prod"]));
    assert_exit(&w.agentctl(&["status", "--env", "qa"]), 2, "no environment `qa`");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_only_what_changed() {
    use std::io::{BufRead as _, BufReader};
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let mut child = std::process::Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["status", "--env", "staging", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first round prints the whole table, ending with its summary line.
    let first: Vec<String> = lines.by_ref().map(Result::unwrap).take_while(|l| !l.contains("probed:")).collect();
    assert!(first.iter().any(|l| l.contains("stage-1") && l.contains("in-sync")), "{first:?}");
    w.runtime("stage-1", "report", "sha256:2222222222222222222222222222222222222222222222222222222222222222");
    let change = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(change.contains("staging/api/stage-1: in-sync -> drifted"), "{change}");
    assert!(change.contains("sha256:2222"), "{change}");
}

/// Regression: the content hash covered regular files' bytes only, so `chmod 4777` on a
/// live file stayed `in-sync`, and a symlink to `/etc/shadow` plus a setuid file added to a
/// rollback target passed as intact (`rollback --apply` exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn modes_links_and_extra_entries_are_tampering_live_and_break_the_way_back() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::start(fleet(3)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let v1 = w.current("prod-1").unwrap();
    let dir = w.lab.dir().to_path_buf();
    let release = |h: &str, r: &str| dir.join("hosts").join(h).join("root/api").join(r);
    // Live tampering, one kind per host.
    let f = release("prod-1", &v1).join("config/api.env");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4777)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", release("prod-2", &v1).join("shadow")).unwrap();
    std::fs::create_dir(release("prod-3", &v1).join("extra")).unwrap();
    let out = w.agentctl(&["status", "--env", "prod", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in ["prod-1", "prod-2", "prod-3"] {
        assert_eq!(row(&doc, h)["status"], "tampered", "{h}: {}", row(&doc, h));
    }
    // Repaired, v2 promoted: now v1 is the way back, and a tampered v1 is not intact.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(release("prod-2", &v1).join("shadow")).unwrap();
    std::fs::remove_dir(release("prod-3", &v1).join("extra")).unwrap();
    assert_ok(&w.agentctl(&["status", "--env", "prod"]));
    w.deploy("v2", &["staging", "prod"]).await;
    std::os::unix::fs::symlink("/etc/shadow", release("prod-2", &v1).join("shadow")).unwrap();
    let out = w.agentctl(&["rollback", "api", "--env", "prod", "--apply"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("host `prod-2`") && err.contains("content identity"), "{err}");
    assert_ne!(w.current("prod-1").as_deref(), Some(v1.as_str()), "nothing rolled back");
}

/// 100 services on one host whose sshd keeps OpenSSH's default limits (`MaxStartups
/// 10:30:100` drops connections beyond ten starting at once): `status` opens one
/// connection to a host at a time, so none is dropped — ten runs without an unreachable row.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_services_on_one_host_are_probed_one_connection_at_a_time() {
    let w = World::start(fleet(0)).await;
    w.lab.sshd_defaults("stage-1").unwrap();
    let services = w.manifests().join("services");
    let api = std::fs::read_to_string(services.join("api.toml")).unwrap();
    for i in 1..100 {
        std::fs::write(services.join(format!("svc-{i:03}.toml")), &api).unwrap();
    }
    for run in 1..=10 {
        let out = w.agentctl(&["status", "--env", "staging", "--concurrency", "32"]);
        let text = stdout(&out);
        assert!(text.contains("100 probed"), "run {run}: {text}\n{}", stderr(&out));
        assert!(!text.contains("unreachable  "), "run {run}: a probe was dropped:\n{text}");
    }
}
