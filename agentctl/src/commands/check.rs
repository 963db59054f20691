//! `agentctl check`: validate the manifest set and report every problem.

use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::manifest::{self, ManifestError};

pub fn run(g: &Globals) -> Result<Report, Failure> {
    let loaded = manifest::load(&g.manifests).and_then(|set| {
        // What apply would open: missing keys are found now, not as "host rejected our key".
        let missing = manifest::check_files(&set);
        if missing.is_empty() {
            Ok(set)
        } else {
            Err(ManifestError::Invalid { dir: g.manifests.clone(), diagnostics: missing })
        }
    });
    match loaded {
        Ok(set) => {
            let hosts: usize = set.environments.iter().map(|e| e.hosts.len()).sum();
            let envs: Vec<_> = set.environments.iter().map(|e| e.name.to_string()).collect();
            let text = format!(
                "ok: `{}` is valid: {} environment(s) ({}), {} host(s), {} service(s), {} trusted key(s)",
                g.manifests.display(),
                envs.len(),
                envs.join(" -> "),
                hosts,
                set.services.len(),
                set.trust.keys.len()
            );
            let json = serde_json::json!({
                "ok": true,
                "environments": envs,
                "hosts": hosts,
                "services": set.services.keys().collect::<Vec<_>>(),
                "diagnostics": [],
            });
            Ok(Report::new(text, json))
        }
        Err(ManifestError::Invalid { dir, diagnostics }) => {
            let listing: Vec<String> = diagnostics.iter().map(|d| format!("{d}")).collect();
            let error = anyhow::anyhow!(
                "{} problem(s) in manifest set `{}`:\n{}",
                diagnostics.len(),
                dir.display(),
                listing.join("\n")
            );
            let mut failure =
                Failure::new(Code::Invalid, error).hint("fix the fields named above; nothing was changed");
            if g.json {
                failure = failure.with_output(serde_json::to_string_pretty(
                    &serde_json::json!({ "ok": false, "diagnostics": diagnostics }),
                )?);
            }
            Err(failure)
        }
        Err(e @ ManifestError::Io { .. }) => Err(Failure::new(Code::Invalid, e)
            .hint("point `--manifests` at a manifest directory, or create one with `agentctl init`")),
    }
}

/// `check --ci DIR`: every workflow file, every finding with its file and line.
pub fn ci(dir: &std::path::Path) -> Result<Report, Failure> {
    let (root, files) = controlplane::workflow_files::read(dir).map_err(|e| {
        Failure::new(Code::Invalid, e)
            .hint("give a repository (with `.github/workflows/`) or a directory of workflow files")
    })?;
    let mut lines = Vec::new();
    let mut all = Vec::new();
    for f in &files {
        // A file name is the workflow author's text too: sanitized like the rest.
        let name = controlplane::untrusted::HostText::new(&f.path.display().to_string());
        for finding in controlplane::workflow::check(&f.text) {
            lines.push(format!(
                "{name}:{}:{}: {}: {}\n  fix: {}",
                finding.line, finding.column, finding.rule, finding.message, finding.fix
            ));
            all.push(serde_json::json!({
                "file": name,
                "line": finding.line,
                "column": finding.column,
                "rule": finding.rule,
                "message": finding.message,
                "fix": finding.fix,
            }));
        }
    }
    if all.is_empty() {
        return Ok(Report::new(
            format!(
                "ok: {} workflow(s) in `{}`: no untrusted input in scripts, no undeclared writes, actions pinned, no persisted checkout credentials, no untrusted checkout",
                files.len(),
                root.display()
            ),
            serde_json::json!({ "ok": true, "workflows": files.len(), "findings": [] }),
        ));
    }
    Err(Failure::new(
        Code::Invalid,
        anyhow::anyhow!("{} problem(s) in the workflows of `{}`:\n{}", all.len(), root.display(), lines.join("\n")),
    )
    .with_json(serde_json::json!({ "ok": false, "workflows": files.len(), "findings": all }))
    .hint("each finding names its fix; the rules are in docs/MANIFESTS.md (`check --ci`)"))
}
