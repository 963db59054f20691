//! Interop with the real cosign binaries, never an imitation of them: Debian's cosign 2.5
//! (trixie) and 3.1 (sid), installed under `target/` by `cargo xtask setup`. Offline flags
//! only (no transparency log, no signing config, no TUF): the lab registry over plain HTTP
//! is the only thing either side talks to. Each direction is its own test.

mod common;

use common::*;
use controlplane::image::PinnedImage;
use lab::cosign::{Cosign, COSIGN_2_5, COSIGN_3_1};
use lab::LabConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A registry and the project, no VMs: signing and verification only.
fn registry_lab() -> LabConfig {
    LabConfig { hosts: 1, staging: 1, registry: true, dir: None, egress: false, podman: false }
}

const SLSA: &str = "https://slsa.dev/provenance/v1";

/// A provenance predicate (SLSA v1) naming `commit` and the trusted builder.
fn provenance(dir: &Path, commit: &str) -> PathBuf {
    let p = dir.join(format!("provenance-{commit}.json"));
    let predicate = serde_json::json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"ref": "refs/heads/main", "repository": "https://github.com/example/api"}},
            "resolvedDependencies": [{"uri": "git+https://github.com/example/api@refs/heads/main", "digest": {"gitCommit": commit}}]
        },
        "runDetails": {"builder": {"id": "https://github.com/actions/runner"}}
    });
    std::fs::write(&p, predicate.to_string()).unwrap();
    p
}

struct Cli {
    cosign: Cosign,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(cosign: Cosign) -> Self {
        let bin = cosign.bin();
        assert!(
            bin.exists(),
            "cosign {} is not installed at {}: run `cargo xtask setup` (it unpacks Debian's {} package)",
            cosign.version,
            bin.display(),
            cosign.suite
        );
        Self { cosign, home: tempfile::tempdir().unwrap() }
    }

    /// `cosign ARGS` with the lab key's (empty) password, a private home and TUF root (so
    /// nothing of the machine's is read or written).
    fn run(&self, args: &[&str]) -> Output {
        Command::new(self.cosign.bin())
            .args(args)
            .env("COSIGN_PASSWORD", "")
            .env("HOME", self.home.path())
            .env("TUF_ROOT", self.home.path().join("tuf"))
            .env("SIGSTORE_NO_CACHE", "1")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cosign {} {}: exit {:?}\n{}{}",
            self.cosign.version,
            args.join(" "),
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        out
    }
}

/// The offline flags cosign 3 needs to sign with a key and write nothing public.
const C3_SIGN: &[&str] =
    &["--use-signing-config=false", "--tlog-upload=false", "--allow-http-registry", "--allow-insecure-registry"];
/// cosign 2.5's: no transparency log upload.
const C2_SIGN: &[&str] = &["--tlog-upload=false", "--allow-http-registry", "--allow-insecure-registry", "--yes"];
/// Verification without a transparency log entry (a keyed signature made offline).
const VERIFY: &[&str] = &["--insecure-ignore-tlog=true", "--allow-http-registry", "--allow-insecure-registry"];

fn with<'a>(head: &[&'a str], flags: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(flags).chain(tail).copied().collect()
}

async fn pushed(w: &World, path: &str, content: &str) -> PinnedImage {
    w.lab.push_image(path, "v1", content).await.unwrap()
}

/// A second key pair (cosign format), trusted by no one unless the manifests say so.
fn other_key(w: &World) -> (String, String) {
    named_key(w, "other")
}

fn named_key(w: &World, name: &str) -> (String, String) {
    let dir = w.lab.dir().join("other-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let out = w.agentctl(&["keys", "generate", "--out", &dir.join(name).display().to_string()]);
    assert_ok(&out);
    (dir.join(format!("{name}.key")).display().to_string(), dir.join(format!("{name}.pub")).display().to_string())
}

/// cosign 3.1's default `sign` and `attest` (Sigstore bundles as OCI referrers, written
/// with the referrers tag schema on a registry without the referrers API) → agentctl finds
/// and verifies the signature and reads the provenance.
#[tokio::test(flavor = "multi_thread")]
async fn cosign3_signatures_and_attestations_verify_in_agentctl() {
    let w = World::start(registry_lab()).await;
    let c3 = Cli::new(COSIGN_3_1);
    let img = pushed(&w, "demo/api", "signed by cosign 3").await;
    let r = s(&img);
    let key = w.release_key();

    let out = w.agentctl(&["verify", &r]);
    assert_exit(&out, 4, "has no signature");
    c3.ok(&with(&["sign", "--key", &key], C3_SIGN, &[&r]));
    let out = w.agentctl(&["verify", &r]);
    assert_ok(&out);
    assert!(stdout(&out).contains("bundle"), "the signature is a Sigstore bundle: {}", stdout(&out));

    let commit = "1111111111111111111111111111111111111111";
    let pred = provenance(w.lab.dir(), commit);
    c3.ok(&with(
        &["attest", "--key", &key, "--type", SLSA, "--predicate", &pred.display().to_string()],
        C3_SIGN,
        &[&r],
    ));
    let out = w.agentctl(&["verify", &r]);
    assert_ok(&out);
    assert!(stdout(&out).contains(commit), "the provenance cosign 3 wrote is read: {}", stdout(&out));
    // Believed, not just listed: a release recorded for another commit is refused.
    let out = w.agentctl(&["release", "add", "api", &r, "--commit", COMMIT]);
    assert_exit(&out, 4, commit);
    assert_ok(&w.agentctl(&["release", "add", "api", &r, "--commit", commit]));
}

/// agentctl's default `sign` and `attest` → cosign 3.1's `verify` and `verify-attestation`.
#[tokio::test(flavor = "multi_thread")]
async fn agentctl_signatures_and_attestations_verify_in_cosign3() {
    let w = World::start(registry_lab()).await;
    let c3 = Cli::new(COSIGN_3_1);
    let img = pushed(&w, "demo/ours", "signed by agentctl").await;
    let r = s(&img);
    let key = w.release_key();
    let public = w.manifests().join("trust/release.pub").display().to_string();

    let out = c3.run(&with(&["verify", "--key", &public], VERIFY, &[&r]));
    assert!(!out.status.success(), "cosign verifies an unsigned image: {}", stdout(&out));
    assert_ok(&w.agentctl(&["sign", &r, "--key", &key]));
    let out = c3.ok(&with(&["verify", "--key", &public], VERIFY, &[&r]));
    assert!(stdout(&out).contains(img.digest.as_str()), "{}", stdout(&out));

    let commit = "2222222222222222222222222222222222222222";
    let pred = provenance(w.lab.dir(), commit);
    let pred = pred.display().to_string();
    assert_ok(&w.agentctl(&["attest", &r, "--predicate", &pred, "--type", "slsaprovenance", "--key", &key]));
    let out = c3.ok(&with(&["verify-attestation", "--key", &public, "--type", "slsaprovenance"], VERIFY, &[&r]));
    assert!(stdout(&out).contains("payload"), "{}", stdout(&out));

    // A key cosign was not given: refused by cosign too.
    let (_, other_pub) = other_key(&w);
    let out = c3.run(&with(&["verify", "--key", &other_pub], VERIFY, &[&r]));
    assert!(!out.status.success(), "cosign accepted another key: {}", stdout(&out));
}

/// cosign's legacy `.sig` tag both ways with cosign 2.5 (its default format).
#[tokio::test(flavor = "multi_thread")]
async fn legacy_signatures_round_trip_with_cosign25() {
    let w = World::start(registry_lab()).await;
    let c2 = Cli::new(COSIGN_2_5);
    let key = w.release_key();
    let public = w.manifests().join("trust/release.pub").display().to_string();

    let ours = pushed(&w, "demo/legacy-ours", "signed by agentctl, legacy").await;
    assert_ok(&w.agentctl(&["sign", &s(&ours), "--key", &key, "--format", "legacy"]));
    let out = c2.ok(&with(&["verify", "--key", &public], VERIFY, &[&s(&ours)]));
    assert!(stdout(&out).contains(ours.digest.as_str()), "{}", stdout(&out));

    let theirs = pushed(&w, "demo/legacy-theirs", "signed by cosign 2.5").await;
    c2.ok(&with(&["sign", "--key", &key], C2_SIGN, &[&s(&theirs)]));
    assert_ok(&w.agentctl(&["verify", &s(&theirs)]));

    let commit = "3333333333333333333333333333333333333333";
    let pred = provenance(w.lab.dir(), commit).display().to_string();
    c2.ok(&with(
        &["attest", "--key", &key, "--type", "slsaprovenance1", "--predicate", &pred],
        C2_SIGN,
        &[&s(&theirs)],
    ));
    let out = w.agentctl(&["verify", &s(&theirs)]);
    assert_ok(&out);
    assert!(stdout(&out).contains(commit), "the provenance cosign 2.5 wrote is read: {}", stdout(&out));
}

/// An image signed twice: a legacy `.sig` by a key the policy does not trust (a retired
/// one, cosign 2.5) and a bundle by the trusted key (cosign 3.1). Every signature found is
/// tried; the trusted one verifies the image. With only the untrusted one, the refusal
/// names what was found.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_verifies_when_any_of_its_signatures_is_trusted() {
    let w = World::start(registry_lab()).await;
    let (c2, c3) = (Cli::new(COSIGN_2_5), Cli::new(COSIGN_3_1));
    let (retired, _) = other_key(&w);
    let img = pushed(&w, "demo/both", "signed twice").await;
    let r = s(&img);

    c2.ok(&with(&["sign", "--key", &retired], C2_SIGN, &[&r]));
    let out = w.agentctl(&["verify", &r]);
    assert_exit(&out, 4, "no trusted key");
    // A bundle by another untrusted key beside it: neither verifies, and the refusal says
    // what each place held.
    let (stranger, _) = named_key(&w, "stranger");
    c3.ok(&with(&["sign", "--key", &stranger], C3_SIGN, &[&r]));
    let out = w.agentctl(&["verify", &r]);
    assert_exit(&out, 4, "no signature verifies");
    assert!(stderr(&out).contains("`.sig` tag") && stderr(&out).contains("Sigstore bundle"), "{}", stderr(&out));
    c3.ok(&with(&["sign", "--key", &w.release_key()], C3_SIGN, &[&r]));
    let out = w.agentctl(&["verify", &r]);
    assert_ok(&out);
}

/// The referrers index (tag schema) that cosign 3 wrote keeps cosign's entry exactly —
/// media type, size, digest, artifact type, annotations — when agentctl adds its own
/// signature, and each tool still verifies its own signature afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn agentctl_keeps_what_cosign_wrote_in_the_referrers_index() {
    let w = World::start(registry_lab()).await;
    let c3 = Cli::new(COSIGN_3_1);
    let (other, other_pub) = other_key(&w);
    let img = pushed(&w, "demo/api", "signed by both tools").await;
    let r = s(&img);
    let reg = w.lab.registry_client();
    let entries = |bytes: Vec<u8>| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["manifests"].as_array().unwrap().clone()
    };

    c3.ok(&with(&["sign", "--key", &other], C3_SIGN, &[&r]));
    let before = entries(reg.tag_schema_index(&img.repository, &img.digest).await.unwrap().expect("cosign wrote one"));
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].get("size").is_some(), "cosign's entry has a size: {before:?}");

    assert_ok(&w.agentctl(&["sign", &r, "--key", &w.release_key()]));
    let after = entries(reg.tag_schema_index(&img.repository, &img.digest).await.unwrap().unwrap());
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0], "cosign's entry is kept exactly");
    c3.ok(&with(&["verify", "--key", &other_pub], VERIFY, &[&r]));
    assert_ok(&w.agentctl(&["verify", &r]));
}

/// An image pinned by the digest of an OCI image index (what `docker buildx` pushes by
/// default), signed by cosign 3 over that digest: found, fetched and verified.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_index_signed_by_cosign3_verifies() {
    let w = World::start(registry_lab()).await;
    let c3 = Cli::new(COSIGN_3_1);
    let platform = pushed(&w, "demo/api", "one platform").await;
    let index = w.lab.push_index("multi", &[(&platform, "linux/amd64")]).await.unwrap();
    let digest = index.digest.clone();
    let r = format!("{}@{digest}", platform.repository);

    assert_exit(&w.agentctl(&["verify", &r]), 4, "has no signature");
    c3.ok(&with(&["sign", "--key", &w.release_key()], C3_SIGN, &[&r]));
    assert_ok(&w.agentctl(&["verify", &r]));
    assert_ok(&w.agentctl(&["release", "add", "api", &r, "--commit", COMMIT]));
    // The tag names the index: the hint gives its digest to pin.
    let tagged = format!("{}:multi", platform.repository);
    assert_exit(&w.agentctl(&["verify", &tagged]), 4, digest.as_str());
}

/// `cosign sign-blob --bundle` (cosign 3.1, offline, with the release key) →
/// `agentctl verify-blob` verifies the file and its digest with the public key, and refuses
/// another file, another key, and a bundle edited by one byte.
#[tokio::test(flavor = "multi_thread")]
async fn cosign3_blob_bundles_verify_in_agentctl_verify_blob() {
    let w = World::start(registry_lab()).await;
    let c3 = Cli::new(COSIGN_3_1);
    let dir = w.lab.dir().join("blob");
    std::fs::create_dir_all(&dir).unwrap();
    let (file, bundle) = (dir.join("release.tar"), dir.join("release.sigstore.json"));
    std::fs::write(&file, b"a release artifact\n").unwrap();
    let (f, b) = (file.display().to_string(), bundle.display().to_string());
    c3.ok(&[
        "sign-blob",
        "--key",
        &w.release_key(),
        "--bundle",
        &b,
        "--use-signing-config=false",
        "--tlog-upload=false",
        &f,
    ]);
    let public = w.manifests().join("trust/release.pub").display().to_string();
    let digest = format!("sha256:{}", controlplane::image::Digest::of(b"a release artifact\n").hex());
    for artifact in [f.as_str(), digest.as_str()] {
        assert_ok(&w.agentctl(&["verify-blob", artifact, "--bundle", &b, "--key", &public]));
    }
    let other = dir.join("other.tar");
    std::fs::write(&other, b"another artifact\n").unwrap();
    assert_exit(&w.agentctl(&["verify-blob", &other.display().to_string(), "--bundle", &b, "--key", &public]), 4, "");
    let (_, other_pub) = other_key(&w);
    assert_exit(&w.agentctl(&["verify-blob", &f, "--bundle", &b, "--key", &other_pub]), 4, "does not verify");
    let mut edited: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let sig = edited.pointer_mut("/messageSignature/signature").expect("a message signature");
    let text = sig.as_str().unwrap().to_owned();
    let first = if text.starts_with('A') { 'B' } else { 'A' };
    let flipped = format!("{first}{}", text.get(1..).unwrap());
    *sig = serde_json::Value::String(flipped);
    std::fs::write(&bundle, serde_json::to_vec(&edited).unwrap()).unwrap();
    assert_exit(&w.agentctl(&["verify-blob", &f, "--bundle", &b, "--key", &public]), 4, "does not verify");
}
