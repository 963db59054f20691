//! A plan as people read it: a per-host diff, like `terraform plan`.

use controlplane::plan::{Action, Plan, PlanKind};

pub fn render(plan: &Plan) -> String {
    let (word, verb) = match plan.kind {
        PlanKind::Promote => ("promote", "promote"),
        PlanKind::Rollback => ("rollback", "roll back"),
    };
    let mut out = format!(
        "plan {} ({word})\n  {verb} `{}` in `{}` to release `{}`\n  image  {}\n  commit {}\n  signed by {}",
        plan.id(),
        plan.service,
        plan.environment,
        plan.release.release_id,
        plan.release.facts.image(),
        plan.release.facts.source_commit,
        plan.release.facts.signer_key_id,
    );
    if let Some(s) = &plan.release.facts.signature {
        out.push_str(&format!(" ({s})"));
    }
    if let Some(p) = &plan.release.facts.provenance {
        out.push_str(&format!("\n  provenance {p}"));
    }
    if let Some(s) = &plan.release.facts.sbom {
        out.push_str(&format!("\n  sbom {s}"));
    }
    if let Some(c) = &plan.release.facts.contents {
        out.push_str(&format!("\n  contents {c}"));
    }
    out.push('\n');
    for h in &plan.hosts {
        let before = h.before.as_ref().map(|r| r.as_str()).unwrap_or("(nothing)");
        // A live release the control plane never recorded is never a way back: say so.
        let unrecorded = if h.before != h.recorded {
            format!(" [unrecorded; recorded: {}]", h.recorded.as_ref().map(|r| r.as_str()).unwrap_or("nothing"))
        } else {
            String::new()
        };
        match h.action {
            Action::Change => out.push_str(&format!(
                "\n  ~ {:<12} {before}{unrecorded} -> {}   (rollback target: {})",
                h.host,
                h.after,
                h.rollback_target.as_ref().map(|r| r.as_str()).unwrap_or("(nothing)")
            )),
            Action::None => out.push_str(&format!("\n    {:<12} {} (already live, unchanged)", h.host, h.after)),
        }
    }
    out.push('\n');
    for (i, b) in plan.batches.iter().enumerate() {
        out.push_str(&format!(
            "\n  batch {} of {}{}: {}",
            i + 1,
            plan.batches.len(),
            if i == 0 { " (canary)" } else { "" },
            b.join(", ")
        ));
        if let Some(s) = plan.soak.filter(|s| i == 0 || s.every_batch) {
            out.push_str(&format!(
                "\n    then soak {}s: running, same container, no restart, healthy (a look every {}s)",
                s.secs, s.interval_secs
            ));
        }
        if plan.pause_after == Some(i + 1) {
            out.push_str(
                "\n    then PAUSE: the apply stops here until `agentctl resume PLAN.json` (or `agentctl rollback`)",
            );
        }
    }
    if let Some(max) = plan.max_failures {
        let then = match plan.on_budget_spent {
            Some(controlplane::manifest::OnBudgetSpent::Keep) => "the hosts that moved stay",
            _ => "the hosts that moved go back",
        };
        out.push_str(&format!(
            "\n  failure budget: {max} host(s) may fail (each rolled back); one more halts the rollout and {then}"
        ));
    }
    let changes = plan.hosts.iter().filter(|h| h.action == Action::Change).count();
    out.push_str(&format!("\n\n{changes} to change, {} unchanged.", plan.hosts.len() - changes));
    if plan.approvals_required > 0 {
        out.push_str(&format!(
            " Needs {} approval(s): save it with `--out PLAN.json`, then `agentctl approve PLAN.json --key KEY` by each approver.",
            plan.approvals_required
        ));
    }
    out
}
