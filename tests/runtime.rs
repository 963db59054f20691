//! The Podman runtime on golden VMs that really run containers (Podman from Debian, each
//! VM with its own storage and network namespace, images built from Debian's static
//! busybox): what runs answers a real HTTP client, failures roll back to a container
//! that still answers, the sandbox holds from inside, secrets arrive by name only, the
//! way back works with the registry stopped, and what runs is read from Podman.

mod common;

use common::*;
use lab::{Behaviour, LabConfig};
use std::path::Path;

/// staging (stage-1) and prod (prod-1), both on Podman.
fn podman_lab() -> LabConfig {
    LabConfig { hosts: 2, staging: 1, registry: true, dir: None, egress: false, podman: true }
}

impl World {
    /// `podman ARGS` on `host`, as its runtime runs it.
    fn podman(&self, host: &str, args: &[&str]) -> std::process::Output {
        self.lab.host(host).podman(args)
    }

    /// The container of what `current` names on `host`.
    fn container(&self, host: &str) -> String {
        format!("agentctl-api-{}", self.current(host).unwrap().trim_start_matches("releases/"))
    }

    /// Names of every container on `host`'s Podman.
    fn containers(&self, host: &str) -> Vec<String> {
        let out = self.podman(host, &["ps", "-a", "--format", "{{.Names}}"]);
        stdout(&out).lines().map(str::to_owned).collect()
    }
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Every regular file below `dir`, read (what agentctl wrote there).
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Promote → the new version answers; inside the container: not root, a read-only root,
/// no capabilities, the secret in its environment — and its value in nothing agentctl
/// wrote; rollback with the registry stopped starts the old release from local storage.
#[tokio::test(flavor = "multi_thread")]
async fn the_workload_runs_sandboxed_answers_and_rolls_back_without_the_registry() {
    let mut w = World::start(podman_lab()).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    let mut outputs = Vec::new();
    for env in ["staging", "prod"] {
        let out = w.promote(env, &v1, &["--apply"]);
        assert_ok(&out);
        outputs.push(out);
    }
    assert_eq!(w.page("stage-1"), "api v1");
    assert_eq!(w.page("prod-1"), "api v1");
    let status = w.agentctl(&["status"]);
    assert_ok(&status);
    outputs.push(status);

    let v2 = w.app("v2", Behaviour::Healthy, None).await;
    let plan_file = w.lab.dir().join("plan.json");
    let out = w.promote("staging", &v2, &["--out", &plan_file.display().to_string()]);
    assert_ok(&out);
    outputs.push(out);
    let out = w.agentctl(&["apply", &plan_file.display().to_string()]);
    assert_ok(&out);
    outputs.push(out);
    assert_eq!(w.page("stage-1"), "api v2");

    // The sandbox, from inside the running container.
    let c = w.container("stage-1");
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", c.as_str(), "/bin/busybox"];
        all.extend_from_slice(args);
        w.podman("stage-1", &all)
    };
    let uid = stdout(&exec(&["id", "-u"])).trim().to_owned();
    assert!(!uid.is_empty() && uid != "0", "the workload runs as uid {uid:?}");
    let write = exec(&["sh", "-c", "echo x > /written"]);
    assert!(!write.status.success(), "a write to the root filesystem succeeded");
    assert!(stderr(&write).contains("Read-only file system"), "{}", stderr(&write));
    let status = stdout(&exec(&["cat", "/proc/self/status"]));
    assert!(status.lines().any(|l| l == "CapEff:\t0000000000000000"), "{status}");
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    let id = stdout(&w.podman("stage-1", &["inspect", "--format", "{{.Id}}", &c])).trim().to_owned();
    let cgroup = |controller: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/libpod_parent/libpod-{id}/{file}"))
            .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
    };
    assert_eq!(cgroup("memory", "memory.limit_in_bytes").trim(), (256 << 20).to_string(), "memory = \"256m\"");
    assert_eq!(cgroup("pids", "pids.max").trim(), "128", "pids = 128");
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us").trim(), "50000", "cpus = 0.5");
    let env = stdout(&exec(&["env"]));
    assert!(env.lines().any(|l| l == format!("{}={}", lab::podman::SECRET_NAME, lab::podman::SECRET_VALUE)), "{env}");
    assert!(env.lines().any(|l| l == "SERVICE=api"), "the rendered env file is the container's environment: {env}");
    let mounted = stdout(&exec(&["cat", "/etc/agent/config/api.env"]));
    assert!(mounted.contains("SERVICE=api"), "the release directory is mounted read-only at /etc/agent");
    assert!(!exec(&["touch", "/etc/agent/x"]).status.success(), "the release mount is writable");

    // The secret's value is in nothing agentctl wrote or printed.
    let needle = lab::podman::SECRET_VALUE.as_bytes();
    let mut written = files_under(&w.lab.dir().join("receipts"));
    written.extend(files_under(&w.lab.dir().join("state")));
    written.push((plan_file.clone(), std::fs::read(&plan_file).unwrap()));
    for h in &w.lab.info.hosts {
        written.extend(files_under(&h.root()));
    }
    assert!(written.len() > 10, "the search covers receipts, the state, the plan and the release directories");
    for (path, bytes) in &written {
        assert!(!bytes.windows(needle.len()).any(|x| x == needle), "the secret's value is in {}", path.display());
    }
    for out in &outputs {
        let both = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(!both.windows(needle.len()).any(|x| x == needle), "the secret's value was printed");
    }

    // The way back without the registry: v1's image and container are still on the host.
    w.lab.stop_registry();
    let out = w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]);
    assert_ok(&out);
    assert_eq!(w.page("stage-1"), "api v1");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
    let running = stdout(&w.podman("stage-1", &["ps", "--format", "{{.Names}}"]));
    assert_eq!(running.lines().count(), 1, "only the live release runs: {running}");
}

/// A release whose health check fails, and one that exits at start: each rolled back,
/// the old container answers, the receipt says so, and the failed container is gone.
#[tokio::test(flavor = "multi_thread")]
async fn failed_releases_roll_back_to_a_container_that_still_answers() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let before = w.containers("stage-1");

    for (version, behaviour, says) in [
        ("v2", Behaviour::Unhealthy, "GET /healthz answered: HTTP/1.1 404"),
        // Podman reports an exited container as `exited`, or as `stopped` before its cleanup
        // has run (seen once in ten runs): either way, the exit status is the workload's.
        ("v3", Behaviour::ExitsAtStart, "exit status 3)"),
    ] {
        let img = w.app(version, behaviour, None).await;
        let out = w.promote("staging", &img, &["--apply"]);
        assert_exit(&out, 1, "rolled back");
        assert!(stderr(&out).contains(says), "{version}: {}", stderr(&out));
        if version == "v3" {
            assert!(stderr(&out).contains("the container stopped ("), "{}", stderr(&out));
        }
        assert_eq!(w.page("stage-1"), "api v1", "after {version}");
        let receipt = w.receipts().pop().unwrap();
        assert_eq!(receipt["outcome"], "failed", "{receipt:#}");
        let hosts = receipt["hosts"].as_array().unwrap();
        assert_eq!(hosts[0]["outcome"], "rolled-back", "{receipt:#}");
        assert!(hosts[0]["detail"].as_str().unwrap().contains(says), "{receipt:#}");
        assert_eq!(w.containers("stage-1"), before, "the failed container was discarded");
        let text = serde_json::to_string(&receipt).unwrap();
        assert!(!text.contains("exiting at start"), "the workload's own output stays on the host: {text}");
        assert_ok(&w.agentctl(&["status", "--env", "staging"]));
    }
}

/// `retain`: the containers and images of the last `retain` releases stay on a host (the
/// way back without the registry) and older ones are removed with their images; the old
/// release stops before the new one starts (`overlap = false`), and the way back still
/// runs from what was kept.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_last_retain_releases_stay_on_a_host() {
    let mut w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let svc = w.lab.manifests().join("services/api.toml");
    edit(&svc, |t| t.replace("retain = 3 ", "retain = 2 "));
    let digests = |w: &World| stdout(&w.podman("stage-1", &["images", "--digests", "--format", "{{.Digest}}"]));
    let mut images = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        let img = w.app(v, Behaviour::Healthy, None).await;
        assert_ok(&w.promote("staging", &img, &["--apply"]));
        assert_eq!(w.page("stage-1"), format!("api {v}"));
        let running = stdout(&w.podman("stage-1", &["ps", "--format", "{{.Names}}"]));
        assert_eq!(running.lines().collect::<Vec<_>>(), [w.container("stage-1")], "only the live release runs");
        images.push(img);
    }
    let kept = w.containers("stage-1");
    assert_eq!(kept.len(), 2, "retain = 2 keeps the live release and the way back: {kept:?}");
    let present = digests(&w);
    for (i, img) in images.iter().enumerate() {
        let there = present.contains(img.digest.as_str());
        assert_eq!(there, i >= 2, "image of v{} present: {there}\n{present}", i + 1);
    }
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
    w.lab.stop_registry();
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]));
    assert_eq!(w.page("stage-1"), "api v3", "the way back ran from what the host kept");
}

/// An image pinned by the digest of an image index (`docker buildx`'s default) is signed
/// and recorded as the index; the release records the manifest of the service's platform
/// (`[runtime] platform`, default linux/amd64 — not the arm64 entry listed first), the host
/// pulls and runs exactly that manifest, and `status` compares like with like: in sync.
/// Another platform in the manifests runs the other entry; one the index lacks is refused
/// at `release add` and at plan time, naming what the index has.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_index_runs_its_platform_and_is_in_sync() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let amd64 = w.lab.push_app("v1-amd64", "v1", &Behaviour::Healthy, None).await.unwrap();
    let other = w.lab.push_app("v1-arm64", "v1 arm64", &Behaviour::Healthy, None).await.unwrap();
    let index = w.lab.push_index("v1", &[(&other, "linux/arm64"), (&amd64, "linux/amd64")]).await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&index), "--key", &w.release_key()]));
    assert_ok(&w.agentctl(&["release", "add", "api", &s(&index), "--commit", COMMIT]));
    let listed = w.agentctl(&["release", "list", "api", "--json"]);
    assert!(stdout(&listed).contains(amd64.digest.as_str()), "the platform manifest is recorded: {}", stdout(&listed));
    let out = w.promote("staging", &index, &["--apply"]);
    assert_ok(&out);
    assert_eq!(w.page("stage-1"), "api v1", "the linux/amd64 image runs");
    let c = w.container("stage-1");
    let pulled = w.podman("stage-1", &["container", "inspect", "--format", "{{.ImageDigest}}", &c]);
    assert_eq!(stdout(&pulled).trim(), amd64.digest.as_str(), "the host runs the platform manifest itself");
    let status = w.agentctl(&["status", "--env", "staging"]);
    assert_ok(&status);
    assert!(stdout(&status).contains("in sync"), "{}", stdout(&status));

    let svc = w.manifests().join("services/api.toml");
    edit(&svc, |t| t.replacen("[runtime]\n", "[runtime]\nplatform = \"linux/arm64\"\n", 1));
    assert_ok(&w.agentctl(&["release", "add", "api", &s(&index), "--commit", COMMIT]));
    assert_ok(&w.promote("staging", &index, &["--apply"]));
    assert_eq!(w.page("stage-1"), "api v1 arm64", "the manifests choose the platform");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));

    edit(&svc, |t| t.replacen("platform = \"linux/arm64\"", "platform = \"linux/s390x\"", 1));
    let out = w.agentctl(&["release", "add", "api", &s(&index), "--commit", COMMIT]);
    assert_exit(&out, 4, "has no manifest for linux/s390x (it has: linux/arm64, linux/amd64)");
    assert_exit(&w.promote("staging", &index, &[]), 4, "cannot run on the service's platform");
    assert_eq!(w.page("stage-1"), "api v1 arm64", "nothing changed");
}

/// What runs is read from Podman: a container stopped or removed by hand, and one
/// started by hand under the release's name with another image, are drift.
#[tokio::test(flavor = "multi_thread")]
async fn containers_changed_by_hand_are_drift() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let c = w.container("stage-1");
    let status = |class: &str| {
        let out = w.agentctl(&["status", "--env", "staging"]);
        assert_exit(&out, 3, "");
        assert!(stdout(&out).contains(class), "expected `{class}`:\n{}", stdout(&out));
        stdout(&out)
    };

    assert!(w.podman("stage-1", &["stop", "-t", "1", &c]).status.success());
    let text = status("stopped");
    assert!(text.contains("exited"), "{text}");
    let watch = watch_once(&w);
    assert!(watch.contains("stopped"), "the watch reports it too: {watch}");

    assert!(w.podman("stage-1", &["rm", "-f", &c]).status.success());
    let text = status("stopped");
    assert!(text.contains("does not exist"), "{text}");

    // Another image under the release's own name, started by hand.
    let other = w.lab.push_app("other", "other", &Behaviour::Healthy, None).await.unwrap();
    let run = w.podman("stage-1", &["run", "-d", "--name", &c, "--network", "host", &s(&other)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = status("foreign");
    assert!(text.contains("no agentctl labels"), "{text}");
}

/// `agentctl watch` for a few rounds; what it printed.
fn watch_once(w: &World) -> String {
    let mut child = std::process::Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["--json", "watch", "--env", "staging", "--interval", "0.5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    // SIGTERM: the watch stops cleanly.
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    stdout(&out)
}

/// Bad input on a real host: each a clear error naming host and cause, exit non-zero,
/// the host on its old release (still answering), a receipt.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_that_cannot_run_a_release_are_refused_or_rolled_back_with_the_cause() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let svc = w.manifests().join("services/api.toml");
    let receipts = || w.receipts().len();

    // A host whose Podman lacks the secret: refused at plan time, naming host and secret.
    assert!(w.podman("stage-1", &["secret", "rm", lab::podman::SECRET_NAME]).status.success());
    let v2 = w.app("v2", Behaviour::Healthy, None).await;
    let out = w.promote("staging", &v2, &[]);
    assert_exit(&out, 4, "host `stage-1` cannot run `api`: the host's Podman has no secret API_TOKEN");
    assert!(stderr(&out).contains("podman secret create API_TOKEN -"), "{}", stderr(&out));
    let n = receipts();
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 4, "has no secret API_TOKEN");
    assert_eq!(receipts(), n + 1, "the refused apply has its receipt");
    assert_eq!(w.page("stage-1"), "api v1");
    lab::podman::create_secret(
        &w.lab.host("stage-1").dir,
        &w.lab.host("stage-1").netns.as_ref().unwrap().netns,
        lab::podman::SECRET_NAME,
        lab::podman::SECRET_VALUE,
    )
    .unwrap();

    // A release whose container cannot start (its entry point does not exist): rolled
    // back, the cause named, the old container still answering.
    let broken = w.app("broken", Behaviour::NoEntrypoint, None).await;
    let out = w.promote("staging", &broken, &["--apply"]);
    assert_exit(&out, 1, "start failed");
    assert!(stderr(&out).contains("stage-1") && stderr(&out).contains("/bin/nonexistent"), "{}", stderr(&out));
    assert_eq!(w.page("stage-1"), "api v1");

    // An auth file the host does not have: staging stops before any host moves.
    edit(&svc, |t| t.replace("# auth_file = \"/etc/agentctl/auth.json\"", "auth_file = \"/nonexistent/auth.json\""));
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 1, "staging failed on host `stage-1`");
    assert!(
        stderr(&out).contains("the registry auth file /nonexistent/auth.json does not exist on this host"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.page("stage-1"), "api v1");
    edit(&svc, |t| t.replace("auth_file = \"/nonexistent/auth.json\"", "# auth_file = \"/etc/agentctl/auth.json\""));

    // A digest the registry does not have: refused before any host is asked.
    let unknown = format!("{}/demo/api@sha256:{}", w.lab.registry_host(), "0".repeat(64));
    let out = w.agentctl(&["release", "add", "api", &unknown, "--commit", COMMIT]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.page("stage-1"), "api v1");

    // And after all that the host is still on v1, in sync.
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
}

/// Default-deny egress holds for the container: loaded before it starts (its very first
/// instruction is already refused), an allowed destination connects from inside it, a
/// denied one does not, and `prove egress` proves it. The test servers' own accept
/// counts say what reached them.
#[tokio::test(flavor = "multi_thread")]
async fn egress_holds_from_inside_the_container_from_its_first_instruction() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let bridge = w.lab.info.network.clone().unwrap();
    let allowed = lab::network::Server::start(&bridge).unwrap();
    let denied = lab::network::Server::start(&bridge).unwrap();
    edit(&w.manifests().join("services/api.toml"), |t| {
        t.replace("egress = [\"api.example.com:443\"]", &format!("egress = [\"{}\"]", allowed.destination()))
    });
    edit(&w.manifests().join("environments/staging.toml"), |t| {
        format!("{t}\n[egress]\nenforce = true\ncanaries = [\"{}\"]\n", denied.destination())
    });
    assert_ok(&w.agentctl(&["check"]));

    // The workload's first instruction tries the denied server: refused.
    let v1 = w.app("v1", Behaviour::Healthy, Some(&denied.destination())).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let c = w.container("stage-1");
    let logs = stdout(&w.podman("stage-1", &["logs", &c]));
    assert!(logs.contains("first-connect: refused"), "{logs}");
    assert_eq!(denied.accepted(), 0, "the denied server saw a connection");

    // From inside the running container: allowed connects, denied does not.
    let nc = |server: &lab::network::Server| {
        let (ip, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
        w.podman("stage-1", &["exec", &c, "/bin/busybox", "nc", "-w", "2", &ip, &port]).status.success()
    };
    let before = allowed.accepted();
    assert!(nc(&allowed), "an allowed destination is unreachable from the container");
    assert!(allowed.accepted() > before, "the allowed server saw the container's connection");
    assert!(!nc(&denied), "a denied destination is reachable from the container");
    assert_eq!(denied.accepted(), 0);

    let out = w.agentctl(&["prove", "egress", "api", "--env", "staging"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("every expectation held"), "{}", stdout(&out));
    assert_eq!(denied.accepted(), 0);

    // The same first instruction towards the allowed server connects: the check above
    // can see a connection when there is one.
    let v2 = w.app("v2", Behaviour::Healthy, Some(&allowed.destination())).await;
    assert_ok(&w.promote("staging", &v2, &["--apply"]));
    let logs = stdout(&w.podman("stage-1", &["logs", &w.container("stage-1")]));
    assert!(logs.contains("first-connect: connected"), "{logs}");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
}

/// A host without Podman (as one where it was never installed): `status` names it, a
/// plan is refused naming the host and the fix, an apply too, with its receipt; the
/// container that ran keeps answering; with Podman back, the same promotion goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_podman_is_named_and_nothing_moves() {
    let w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let v2 = w.app("v2", Behaviour::Healthy, None).await;
    w.lab.without_podman("stage-1").unwrap();

    let out = w.agentctl(&["status", "--env", "staging"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("podman is not installed"), "{}", stdout(&out));

    // Refused at plan time, naming host and fix; at `--apply` the refusal is the receipt.
    let out = w.promote("staging", &v2, &[]);
    assert_exit(&out, 4, "host `stage-1` cannot run `api`: podman is not installed");
    assert!(stderr(&out).contains("apt-get install podman"), "the fix is named: {}", stderr(&out));
    let n = w.receipts().len();
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 4, "host `stage-1` cannot run `api`: podman is not installed");
    assert_eq!(w.receipts().len(), n + 1, "the refused apply has its receipt");
    assert_eq!(w.page("stage-1"), "api v1");

    w.lab.with_podman("stage-1").unwrap();
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
    assert_ok(&w.promote("staging", &v2, &["--apply"]));
    assert_eq!(w.page("stage-1"), "api v2");
}

/// A registry that answers only with credentials (a real distribution registry with
/// htpasswd auth): the control plane reads it with its own (environment variables named
/// in the manifests), each host pulls with the auth file the manifests name on it. Wrong
/// credentials in the host's file: the apply fails naming the host and what the registry
/// answered, nothing moves, a receipt; the right ones: the release runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_refusing_the_hosts_credentials_is_named_and_the_right_ones_pull() {
    let mut w = World::start(LabConfig { hosts: 1, ..podman_lab() }).await;
    let v1 = w.app("v1", Behaviour::Healthy, None).await;
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    let (user, password) = ("ci", "lab-registry-password-4b1d");
    let private = w.lab.start_private_registry(user, password).unwrap();
    // The control plane's credentials, by name (nextest runs each test in its own process).
    std::env::set_var("LAB_PRIVATE_REGISTRY_USER", user);
    std::env::set_var("LAB_PRIVATE_REGISTRY_PASSWORD", password);
    edit(&w.manifests().join("controlplane.toml"), |t| {
        t.replacen(
            "[trust]",
            &format!("[[registry]]\nhost = \"{private}\"\ninsecure = true\nusername_env = \"LAB_PRIVATE_REGISTRY_USER\"\npassword_env = \"LAB_PRIVATE_REGISTRY_PASSWORD\"\n\n[trust]"),
            1,
        )
    });

    // v2, copied digest and all into the private registry, signed and recorded there.
    let built = w.lab.push_app("v2", "v2", &Behaviour::Healthy, None).await.unwrap();
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{user}:{password}"))
        .arg(format!("docker://{}", s(&built)))
        .arg(format!("docker://{private}/demo/api:v2"))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    let v2 = format!("{private}/demo/api@{}", built.digest);
    let auth = w.lab.host("stage-1").dir.join("registry-auth.json");
    let svc = w.manifests().join("services/api.toml");
    edit(&svc, |t| {
        t.replace(
            &format!("image = \"{}/demo/api\"", w.lab.registry_host()),
            &format!("image = \"{private}/demo/api\""),
        )
        .replace("# auth_file = \"/etc/agentctl/auth.json\"", &format!("auth_file = \"{}\"", auth.display()))
    });
    assert_ok(&w.agentctl(&["sign", &v2, "--key", &w.release_key()]));
    assert_ok(&w.agentctl(&["release", "add", "api", &v2, "--commit", COMMIT]));

    let auth_file = |password: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        std::fs::write(&auth, serde_json::json!({ "auths": { private.as_str(): { "auth": token } } }).to_string())
            .unwrap();
    };
    auth_file("not-the-password");
    let n = w.receipts().len();
    let out = w.promote("staging", &built, &["--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("stage-1"), "the host is named: {err}");
    assert!(err.to_lowercase().contains("unauthorized"), "what the registry answered: {err}");
    assert!(!err.contains("not-the-password") && !err.contains(password), "no credential is shown: {err}");
    assert_eq!(w.receipts().len(), n + 1, "the failed apply has its receipt");
    assert_eq!(w.page("stage-1"), "api v1");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));

    auth_file(password);
    assert_ok(&w.promote("staging", &built, &["--apply"]));
    assert_eq!(w.page("stage-1"), "api v2");
}
