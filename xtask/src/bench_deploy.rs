//! `cargo run --release -p xtask -- bench deploy`: `agentctl promote --apply` of a new
//! release to N Podman golden VMs, against, in the same run and on the same lab, the same
//! work done three other ways:
//!
//! - **floor**: one plain `ssh` process per host, all at once, each running the same Podman
//!   commands (stop what runs, pull by digest, create with the same sandbox, start, poll
//!   the health check);
//! - **Ansible** (ansible-core from PyPI): a playbook of `command`/`shell` tasks, forks =
//!   hosts, pipelining, ControlPersist;
//! - **pyinfra** (PyPI): the same commands as `server.shell` operations, parallel = hosts.
//!
//! Every run deploys an image none of the hosts has yet (a new digest), so every
//! contender pulls. Each figure is a whole process under GNU `time`: wall time, CPU
//! seconds (user + system, the process and the children it waited for) and peak RSS of
//! the largest process.

use crate::bench::{median, ms};
use lab::{Behaviour, Lab, LabConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One timed run: wall time, CPU seconds, peak RSS (KiB).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    wall: Duration,
    cpu: f64,
    rss_kib: u64,
}

/// Runs `cmd` under GNU time; fails unless it succeeds.
pub fn timed(cmd: &mut Command, what: &str) -> anyhow::Result<Run> {
    let out_file = tempfile::NamedTempFile::new()?;
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %U %S %M").arg("-o").arg(out_file.path()).arg(program).args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    let out = t.stdin(Stdio::null()).output()?;
    if std::env::var_os("AGENTCTL_LOG").is_some() {
        // Tracing asked for: each run's log, to see where the time goes.
        eprintln!("--- {what}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr).lines().rev().take(15).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stdout).lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    let text = std::fs::read_to_string(out_file.path())?;
    let f: Vec<&str> = text.split_whitespace().collect();
    anyhow::ensure!(f.len() == 4, "unexpected `time` output: {text}");
    Ok(Run {
        wall: Duration::from_secs_f64(f[0].parse()?),
        cpu: f[1].parse::<f64>()? + f[2].parse::<f64>()?,
        rss_kib: f[3].parse()?,
    })
}

pub struct Summary {
    pub wall: Duration,
    pub cpu: f64,
    pub rss_mib: f64,
}

pub fn summarize(runs: &[Run]) -> Summary {
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu).collect();
    cpu.sort_by(f64::total_cmp);
    Summary {
        wall: median(runs.iter().map(|r| r.wall).collect()),
        cpu: cpu[cpu.len() / 2],
        rss_mib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
    }
}

/// A Python tool from PyPI in a venv under `target/` (installed once).
fn venv_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/bench-{name}"));
    let bin = venv.join("bin").join(name);
    if !bin.exists() {
        let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?.success()
            && Command::new(venv.join("bin/pip")).args(["install", "--quiet", package]).status()?.success();
        anyhow::ensure!(ok, "could not install {package} into {}", venv.display());
    }
    Ok(bin)
}

/// The Podman commands every other contender runs on each host: stop what runs, pull by
/// digest, create with agentctl's sandbox options, start, poll the HTTP health check.
fn host_script(image: &str, name: &str) -> String {
    format!(
        "set -e\n\
         for c in $(podman ps -q); do podman stop -t 10 \"$c\" >/dev/null; done\n\
         podman pull -q {image} >/dev/null\n\
         podman create --name {name} --user \"$(id -u agent-api):$(id -g agent-api)\" --network host --read-only \
         --cap-drop all --security-opt no-new-privileges --memory 256m --cpus 0.5 --pids-limit 128 \
         --secret API_TOKEN,type=env,target=API_TOKEN --pull never {image} >/dev/null\n\
         podman start {name} >/dev/null\n\
         {health}",
        health = health_loop()
    )
}

fn health_loop() -> &'static str {
    "n=0; until bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3 && \
     IFS= read -r l <&3 && case \"$l\" in *\" 200\"*) exit 0;; esac; exit 1' 2>/dev/null; do n=$((n+1)); \
     [ $n -lt 100 ] || exit 1; sleep 0.2; done\n"
}

pub async fn deploy(
    sizes: &[usize],
    runs: usize,
    ansible: bool,
    pyinfra: bool,
    kex: Option<&str>,
) -> anyhow::Result<()> {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{profile}/agentctl"));
    anyhow::ensure!(bin.exists(), "build {} first (cargo build --{profile} -p agentctl)", bin.display());
    anyhow::ensure!(Path::new("/usr/bin/time").exists(), "GNU time is needed: apt-get install time");
    let ansible_bin = if ansible { Some(venv_tool("ansible-playbook", "ansible-core")?) } else { None };
    let pyinfra_bin = if pyinfra { Some(venv_tool("pyinfra", "pyinfra")?) } else { None };
    println!("deploy benchmark ({runs} runs each, medians; {profile} build; {} cores)", num_cpus());
    for &n in sizes {
        let lab =
            Lab::start(LabConfig { hosts: n, staging: n, registry: true, dir: None, egress: false, podman: true })
                .await?;
        let m = lab.manifests();
        // One batch, every host at once, for every contender.
        let env = m.join("environments/staging.toml");
        // Every host at once on this machine's two cores: a health check may wait its turn.
        let text = std::fs::read_to_string(&env)?
            .replace("batch = 1\n", "batch = \"100%\"\n")
            .replace("health_timeout_secs = 10", "health_timeout_secs = 300");
        std::fs::write(&env, text)?;
        let svc = m.join("services/api.toml");
        std::fs::write(
            &svc,
            std::fs::read_to_string(&svc)?
                .replace("retries = 5", "retries = 120")
                .replace("timeout_secs = 2", "timeout_secs = 10"),
        )?;
        let cp = m.join("controlplane.toml");
        let mut text = std::fs::read_to_string(&cp)?.replace("concurrency = 16", &format!("concurrency = {n}"));
        if let Some(k) = kex {
            text = text.replace("# key_exchange = [\"curve25519-sha256\"]", &format!("key_exchange = [\"{k}\"]"));
            anyhow::ensure!(
                text.contains(&format!("key_exchange = [\"{k}\"]")),
                "the lab's controlplane.toml has no key_exchange line"
            );
        }
        std::fs::write(&cp, text)?;
        let ctl = |args: &[&str]| -> anyhow::Result<std::process::Output> {
            Ok(Command::new(&bin).arg("--manifests").arg(&m).args(args).env("COSIGN_PASSWORD", "").output()?)
        };
        let key = lab.release_key().display().to_string();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let image = |tag: String| {
            let lab = &lab;
            async move { lab.push_app(&tag, &tag, &Behaviour::Healthy, None).await }
        };
        // A release running everywhere first: every timed run replaces one.
        let mut releases = Vec::new();
        for r in 0..=runs {
            let img = image(format!("agentctl-{n}-{r}")).await?.to_string();
            for args in [
                vec!["sign", img.as_str(), "--key", key.as_str()],
                vec!["release", "add", "api", &img, "--commit", commit],
            ] {
                let out = ctl(&args)?;
                anyhow::ensure!(
                    out.status.success(),
                    "`agentctl {}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            releases.push(img.rsplit('@').next().unwrap_or_default().to_owned());
        }
        let out = ctl(&["promote", "api", "--env", "staging", "--release", &releases[0], "--apply"])?;
        anyhow::ensure!(out.status.success(), "first promote: {}", String::from_utf8_lossy(&out.stderr));

        // agentctl and the floor take turns, run after run, so both see the same machine
        // (on two shared cores, minutes apart is another machine).
        let set = controlplane::manifest::load(&m)?;
        let hosts: Vec<_> = set.environments.iter().flat_map(|e| e.hosts.clone()).collect();
        let identity = set.resolve(&set.ssh.identity);
        let kex_list: Option<Vec<String>> = kex.map(|k| vec![k.to_owned()]);
        let ssh = controlplane::ssh::SshClient::new(&hosts, &identity, Duration::from_secs(10))?
            .with_key_exchange(kex_list.as_deref())?;
        // One process for a whole floor run (so `time` sees every ssh): a shell that starts
        // one ssh per host with `script` and waits for all.
        let on_every_host = |script: &str| {
            let sh = controlplane::remote::RemoteCommand::script(script, Vec::<String>::new()).shell_line();
            let mut all = String::from("set -e\npids=\"\"\n");
            for h in &hosts {
                let args: Vec<String> = ssh.ssh_args(h).iter().map(|a| controlplane::remote::quote(a)).collect();
                all.push_str(&format!(
                    "ssh {} -- {} </dev/null >/dev/null & pids=\"$pids $!\"\n",
                    args.join(" "),
                    controlplane::remote::quote(&sh)
                ));
            }
            all.push_str("for p in $pids; do wait \"$p\"; done\n");
            all
        };
        // The floor's images, pushed before the runs (and so new to every host).
        let mut floor_images = Vec::new();
        for r in 0..runs {
            floor_images.push(image(format!("floor-{n}-{r}")).await?.to_string());
        }
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for (r, d) in releases[1..].iter().enumerate() {
            let mut c = Command::new(&bin);
            c.arg("--manifests").arg(&m).args(["promote", "api", "--env", "staging", "--release", d, "--apply"]);
            ours.push(timed(&mut c, "agentctl promote --apply")?);
            let script = host_script(&floor_images[r], &format!("floor-{r}"));
            floor.push(timed(Command::new("sh").arg("-c").arg(on_every_host(&script)), "plain ssh")?);
            // Untimed: the floor's container gives the port back for agentctl's next run.
            let cleanup = "for c in $(podman ps -q --filter name=floor-); do podman stop -t 1 \"$c\" >/dev/null; done";
            let out = Command::new("sh").arg("-c").arg(on_every_host(cleanup)).output()?;
            anyhow::ensure!(out.status.success(), "stopping the floor's containers failed");
        }
        // The last agentctl release is what `status` must find (the floor stopped it).
        let last = releases.last().expect("runs").clone();
        let out = ctl(&["promote", "api", "--env", "staging", "--release", &last, "--apply"])?;
        anyhow::ensure!(out.status.success(), "restarting the last release: {}", String::from_utf8_lossy(&out.stderr));
        let out = ctl(&["status"])?;
        anyhow::ensure!(out.status.success(), "status after the runs: {}", String::from_utf8_lossy(&out.stdout));

        let mut contenders: Vec<(&str, Vec<Run>)> =
            vec![("agentctl promote --apply", ours), ("plain ssh (floor)", floor)];
        let work = lab.dir().join("bench-work");
        std::fs::create_dir_all(&work)?;
        if let Some(ansible) = &ansible_bin {
            let inventory = work.join("inventory.ini");
            let mut inv = String::from("[lab]\n");
            for h in &hosts {
                inv.push_str(&format!(
                    "{} ansible_host={} ansible_port={} ansible_user={}\n",
                    h.name, h.address, h.port, h.user
                ));
            }
            inv.push_str(&format!(
                "[lab:vars]\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s{}'\nansible_python_interpreter=/usr/bin/python3\n",
                identity.display(),
                ssh.known_hosts().display(),
                kex.map(|k| format!(" -o KexAlgorithms={k}")).unwrap_or_default()
            ));
            std::fs::write(&inventory, inv)?;
            let playbook = work.join("deploy.yml");
            std::fs::write(
                &playbook,
                format!(
                    "- hosts: lab\n  gather_facts: false\n  tasks:\n\
                     \x20   - name: stop what runs\n      shell: for c in $(podman ps -q); do podman stop -t 10 \"$c\"; done\n\
                     \x20   - name: pull\n      command: podman pull -q {{{{ image }}}}\n\
                     \x20   - name: create\n      shell: podman create --name {{{{ name }}}} --user \"$(id -u agent-api):$(id -g agent-api)\" --network host --read-only --cap-drop all --security-opt no-new-privileges --memory 256m --cpus 0.5 --pids-limit 128 --secret API_TOKEN,type=env,target=API_TOKEN --pull never {{{{ image }}}}\n\
                     \x20   - name: start\n      command: podman start {{{{ name }}}}\n\
                     \x20   - name: health\n      shell: {}\n      args:\n        executable: /bin/bash\n",
                    serde_json::to_string(health_loop())?
                ),
            )?;
            let mut runs_a = Vec::new();
            for r in 0..runs {
                let img = image(format!("ansible-{n}-{r}")).await?.to_string();
                let mut c = Command::new(ansible);
                c.arg("-i")
                    .arg(&inventory)
                    .arg(&playbook)
                    .arg("-f")
                    .arg(n.to_string())
                    .arg("-e")
                    .arg(format!("image={img} name=ansible-{r}"))
                    .env("ANSIBLE_PIPELINING", "True")
                    .env("ANSIBLE_HOST_KEY_CHECKING", "True")
                    .env("ANSIBLE_LOCAL_TEMP", work.join("ansible-tmp"))
                    .env("ANSIBLE_SSH_CONTROL_PATH_DIR", work.join("cp"));
                runs_a.push(timed(&mut c, "ansible-playbook")?);
            }
            contenders.push(("Ansible (forks = hosts, pipelining, ControlPersist)", runs_a));
        }
        if let Some(pyinfra) = &pyinfra_bin {
            let inventory = work.join("inventory.py");
            let mut inv = String::from("lab = [\n");
            for h in &hosts {
                inv.push_str(&format!(
                    "    (\"{}\", {{\"ssh_hostname\": \"{}\", \"ssh_port\": {}, \"ssh_user\": \"{}\", \"ssh_key\": \"{}\", \"ssh_known_hosts_file\": \"{}\", \"ssh_strict_host_key_checking\": \"yes\"}}),\n",
                    h.name,
                    h.address,
                    h.port,
                    h.user,
                    identity.display(),
                    ssh.known_hosts().display()
                ));
            }
            inv.push_str("]\n");
            std::fs::write(&inventory, inv)?;
            let deploy = work.join("deploy.py");
            std::fs::write(
                &deploy,
                "from pyinfra import host\nfrom pyinfra.operations import server\n\
                 server.shell(name=\"deploy\", commands=[host.data.script])\n",
            )?;
            let mut runs_p = Vec::new();
            for r in 0..runs {
                let img = image(format!("pyinfra-{n}-{r}")).await?.to_string();
                let script = host_script(&img, &format!("pyinfra-{r}"));
                let mut c = Command::new(pyinfra);
                c.arg(&inventory)
                    .arg(&deploy)
                    .arg("-y")
                    .arg("--parallel")
                    .arg(n.to_string())
                    .arg("--data")
                    .arg(format!(
                        "script={}",
                        controlplane::remote::RemoteCommand::script(&script, Vec::<String>::new()).shell_line()
                    ))
                    .current_dir(&work);
                runs_p.push(timed(&mut c, "pyinfra")?);
            }
            contenders.push(("pyinfra (parallel = hosts)", runs_p));
        }

        println!("\n{n} hosts (this machine holds them as Podman VMs: one network namespace, sshd and container storage each)");
        let base = summarize(&contenders[0].1);
        let floor = summarize(&contenders[1].1);
        for (label, runs) in &contenders {
            let s = summarize(runs);
            println!(
                "  {label:<52} {:>12}  cpu {:>6.2} s  peak RSS {:>6.1} MiB  (vs agentctl {:.2}x, vs floor {:.2}x)",
                ms(s.wall),
                s.cpu,
                s.rss_mib,
                s.wall.as_secs_f64() / base.wall.as_secs_f64(),
                s.wall.as_secs_f64() / floor.wall.as_secs_f64()
            );
        }
        drop(lab);
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
