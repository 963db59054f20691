//! `cargo run --release -p xtask -- bench contents`: `agentctl verify` of an image with
//! one large layer — it streams and scans every file of every layer — against the floor,
//! the same image through `skopeo copy` to a directory (download and digest checks, no
//! scan), in the same run on the same lab registry, taking turns. Reports medians, MB/s
//! of the layer as served, CPU seconds and peak RSS (GNU `time`).

use crate::bench::ms;
use crate::bench_deploy::{summarize, timed};
use lab::{Lab, LabConfig};
use std::process::Command;

/// `mib` files of 1 MiB each: printable, partly repetitive text (log- and config-like:
/// gzip takes it to about a third), deterministic.
fn files(mib: usize) -> Vec<(String, Vec<u8>)> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..mib)
        .map(|i| {
            let mut data = Vec::with_capacity(1 << 20);
            while data.len() < (1 << 20) {
                let n = next();
                let word = format!("key{}=value-{:x} ", n % 97, n >> 40);
                data.extend_from_slice(word.as_bytes());
                if n % 11 == 0 {
                    data.push(b'\n');
                }
            }
            data.truncate(1 << 20);
            (format!("data/part-{i:04}.txt"), data)
        })
        .collect()
}

pub async fn contents(mib: usize, runs: usize) -> anyhow::Result<()> {
    let lab =
        Lab::start(LabConfig { hosts: 0, staging: 0, registry: true, dir: None, egress: false, podman: false }).await?;
    let files = files(mib);
    let layer: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let img = lab.push_layers("bench/contents", "big", &[vec![("app/run", b"#!/bin/sh\n")], layer], true).await?;
    let reg = lab.registry_client();
    let (manifest, _) = reg.manifest(&img.repository, img.digest.as_str()).await?.expect("just pushed");
    let served: u64 =
        controlplane::cosign::manifest_layers(&manifest).map_err(anyhow::Error::msg)?.iter().map(|l| l.size).sum();
    let key = controlplane::keys::SigningKey::load(&lab.release_key(), b"")?;
    controlplane::sign::sign_bundle(&reg, &img, &key).await?;
    let bin = std::env::current_exe()?.with_file_name("agentctl");
    anyhow::ensure!(bin.exists(), "build agentctl first: cargo build --release -p agentctl");
    let m = lab.manifests();
    let image = img.to_string();
    println!(
        "contents benchmark: one image, {mib} MiB of files in a gzip layer ({:.1} MiB as served); {runs} runs each, taking turns; medians",
        served as f64 / f64::from(1 << 20)
    );
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut verify = Command::new(&bin);
        verify.arg("--manifests").arg(&m).args(["verify", &image]);
        ours.push(timed(&mut verify, "agentctl verify")?);
        let dir = tempfile::tempdir()?;
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--src-tls-verify=false", &format!("docker://{image}")])
            .arg(format!("dir:{}", dir.path().join("image").display()));
        floor.push(timed(&mut copy, "skopeo copy")?);
    }
    let (a, f) = (summarize(&ours), summarize(&floor));
    let rate = |wall: std::time::Duration| served as f64 / f64::from(1 << 20) / wall.as_secs_f64();
    println!(
        "  agentctl verify (signature + scan): {} ({:.0} MB/s served, {:.1} MiB/s of files), {:.2} CPU-s, peak RSS {:.0} MiB",
        ms(a.wall),
        rate(a.wall) * 1.048_576,
        mib as f64 / a.wall.as_secs_f64(),
        a.cpu,
        a.rss_mib
    );
    println!(
        "  floor: skopeo copy to dir:        {} ({:.0} MB/s served), {:.2} CPU-s, peak RSS {:.0} MiB",
        ms(f.wall),
        rate(f.wall) * 1.048_576,
        f.cpu,
        f.rss_mib
    );
    println!(
        "  ratio: agentctl / floor = {:.2}x wall, {:.2}x peak RSS",
        a.wall.as_secs_f64() / f.wall.as_secs_f64(),
        a.rss_mib / f.rss_mib
    );
    Ok(())
}
