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
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/agentctl");
    let dir = keep.then(|| std::path::absolute("lab-run")).transpose()?;
    if let Some(d) = &dir {
        if d.exists() {
            bail!("`{}` exists: run `cargo xtask lab down` first", d.display());
        }
    }
    let lab = Lab::start(LabConfig { hosts: 3, staging: 1, registry: true, dir }).await.context("starting the lab")?;
    println!(
        "lab: registry {} and {} golden VMs in `{}`",
        lab.registry_host(),
        lab.info.hosts.len(),
        lab.dir().display()
    );
    let ctl = Agentctl { bin, manifests: lab.manifests() };

    ctl.run(&["check"], &[], 0)?;
    let image = lab.push_image("demo/api", "v1", "quickstart release 1").await?;
    println!("\npushed {image} (tag v1)");

    println!("\nquickstart: ok");
    if keep {
        let info = lab.detach();
        println!("the lab keeps running in `{}`; stop it with `cargo xtask lab down`", info.dir.display());
    }
    Ok(())
}
