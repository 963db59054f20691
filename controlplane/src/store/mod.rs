//! The state store: what the control plane has recorded (releases, deployments,
//! the receipt index, locks, approvals). A trait, so PostgreSQL can join SQLite
//! without the core noticing.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at `{url}`")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the state store schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("state store query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("state store holds an invalid value in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("receipt sequence number {0} is already taken")]
    SequenceTaken(i64),
}

/// A release CI registered, with the evidence it was verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub service: String,
    pub digest: String,
    pub repository: String,
    pub source_commit: String,
    pub signer_key_id: String,
    pub provenance: Option<String>,
    pub sbom: Option<String>,
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
    pub image: String,
    pub digest: String,
    pub source_commit: String,
    pub content_hash: String,
    pub signer_key_id: String,
    pub provenance: Option<String>,
    pub sbom: Option<String>,
    pub applied_at: DateTime<Utc>,
}

/// Who holds the (environment, service) lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub environment: String,
    pub service: String,
    pub holder_user: String,
    pub holder_host: String,
    pub holder_pid: i64,
    pub plan_id: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub plan_id: String,
    pub approver: String,
    pub approved_at: DateTime<Utc>,
}

/// The operations the control plane needs from its state, and nothing more.
#[async_trait]
pub trait Store: Send + Sync {
    async fn put_release(&self, r: &ReleaseRecord) -> Result<(), StoreError>;
    async fn release(&self, service: &str, digest: &str) -> Result<Option<ReleaseRecord>, StoreError>;
    async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, StoreError>;

    async fn put_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError>;
    async fn deployments(&self, environment: &str, service: &str) -> Result<Vec<DeploymentRecord>, StoreError>;
    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;

    async fn put_applied_release(&self, r: &AppliedRelease) -> Result<(), StoreError>;
    async fn applied_release(
        &self,
        environment: &str,
        service: &str,
        release_id: &str,
    ) -> Result<Option<AppliedRelease>, StoreError>;

    /// Appends to the receipt index; fails with `SequenceTaken` if `seq` exists.
    async fn append_receipt(&self, e: &ReceiptIndexEntry) -> Result<(), StoreError>;
    async fn receipt_head(&self) -> Result<Option<ReceiptIndexEntry>, StoreError>;
    async fn receipts(&self) -> Result<Vec<ReceiptIndexEntry>, StoreError>;

    /// Takes the lock, or returns who holds it.
    async fn try_lock(&self, lock: &LockRecord) -> Result<Result<(), LockRecord>, StoreError>;
    async fn lock_holder(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError>;
    /// Releases the lock if `plan_id` holds it; returns whether it did.
    async fn unlock(&self, environment: &str, service: &str, plan_id: &str) -> Result<bool, StoreError>;
    /// Removes the lock whoever holds it; returns the removed holder.
    async fn force_unlock(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError>;

    async fn approve(&self, a: &Approval) -> Result<(), StoreError>;
    async fn approvals(&self, plan_id: &str) -> Result<Vec<Approval>, StoreError>;
}
