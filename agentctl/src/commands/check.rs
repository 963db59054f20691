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
