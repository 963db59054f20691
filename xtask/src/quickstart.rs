//! The main job end to end on embedded defaults: a fresh lab (SQLite state, golden VMs
//! and a registry on loopback) driven by the real `agentctl` binary.

use anyhow::{bail, Context as _};
use lab::{Lab, LabConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Agentctl {
    bin: PathBuf,
    manifests: PathBuf,
}

impl Agentctl {
    /// Runs `agentctl ARGS`, echoing the command and its output; fails unless it exits `want`.
    fn run(&self, args: &[&str], env: &[(&str, &str)], want: i32) -> anyhow::Result<String> {
        println!("\n$ agentctl {}", args.join(" "));
        let out = Command::new(&self.bin)
            .arg("--manifests")
            .arg(&self.manifests)
            .args(args)
            .envs(env.iter().copied())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if out.status.code() != Some(want) {
            bail!("`agentctl {}` exited {:?}, expected {want}", args.join(" "), out.status.code());
        }
        Ok(stdout)
    }
}

pub async fn run(keep: bool) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO")).args(["build", "--quiet", "-p", "agentctl"]).status()?;
    if !status.success() {
        bail!("building agentctl failed");
    }
    // Where cargo put it: `CARGO_TARGET_DIR` when set, else the workspace's `target/`.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/agentctl");
    let dir = keep.then(|| std::path::absolute("lab-run")).transpose()?;
    if let Some(d) = &dir {
        if d.exists() {
            bail!("`{}` exists: run `cargo xtask lab down` first", d.display());
        }
    }
    // Real containers need root (rootful Podman, the VMs' network namespaces); without
    // it the VMs run the command-runtime shim and nothing is served.
    let podman = is_root();
    if !podman {
        println!("not root: the golden VMs use the `agent-runtime` shim instead of Podman (nothing will answer)");
    }
    let lab = Lab::start(LabConfig { hosts: 3, staging: 1, registry: true, dir, egress: false, podman })
        .await
        .context("starting the lab")?;
    println!(
        "lab: registry {} and {} golden VMs in `{}`",
        lab.registry_host(),
        lab.info.hosts.len(),
        lab.dir().display()
    );
    let ctl = Agentctl { bin, manifests: lab.manifests() };

    let env: &[(&str, &str)] = &[("COSIGN_PASSWORD", ""), ("USER", "quickstart")];
    let key = lab.release_key().display().to_string();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    ctl.run(&["check"], env, 0)?;

    // CI: an image pushed by digest, signed, with provenance, recorded as a release.
    let v1 = lab.push_app("v1", "v1", &lab::Behaviour::Healthy, None).await?.to_string();
    println!("\npushed {v1}");
    ctl.run(&["verify", &v1], env, 4)?;
    ctl.run(&["sign", &v1, "--key", &key], env, 0)?;
    let predicate = lab.dir().join("provenance.json");
    std::fs::write(
        &predicate,
        serde_json::json!({
            "builder": { "id": "https://github.com/actions/runner" },
            "invocation": { "configSource": { "uri": "git+https://example.com/demo/api", "digest": { "sha1": commit } } },
        })
        .to_string(),
    )?;
    ctl.run(
        &["attest", &v1, "--predicate", &predicate.display().to_string(), "--type", "slsaprovenance", "--key", &key],
        env,
        0,
    )?;
    ctl.run(&["verify", &v1], env, 0)?;
    ctl.run(&["release", "add", "api", &v1, "--commit", commit], env, 0)?;

    // Operator: plan (a dry-run), apply, promote on, check.
    let digest = v1.rsplit('@').next().unwrap_or_default().to_owned();
    ctl.run(&["promote", "api", "--env", "prod", "--release", &digest, "--apply"], env, 4)?;
    ctl.run(&["promote", "api", "--env", "staging", "--release", &digest], env, 0)?;
    ctl.run(&["promote", "api", "--env", "staging", "--release", &digest, "--apply"], env, 0)?;
    ctl.run(&["promote", "api", "--env", "prod", "--release", &digest, "--apply"], env, 0)?;
    ctl.run(&["status"], env, 0)?;
    answers(&lab, podman, "v1")?;

    // A second release, then back.
    let v2 = lab.push_app("v2", "v2", &lab::Behaviour::Healthy, None).await?.to_string();
    ctl.run(&["sign", &v2, "--key", &key], env, 0)?;
    ctl.run(&["release", "add", "api", &v2, "--commit", commit], env, 0)?;
    let digest2 = v2.rsplit('@').next().unwrap_or_default().to_owned();
    ctl.run(&["promote", "api", "--env", "staging", "--release", &digest2, "--apply"], env, 0)?;
    answers_on(&lab, podman, "staging", "v2")?;
    ctl.run(&["rollback", "api", "--env", "staging", "--apply"], env, 0)?;
    ctl.run(&["status"], env, 0)?;
    answers(&lab, podman, "v1")?;

    // Auditor: the receipts, checked offline.
    ctl.run(&["receipts", "list"], env, 0)?;
    ctl.run(&["receipts", "verify"], env, 0)?;
    let report = lab.dir().join("receipts-report.html");
    ctl.run(&["receipts", "report", "--out", &report.display().to_string()], env, 0)?;

    println!("\nquickstart: ok");
    if keep {
        let info = lab.detach();
        println!("the lab keeps running in `{}`; stop it with `cargo xtask lab down`", info.dir.display());
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// What every VM's workload answers on `/`: each must say `api VERSION`.
fn answers(lab: &Lab, podman: bool, version: &str) -> anyhow::Result<()> {
    answers_on(lab, podman, "", version)
}

fn answers_on(lab: &Lab, podman: bool, environment: &str, version: &str) -> anyhow::Result<()> {
    if !podman {
        return Ok(());
    }
    for vm in lab.info.hosts.iter().filter(|h| environment.is_empty() || h.environment == environment) {
        let addr = std::net::SocketAddr::new(vm.address(), 8080);
        let body = http_get(addr, "/").with_context(|| format!("GET http://{addr}/ ({})", vm.name))?;
        println!("\n$ curl http://{addr}/    # {}\n{}", vm.name, body.trim_end());
        if body.trim_end() != format!("api {version}") {
            bail!("{} answered `{}`, expected `api {version}`", vm.name, body.trim_end());
        }
    }
    Ok(())
}

/// A plain HTTP/1.0 GET; the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("answered `{}`", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
