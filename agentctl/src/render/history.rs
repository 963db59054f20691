//! The `history` table.

use controlplane::release_history::Step;

pub fn render(service: &str, env: &str, steps: &[Step]) -> String {
    if steps.is_empty() {
        return format!("no history of `{service}` in `{env}` is recorded");
    }
    let rows = steps.iter().map(|s| {
        let release = s.release.as_ref().map_or_else(|| "-".to_owned(), controlplane::release::ReleaseFacts::short);
        vec![
            s.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            s.host.clone(),
            s.kind.clone(),
            format!(
                "{}{}",
                if s.release_id.is_empty() { "-" } else { &s.release_id },
                if s.current { " *" } else { "" }
            ),
            release,
        ]
    });
    format!(
        "history of `{service}` in `{env}` (oldest first; * = what the host should run now)\n{}",
        super::table(&["time (UTC)", "host", "kind", "release", "image, commit"], rows)
    )
}
