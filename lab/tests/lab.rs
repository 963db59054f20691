//! The lab itself: real registry, real sshd hosts, strict host keys, clean teardown.

use controlplane::held::HeldClient;
use controlplane::manifest::{self, Host};
use controlplane::remote::RemoteCommand;
use controlplane::ssh::{Remote as _, SshClient, SshError};
use lab::{Lab, LabConfig};
use std::time::Duration;

fn hosts(lab: &Lab) -> Vec<Host> {
    let set = manifest::load(&lab.manifests()).unwrap_or_else(|e| panic!("lab manifests are invalid: {e:?}"));
    set.environments.into_iter().flat_map(|e| e.hosts).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_serves_images_and_hosts_with_pinned_keys() {
    let lab = Lab::start(LabConfig::default()).await.unwrap();
    let a = lab.push_image("demo/api", "v1", "release one").await.unwrap();
    let b = lab.push_image("demo/api", "v2", "release two").await.unwrap();
    assert_ne!(a.digest, b.digest, "distinct content gives distinct digests");
    let again = lab.push_image("demo/api", "v1-again", "release one").await.unwrap();
    assert_eq!(a.digest, again.digest, "same content gives the same digest");
    let (_, got) = lab.registry_client().manifest(&a.repository, "v2").await.unwrap().expect("tag v2 exists");
    assert_eq!(got, b.digest);

    let hosts = hosts(&lab);
    assert_eq!(hosts.len(), 3);
    let ssh = SshClient::new(&hosts, &lab.dir().join("state/ssh/id_ed25519"), Duration::from_secs(5)).unwrap();
    for h in &hosts {
        let vm = lab.host(h.name.as_str());
        std::fs::write(vm.root().join("marker"), format!("I am {}", h.name)).unwrap();
        let session = ssh.connect(h).await.unwrap_or_else(|e| panic!("{}: {e}", h.name));
        let cmd = RemoteCommand::new("cat", [format!("{}/marker", h.root)]);
        let out = session.run(&cmd, None, 1024, Duration::from_secs(5)).await.unwrap();
        assert!(out.success(), "{}", out.stderr);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("I am {}", h.name));
        // The login has the lab's minimal environment: the runtime shim is on PATH.
        let out = session
            .run(&RemoteCommand::new("agent-runtime", ["running", "api"]), None, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(out.success(), "{}", out.stderr);
        session.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_pinned_host_key_is_refused() {
    let lab = Lab::start(LabConfig { hosts: 2, staging: 1, registry: false, dir: None, egress: false, podman: false })
        .await
        .unwrap();
    let mut hosts = hosts(&lab);
    // Pin host 1's key for host 0: exactly what a man in the middle would look like.
    hosts[0].host_key = hosts[1].host_key.clone();
    let ssh = SshClient::new(&hosts, &lab.dir().join("state/ssh/id_ed25519"), Duration::from_secs(5)).unwrap();
    let err = ssh.connect(&hosts[0]).await.expect_err("a mismatched host key must not connect");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("SECURITY"), "{err}");
    // The correctly pinned host still works.
    ssh.connect(&hosts[1]).await.unwrap().close().await;

    // The watch's in-process client pins the same way.
    let held = HeldClient::new(&lab.dir().join("state/ssh/id_ed25519"), None, Duration::from_secs(5)).unwrap();
    let err = held.hold(&hosts[0]).await.expect_err("a mismatched host key must not connect");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    let session = held.hold(&hosts[1]).await.unwrap();
    let out = session
        .run(&RemoteCommand::new("sh", ["-c", "printf out; printf err >&2; exit 3"]), None, 64, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((out.status, out.stdout.as_slice()), (Some(3), &b"out"[..]));
    // (sshd says first that the lab login has no home directory.)
    assert!(out.stderr.ends_with("err"), "{}", out.stderr);
    let err = session
        .run(&RemoteCommand::new("head", ["-c", "100000", "/dev/zero"]), None, 64, Duration::from_secs(5))
        .await
        .expect_err("output over the limit is refused");
    assert!(matches!(err, SshError::OutputTooLarge { limit: 64, .. }), "{err}");
    Box::new(session).close().await;
    // Our key, but a user the host does not know.
    let mut stranger = hosts[1].clone();
    stranger.user = controlplane::names::UserName::new("nobody-here").unwrap();
    let err = held.hold(&stranger).await.expect_err("an unknown user is refused");
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_lab_leaves_nothing_behind() {
    let lab = Lab::start(LabConfig { hosts: 4, staging: 2, registry: true, dir: None, egress: false, podman: false })
        .await
        .unwrap();
    let dir = lab.dir().to_path_buf();
    let pids: Vec<u32> = lab.info.hosts.iter().map(|h| h.pid).chain(lab.info.registry.iter().map(|r| r.pid)).collect();
    let ports: Vec<u16> =
        lab.info.hosts.iter().map(|h| h.port).chain(lab.info.registry.iter().map(|r| r.port)).collect();
    assert!(pids.iter().all(|p| lab::alive(*p)));
    drop(lab);
    assert!(!dir.exists(), "lab directory removed");
    assert!(pids.iter().all(|p| !lab::alive(*p)), "no process left");
    assert!(ports.iter().all(|p| !lab::listening(*p)), "no port left open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lab_is_stopped_when_the_test_panics() {
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let handle = tokio::spawn({
        let lab_dir = lab_dir.clone();
        async move {
            let lab = Lab::start(LabConfig {
                hosts: 1,
                staging: 1,
                registry: false,
                dir: Some(lab_dir),
                egress: false,
                podman: false,
            })
            .await
            .unwrap();
            let pid = lab.info.hosts[0].pid;
            std::fs::write(lab.dir().join("../pid"), pid.to_string()).unwrap();
            panic!("a failing test");
        }
    });
    assert!(handle.await.is_err());
    let pid: u32 = std::fs::read_to_string(dir.path().join("pid")).unwrap().parse().unwrap();
    assert!(!lab::alive(pid));
    assert!(!lab_dir.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_down_stops_a_detached_lab() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("lab");
    let lab = Lab::start(LabConfig {
        hosts: 3,
        staging: 1,
        registry: true,
        dir: Some(dir.clone()),
        egress: false,
        podman: false,
    })
    .await
    .unwrap();
    let info = lab.detach();
    let pids: Vec<u32> = info.hosts.iter().map(|h| h.pid).chain(info.registry.iter().map(|r| r.pid)).collect();
    let ports: Vec<u16> = info.hosts.iter().map(|h| h.port).chain(info.registry.iter().map(|r| r.port)).collect();
    assert!(pids.iter().all(|p| lab::alive(*p)), "detached processes keep running");
    assert!(dir.join("lab.json").exists());

    lab::down(&dir).unwrap();
    assert!(!dir.exists());
    assert!(pids.iter().all(|p| !lab::alive(*p)));
    assert!(ports.iter().all(|p| !lab::listening(*p)));
}
