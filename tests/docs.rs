//! The security claims name their proof, and the proof exists: the tests and paths that
//! docs/SECURITY.md names in code spans — `file.rs::test`, bare test names of five words or
//! more, paths and snapshots — are looked up in the repository (a renamed or deleted test
//! makes this fail). A name is found by its `fn` in a file, not by compiling; module paths
//! (`a::b::test`) and shorter names are not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every tracked source file under the repository (no `target/`, no fixtures).
fn sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", ".git", "fixtures", "node_modules"].contains(&name.as_str()) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                let rel = p.strip_prefix(root()).unwrap().to_path_buf();
                out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out
}

fn defines(text: &str, name: &str) -> bool {
    text.contains(&format!("fn {name}(")) || text.contains(&format!("fn {name}<"))
}

/// The backticked words of `text`.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// A test name as the docs write one: snake case with at least five words (settings such
/// as `default_transaction_read_only` have fewer).
fn looks_like_a_test(s: &str) -> bool {
    s.len() > 12
        && s.matches('_').count() >= 4
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with('_')
}

#[test]
fn every_test_and_path_named_in_security_md_exists() {
    let doc = std::fs::read_to_string(root().join("docs/SECURITY.md")).unwrap();
    let files = sources();
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for span in code_spans(&doc) {
        let span = span.trim();
        if let Some((file, name)) = span.split_once("::").filter(|(f, _)| f.ends_with(".rs")) {
            // `path/file.rs::test` (or `file.rs::{a,b}::test`, one test per backend): a file
            // whose path ends so, defining the test.
            let name = name.rsplit("::").next().unwrap_or(name).trim_end_matches("()");
            let found = files.iter().any(|(p, t)| p.to_string_lossy().ends_with(file) && defines(t, name));
            checked += 1;
            if !found {
                missing.insert(format!("{span}: no file ending in `{file}` defines `fn {name}`"));
            }
        } else if looks_like_a_test(span) {
            checked += 1;
            if !files.iter().any(|(_, t)| defines(t, span)) {
                missing.insert(format!("{span}: no such function"));
            }
        } else if span.contains('/')
            && !span.contains(' ')
            && !span.contains("://")
            && [".rs", ".md", ".toml", ".sh", ".snap", ".sql"].iter().any(|x| span.ends_with(x))
        {
            checked += 1;
            if !root().join(span).exists() && !root().join("tests/snapshots").join(span).exists() {
                missing.insert(format!("{span}: no such path"));
            }
        } else if span.ends_with(".snap") {
            checked += 1;
            if !root().join("tests/snapshots").join(span).exists() {
                missing.insert(format!("{span}: no such snapshot"));
            }
        }
    }
    assert!(checked > 50, "the check found only {checked} references: is SECURITY.md still a table of tests?");
    assert!(
        missing.is_empty(),
        "docs/SECURITY.md names what does not exist:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
