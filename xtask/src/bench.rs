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
