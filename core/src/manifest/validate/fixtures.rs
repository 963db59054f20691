//! Manifest validation on small fixtures, each diagnostic written under the line it names
//! (as rust-analyzer's diagnostics tests do), independent of the example `manifests/`:
//!
//! ```text
//! //- environments/prod.toml
//! [rollout]
//! soak_secs = 60
//! #           ^^ rollout.soak_secs: not shorter than the lock's lease
//! ```
//!
//! A fixture is a minimal valid manifest set (`BASE`) with the files it names replaced. A
//! `# ^` line marks the line above it: the first caret's column is the diagnostic's column
//! (indent a key to put a caret under it), then the field, then a part of the message. Annotation lines are removed before validation;
//! the diagnostics must be exactly the ones marked.

use super::*;

/// A minimal valid manifest set: one environment with one host, one service.
const BASE: &str = r#"
//- controlplane.toml
[controlplane]
state = "sqlite:../state/cp.db"
receipts = "../receipts"
receipt_key = "../state/receipt.key"
receipt_public_key = "trust/receipts.pub"

[trust]
keys = ["trust/release.pub"]

[ssh]
identity = "../state/ssh/id_ed25519"
//- environments/prod.toml
approvals = 0

[rollout]
batch = 1
health_timeout_secs = 30

[[host]]
name = "prod-1"
address = "127.0.0.1"
port = 2201
user = "deploy"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyPBE+48fJQkNljcYR9YCLfLAvLxnzRrA76hds5xAWG"
root = "/srv/agents"

[[host]]
name = "prod-2"
address = "127.0.0.1"
port = 2202
user = "deploy"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyPBE+48fJQkNljcYR9YCLfLAvLxnzRrA76hds5xAWG"
root = "/srv/agents"
//- services/api.toml
image = "127.0.0.1:5000/demo/api"
activate = ["/usr/local/bin/agent-runtime", "activate"]
health = ["/usr/local/bin/agent-runtime", "health"]
probe = ["/usr/local/bin/agent-runtime", "probe"]
"#;

/// `environments/prod.toml` of `BASE` with `rollout` as its `[rollout]` table (annotations
/// allowed): the two hosts stay as they are.
fn prod(rollout: &str) -> String {
    let base = sections(BASE).into_iter().find(|(p, _)| p == "environments/prod.toml").expect("prod").1;
    let hosts = &base[base.find("[[host]]").expect("hosts")..];
    format!("//- environments/prod.toml\napprovals = 0\n\n[rollout]\n{}\n{hosts}", rollout.trim_matches('\n'))
}

/// One expected diagnostic: file, line, column (1-based), field, part of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    file: String,
    line: usize,
    column: usize,
    field: String,
    message: String,
}

/// Splits `//- PATH` sections into files.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("//- ") {
            Some(path) => out.push((path.trim().to_owned(), String::new())),
            None => {
                if let Some((_, body)) = out.last_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    out
}

/// A file's text without its annotations, and what they expect.
fn annotations(path: &str, body: &str) -> (String, Vec<Expected>) {
    let (mut text, mut expected, mut line) = (String::new(), Vec::new(), 0);
    for l in body.lines() {
        let marked = l.trim_start().strip_prefix('#').is_some_and(|r| r.trim_start().starts_with('^'));
        let Some(caret) = l.find('^').filter(|_| marked) else {
            text.push_str(l);
            text.push('\n');
            line += 1;
            continue;
        };
        let rest = l[caret..].trim_start_matches('^').trim();
        let (field, message) = rest.split_once(": ").unwrap_or((rest, ""));
        expected.push(Expected {
            file: path.to_owned(),
            line,
            column: caret + 1,
            field: field.to_owned(),
            message: message.to_owned(),
        });
    }
    (text, expected)
}

/// `BASE` with the files of `fixture` in place (annotations removed), and what they expect.
fn files_of(fixture: &str) -> (BTreeMap<PathBuf, String>, Vec<Expected>) {
    let mut files: BTreeMap<PathBuf, String> = sections(BASE).into_iter().map(|(p, t)| (PathBuf::from(p), t)).collect();
    for key in ["trust/release.pub", "trust/receipts.pub"] {
        let text = crate::manifest::example::FILES.iter().find(|(p, _)| *p == key).expect("a key").1;
        files.insert(PathBuf::from(key), text.to_owned());
    }
    let mut expected = Vec::new();
    for (path, body) in sections(fixture) {
        let (text, exp) = annotations(&path, &body);
        files.insert(PathBuf::from(&path), text);
        expected.extend(exp);
    }
    (files, expected)
}

/// Validates `BASE` with the files of `fixture` in place, and checks the diagnostics are
/// exactly the annotated ones.
#[track_caller]
fn check(fixture: &str) {
    let (files, expected) = files_of(fixture);
    let got = validate(Path::new("m"), &files).err().unwrap_or_default();
    let shown = |d: &Diagnostic| {
        format!(
            "{}:{}:{} {}: {}",
            d.file.strip_prefix("m").unwrap_or(&d.file).display(),
            d.line,
            d.column,
            d.field,
            d.message
        )
    };
    let mut unmatched: Vec<&Diagnostic> = got.iter().collect();
    for e in &expected {
        let at = unmatched.iter().position(|d| {
            d.file == Path::new("m").join(&e.file)
                && (d.line, d.column) == (e.line, e.column)
                && d.field == e.field
                && d.message.contains(&e.message)
        });
        match at {
            Some(i) => {
                unmatched.remove(i);
            }
            None => panic!(
                "expected `{}:{}:{} {}: {}`, got:\n{}",
                e.file,
                e.line,
                e.column,
                e.field,
                e.message,
                got.iter().map(shown).collect::<Vec<_>>().join("\n")
            ),
        }
    }
    assert!(unmatched.is_empty(), "unexpected:\n{}", unmatched.into_iter().map(shown).collect::<Vec<_>>().join("\n"));
}

#[test]
fn the_base_set_is_valid() {
    check("");
}

/// The checker itself: a diagnostic marked at another column, or one not marked at all,
/// fails the test.
#[test]
fn a_wrong_or_missing_mark_fails() {
    let wrong = "//- environments/prod.toml\napprovals = 0\n[rollout]\nbatch = 0\n#      ^ rollout.batch: expected\n";
    assert!(std::panic::catch_unwind(|| check(wrong)).is_err(), "a mark one column off");
    let missing = "//- environments/prod.toml\napprovals = 0\n[rollout]\nbatch = 0\n";
    assert!(std::panic::catch_unwind(|| check(missing)).is_err(), "an unmarked diagnostic");
}

/// The canary's fields, valid, as the model holds them.
#[test]
fn canary_fields_reach_the_model() {
    let (files, _) = files_of(&prod(
        r#"
batch = 1
soak_secs = 30
max_failures = "50%"
pause_after = "canary"
"#,
    ));
    let set = validate(Path::new("m"), &files).unwrap_or_else(|d| panic!("{d:#?}"));
    let r = set.environments[0].rollout;
    assert_eq!(r.soak, Some(Soak { secs: 30, interval_secs: 5, every_batch: false }));
    assert_eq!((r.max_failures.map(|b| b.budget(2)), r.pause_after), (Some(1), Some(1)));
    assert_eq!(r.on_budget_spent, OnBudgetSpent::RollBack);
}

#[test]
fn a_soak_must_be_shorter_than_the_lease_and_checked_within_it() {
    check(&prod(
        r#"
batch = 1
soak_secs = 60
#           ^^ rollout.soak_secs: not shorter than the lock's lease (60s)
soak_interval_secs = 5
soak = "always"
#      ^^^^^^^^ rollout.soak: not `canary` or `every-batch`
"#,
    ));
}

#[test]
fn a_budget_below_the_hosts_and_a_pause_before_the_last_batch() {
    check(&prod(
        r#"
batch = 1
max_failures = 2
#              ^ rollout.max_failures: not below the environment's 2 host(s)
pause_after = 2
#             ^ rollout.pause_after: not before the last of the environment's 2 batch(es)
on_budget_spent = "ignore"
#                 ^^^^^^^^ rollout.on_budget_spent: not `roll-back` or `keep`
"#,
    ));
}

#[test]
fn hosts_are_named_at_their_fields() {
    check(
        r#"
//- environments/prod.toml
approvals = 0

[rollout]
batch = 0
#       ^ rollout.batch: expected a host count of at least 1

[[host]]
name = "prod-1"
address = "127.0.0.1"
port = 2201
user = "deploy"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyPBE+48fJQkNljcYR9YCLfLAvLxnzRrA76hds5xAWG"
root = "/srv/agents"

[[host]]
name = "prod-1"
#      ^^^^^^^^ host[1].name: duplicate host `prod-1`
address = "127.0.0.2"
port = 2202
user = "deploy"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyPBE+48fJQkNljcYR9YCLfLAvLxnzRrA76hds5xAWG"
root = "/srv/agents"

[[host]]
name = "prod-3"
address = "not an address!"
#         ^^^^^^^^^^^^^^^^^ host[2].address: is not an IP address or host name
port = 2203
user = "deploy"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyPBE+48fJQkNljcYR9YCLfLAvLxnzRrA76hds5xAWG"
root = "/srv/agents"
"#,
    );
}

/// A file with an unknown field is reported for it alone (its other fields wait for the
/// next run: one cause, one message).
#[test]
fn unknown_fields_are_named_and_stop_their_file() {
    check(
        r#"
//- services/api.toml
image = "127.0.0.1:5000/demo/api:v2"
activate = ["/usr/local/bin/agent-runtime", "activate"]
health = ["/usr/local/bin/agent-runtime", "health"]
probe = ["/usr/local/bin/agent-runtime", "probe"]
  egres = ["api.example.com:443"]
# ^ egres: unknown field `egres`, expected one of
"#,
    );
}

#[test]
fn a_tagged_image_is_refused() {
    check(
        r#"
//- services/api.toml
image = "127.0.0.1:5000/demo/api:v2"
#       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^ image: carries a tag or digest
activate = ["/usr/local/bin/agent-runtime", "activate"]
health = ["/usr/local/bin/agent-runtime", "health"]
probe = ["/usr/local/bin/agent-runtime", "probe"]
"#,
    );
}
