//! Signed artifacts against the lab registry: every refusal has its own message and
//! exit 4; formats are cosign's (checked by sigstore's own cosign client).

#[macro_use]
mod common;

use common::registry_proxy::RegistryProxy;
use common::*;
use controlplane::cosign;
use controlplane::image::Repository;
use lab::LabConfig;

fn no_hosts() -> LabConfig {
    LabConfig { hosts: 1, staging: 1, registry: true, dir: None, egress: false, podman: false }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_images_verify_and_signing_keeps_existing_signatures() {
    let w = World::start(no_hosts()).await;
    let img = w.signed_image("demo/api", "v1").await;
    let out = w.agentctl(&["verify", &s(&img)]);
    assert_ok(&out);
    assert!(stdout(&out).contains("verified"));

    // A second key (cosign format, from `keys generate`) adds a signature and keeps ours.
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ci");
    assert_ok(&w.agentctl(&["keys", "generate", "--out", prefix.to_str().unwrap()]));
    let key = format!("{}.key", prefix.display());
    let out = w.agentctl(&["sign", &s(&img), "--key", &key]);
    assert_ok(&out);
    assert!(stdout(&out).contains("1 kept"), "{}", stdout(&out));
    assert_ok(&w.agentctl(&["verify", &s(&img), "--key", &format!("{}.pub", prefix.display())]));
    assert_ok(&w.agentctl(&["verify", &s(&img)]));
    // Signing again with the same key adds nothing.
    assert!(stdout(&w.agentctl(&["sign", &s(&img), "--key", &key])).contains("nothing pushed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_is_refused_with_the_digest_to_pin() {
    let w = World::start(no_hosts()).await;
    let img = w.lab.push_image("demo/api", "v2", "tagged").await.unwrap();
    let out = w.agentctl(&["verify", &format!("{}:v2", img.repository)]);
    assert_exit(&out, 4, "is not pinned by digest");
    assert!(stderr(&out).contains(&format!("pin it as `{img}`")), "{}", stderr(&out));
    assert_exit(&w.agentctl(&["sign", &format!("{}:v2", img.repository), "--key", &w.release_key()]), 4, "it is a tag");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_image_is_refused() {
    let w = World::start(no_hosts()).await;
    let img = w.lab.push_image("demo/api", "v1", "unsigned").await.unwrap();
    assert_exit(&w.agentctl(&["verify", &s(&img)]), 4, "has no signature");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_by_an_untrusted_key_is_refused() {
    let w = World::start(no_hosts()).await;
    let img = w.lab.push_image("demo/api", "v1", "wrong key").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("rogue");
    assert_ok(&w.agentctl(&["keys", "generate", "--out", prefix.to_str().unwrap()]));
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &format!("{}.key", prefix.display())]));
    assert_exit(&w.agentctl(&["verify", &s(&img)]), 4, "signed, but by no trusted key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_copied_from_another_digest_is_refused() {
    let w = World::start(no_hosts()).await;
    let signed = w.signed_image_legacy("demo/api", "good").await;
    let victim = w.lab.push_image("demo/api", "evil", "evil").await.unwrap();
    let reg = w.lab.registry_client();
    let repo = &signed.repository;
    copy_tag(&reg, repo, &cosign::signature_tag(&signed.digest), repo, &cosign::signature_tag(&victim.digest)).await;
    let out = w.agentctl(&["verify", &s(&victim)]);
    assert_exit(&out, 4, "was made for another image digest");
    assert!(stderr(&out).contains(signed.digest.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_for_another_repository_is_refused() {
    let w = World::start(no_hosts()).await;
    // The same content under two names has one digest; sign it only as `demo/other`.
    let other = w.signed_image_legacy("demo/other", "same bytes").await;
    let api = w.lab.push_image("demo/api", "v1", "same bytes").await.unwrap();
    assert_eq!(other.digest, api.digest);
    let reg = w.lab.registry_client();
    let tag = cosign::signature_tag(&api.digest);
    copy_tag(&reg, &other.repository, &tag, &api.repository, &tag).await;
    let out = w.agentctl(&["verify", &s(&api)]);
    assert_exit(&out, 4, "names another repository");
    assert!(stderr(&out).contains("demo/other"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_is_down_is_unreachable_not_unsigned() {
    let mut w = World::start(no_hosts()).await;
    let img = w.signed_image("demo/api", "v1").await;
    w.lab.stop_registry();
    let out = w.agentctl(&["verify", &s(&img)]);
    assert_exit(&out, 1, "the registry could not be asked");
    assert!(!stderr(&out).contains("no signature"));
}

/// A proxy in front of the lab registry, named as a (plain HTTP) registry in the manifests,
/// with the repository and a client that pushes through it.
async fn through_a_proxy(w: &World) -> (Proxy, Repository, controlplane::registry::Registry) {
    let port: u16 = w.lab.registry_host().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(port).await;
    let cp = w.manifests().join("controlplane.toml");
    let text = std::fs::read_to_string(&cp).unwrap();
    let extra = format!("[[registry]]\nhost = \"{}\"\ninsecure = true\n\n[trust]", proxy.host());
    std::fs::write(&cp, text.replacen("[trust]", &extra, 1)).unwrap();
    let repo = Repository::new(&format!("{}/demo/api", proxy.host())).unwrap();
    let client = controlplane::registry::Registry::new(&[controlplane::manifest::RegistrySettings {
        host: proxy.host(),
        insecure: true,
        username_env: None,
        password_env: None,
    }]);
    (proxy, repo, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stops_mid_way_is_unreachable_not_unsigned() {
    let w = World::start(no_hosts()).await;
    let (proxy, repo, client) = through_a_proxy(&w).await;
    let digest =
        client.push_artifact(&repo, Some("v1"), &lab::build_image("through the proxy").artifact).await.unwrap();
    let img = format!("{repo}@{digest}");
    assert_ok(&w.agentctl(&["sign", &img, "--key", &w.release_key()]));
    assert_ok(&w.agentctl(&["verify", &img]));

    // The image manifest and the `.sig` manifest answer; then the registry is gone.
    proxy.set_budget(2);
    let out = w.agentctl(&["verify", &img]);
    assert_exit(&out, 1, "the registry could not be asked");
    assert!(!stderr(&out).contains("no signature"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstores_cosign_client_accepts_our_signatures() {
    use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
    use sigstore::cosign::{ClientBuilder, CosignCapabilities as _};
    use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

    let w = World::start(no_hosts()).await;
    let img = w.signed_image_legacy("demo/api", "interop").await;
    let config =
        ClientConfig { protocol: ClientProtocol::HttpsExcept(vec![w.lab.registry_host()]), ..Default::default() };
    let mut client = ClientBuilder::default().with_oci_client_config(config).build().unwrap();
    let reference: OciReference = s(&img).parse().unwrap();
    let layers = client.trusted_signature_layers(&Auth::Anonymous, &reference).await.unwrap();
    assert_eq!(layers.len(), 1, "sigstore reads our `.sig` layer");
    let public = std::fs::read(w.manifests().join("trust/release.pub")).unwrap();
    let verifier = PublicKeyVerifier::new(&public, &sigstore::crypto::SigningScheme::ECDSA_P256_SHA256_ASN1).unwrap();
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    sigstore::cosign::verify_constraints(&layers, constraints.iter()).expect("sigstore verifies our signature");

    // The same check with another key must fail: the check above is not vacuous.
    let dir = tempfile::tempdir().unwrap();
    let other = controlplane::keys::SigningKey::generate().unwrap();
    let (_, public) = other.write_pair(&dir.path().join("o"), b"").unwrap();
    let verifier = PublicKeyVerifier::new(
        &std::fs::read(public).unwrap(),
        &sigstore::crypto::SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .unwrap();
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    assert!(sigstore::cosign::verify_constraints(&layers, constraints.iter()).is_err());
}

fn predicate_file(dir: &std::path::Path, commit: &str, builder: &str) -> String {
    let p = dir.join(format!("prov-{commit}.json"));
    let v = serde_json::json!({
        "builder": { "id": builder },
        "buildType": "https://github.com/actions/workflow",
        "invocation": { "configSource": { "uri": "git+https://example.com/demo/api", "digest": { "sha1": commit } } },
    });
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// Pushes a SLSA provenance attestation naming `commit` and `builder` for `image`.
fn attest_provenance(w: &World, image: &str, dir: &std::path::Path, commit: &str, builder: &str) {
    let prov = predicate_file(dir, commit, builder);
    let key = w.release_key();
    assert_ok(&w.agentctl(&["attest", image, "--predicate", &prov, "--type", "slsaprovenance", "--key", &key]));
}

const OTHER_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const BUILDER: &str = "https://github.com/actions/runner";

/// A provenance predicate without what the policy checks (`{}`: no builder id, no source
/// commit) is refused when the release is recorded, naming what is missing, and nothing
/// is recorded; it used to be accepted and refused later, in prod, with no reason.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_provenance_predicate_is_refused_when_recorded() {
    let w = World::start(no_hosts()).await;
    let img = w.signed_image("demo/api", "empty-provenance").await;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let key = w.release_key();
    let args = ["attest", &s(&img), "--predicate", empty.to_str().unwrap(), "--type", "slsaprovenance", "--key", &key];
    assert_ok(&w.agentctl(&args));
    let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not name a builder id or a source commit"), "{err}");
    assert!(err.contains("builder.id") && err.contains("agentctl attest"), "the fix is named: {err}");
    assert!(!stdout(&w.agentctl(&["release", "list", "api"])).contains(img.digest.as_str()), "nothing recorded");

    // A predicate naming only the builder: the commit is what is missing.
    let img = w.signed_image("demo/api", "builder-only").await;
    let builder_only = dir.path().join("builder.json");
    std::fs::write(&builder_only, serde_json::json!({ "builder": { "id": BUILDER } }).to_string()).unwrap();
    let args =
        ["attest", &s(&img), "--predicate", builder_only.to_str().unwrap(), "--type", "slsaprovenance", "--key", &key];
    assert_ok(&w.agentctl(&args));
    let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not name a source commit"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn attestations_round_trip_and_release_add_records_the_evidence() {
    let w = World::start(no_hosts()).await;
    let img = w.signed_image("demo/api", "attested").await;
    let dir = tempfile::tempdir().unwrap();
    attest_provenance(&w, &s(&img), dir.path(), COMMIT, BUILDER);
    let sbom = dir.path().join("sbom.json");
    std::fs::write(&sbom, r#"{"spdxVersion":"SPDX-2.3","name":"api","packages":[]}"#).unwrap();
    assert_ok(&w.agentctl(&[
        "attest",
        &s(&img),
        "--predicate",
        sbom.to_str().unwrap(),
        "--type",
        "spdx",
        "--key",
        &w.release_key(),
    ]));

    let out = w.agentctl(&["verify", &s(&img), "--json"]);
    assert_ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["verified"]["attestations"].as_array().unwrap().len(), 2);
    // By default both are Sigstore bundles, referrers of the image (cosign 3's layout).
    let reg = w.lab.registry_client();
    assert!(reg.manifest(&img.repository, &cosign::attestation_tag(&img.digest)).await.unwrap().is_none());
    let referrers = reg.referrers(&img.repository, &img.digest).await.unwrap();
    assert_eq!(referrers.len(), 3, "signature, provenance, SBOM: {referrers:?}");

    // `--format legacy`: `.att` layers carrying the annotations `cosign verify-attestation`
    // requires: the predicate type, and the signature annotation, empty (cosign's layout).
    let old = w.lab.push_image("demo/api", "legacy-att", "legacy attested").await.unwrap();
    let prov = predicate_file(dir.path(), COMMIT, BUILDER);
    for (file, kind) in [(prov.as_str(), "slsaprovenance"), (sbom.to_str().unwrap(), "spdx")] {
        let key = w.release_key();
        assert_ok(&w.agentctl(&[
            "attest",
            &s(&old),
            "--predicate",
            file,
            "--type",
            kind,
            "--key",
            &key,
            "--format",
            "legacy",
        ]));
    }
    let (manifest, _) = reg.manifest(&old.repository, &cosign::attestation_tag(&old.digest)).await.unwrap().unwrap();
    let layers = cosign::manifest_layers(&manifest).unwrap();
    assert_eq!(layers.len(), 2);
    for l in &layers {
        assert_eq!(l.annotations.get("dev.cosignproject.cosign/signature").map(String::as_str), Some(""), "{l:?}");
        assert!(l.annotations.contains_key("predicateType"), "{l:?}");
    }

    let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT, "--json"]);
    assert_ok(&out);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rec["provenance"].as_str().unwrap().starts_with("sha256:"));
    assert!(rec["sbom"].as_str().unwrap().starts_with("sha256:"));
    // JSON all the way down: the evidence is an object, not a string holding JSON.
    let evidence = &rec["evidence"];
    assert!(
        evidence["signature"]["signature"].as_str().is_some(),
        "the signature itself is kept for offline re-checks: {evidence}"
    );
    assert!(stdout(&w.agentctl(&["release", "list", "api"])).contains(img.digest.as_str()));
    let listed: serde_json::Value =
        serde_json::from_slice(&w.agentctl(&["release", "list", "api", "--json"]).stdout).unwrap();
    assert!(listed[0]["evidence"].is_object(), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provenance_naming_another_commit_is_refused_with_both_commits() {
    let w = World::start(no_hosts()).await;
    let dir = tempfile::tempdir().unwrap();
    // Each attestation format with each signature format: a legacy `.att` layer, and a
    // Sigstore bundle referrer (the default).
    for (sig, format) in [("legacy", "legacy"), ("legacy", "bundle"), ("bundle", "legacy"), ("bundle", "bundle")] {
        let img = if sig == "legacy" {
            w.signed_image_legacy("demo/api", &format!("mismatch {sig} {format}")).await
        } else {
            w.signed_image("demo/api", &format!("mismatch {sig} {format}")).await
        };
        let prov = predicate_file(dir.path(), OTHER_COMMIT, BUILDER);
        let key = w.release_key();
        let args =
            ["attest", &s(&img), "--predicate", &prov, "--type", "slsaprovenance", "--key", &key, "--format", format];
        assert_ok(&w.agentctl(&args));
        let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]);
        assert_exit(&out, 4, OTHER_COMMIT);
        assert!(stderr(&out).contains(COMMIT), "{format}: {}", stderr(&out));
    }
    assert!(stdout(&w.agentctl(&["release", "list", "api"])).contains("0 release(s)"), "nothing recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_slsa_v1_provenance_in_a_bundle_is_checked_like_any_other() {
    use lab::sigstore::{Signer, TestSigstore};
    let w = World::start(no_hosts()).await;
    let sigstore = TestSigstore::new("lab fulcio");
    trust_keyless(&w, &sigstore, &[&format!("issuer = \"{ISSUER}\"\nsubject = \"{CI_SUBJECT}\"")]);
    let ci = Signer::ci(ISSUER, CI_SUBJECT);
    // SLSA provenance v1: the builder in `runDetails`, the commit in resolved dependencies.
    let provenance = |img: &controlplane::image::PinnedImage, commit: &str| {
        serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{ "name": img.repository.as_str(), "digest": { "sha256": img.digest.hex() } }],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                    "externalParameters": {},
                    "resolvedDependencies": [{ "uri": "git+https://github.com/acme/api@refs/heads/main", "digest": { "gitCommit": commit } }],
                },
                "runDetails": { "builder": { "id": BUILDER } },
            },
        }))
        .unwrap()
    };
    for (n, commit) in [COMMIT, OTHER_COMMIT].into_iter().enumerate() {
        let img = w.lab.push_image("demo/api", &format!("v1-{n}"), &format!("keyless provenance {n}")).await.unwrap();
        attach_bundle_referrer(&w, &img, &sigstore.sign_image(img.repository.as_str(), img.digest.hex(), &ci)).await;
        attach_bundle_referrer(&w, &img, &sigstore.sign_statement(&provenance(&img, commit), &ci)).await;
        let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT, "--json"]);
        if commit == COMMIT {
            assert_ok(&out);
            let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(rec["provenance"].as_str().unwrap().starts_with("sha256:"), "{rec}");
        } else {
            assert_exit(&out, 4, OTHER_COMMIT);
            assert!(stderr(&out).contains(COMMIT), "{}", stderr(&out));
        }
    }
    assert!(stdout(&w.agentctl(&["release", "list", "api"])).contains("1 release(s)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provenance_from_an_untrusted_builder_is_refused() {
    let w = World::start(no_hosts()).await;
    let img = w.signed_image("demo/api", "builder").await;
    let dir = tempfile::tempdir().unwrap();
    attest_provenance(&w, &s(&img), dir.path(), COMMIT, "https://evil.example/builder");
    assert_exit(&w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]), 4, "evil.example");
}

#[tokio::test(flavor = "multi_thread")]
async fn release_add_refuses_unsigned_images_and_other_repositories() {
    let w = World::start(no_hosts()).await;
    let unsigned = w.lab.push_image("demo/api", "u", "unsigned").await.unwrap();
    assert_exit(&w.agentctl(&["release", "add", "api", &s(&unsigned), "--commit", COMMIT]), 4, "has no signature");
    let elsewhere = w.signed_image("demo/web", "web").await;
    assert_exit(
        &w.agentctl(&["release", "add", "api", &s(&elsewhere), "--commit", COMMIT]),
        2,
        "is not in service `api`",
    );
    assert_exit(
        &w.agentctl(&["release", "add", "api", &s(&unsigned), "--commit", "HEAD"]),
        2,
        "is not a source commit",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_serving_other_bytes_than_the_digest_is_refused() {
    let w = World::start(no_hosts()).await;
    let img = w.signed_image_legacy("demo/api", "v1").await;
    // Corrupt the signature payload blob in the registry's own storage.
    let reg = w.lab.registry_client();
    let (manifest, _) = reg.manifest(&img.repository, &cosign::signature_tag(&img.digest)).await.unwrap().unwrap();
    let layer = &cosign::manifest_layers(&manifest).unwrap()[0].digest;
    let hex = layer.hex();
    let data = w.lab.dir().join(format!("registry/storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let out = w.agentctl(&["verify", &s(&img)]);
    assert_exit(&out, 4, "SECURITY: registry");
    assert!(stderr(&out).contains("security incident"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("no signature"), "{}", stderr(&out));
}

/// Attaches a bundle this test made (contents cosign never wrote: keyless or by keys cosign
/// was never given) as a referrer through the tag schema: an artifact manifest whose
/// `subject` is the image, listed under the tag `sha256-<hex>`. What real cosign writes is
/// exercised by tests/cosign.rs, with cosign itself.
async fn attach_bundle_referrer(w: &World, img: &controlplane::image::PinnedImage, bundle: &[u8]) {
    use controlplane::registry::{OCI_INDEX, OCI_MANIFEST};
    let reg = w.lab.registry_client();
    let repo = &img.repository;
    let bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let empty = reg.push_blob(repo, b"{}").await.unwrap();
    let layer = reg.push_blob(repo, bundle).await.unwrap();
    let (image_manifest, _) = reg.manifest(repo, img.digest.as_str()).await.unwrap().unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": bundle_type,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2 },
        "layers": [{ "mediaType": bundle_type, "digest": layer, "size": bundle.len() }],
        "subject": { "mediaType": OCI_MANIFEST, "digest": img.digest.as_str(), "size": image_manifest.len() },
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = reg.push_manifest(repo, None, bytes.clone()).await.unwrap();
    // Keep what the index listed already.
    let mut entries: Vec<serde_json::Value> = reg
        .referrers(repo, &img.digest)
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": r.digest, "artifactType": r.artifact_type }))
        .collect();
    entries.push(serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": bundle_type }));
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let tag = format!("sha256-{}", img.digest.as_str().trim_start_matches("sha256:"));
    reg.push_manifest(repo, Some(&tag), serde_json::to_vec(&index).unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosign_3_bundle_is_named_as_such_never_as_no_signature() {
    let w = World::start(no_hosts()).await;
    let img = w.lab.push_image("demo/api", "v1", "bundle-signed").await.unwrap();
    // A message-signature bundle and a keyless one: both named, neither "no signature".
    let keyless = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"MIIB"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[]}}"#;
    let other = w.lab.push_image("demo/api", "v9", "keyless-signed").await.unwrap();
    attach_bundle_referrer(&w, &other, keyless).await;
    assert_exit(&w.agentctl(&["verify", &s(&other)]), 4, "signed keyless (a Fulcio certificate)");
    // A message-signature bundle (over the manifest's bytes) by a key the policy does not
    // list: named as signed by no trusted key, never "no signature".
    let reg = w.lab.registry_client();
    let (manifest, _) = reg.manifest(&img.repository, img.digest.as_str()).await.unwrap().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("other");
    assert_ok(&w.agentctl(&["keys", "generate", "--out", &prefix.display().to_string()]));
    let foreign = controlplane::keys::SigningKey::load(&prefix.with_extension("key"), b"").unwrap();
    attach_bundle_referrer(&w, &img, &message_bundle(&manifest, &foreign)).await;
    let out = w.agentctl(&["verify", &s(&img)]);
    assert_exit(&out, 4, "signed, but by no trusted key");
    assert!(!stderr(&out).contains("has no signature"), "{}", stderr(&out));
    assert_exit(&w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]), 4, "no trusted key");
}

/// A Sigstore bundle v0.3 with a message signature over `artifact` by `key`, as
/// `cosign sign-blob --key … --bundle` writes (no log entry).
fn message_bundle(artifact: &[u8], key: &controlplane::keys::SigningKey) -> Vec<u8> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": key.public().key_id }, "tlogEntries": [] },
        "messageSignature": {
            "messageDigest": { "algorithm": "SHA2_256", "digest": b64.encode(sha2::Sha256::digest(artifact)) },
            "signature": b64.encode(key.sign(artifact)),
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn message_signature_bundles_over_the_manifest_verify_with_a_key_or_keyless() {
    use lab::sigstore::{Signer, TestSigstore};
    let w = World::start(no_hosts()).await;
    let reg = w.lab.registry_client();
    let key = controlplane::keys::SigningKey::load(std::path::Path::new(&w.release_key()), b"").unwrap();
    let img = w.lab.push_image("demo/api", "m1", "message signed").await.unwrap();
    let (manifest, _) = reg.manifest(&img.repository, img.digest.as_str()).await.unwrap().unwrap();
    attach_bundle_referrer(&w, &img, &message_bundle(&manifest, &key)).await;
    assert_ok(&w.agentctl(&["verify", &s(&img)]));
    // The same signature listed for another image names the digest it was made for.
    let other = w.lab.push_image("demo/api", "m2", "another image").await.unwrap();
    attach_bundle_referrer(&w, &other, &message_bundle(&manifest, &key)).await;
    assert_exit(
        &w.agentctl(&["verify", &s(&other)]),
        4,
        &format!("was made for another image digest, `{}`", img.digest),
    );
    // Keyless, from the lab's Sigstore.
    let sigstore = TestSigstore::new("lab fulcio");
    trust_keyless(&w, &sigstore, &[&format!("issuer = \"{ISSUER}\"\nsubject = \"{CI_SUBJECT}\"")]);
    let k = w.lab.push_image("demo/api", "m3", "keyless message").await.unwrap();
    let (manifest, _) = reg.manifest(&k.repository, k.digest.as_str()).await.unwrap().unwrap();
    attach_bundle_referrer(&w, &k, &sigstore.sign_message(&manifest, &Signer::ci(ISSUER, CI_SUBJECT))).await;
    let out = w.agentctl(&["verify", &s(&k)]);
    assert_ok(&out);
    assert!(stdout(&out).contains("bundle-keyless"), "{}", stdout(&out));
    // Keyless over another image's manifest: refused.
    let k2 = w.lab.push_image("demo/api", "m4", "keyless elsewhere").await.unwrap();
    attach_bundle_referrer(&w, &k2, &sigstore.sign_message(&manifest, &Signer::ci(ISSUER, CI_SUBJECT))).await;
    assert_exit(&w.agentctl(&["verify", &s(&k2)]), 4, "was made for another image digest");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stops_before_the_referrers_answer_is_unreachable_not_unsigned() {
    let w = World::start(no_hosts()).await;
    let (proxy, repo, client) = through_a_proxy(&w).await;
    let digest = client.push_artifact(&repo, Some("v1"), &lab::build_image("unsigned").artifact).await.unwrap();
    let img = format!("{repo}@{digest}");
    assert_exit(&w.agentctl(&["verify", &img]), 4, "has no signature");
    // The image manifest and the missing `.sig` answer; the referrers lookup does not.
    proxy.set_budget(2);
    let out = w.agentctl(&["verify", &img]);
    assert_exit(&out, 1, "the registry could not be asked");
    assert!(!stderr(&out).contains("no signature"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_signed_with_a_policy_key_verifies_and_openssl_agrees() {
    use base64::Engine as _;
    let w = World::start(no_hosts()).await;
    let img = w.lab.push_image("demo/api", "v1", "bundle").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &w.release_key(), "--format", "bundle"]));
    assert!(
        w.lab.registry_client().manifest(&img.repository, &cosign::signature_tag(&img.digest)).await.unwrap().is_none(),
        "no legacy .sig"
    );
    let out = w.agentctl(&["verify", &s(&img), "--json"]);
    assert_ok(&out);
    assert_ok(&w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT]));

    // openssl checks the DSSE signature in the bundle, over the pre-authentication encoding.
    let reg = w.lab.registry_client();
    let referrers = reg.referrers(&img.repository, &img.digest).await.unwrap();
    assert_eq!(referrers.len(), 1);
    assert_eq!(referrers[0].artifact_type.as_deref(), Some(cosign::BUNDLE_V03));
    let (manifest, _) = reg.manifest(&img.repository, &referrers[0].digest).await.unwrap().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["subject"]["digest"], img.digest.as_str(), "a referrer of the image");
    let layer = controlplane::image::Digest::new(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let bundle: serde_json::Value = serde_json::from_slice(&reg.blob(&img.repository, &layer).await.unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["predicateType"], cosign::COSIGN_SIGN_PREDICATE);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("pae"), cosign::pae("application/vnd.in-toto+json", &payload)).unwrap();
    let sig = b64.decode(bundle["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap()).unwrap();
    std::fs::write(tmp.path().join("sig"), sig).unwrap();
    let verify = |file: &str| {
        std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(w.manifests().join("trust/release.pub"))
            .arg("-signature")
            .arg(tmp.path().join("sig"))
            .arg(tmp.path().join(file))
            .output()
            .unwrap()
    };
    assert!(verify("pae").status.success(), "openssl rejects our DSSE signature");
    std::fs::write(tmp.path().join("edited"), cosign::pae("application/vnd.in-toto+json", b"{}")).unwrap();
    assert!(!verify("edited").status.success(), "the check is not vacuous");
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_by_other_keys_or_for_other_digests_are_refused() {
    let w = World::start(no_hosts()).await;
    // Signed with a key the trust policy does not list.
    let img = w.lab.push_image("demo/api", "v1", "foreign").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("other");
    assert_ok(&w.agentctl(&["keys", "generate", "--out", &prefix.display().to_string()]));
    let other_key = format!("{}.key", prefix.display());
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &other_key, "--format", "bundle"]));
    assert_exit(&w.agentctl(&["verify", &s(&img)]), 4, "by no trusted key");

    // A trusted bundle of image A listed as a referrer of image B: made for another digest.
    let a = w.lab.push_image("demo/api", "a", "image a").await.unwrap();
    let b = w.lab.push_image("demo/api", "b", "image b").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&a), "--key", &w.release_key(), "--format", "bundle"]));
    let reg = w.lab.registry_client();
    let tag = |d: &controlplane::image::Digest| format!("sha256-{}", d.hex());
    let (index, _) = {
        let r = reg.referrers(&a.repository, &a.digest).await.unwrap();
        let entries: Vec<_> = r.iter().map(|r| serde_json::json!({ "mediaType": controlplane::registry::OCI_MANIFEST, "digest": r.digest, "artifactType": r.artifact_type })).collect();
        (
            serde_json::json!({ "schemaVersion": 2, "mediaType": controlplane::registry::OCI_INDEX, "manifests": entries }),
            (),
        )
    };
    reg.push_manifest(&b.repository, Some(&tag(&b.digest)), serde_json::to_vec(&index).unwrap()).await.unwrap();
    let out = w.agentctl(&["verify", &s(&b)]);
    assert_exit(&out, 4, "was made for another image digest");
    assert!(stderr(&out).contains(a.digest.as_str()), "{}", stderr(&out));
}

/// A referrers API that answers anything but an OCI index — 400, 404, 405, 406, an HTML
/// page, or an empty index while the tag schema lists the signature — is read past: the
/// tag schema is asked, and the signature found there verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_referrers_api_that_is_not_one_falls_back_to_the_tag_schema() {
    let w = World::start(no_hosts()).await;
    let api = RegistryProxy::in_front_of(&w).await;
    let host = api.host();
    let img = w.lab.push_image("demo/api", "v1", "tag schema only").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &w.release_key()]));
    let through = format!("{host}/demo/api@{}", img.digest);
    let html = "<html><body>Not a registry API</body></html>";
    let empty =
        serde_json::json!({ "schemaVersion": 2, "mediaType": controlplane::registry::OCI_INDEX, "manifests": [] });
    for (status, body) in [
        (400, html.to_owned()),
        (404, String::new()),
        (405, html.to_owned()),
        (406, String::new()),
        (200, html.to_owned()),
        (200, empty.to_string()),
    ] {
        api.answer_raw(status, &body);
        let out = w.agentctl(&["verify", &through]);
        assert_eq!(out.status.code(), Some(0), "referrers API answering {status} {body:?}: {}", stderr(&out));
    }
}

/// Harbor answers a missing manifest with HTTP 404 and its own error code `NOT_FOUND`: that
/// is "absent" like any 404, so an unsigned image is unsigned (not an outage) and a signed
/// one verifies (signed at the lab registry, read through the proxy).
#[tokio::test(flavor = "multi_thread")]
async fn a_registrys_own_not_found_code_means_absent() {
    let w = World::start(no_hosts()).await;
    let proxy = RegistryProxy::in_front_of(&w).await;
    proxy.as_harbor();
    let host = proxy.host();
    let unsigned = w.lab.push_image("demo/api", "v1", "unsigned").await.unwrap();
    let out = w.agentctl(&["verify", &format!("{host}/demo/api@{}", unsigned.digest)]);
    assert_exit(&out, 4, "has no signature");
    let img = w.lab.push_image("demo/api", "v2", "signed").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &w.release_key()]));
    assert_ok(&w.agentctl(&["verify", &format!("{host}/demo/api@{}", img.digest)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_found_only_through_the_referrers_api_verifies() {
    let w = World::start(no_hosts()).await;
    let api = RegistryProxy::in_front_of(&w).await;
    let api_host = api.host();

    let img = w.lab.push_image("demo/api", "v1", "api-only").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &w.release_key(), "--format", "bundle"]));
    // Remove the tag-schema index: what remains is the referrer, findable only by its subject.
    let reg = w.lab.registry_client();
    let tag = format!("sha256-{}", img.digest.hex());
    let referrer = reg.referrers(&img.repository, &img.digest).await.unwrap().remove(0);
    let index = reqwest::Client::new()
        .get(format!("http://{}/v2/demo/api/manifests/{tag}", w.lab.registry_host()))
        .header("accept", controlplane::registry::OCI_INDEX)
        .send()
        .await
        .unwrap();
    let index_digest = index.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let deleted = reqwest::Client::new()
        .delete(format!("http://{}/v2/demo/api/manifests/{index_digest}", w.lab.registry_host()))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_exit(&w.agentctl(&["verify", &s(&img)]), 4, "has no signature");

    // Through a registry with the referrers API (its entry without an artifact type, as some
    // registries answer): found, its type read from the manifest, verified.
    let through_api = format!("{api_host}/demo/api@{}", img.digest);
    api.answer(
        200,
        serde_json::json!({ "schemaVersion": 2, "mediaType": controlplane::registry::OCI_INDEX,
            "manifests": [{ "mediaType": controlplane::registry::OCI_MANIFEST, "digest": referrer.digest, "size": 1 }] }),
    );
    assert_ok(&w.agentctl(&["verify", &through_api]));
    // A referrers API that fails is an outage, never "no signature".
    api.answer(500, serde_json::json!({ "errors": [{ "code": "UNKNOWN", "message": "boom" }] }));
    let out = w.agentctl(&["verify", &through_api]);
    assert_exit(&out, 1, "the registry could not be asked");
    assert!(!stderr(&out).contains("no signature"), "{}", stderr(&out));
}

/// `bundle` with its first transparency-log entry changed by `f`.
fn edit_entry(bundle: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    f(&mut v["verificationMaterial"]["tlogEntries"][0]);
    serde_json::to_vec(&v).unwrap()
}

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const CI_SUBJECT: &str = "https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main";

/// Names `sigstore`'s trusted root and `identities` (TOML bodies of `[[trust.identity]]`)
/// in `w`'s trust policy.
fn trust_keyless(w: &World, sigstore: &lab::sigstore::TestSigstore, identities: &[&str]) {
    std::fs::write(w.manifests().join("trust/trusted_root.json"), sigstore.trusted_root()).unwrap();
    let path = w.manifests().join("controlplane.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let builders = text.lines().find(|l| l.starts_with("builders = ")).expect("a builders line").to_owned();
    let mut text = text.replace(&builders, &format!("{builders}\ntrusted_root = \"trust/trusted_root.json\""));
    for id in identities {
        text.push_str(&format!("\n[[trust.identity]]\n{id}\n"));
    }
    std::fs::write(&path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_bundles_verify_for_allowed_identities_and_every_other_case_is_refused_by_name() {
    use lab::sigstore::{Signer, TestSigstore};
    let w = World::start(no_hosts()).await;
    let sigstore = TestSigstore::new("lab fulcio");
    let exact = format!("issuer = \"{ISSUER}\"\nsubject = \"{CI_SUBJECT}\"");
    let pattern = format!("issuer = \"{ISSUER}\"\nsubject_regexp = 'https://github\\.com/acme/tools/\\.github/workflows/[a-z]+\\.yml@refs/tags/v.*'");
    // Before the policy names a trusted root: named as keyless, never "no signature".
    let img = w.lab.push_image("demo/api", "k0", "keyless").await.unwrap();
    let bundle = sigstore.sign_image(img.repository.as_str(), img.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT));
    attach_bundle_referrer(&w, &img, &bundle).await;
    let out = w.agentctl(&["verify", &s(&img)]);
    assert_exit(&out, 4, "signed keyless (a Fulcio certificate), and the trust policy names no `trusted_root`");
    assert!(stderr(&out).contains("[[trust.identity]]"), "{}", stderr(&out));

    trust_keyless(&w, &sigstore, &[&exact, &pattern]);
    assert_ok(&w.agentctl(&["check"]));
    let out = w.agentctl(&["verify", &s(&img), "--json"]);
    assert_ok(&out);
    let out = w.agentctl(&["release", "add", "api", &s(&img), "--commit", COMMIT, "--json"]);
    assert_ok(&out);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["signer_key_id"], format!("keyless:{CI_SUBJECT} issuer={ISSUER}"), "{rec}");
    // `release list` names the identity, the format and the bundle that carried it.
    let list = stdout(&w.agentctl(&["release", "list", "api"]));
    assert!(
        list.contains(&format!("signed by keyless:{CI_SUBJECT} issuer={ISSUER} (bundle-keyless sha256:")),
        "{list}"
    );
    // A subject matching the regular expression, whole.
    let tagged = w.lab.push_image("demo/api", "k1", "keyless by pattern").await.unwrap();
    let by_pattern = "https://github.com/acme/tools/.github/workflows/build.yml@refs/tags/v1.2.0";
    let b = sigstore.sign_image(tagged.repository.as_str(), tagged.digest.hex(), &Signer::ci(ISSUER, by_pattern));
    attach_bundle_referrer(&w, &tagged, &b).await;
    assert_ok(&w.agentctl(&["verify", &s(&tagged)]));

    // Each refusal on its own image: (what signs, what the refusal must say).
    let other_ca = sigstore.other_ca("another fulcio");
    let mut before = Signer::ci(ISSUER, CI_SUBJECT);
    before.integrated_time = before.not_before - time::Duration::minutes(5);
    type Sign<'a> = Box<dyn Fn(&controlplane::image::PinnedImage) -> Vec<u8> + 'a>;
    let refusals: Vec<(&str, Sign, &str)> = vec![
        (
            "another subject",
            Box::new(|i| {
                let evil = "https://github.com/evil/api/.github/workflows/release.yml@refs/heads/main";
                sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, evil))
            }),
            "signed keyless by `https://github.com/evil/api/.github/workflows/release.yml@refs/heads/main`",
        ),
        (
            "another issuer",
            Box::new(|i| {
                sigstore.sign_image(
                    i.repository.as_str(),
                    i.digest.hex(),
                    &Signer::ci("https://accounts.example", CI_SUBJECT),
                )
            }),
            "(issuer `https://accounts.example`), which the trust policy does not allow",
        ),
        (
            "a pattern that matches only part of the subject",
            Box::new(|i| {
                // Unanchored, the pattern would match inside it.
                let longer =
                    "https://evil.example/https://github.com/acme/tools/.github/workflows/build.yml@refs/tags/v1";
                sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, longer))
            }),
            "which the trust policy does not allow",
        ),
        (
            "a certificate from another CA",
            Box::new(|i| other_ca.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT))),
            "does not verify: certificate chain",
        ),
        (
            "a tampered SET",
            Box::new(|i| {
                let b = sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT));
                let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                let set = &mut v["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]["signedEntryTimestamp"];
                let mut raw =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, set.as_str().unwrap()).unwrap();
                let n = raw.len();
                raw[n - 3] ^= 1;
                *set = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw).into();
                serde_json::to_vec(&v).unwrap()
            }),
            "does not verify: transparency log evidence",
        ),
        (
            "a signing time before the certificate's validity",
            Box::new(|i| sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &before)),
            "does not verify",
        ),
        (
            "a valid signature of another image",
            Box::new(|_| {
                sigstore.sign_image("127.0.0.1:5000/demo/api", &"ab".repeat(32), &Signer::ci(ISSUER, CI_SUBJECT))
            }),
            "was made for another image digest",
        ),
        (
            "a checkpoint whose signature was tampered with",
            Box::new(|i| {
                edit_entry(
                    &sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT)),
                    |e| {
                        let cp = e["inclusionProof"]["checkpoint"]["envelope"].as_str().unwrap().to_owned();
                        // One bit of the signature flipped, still valid base64 (editing a
                        // character could hit the `=` padding, which is a parse error).
                        let body = cp.trim_end();
                        let (head, sig) = body.rsplit_once(' ').unwrap();
                        let b64 = &base64::engine::general_purpose::STANDARD;
                        let mut raw = base64::Engine::decode(b64, sig).unwrap();
                        // In the DER signature's last integer: its encoding stays valid.
                        let n = raw.len();
                        raw[n - 3] ^= 1;
                        e["inclusionProof"]["checkpoint"]["envelope"] =
                            format!("{head} {}\n", base64::Engine::encode(b64, raw)).into();
                    },
                )
            }),
            "does not verify: transparency log evidence",
        ),
        (
            "an inclusion proof for another tree",
            Box::new(|i| {
                edit_entry(
                    &sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT)),
                    |e| {
                        e["inclusionProof"]["rootHash"] =
                            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]).into();
                    },
                )
            }),
            "inclusion proof root hash does not match",
        ),
        (
            "a log entry that does not match the bundle",
            Box::new(|i| {
                // The entry of another signature, logged for another image.
                let other =
                    sigstore.sign_image(i.repository.as_str(), &"cd".repeat(32), &Signer::ci(ISSUER, CI_SUBJECT));
                let theirs: serde_json::Value = serde_json::from_slice(&other).unwrap();
                let body = theirs["verificationMaterial"]["tlogEntries"][0]["canonicalizedBody"].clone();
                edit_entry(
                    &sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &Signer::ci(ISSUER, CI_SUBJECT)),
                    |e| {
                        e["canonicalizedBody"] = body.clone();
                    },
                )
            }),
            "does not verify",
        ),
        (
            "a certificate without the SCT the root's CT log must have issued",
            Box::new(|i| {
                let mut no_sct = Signer::ci(ISSUER, CI_SUBJECT);
                no_sct.with_sct = false;
                sigstore.sign_image(i.repository.as_str(), i.digest.hex(), &no_sct)
            }),
            "does not verify: certificate chain",
        ),
    ];
    for (n, (case, sign, expected)) in refusals.iter().enumerate() {
        let img = w.lab.push_image("demo/api", &format!("r{n}"), &format!("refused {n}")).await.unwrap();
        attach_bundle_referrer(&w, &img, &sign(&img)).await;
        let out = w.agentctl(&["verify", &s(&img)]);
        if [0, 3, 4, 5].contains(&n) {
            snap!(format!("keyless_refused_{n}"), shown(&out));
        }
        assert_eq!(out.status.code(), Some(4), "{case}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{case}: expected `{expected}` in\n{}", stderr(&out));
        assert!(!stderr(&out).contains("has no signature"), "{case}: {}", stderr(&out));
    }
    // The identity refusal names the identities allowed.
    let img = w.lab.push_image("demo/api", "r0", "refused 0").await.unwrap();
    let out = w.agentctl(&["verify", &s(&img)]);
    assert!(stderr(&out).contains(CI_SUBJECT) && stderr(&out).contains("subjects matching"), "{}", stderr(&out));
    assert!(stdout(&w.agentctl(&["release", "list", "api"])).contains("1 release(s)"), "only the allowed one recorded");
}

/// Image contents (#24): each layer is streamed and scanned on its own, so a token in a
/// middle layer that a later layer deletes (an OCI whiteout) is still found: `release
/// add` and `verify` refuse it (exit 4) naming the layer and the path, never the value,
/// and nothing is recorded. A clean image passes and its scan is in the evidence; a path
/// the manifests allow, with its reason, passes and the plan shows the allowance.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_deleted_by_a_later_layer_is_still_found_and_named() {
    let w = World::start(no_hosts()).await;
    let token = "ghp_0123456789abcdefABCDEF0123456789ab";
    let config = format!("API_TOKEN={token}\n");
    let base: Vec<(&str, &[u8])> = vec![("app/run", b"#!/bin/sh\nexec /app/server\n"), ("etc/os-release", b"ID=lab\n")];
    let leaky = w
        .lab
        .push_layers(
            "demo/api",
            "leaky",
            &[base.clone(), vec![("app/config/token.env", config.as_bytes())], vec![("app/config/.wh.token.env", b"")]],
            true,
        )
        .await
        .unwrap();
    let key = w.release_key();
    assert_ok(&w.agentctl(&["sign", &s(&leaky), "--key", &key]));
    let middle = {
        let reg = w.lab.registry_client();
        let (manifest, _) = reg.manifest(&leaky.repository, leaky.digest.as_str()).await.unwrap().unwrap();
        cosign::manifest_layers(&manifest).unwrap()[1].digest.to_string()
    };

    for args in [vec!["release", "add", "api", &s(&leaky), "--commit", COMMIT], vec!["verify", &s(&leaky)]] {
        let out = w.agentctl(&args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("`app/config/token.env`") && err.contains(&middle), "layer and path named: {err}");
        assert!(err.contains("a token with the well-known prefix `ghp_`"), "{err}");
        assert!(err.contains("[[contents.allow]]") && err.contains("multi-stage"), "the fix is named: {err}");
        assert!(!err.contains(token) && !stdout(&out).contains(token), "never the value: {err}");
    }
    assert!(!stdout(&w.agentctl(&["release", "list", "api"])).contains(leaky.digest.as_str()), "nothing recorded");

    // A clean image of three layers passes, and its scan is recorded with the release.
    let clean = w
        .lab
        .push_layers("demo/api", "clean", &[base.clone(), vec![("app/config/app.env", b"LOG=info\n")], vec![]], true)
        .await
        .unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&clean), "--key", &key]));
    let out = w.agentctl(&["release", "add", "api", &s(&clean), "--commit", COMMIT, "--json"]);
    assert_ok(&out);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = rec["evidence"]["contents"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{rec}");
    assert_eq!(layers.iter().map(|l| l["files"].as_u64().unwrap()).sum::<u64>(), 3);
    assert!(stdout(&w.agentctl(&["release", "list", "api"])).contains("3 layer(s), 3 file(s)"));

    // A layer that is not what its media type says (and larger than the pipe between the
    // download and the reader): unreadable, a refusal (exit 4), never "the registry is down".
    let garbage: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let artifact = controlplane::registry::Artifact {
        config_media_type: controlplane::registry::OCI_CONFIG.into(),
        config: br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
        layers: vec![controlplane::registry::Layer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            data: garbage,
            annotations: Default::default(),
        }],
    };
    let reg = w.lab.registry_client();
    let corrupt = controlplane::image::PinnedImage {
        repository: clean.repository.clone(),
        digest: reg.push_artifact(&clean.repository, Some("corrupt"), &artifact).await.unwrap(),
    };
    assert_ok(&w.agentctl(&["sign", &s(&corrupt), "--key", &key]));
    let out = w.agentctl(&["verify", &s(&corrupt)]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a readable tar stream"), "{}", stderr(&out));

    // Allowed, with a reason: recorded, and the plan shows what was allowed and why.
    let svc = w.manifests().join("services/api.toml");
    let text = std::fs::read_to_string(&svc).unwrap();
    std::fs::write(
        &svc,
        format!("{text}\n[[contents.allow]]\npath = \"/app/config/token.env\"\nreason = \"a revoked test token\"\n"),
    )
    .unwrap();
    assert_ok(&w.agentctl(&["check"]));
    let out = w.agentctl(&["release", "add", "api", &s(&leaky), "--commit", COMMIT]);
    assert_ok(&out);
    assert!(stdout(&out).contains("1 allowed (app/config/token.env: a revoked test token)"), "{}", stdout(&out));
    let out = w.promote("staging", &leaky, &[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("contents 3 layer(s)") && stdout(&out).contains("a revoked test token"),
        "{}",
        stdout(&out)
    );
}
