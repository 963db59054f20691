//! What the state store records, as plain data: releases, deployments, applied
//! releases, the receipt index, locks and approvals. The `Store` trait in the
//! `controlplane` crate reads and writes these; the core decides with them.

use crate::release::ReleaseFacts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A release CI registered, with the evidence it was verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub service: String,
    #[serde(flatten)]
    pub facts: ReleaseFacts,
    /// JSON evidence (signature layers, attestation digests) for offline re-checks.
    pub evidence: String,
    pub added_at: DateTime<Utc>,
    pub added_by: String,
}

/// What is recorded as live on one host for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub environment: String,
    pub service: String,
    pub host: String,
    pub release_id: String,
    pub digest: String,
    pub source_commit: String,
    pub content_hash: String,
    pub rollback_target: Option<String>,
    pub plan_id: String,
    pub updated_at: DateTime<Utc>,
}

impl DeploymentRecord {
    /// `host` of (`environment`, `service`) with nothing recorded as live, written by
    /// `plan_id` at `at` (empty strings are the store's "none").
    pub fn nothing(environment: &str, service: &str, host: &str, plan_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            environment: environment.to_owned(),
            service: service.to_owned(),
            host: host.to_owned(),
            release_id: String::new(),
            digest: String::new(),
            source_commit: String::new(),
            content_hash: String::new(),
            rollback_target: None,
            plan_id: plan_id.to_owned(),
            updated_at: at,
        }
    }
}

/// One receipt in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptIndexEntry {
    pub seq: i64,
    pub kind: String,
    pub file: String,
    pub sha256: String,
    pub plan_id: Option<String>,
    pub environment: Option<String>,
    pub service: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A release that was applied in an environment, kept so it can be rolled back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRelease {
    pub environment: String,
    pub service: String,
    pub release_id: String,
    pub content_hash: String,
    #[serde(flatten)]
    pub facts: ReleaseFacts,
    pub applied_at: DateTime<Utc>,
    /// The release's rendered files (path → base64), as the promotion that first applied
    /// it staged them: what `repair` stages again and what `status` names changes against.
    /// `None` for releases adopted or applied before the files were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

/// Who holds the (environment, service) lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub environment: String,
    pub service: String,
    pub holder_user: String,
    pub holder_host: String,
    pub holder_pid: i64,
    /// The holder machine's boot id (`/proc/sys/kernel/random/boot_id`): a pid is only
    /// meaningful within one boot.
    #[serde(default)]
    pub holder_boot: String,
    pub plan_id: String,
    pub since: DateTime<Utc>,
    /// The end of the holder's lease; it renews it while the apply runs. `None`: a lock
    /// written before leases (it never expires; only `unlock --force` removes it).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl LockRecord {
    /// Whether the holder's lease ran out before `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t < now)
    }
}

/// What taking a lock came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// It was free.
    Taken,
    /// Its holder's lease had expired: taken over from that holder.
    TakenOver(LockRecord),
    /// Someone holds it.
    Held(LockRecord),
}

/// A receipt as the chain in the store keeps it: the index row, the exact bytes and the
/// base64 signature. `bytes` is empty for a receipt indexed by a version that kept the
/// bytes only in the receipts directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub index: ReceiptIndexEntry,
    pub bytes: Vec<u8>,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub plan_id: String,
    pub approver: String,
    pub approved_at: DateTime<Utc>,
    /// The signed statement and its SSH signature (PEM); re-verified at every apply.
    #[serde(default)]
    pub statement: String,
    #[serde(default)]
    pub signature: String,
}

/// One step in the life of (environment, service, host): a release it came to run,
/// through a promotion or a rollback, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub environment: String,
    pub service: String,
    pub host: String,
    /// Order across the whole history (assigned by the store).
    pub seq: i64,
    pub release_id: String,
    /// `promote` or `rollback`.
    pub kind: String,
    pub plan_id: String,
    pub at: DateTime<Utc>,
}
