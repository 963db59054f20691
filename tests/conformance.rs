//! The Sigstore client conformance suite's verification cases (sigstore-conformance, copied
//! as data under `tests/fixtures/sigstore-conformance/`, its README says from where), run
//! through `agentctl verify-blob` as the suite's own client protocol runs a client: each
//! case with the artifact's path and again with its `sha256:` digest. A case named `_fail`
//! must be refused; every other must verify. There is no list of divergences: all 140 hold.

mod common;

use common::BIN;
use std::path::Path;
use std::process::Command;

#[test]
fn every_conformance_case_verifies_or_is_refused_as_the_suite_expects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigstore-conformance");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 70, "the suite's 70 verification cases");
    let production = "trusted-roots/public-good-production.trusted_root.json";
    let mut wrong = Vec::new();
    let mut runs = 0;
    for case in cases {
        let field = |k: &str| case[k].as_str().unwrap_or_else(|| panic!("{case}: no `{k}`")).to_owned();
        let root = match field("trusted_root").as_str() {
            "PUBLIC_GOOD_PRODUCTION" => production.to_owned(),
            other => other.to_owned(),
        };
        let fail = field("expect") == "fail";
        assert_eq!(fail, field("name").ends_with("_fail"), "{case}");
        for artifact in [field("artifact"), field("artifact_sha256")] {
            let mut cmd = Command::new(BIN);
            cmd.current_dir(&dir).args(["verify-blob", "--bundle", &field("bundle")]);
            match field("verify_with").as_str() {
                "key" => cmd.args(["--key", &field("key")]),
                _ => cmd.args([
                    "--certificate-identity",
                    &field("identity"),
                    "--certificate-oidc-issuer",
                    &field("issuer"),
                ]),
            };
            let out = cmd.args(["--trusted-root", &root, &artifact]).output().unwrap();
            runs += 1;
            // A verified case exits 0; a refused one 4 (the bundle does not verify), except the
            // two whose key file or trusted root cannot be read as one at all: 2, naming it.
            let unreadable = ["managed-key-wrong-key_fail", "trust-root-tlog-missing-validity-start_fail"];
            let err = String::from_utf8_lossy(&out.stderr);
            let ok = match (fail, unreadable.contains(&field("name").as_str())) {
                (false, _) => out.status.code() == Some(0),
                (true, false) => out.status.code() == Some(4) && err.contains("does not verify"),
                (true, true) => {
                    out.status.code() == Some(2)
                        && (err.contains("not a PEM public key") || err.contains("trusted root"))
                }
            };
            if !ok {
                wrong.push(format!(
                    "{} ({artifact}): exit {:?}: {}",
                    field("name"),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert_eq!(runs, 140);
    assert!(wrong.is_empty(), "{} of 140 runs diverge:\n{}", wrong.len(), wrong.join("\n"));
}

/// A keyed bundle whose transparency-log entry cannot be proven (no trusted root given) is
/// refused, not accepted on its signature alone; with the root it verifies.
#[test]
fn a_keyed_bundle_with_log_evidence_needs_the_root_to_prove_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigstore-conformance");
    let case = "bundle-verify/managed-key-happy-path";
    let run = |root: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&dir).args(["verify-blob", "--bundle", &format!("{case}/bundle.sigstore.json")]);
        cmd.args(["--key", &format!("{case}/key.pub")]);
        if let Some(r) = root {
            cmd.args(["--trusted-root", r]);
        }
        cmd.arg(if Path::new(&dir.join(case).join("artifact")).exists() {
            format!("{case}/artifact")
        } else {
            "bundle-verify/a.txt".into()
        });
        cmd.output().unwrap()
    };
    let root = if dir.join(case).join("trusted_root.json").exists() {
        format!("{case}/trusted_root.json")
    } else {
        "trusted-roots/public-good-production.trusted_root.json".to_owned()
    };
    assert_eq!(run(Some(&root)).status.code(), Some(0));
    let out = run(None);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
}
