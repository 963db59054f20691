//! `cargo xtask invariants`: the layering rules of docs/ARCHITECTURE.md, checked on the
//! source (run by `cargo xtask test`, so by CI):
//!
//! 1. the core has no effectful dependency (`cargo tree`: no tokio, sqlx, openssh, russh,
//!    HTTP or registry client);
//! 2. the core's code outside its tests reads no file, starts no process, opens no socket
//!    and reads no environment variable;
//! 3. the CLI neither writes the store nor appends a receipt (jobs do), but for the calls
//!    listed in [`CLI_WRITES_KNOWN`], which are still to move into jobs;
//! 4. every path docs/ARCHITECTURE.md names exists, and its `tests/` row names exactly the
//!    test targets there are;
//! 5. every parser of `controlplane::fuzzing` has its fuzz target file, `[[bin]]` and seeds.

use anyhow::bail;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do I/O: none may be in the core's dependency tree.
const EFFECTFUL_CRATES: &[&str] =
    &["tokio", "sqlx", "openssh", "russh", "reqwest", "hyper", "oci-client", "async-std", "mio", "tempfile"];

/// What the core's code may not call outside its tests (also when imported as
/// `use std::{fs, …}` or called as `env::var(`).
const EFFECTS: &[&str] =
    &["std::fs", "std::process", "std::net::Tcp", "std::net::Udp", "std::env::var", "env::var(", "tokio::"];

/// Store writes and receipt appends, as they read in the CLI's code.
const CLI_WRITES: &[&str] = &[
    ".append(",
    "fill_receipt(",
    "try_lock(",
    "renew_lock(",
    ".unlock(",
    "record_takeover(",
    "put_release(",
    "put_deployment(",
    "put_applied_release(",
    ".fenced(",
    "record_plan(",
    "force_unlock(",
    "append_history(",
    "append_receipt(",
    "put_rehearsal(",
    ".approve(",
];

/// The CLI's writes still to move into jobs (issue: "the CLI only parses, calls and
/// renders"): `(file, what, how many)`. One more fails the check; one that moved must
/// leave the list.
const CLI_WRITES_KNOWN: &[(&str, &str, usize)] = &[
    ("agentctl/src/commands/deploy.rs", ".append(", 1),
    ("agentctl/src/commands/deploy.rs", "force_unlock(", 1),
    ("agentctl/src/commands/prove.rs", ".append(", 2),
    ("agentctl/src/commands/watch.rs", ".append(", 1),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code outside its tests, one statement-ish line per line: test files are
/// skipped, a file's text ends at its `#[cfg(test)] mod` (the layout every file of this
/// project keeps), and a line that continues a method chain (`.call(` after rustfmt broke
/// it) is joined to the line before, so a receiver and its call are seen together.
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or_default();
        if line.trim() == "#[cfg(test)]" && (next.starts_with("mod ") || next.starts_with("pub mod ")) {
            break;
        }
        match (line.trim_start().starts_with('.'), out.last_mut()) {
            (true, Some(prev)) => prev.push_str(line.trim_start()),
            _ => out.push((*line).to_owned()),
        }
    }
    out.join("\n")
}

/// The effects one line of code names: a path of [`EFFECTS`], or an effectful module in a
/// grouped import (`use std::{fs, …}`).
fn effects_in(line: &str) -> Vec<String> {
    let mut found: Vec<String> = EFFECTS.iter().filter(|e| line.contains(*e)).map(|e| (*e).to_owned()).collect();
    if let Some(group) = line.split("use std::{").nth(1) {
        let names = group.split(['}', ';']).next().unwrap_or_default();
        for m in names.split(',').map(|m| m.trim().split("::").next().unwrap_or_default()) {
            if ["fs", "process", "net", "env"].contains(&m) {
                found.push(format!("std::{m}"));
            }
        }
    }
    found
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Every violation, one line each.
pub fn violations() -> anyhow::Result<Vec<String>> {
    let root = root();
    let mut out = Vec::new();

    // 1. The core's dependency tree.
    let tree = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["tree", "-p", "controlplane-core", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()?;
    if !tree.status.success() {
        bail!("cargo tree failed: {}", String::from_utf8_lossy(&tree.stderr));
    }
    for line in String::from_utf8_lossy(&tree.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if EFFECTFUL_CRATES.contains(&name) {
            out.push(format!("core depends on `{name}` (an effectful crate): {line}"));
        }
    }

    // 2. The core's code.
    let mut files = Vec::new();
    rust_files(&root.join("core/src"), &mut files);
    for f in &files {
        let code = non_test_code(f);
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for effect in effects_in(line) {
                out.push(format!("{}:{}: core uses `{effect}` outside its tests", relative(&root, f), n + 1));
            }
        }
    }

    // 3. The CLI's writes.
    let mut files = Vec::new();
    rust_files(&root.join("agentctl/src"), &mut files);
    let mut known_seen: Vec<(String, &str)> = Vec::new();
    for f in &files {
        let rel = relative(&root, f);
        let code = non_test_code(f);
        for (n, line) in code.lines().enumerate() {
            for w in CLI_WRITES.iter().filter(|w| line.contains(*w) && !line.trim_start().starts_with("//")) {
                // `Vec::append`-like calls on local values are not writes: only these receivers.
                let store_like = ["receipts(", "log.", "store", "ctx."].iter().any(|r| line.contains(r));
                if !store_like {
                    continue;
                }
                if CLI_WRITES_KNOWN.iter().any(|(f, what, _)| *f == rel && what == w) {
                    known_seen.push((rel.clone(), *w));
                    continue;
                }
                out.push(format!("{rel}:{}: the CLI writes the store or a receipt (`{w}`): move it into a job", n + 1));
            }
        }
    }
    for (file, what, count) in CLI_WRITES_KNOWN {
        let seen = known_seen.iter().filter(|(f, w)| f == file && w == what).count();
        if seen != *count {
            out.push(format!(
                "{file} calls `{what}` {seen} time(s), where CLI_WRITES_KNOWN (xtask/src/invariants.rs) allows {count}: move new writes into a job, and lower the count when one moved"
            ));
        }
    }

    // 4. docs/ARCHITECTURE.md.
    let arch = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))?;
    let manifest = std::fs::read_to_string(root.join("agentctl/Cargo.toml"))?;
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "agentctl")
        .collect();
    for span in arch.split('`').skip(1).step_by(2) {
        let looks_like_path =
            ["core/", "controlplane/", "agentctl/", "lab/", "xtask/", "tests/", "docs/", "fuzz/", "manifests/"]
                .iter()
                .any(|d| span.starts_with(d))
                && !span.contains(['*', ' ', '{', '<']);
        if looks_like_path && !root.join(span.split("::").next().unwrap_or(span)).exists() {
            out.push(format!("docs/ARCHITECTURE.md names `{span}`, which does not exist"));
        }
    }
    // 5. Every parser's fuzz target: a file, a `[[bin]]` and seeds for each, and nothing else.
    let fuzz_toml = std::fs::read_to_string(root.join("fuzz/Cargo.toml"))?;
    let bins: Vec<&str> = fuzz_toml
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "agentctl-fuzz")
        .collect();
    for t in controlplane::fuzzing::TARGETS {
        for (what, path) in
            [("target file", format!("fuzz/fuzz_targets/{}.rs", t.name)), ("seeds", format!("fuzz/seeds/{}", t.name))]
        {
            if !root.join(&path).exists() {
                out.push(format!("fuzz target `{}` has no {what} ({path})", t.name));
            }
        }
        if !bins.contains(&t.name) {
            out.push(format!("fuzz target `{}` is no [[bin]] of fuzz/Cargo.toml", t.name));
        }
    }
    for b in &bins {
        if controlplane::fuzzing::target(b).is_none() {
            out.push(format!("fuzz/Cargo.toml builds `{b}`, which is no target of controlplane::fuzzing"));
        }
    }

    if let Some(row) = arch.lines().find(|l| l.starts_with("| `tests/` |")) {
        let named: Vec<&str> = row
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && *s != "agentctl" && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        for n in &named {
            if !targets.contains(n) {
                out.push(format!("docs/ARCHITECTURE.md's tests row names `{n}`, which is no test target"));
            }
        }
        for t in &targets {
            if !named.contains(t) {
                out.push(format!("test target `{t}` is missing from docs/ARCHITECTURE.md's tests row"));
            }
        }
    } else {
        out.push("docs/ARCHITECTURE.md has no `tests/` row".into());
    }
    Ok(out)
}

/// Prints every violation; fails when there is one.
pub fn check() -> anyhow::Result<()> {
    let found = violations()?;
    for v in &found {
        eprintln!("invariant: {v}");
    }
    if !found.is_empty() {
        bail!("{} invariant(s) broken (docs/ARCHITECTURE.md says why each holds)", found.len());
    }
    eprintln!("invariants hold: core pure, CLI writes only where listed, ARCHITECTURE.md true to the tree");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_seen_however_they_are_written() {
        assert_eq!(effects_in("    let t = std::fs::read(p);"), ["std::fs"]);
        assert_eq!(effects_in("use std::{collections::BTreeMap, fs, io};"), ["std::fs"]);
        assert_eq!(effects_in("use std::{env, process::Command};"), ["std::env", "std::process"]);
        assert_eq!(effects_in("    let v = env::var(\"X\");"), ["env::var("]);
        assert!(effects_in("    RemoteCommand::new(&c.health[0], args)").is_empty());
        assert!(effects_in("use std::{collections::BTreeMap, fmt};").is_empty());
    }

    #[test]
    fn code_ends_at_the_test_module_and_chains_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.rs");
        let text = "#[cfg(test)]\nuse a::b;\nfn f() {\n    store\n        .put_deployment(&r)\n}\n#[cfg(test)]\nmod tests {\n    std::fs::read(x);\n}\n";
        std::fs::write(&f, text).unwrap();
        let code = non_test_code(&f);
        assert!(code.contains("use a::b;"), "a test-only import is not the test module: {code}");
        assert!(code.contains("store.put_deployment(&r)"), "{code}");
        assert!(!code.contains("std::fs"), "{code}");
    }
}
