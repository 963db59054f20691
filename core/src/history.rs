//! The way back, derived from what was recorded — never from what a host says is live.
//!
//! Each (environment, service, host) has a history of the releases it came to run. Read
//! as a stack: a promotion pushes its release; a rollback to a release pops back down to
//! it (or pushes it, when it was not on the stack). The top is what the control plane
//! believes is live; the entry below it is where `rollback` goes. A release that is live
//! on a host but not on its stack (an apply killed mid-host, a hand edit) is never a way
//! back.

use crate::records::HistoryEntry;

/// The stack of one host's history (`entries` in order, all of the same host).
///
/// Consecutive entries of one release collapse into one (re-promoting what runs, to
/// repair it, is not a step the way back walks through), so the entry below the top is
/// always a *different* release.
pub fn stack(entries: &[HistoryEntry]) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    for e in entries {
        match e.kind.as_str() {
            "rollback" => match stack.iter().rposition(|r| *r == e.release_id) {
                Some(i) => stack.truncate(i + 1),
                None => stack.push(e.release_id.clone()),
            },
            // The host was re-imaged or replaced: nothing before this is its way back.
            "forget" => stack.clear(),
            _ if stack.last() == Some(&e.release_id) => {}
            _ => stack.push(e.release_id.clone()),
        }
    }
    stack
}

/// What the host should be running, as recorded.
pub fn current(stack: &[String]) -> Option<&str> {
    stack.last().map(String::as_str)
}

/// One step back from the current release.
pub fn back(stack: &[String]) -> Option<&str> {
    stack.len().checked_sub(2).map(|i| stack[i].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(&str, &str)]) -> Vec<String> {
        let entries: Vec<HistoryEntry> = entries
            .iter()
            .enumerate()
            .map(|(i, (kind, id))| HistoryEntry {
                environment: "prod".into(),
                service: "api".into(),
                host: "vm-1".into(),
                seq: i as i64,
                release_id: (*id).into(),
                kind: (*kind).into(),
                plan_id: "p".into(),
                at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            })
            .collect();
        stack(&entries)
    }

    #[test]
    fn rollback_walks_back_one_release_at_a_time() {
        let promoted = [("promote", "v1"), ("promote", "v2"), ("promote", "v3")];
        let s = h(&promoted);
        assert_eq!((current(&s), back(&s)), (Some("v3"), Some("v2")));
        // Regression: a second rollback flipped forward to the release just rolled away from.
        let s = h(&[promoted.as_slice(), &[("rollback", "v2")]].concat());
        assert_eq!((current(&s), back(&s)), (Some("v2"), Some("v1")));
        let s = h(&[promoted.as_slice(), &[("rollback", "v2"), ("rollback", "v1")]].concat());
        assert_eq!((current(&s), back(&s)), (Some("v1"), None));
    }

    #[test]
    fn promoting_again_or_rolling_back_to_an_old_release_is_recorded_as_such() {
        let s = h(&[("promote", "v1"), ("promote", "v2"), ("promote", "v1")]);
        assert_eq!(back(&s), Some("v2"));
        let s = h(&[("promote", "v2"), ("rollback", "v1")]);
        assert_eq!((current(&s), back(&s)), (Some("v1"), Some("v2")));
        assert_eq!(back(&h(&[])), None);
    }

    /// Regression (the rollback loop): v1, v2, then v2 again to repair drift made `back`
    /// v2 itself, so every rollback planned "nothing to do" and recorded a success.
    #[test]
    fn re_promoting_what_runs_keeps_the_way_back_on_the_release_before() {
        let s = h(&[("promote", "v1"), ("promote", "v2"), ("promote", "v2"), ("adopt", "v2")]);
        assert_eq!((current(&s), back(&s)), (Some("v2"), Some("v1")));
        assert_eq!(s, ["v1", "v2"]);
    }

    #[test]
    fn a_forgotten_host_starts_over_and_an_adopted_release_is_its_way_back() {
        let s = h(&[("promote", "v1"), ("promote", "v2"), ("forget", "")]);
        assert_eq!((current(&s), back(&s)), (None, None));
        let s = h(&[("promote", "v1"), ("forget", ""), ("adopt", "v0"), ("promote", "v3")]);
        assert_eq!((current(&s), back(&s)), (Some("v3"), Some("v0")));
    }
}
