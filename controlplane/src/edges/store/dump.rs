//! Every row of a state store, table by table: what `state migrate` copies and how it
//! proves afterwards that nothing was lost.

use super::*;

/// A plan id applied once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPlan {
    pub plan_id: String,
    pub applied_at: chrono::DateTime<chrono::Utc>,
}

/// A rehearsal of `digest` of `service` in `environment`, proven by `receipt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehearsal {
    pub environment: String,
    pub service: String,
    pub digest: String,
    pub receipt: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The whole state, each table in its primary-key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDump {
    pub releases: Vec<ReleaseRecord>,
    pub deployments: Vec<DeploymentRecord>,
    pub applied_releases: Vec<AppliedRelease>,
    pub receipts: Vec<StoredReceipt>,
    pub locks: Vec<LockRecord>,
    pub approvals: Vec<Approval>,
    pub history: Vec<HistoryEntry>,
    pub applied_plans: Vec<AppliedPlan>,
    pub rehearsals: Vec<Rehearsal>,
}

impl StateDump {
    /// Rows per table, by table name.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("releases", self.releases.len()),
            ("deployments", self.deployments.len()),
            ("applied_releases", self.applied_releases.len()),
            ("receipts", self.receipts.len()),
            ("locks", self.locks.len()),
            ("approvals", self.approvals.len()),
            ("history", self.history.len()),
            ("applied_plans", self.applied_plans.len()),
            ("rehearsals", self.rehearsals.len()),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(_, n)| *n == 0)
    }

    /// The tables whose rows differ from `other`'s, each with the first differing row.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        fn table<T: PartialEq + std::fmt::Debug>(name: &str, a: &[T], b: &[T], out: &mut Vec<String>) {
            if a == b {
                return;
            }
            let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            out.push(format!(
                "{name}: {} row(s) vs {}; first difference at row {first}: {:?} vs {:?}",
                a.len(),
                b.len(),
                a.get(first),
                b.get(first)
            ));
        }
        let mut out = Vec::new();
        table("releases", &self.releases, &other.releases, &mut out);
        table("deployments", &self.deployments, &other.deployments, &mut out);
        table("applied_releases", &self.applied_releases, &other.applied_releases, &mut out);
        table("receipts", &self.receipts, &other.receipts, &mut out);
        table("locks", &self.locks, &other.locks, &mut out);
        table("approvals", &self.approvals, &other.approvals, &mut out);
        table("history", &self.history, &other.history, &mut out);
        table("applied_plans", &self.applied_plans, &other.applied_plans, &mut out);
        table("rehearsals", &self.rehearsals, &other.rehearsals, &mut out);
        out
    }
}
