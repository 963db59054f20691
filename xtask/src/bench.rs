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

/// `verify` of one image and of `images` images concurrently against the lab registry.
pub async fn verify(images: usize, runs: usize) -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig { hosts: 0, staging: 0, registry: true, dir: None }).await?;
    let key = SigningKey::load(&lab.release_key(), b"")?;
    let registry = lab.registry_client();
    let mut refs = Vec::new();
    for i in 0..images {
        let img = lab.push_image("bench/api", &format!("v{i}"), &format!("bench image {i}")).await?;
        controlplane::sign::sign(&registry, &img, &key).await?;
        refs.push(img.to_string());
    }
    let public = PublicKey::from_pem("release", key.public().pem())?;

    let mut one = Vec::new();
    let mut trips_one = 0;
    for _ in 0..runs {
        let reg = lab.registry_client();
        let v = Verifier { registry: &reg, keys: vec![public.clone()], builders: vec![] };
        let t = Instant::now();
        v.verify(&refs[0], &Requirements::default()).await?;
        one.push(t.elapsed());
        trips_one = reg.round_trips();
    }

    let mut many = Vec::new();
    let mut trips_many = 0;
    for _ in 0..runs {
        let reg = lab.registry_client();
        let v = Verifier { registry: &reg, keys: vec![public.clone()], builders: vec![] };
        let t = Instant::now();
        let req = Requirements::default();
        let results = futures::future::join_all(refs.iter().map(|r| v.verify(r, &req))).await;
        many.push(t.elapsed());
        for r in results {
            r?;
        }
        trips_many = reg.round_trips();
    }
    println!("verify benchmark (lab registry on loopback, {runs} runs each, medians)");
    println!("  1 image:                 {}  ({trips_one} registry round trips)", ms(median(one.clone())));
    println!(
        "  {images} images concurrently:  {}  ({:.1} round trips per image; {:.1} images/s)",
        ms(median(many.clone())),
        trips_many as f64 / images as f64,
        images as f64 / median(many).as_secs_f64()
    );
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
