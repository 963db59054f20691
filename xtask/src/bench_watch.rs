//! `cargo xtask bench watch`: one warm probe round over held connections (what `agentctl
//! watch` does every interval) against the same probe run locally in parallel without SSH
//! (the work floor) and Ansible with its persistent connections (ControlPersist, its
//! default), in the same run. Medians, ratios, CPU seconds per round, memory per host.

use anyhow::Context as _;
use controlplane::vm::Fleet;
use lab::{Lab, LabConfig};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// CPU seconds of this process and its reaped children so far.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime, cutime, cstime are fields 14-17 (1-based) = 11..=14 after the name.
    (tick(11) + tick(12) + tick(13) + tick(14)) / 100.0
}

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Processes (other than this one) whose command line names `needle`: an OpenSSH
/// master per host would show here.
fn processes_naming(needle: &str) -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != me.as_str())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| String::from_utf8_lossy(cmd).contains(needle))
        .count()
}

pub async fn watch(hosts: usize, runs: usize, ansible: bool) -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig { hosts, staging: 1, registry: false, dir: None, egress: false }).await?;
    let set = controlplane::manifest::load(&lab.manifests())?;
    let service = set.services.values().next().context("a service")?;
    let all: Vec<_> = set.environments.iter().flat_map(|e| e.hosts.clone()).collect();
    let identity = set.resolve(&set.ssh.identity);
    let ssh = controlplane::ssh::SshClient::new(&all, &identity, Duration::from_secs(30))?;
    let rss_before = rss_kib();
    let held =
        controlplane::held::HeldClient::new(&identity, set.ssh.key_exchange.as_deref(), Duration::from_secs(30))?;
    let fleet = Fleet::hold(&held, &all, 32).await?;
    let round = || async {
        let probes = all.iter().map(|h| async {
            fleet.get(h.name.as_str()).context("connected")?.probe(service, &[]).await.map_err(anyhow::Error::from)
        });
        for r in futures::future::join_all(probes).await {
            r?;
        }
        anyhow::Ok(())
    };
    round().await?; // warm
    let mut ours = Vec::new();
    let cpu0 = cpu();
    for _ in 0..runs {
        let t = Instant::now();
        round().await?;
        ours.push(t.elapsed());
    }
    let our_cpu = (cpu() - cpu0) / runs as f64;
    // The held connections live in this process: what it grew by holding and probing them.
    let grown = rss_kib().saturating_sub(rss_before);
    let client_dir = ssh.known_hosts().parent().map(|p| p.display().to_string()).unwrap_or_default();
    let helpers = processes_naming(&client_dir);

    // The floor: the same probe script, run locally for every host at once, no SSH.
    let script = controlplane::observe::probe_script();
    let mut floor = Vec::new();
    let cpu0 = cpu();
    for _ in 0..runs {
        let t = Instant::now();
        let children: Vec<_> = all
            .iter()
            .map(|h| {
                let vm = lab.host(h.name.as_str());
                Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .arg("sh")
                    .arg(h.root.as_str())
                    .arg(service.name.as_str())
                    .arg("-")
                    .args(&service.probe)
                    .env("AGENT_RUNTIME_DIR", vm.runtime())
                    .env("PATH", format!("{}:/usr/bin:/bin", lab.dir().join("bin").display()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            c.wait()?;
        }
        floor.push(t.elapsed());
    }
    let floor_cpu = (cpu() - cpu0) / runs as f64;
    let (o, f) = (median(ours), median(floor));
    println!(
        "watch benchmark: one warm probe round, {} hosts, {runs} runs, medians, {} build",
        all.len(),
        if cfg!(debug_assertions) { "dev" } else { "release" }
    );
    println!(
        "  agentctl, held connections: {}  (CPU {:.2} s/round, this side: the control plane and its ssh clients)",
        ms(o),
        our_cpu
    );
    println!(
        "  local floor, no SSH:        {}  (CPU {:.2} s/round; agentctl/floor = {:.2}x)",
        ms(f),
        floor_cpu,
        o.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "  memory per held host: {:.3} MiB (the control plane grew {:.1} MiB RSS holding and probing {} connections; {helpers} helper processes), {:.1} MiB RSS in all",
        grown as f64 / 1024.0 / all.len() as f64,
        grown as f64 / 1024.0,
        all.len(),
        rss_kib() as f64 / 1024.0
    );

    if ansible {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-ansible");
        let bin = venv.join("bin");
        if !bin.join("ansible").exists() {
            let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?.success()
                && Command::new(bin.join("pip")).args(["install", "--quiet", "ansible-core"]).status()?.success();
            anyhow::ensure!(ok, "could not install ansible-core into {}", venv.display());
        }
        let inventory = lab.dir().join("inventory.ini");
        let mut inv = String::from("[lab]\n");
        for h in &all {
            inv.push_str(&format!(
                "{} ansible_host={} ansible_port={} ansible_user={}\n",
                h.name, h.address, h.port, h.user
            ));
        }
        inv.push_str(&format!(
            "[lab:vars]\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\nansible_python_interpreter=/usr/bin/python3\n",
            identity.display(),
            ssh.known_hosts().display(),
        ));
        std::fs::write(&inventory, inv)?;
        let first = &all[0];
        let line = controlplane::observe::probe_command(first, service, &[]).shell_line();
        let probe = line
            .replace(&controlplane::remote::quote(first.root.as_str()), "\"$(dirname \"$AGENT_RUNTIME_DIR\")/root\"");
        let forks = all.len().min(50).to_string();
        let run = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let out = Command::new(bin.join("ansible"))
                .arg("lab")
                .arg("-i")
                .arg(&inventory)
                .args(["-f", &forks, "-m", "raw", "-a"])
                .arg(&probe)
                // ControlPersist is Ansible's default; the lab login has no home directory.
                .env("ANSIBLE_LOCAL_TEMP", lab.dir().join("ansible-tmp"))
                .env("ANSIBLE_SSH_CONTROL_PATH_DIR", lab.dir().join("ansible-cp"))
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "ansible failed: {}",
                String::from_utf8_lossy(&out.stdout).lines().take(8).collect::<Vec<_>>().join("\n")
            );
            Ok(t.elapsed())
        };
        run()?; // opens the persistent connections
        let cpu0 = cpu();
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(run()?);
        }
        let a_cpu = (cpu() - cpu0) / runs as f64;
        let a = median(times);
        println!(
            "  ansible, persistent connections (raw module, {forks} forks): {}  (CPU {:.2} s/round; ansible/agentctl = {:.1}x)",
            ms(a),
            a_cpu,
            a.as_secs_f64() / o.as_secs_f64()
        );
        // Ansible's ControlPersist masters outlive it by design; end them.
        let _ = Command::new("pkill").arg("-f").arg(lab.dir().join("ansible-cp").display().to_string()).status();
    }
    fleet.close().await;
    Ok(())
}
