//! The SQLite store: one file, created on first use, migrated on open.

use super::*;
use crate::release::ReleaseFacts;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

fn time(row: &SqliteRow, col: &'static str) -> Result<DateTime<Utc>, StoreError> {
    let s: String = row.try_get(col).map_err(q(col))?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt { what: col, detail: e.to_string() })
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let url = path.display().to_string();
        let open = |source| StoreError::Open { url: url.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open(sqlx::Error::Io(e)))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(opts).await.map_err(|e| match e {
            StoreError::Query { source, .. } => open(source),
            other => other,
        })
    }

    /// Opens the database only if its file exists (for read-only commands that must not
    /// create state, such as a dry-run on a fresh checkout).
    pub async fn open_existing(path: &Path) -> Result<Option<Self>, StoreError> {
        if path.exists() {
            Self::open(path).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Opens an existing database read-only, without migrating: what dry-runs and
    /// probes use, so that they cannot change a byte of the state.
    pub async fn open_read_only(path: &Path) -> Result<Option<Self>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let url = path.display().to_string();
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|source| StoreError::Open { url: url.clone(), source })?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open { url, source })?;
        Ok(Some(Self { pool }))
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:").map_err(q("open"))?;
        Self::connect(opts).await
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(q("connect"))?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(Self { pool })
    }

    /// The release facts of a row whose repository is `repository`.
    fn facts_from(row: &SqliteRow, repository: String) -> Result<ReleaseFacts, StoreError> {
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        let o = |c: &'static str| row.try_get::<Option<String>, _>(c).map_err(q(c));
        Ok(ReleaseFacts {
            repository,
            digest: g("digest")?,
            source_commit: g("source_commit")?,
            signer_key_id: g("signer_key_id")?,
            provenance: o("provenance")?,
            sbom: o("sbom")?,
        })
    }

    fn release_from(row: &SqliteRow) -> Result<ReleaseRecord, StoreError> {
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        Ok(ReleaseRecord {
            service: g("service")?,
            facts: Self::facts_from(row, g("repository")?)?,
            evidence: g("evidence")?,
            added_at: time(row, "added_at")?,
            added_by: g("added_by")?,
        })
    }

    fn deployment_from(row: &SqliteRow) -> Result<DeploymentRecord, StoreError> {
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        Ok(DeploymentRecord {
            environment: g("environment")?,
            service: g("service")?,
            host: g("host")?,
            release_id: g("release_id")?,
            digest: g("digest")?,
            source_commit: g("source_commit")?,
            content_hash: g("content_hash")?,
            rollback_target: row.try_get("rollback_target").map_err(q("rollback_target"))?,
            plan_id: g("plan_id")?,
            updated_at: time(row, "updated_at")?,
        })
    }

    fn receipt_from(row: &SqliteRow) -> Result<ReceiptIndexEntry, StoreError> {
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        let o = |c: &'static str| row.try_get::<Option<String>, _>(c).map_err(q(c));
        Ok(ReceiptIndexEntry {
            seq: row.try_get("seq").map_err(q("seq"))?,
            kind: g("kind")?,
            file: g("file")?,
            sha256: g("sha256")?,
            plan_id: o("plan_id")?,
            environment: o("environment")?,
            service: o("service")?,
            created_at: time(row, "created_at")?,
        })
    }

    fn lock_from(row: &SqliteRow) -> Result<LockRecord, StoreError> {
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        Ok(LockRecord {
            environment: g("environment")?,
            service: g("service")?,
            holder_user: g("holder_user")?,
            holder_host: g("holder_host")?,
            holder_pid: row.try_get("holder_pid").map_err(q("holder_pid"))?,
            holder_boot: g("holder_boot")?,
            plan_id: g("plan_id")?,
            since: time(row, "since")?,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_release(&self, r: &ReleaseRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO releases (service, digest, repository, source_commit, signer_key_id, provenance, sbom, evidence, added_at, added_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (service, digest) DO UPDATE SET repository = excluded.repository,
               source_commit = excluded.source_commit, signer_key_id = excluded.signer_key_id,
               provenance = excluded.provenance, sbom = excluded.sbom, evidence = excluded.evidence,
               added_at = excluded.added_at, added_by = excluded.added_by",
        )
        .bind(&r.service)
        .bind(&r.facts.digest)
        .bind(&r.facts.repository)
        .bind(&r.facts.source_commit)
        .bind(&r.facts.signer_key_id)
        .bind(&r.facts.provenance)
        .bind(&r.facts.sbom)
        .bind(&r.evidence)
        .bind(ts(&r.added_at))
        .bind(&r.added_by)
        .execute(&self.pool)
        .await
        .map_err(q("put release"))?;
        Ok(())
    }

    async fn release(&self, service: &str, digest: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM releases WHERE service = ? AND digest = ?")
            .bind(service)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get release"))?;
        row.as_ref().map(Self::release_from).transpose()
    }

    async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM releases WHERE service = ? ORDER BY added_at, digest")
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list releases"))?;
        rows.iter().map(Self::release_from).collect()
    }

    async fn put_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deployments (environment, service, host, release_id, digest, source_commit, content_hash, rollback_target, plan_id, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (environment, service, host) DO UPDATE SET release_id = excluded.release_id,
               digest = excluded.digest, source_commit = excluded.source_commit,
               content_hash = excluded.content_hash, rollback_target = excluded.rollback_target,
               plan_id = excluded.plan_id, updated_at = excluded.updated_at",
        )
        .bind(&d.environment)
        .bind(&d.service)
        .bind(&d.host)
        .bind(&d.release_id)
        .bind(&d.digest)
        .bind(&d.source_commit)
        .bind(&d.content_hash)
        .bind(&d.rollback_target)
        .bind(&d.plan_id)
        .bind(ts(&d.updated_at))
        .execute(&self.pool)
        .await
        .map_err(q("put deployment"))?;
        Ok(())
    }

    async fn deployments(&self, environment: &str, service: &str) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE environment = ? AND service = ? ORDER BY host")
            .bind(environment)
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list deployments"))?;
        rows.iter().map(Self::deployment_from).collect()
    }

    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deployments ORDER BY environment, service, host")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list deployments"))?;
        rows.iter().map(Self::deployment_from).collect()
    }

    async fn put_applied_release(&self, r: &AppliedRelease) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO applied_releases (environment, service, release_id, image, digest, source_commit, content_hash, signer_key_id, provenance, sbom, applied_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.environment)
        .bind(&r.service)
        .bind(&r.release_id)
        .bind(r.facts.image())
        .bind(&r.facts.digest)
        .bind(&r.facts.source_commit)
        .bind(&r.content_hash)
        .bind(&r.facts.signer_key_id)
        .bind(&r.facts.provenance)
        .bind(&r.facts.sbom)
        .bind(ts(&r.applied_at))
        .execute(&self.pool)
        .await
        .map_err(q("put applied release"))?;
        Ok(())
    }

    async fn applied_release(
        &self,
        environment: &str,
        service: &str,
        release_id: &str,
    ) -> Result<Option<AppliedRelease>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM applied_releases WHERE environment = ? AND service = ? AND release_id = ?")
                .bind(environment)
                .bind(service)
                .bind(release_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("get applied release"))?;
        let Some(row) = row else { return Ok(None) };
        let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
        // The table keeps `image` (`repository@digest`) as written by earlier versions.
        let image = g("image")?;
        let repository = image.rsplit_once('@').map_or(image.as_str(), |(r, _)| r).to_owned();
        Ok(Some(AppliedRelease {
            environment: g("environment")?,
            service: g("service")?,
            release_id: g("release_id")?,
            content_hash: g("content_hash")?,
            facts: Self::facts_from(&row, repository)?,
            applied_at: time(&row, "applied_at")?,
        }))
    }

    async fn append_receipt(&self, e: &ReceiptIndexEntry) -> Result<(), StoreError> {
        let res = sqlx::query(
            "INSERT INTO receipts (seq, kind, file, sha256, plan_id, environment, service, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.seq)
        .bind(&e.kind)
        .bind(&e.file)
        .bind(&e.sha256)
        .bind(&e.plan_id)
        .bind(&e.environment)
        .bind(&e.service)
        .bind(ts(&e.created_at))
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(StoreError::SequenceTaken(e.seq)),
            Err(source) => Err(StoreError::Query { what: "append receipt", source }),
        }
    }

    async fn receipt_head(&self) -> Result<Option<ReceiptIndexEntry>, StoreError> {
        let row = sqlx::query("SELECT * FROM receipts ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(q("receipt head"))?;
        row.as_ref().map(Self::receipt_from).transpose()
    }

    async fn receipts(&self) -> Result<Vec<ReceiptIndexEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM receipts ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list receipts"))?;
        rows.iter().map(Self::receipt_from).collect()
    }

    async fn try_lock(&self, l: &LockRecord) -> Result<Result<(), LockRecord>, StoreError> {
        // INSERT OR IGNORE is atomic in SQLite: exactly one of two racing writers inserts.
        let done = sqlx::query(
            "INSERT OR IGNORE INTO locks (environment, service, holder_user, holder_host, holder_pid, holder_boot, plan_id, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&l.environment)
        .bind(&l.service)
        .bind(&l.holder_user)
        .bind(&l.holder_host)
        .bind(l.holder_pid)
        .bind(&l.holder_boot)
        .bind(&l.plan_id)
        .bind(ts(&l.since))
        .execute(&self.pool)
        .await
        .map_err(q("take lock"))?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        match self.lock_holder(&l.environment, &l.service).await? {
            Some(holder) => Ok(Err(holder)),
            // Released between our insert and read: try once more.
            None => Box::pin(self.try_lock(l)).await,
        }
    }

    async fn lock_holder(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM locks WHERE environment = ? AND service = ?")
            .bind(environment)
            .bind(service)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read lock"))?;
        row.as_ref().map(Self::lock_from).transpose()
    }

    async fn unlock(&self, environment: &str, service: &str, plan_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM locks WHERE environment = ? AND service = ? AND plan_id = ?")
            .bind(environment)
            .bind(service)
            .bind(plan_id)
            .execute(&self.pool)
            .await
            .map_err(q("release lock"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn force_unlock(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError> {
        let holder = self.lock_holder(environment, service).await?;
        sqlx::query("DELETE FROM locks WHERE environment = ? AND service = ?")
            .bind(environment)
            .bind(service)
            .execute(&self.pool)
            .await
            .map_err(q("force unlock"))?;
        Ok(holder)
    }

    async fn append_history(&self, e: &HistoryEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO history (environment, service, host, release_id, kind, plan_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.environment)
        .bind(&e.service)
        .bind(&e.host)
        .bind(&e.release_id)
        .bind(&e.kind)
        .bind(&e.plan_id)
        .bind(ts(&e.at))
        .execute(&self.pool)
        .await
        .map_err(q("append history"))?;
        Ok(())
    }

    async fn history(&self, environment: &str, service: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM history WHERE environment = ? AND service = ? ORDER BY seq")
            .bind(environment)
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("read history"))?;
        rows.iter()
            .map(|row| {
                let g = |c: &'static str| row.try_get::<String, _>(c).map_err(q(c));
                Ok(HistoryEntry {
                    environment: g("environment")?,
                    service: g("service")?,
                    host: g("host")?,
                    seq: row.try_get("seq").map_err(q("seq"))?,
                    release_id: g("release_id")?,
                    kind: g("kind")?,
                    plan_id: g("plan_id")?,
                    at: time(row, "at")?,
                })
            })
            .collect()
    }

    async fn record_plan(&self, plan_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT OR IGNORE INTO applied_plans (plan_id, applied_at) VALUES (?, ?)")
            .bind(plan_id)
            .bind(ts(&at))
            .execute(&self.pool)
            .await
            .map_err(q("record plan"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_rehearsal(
        &self,
        environment: &str,
        service: &str,
        digest: &str,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO rehearsals (environment, service, digest, receipt, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(environment)
        .bind(service)
        .bind(digest)
        .bind(receipt)
        .bind(ts(&at))
        .execute(&self.pool)
        .await
        .map_err(q("record rehearsal"))?;
        Ok(())
    }

    async fn rehearsals(&self, service: &str, digest: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT environment, receipt FROM rehearsals WHERE service = ? AND digest = ? ORDER BY at")
                .bind(service)
                .bind(digest)
                .fetch_all(&self.pool)
                .await
                .map_err(q("read rehearsals"))?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get("environment").map_err(q("environment"))?, r.try_get("receipt").map_err(q("receipt"))?))
            })
            .collect()
    }

    async fn approve(&self, a: &Approval) -> Result<(), StoreError> {
        // The latest approval of an approver for a plan replaces an earlier one (a renewed
        // approval after the first expired).
        sqlx::query(
            "INSERT OR REPLACE INTO approvals (plan_id, approver, approved_at, statement, signature) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&a.plan_id)
        .bind(&a.approver)
        .bind(ts(&a.approved_at))
        .bind(&a.statement)
        .bind(&a.signature)
            .execute(&self.pool)
            .await
            .map_err(q("approve"))?;
        Ok(())
    }

    async fn approvals(&self, plan_id: &str) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query("SELECT * FROM approvals WHERE plan_id = ? ORDER BY approved_at, approver")
            .bind(plan_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list approvals"))?;
        rows.iter()
            .map(|row| {
                Ok(Approval {
                    plan_id: row.try_get("plan_id").map_err(q("plan_id"))?,
                    approver: row.try_get("approver").map_err(q("approver"))?,
                    approved_at: time(row, "approved_at")?,
                    statement: row.try_get("statement").map_err(q("statement"))?,
                    signature: row.try_get("signature").map_err(q("signature"))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 123_000).unwrap()
    }

    #[tokio::test]
    async fn round_trips_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state/cp.db")).await.unwrap();

        let rel = ReleaseRecord {
            service: "api".into(),
            facts: ReleaseFacts {
                digest: format!("sha256:{}", "a".repeat(64)),
                repository: "127.0.0.1:5000/demo/api".into(),
                source_commit: "0123456789abcdef0123456789abcdef01234567".into(),
                signer_key_id: "sha256:k".into(),
                provenance: Some("sha256:p".into()),
                sbom: None,
            },
            evidence: "{\"sig\":1}".into(),
            added_at: t(1),
            added_by: "ci".into(),
        };
        store.put_release(&rel).await.unwrap();
        assert_eq!(store.release("api", &rel.facts.digest).await.unwrap(), Some(rel.clone()));
        assert_eq!(store.releases("api").await.unwrap(), vec![rel.clone()]);
        assert_eq!(store.release("web", &rel.facts.digest).await.unwrap(), None);

        let dep = DeploymentRecord {
            environment: "prod".into(),
            service: "api".into(),
            host: "vm-1".into(),
            release_id: "r-1".into(),
            digest: rel.facts.digest.clone(),
            source_commit: rel.facts.source_commit.clone(),
            content_hash: "sha256:c".into(),
            rollback_target: Some("r-0".into()),
            plan_id: "p-1".into(),
            updated_at: t(2),
        };
        store.put_deployment(&dep).await.unwrap();
        let moved = DeploymentRecord { release_id: "r-2".into(), rollback_target: Some("r-1".into()), ..dep.clone() };
        store.put_deployment(&moved).await.unwrap();
        assert_eq!(store.deployments("prod", "api").await.unwrap(), vec![moved.clone()]);
        assert_eq!(store.all_deployments().await.unwrap(), vec![moved]);

        let e = ReceiptIndexEntry {
            seq: 1,
            kind: "apply".into(),
            file: "000001-apply.json".into(),
            sha256: "ab".into(),
            plan_id: Some("p-1".into()),
            environment: Some("prod".into()),
            service: None,
            created_at: t(3),
        };
        store.append_receipt(&e).await.unwrap();
        assert!(matches!(store.append_receipt(&e).await, Err(StoreError::SequenceTaken(1))));
        let e2 = ReceiptIndexEntry { seq: 2, ..e.clone() };
        store.append_receipt(&e2).await.unwrap();
        assert_eq!(store.receipts().await.unwrap(), vec![e, e2.clone()]);
        assert_eq!(store.receipt_head().await.unwrap(), Some(e2));

        let lock = LockRecord {
            environment: "prod".into(),
            service: "api".into(),
            holder_user: "alice".into(),
            holder_host: "laptop".into(),
            holder_pid: 42,
            holder_boot: "boot-1".into(),
            plan_id: "p-1".into(),
            since: t(4),
        };
        assert_eq!(store.try_lock(&lock).await.unwrap(), Ok(()));
        let other = LockRecord { holder_user: "bob".into(), plan_id: "p-2".into(), ..lock.clone() };
        assert_eq!(store.try_lock(&other).await.unwrap(), Err(lock.clone()));
        assert!(!store.unlock("prod", "api", "p-2").await.unwrap());
        assert!(store.unlock("prod", "api", "p-1").await.unwrap());
        assert_eq!(store.try_lock(&other).await.unwrap(), Ok(()));
        assert_eq!(store.force_unlock("prod", "api").await.unwrap(), Some(other));
        assert_eq!(store.lock_holder("prod", "api").await.unwrap(), None);

        let applied = AppliedRelease {
            environment: "prod".into(),
            service: "api".into(),
            release_id: "r-1".into(),
            content_hash: "h".into(),
            facts: ReleaseFacts {
                repository: "registry/demo/api".into(),
                digest: "d".into(),
                source_commit: "c".into(),
                signer_key_id: "k".into(),
                provenance: None,
                sbom: Some("s".into()),
            },
            applied_at: t(6),
        };
        store.put_applied_release(&applied).await.unwrap();
        assert_eq!(store.applied_release("prod", "api", "r-1").await.unwrap(), Some(applied));
        assert_eq!(store.applied_release("prod", "api", "r-2").await.unwrap(), None);

        let step = |host: &str, release: &str, kind: &str| HistoryEntry {
            environment: "prod".into(),
            service: "api".into(),
            host: host.into(),
            seq: 0,
            release_id: release.into(),
            kind: kind.into(),
            plan_id: "p-1".into(),
            at: t(7),
        };
        for e in [step("vm-1", "r-1", "promote"), step("vm-2", "r-1", "promote"), step("vm-1", "r-0", "rollback")] {
            store.append_history(&e).await.unwrap();
        }
        let h = store.history("prod", "api").await.unwrap();
        assert_eq!(
            h.iter().map(|e| (e.host.as_str(), e.release_id.as_str())).collect::<Vec<_>>(),
            [("vm-1", "r-1"), ("vm-2", "r-1"), ("vm-1", "r-0")]
        );
        assert!(h.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
        assert!(store.history("staging", "api").await.unwrap().is_empty());
        assert!(store.record_plan("p-1", t(8)).await.unwrap());
        assert!(!store.record_plan("p-1", t(9)).await.unwrap(), "a plan is applied once");

        let a = Approval {
            plan_id: "p-1".into(),
            approver: "carol".into(),
            approved_at: t(5),
            statement: "{}".into(),
            signature: "sig".into(),
        };
        store.approve(&a).await.unwrap();
        store.approve(&a).await.unwrap();
        assert_eq!(store.approvals("p-1").await.unwrap(), vec![a]);

        // Reopening keeps everything (the migration is not re-run destructively).
        drop(store);
        let again = SqliteStore::open(&dir.path().join("state/cp.db")).await.unwrap();
        assert_eq!(again.releases("api").await.unwrap(), vec![rel]);
    }
}
