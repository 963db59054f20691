//! CI hygiene of GitHub Actions workflows (seed 003: "read-only workflow permissions and
//! no untrusted event data interpolated into shell commands"), as a pure text check.
//!
//! Two findings, each with its line:
//! - an expression an attacker controls (`${{ github.event.… }}`, `${{ github.head_ref }}`,
//!   `${{ inputs.… }}`) inside a `run:` script, where the runner pastes it into the shell
//!   before the shell parses it (pass it through `env:` and quote the variable instead);
//! - a write permission (`write-all`, or `SCOPE: write`) without a stated need. A need is
//!   stated with a trailing comment `# needs: REASON` on that line; a workflow without any
//!   `permissions:` gets the repository's default token, which may write, and is flagged too.
//!
//! The scan is line-based over YAML's block structure (the form workflows are written in):
//! it knows block scalars (`run: |`) and indentation, which is all these rules need.

use serde::Serialize;

/// One problem in one workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// 1-based.
    pub line: usize,
    pub rule: &'static str,
    pub message: String,
}

const UNTRUSTED: &[&str] = &["github.event.", "github.head_ref", "inputs."];

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The column of a line's key: past a sequence dash (`- run:` keys sit two columns in).
fn key_column(line: &str) -> usize {
    let t = line.trim_start();
    indent(line)
        + match t.strip_prefix("- ") {
            Some(rest) => 2 + (rest.len() - rest.trim_start().len()),
            None => 0,
        }
}

/// The value after `key:` on a line like `  - key: value` or `key: value`, if the line is that key.
fn key_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
    t.strip_prefix(key)?.strip_prefix(':').map(str::trim)
}

/// Expressions `${{ … }}` on a line that read data an attacker controls.
fn untrusted_expressions(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else { break };
        let expr = after[..end].trim();
        if UNTRUSTED.iter().any(|u| {
            expr.split(|c: char| c.is_whitespace() || "(),|&!".contains(c))
                .any(|w| w.starts_with(u) || w == u.trim_end_matches('.'))
        }) {
            out.push(expr.to_owned());
        }
        rest = &after[end + 2..];
    }
    out
}

/// Checks one workflow's text.
pub fn check(text: &str) -> Vec<Finding> {
    let lines: Vec<&str> = text.lines().collect();
    let mut findings = Vec::new();
    let mut has_permissions = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let no_comment = line.split(" #").next().unwrap_or(line);
        if let Some(v) = key_value(no_comment, "run") {
            // The script: the inline value, or the block scalar's more-indented lines.
            let mut script: Vec<(usize, &str)> = vec![(i, v)];
            if v.starts_with('|') || v.starts_with('>') {
                let base = key_column(line);
                let mut j = i + 1;
                while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > base) {
                    script.push((j, lines[j]));
                    j += 1;
                }
                i = j - 1;
            }
            for (n, l) in script {
                for expr in untrusted_expressions(l) {
                    findings.push(Finding {
                        line: n + 1,
                        rule: "untrusted-input-in-run",
                        message: format!(
                            "`${{{{ {expr} }}}}` is pasted into a `run:` script: whoever controls it can run commands"
                        ),
                    });
                }
            }
        } else if let Some(v) = key_value(no_comment, "permissions") {
            has_permissions = true;
            let stated = |l: &str| l.contains("# needs:");
            if (v == "write-all") && !stated(line) {
                findings.push(write_finding(i, "write-all"));
            } else if v.is_empty() {
                let base = key_column(line);
                let mut j = i + 1;
                while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > base) {
                    let l = lines[j];
                    let body = l.split(" #").next().unwrap_or(l);
                    if let Some((scope, level)) = body.trim().split_once(':') {
                        if level.trim() == "write" && !stated(l) {
                            findings.push(write_finding(j, &format!("{}: write", scope.trim())));
                        }
                    }
                    j += 1;
                }
                i = j - 1;
            }
        }
        i += 1;
    }
    if !has_permissions && !text.trim().is_empty() {
        findings.push(Finding {
            line: 1,
            rule: "default-permissions",
            message: "no `permissions:` anywhere: the token gets the repository's default, which may write".into(),
        });
    }
    findings
}

fn write_finding(line: usize, what: &str) -> Finding {
    Finding {
        line: line + 1,
        rule: "undeclared-write",
        message: format!("`{what}` without a stated need (add `# needs: REASON` on the line, or make it `read`)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(usize, &'static str)> {
        check(text).into_iter().map(|f| (f.line, f.rule)).collect()
    }

    #[test]
    fn untrusted_expressions_in_run_scripts_are_found_with_their_lines() {
        let w = "permissions:\n  contents: read\njobs:\n  a:\n    steps:\n      - run: echo ${{ github.head_ref }}\n      - name: x\n        run: |\n          echo hi\n          echo \"${{ github.event.pull_request.title }}\"\n      - run: echo ${{ github.sha }}\n      - uses: x\n        with:\n          title: ${{ github.event.issue.title }}\n      - run: |\n          echo \"$T\"\n        env:\n          T: ${{ inputs.t }}\n";
        assert_eq!(rules(w), [(6, "untrusted-input-in-run"), (10, "untrusted-input-in-run")]);
    }

    #[test]
    fn writes_need_a_stated_need() {
        let w = "permissions:\n  contents: read\njobs:\n  a:\n    permissions:\n      contents: write\n      packages: write  # needs: publish the image\n  b:\n    permissions: write-all\n";
        assert_eq!(rules(w), [(6, "undeclared-write"), (9, "undeclared-write")]);
        assert_eq!(rules("on: push\njobs: {}\n"), [(1, "default-permissions")]);
        assert!(rules("permissions: read-all\n").is_empty());
    }
}
