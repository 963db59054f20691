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
            // A verified case exits 0; a refused one 4 (a bundle that does not verify) or 2
            // (an input that cannot be read as a key or trusted root at all).
            let ok = if fail { matches!(out.status.code(), Some(2 | 4)) } else { out.status.code() == Some(0) };
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
