//! `cargo xtask fuzz --minutes N [--target NAME]...`: a libFuzzer campaign over every
//! target of `controlplane::fuzzing` (the `fuzz/` crate, built and run by `cargo fuzz`).
//!
//! Each target starts from its seeds (`fuzz/seeds/NAME/`: real examples) and the corpus of
//! inputs that once failed (`tests/fixtures/hostile/NAME/`), grows its working corpus in
//! `fuzz/corpus/NAME/` (not committed), and runs for the given minutes. An input that
//! makes a target panic, go over its allocation bound, run out of memory or time is
//! copied into `tests/fixtures/hostile/NAME/`, where the normal suite replays it
//! (`tests/hostile.rs`), and the campaign fails.
//!
//! `cargo fuzz` wants a nightly compiler for its `-Z` flags; this machine has only the
//! stable one, which accepts them with `RUSTC_BOOTSTRAP=1`. The default sanitizer is
//! `none`: the code is safe Rust, and the campaign's time goes to cases (`--sanitizer
//! address` checks the C and `unsafe` code of dependencies, at about half the speed).

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `cargo-fuzz` release `setup` installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// One target's campaign, as libFuzzer's final statistics report it.
struct Outcome {
    target: &'static str,
    secs: f64,
    cases: u64,
    peak_rss_mb: u64,
    corpus: usize,
    findings: Vec<PathBuf>,
}

/// Installs `cargo-fuzz` when it is missing.
pub fn install() -> anyhow::Result<()> {
    let present = Command::new(env!("CARGO")).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (crates.io)");
    let ok = Command::new(env!("CARGO"))
        .args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
        .status()?
        .success();
    if !ok {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(()) };
    for e in entries.flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).with_context(|| format!("copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Runs the campaign; fails when any target had a finding.
pub fn fuzz(minutes: f64, only: &[String], sanitizer: &str) -> anyhow::Result<()> {
    install()?;
    let root = root();
    let targets: Vec<&'static controlplane::fuzzing::Target> =
        controlplane::fuzzing::TARGETS.iter().filter(|t| only.is_empty() || only.iter().any(|o| o == t.name)).collect();
    if targets.is_empty() {
        let names: Vec<&str> = controlplane::fuzzing::TARGETS.iter().map(|t| t.name).collect();
        bail!("no such target; the targets are: {}", names.join(", "));
    }
    eprintln!("building the fuzz targets (sanitizer {sanitizer})");
    let built = Command::new(env!("CARGO"))
        .current_dir(root.join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build", "--release", "--debug-assertions", "--sanitizer", sanitizer])
        .status()?;
    if !built.success() {
        bail!("cargo fuzz build failed");
    }
    let secs = (minutes * 60.0).max(1.0).round() as u64;
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        // One target's trouble (a crash at start-up, a build problem) is reported with the
        // rest: the campaign goes on with the other targets.
        match campaign(&root, t, secs, sanitizer) {
            Ok(o) => outcomes.push(o),
            Err(e) => failed.push(format!("{}: {e:#}", t.name)),
        }
    }
    println!(
        "{:<16} {:>7} {:>12} {:>9} {:>9} {:>7}  findings",
        "target", "secs", "cases", "cases/s", "peak MB", "corpus"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>7.0} {:>12} {:>9.0} {:>9} {:>7}  {}",
            o.target,
            o.secs,
            o.cases,
            o.cases as f64 / o.secs.max(1.0),
            o.peak_rss_mb,
            o.corpus,
            if o.findings.is_empty() {
                "none".to_owned()
            } else {
                o.findings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        );
    }
    for f in &failed {
        println!("could not fuzz {f}");
    }
    let found: usize = outcomes.iter().map(|o| o.findings.len()).sum();
    if !failed.is_empty() {
        bail!("{} target(s) could not run; {found} finding(s)", failed.len());
    }
    if found > 0 {
        bail!("{found} finding(s), each kept in tests/fixtures/hostile/ (the suite replays them): fix, then run again");
    }
    Ok(())
}

fn campaign(
    root: &Path,
    t: &'static controlplane::fuzzing::Target,
    secs: u64,
    sanitizer: &str,
) -> anyhow::Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(t.name);
    let artifacts = root.join("fuzz/artifacts").join(t.name);
    let kept = root.join("tests/fixtures/hostile").join(t.name);
    // Artifacts of earlier runs were kept already: a finding now is a file of this run.
    let _ = std::fs::remove_dir_all(&artifacts);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    copy_files(&root.join("fuzz/seeds").join(t.name), &corpus)?;
    copy_files(&kept, &corpus)?;

    eprintln!("fuzzing `{}` for {secs} s: {}", t.name, t.what);
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO"))
        .current_dir(root.join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--release", "--debug-assertions", "--sanitizer", sanitizer, t.name])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_len={}", t.max_input.min(1 << 20)))
        .args(["-rss_limit_mb=4096", "-timeout=20", "-print_final_stats=1"])
        .output()?;
    let elapsed = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |key: &str| -> u64 {
        log.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter_map(|v| v.trim().trim_start_matches(':').trim().parse().ok())
            .next_back()
            .unwrap_or(0)
    };
    // Every crash, out-of-memory, time-out or leak artifact of this run is a finding, kept
    // where the suite replays it (libFuzzer's `slow-unit-` reports are not findings).
    let mut findings = Vec::new();
    for e in std::fs::read_dir(&artifacts)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !["crash-", "oom-", "timeout-", "leak-"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        std::fs::create_dir_all(&kept)?;
        let dest = kept.join(e.file_name());
        std::fs::copy(e.path(), &dest)?;
        findings.push(dest);
    }
    if !out.status.success() && findings.is_empty() {
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "`{}`: cargo fuzz run failed without an artifact:\n{}",
            t.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Outcome {
        target: t.name,
        secs: elapsed,
        cases: stat("stat::number_of_executed_units"),
        peak_rss_mb: stat("stat::peak_rss_mb"),
        corpus: std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
        findings,
    })
}
