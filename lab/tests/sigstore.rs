//! The lab's private Sigstore makes keyless bundles that the verifier accepts for the
//! allowed identity and refuses otherwise (the verifier is `sigstore-verify`, through
//! `controlplane::keyless`).

use controlplane::image::{Digest, PinnedImage, Repository};
use controlplane::keyless::{Keyless, KeylessProblem};
use controlplane::manifest::{AllowedIdentity, KeylessPolicy, SubjectMatch};
use lab::sigstore::{Signer, TestSigstore};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SUBJECT: &str = "https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main";

fn image() -> PinnedImage {
    PinnedImage { repository: Repository::new("127.0.0.1:5000/demo/api").unwrap(), digest: Digest::of(b"image") }
}

fn keyless(root: &TestSigstore, subject: SubjectMatch) -> Keyless {
    Keyless::new(&KeylessPolicy {
        trusted_root: "trust/trusted_root.json".into(),
        trusted_root_json: root.trusted_root(),
        identities: vec![AllowedIdentity { issuer: ISSUER.into(), subject }],
    })
    .unwrap()
}

#[test]
fn a_keyless_bundle_verifies_for_the_allowed_identity_only() {
    let sigstore = TestSigstore::new("lab fulcio");
    let img = image();
    let bundle = sigstore.sign_image(img.repository.as_str(), img.digest.hex(), &Signer::ci(ISSUER, SUBJECT));
    let k = keyless(&sigstore, SubjectMatch::Exact(SUBJECT.into()));
    let who = k.verify_image(&img, &bundle).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((who.issuer.as_str(), who.subject.as_str()), (ISSUER, SUBJECT));

    let other = sigstore.sign_image(
        img.repository.as_str(),
        img.digest.hex(),
        &Signer::ci(ISSUER, "https://github.com/evil/api/.github/workflows/release.yml@refs/heads/main"),
    );
    assert!(matches!(k.verify_image(&img, &other), Err(KeylessProblem::NotAllowed { .. })));

    // The same content under the older bundle media types (v0.1 needs the SET, v0.2 the
    // inclusion proof; the lab's entries carry both).
    for media in
        ["application/vnd.dev.sigstore.bundle+json;version=0.1", "application/vnd.dev.sigstore.bundle+json;version=0.2"]
    {
        let mut b: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        b["mediaType"] = media.into();
        let b = serde_json::to_vec(&b).unwrap();
        assert!(k.verify_image(&img, &b).is_ok(), "{media}: {:?}", k.verify_image(&img, &b));
        assert!(controlplane::cosign::bundle_format(media).is_some(), "{media} is discovered");
    }
}

/// sigstore-python (an independent implementation, from PyPI) and our verifier reach the
/// same decision on the lab's keyless bundles, offline: the genuine one verifies for its
/// identity (DSSE and message signature); another identity, another issuer, a certificate
/// from another CA and a tampered SET are refused by both.
#[test]
fn sigstore_python_and_our_verifier_agree_offline() {
    let cli = std::path::Path::new(lab::sigstore::PYTHON_CLI);
    assert!(cli.exists(), "sigstore-python is missing: `cargo xtask setup` installs it into {}", cli.display());
    let sigstore = TestSigstore::new("lab fulcio");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trust_config.json"), sigstore.client_trust_config()).unwrap();
    // The artifact is the image manifest: the statement's subject is its digest.
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    let img =
        PinnedImage { repository: Repository::new("127.0.0.1:5000/demo/api").unwrap(), digest: Digest::of(manifest) };
    let ours = keyless(&sigstore, SubjectMatch::Exact(SUBJECT.into()));
    let theirs = |bundle: &[u8], subject: &str, issuer: &str| -> bool {
        std::fs::write(dir.path().join("bundle.json"), bundle).unwrap();
        let out = std::process::Command::new(cli)
            .arg("--trust-config")
            .arg(dir.path().join("trust_config.json"))
            .args(["verify", "identity", "--offline", "--cert-identity", subject, "--cert-oidc-issuer", issuer])
            .arg("--bundle")
            .arg(dir.path().join("bundle.json"))
            .arg(dir.path().join("manifest.json"))
            .output()
            .unwrap();
        out.status.success()
    };
    let sign = |s: &TestSigstore, who: &Signer| s.sign_image(img.repository.as_str(), img.digest.hex(), who);

    let good = sign(&sigstore, &Signer::ci(ISSUER, SUBJECT));
    assert!(ours.verify_image(&img, &good).is_ok());
    assert!(theirs(&good, SUBJECT, ISSUER), "sigstore-python refuses the lab's bundle");
    // A message signature over the manifest's bytes (`hashedrekord`), too.
    let message = sigstore.sign_message(manifest, &Signer::ci(ISSUER, SUBJECT));
    assert!(ours.verify_image(&img, &message).is_ok());
    assert!(theirs(&message, SUBJECT, ISSUER), "sigstore-python refuses the lab's message signature");

    let evil = "https://github.com/evil/api/.github/workflows/release.yml@refs/heads/main";
    let other_subject = sign(&sigstore, &Signer::ci(ISSUER, evil));
    assert!(ours.verify_image(&img, &other_subject).is_err());
    assert!(!theirs(&other_subject, SUBJECT, ISSUER));
    assert!(theirs(&other_subject, evil, ISSUER), "the bundle itself is valid");

    let other_issuer = sign(&sigstore, &Signer::ci("https://accounts.example", SUBJECT));
    assert!(ours.verify_image(&img, &other_issuer).is_err());
    assert!(!theirs(&other_issuer, SUBJECT, ISSUER));

    let other_ca = sign(&sigstore.other_ca("another fulcio"), &Signer::ci(ISSUER, SUBJECT));
    assert!(matches!(ours.verify_image(&img, &other_ca), Err(KeylessProblem::Invalid { .. })));
    assert!(!theirs(&other_ca, SUBJECT, ISSUER));

    let mut tampered: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let set = &mut tampered["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]["signedEntryTimestamp"];
    let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, set.as_str().unwrap()).unwrap();
    let n = raw.len();
    raw[n - 3] ^= 1;
    *set = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw).into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    assert!(matches!(ours.verify_image(&img, &tampered), Err(KeylessProblem::Invalid { .. })));
    assert!(!theirs(&tampered, SUBJECT, ISSUER));
}
