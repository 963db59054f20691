//! The state store: what the control plane has recorded (releases, deployments, the
//! receipt chain, locks, approvals, history). One trait; one SQL implementation over
//! SQLite (the embedded default) and PostgreSQL (several control planes, one truth).

mod dialect;
mod dump;
mod sql;

pub use dialect::Backend;
pub use dump::StateDump;
pub use sql::{Location, SqlStore};

use async_trait::async_trait;

pub use controlplane_core::records::*;

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
    #[error("the destination state store at `{0}` is not empty; migrate into an empty database")]
    NotEmpty(String),
    #[error("the lock of `{service}` in `{environment}` is no longer held by plan {plan_id} (its lease was taken over{}); nothing was written", holder.as_deref().map(|h| format!(" by plan {h}")).unwrap_or_default())]
    Fenced { environment: String, service: String, plan_id: String, holder: Option<String> },
    #[error("the state store did not answer ({what}) within {secs} s")]
    Unanswered { what: &'static str, secs: f64 },
}

/// The fencing token of writes made under a lock: the plan that holds it. Plan ids are
/// single use, so a lock taken over (or released and taken again) never carries it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub environment: String,
    pub service: String,
    pub plan_id: String,
}

/// A write made under a lock (see [`Store::fenced`]).
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    Deployment(&'a DeploymentRecord),
    History(&'a HistoryEntry),
    Applied(&'a AppliedRelease),
}

/// Builds and signs the receipt with sequence number `seq` chained to `previous` (the
/// hash of the receipt before it), inside the store's append transaction.
pub type MakeReceipt<'a> = &'a (dyn Fn(u64, Option<String>) -> StoredReceipt + Send + Sync);

/// The operations the control plane needs from its state, and nothing more.
#[async_trait]
pub trait Store: Send + Sync {
    async fn put_release(&self, r: &ReleaseRecord) -> Result<(), StoreError>;
    async fn release(&self, service: &str, digest: &str) -> Result<Option<ReleaseRecord>, StoreError>;
    async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, StoreError>;

    async fn put_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError>;
    /// Makes `writes` in one transaction, only while `fence`'s plan still holds the lock:
    /// a holder whose lease was taken over gets [`StoreError::Fenced`] and writes nothing.
    async fn fenced(&self, fence: &Fence, writes: &[Write<'_>]) -> Result<(), StoreError>;
    async fn deployments(&self, environment: &str, service: &str) -> Result<Vec<DeploymentRecord>, StoreError>;
    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;

    async fn put_applied_release(&self, r: &AppliedRelease) -> Result<(), StoreError>;
    async fn applied_release(
        &self,
        environment: &str,
        service: &str,
        release_id: &str,
    ) -> Result<Option<AppliedRelease>, StoreError>;

    /// Appends the next receipt of the one chain: in one transaction, reads the head,
    /// calls `make` with the next sequence number and the head's hash, and stores the
    /// result. Concurrent appends, from this process or another control plane, are
    /// serialized by the database: the chain never forks and no number repeats.
    async fn append_receipt(&self, make: MakeReceipt<'_>) -> Result<StoredReceipt, StoreError>;
    async fn receipt_head(&self) -> Result<Option<ReceiptIndexEntry>, StoreError>;
    async fn receipts(&self) -> Result<Vec<ReceiptIndexEntry>, StoreError>;
    /// The receipts after sequence number `after`, with their bytes and signatures.
    async fn stored_receipts(&self, after: i64) -> Result<Vec<StoredReceipt>, StoreError>;
    /// Fills in the bytes of a receipt indexed by an older version; `false` if the row
    /// is missing or already has bytes.
    async fn fill_receipt(&self, seq: i64, bytes: &[u8], signature: &str) -> Result<bool, StoreError>;

    /// Takes the lock at `now`: free, or held under a lease that expired (taken over),
    /// or held (returns the holder). The database decides, so two control planes never
    /// both win.
    async fn try_lock(&self, lock: &LockRecord, now: chrono::DateTime<chrono::Utc>) -> Result<LockOutcome, StoreError>;
    /// Extends `plan_id`'s lease to `until`; `false` if `plan_id` no longer holds it.
    async fn renew_lock(
        &self,
        environment: &str,
        service: &str,
        plan_id: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError>;
    async fn lock_holder(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError>;
    /// Releases the lock if `plan_id` holds it; returns whether it did.
    async fn unlock(&self, environment: &str, service: &str, plan_id: &str) -> Result<bool, StoreError>;
    /// Removes the lock whoever holds it; returns the removed holder.
    async fn force_unlock(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError>;

    /// Appends to the history of (environment, service, host); the store assigns `seq`.
    async fn append_history(&self, e: &HistoryEntry) -> Result<(), StoreError>;
    /// The history of every host of (environment, service), oldest first.
    async fn history(&self, environment: &str, service: &str) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Records that `plan_id` is being applied; `false` if it was applied before.
    async fn record_plan(&self, plan_id: &str, at: chrono::DateTime<chrono::Utc>) -> Result<bool, StoreError>;

    /// Records that `digest` of `service` was rehearsed in `environment` (receipt file name).
    async fn put_rehearsal(
        &self,
        environment: &str,
        service: &str,
        digest: &str,
        receipt: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError>;
    /// The environments `digest` of `service` was rehearsed in, with the receipt.
    async fn rehearsals(&self, service: &str, digest: &str) -> Result<Vec<(String, String)>, StoreError>;

    async fn approve(&self, a: &Approval) -> Result<(), StoreError>;
    async fn approvals(&self, plan_id: &str) -> Result<Vec<Approval>, StoreError>;

    /// Every row of every table (for `state migrate` and its comparison).
    async fn dump(&self) -> Result<StateDump, StoreError>;
    /// Loads `dump` into an empty store, keeping sequence numbers.
    async fn load(&self, dump: &StateDump) -> Result<(), StoreError>;
}
