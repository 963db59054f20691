//! The `status` table and its summary.

use controlplane::status::{HeldRollout, Row};

/// The table, its summary, and a line per paused or halted rollout.
pub fn render(rows: &[Row], held: &[HeldRollout]) -> String {
    let table = super::table(
        &["ENV", "SERVICE", "HOST", "STATUS", "LIVE", "DETAIL"],
        rows.iter().map(|r| {
            vec![
                r.environment.clone(),
                r.service.clone(),
                r.host.clone(),
                r.status.label().to_owned(),
                match (&r.live, &r.recorded_release) {
                    // The one name of what runs, where it is the recorded release.
                    (Some(live), Some(name)) if r.recorded.as_ref() == Some(live) => format!("{live} ({name})"),
                    (Some(live), _) => live.clone(),
                    (None, _) => "-".into(),
                },
                r.status.detail(),
            ]
        }),
    );
    let count = |l: &str| rows.iter().filter(|r| r.status.label() == l).count();
    // Egress drift exists only where an environment enforces egress: counted when present.
    let egress = match count("egress") {
        0 => String::new(),
        n => format!(", {n} egress"),
    };
    let held: String = held
        .iter()
        .map(|h| {
            format!("\nrollout of `{}` in `{}` {}: {}", h.service, h.environment, h.state.to_uppercase(), h.detail)
        })
        .collect();
    format!(
        "{table}\n{} probed: {} in sync, {} drifted, {} missing, {} tampered, {} unreachable, {} not deployed{egress}{held}",
        rows.len(),
        count("in-sync"),
        count("drifted"),
        count("missing"),
        count("tampered"),
        count("unreachable"),
        count("not-deployed")
    )
}
