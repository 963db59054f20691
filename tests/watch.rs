//! `agentctl watch` against the lab: events within an interval, unreachable hosts found by
//! fresh connections, metrics scraped over HTTP and parsed by an independent parser, a
//! signed webhook a receiver can check and replay-protect, and a clean SIGTERM.

mod common;

use common::*;
use hmac::{Hmac, Mac};
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Events as they arrive, kept so that waiting for one does not lose another.
struct Events {
    rx: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl Events {
    /// After the watch ended: every line it printed on stdout was one JSON object.
    /// Regression: it ended with a text line (`watch stopped`), or a multi-line object.
    fn assert_only_json_lines(mut self) {
        while let Ok(e) = self.rx.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(e);
        }
        let bad: Vec<_> = self.seen.iter().filter(|e| e.get("not_json").is_some()).collect();
        assert!(bad.is_empty(), "stdout lines that are not JSON objects: {bad:#?}");
    }

    /// The first event matching `pred` (seen already, or arriving within `within`).
    fn wait(&mut self, within: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(e) => self.seen.push(e),
                Err(_) => panic!("no matching event within {within:?}; seen: {:#?}", self.seen),
            }
        }
    }
}

/// A webhook receiver: checks each delivery's HMAC over `timestamp.body` and refuses a
/// signature it has seen before (a replay). Answers 200 or 401; reports what it accepted.
/// One delivery: whether it was accepted, its timestamp and signature headers, its body.
type Delivery = (bool, String, String, Vec<u8>);

fn receiver(secret: &'static [u8]) -> (u16, mpsc::Receiver<Delivery>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = std::collections::HashSet::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = std::collections::HashMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let ts = headers.get("x-agentctl-timestamp").cloned().unwrap_or_default();
            let sig = headers.get("x-agentctl-signature").cloned().unwrap_or_default();
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&body);
            let good = sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            let fresh = seen.insert(sig.clone());
            let ok = good && fresh;
            let status = if ok { "200 OK" } else { "401 Unauthorized" };
            use std::io::Write as _;
            let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((ok, ts, sig, body));
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_changes_metrics_webhooks_and_stops_cleanly() {
    let mut w = World::start(fleet(2)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let (hook, deliveries) = receiver(b"hook-secret");
    let tmp = tempfile::tempdir().unwrap();
    let hook_url = format!("http://127.0.0.1:{hook}/hook");
    let args =
        ["--interval", "1", "--fresh-interval", "2", "--webhook", &hook_url, "--webhook-secret-env", "HOOK_SECRET"];
    let envs = [("HOOK_SECRET", std::path::Path::new("hook-secret")), ("TMPDIR", tmp.path())];
    let (mut child, mut events, url) = start_watch(&w, &[&args[..], &["--drift-receipts"]].concat(), &envs);

    // Every target starts as an event: unknown -> in-sync.
    for host in ["stage-1", "prod-1", "prod-2"] {
        events.wait(Duration::from_secs(15), |e| e["host"] == host && e["to"] == "in-sync");
    }
    // Metrics over HTTP, parsed by an independent parser.
    let scrape = || async {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    };
    let value = |s: &prometheus_parse::Scrape, host: &str, state: &str| {
        s.samples
            .iter()
            .find(|m| {
                m.metric == "agentctl_drift_state"
                    && m.labels.get("host") == Some(host)
                    && m.labels.get("state") == Some(state)
            })
            .map(|m| match m.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value(&scrape().await, "prod-1", "in-sync"), Some(1.0));
    let healthz = reqwest::get(url.replace("/metrics", "/healthz")).await.unwrap();
    assert!(healthz.status().is_success());

    // A changed host is reported within one interval (plus a probe's time).
    let changed = Instant::now();
    w.runtime("prod-1", "report", "sha256:1111111111111111111111111111111111111111111111111111111111111111");
    let e = events.wait(Duration::from_secs(4), |e| e["host"] == "prod-1" && e["to"] == "drifted");
    assert!(e["detail"].as_str().unwrap().contains("image digest"), "{e}");
    assert!(changed.elapsed() < Duration::from_secs(3), "reported after {:?}", changed.elapsed());
    assert_eq!(value(&scrape().await, "prod-1", "drifted"), Some(1.0));
    // ... and signed into the receipt chain when first seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.receipts().iter().any(|r| r["kind"] == "drift" && r["hosts"][0]["host"] == "prod-1") {
        assert!(Instant::now() < deadline, "no drift receipt for prod-1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ok(&w.agentctl(&["receipts", "verify"]));

    // sshd killed while its connection is held: unreachable within two fresh periods.
    let killed = Instant::now();
    w.lab.stop_host("prod-2");
    // (The lab kills only the listening sshd: the held connection's own sshd lives on, so
    // only a fresh connection can tell.)
    let e = events.wait(Duration::from_secs(6), |e| e["host"] == "prod-2" && e["to"] == "unreachable");
    assert!(e["detail"].as_str().unwrap().contains("no longer accepts new connections"), "{e}");
    assert!(killed.elapsed() < Duration::from_secs(5), "after {:?}", killed.elapsed());

    // The webhook got signed deliveries; a replayed one is refused by the receiver.
    let (ok, ts, sig, body) = deliveries.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(ok, "the first delivery verifies");
    let replay = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{hook}/hook"))
        .header("x-agentctl-timestamp", ts)
        .header("x-agentctl-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 401, "a replay is refused");

    // SIGHUP reloads the manifests: a host removed from them is no longer watched, the
    // others are announced again by the reloaded watch.
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    let kept: Vec<&str> = text.split("\n[[host]]").filter(|b| !b.contains("name = \"prod-1\"")).collect();
    std::fs::write(&prod, kept.join("\n[[host]]")).unwrap();
    events.seen.clear();
    while events.rx.try_recv().is_ok() {}
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    events.wait(Duration::from_secs(15), |e| e["host"] == "stage-1" && e["to"] == "in-sync");
    std::thread::sleep(Duration::from_secs(3));
    while let Ok(e) = events.rx.try_recv() {
        events.seen.push(e);
    }
    assert!(!events.seen.iter().any(|e| e["host"] == "prod-1"), "prod-1 is still watched: {:#?}", events.seen);
    assert!(child.try_wait().unwrap().is_none(), "watch exited on SIGHUP");

    // SIGTERM: a clean stop, no ssh process left.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    events.assert_only_json_lines();
    let needle = tmp.path().as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a watch on `w` with `args` and `envs`; returns the child, its events and its
/// metrics URL.
fn start_watch(w: &World, args: &[&str], envs: &[(&str, &std::path::Path)]) -> (std::process::Child, Events, String) {
    let mut child = Command::new(BIN)
        .arg("--manifests")
        .arg(w.manifests())
        .args(["watch", "--metrics", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // stdout is JSON lines only: anything else is kept to fail the test.
            let v = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::json!({ "not_json": line }));
            let _ = tx.send(v);
        }
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("metrics on ").unwrap_or_else(|| panic!("{first}")).to_owned();
    std::thread::spawn(move || for _ in stderr.lines().map_while(Result::ok) {});
    (child, Events { rx, seen: Vec::new() }, url)
}

/// `agentctl_probes_total{host, kind}` as scraped now.
async fn probes(url: &str, host: &str, kind: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|m| {
            m.metric == "agentctl_probes_total"
                && m.labels.get("host") == Some(host)
                && m.labels.get("kind") == Some(kind)
        })
        .map_or(0.0, |m| match m.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn wait_probes(url: &str, host: &str, kind: &str, at_least: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = probes(url, host, kind).await;
        if n >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{kind} probes of {host}: {n} < {at_least} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut child: std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn between_full_hashes_the_stamp_still_sees_an_edit_that_keeps_size_and_mtime() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging", "prod"]).await;

    // Full hashes only at the start: every later answer comes through the stamp.
    let (child, mut events, url) =
        start_watch(&w, &["--env", "prod", "--interval", "0.5", "--full-interval", "3600"], &[]);
    events.wait(Duration::from_secs(15), |e| e["host"] == "prod-1" && e["to"] == "in-sync");
    wait_probes(&url, "prod-1", "same", 2.0, Duration::from_secs(5)).await;
    assert_eq!(probes(&url, "prod-1", "full").await, 1.0, "one full probe, then stamps");

    // Same length, modification time put back: only the change time tells.
    let live = w.lab.host("prod-1").root().join("api").join(w.current("prod-1").unwrap());
    let file = walk(&live).into_iter().find(|p| !p.ends_with("release.json")).expect("a file besides release.json");
    let before = std::fs::read(&file).unwrap();
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut after = before.clone();
    after[0] ^= 0x20;
    std::fs::write(&file, &after).unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
    let edited = Instant::now();
    let e = events.wait(Duration::from_secs(5), |e| e["host"] == "prod-1" && e["to"] == "tampered");
    assert!(edited.elapsed() < Duration::from_secs(3), "reported after {:?}", edited.elapsed());
    assert!(e["detail"].as_str().unwrap().contains("is not what was applied"), "{e}");
    assert!(probes(&url, "prod-1", "full").await >= 2.0, "the changed stamp made the host read in full");
    stop(child);

    // With a short full interval the release is hashed in full again and again even
    // though nothing changes (the backstop against a forged change time).
    std::fs::write(&file, &before).unwrap();
    let (child, mut events, url) =
        start_watch(&w, &["--env", "prod", "--interval", "0.3", "--full-interval", "1"], &[]);
    events.wait(Duration::from_secs(15), |e| e["host"] == "prod-1" && e["to"] == "in-sync");
    wait_probes(&url, "prod-1", "same", 1.0, Duration::from_secs(5)).await;
    wait_probes(&url, "prod-1", "full", 3.0, Duration::from_secs(5)).await;
    stop(child);
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Pins `host`'s `host_key` in `env`'s manifest to `key`.
fn pin(w: &World, env: &str, host: &str, key: &str) {
    let path = w.manifests().join(format!("environments/{env}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks: Vec<String> = text
        .split("\n[[host]]\n")
        .map(|b| {
            if b.starts_with(&format!("name = \"{host}\"\n")) {
                b.lines()
                    .map(|l| if l.starts_with("host_key = ") { format!("host_key = \"{key}\"") } else { l.to_owned() })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
            } else {
                b.to_owned()
            }
        })
        .collect();
    std::fs::write(&path, blocks.join("\n[[host]]\n")).unwrap();
}

/// Hosts pinned by their ECDSA and RSA host keys (each also has an ed25519 key, as real
/// hosts do). Both paths — `status` over OpenSSH, `watch` over held connections (an RSA pin
/// over a multiplexed OpenSSH session: the in-process client cannot check RSA in this
/// build) — negotiate the pinned type and stay in sync for ten intervals. A host whose pinned key was
/// replaced by another of the same type is a SECURITY event in both paths ("SECURITY:"
/// once); a host that no longer offers the pinned type is a failed negotiation naming what
/// it offers — still a security event (an impostor without the key offers another type),
/// never reported as a mismatch — in both paths.
#[tokio::test(flavor = "multi_thread")]
async fn host_keys_of_every_type_are_pinned_in_both_ssh_paths() {
    let w = World::start(fleet(2)).await;
    w.deploy("v1", &["staging", "prod"]).await;
    let ecdsa = w.lab.host_key("prod-1", "ecdsa").unwrap();
    let rsa = w.lab.host_key("prod-2", "rsa").unwrap();
    assert!(ecdsa.starts_with("ecdsa-sha2-nistp256 ") && rsa.starts_with("ssh-rsa "), "{ecdsa} {rsa}");
    pin(&w, "prod", "prod-1", &ecdsa);
    pin(&w, "prod", "prod-2", &rsa);
    let out = w.agentctl(&["status", "--env", "prod"]);
    assert_ok(&out);

    let (child, mut events, url) = start_watch(&w, &["--env", "prod", "--interval", "0.2"], &[]);
    for h in ["prod-1", "prod-2"] {
        events.wait(Duration::from_secs(15), |e| e["host"] == h && e["to"] == "in-sync");
    }
    wait_probes(&url, "prod-1", "same", 10.0, Duration::from_secs(20)).await;
    wait_probes(&url, "prod-2", "same", 10.0, Duration::from_secs(20)).await;
    assert!(events.seen.is_empty(), "nothing else for ten intervals: {:#?}", events.seen);
    stop(child);

    // prod-1's ECDSA key is replaced: a SECURITY event on a fresh connection in both paths.
    w.lab.host_key("prod-1", "ecdsa").unwrap();
    let out = w.agentctl(&["status", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("SECURITY: host `prod-1` presented a host key that does not match the pinned key"), "{text}");
    assert_eq!(text.matches("SECURITY:").count(), 1, "{text}");
    let (child, mut events, _) = start_watch(&w, &["--env", "prod", "--interval", "0.2"], &[]);
    let e = events.wait(Duration::from_secs(15), |e| e["host"] == "prod-1" && e["to"] != "in-sync");
    let detail = e["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("does not match the pinned key"), "{e}");
    assert_eq!(detail.matches("SECURITY:").count(), 1, "{e}");
    stop(child);

    // The pinned types are no longer offered: failed negotiations, named as such.
    w.lab.drop_host_key("prod-2", "rsa").unwrap();
    w.lab.drop_host_key("prod-1", "ecdsa").unwrap();
    let out = w.agentctl(&["status", "--env", "prod"]);
    let text = stdout(&out);
    for h in ["prod-1", "prod-2"] {
        assert!(text.contains(&format!("host `{h}` offers no host key of the pinned key's type")), "{text}");
    }
    assert!(text.contains("ssh-ed25519"), "it names what the host offers: {text}");
    assert!(!text.contains("presented a host key"), "not a mismatch: {text}");
    assert_eq!(text.matches("SECURITY:").count(), 2, "still a security event, once per host: {text}");
    let (child, mut events, _) = start_watch(&w, &["--env", "prod", "--interval", "0.2"], &[]);
    for h in ["prod-1", "prod-2"] {
        let e = events.wait(Duration::from_secs(15), |e| e["host"] == h && e["to"] != "in-sync");
        let detail = e["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("offers no host key of the pinned key's type"), "{e}");
        assert!(detail.contains("ssh-ed25519"), "{e}");
        assert!(!detail.contains("presented a host key"), "{e}");
        assert_eq!(detail.matches("SECURITY:").count(), 1, "{e}");
    }
    stop(child);
}
