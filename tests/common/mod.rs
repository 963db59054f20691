//! Shared test fixtures: a lab with the real `agentctl` binary pointed at it, and a
//! registry proxy that can "die" after a number of requests.

#![allow(dead_code, reason = "each test binary uses part of the fixtures")]

use controlplane::image::{PinnedImage, Repository};
use controlplane::registry::Registry;
use lab::Behaviour;
use lab::{Lab, LabConfig};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub mod registry_proxy;

/// Placeholders for what changes between runs of a user-visible output (digests, release
/// and plan ids, ports, temp paths, times, pids, key ids): the one filter set every
/// snapshot uses ([`snap!`]).
pub fn snapshot_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\x22[A-Za-z0-9+/]{60,}={0,2}\x22", "\"[BASE64]\""),
        (r"sha256:[0-9a-f]{64}", "sha256:[HASH]"),
        (r"sha256:[0-9a-f]{12}\b", "sha256:[SHORT]"),
        (r"sha256-[0-9a-f]{64}", "sha256-[HASH]"),
        (r"\br-[0-9a-f]{16}\b", "r-[ID]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"10\.\d+\.\d+\.\d+:\d+", "[BRIDGE]:[PORT]"),
        (r"/tmp/agentlab-[A-Za-z0-9]+", "[LAB]"),
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?", "[TIME]"),
        (r"\b\d{10}\b", "[UNIX]"),
        (r"pid \d+", "pid [PID]"),
        (r"no process \d+", "no process [PID]"),
        (r"(signed by|signer_key_id\x22: \x22|key `)[0-9a-f]{16,64}", "$1[KEY]"),
        (r"tester on [^\s]+ \(", "tester on [MACHINE] ("),
        (r"runs on `[^`]+`", "runs on `[MACHINE]`"),
    ]
}

/// Pins a user-visible output as a snapshot with [`snapshot_filters`] (and, optionally,
/// more filters for one test's own variation).
#[allow(unused_macros, reason = "each test binary uses part of the fixtures")]
macro_rules! snap {
    ($name:expr, $value:expr) => {
        snap!($name, $value, Vec::<(&str, &str)>::new())
    };
    ($name:expr, $value:expr, $more:expr) => {
        let value = $value;
        let mut filters = $crate::common::snapshot_filters();
        filters.extend($more);
        insta::with_settings!({ filters => filters, prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!($name, value);
        })
    };
}

pub const BIN: &str = env!("CARGO_BIN_EXE_agentctl");

/// A lab and the binary.
pub struct World {
    pub lab: Lab,
}

impl World {
    pub async fn start(cfg: LabConfig) -> Self {
        Self { lab: Lab::start(cfg).await.expect("lab starts") }
    }

    pub fn manifests(&self) -> PathBuf {
        self.lab.manifests()
    }

    /// `agentctl --manifests <lab> ARGS`, with the lab's (empty) key password.
    pub fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--manifests")
            .arg(self.manifests())
            .args(args)
            .env("COSIGN_PASSWORD", "")
            .env("USER", "tester")
            .output()
            .unwrap()
    }

    pub fn release_key(&self) -> String {
        self.lab.release_key().display().to_string()
    }

    /// Pushes an image and signs it with the trusted release key through the CLI, in the
    /// default format (a Sigstore bundle referrer, as cosign 3).
    pub async fn signed_image(&self, path: &str, content: &str) -> PinnedImage {
        self.signed_image_as(path, content, "bundle").await
    }

    /// The same, with cosign's legacy `.sig` tag.
    pub async fn signed_image_legacy(&self, path: &str, content: &str) -> PinnedImage {
        self.signed_image_as(path, content, "legacy").await
    }

    async fn signed_image_as(&self, path: &str, content: &str, format: &str) -> PinnedImage {
        let img = self.lab.push_image(path, "latest", content).await.unwrap();
        let out = self.agentctl(&["sign", &img.to_string(), "--key", &self.release_key(), "--format", format]);
        assert_ok(&out);
        img
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Both streams of a run, with its exit code: what snapshots pin.
pub fn shown(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        stdout(out).trim_end(),
        stderr(out).trim_end()
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out));
}

#[track_caller]
pub fn assert_exit(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{err}", stdout(out));
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
}

/// Copies the manifest at `from_tag` in `from` (and its blobs) to `to_tag` in `to`.
pub async fn copy_tag(registry: &Registry, from: &Repository, from_tag: &str, to: &Repository, to_tag: &str) {
    let (manifest, _) = registry.manifest(from, from_tag).await.unwrap().expect("source tag exists");
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut digests = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(v["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()));
    for d in digests {
        let blob = registry.blob(from, &controlplane::image::Digest::new(&d).unwrap()).await.unwrap();
        registry.push_blob(to, &blob).await.unwrap();
    }
    registry.push_manifest(to, Some(to_tag), manifest).await.unwrap();
}

/// A TCP proxy in front of a registry that forwards a budget of HTTP requests and then
/// drops every connection, like a registry that stops mid-way.
pub struct Proxy {
    pub port: u16,
    budget: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let budget = Arc::new(AtomicI64::new(-1));
        let b = budget.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if b.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                tokio::spawn(relay(client, target, b.clone()));
            }
        });
        Self { port, budget, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on forward `n` more requests (`-1`: unlimited).
    pub fn set_budget(&self, n: i64) {
        self.budget.store(n, Ordering::SeqCst);
    }
}

async fn relay(client: tokio::net::TcpStream, target: u16, budget: Arc<AtomicI64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let requests = buf[..n].windows(11).filter(|w| w == b" HTTP/1.1\r\n").count() as i64;
            for _ in 0..requests {
                let left = budget.load(Ordering::SeqCst);
                if left == 0 {
                    return;
                }
                if left > 0 {
                    budget.fetch_sub(1, Ordering::SeqCst);
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

/// An image reference string.
pub fn s(img: &PinnedImage) -> String {
    img.to_string()
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl World {
    /// Pushes, signs and records a release of `api` with `content`; returns its image.
    pub async fn release(&self, content: &str) -> PinnedImage {
        let img = self.signed_image("demo/api", content).await;
        assert_ok(&self.agentctl(&["release", "add", "api", &img.to_string(), "--commit", COMMIT]));
        img
    }

    /// Records a release with `content` and applies it to each of `envs` in order.
    pub async fn deploy(&self, content: &str, envs: &[&str]) -> PinnedImage {
        let img = self.release(content).await;
        for env in envs {
            assert_ok(&self.promote(env, &img, &["--apply"]));
        }
        img
    }

    pub fn promote(&self, env: &str, img: &PinnedImage, extra: &[&str]) -> Output {
        let mut args = vec!["promote", "api", "--env", env, "--release", img.digest.as_str()];
        args.extend_from_slice(extra);
        self.agentctl(&args)
    }

    /// Every file and symlink under the lab's hosts (runtime roots and runtime state),
    /// the state directory and the receipts, with their bytes or link targets.
    pub fn snapshot(&self) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        for dir in [self.lab.dir().join("hosts"), self.lab.dir().join("state"), self.lab.dir().join("receipts")] {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    let meta = std::fs::symlink_metadata(&p).unwrap();
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    // sshd's own files change as it runs; they are not the control plane's.
                    if name == "sshd.log" || name == "sshd.pid" {
                        continue;
                    }
                    if meta.file_type().is_symlink() {
                        out.insert(p.clone(), std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes());
                    } else if meta.is_dir() {
                        out.insert(p.clone(), b"<dir>".to_vec());
                        stack.push(p);
                    } else {
                        out.insert(p.clone(), std::fs::read(&p).unwrap());
                    }
                }
            }
        }
        out
    }

    /// Where `current` points on `host` (relative target), if anywhere.
    pub fn current(&self, host: &str) -> Option<String> {
        std::fs::read_link(self.lab.host(host).root().join("api/current")).ok().map(|p| p.display().to_string())
    }

    /// The image digest named by the `release.json` that `current` points at on `host`.
    pub fn live_digest(&self, host: &str) -> Option<String> {
        let dir = self.lab.host(host).root().join("api").join(self.current(host)?);
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("release.json")).ok()?).ok()?;
        json["digest"].as_str().map(str::to_owned)
    }

    /// Touches a runtime-shim control file (`fail-health`, `hang-health`, ...).
    pub fn runtime(&self, host: &str, control: &str, content: &str) {
        std::fs::write(self.lab.host(host).runtime().join(format!("api.{control}")), content).unwrap();
    }

    pub fn clear_runtime(&self, host: &str, control: &str) {
        let _ = std::fs::remove_file(self.lab.host(host).runtime().join(format!("api.{control}")));
    }

    // ---- runnable apps on Podman labs ----

    /// Pushes a runnable app, signs it, records it as a release of `api`.
    pub async fn app(&self, version: &str, behaviour: Behaviour, first_connect: Option<&str>) -> PinnedImage {
        let img = self.lab.push_app(version, version, &behaviour, first_connect).await.unwrap();
        assert_ok(&self.agentctl(&["sign", &s(&img), "--key", &self.release_key()]));
        assert_ok(&self.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]));
        img
    }

    /// What `host`'s workload answers on `path` (status line and body), from outside.
    pub fn http(&self, host: &str, path: &str) -> Result<String, String> {
        use std::io::{Read as _, Write as _};
        let addr = std::net::SocketAddr::new(self.lab.host(host).address(), 8080);
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
            .map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// The body `host`'s workload serves on `/`.
    pub fn page(&self, host: &str) -> String {
        let text = self.http(host, "/").unwrap_or_else(|e| panic!("{host} does not answer: {e}"));
        assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
        text.split("\r\n\r\n").nth(1).unwrap_or("").trim_end().to_owned()
    }

    pub fn receipts(&self) -> Vec<serde_json::Value> {
        let out = self.agentctl(&["receipts", "list", "--json"]);
        assert_ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }
}

/// Asserts two snapshots are equal, naming only the paths that differ.
#[track_caller]
pub fn assert_same(
    before: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(changed.is_empty(), "{what}: changed {changed:?}");
}

/// Only the golden VMs' part of a snapshot.
pub fn hosts_only(snap: std::collections::BTreeMap<PathBuf, Vec<u8>>) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    snap.into_iter().filter(|(p, _)| p.to_string_lossy().contains("/hosts/")).collect()
}

/// One environment `staging` (1 host) and `prod` (`prod` hosts), batch size 1.
pub fn fleet(prod: usize) -> LabConfig {
    LabConfig { hosts: 1 + prod, staging: 1, registry: true, dir: None, egress: false, podman: false }
}
