//! `cargo xtask bench store`: the state store on PostgreSQL against SQLite.
//!
//! 1. Receipts appended per second by 1 and by 4 concurrent control planes (each its own
//!    connection pool, signing key use and receipts directory, as separate `agentctl`
//!    processes would), on a real PostgreSQL and on SQLite; the chain is verified after.
//! 2. `status` and a `promote` dry-run (the plan) over a lab of N hosts, wall time with the
//!    state on PostgreSQL vs on SQLite, in the same run, alternating.

use crate::bench::{median, ms};
use controlplane::keys::{PublicKey, SigningKey};
use controlplane::receipt::{self, ReceiptBody, ReceiptFile, ReceiptKind};
use controlplane::receipt_log::ReceiptLog;
use controlplane::store::{Location, SqlStore, Store as _};
use lab::postgres::{self, Postgres};
use lab::{Lab, LabConfig};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn body(i: usize) -> ReceiptBody {
    ReceiptBody {
        rollout: None,
        kind: ReceiptKind::Apply,
        time: "2026-11-24T12:00:00Z".into(),
        operator: format!("cp{}", i % 4),
        plan_id: Some(format!("sha256:{i:064x}")),
        environment: Some("prod".into()),
        service: Some("api".into()),
        release: None,
        hosts: vec![],
        approvals: vec![],
        outcome: "succeeded".into(),
        detail: None,
    }
}

/// Appends `total` receipts from `writers` concurrent control planes; returns the wall time.
async fn append(location: &Location, writers: usize, total: usize, key: &Arc<SigningKey>) -> anyhow::Result<Duration> {
    let tmp = tempfile::tempdir()?;
    let mut stores = Vec::new();
    for w in 0..writers {
        stores.push((SqlStore::open(location).await?, ReceiptLog::new(tmp.path().join(format!("cp{w}")))));
    }
    let start = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(w, (store, log))| {
            let key = key.clone();
            tokio::spawn(async move {
                for i in (w..total).step_by(writers) {
                    log.append(body(i), &key, &store).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// The chain in the store verifies and has exactly `count` receipts.
async fn check_chain(location: &Location, public: &PublicKey, count: usize) -> anyhow::Result<()> {
    let stored = SqlStore::open(location).await?.stored_receipts(0).await?;
    let files: Vec<ReceiptFile> = stored.into_iter().map(ReceiptFile::from).collect();
    let report = receipt::verify_chain(&files, &[], public, None);
    anyhow::ensure!(report.ok() && report.receipts == count, "chain: {:?}", report.problems.first());
    Ok(())
}

fn fresh_postgres(pg: &Postgres, n: &mut usize) -> anyhow::Result<Location> {
    *n += 1;
    let db = format!("bench{n}");
    pg.create_database(&db)?;
    Ok(Location::Postgres { url: pg.url(&db), password: Some(postgres::PASSWORD.into()) })
}

pub async fn store(hosts: usize, receipts: usize, runs: usize) -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut dbs = 0;
    let key = Arc::new(SigningKey::generate()?);
    let tmp = tempfile::tempdir()?;
    let (_, public_path) = key.write_pair(&tmp.path().join("receipts"), b"")?;
    let public = PublicKey::load(&public_path)?;

    println!("receipts appended per second ({receipts} per run, median of {runs}; each append signs, commits and writes the directory)");
    println!("{:<12} {:>8} {:>14} {:>12}", "backend", "writers", "median wall", "receipts/s");
    for writers in [1, 4] {
        for backend in ["PostgreSQL", "SQLite"] {
            let mut times = Vec::new();
            for run in 0..runs {
                let location = if backend == "PostgreSQL" {
                    fresh_postgres(&pg, &mut dbs)?
                } else {
                    Location::Sqlite(tmp.path().join(format!("s{writers}-{run}.db")))
                };
                times.push(append(&location, writers, receipts, &key).await?);
                check_chain(&location, &public, receipts).await?;
            }
            let m = median(times);
            println!("{backend:<12} {writers:>8} {:>14} {:>12.0}", ms(m), receipts as f64 / m.as_secs_f64());
        }
    }

    // status and plan over a lab, state on each backend.
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{profile}/agentctl"));
    anyhow::ensure!(bin.exists(), "build {} first", bin.display());
    let lab =
        Lab::start(LabConfig { hosts, staging: 1, registry: true, dir: None, egress: false, podman: false }).await?;
    let sqlite_manifests = lab.manifests();
    let ctl = |m: &std::path::Path, args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(&bin)
            .arg("--manifests")
            .arg(m)
            .args(args)
            .env("COSIGN_PASSWORD", "")
            .env("BENCH_DB_PASSWORD", postgres::PASSWORD)
            .output()?)
    };
    let must = |out: std::process::Output, what: &str| -> anyhow::Result<()> {
        anyhow::ensure!(out.status.success(), "`{what}` failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let v1 = lab.push_image("demo/api", "v1", "bench v1").await?.to_string();
    let v2 = lab.push_image("demo/api", "v2", "bench v2").await?.to_string();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let key_path = lab.release_key().display().to_string();
    for img in [&v1, &v2] {
        must(ctl(&sqlite_manifests, &["sign", img, "--key", &key_path])?, "sign")?;
        must(ctl(&sqlite_manifests, &["release", "add", "api", img, "--commit", commit])?, "release add")?;
    }
    for env in ["staging", "prod"] {
        must(ctl(&sqlite_manifests, &["promote", "api", "--env", env, "--release", &v1, "--apply"])?, "promote")?;
    }
    must(ctl(&sqlite_manifests, &["promote", "api", "--env", "staging", "--release", &v2, "--apply"])?, "promote v2")?;
    // The same records on PostgreSQL, through `state migrate`.
    let Location::Postgres { url, .. } = fresh_postgres(&pg, &mut dbs)? else { unreachable!() };
    must(
        ctl(&sqlite_manifests, &["state", "migrate", "--to", &url, "--to-password-env", "BENCH_DB_PASSWORD"])?,
        "migrate",
    )?;
    let pg_manifests = lab.dir().join("manifests-pg");
    copy_dir(&sqlite_manifests, &pg_manifests)?;
    let toml = pg_manifests.join("controlplane.toml");
    let text = std::fs::read_to_string(&toml)?;
    let state_line = text.lines().find(|l| l.starts_with("state = ")).unwrap_or_default().to_owned();
    std::fs::write(
        &toml,
        text.replace(&state_line, &format!("state = \"{url}\"\nstate_password_env = \"BENCH_DB_PASSWORD\"")),
    )?;

    let concurrency = hosts.to_string();
    let status: Vec<&str> = vec!["status", "--concurrency", &concurrency];
    let plan: Vec<&str> = vec!["promote", "api", "--env", "prod", "--release", &v2];
    println!("\n{hosts} lab hosts, median of {runs} alternating runs");
    println!("{:<22} {:>12} {:>12} {:>8}", "command", "SQLite", "PostgreSQL", "ratio");
    for (name, args, want) in [("status", &status, 0), ("promote (plan, dry-run)", &plan, 0)] {
        let (mut s, mut p) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            for (m, into) in [(&sqlite_manifests, &mut s), (&pg_manifests, &mut p)] {
                let t = Instant::now();
                let out = ctl(m, args)?;
                into.push(t.elapsed());
                anyhow::ensure!(
                    out.status.code() == Some(want),
                    "`{name}` exited {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let (ms_s, ms_p) = (median(s), median(p));
        println!("{name:<22} {:>12} {:>12} {:>7.2}x", ms(ms_s), ms(ms_p), ms_p.as_secs_f64() / ms_s.as_secs_f64());
    }
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
