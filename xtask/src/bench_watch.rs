//! `cargo xtask bench watch`: one warm probe round over held connections (what `agentctl
//! watch` does every interval) against the same probe run locally in parallel without SSH
//! (the work floor) and Ansible with its persistent connections (ControlPersist, its
//! default), in the same run. Medians, ratios, CPU seconds per round, memory per host.

use anyhow::Context as _;
use controlplane::observe::{watch_command, Answer, Stamp};
use controlplane::remote::RemoteCommand;
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

/// Puts the same rendered release live on every host (as `promote` leaves it: the release
/// directory, `current`, the runtime running its digest), so the probes hash real content.
fn deploy_everywhere(
    lab: &Lab,
    set: &controlplane::manifest::ManifestSet,
    service: &controlplane::manifest::Service,
) -> anyhow::Result<String> {
    use controlplane::release::{render, ReleaseInput};
    let env = &set.environments[0];
    let image = controlplane::image::PinnedImage {
        repository: controlplane::image::Repository::new("127.0.0.1:5000/demo/api")?,
        digest: controlplane::image::Digest::of(b"bench"),
    };
    let content = render(&ReleaseInput {
        service,
        environment: &env.name,
        image: &image,
        source_commit: "0123456789abcdef0123456789abcdef01234567",
        signer_key_id: "sha256:bench",
        provenance: None,
        sbom: None,
        egress: None,
        platform_digest: None,
    })?;
    for h in set.environments.iter().flat_map(|e| &e.hosts) {
        let vm = lab.host(h.name.as_str());
        let dir = vm.root().join(service.name.as_str());
        let rel = dir.join("releases").join(&content.id);
        for (path, bytes) in &content.files {
            let file = rel.join(path);
            std::fs::create_dir_all(file.parent().context("a parent")?)?;
            std::fs::write(file, bytes)?;
        }
        let _ = std::fs::remove_file(dir.join("current"));
        std::os::unix::fs::symlink(format!("releases/{}", content.id), dir.join("current"))?;
        std::fs::write(vm.runtime().join(format!("{}.running", service.name)), format!("{}\n", image.digest))?;
    }
    Ok(format!("{} files, {} bytes", content.files.len(), content.files.values().map(Vec::len).sum::<usize>()))
}

/// Runs `cmd` for every host at once, locally, without SSH; medians of `runs` rounds and
/// CPU seconds per round.
fn local_rounds(lab: &Lab, cmds: &[(String, RemoteCommand)], runs: usize) -> anyhow::Result<(Duration, f64)> {
    let mut times = Vec::new();
    let cpu0 = cpu();
    for _ in 0..runs {
        let t = Instant::now();
        let children: Vec<_> = cmds
            .iter()
            .map(|(host, cmd)| {
                Command::new(&cmd.program)
                    .args(&cmd.args)
                    .env("AGENT_RUNTIME_DIR", lab.host(host).runtime())
                    .env("PATH", format!("{}:/usr/bin:/bin", lab.dir().join("bin").display()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for c in children {
            let out = c.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "the probe failed locally");
        }
        times.push(t.elapsed());
    }
    Ok((median(times), (cpu() - cpu0) / runs as f64))
}

pub async fn watch(hosts: usize, runs: usize, ansible: bool) -> anyhow::Result<()> {
    let lab =
        Lab::start(LabConfig { hosts, staging: 1, registry: false, dir: None, egress: false, podman: false }).await?;
    let set = controlplane::manifest::load(&lab.manifests())?;
    let service = set.services.values().next().context("a service")?;
    let release = deploy_everywhere(&lab, &set, service)?;
    let all: Vec<_> = set.environments.iter().flat_map(|e| e.hosts.clone()).collect();
    let identity = set.resolve(&set.ssh.identity);
    let ssh = controlplane::ssh::SshClient::new(&all, &identity, Duration::from_secs(30))?;
    let rss_before = rss_kib();
    let held =
        controlplane::held::HeldClient::new(&identity, set.ssh.key_exchange.as_deref(), Duration::from_secs(30))?;
    let fleet = Fleet::hold(&held, &all, 32).await?;
    // One round of the watch: every host probed at once over its held connection, with
    // the stamps seen before (`same` answers) or none (everything read and hashed).
    let round = |seen: Option<Vec<Stamp>>| {
        let fleet = &fleet;
        let all = &all;
        async move {
            let probes = all.iter().enumerate().map(|(i, h)| {
                let seen = seen.as_ref().map(|s| s[i].clone());
                async move {
                    let vm = fleet.get(h.name.as_str()).context("connected")?;
                    match vm.probe_since(service, seen.as_ref()).await? {
                        Answer::Full { stamp: Some(s), observation } if seen.is_none() => {
                            anyhow::ensure!(observation.content_hash.is_some(), "{}: nothing hashed", h.name);
                            Ok(s)
                        }
                        Answer::Same { stamp, .. } if seen.is_some() => Ok(stamp),
                        other => anyhow::bail!("{}: unexpected answer {other:?}", h.name),
                    }
                }
            });
            futures::future::join_all(probes).await.into_iter().collect::<anyhow::Result<Vec<Stamp>>>()
        }
    };
    let stamps = round(None).await?; // warm
    let timed = |seen: Option<Vec<Stamp>>| {
        let round = &round;
        async move {
            let mut times = Vec::new();
            let cpu0 = cpu();
            for _ in 0..runs {
                let t = Instant::now();
                round(seen.clone()).await?;
                times.push(t.elapsed());
            }
            anyhow::Ok((median(times), (cpu() - cpu0) / runs as f64))
        }
    };
    let (ours_full, ours_full_cpu) = timed(None).await?;
    let (ours, our_cpu) = timed(Some(stamps.clone())).await?;
    // The held connections live in this process: what it grew by holding and probing them.
    let grown = rss_kib().saturating_sub(rss_before);
    let client_dir = ssh.known_hosts().parent().map(|p| p.display().to_string()).unwrap_or_default();
    let helpers = processes_naming(&client_dir);

    // The floor: the same probe commands, run locally for every host at once, no SSH.
    let local = |seen: Option<&[Stamp]>| -> Vec<(String, RemoteCommand)> {
        all.iter()
            .enumerate()
            .map(|(i, h)| (h.name.to_string(), watch_command(h, service, seen.map(|s| &s[i]))))
            .collect()
    };
    let (floor_full, floor_full_cpu) = local_rounds(&lab, &local(None), runs)?;
    let (floor, floor_cpu) = local_rounds(&lab, &local(Some(&stamps)), runs)?;
    println!(
        "watch benchmark: {} hosts, each running the same release ({release}), {runs} runs, medians, {} build",
        all.len(),
        if cfg!(debug_assertions) { "dev" } else { "release" }
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "  warm round, stamps unchanged (every interval): agentctl {} (CPU {:.2} s, this side) · local floor {} (CPU {:.2} s) · agentctl/floor {:.2}x",
        ms(ours),
        our_cpu,
        ms(floor),
        floor_cpu,
        ratio(ours, floor)
    );
    println!(
        "  full round, every release hashed (every full interval): agentctl {} (CPU {:.2} s) · local floor {} (CPU {:.2} s) · agentctl/floor {:.2}x",
        ms(ours_full),
        ours_full_cpu,
        ms(floor_full),
        floor_full_cpu,
        ratio(ours_full, floor_full)
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
        // The same probe, each host's stamp in its inventory line.
        let inventory = lab.dir().join("inventory.ini");
        let mut inv = String::from("[lab]\n");
        for (h, stamp) in all.iter().zip(&stamps) {
            inv.push_str(&format!(
                "{} ansible_host={} ansible_port={} ansible_user={} seen={}\n",
                h.name,
                h.address,
                h.port,
                h.user,
                stamp.as_str()
            ));
        }
        inv.push_str(&format!(
            "[lab:vars]\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\nansible_python_interpreter=/usr/bin/python3\n",
            identity.display(),
            ssh.known_hosts().display(),
        ));
        std::fs::write(&inventory, inv)?;
        let first = &all[0];
        let line = watch_command(first, service, Some(&stamps[0])).shell_line();
        let probe = line
            .replace(&controlplane::remote::quote(first.root.as_str()), "\"$(dirname \"$AGENT_RUNTIME_DIR\")/root\"")
            .replace(stamps[0].as_str(), "{{ seen }}");
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
            let text = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(
                out.status.success() && text.matches("\nsame ").count() == all.len(),
                "ansible failed or did not take the stamp path: {}",
                text.lines().take(8).collect::<Vec<_>>().join("\n")
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
            "  ansible, persistent connections (raw module, {forks} forks), same probe, stamps unchanged: {} (CPU {:.2} s); ansible/agentctl = {:.1}x",
            ms(a),
            a_cpu,
            ratio(a, ours)
        );
        // Ansible's ControlPersist masters outlive it by design; end them.
        let _ = Command::new("pkill").arg("-f").arg(lab.dir().join("ansible-cp").display().to_string()).status();
    }
    fleet.close().await;
    Ok(())
}
