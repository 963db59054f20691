//! `cargo xtask`: the project's tasks.
//!
//! - `setup`: install the Debian packages the lab and tests need (as root), or say which.
//! - `lab up|down|status`: a lab left running for an operator to try commands on.
//! - `quickstart`: the main job end to end with the real `agentctl` on a fresh lab.
//! - `test`: `setup`, then the whole test suite.

mod bench;
mod bench_contents;
mod bench_deploy;
mod bench_store;
mod bench_watch;
mod fuzz;
mod invariants;
mod quickstart;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use lab::{Lab, LabConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the lab and the tests need (Debian packages, as root; sigstore-python,
    /// zizmor, Debian's cosign 2.5 and 3.1), and cargo-fuzz for `cargo xtask fuzz`.
    Setup,
    /// A lab of real parts on loopback: a registry and golden VMs.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Bring up a lab and run the main job end to end with the real `agentctl`.
    Quickstart {
        /// Keep the lab running afterwards (in `lab-run/`).
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks against a fresh lab.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// A libFuzzer campaign over every parser of hostile input (`fuzz/`, docs/SECURITY.md
    /// "Hostile input"); a finding is kept in `tests/fixtures/hostile/` and fails the run.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Only these targets (repeatable); all by default.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// `none` (the default: safe Rust, the most cases) or `address`.
        #[arg(long, default_value = "none")]
        sanitizer: String,
    },
    /// The layering rules of docs/ARCHITECTURE.md, checked on the source (`cargo xtask test`
    /// runs it first).
    Invariants,
    /// Install what the tests need, then run them all (cargo nextest, else cargo test).
    Test {
        /// Extra arguments for the test runner.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// `verify` of one image and of N images concurrently, with registry round trips.
    Verify {
        #[arg(long, default_value_t = 20)]
        images: usize,
        #[arg(long, default_value_t = 15)]
        runs: usize,
    },
    /// `status` over N lab hosts against plain parallel ssh (the floor) and Ansible.
    Status {
        #[arg(long, default_value_t = 50)]
        hosts: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Skip the Ansible comparison (it installs ansible-core from PyPI into a venv).
        #[arg(long)]
        no_ansible: bool,
        /// One SSH key-exchange algorithm for all contenders (default: OpenSSH's).
        #[arg(long)]
        kex: Option<String>,
    },
    /// The state store: receipts/s by 1 and 4 control planes, status and plan over N
    /// hosts, PostgreSQL vs SQLite (starts a PostgreSQL server from Debian's package).
    Store {
        #[arg(long, default_value_t = 50)]
        hosts: usize,
        #[arg(long, default_value_t = 400)]
        receipts: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// `promote --apply` of a new release to N Podman hosts vs plain parallel ssh, Ansible
    /// and pyinfra doing the same Podman commands.
    Deploy {
        /// Host counts to measure, one lab each.
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        hosts: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip Ansible (installs ansible-core from PyPI into target/).
        #[arg(long)]
        no_ansible: bool,
        /// Skip pyinfra (installs pyinfra from PyPI into target/).
        #[arg(long)]
        no_pyinfra: bool,
        /// One key-exchange algorithm for agentctl, the floor and Ansible (OpenSSH's default
        /// list starts with the post-quantum hybrid; pyinfra's paramiko has none), e.g.
        /// `curve25519-sha256`: compares the tools with the same cryptography.
        #[arg(long)]
        kex: Option<String>,
    },
    /// A warm probe round over held connections (the watch) vs the local floor and Ansible.
    Watch {
        #[arg(long, default_value_t = 50)]
        hosts: usize,
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Skip the Ansible comparison.
        #[arg(long)]
        no_ansible: bool,
    },
    /// `verify` of an image with one large gzip layer (streamed and scanned for secret
    /// values) vs `skopeo copy` of it to a directory.
    Contents {
        /// MiB of files in the large layer.
        #[arg(long, default_value_t = 200)]
        mib: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// `receipts verify` over N receipts, in-process and through the binary.
    Receipts {
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start a lab and leave it running.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// How many of the hosts form `staging` (the rest are `prod`).
        #[arg(long, default_value_t = 1)]
        staging: usize,
        #[arg(long, default_value = "lab-run")]
        dir: PathBuf,
    },
    /// Stop the lab and remove its directory.
    Down {
        #[arg(long, default_value = "lab-run")]
        dir: PathBuf,
    },
    /// Build an image with one layer holding CONTENT and push it to the lab registry.
    Push {
        /// `path:tag` in the lab registry, e.g. `demo/api:v1`.
        name: String,
        #[arg(long)]
        content: String,
        #[arg(long, default_value = "lab-run")]
        dir: PathBuf,
    },
    /// Show what runs.
    Status {
        #[arg(long, default_value = "lab-run")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.task {
        Task::Setup => setup().and_then(|()| fuzz::install()),
        Task::Lab { command } => rt.block_on(lab_command(command)),
        Task::Quickstart { keep } => {
            setup()?;
            rt.block_on(quickstart::run(keep))
        }
        Task::Bench { bench } => {
            setup()?;
            match bench {
                BenchCommand::Verify { images, runs } => rt.block_on(bench::verify(images, runs)),
                BenchCommand::Deploy { hosts, runs, no_ansible, no_pyinfra, kex } => {
                    rt.block_on(bench_deploy::deploy(&hosts, runs, !no_ansible, !no_pyinfra, kex.as_deref()))
                }
                BenchCommand::Receipts { count, runs } => rt.block_on(bench::receipts(count, runs)),
                BenchCommand::Contents { mib, runs } => rt.block_on(bench_contents::contents(mib, runs)),
                BenchCommand::Store { hosts, receipts, runs } => rt.block_on(bench_store::store(hosts, receipts, runs)),
                BenchCommand::Watch { hosts, runs, no_ansible } => {
                    rt.block_on(bench_watch::watch(hosts, runs, !no_ansible))
                }
                BenchCommand::Status { hosts, runs, no_ansible, kex } => {
                    rt.block_on(bench::status(hosts, runs, !no_ansible, kex))
                }
            }
        }
        Task::Fuzz { minutes, targets, sanitizer } => fuzz::fuzz(minutes, &targets, &sanitizer),
        Task::Invariants => invariants::check(),
        Task::Test { args } => {
            invariants::check()?;
            setup()?;
            // cargo-nextest runs each test in its own process with a time limit
            // (.config/nextest.toml); plain `cargo test` where it is not installed.
            let nextest = Command::new(env!("CARGO"))
                .args(["nextest", "--version"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let runner: &[&str] = if nextest { &["nextest", "run", "--workspace"] } else { &["test", "--workspace"] };
            let status = Command::new(env!("CARGO")).args(runner).args(&args).status()?;
            if !status.success() {
                bail!("tests failed");
            }
            // nextest does not run doctests; some are compile-fail proofs (`Verified`).
            if nextest && args.is_empty() {
                let status = Command::new(env!("CARGO")).args(["test", "--doc", "--workspace"]).status()?;
                if !status.success() {
                    bail!("doctests failed");
                }
            }
            Ok(())
        }
    }
}

/// Installs missing Debian packages (root), or names them (not root).
pub fn setup() -> anyhow::Result<()> {
    let needed: &[(&str, &str)] = &[
        ("openssh-server", "/usr/sbin/sshd"),
        ("openssh-client", "/usr/bin/ssh"),
        ("docker-registry", lab::REGISTRY),
        ("skopeo", "/usr/bin/skopeo"),
        ("openssl", "/usr/bin/openssl"),
        (lab::postgres::PACKAGE, "/usr/lib/postgresql"),
        ("nftables", "/usr/sbin/nft"),
        ("iproute2", "/usr/sbin/ip"),
        ("podman", "/usr/bin/podman"),
        ("runc", "/usr/sbin/runc"),
        ("uidmap", "/usr/bin/newuidmap"),
        ("fuse-overlayfs", "/usr/bin/fuse-overlayfs"),
        ("busybox-static", lab::BUSYBOX),
        ("strace", "/usr/bin/strace"),
        // receipts/README.md's commands, run as written by a test.
        ("jq", "/usr/bin/jq"),
    ];
    let missing: Vec<&str> = needed.iter().filter(|(_, bin)| !Path::new(bin).exists()).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        sigstore_python()?;
        zizmor()?;
        return cosign();
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        bail!("missing Debian packages; run as root: apt-get update && apt-get install -y {}", missing.join(" "));
    }
    eprintln!("installing {}", missing.join(" "));
    let ok = Command::new("apt-get").arg("update").arg("-q").status()?.success()
        && Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    sigstore_python()?;
    zizmor()?;
    cosign()
}

/// The real cosign 2.5 and 3.1 the interop tests run (Debian's packages, under `target/`).
fn cosign() -> anyhow::Result<()> {
    for c in [lab::cosign::COSIGN_2_5, lab::cosign::COSIGN_3_1] {
        if !c.bin().exists() {
            eprintln!("installing cosign {} (Debian {}) into {}", c.version, c.suite, c.dir().display());
            c.install().map_err(|e| anyhow::anyhow!("cosign {}: {e}", c.version))?;
        }
    }
    Ok(())
}

/// sigstore-python (PyPI `sigstore`), the independent verifier the keyless tests compare
/// with, in its own venv under `target/` (`lab::sigstore::PYTHON_CLI`).
fn sigstore_python() -> anyhow::Result<()> {
    pypi_tool(Path::new(lab::sigstore::PYTHON_CLI), "sigstore", lab::sigstore::PYTHON_VERSION)
}

/// zizmor (PyPI `zizmor`), the independent workflow auditor `check --ci` is compared with
/// (`lab::ZIZMOR`).
fn zizmor() -> anyhow::Result<()> {
    pypi_tool(Path::new(lab::ZIZMOR), "zizmor", lab::ZIZMOR_VERSION)
}

/// `package==version` from PyPI in its own venv, whose `bin/` holds `cli`.
fn pypi_tool(cli: &Path, package: &str, version: &str) -> anyhow::Result<()> {
    if cli.exists() {
        return Ok(());
    }
    let venv = cli.parent().and_then(Path::parent).context("the venv directory")?;
    eprintln!("installing {package} {version} into {}", venv.display());
    let ok = Command::new("python3").arg("-m").arg("venv").arg(venv).status()?.success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", &format!("{package}=={version}")])
            .status()?
            .success();
    if !ok {
        bail!("could not install {package} into {} (python3 with venv and pip, and PyPI, are needed)", venv.display());
    }
    Ok(())
}

async fn lab_command(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up { hosts, staging, dir } => {
            setup()?;
            if dir.exists() {
                bail!("`{}` exists: run `cargo xtask lab down --dir {}` first", dir.display(), dir.display());
            }
            let dir = std::path::absolute(&dir)?;
            let started = Instant::now();
            // Real containers (Podman) when root; the command-runtime shim otherwise.
            let podman = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            let lab =
                Lab::start(LabConfig { hosts, staging, registry: true, dir: Some(dir.clone()), egress: false, podman })
                    .await?;
            let elapsed = started.elapsed();
            let info = lab.detach();
            println!(
                "lab up in {:.2} s: registry {} and {} golden VM(s) in `{}`",
                elapsed.as_secs_f64(),
                info.registry.as_ref().map(|r| r.host()).unwrap_or_default(),
                info.hosts.len(),
                dir.display()
            );
            println!("try: target/debug/agentctl --manifests {} check", dir.join("manifests").display());
            println!("stop: cargo xtask lab down --dir {}", dir.display());
            Ok(())
        }
        LabCommand::Down { dir } => {
            let info = lab::down(&dir).with_context(|| format!("no lab in `{}`", dir.display()))?;
            println!(
                "lab down: stopped {} process(es), removed `{}`",
                info.hosts.len() + usize::from(info.registry.is_some()),
                dir.display()
            );
            Ok(())
        }
        LabCommand::Push { name, content, dir } => {
            let info = read_info(&dir)?;
            let Some((path, tag)) = name.split_once(':') else { bail!("write NAME as `path:tag`, e.g. `demo/api:v1`") };
            let registry = info.registry.as_ref().context("this lab has no registry")?.host();
            let repo = controlplane::image::Repository::new(&format!("{registry}/{path}"))?;
            let client = controlplane::registry::Registry::new(&[controlplane::manifest::RegistrySettings {
                host: registry,
                insecure: true,
                username_env: None,
                password_env: None,
            }]);
            let digest = client.push_artifact(&repo, Some(tag), &lab::build_image(&content).artifact).await?;
            println!("{repo}@{digest}");
            Ok(())
        }
        LabCommand::Status { dir } => {
            let info = read_info(&dir)?;
            if let Some(r) = &info.registry {
                println!("registry  {}  pid {}  {}", r.host(), r.pid, if lab::alive(r.pid) { "up" } else { "DOWN" });
            }
            for h in &info.hosts {
                println!(
                    "{:<10} {:<8} 127.0.0.1:{}  pid {}  {}",
                    h.name,
                    h.environment,
                    h.port,
                    h.pid,
                    if lab::alive(h.pid) { "up" } else { "DOWN" }
                );
            }
            Ok(())
        }
    }
}

fn read_info(dir: &Path) -> anyhow::Result<lab::LabInfo> {
    let path = dir.join("lab.json");
    Ok(serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("no lab in `{}`", dir.display()))?)?)
}
