//! Hostile input at every parser (docs/SECURITY.md, "Hostile input"): the corpus of
//! inputs that once failed (`tests/fixtures/hostile/TARGET/`) and the fuzz seeds
//! (`fuzz/seeds/TARGET/`, real examples: cosign's own bundles, the conformance cases, the
//! example manifests, recorded probe outputs) replayed through every fuzz target, then
//! property tests with generated input: never a panic, never more allocated than the
//! target's bound, round trips where the format has one, and sanitized text free of
//! control and bidirectional characters.

use controlplane::fuzzing::{self, Target, TARGETS};
use controlplane::untrusted::HostText;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// The most `target` held on this thread while it read `data`, above where it started
/// (`allocation-counter` is this test binary's global allocator, counting per thread).
/// A panic is caught inside the measured closure and raised again after it (a panic
/// out of `measure` would leave its counter's depth raised).
fn held(target: &Target, data: &[u8]) -> u64 {
    let mut outcome = Ok(());
    let info = allocation_counter::measure(|| {
        outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(data)));
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    info.bytes_max
}

/// A finding, as the fuzz harness reports it: over the bound is a panic.
fn check(target: &Target, data: &[u8]) {
    if let Some(why) = fuzzing::over_bound(target, data.len(), held(target, data)) {
        panic!("{why}");
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// The files of `dir/TARGET/`, if any.
fn files(dir: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let d = root().join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&d) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_corpus_and_the_seeds_replay_within_bounds() {
    let mut ran = 0;
    for t in TARGETS {
        let seeds = files("fuzz/seeds", t.name);
        assert!(!seeds.is_empty(), "target `{}` has no seed in fuzz/seeds/{}/", t.name, t.name);
        for (path, bytes) in seeds.iter().chain(&files("tests/fixtures/hostile", t.name)) {
            if let Some(why) = fuzzing::over_bound(t, bytes.len(), held(t, bytes)) {
                panic!("{}: {why}", path.display());
            }
            ran += 1;
        }
    }
    assert!(ran >= TARGETS.len(), "{ran} inputs");
}

/// The worst document for a JSON parser — the smallest objects, `{"":0}`, as many as the
/// target's largest input holds — at every target's cut: each stays within its bound.
#[test]
fn the_worst_documents_at_each_cut_stay_within_bounds() {
    let mut over = Vec::new();
    for t in TARGETS {
        let n = t.max_input.saturating_sub(20) / 7;
        let mut doc = String::with_capacity(t.max_input);
        doc.push_str("{\"manifests\":[");
        for i in 0..n {
            doc.push_str(if i == 0 { "{\"\":0}" } else { ",{\"\":0}" });
        }
        doc.push_str("]}");
        let doc = &doc.as_bytes()[..doc.len().min(t.max_input)];
        let used = held(t, doc);
        let bound = (t.bound)(doc.len()) as u64;
        eprintln!("{:<16} {:>9} input bytes: {:>11} held, bound {bound}", t.name, doc.len(), used);
        if used > bound {
            over.push(format!("target `{}`: {used} bytes held for {} input bytes; bound {bound}", t.name, doc.len()));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}

/// The counting allocator sees what a parser holds: a target given a large input holds
/// at least that much (so a bound check is not vacuous).
#[test]
fn the_allocation_count_is_real() {
    let t = fuzzing::target("plan_file").unwrap();
    let big = format!("{{\"plan_id\": \"{}\"}}", "x".repeat(1 << 20));
    assert!(held(t, big.as_bytes()) >= 1 << 20);
    let tiny = Target { name: "tiny", what: "", run: |_| {}, bound: |_| 0, max_input: 16 };
    check(&tiny, b"anything");
    let hungry = Target {
        name: "hungry",
        what: "",
        run: |d| drop(std::hint::black_box(vec![0u8; d.len() * 10])),
        bound: |n| n,
        max_input: 1000,
    };
    assert!(std::panic::catch_unwind(|| check(&hungry, &[1; 1000])).is_err(), "over the bound is a finding");
}

/// Runs `cases` generated inputs through every target, each its own property: no panic,
/// within its bound. A failure names the target and the smallest input found.
fn each_target(cases: u32, input: impl Fn(&'static Target) -> BoxedStrategy<Vec<u8>>) {
    for t in TARGETS {
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&input(t), |data| match std::panic::catch_unwind(|| check(t, &data)) {
            Ok(()) => Ok(()),
            Err(_) => Err(TestCaseError::fail(format!("target `{}` panicked", t.name))),
        });
        if let Err(e) = result {
            panic!("target `{}`: {e}", t.name);
        }
    }
}

/// Every target, arbitrary bytes and text.
#[test]
fn every_target_takes_arbitrary_bytes() {
    each_target(256, |_| any_bytes().boxed());
}

/// Every target, its seeds with a few bytes changed, cut or repeated (the fuzzer's first moves).
#[test]
fn every_target_takes_mutated_seeds() {
    each_target(256, |t| {
        let seeds: Vec<Vec<u8>> = files("fuzz/seeds", t.name).into_iter().map(|(_, b)| b).collect();
        (
            proptest::sample::select(seeds),
            proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            0usize..3,
            any::<proptest::sample::Index>(),
        )
            .prop_map(|(mut data, edits, how, at)| {
                for (i, b) in edits {
                    if !data.is_empty() {
                        let i = i.index(data.len());
                        data[i] = b;
                    }
                }
                if !data.is_empty() {
                    let at = at.index(data.len());
                    match how {
                        1 => data.truncate(at),
                        2 => {
                            let tail = data[at..].to_vec();
                            data.extend_from_slice(&tail);
                        }
                        _ => {}
                    }
                }
                data
            })
            .boxed()
    });
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // Text-like input reaches further into text parsers.
        "[ -~\n]{0,512}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Sanitized host text: bounded, and no control, bidirectional or zero-width character.
    #[test]
        fn host_text_is_clean(raw in "(?s).{0,300}|[\\x00-\\x1f\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}\\u{200b}-\\u{200f}a-z]{0,300}|[a-z\\u{1b}\\u{e9}\\u{4e2d}]{2000,4000}") {
        let t = HostText::new(&raw);
        let s = t.as_str();
        prop_assert!(s.len() <= controlplane::untrusted::MAX_HOST_TEXT + " [cut]".len());
        prop_assert!(!s.chars().any(|c| c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')), "{s:?}");
                // Sanitizing is idempotent: what was made safe (and not cut) stays as it is.
        if !s.ends_with("[cut]") {
            let again = HostText::new(s);
            prop_assert_eq!(again.as_str(), s);
        }
    }

    /// A well-formed probe answer with arbitrary field values: parsed or refused, never a
    /// panic; every text it yields is sanitized.
    #[test]
    fn probe_answers_with_arbitrary_fields(current in "(?s).{0,80}", json in "(?s).{0,200}", hash in "[0-9a-f]{64}|-|.{0,10}", running in "(?s).{0,200}", odd in "(?s).{0,100}") {
        use base64::Engine as _;
        let b = |s: &str| if s.is_empty() { "-".to_owned() } else { base64::engine::general_purpose::STANDARD.encode(s) };
        let out = format!("agentctl-probe 1\ncurrent {}\njson {}\nhash {hash}\nodd {}\nrunning {}\nend\n", b(&current), b(&json), b(&odd), b(&running));
        if let Ok(o) = controlplane::observe::parse(out.as_bytes()) {
            for t in o.odd_entries.iter().chain(o.running.as_ref()) {
                prop_assert!(!t.as_str().chars().any(char::is_control), "{t:?}");
            }
        }
    }

    /// The runtime's report: known keys with arbitrary values; what parses holds only safe names.
    #[test]
    fn podman_reports_with_arbitrary_values(words in proptest::collection::vec(("(missing-secrets|others|container|digest|restarts|release|id|x)", "(?s).{0,70}"), 0..8)) {
        let line = std::iter::once("podman=1".to_owned()).chain(words.iter().map(|(k, v)| format!("{k}={v}"))).collect::<Vec<_>>().join(" ");
        if let Ok(r) = controlplane::podman::Report::parse(&line) {
            for n in r.missing_secrets.iter().chain(&r.others) {
                prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)), "{n:?}");
            }
        }
    }

    /// Egress rules round-trip through their text form.
    #[test]
    fn egress_rules_round_trip(a in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), port in 1u16.., prefix in 0u8..=32, form in 0..3) {
        let text = match form {
            0 => format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3]),
            1 => format!("[{}]:{port}", std::net::Ipv6Addr::from(v6)),
            _ => format!("{}.{}.{}.{}/{prefix}:{port}", a[0], a[1], a[2], a[3]),
        };
        if let Ok(rule) = controlplane::egress::Rule::parse(&text) {
            let again = controlplane::egress::Rule::parse(&rule.to_string());
            prop_assert_eq!(again.as_ref(), Ok(&rule));
        }
    }

    /// Platforms round-trip through `os/architecture[/variant]`.
    #[test]
    fn platforms_round_trip(text in "[a-z0-9]{1,10}/[a-z0-9_]{1,10}(/[a-z0-9]{1,4})?") {
        let p = controlplane::platform::Platform::parse(&text).unwrap();
        prop_assert_eq!(p.to_string(), text);
    }

    /// Approval statements round-trip, and one with a field changed is another statement.
    #[test]
    fn approval_statements_round_trip(env in "[a-z]{1,12}", service in "[a-z]{1,12}", hex in "[0-9a-f]{64}") {
        let s = controlplane::approval::Statement {
            plan_id: format!("sha256:{hex}"),
            environment: env,
            service,
            release_digest: format!("sha256:{hex}"),
            signed_at: "2026-12-01T00:00:00Z".into(),
            expires_at: "2026-12-02T00:00:00Z".into(),
        };
        let bytes = s.to_bytes();
        prop_assert_eq!(controlplane::approval::Statement::parse(&bytes), Ok(s.clone()));
        // Any other encoding of the same fields is not what was signed.
        prop_assert!(controlplane::approval::Statement::parse(&serde_json::to_vec_pretty(&s).unwrap()).is_err());
    }

    /// Saved plans: a field of the seed set to an arbitrary JSON value is read or refused
    /// (never a panic); what is read writes back to the same plan.
    #[test]
    fn plan_files_with_any_field_changed_round_trip(field in 0usize..16, value in prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        "(?s).{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([["prod-1"], []])),
        Just(serde_json::json!({"secs": 0, "interval_secs": u64::MAX, "every_batch": true})),
    ]) {
        let seed = std::fs::read(root().join("fuzz/seeds/plan_file/plan")).unwrap();
        let mut doc: serde_json::Value = serde_json::from_slice(&seed).unwrap();
        let plan = doc["plan"].as_object_mut().unwrap();
        let key = plan.keys().nth(field % plan.len()).unwrap().clone();
        plan.insert(key, value);
        let text = serde_json::to_string(&doc).unwrap();
        if let Ok(saved) = controlplane::deploy::read_saved(&text) {
            let again = controlplane::deploy::read_saved(&serde_json::to_string(&saved.plan_id).map(|id| format!("{{\"plan_id\":{id},\"plan\":{}}}", serde_json::to_string(&saved.plan).unwrap())).unwrap()).unwrap();
            prop_assert_eq!(again.plan, saved.plan);
        }
    }

    /// Receipts round-trip byte for byte through their canonical form.
    #[test]
    fn receipts_round_trip(seq in 1u64..1_000_000, outcome in "[a-z-]{1,12}", detail in proptest::option::of("(?s).{0,80}"), failed in 0usize..50) {
        use controlplane::receipt::{FailureBudget, Receipt, ReceiptBody, ReceiptKind, RolloutRecord};
        let body = ReceiptBody {
            kind: ReceiptKind::Apply,
            time: "2026-12-01T00:00:00Z".into(),
            operator: "alice".into(),
            plan_id: None,
            environment: Some("prod".into()),
            service: Some("api".into()),
            release: None,
            hosts: vec![],
            approvals: vec![],
            outcome,
            detail,
            rollout: (failed > 0).then(|| RolloutRecord { failures: Some(FailureBudget { failed, max: 1 }), batches: 4, ..RolloutRecord::default() }),
        };
        let r = Receipt { seq, previous: None, controlplane_version: "0.1.0".into(), body };
        let bytes = r.to_bytes();
        let back: Receipt = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    /// The example manifests with `[rollout]` values generated: valid, or refused with a
    /// diagnostic naming a `rollout.` field — never a panic.
    #[test]
    fn rollout_tables_are_validated_field_by_field(
        soak in proptest::option::of(-5i64..5000),
        interval in proptest::option::of(-5i64..5000),
        budget in proptest::option::of(prop_oneof![(-3i64..5).prop_map(|n| n.to_string()), (0u8..=120).prop_map(|p| format!("\"{p}%\""))]),
        pause in proptest::option::of(prop_oneof![(-2i64..5).prop_map(|n| n.to_string()), Just("\"canary\"".to_owned()), Just("\"x\"".to_owned())]),
    ) {
        let mut files: std::collections::BTreeMap<PathBuf, String> = controlplane::manifest::example::FILES.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect();
        let mut extra = String::new();
        for (k, v) in [("soak_secs", soak.map(|v| v.to_string())), ("soak_interval_secs", interval.map(|v| v.to_string())), ("max_failures", budget), ("pause_after", pause)] {
            if let Some(v) = v { extra.push_str(&format!("{k} = {v}\n")); }
        }
        let prod = files.get_mut(Path::new("environments/prod.toml")).unwrap();
        *prod = prod.replacen("health_timeout_secs = 30\n", &format!("health_timeout_secs = 30\n{extra}"), 1);
        if let Err(diags) = controlplane::manifest::validate(Path::new("m"), &files) {
            for d in diags {
                prop_assert!(d.field.starts_with("rollout."), "{d}");
            }
        }
    }
}

/// Files an operator or a pull request hands over are read with a bound: a plan file,
/// an approval file or a workflow over it is refused (exit 2) before it is read whole.
#[test]
fn oversized_files_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("plan.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(controlplane::bounded::MAX_PLAN_BYTES + 1).unwrap();
    let bin = env!("CARGO_BIN_EXE_agentctl");
    let out = std::process::Command::new(bin).arg("apply").arg(&big).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot read plan") && err.contains("is over 16777216 bytes"), "{err}");
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows).unwrap();
    let f = std::fs::File::create(flows.join("huge.yml")).unwrap();
    f.set_len(controlplane::bounded::MAX_WORKFLOW_BYTES + 1).unwrap();
    let out = std::process::Command::new(bin).args(["check", "--ci"]).arg(&flows).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is over 1048576 bytes"), "{err}");
}

/// The `approval` seed that `ssh-keygen -Y sign` made verifies through the target's path:
/// the target reaches the key matching, not only the parsers in front of it.
#[test]
fn the_approval_seed_signed_by_ssh_keygen_verifies() {
    let seed = std::fs::read(root().join("fuzz/seeds/approval/signed-by-ssh-keygen")).unwrap();
    let mut parts = seed.splitn(3, |b| *b == 0);
    let (statement, signers, signature) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    controlplane::approval::Statement::parse(statement).expect("a canonical statement");
    let signers = controlplane::approval::parse_allowed_signers(std::str::from_utf8(signers).unwrap()).unwrap();
    let who = controlplane::sshsig::verify(&signers, statement, std::str::from_utf8(signature).unwrap());
    assert_eq!(who.as_deref(), Ok("carol"));
}
