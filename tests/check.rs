//! `agentctl check` and `init` through the real binary: exit codes, located messages,
//! and nothing written on bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_agentctl");

/// Every file under `dir` with its bytes, so "nothing changed" is checked exactly.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn copy_example(to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for (rel, bytes) in snapshot(&src) {
        let dst = to.join("manifests").join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(dst, bytes).unwrap();
    }
    // The keys the example points at (outside the manifests, as it requires).
    std::fs::create_dir_all(to.join("state/ssh")).unwrap();
    std::fs::write(to.join("state/ssh/id_ed25519"), "placeholder").unwrap();
    std::fs::write(to.join("state/receipt.key"), "placeholder").unwrap();
}

fn check(dir: &Path, json: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--manifests").arg(dir.join("manifests")).arg("check");
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn example_manifest_set_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let out = check(dir.path(), false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("staging -> prod"));
}

/// (file, text to replace, replacement, expected `file:line`, expected field)
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "services/api.toml",
        "image = \"127.0.0.1:5000/demo/api\"",
        "image = \"127.0.0.1:5000/demo/api",
        "services/api.toml:5",
        "image",
    ),
    ("services/api.toml", "egress = [", "egres = [", "services/api.toml:10", "egres"),
    ("services/api.toml", "memory = \"256m\"", "memory = 7", "services/api.toml:27", "memory"),
    (
        "services/api.toml",
        "image = \"127.0.0.1:5000/demo/api\"",
        "image = \"127.0.0.1:5000/demo/api:v2\"",
        "services/api.toml:5",
        "image",
    ),
    (
        "services/api.toml",
        "image = \"127.0.0.1:5000/demo/api\"",
        "image = \"127.0.0.1:5000/demo/api@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"",
        "services/api.toml:5",
        "image",
    ),
    (
        "services/api.toml",
        "secrets = [\"API_TOKEN\"]",
        "secrets = [\"ghp_0123456789abcdefghijABCDEFGHIJ\"]",
        "services/api.toml:8",
        "secrets[0]",
    ),
    (
        "services/api.toml",
        "secrets = [\"API_TOKEN\"]",
        "secrets = [\"-----BEGIN OPENSSH PRIVATE KEY-----\"]",
        "services/api.toml:8",
        "secrets[0]",
    ),
    (
        "services/api.toml",
        "egress = [\"api.example.com:443\"]",
        "egress = [\"AKIAIOSFODNN7EXAMPLE:443\"]",
        "services/api.toml:10",
        "egress[0]",
    ),
    (
        "services/api.toml",
        "target = \"config/api.env\"",
        "target = \"../escape\"",
        "services/api.toml:15",
        "template[0].target",
    ),
    ("services/api.toml", "kind = \"podman\"", "kind = \"docker\"", "services/api.toml:22", "runtime.kind"),
    ("environments/prod.toml", "name = \"prod-2\"", "name = \"prod-1\"", "environments/prod.toml:24", "host[1].name"),
    ("environments/prod.toml", "after = \"staging\"", "after = \"qa\"", "environments/prod.toml:2", "after"),
    ("environments/prod.toml", "port = 2202", "port = 70000", "environments/prod.toml:18", "host[0].port"),
    (
        "environments/prod.toml",
        "name = \"prod-2\"",
        "name = \"prod-2; rm -rf /\"",
        "environments/prod.toml:24",
        "host[1].name",
    ),
    (
        "environments/prod.toml",
        "root = \"/srv/agents\"",
        "root = \"relative/path\"",
        "environments/prod.toml:21",
        "host[0].root",
    ),
    (
        "environments/prod.toml",
        "host_key = \"ssh-ed25519 AAAA",
        "host_key = \"ssh-ed25519 BBBB",
        "environments/prod.toml:20",
        "host[0].host_key",
    ),
    ("environments/prod.toml", "batch = \"50%\"", "batch = \"half\"", "environments/prod.toml:12", "rollout.batch"),
    (
        "environments/prod.toml",
        "require_sbom = true",
        "require_sbom = \"yes\"",
        "environments/prod.toml:9",
        "require_sbom",
    ),
    ("environments/prod.toml", "approvals = 1", "aprovals = 1", "environments/prod.toml:3", "aprovals"),
    (
        "services/api.toml",
        "egress = [\"api.example.com:443\"]",
        "egress = [\"10.1.2.3/8:443\"]",
        "services/api.toml:10",
        "egress[0]",
    ),
    (
        "controlplane.toml",
        "state = \"sqlite:../state/controlplane.db\"",
        "state = \"postgres://cp:hunter2@db/cp\"",
        "controlplane.toml:6",
        "controlplane.state",
    ),
    ("controlplane.toml", "\ninsecure = true", "\ninsecure = yes", "controlplane.toml:22", "insecure"),
    (
        "controlplane.toml",
        "keys = [\"trust/release.pub\"]",
        "keys = [\"trust/missing.pub\"]",
        "controlplane.toml:28",
        "trust.keys[0]",
    ),
    (
        "controlplane.toml",
        "receipt_key = \"../state/receipt.key\"",
        "receipt_key = \"keys/receipt.key\"",
        "controlplane.toml:11",
        "controlplane.receipt_key",
    ),
];

#[test]
fn a_password_in_the_state_url_is_refused_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let path = dir.path().join("manifests/controlplane.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "state = \"sqlite:../state/controlplane.db\"",
            "state = \"postgres://cp:s3cret-pw@db.internal/cp\"",
        ),
    )
    .unwrap();
    let out = check(dir.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("state_password_env"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "the password is echoed:\n{stderr}");
    // Without the password, with its variable named, the same URL is accepted.
    std::fs::write(
        &path,
        text.replace(
            "state = \"sqlite:../state/controlplane.db\"",
            "state = \"postgres://cp@db.internal/cp?sslmode=verify-full\"\nstate_password_env = \"CP_DB_PASSWORD\"",
        ),
    )
    .unwrap();
    let out = check(dir.path(), false);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn malformed_manifests_exit_2_with_location_and_change_nothing() {
    assert!(CASES.len() >= 20);
    for (file, from, to, location, field) in CASES {
        let dir = tempfile::tempdir().unwrap();
        copy_example(dir.path());
        let path = dir.path().join("manifests").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "case {file}: {from:?} not found");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let before = snapshot(dir.path());

        let out = check(dir.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file} {to}: {stderr}");
        assert!(stderr.contains(location), "{to}: expected `{location}` in:\n{stderr}");
        assert!(stderr.contains(&format!("field `{field}`")), "{to}: expected field `{field}` in:\n{stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
        assert_eq!(snapshot(dir.path()), before, "{to}: check changed files");
        assert!(!dir.path().join("state/controlplane.db").exists() && !dir.path().join("receipts").exists());

        let out = check(dir.path(), true);
        assert_eq!(out.status.code(), Some(2));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints one document");
        assert_eq!(doc["ok"], false);
        assert!(doc["diagnostics"][0]["line"].as_u64().unwrap() > 0);
    }
}

#[test]
fn init_refuses_an_existing_directory_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("init").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = std::fs::metadata(dir.path().join("state/receipt.key")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"), "the private key is never printed");

    let before = snapshot(dir.path());
    let out = Command::new(BIN).arg("init").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(snapshot(dir.path()), before);

    let out = Command::new(BIN).arg("--manifests").arg(dir.path().join("manifests")).arg("check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Regression: a missing SSH identity file passed `check` and later read "host rejected
/// our SSH key"; a missing receipt key failed only at the end of an apply.
#[test]
fn check_names_a_missing_ssh_identity_or_receipt_key_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new(BIN).arg("init").arg(dir.path()).status().unwrap().success());
    std::fs::remove_file(dir.path().join("state/ssh/id_ed25519")).unwrap();
    std::fs::remove_file(dir.path().join("state/receipt.key")).unwrap();
    let out = check(dir.path(), false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let cp = std::fs::read_to_string(dir.path().join("manifests/controlplane.toml")).unwrap();
    let line = |key: &str| cp.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    assert!(
        err.contains(&format!("controlplane.toml:{}:1: field `ssh.identity`: cannot read", line("identity"))),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "controlplane.toml:{}:1: field `controlplane.receipt_key`: cannot read",
            line("receipt_key")
        )),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("agentctl"));
}

/// The workflow fixtures: 15 safe (look-alikes included) and 16 unsafe files.
fn workflow_fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/workflows")
}

/// `(file name, line, rule)` of `check --ci --json DIR`'s findings.
fn ci_findings(dir: &Path) -> Vec<(String, u64, String)> {
    let out = Command::new(BIN).args(["--json", "check", "--ci"]).arg(dir).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = Path::new(f["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (file, f["line"].as_u64().unwrap(), f["rule"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// `check --ci` over the fixtures (a YAML parse with positions): exactly the unsafe
/// workflows are flagged, each at its line with its rule and fix — the three forms a line
/// scanner missed (`permissions: {contents: write}`, an expression split over two lines
/// in `run: |`, `github.event['pull_request']['title']`) included — and the safe ones,
/// look-alikes included, pass. What a workflow says never reaches the terminal raw.
#[test]
fn check_ci_flags_exactly_the_unsafe_workflows() {
    let fixtures = workflow_fixtures();
    let count = |d: &str| std::fs::read_dir(fixtures.join(d)).unwrap().count();
    assert!(count("safe") >= 15 && count("unsafe") >= 15, "at least 15 of each");
    let out = Command::new(BIN).args(["check", "--ci"]).arg(fixtures.join("safe")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["check", "--ci"]).arg(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an empty directory is not a clean one");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was checked"));
    let out = Command::new(BIN).args(["check", "--ci"]).arg(fixtures.join("unsafe")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let want = [
        ("06-title-in-run.yml", 9, "template-injection"),
        ("07-head-ref-block.yml", 12, "template-injection"),
        ("08-inputs-in-run.yml", 12, "template-injection"),
        ("09-write-all.yml", 3, "undeclared-write"),
        ("10-job-write.yml", 9, "undeclared-write"),
        ("11-no-permissions.yml", 1, "default-permissions"),
        ("12-comment-body.yml", 10, "template-injection"),
        ("13-flow-write.yml", 3, "undeclared-write"),
        ("14-split-expression.yml", 11, "template-injection"),
        ("15-bracket-title.yml", 9, "template-injection"),
        ("16-upper-case.yml", 9, "template-injection"),
        ("17-github-script.yml", 12, "template-injection"),
        ("18-untrusted-checkout.yml", 12, "untrusted-checkout"),
        ("19-unpinned-uses.yml", 9, "unpinned-uses"),
        ("20-artipacked.yml", 9, "artipacked"),
        ("21-escape-sequences.yml", 9, "unpinned-uses"),
    ];
    let want: Vec<(String, u64, String)> = want.iter().map(|(f, l, r)| (f.to_string(), *l, r.to_string())).collect();
    assert_eq!(ci_findings(&fixtures.join("unsafe")), want);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("14-split-expression.yml:11:13: template-injection: `github.event.issue.title`"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: pass the value through `env:`"), "each finding names its fix: {stderr}");
    // 21 holds raw escape sequences (and YAML `\e` escapes): none reaches the terminal or JSON.
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\u{7}'), "{stderr:?}");
    let json = Command::new(BIN).args(["--json", "check", "--ci"]).arg(fixtures.join("unsafe")).output().unwrap();
    assert!(!String::from_utf8_lossy(&json.stdout).contains("\\u001b"), "escapes kept in --json");
}

/// One zizmor finding: rule, file, line (1-based), annotation.
type Zizmor = (String, String, u64, String);

/// The same fixtures through zizmor (PyPI, the independent implementation, installed by
/// `cargo xtask setup`): on every rule both implement, both find the same lines. The
/// differences, each with why (asserted, so a change on either side shows):
/// - zizmor's `template-injection` also flags `github.ref_name` (safe/03): agentctl does
///   not, as only those with push access name the branches and tags `push` runs for;
/// - zizmor's `dangerous-triggers` flags every `pull_request_target`, `workflow_run` and
///   `issue_comment` workflow; agentctl's `untrusted-checkout` only those that check out the
///   untrusted head (each of which zizmor flags too);
/// - zizmor (pedantic) wants a comment on every permission, reads included; agentctl on
///   writes only, and it must say `# needs:`;
/// - zizmor refuses to read a workflow with raw control characters (unsafe/21); agentctl
///   reads it and reports it sanitized.
#[test]
fn check_ci_agrees_with_zizmor() {
    let zizmor = Path::new(lab::ZIZMOR);
    assert!(zizmor.exists(), "zizmor is not installed: run `cargo xtask setup`");
    let fixtures = workflow_fixtures();
    let mut files: Vec<String> = Vec::new();
    for d in ["safe", "unsafe"] {
        for e in std::fs::read_dir(fixtures.join(d)).unwrap() {
            files.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    files.sort();
    // zizmor's findings of one run.
    let run = |persona: &str| -> Vec<Zizmor> {
        let out = Command::new(zizmor)
            .args(["--offline", "--no-config", "--persona", persona, "--format", "json"])
            .args(&files)
            .current_dir(&fixtures)
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("zizmor --format json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        doc.as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let locs = f["locations"].as_array().unwrap();
                let l = locs.iter().find(|l| l["symbolic"]["kind"] == "Primary").unwrap_or(&locs[0]);
                let file = l["symbolic"]["key"]["Local"]["verbatim_path"].as_str().unwrap().trim_start_matches("./");
                (
                    f["ident"].as_str().unwrap().to_owned(),
                    file.to_owned(),
                    l["concrete"]["location"]["start_point"]["row"].as_u64().unwrap() + 1,
                    l["symbolic"]["annotation"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let (regular, pedantic) = (run("regular"), run("pedantic"));
    let ours: Vec<(String, u64, String)> = ["safe", "unsafe"]
        .iter()
        .flat_map(|d| ci_findings(&fixtures.join(d)).into_iter().map(move |(f, l, r)| (format!("{d}/{f}"), l, r)))
        .collect();
    // Compared on what zizmor read (it refuses 21, see above).
    let ours_of = |rule: &str| -> std::collections::BTreeSet<(String, u64)> {
        ours.iter().filter(|(f, _, r)| r == rule && !f.contains("21-escape")).map(|(f, l, _)| (f.clone(), *l)).collect()
    };
    let theirs = |from: &[Zizmor], keep: &dyn Fn(&Zizmor) -> bool| {
        from.iter().filter(|z| keep(z)).map(|(_, f, l, _)| (f.clone(), *l)).collect::<std::collections::BTreeSet<_>>()
    };
    let source_line = |file: &str, line: u64| {
        std::fs::read_to_string(fixtures.join(file)).unwrap().lines().nth(line as usize - 1).unwrap_or("").to_owned()
    };

    // Same rule, same lines.
    for rule in ["template-injection", "unpinned-uses", "artipacked"] {
        let mut z = theirs(&regular, &|z| z.0 == rule);
        if rule == "template-injection" {
            assert!(z.remove(&("safe/03-stated-write.yml".to_owned(), 15)), "the `github.ref_name` difference: {z:?}");
        }
        assert_eq!(ours_of(rule), z, "{rule}");
    }
    // zizmor refused 21 (control characters), which agentctl reads.
    assert!(!regular.iter().any(|z| z.1.contains("21-escape")), "zizmor read 21 after all");
    // Undeclared writes: zizmor's undocumented-permissions on write lines, and write-all.
    let z = theirs(&pedantic, &|z| {
        z.0 == "undocumented-permissions" && source_line(&z.1, z.2).contains("write")
            || z.0 == "excessive-permissions" && z.3.contains("write-all")
    });
    assert_eq!(ours_of("undeclared-write"), z, "undeclared-write");
    // Default permissions: the same files (zizmor names each job, agentctl the file).
    let files_of = |s: std::collections::BTreeSet<(String, u64)>| {
        s.into_iter().map(|(f, _)| f).collect::<std::collections::BTreeSet<_>>()
    };
    let z = theirs(&regular, &|z| z.0 == "excessive-permissions" && z.3.contains("default permissions"));
    assert_eq!(files_of(ours_of("default-permissions")), files_of(z), "default-permissions");
    // Untrusted checkouts: each in a workflow zizmor flags for its trigger.
    let z = files_of(theirs(&regular, &|z| z.0 == "dangerous-triggers"));
    let o = files_of(ours_of("untrusted-checkout"));
    assert!(!o.is_empty() && o.is_subset(&z), "ours {o:?} within zizmor's {z:?}");
}
