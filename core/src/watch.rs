//! The continuous drift watch, as pure decisions: which change of state is an event, how
//! long to wait (with jitter) and back off, and how a webhook body is signed.

use crate::drift::Status;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::collections::BTreeMap;

/// One watched (environment, service, host).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub environment: String,
    pub service: String,
    pub host: String,
}

/// A change of state: one JSON line on stdout, one webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(flatten)]
    pub target: Target,
    /// The previous state's label (`unknown` at start).
    pub from: String,
    pub to: String,
    pub detail: String,
}

impl Event {
    /// The `drift` receipt that records this event in the chain.
    pub fn receipt(&self, operator: &str) -> crate::receipt::ReceiptBody {
        use crate::receipt::{HostOutcome, ReceiptBody, ReceiptKind};
        ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Drift,
            time: self.time.clone(),
            operator: operator.to_owned(),
            plan_id: None,
            environment: Some(self.target.environment.clone()),
            service: Some(self.target.service.clone()),
            release: None,
            hosts: vec![HostOutcome {
                host: self.target.host.clone(),
                before: None,
                after: None,
                rollback_target: None,
                outcome: self.to.clone(),
                detail: Some(crate::untrusted::HostText::new(&self.detail)),
            }],
            approvals: vec![],
            outcome: "recorded".into(),
            detail: Some(format!("{} -> {}", self.from, self.to)),
        }
    }
}

/// The last state of every target.
#[derive(Debug, Default)]
pub struct Tracker {
    last: BTreeMap<Target, Status>,
}

impl Tracker {
    /// Records `status`; the event, if it is a change.
    pub fn update(&mut self, target: &Target, status: Status, now: &str) -> Option<Event> {
        let previous = self.last.insert(target.clone(), status.clone());
        if previous.as_ref() == Some(&status) {
            return None;
        }
        Some(Event {
            time: now.to_owned(),
            target: target.clone(),
            from: previous.map_or_else(|| "unknown".to_owned(), |p| p.label().to_owned()),
            to: status.label().to_owned(),
            detail: status.detail(),
        })
    }
}

/// `interval_ms` ± 10 %, spread by `seed` (a host's index), so probes of many hosts do not
/// all start at once.
pub fn jittered(interval_ms: u64, seed: u64, round: u64) -> u64 {
    let spread = interval_ms / 10;
    if spread == 0 {
        return interval_ms;
    }
    // A small deterministic mix of host and round (splitmix64's finalizer).
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(round);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    interval_ms - spread + z % (2 * spread + 1)
}

/// Wait before reconnect attempt `attempt` (0-based): doubling from `base_ms`, capped.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    base_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms)
}

/// The webhook signature header value: `sha256=` HMAC-SHA256 of `TIMESTAMP.BODY` under
/// the secret. Receivers recompute it and refuse a timestamp they saw or that is too old.
pub fn sign_webhook(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Target {
        Target { environment: "prod".into(), service: "api".into(), host: "vm-1".into() }
    }

    #[test]
    fn only_changes_are_events() {
        let mut tr = Tracker::default();
        let e = tr.update(&t(), Status::InSync, "t0").unwrap();
        assert_eq!((e.from.as_str(), e.to.as_str()), ("unknown", "in-sync"));
        assert_eq!(tr.update(&t(), Status::InSync, "t1"), None);
        let down = Status::Unreachable { reason: "refused".into(), security: false };
        let e = tr.update(&t(), down.clone(), "t2").unwrap();
        assert_eq!((e.from.as_str(), e.to.as_str(), e.detail.as_str()), ("in-sync", "unreachable", "refused"));
        assert_eq!(tr.update(&t(), down, "t3"), None);
    }

    #[test]
    fn jitter_and_backoff_stay_in_bounds() {
        let all: Vec<u64> = (0..200).map(|h| jittered(1000, h, 7)).collect();
        assert!(all.iter().all(|&v| (900..=1100).contains(&v)), "{all:?}");
        assert!(all.iter().collect::<std::collections::BTreeSet<_>>().len() > 50, "spread out");
        assert_eq!([0, 1, 2, 10].map(|a| backoff(a, 500, 30_000)), [500, 1000, 2000, 30_000]);
    }

    #[test]
    fn webhook_signatures_cover_time_and_body() {
        let a = sign_webhook(b"s3cret", 1_790_000_000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, sign_webhook(b"s3cret", 1_790_000_001, b"{}"));
        assert_ne!(a, sign_webhook(b"s3cret", 1_790_000_000, b"{ }"));
        assert_ne!(a, sign_webhook(b"other", 1_790_000_000, b"{}"));
    }
}
