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
}
