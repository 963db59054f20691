//! `[rollout]` of an environment: batches, the health timeout, and the canary's proof —
//! soak, failure budget and pause point (docs/MANIFESTS.md).

use super::{At, Validator};
use crate::manifest::model::*;
use crate::manifest::raw::{self, S};

/// Seconds between two checks of a soaking workload, when not given.
pub const DEFAULT_SOAK_INTERVAL_SECS: i64 = 5;
/// The longest soak (an hour: the longest lock lease).
pub const MAX_SOAK_SECS: i64 = 3_600;

impl Validator<'_> {
    /// `[rollout]`, checked against the environment's `hosts` count and the lock's lease.
    pub(super) fn rollout(&mut self, at: &At<'_>, r: &S<raw::Rollout>, hosts: usize) -> Option<Rollout> {
        let r = r.get_ref();
        let batch = match r.batch.get_ref() {
            raw::BatchValue::Count(n) if *n >= 1 => Some(BatchSize::Count(*n as usize)),
            raw::BatchValue::Text(t) => percent(t).filter(|p| *p >= 1).map(BatchSize::Percent),
            raw::BatchValue::Count(_) => None,
        };
        if batch.is_none() {
            self.err(
                at,
                &r.batch,
                "rollout.batch",
                "expected a host count of at least 1 or a percentage from 1% to 100%".into(),
                Some("write `batch = 2` or `batch = \"34%\"`"),
            );
        }
        let timeout = self.ranged(at, r.health_timeout_secs.as_ref(), "rollout.health_timeout_secs", 1, 3600, 30);
        let mut rollout = Rollout::plain(batch?, timeout as u64);
        rollout.soak = self.soak(at, r);
        rollout.max_failures = self.budget(at, r, hosts);
        rollout.on_budget_spent = match r.on_budget_spent.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "roll-back")) => OnBudgetSpent::RollBack,
            Some((_, "keep")) => OnBudgetSpent::Keep,
            Some((v, other)) => {
                self.err(
                    at,
                    v,
                    "rollout.on_budget_spent",
                    format!("`{}` is not `roll-back` or `keep`", other.escape_debug()),
                    Some(
                        "`roll-back` (the default) returns the hosts that moved; `keep` leaves them on the new release",
                    ),
                );
                OnBudgetSpent::RollBack
            }
        };
        if let (Some(v), None) = (&r.on_budget_spent, &r.max_failures) {
            self.err(
                at,
                v,
                "rollout.on_budget_spent",
                "there is no failure budget to spend".into(),
                Some("set `max_failures` (a host count or a percentage of the hosts) too"),
            );
        }
        rollout.pause_after = self.pause_after(at, r, rollout.batch.batches(hosts));
        Some(rollout)
    }

    fn soak(&mut self, at: &At<'_>, r: &raw::Rollout) -> Option<Soak> {
        let Some(secs) = &r.soak_secs else {
            for (field, v) in [
                ("rollout.soak_interval_secs", r.soak_interval_secs.as_ref().map(S::span)),
                ("rollout.soak", r.soak.as_ref().map(S::span)),
            ] {
                if let Some(span) = v {
                    let loc = at.index.locate(span.start);
                    self.push(
                        at.file,
                        loc,
                        field,
                        "there is no soak to configure".into(),
                        Some("set `soak_secs` too (how long the canary runs under watch)".into()),
                    );
                }
            }
            return None;
        };
        let soak = self.ranged(at, Some(secs), "rollout.soak_secs", 1, MAX_SOAK_SECS, 0);
        if soak == 0 {
            return None;
        }
        if let Some(lease) = self.lease.filter(|l| soak as u64 >= *l) {
            self.err(
                at,
                secs,
                "rollout.soak_secs",
                format!("a soak of {soak}s is not shorter than the lock's lease ({lease}s)"),
                Some("shorten the soak, or raise `lock_lease_secs` in controlplane.toml above it"),
            );
        }
        let interval = self.ranged(
            at,
            r.soak_interval_secs.as_ref(),
            "rollout.soak_interval_secs",
            1,
            3600,
            DEFAULT_SOAK_INTERVAL_SECS.min(soak),
        );
        if let Some(v) = r.soak_interval_secs.as_ref().filter(|_| interval > soak) {
            self.err(
                at,
                v,
                "rollout.soak_interval_secs",
                format!("an interval of {interval}s is longer than the soak ({soak}s): nothing would be checked"),
                Some("check at least once during the soak"),
            );
        }
        let every_batch = match r.soak.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "canary")) => false,
            Some((_, "every-batch")) => true,
            Some((v, other)) => {
                self.err(
                    at,
                    v,
                    "rollout.soak",
                    format!("`{}` is not `canary` or `every-batch`", other.escape_debug()),
                    Some("`canary` (the default) soaks the first batch; `every-batch` soaks each"),
                );
                false
            }
        };
        Some(Soak { secs: soak as u64, interval_secs: interval as u64, every_batch })
    }

    fn budget(&mut self, at: &At<'_>, r: &raw::Rollout, hosts: usize) -> Option<BatchSize> {
        let v = r.max_failures.as_ref()?;
        let hint =
            Some("write a host count, `max_failures = 1`, or a percentage of the hosts, `max_failures = \"10%\"`");
        let budget = match v.get_ref() {
            raw::BatchValue::Count(n) if *n < 0 => None,
            raw::BatchValue::Count(n) if *n as u64 >= hosts as u64 && hosts > 0 => {
                self.err(
                    at,
                    v,
                    "rollout.max_failures",
                    format!("a budget of {n} failed host(s) is not below the environment's {hosts} host(s): the rollout could never halt"),
                    Some("allow fewer failures than there are hosts"),
                );
                return None;
            }
            raw::BatchValue::Count(n) => Some(BatchSize::Count(*n as usize)),
            raw::BatchValue::Text(t) => match percent(t) {
                Some(100) => {
                    self.err(
                        at,
                        v,
                        "rollout.max_failures",
                        "a budget of 100% of the hosts could never be spent".into(),
                        Some("allow fewer than all hosts to fail, e.g. `\"10%\"`"),
                    );
                    return None;
                }
                p => p.map(BatchSize::Percent),
            },
        };
        if budget.is_none() {
            self.err(
                at,
                v,
                "rollout.max_failures",
                "expected a host count of 0 or more, or a percentage from 0% to 99%".into(),
                hint,
            );
        }
        budget
    }

    fn pause_after(&mut self, at: &At<'_>, r: &raw::Rollout, batches: usize) -> Option<usize> {
        let v = r.pause_after.as_ref()?;
        let n = match v.get_ref() {
            raw::BatchValue::Text(t) if t == "canary" => 1,
            raw::BatchValue::Count(n) if *n >= 1 => *n as usize,
            _ => {
                self.err(
                    at,
                    v,
                    "rollout.pause_after",
                    "expected `\"canary\"` or a batch number of 1 or more".into(),
                    Some("write `pause_after = \"canary\"` or `pause_after = 2`"),
                );
                return None;
            }
        };
        if batches > 0 && n >= batches {
            self.err(
                at,
                v,
                "rollout.pause_after",
                format!("batch {n} is not before the last of the environment's {batches} batch(es): nothing would follow the pause"),
                Some(&format!("pause after a batch from 1 (the canary) to {}, or make batches smaller", batches.saturating_sub(1).max(1))),
            );
            return None;
        }
        Some(n)
    }
}

/// `"N%"` with N from 0 to 100.
fn percent(t: &str) -> Option<u8> {
    t.strip_suffix('%').and_then(|p| p.parse::<u8>().ok()).filter(|p| *p <= 100)
}
