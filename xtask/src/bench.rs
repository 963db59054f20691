//! Benchmarks against a fresh lab: run with `cargo xtask bench NAME` (add `--release`
//! to the cargo invocation for optimised figures: `cargo run --release -p xtask -- bench NAME`).

use controlplane::keys::{PublicKey, SigningKey};
use controlplane::verify::{Requirements, Verifier};
use lab::{Lab, LabConfig};
use std::time::{Duration, Instant};

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `verify` of one image and of `images` images concurrently against the lab registry, for
/// each signature format: cosign's legacy `.sig`, a Sigstore bundle signed with a key, a
/// keyless bundle (the lab's own CA and log), and what the real cosign 3.1 writes by
/// default (its bundle referrer, listed with an empty artifact type); round trips per
/// image compared with legacy.
pub async fn verify(images: usize, runs: usize) -> anyhow::Result<()> {
    use controlplane::manifest::{AllowedIdentity, KeylessPolicy, SubjectMatch};
    use lab::sigstore::{Signer, TestSigstore};
    const ISSUER: &str = "https://token.actions.githubusercontent.com";
    const SUBJECT: &str = "https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main";
    let lab =
        Lab::start(LabConfig { hosts: 0, staging: 0, registry: true, dir: None, egress: false, podman: false }).await?;
    let key = SigningKey::load(&lab.release_key(), b"")?;
    let registry = lab.registry_client();
    let sigstore = TestSigstore::new("bench fulcio");
    let policy = KeylessPolicy {
        trusted_root: "trust/trusted_root.json".into(),
        trusted_root_json: sigstore.trusted_root(),
        identities: vec![AllowedIdentity { issuer: ISSUER.into(), subject: SubjectMatch::Exact(SUBJECT.into()) }],
    };
    let public = PublicKey::from_pem("release", key.public().pem())?;
    println!("verify benchmark (lab registry on loopback, without the referrers API; {runs} runs each, medians)");
    let mut legacy_trips = None;
    let cosign3 = lab::cosign::COSIGN_3_1.install().map_err(|e| anyhow::anyhow!("cosign 3.1: {e}"))?;
    let home = tempfile::tempdir()?;
    for format in ["legacy", "bundle", "keyless", "cosign3"] {
        let mut refs = Vec::new();
        for i in 0..images {
            let img = lab.push_image("bench/api", &format!("{format}-{i}"), &format!("bench {format} {i}")).await?;
            match format {
                "legacy" => drop(controlplane::sign::sign(&registry, &img, &key).await?),
                "bundle" => drop(controlplane::sign::sign_bundle(&registry, &img, &key).await?),
                "cosign3" => {
                    let out = std::process::Command::new(&cosign3)
                        .args(["sign", "--key"])
                        .arg(lab.release_key())
                        .args(["--use-signing-config=false", "--tlog-upload=false", "--allow-http-registry"])
                        .arg(img.to_string())
                        .env("COSIGN_PASSWORD", "")
                        .env("HOME", home.path())
                        .output()?;
                    anyhow::ensure!(out.status.success(), "cosign sign: {}", String::from_utf8_lossy(&out.stderr));
                }
                _ => {
                    let bundle =
                        sigstore.sign_image(img.repository.as_str(), img.digest.hex(), &Signer::ci(ISSUER, SUBJECT));
                    drop(controlplane::sign::push_bundle(&registry, &img, &bundle).await?)
                }
            }
            refs.push(img.to_string());
        }
        let keyless = || (format == "keyless").then(|| controlplane::keyless::Keyless::new(&policy)).transpose();
        let mut one = Vec::new();
        let mut trips_one = 0;
        for _ in 0..runs {
            let reg = lab.registry_client();
            let v = Verifier { registry: &reg, keys: vec![public.clone()], builders: vec![], keyless: keyless()? };
            let t = Instant::now();
            v.verify(&refs[0], &Requirements::default()).await?;
            one.push(t.elapsed());
            trips_one = reg.round_trips();
        }
        let mut many = Vec::new();
        let mut trips_many = 0;
        for _ in 0..runs {
            let reg = lab.registry_client();
            let v = Verifier { registry: &reg, keys: vec![public.clone()], builders: vec![], keyless: keyless()? };
            let t = Instant::now();
            let req = Requirements::default();
            let results = futures::future::join_all(refs.iter().map(|r| v.verify(r, &req))).await;
            many.push(t.elapsed());
            for r in results {
                r?;
            }
            trips_many = reg.round_trips();
        }
        let per_image = trips_many as f64 / images as f64;
        let base = *legacy_trips.get_or_insert(trips_one);
        println!(
            "  {format:8} 1 image: {} ({trips_one} round trips, legacy {:+}); {images} images concurrently: {} ({per_image:.1} round trips per image; {:.1} images/s)",
            ms(median(one.clone())),
            trips_one as i64 - base as i64,
            ms(median(many.clone())),
            images as f64 / median(many).as_secs_f64()
        );
    }
    Ok(())
}

/// `receipts verify` over `count` receipts: in-process (read + verify the chain) and
/// through the real binary, medians of `runs`.
pub async fn receipts(count: u64, runs: usize) -> anyhow::Result<()> {
    use controlplane::receipt::{self, HostOutcome, Receipt, ReceiptBody, ReceiptKind, ReceiptRelease};
    use controlplane::receipt_log::ReceiptLog;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("receipts");
    std::fs::create_dir_all(&dir)?;
    let key = SigningKey::generate()?;
    let (_, public_path) = key.write_pair(&tmp.path().join("receipts-key"), b"")?;
    let mut previous = None;
    for seq in 1..=count {
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Apply,
            time: "2026-11-23T12:00:00Z".into(),
            operator: "bench".into(),
            plan_id: Some(format!("sha256:{seq:064x}")),
            environment: Some("prod".into()),
            service: Some("api".into()),
            release: Some(ReceiptRelease {
                repository: "127.0.0.1:5000/demo/api".into(),
                digest: format!("sha256:{seq:064x}"),
                ..Default::default()
            }),
            hosts: (1..=3)
                .map(|h| HostOutcome {
                    host: format!("vm-{h}"),
                    before: Some("r-a".into()),
                    after: Some("r-b".into()),
                    rollback_target: Some("r-a".into()),
                    outcome: "changed".into(),
                    detail: None,
                })
                .collect(),
            approvals: vec![],
            outcome: "succeeded".into(),
            detail: None,
        };
        let r = Receipt { seq, previous: previous.take(), controlplane_version: controlplane::VERSION.into(), body };
        let bytes = r.to_bytes();
        std::fs::write(dir.join(format!("{}.sig", r.file_name())), receipt::signature_text(&key.sign(&bytes)))?;
        std::fs::write(dir.join(r.file_name()), &bytes)?;
        previous = Some(receipt::hash(&bytes));
    }
    let public = PublicKey::load(&public_path)?;

    let mut in_process = Vec::new();
    let mut reading = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (files, orphans) = ReceiptLog::new(&dir).read()?;
        reading.push(t.elapsed());
        let report = receipt::verify_chain(&files, &orphans, &public, None);
        in_process.push(t.elapsed());
        anyhow::ensure!(
            report.ok() && report.receipts as u64 == count,
            "the generated chain must verify: {:?}",
            report.problems.first()
        );
    }
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/{}/agentctl", if cfg!(debug_assertions) { "debug" } else { "release" }));
    let mut cli = Vec::new();
    if bin.exists() {
        for _ in 0..runs {
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["receipts", "verify", "--dir"])
                .arg(&dir)
                .arg("--key")
                .arg(&public_path)
                .output()?;
            cli.push(t.elapsed());
            anyhow::ensure!(
                out.status.success(),
                "agentctl receipts verify failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "receipts verify benchmark ({count} receipts, {runs} runs, medians, {} build)",
        if cfg!(debug_assertions) { "dev" } else { "release" }
    );
    let m = median(in_process);
    println!(
        "  in-process read + verify: {}  ({:.0} receipts/s; reading the files alone: {})",
        ms(m),
        rate(m),
        ms(median(reading))
    );
    if !cli.is_empty() {
        let m = median(cli);
        println!("  `agentctl receipts verify`: {}  ({:.0} receipts/s, {})", ms(m), rate(m), bin.display());
    } else {
        println!("  (build {} to time the binary too)", bin.display());
    }
    Ok(())
}

/// `agentctl status` over `hosts` lab hosts against (a) one plain `ssh` process per host
/// in parallel running the same probe (the floor) and (b) Ansible running the same
/// probe, with its default settings and with pipelining.
pub async fn status(hosts: usize, runs: usize, ansible: bool, kex: Option<String>) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{profile}/agentctl"));
    anyhow::ensure!(bin.exists(), "build {} first", bin.display());
    let lab =
        Lab::start(LabConfig { hosts, staging: 1, registry: true, dir: None, egress: false, podman: false }).await?;
    let m = lab.manifests();
    if let Some(k) = &kex {
        // The same key exchange for all three contenders.
        let cp = m.join("controlplane.toml");
        let text = std::fs::read_to_string(&cp)?.replace("[ssh]\n", &format!("[ssh]\nkey_exchange = [\"{k}\"]\n"));
        std::fs::write(&cp, text)?;
    }
    let ctl = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(&bin).arg("--manifests").arg(&m).args(args).env("COSIGN_PASSWORD", "").output()?)
    };
    let img = lab.push_image("demo/api", "v1", "bench").await?.to_string();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for args in [
        vec!["sign", img.as_str(), "--key", lab.release_key().to_str().unwrap_or_default()],
        vec!["release", "add", "api", img.as_str(), "--commit", commit],
        vec!["promote", "api", "--env", "staging", "--release", img.as_str(), "--apply"],
        vec!["promote", "api", "--env", "prod", "--release", img.as_str(), "--apply"],
    ] {
        let out = ctl(&args)?;
        anyhow::ensure!(
            out.status.success(),
            "`agentctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // agentctl status, with its peak resident memory.
    let mut ours = Vec::new();
    let mut peak_kib = 0u64;
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = Command::new(&bin)
            .arg("--manifests")
            .arg(&m)
            .args(["status", "--concurrency", &hosts.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let status = loop {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = s
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak_kib = peak_kib.max(kib);
                }
            }
            if let Some(s) = child.try_wait()? {
                break s;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        ours.push(t.elapsed());
        anyhow::ensure!(status.success(), "status found drift in a fresh lab");
    }

    // The floor: the same probe through plain ssh, one process per host, all at once.
    let set = controlplane::manifest::load(&m)?;
    let service = set.services.values().next().context_none("a service")?;
    let identity = set.resolve(&set.ssh.identity);
    let all_hosts: Vec<_> = set.environments.iter().flat_map(|e| e.hosts.clone()).collect();
    let ssh = controlplane::ssh::SshClient::new(&all_hosts, &identity, Duration::from_secs(10))?
        .with_key_exchange(set.ssh.key_exchange.as_deref())?;
    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let children: Vec<_> = all_hosts
            .iter()
            .map(|h| {
                Command::new("ssh")
                    .args(ssh.ssh_args(h))
                    .arg("--")
                    .arg(controlplane::observe::probe_command(h, service, &[]).shell_line())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            anyhow::ensure!(c.wait()?.success(), "plain ssh probe failed");
        }
        floor.push(t.elapsed());
    }
    let (o, f) = (median(ours), median(floor));
    println!(
        "status benchmark ({} hosts, {runs} runs, medians, {profile} build, key exchange: {})",
        all_hosts.len(),
        kex.as_deref().unwrap_or("OpenSSH default")
    );
    println!("  agentctl status:               {}  (peak RSS {:.1} MiB)", ms(o), peak_kib as f64 / 1024.0);
    println!(
        "  plain ssh, one process a host: {}  (floor; agentctl/floor = {:.2}x)",
        ms(f),
        o.as_secs_f64() / f.as_secs_f64()
    );

    if ansible {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-ansible");
        let bin_dir = venv.join("bin");
        if !bin_dir.join("ansible").exists() {
            let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?.success()
                && Command::new(bin_dir.join("pip")).args(["install", "--quiet", "ansible-core"]).status()?.success();
            anyhow::ensure!(ok, "could not install ansible-core into {}", venv.display());
        }
        let inventory = lab.dir().join("inventory.ini");
        let mut inv = String::from("[lab]\n");
        for h in &all_hosts {
            inv.push_str(&format!(
                "{} ansible_host={} ansible_port={} ansible_user={}\n",
                h.name, h.address, h.port, h.user
            ));
        }
        inv.push_str(&format!(
            "[lab:vars]\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes{}'\nansible_python_interpreter=/usr/bin/python3\n",
            identity.display(),
            ssh.known_hosts().display(),
            kex.as_ref().map(|k| format!(" -o KexAlgorithms={k}")).unwrap_or_default()
        ));
        std::fs::write(&inventory, inv)?;
        // One ad-hoc command for the whole inventory: the probe with each host's own
        // runtime root (the lab's layout puts it beside AGENT_RUNTIME_DIR).
        let first = &all_hosts[0];
        let line = controlplane::observe::probe_command(first, service, &[]).shell_line();
        let probe = line
            .replace(&controlplane::remote::quote(first.root.as_str()), "\"$(dirname \"$AGENT_RUNTIME_DIR\")/root\"");
        for (label, pipelining) in [("default settings", "False"), ("pipelining", "True")] {
            let mut times = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let out = Command::new(bin_dir.join("ansible"))
                    .arg("lab")
                    .arg("-i")
                    .arg(&inventory)
                    .args(["-m", "shell", "-a"])
                    .arg(&probe)
                    .env("ANSIBLE_PIPELINING", pipelining)
                    // The lab login has no home directory; everything else is left at its default.
                    .env("ANSIBLE_REMOTE_TMP", "/tmp/.ansible-agentlab")
                    .env("ANSIBLE_LOCAL_TEMP", lab.dir().join("ansible-tmp"))
                    .output()?;
                times.push(t.elapsed());
                anyhow::ensure!(
                    out.status.success(),
                    "ansible failed: {}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout).lines().take(12).collect::<Vec<_>>().join("\n")
                );
            }
            let a = median(times);
            println!(
                "  ansible ({label}):{} {}  (ansible/agentctl = {:.1}x)",
                " ".repeat(16usize.saturating_sub(label.len())),
                ms(a),
                a.as_secs_f64() / o.as_secs_f64()
            );
        }
    }
    Ok(())
}

trait ContextNone<T> {
    fn context_none(self, what: &str) -> anyhow::Result<T>;
}

impl<T> ContextNone<T> for Option<T> {
    fn context_none(self, what: &str) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow::anyhow!("no {what}"))
    }
}
