//! Registries as the field has them, played by a proxy in front of the lab registry:
//! referrer lists of any length (paged by the referrers API, or long in the tag schema),
//! and conditional manifest writes honoured.

mod common;

use common::registry_proxy::RegistryProxy;
use common::*;
use controlplane::registry::{OCI_INDEX, OCI_MANIFEST};
use lab::LabConfig;

fn no_hosts() -> LabConfig {
    LabConfig { hosts: 1, staging: 1, registry: true, dir: None, egress: false, podman: false }
}

/// `n` referrers of other tools, each listed with its type.
fn others(n: usize, from: usize) -> Vec<serde_json::Value> {
    (from..from + n)
        .map(|i| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": format!("sha256:{i:064x}"), "size": 321,
                "artifactType": "application/vnd.example.sbom.v1+json",
            })
        })
        .collect()
}

fn index(entries: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries })
}

/// The trusted signature listed after 600 referrers of other tools — across three pages of
/// the referrers API, or in one long tag-schema index — is found and verifies (a list cut
/// at any count would say "no signature"). Referrers without a type cost a request each,
/// so more than the bound of them is refused, naming why.
#[tokio::test(flavor = "multi_thread")]
async fn a_referrer_list_of_any_length_is_read_to_its_end() {
    let w = World::start(no_hosts()).await;
    let api = RegistryProxy::in_front_of(&w).await;
    let img = w.lab.push_image("demo/api", "v1", "many referrers").await.unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&img), "--key", &w.release_key()]));
    let reg = w.lab.registry_client();
    let ours = reg.referrers(&img.repository, &img.digest).await.unwrap().remove(0);
    let ours = serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": ours.digest, "size": 1,
        "artifactType": ours.artifact_type.unwrap(),
    });

    // The referrers API, three pages.
    let through = format!("{}/demo/api@{}", api.host(), img.digest);
    api.answer_pages(vec![index(others(300, 0)), index(others(300, 300)), index(vec![ours.clone()])]);
    assert_ok(&w.agentctl(&["verify", &through]));
    let pages = api.log().iter().filter(|l| l.contains("/referrers/")).count();
    assert_eq!(pages, 3, "{:?}", api.log());

    // The tag schema, one long index: ours is entry 601 (the registry checks that what an
    // index lists exists, so the other tool's entries name one real manifest, 600 times).
    let other = w.lab.push_image("demo/api", "other", "another tool's artifact").await.unwrap();
    let (bytes, _) = reg.manifest(&other.repository, other.digest.as_str()).await.unwrap().unwrap();
    let mut long: Vec<_> = (0..600)
        .map(|_| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": other.digest, "size": bytes.len(),
                "artifactType": "application/vnd.example.sbom.v1+json",
            })
        })
        .collect();
    long.push(ours);
    let tag = format!("sha256-{}", img.digest.hex());
    reg.push_manifest(&img.repository, Some(&tag), serde_json::to_vec(&index(long)).unwrap()).await.unwrap();
    assert_ok(&w.agentctl(&["verify", &s(&img)]));

    // Untyped entries beyond the bound: refused, not cut.
    let untyped: Vec<_> = (0..controlplane::registry::MAX_UNTYPED_REFERRERS + 1)
        .map(|i| serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": format!("sha256:{i:064x}"), "size": 1 }))
        .collect();
    api.answer(200, index(untyped));
    let out = w.agentctl(&["verify", &through]);
    assert_exit(&out, 4, "listed without an artifact type");
}

/// `sign` writes the referrers tag index conditionally: on a registry that honours
/// preconditions, another tool's write between agentctl's read and its write makes the
/// registry answer 412, and agentctl reads again and merges — the other tool's entry is
/// kept byte for byte beside agentctl's, and the image verifies.
#[tokio::test(flavor = "multi_thread")]
async fn signing_merges_again_when_a_conditional_write_is_refused() {
    let w = World::start(no_hosts()).await;
    let proxy = RegistryProxy::in_front_of(&w).await;
    proxy.honour_preconditions();
    let other = w.lab.push_image("demo/api", "scan", "another tool's artifact").await.unwrap();
    let reg = w.lab.registry_client();
    let (bytes, _) = reg.manifest(&other.repository, other.digest.as_str()).await.unwrap().unwrap();
    let theirs = serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": other.digest, "size": bytes.len(),
        "artifactType": "application/vnd.example.scan.v1+json",
        "annotations": { "org.example.tool": "scanner 2.1" },
    });
    proxy.interfere_with(theirs.clone());
    let img = w.lab.push_image("demo/api", "v1", "conditional").await.unwrap();
    let through = format!("{}/demo/api@{}", proxy.host(), img.digest);
    assert_ok(&w.agentctl(&["sign", &through, "--key", &w.release_key()]));

    let puts: Vec<String> =
        proxy.log().into_iter().filter(|l| l.starts_with("PUT") && l.contains("/manifests/sha256-")).collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert!(puts[0].ends_with("-> 412 if-none-match=*"), "the first write expected no index: {puts:?}");
    assert!(puts[1].contains("-> 201 if-match=\"sha256:"), "the second names the index it read: {puts:?}");

    let bytes = reg.tag_schema_index(&img.repository, &img.digest).await.unwrap().unwrap();
    let now: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let entries = now["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{now}");
    assert!(entries.contains(&theirs), "the other tool's entry is kept as it was: {now}");
    assert_ok(&w.agentctl(&["verify", &through]));
}
