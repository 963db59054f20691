//! What an apply did, host by host.

use controlplane::deploy::ApplyReport;

pub fn render(report: &ApplyReport) -> String {
    let verdict = match report.outcome {
        controlplane::rollout::Outcome::Succeeded => "applied",
        controlplane::rollout::Outcome::Failed => "FAILED",
        controlplane::rollout::Outcome::Interrupted => "INTERRUPTED",
        controlplane::rollout::Outcome::Paused => "paused",
        controlplane::rollout::Outcome::Halted => "HALTED",
    };
    let table = super::table(
        &["HOST", "OUTCOME", "BEFORE", "AFTER", "DETAIL"],
        report.hosts.iter().map(|h| {
            vec![
                h.host.clone(),
                h.outcome.clone(),
                h.before.clone().unwrap_or_else(|| "(nothing)".into()),
                h.after.clone().unwrap_or_else(|| "(nothing)".into()),
                h.detail.as_ref().map(ToString::to_string).unwrap_or_default(),
            ]
        }),
    );
    let next = match (report.outcome, &report.failure) {
        (controlplane::rollout::Outcome::Paused, Some(why)) => format!("\n{why}"),
        _ => String::new(),
    };
    format!("plan {}: {verdict}\n{table}\nreceipt {}{next}", report.plan_id, report.receipt)
}
