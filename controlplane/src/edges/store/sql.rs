//! The SQL store: one implementation, through sqlx's `Any` driver, over SQLite (a file,
//! created on first use) and PostgreSQL (a database shared by several control planes).
//! Every statement is written once, in the SQL both engines speak (`$N` parameters,
//! `ON CONFLICT`); times are RFC 3339 text with microseconds, which sorts as it compares.

use super::dialect::{self, Backend};
use super::dump::{AppliedPlan, Rehearsal};
use super::*;
use crate::release::ReleaseFacts;
use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where a store is.
#[derive(Clone)]
pub enum Location {
    /// A SQLite file (absolute or relative to the working directory).
    Sqlite(PathBuf),
    /// A PostgreSQL URL without a password, and the password (read from the variable the
    /// manifests name).
    Postgres { url: String, password: Option<String> },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Location {
    /// Never shows the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres { url, .. } => f.write_str(url),
        }
    }
}

impl Location {
    /// A location from a `state` URL given on the command line (`sqlite:PATH` or
    /// `postgres://…`), the password from the variable `password_env` names.
    pub fn parse(url: &str, password_env: Option<&str>) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err("`sqlite:` needs a path, e.g. `sqlite:state/controlplane.db`".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
            if parsed.password().is_some() {
                return Err("the URL carries a password; pass the name of the variable that holds it instead".into());
            }
            let password = match password_env {
                Some(name) => Some(std::env::var(name).map_err(|_| format!("`{name}` is not set"))?),
                None => None,
            };
            return Ok(Self::Postgres { url: url.to_owned(), password });
        }
        Err(format!("`{url}` is not a state URL: write `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`"))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres { .. } => Backend::Postgres,
        }
    }

    fn options(&self, read_only: bool) -> Result<AnyConnectOptions, sqlx::Error> {
        let url = match self {
            Self::Sqlite(path) => {
                let abs = std::path::absolute(path).map_err(sqlx::Error::Io)?;
                format!("sqlite://{}?mode={}", encode_path(&abs), if read_only { "ro" } else { "rwc" })
            }
            Self::Postgres { url, password } => {
                let mut u = url::Url::parse(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
                if let Some(pw) = password {
                    u.set_password(Some(pw))
                        .map_err(|()| sqlx::Error::Configuration("URL cannot carry a password".into()))?;
                }
                u.to_string()
            }
        };
        AnyConnectOptions::from_str(&url)
    }
}

/// Percent-encodes a path for a `sqlite://` URL (a `?` or `#` in a file name stays a name).
fn encode_path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        sqlx::any::install_drivers(&[sqlx::sqlite::any::DRIVER, sqlx::postgres::any::DRIVER]).expect("installed once")
    });
}

#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    location: String,
}

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

fn text(row: &AnyRow, col: &'static str) -> Result<String, StoreError> {
    row.try_get::<String, _>(col).map_err(q(col))
}

fn opt_text(row: &AnyRow, col: &'static str) -> Result<Option<String>, StoreError> {
    row.try_get::<Option<String>, _>(col).map_err(q(col))
}

fn parse_time(col: &'static str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt { what: col, detail: e.to_string() })
}

fn time(row: &AnyRow, col: &'static str) -> Result<DateTime<Utc>, StoreError> {
    parse_time(col, &text(row, col)?)
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl SqlStore {
    async fn connect(location: &Location, read_only: bool, max: u32) -> Result<Self, StoreError> {
        install_drivers();
        let shown = location.to_string();
        let open = |source| StoreError::Open { url: shown.clone(), source };
        if let Location::Sqlite(path) = location {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !read_only) {
                std::fs::create_dir_all(dir).map_err(|e| open(sqlx::Error::Io(e)))?;
            }
        }
        let backend = location.backend();
        let opts = location.options(read_only).map_err(open)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match (backend, read_only) {
                        (Backend::Sqlite, false) => {
                            conn.execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = DELETE").await?;
                        }
                        (Backend::Sqlite, true) => {
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                        }
                        (Backend::Postgres, true) => {
                            conn.execute("SET default_transaction_read_only = on").await?;
                        }
                        (Backend::Postgres, false) => {}
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(open)?;
        Ok(Self { pool, backend, location: shown })
    }

    async fn migrate(self) -> Result<Self, StoreError> {
        dialect::migrate(self.backend, &MIGRATOR, &self.pool).await.map_err(StoreError::Migrate)?;
        Ok(self)
    }

    /// Opens the store at `location`, creating a SQLite file if needed, and migrates it.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        Self::connect(location, false, 4).await?.migrate().await
    }

    /// Opens the store only if it exists (a SQLite file that is there; a PostgreSQL
    /// database is always there): for commands that must not create state.
    pub async fn open_existing(location: &Location) -> Result<Option<Self>, StoreError> {
        match location {
            Location::Sqlite(path) if !path.exists() => Ok(None),
            _ => Self::open(location).await.map(Some),
        }
    }

    /// Opens an existing store read-only, without migrating: what dry-runs and probes
    /// use, so that they cannot change a byte of the state. `None` when there is no
    /// state yet.
    pub async fn open_read_only(location: &Location) -> Result<Option<Self>, StoreError> {
        if let Location::Sqlite(path) = location {
            if !path.exists() {
                return Ok(None);
            }
        }
        let store = Self::connect(location, true, 2).await?;
        if store.backend == Backend::Postgres {
            let row = sqlx::query("SELECT to_regclass('receipts') IS NOT NULL AS migrated")
                .fetch_one(&store.pool)
                .await
                .map_err(q("look for the schema"))?;
            if !row.try_get::<bool, _>("migrated").map_err(q("migrated"))? {
                return Ok(None);
            }
        }
        Ok(Some(store))
    }

    /// A private in-memory SQLite database (dry-runs without state, tests).
    pub async fn in_memory() -> Result<Self, StoreError> {
        install_drivers();
        // Each connection to `:memory:` is its own database: keep exactly one, forever.
        let opts = AnyConnectOptions::from_str("sqlite::memory:").map_err(q("open"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(q("open in-memory store"))?;
        Self { pool, backend: Backend::Sqlite, location: "sqlite::memory:".into() }.migrate().await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the store is, without a password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn facts_from(row: &AnyRow, repository: String) -> Result<ReleaseFacts, StoreError> {
        Ok(ReleaseFacts {
            repository,
            digest: text(row, "digest")?,
            source_commit: text(row, "source_commit")?,
            signer_key_id: text(row, "signer_key_id")?,
            provenance: opt_text(row, "provenance")?,
            sbom: opt_text(row, "sbom")?,
            signature: None,
            contents: None,
            platform_digest: None,
        })
    }

    fn release_from(row: &AnyRow) -> Result<ReleaseRecord, StoreError> {
        Ok(ReleaseRecord {
            service: text(row, "service")?,
            facts: ReleaseFacts {
                contents: None,
                platform_digest: opt_text(row, "platform_digest")?,
                ..Self::facts_from(row, text(row, "repository")?)?
            },
            evidence: text(row, "evidence")?,
            added_at: time(row, "added_at")?,
            added_by: text(row, "added_by")?,
        })
    }

    fn deployment_from(row: &AnyRow) -> Result<DeploymentRecord, StoreError> {
        Ok(DeploymentRecord {
            environment: text(row, "environment")?,
            service: text(row, "service")?,
            host: text(row, "host")?,
            release_id: text(row, "release_id")?,
            digest: text(row, "digest")?,
            source_commit: text(row, "source_commit")?,
            content_hash: text(row, "content_hash")?,
            rollback_target: opt_text(row, "rollback_target")?,
            plan_id: text(row, "plan_id")?,
            updated_at: time(row, "updated_at")?,
        })
    }

    fn applied_from(row: &AnyRow) -> Result<AppliedRelease, StoreError> {
        // The table keeps `image` (`repository@digest`) as written by earlier versions.
        let image = text(row, "image")?;
        let repository = image.rsplit_once('@').map_or(image.as_str(), |(r, _)| r).to_owned();
        Ok(AppliedRelease {
            environment: text(row, "environment")?,
            service: text(row, "service")?,
            release_id: text(row, "release_id")?,
            content_hash: text(row, "content_hash")?,
            facts: ReleaseFacts {
                contents: None,
                platform_digest: opt_text(row, "platform_digest")?,
                ..Self::facts_from(row, repository)?
            },
            applied_at: time(row, "applied_at")?,
            files: opt_text(row, "files")?
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| StoreError::Corrupt { what: "applied release files", detail: e.to_string() })?,
        })
    }

    fn receipt_from(row: &AnyRow) -> Result<ReceiptIndexEntry, StoreError> {
        Ok(ReceiptIndexEntry {
            seq: row.try_get("seq").map_err(q("seq"))?,
            kind: text(row, "kind")?,
            file: text(row, "file")?,
            sha256: text(row, "sha256")?,
            plan_id: opt_text(row, "plan_id")?,
            environment: opt_text(row, "environment")?,
            service: opt_text(row, "service")?,
            created_at: time(row, "created_at")?,
        })
    }

    fn stored_from(row: &AnyRow) -> Result<StoredReceipt, StoreError> {
        Ok(StoredReceipt {
            index: Self::receipt_from(row)?,
            bytes: row.try_get::<Option<Vec<u8>>, _>("body").map_err(q("body"))?.unwrap_or_default(),
            signature: opt_text(row, "signature")?.unwrap_or_default(),
        })
    }

    fn lock_from(row: &AnyRow) -> Result<LockRecord, StoreError> {
        let expires = text(row, "expires_at")?;
        Ok(LockRecord {
            environment: text(row, "environment")?,
            service: text(row, "service")?,
            holder_user: text(row, "holder_user")?,
            holder_host: text(row, "holder_host")?,
            holder_pid: row.try_get("holder_pid").map_err(q("holder_pid"))?,
            holder_boot: text(row, "holder_boot")?,
            plan_id: text(row, "plan_id")?,
            since: time(row, "since")?,
            expires_at: if expires.is_empty() { None } else { Some(parse_time("expires_at", &expires)?) },
        })
    }

    fn approval_from(row: &AnyRow) -> Result<Approval, StoreError> {
        Ok(Approval {
            plan_id: text(row, "plan_id")?,
            approver: text(row, "approver")?,
            approved_at: time(row, "approved_at")?,
            statement: text(row, "statement")?,
            signature: text(row, "signature")?,
        })
    }

    fn history_from(row: &AnyRow) -> Result<HistoryEntry, StoreError> {
        Ok(HistoryEntry {
            environment: text(row, "environment")?,
            service: text(row, "service")?,
            host: text(row, "host")?,
            seq: row.try_get("seq").map_err(q("seq"))?,
            release_id: text(row, "release_id")?,
            kind: text(row, "kind")?,
            plan_id: text(row, "plan_id")?,
            at: time(row, "at")?,
        })
    }

    async fn all<T>(
        &self,
        sql: &'static str,
        what: &'static str,
        f: fn(&AnyRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(q(what))?;
        rows.iter().map(f).collect()
    }
}

const INSERT_RECEIPT: &str =
    "INSERT INTO receipts (seq, kind, file, sha256, plan_id, environment, service, created_at, body, signature)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

fn insert_receipt(r: &StoredReceipt) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    let e = &r.index;
    sqlx::query(INSERT_RECEIPT)
        .bind(e.seq)
        .bind(&e.kind)
        .bind(&e.file)
        .bind(&e.sha256)
        .bind(&e.plan_id)
        .bind(&e.environment)
        .bind(&e.service)
        .bind(ts(&e.created_at))
        .bind((!r.bytes.is_empty()).then(|| r.bytes.clone()))
        .bind((!r.signature.is_empty()).then(|| r.signature.clone()))
}

fn insert_lock(l: &LockRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(
        "INSERT INTO locks (environment, service, holder_user, holder_host, holder_pid, holder_boot, plan_id, since, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (environment, service) DO NOTHING",
    )
    .bind(&l.environment)
    .bind(&l.service)
    .bind(&l.holder_user)
    .bind(&l.holder_host)
    .bind(l.holder_pid)
    .bind(&l.holder_boot)
    .bind(&l.plan_id)
    .bind(ts(&l.since))
    .bind(l.expires_at.as_ref().map(ts).unwrap_or_default())
}

fn insert_history(e: &HistoryEntry, with_seq: bool) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    let q = if with_seq {
        sqlx::query("INSERT INTO history (environment, service, host, release_id, kind, plan_id, at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
    } else {
        sqlx::query("INSERT INTO history (environment, service, host, release_id, kind, plan_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
    };
    let q = q
        .bind(&e.environment)
        .bind(&e.service)
        .bind(&e.host)
        .bind(&e.release_id)
        .bind(&e.kind)
        .bind(&e.plan_id)
        .bind(ts(&e.at));
    if with_seq {
        q.bind(e.seq)
    } else {
        q
    }
}

const PUT_RELEASE: &str = "INSERT INTO releases (service, digest, repository, source_commit, signer_key_id, provenance, sbom, evidence, added_at, added_by, platform_digest)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (service, digest) DO UPDATE SET repository = excluded.repository,
       source_commit = excluded.source_commit, signer_key_id = excluded.signer_key_id,
       provenance = excluded.provenance, sbom = excluded.sbom, evidence = excluded.evidence,
       added_at = excluded.added_at, added_by = excluded.added_by, platform_digest = excluded.platform_digest";

const PUT_DEPLOYMENT: &str = "INSERT INTO deployments (environment, service, host, release_id, digest, source_commit, content_hash, rollback_target, plan_id, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (environment, service, host) DO UPDATE SET release_id = excluded.release_id,
       digest = excluded.digest, source_commit = excluded.source_commit,
       content_hash = excluded.content_hash, rollback_target = excluded.rollback_target,
       plan_id = excluded.plan_id, updated_at = excluded.updated_at";

const PUT_APPLIED: &str = "INSERT INTO applied_releases (environment, service, release_id, image, digest, source_commit, content_hash, signer_key_id, provenance, sbom, applied_at, platform_digest, files)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (environment, service, release_id) DO UPDATE SET files = COALESCE(applied_releases.files, excluded.files)";

const PUT_APPROVAL: &str =
    "INSERT INTO approvals (plan_id, approver, approved_at, statement, signature) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (plan_id, approver) DO UPDATE SET approved_at = excluded.approved_at,
       statement = excluded.statement, signature = excluded.signature";

const PUT_REHEARSAL: &str =
    "INSERT INTO rehearsals (environment, service, digest, receipt, at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (environment, service, digest) DO UPDATE SET receipt = excluded.receipt, at = excluded.at";

fn put_release(r: &ReleaseRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(PUT_RELEASE)
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
        .bind(&r.facts.platform_digest)
}

fn put_deployment(d: &DeploymentRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(PUT_DEPLOYMENT)
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
}

/// Whether `fence`'s plan holds the lock, read in `tx` with `sql`.
async fn check_fence(tx: &mut sqlx::Transaction<'_, sqlx::Any>, sql: &str, fence: &Fence) -> Result<(), StoreError> {
    let row = sqlx::query(sql)
        .bind(&fence.environment)
        .bind(&fence.service)
        .fetch_optional(&mut **tx)
        .await
        .map_err(q("read lock"))?;
    let held = row.map(|r| text(&r, "plan_id")).transpose()?;
    if held.as_deref() == Some(fence.plan_id.as_str()) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            environment: fence.environment.clone(),
            service: fence.service.clone(),
            plan_id: fence.plan_id.clone(),
            holder: held,
        })
    }
}

fn put_applied(r: &AppliedRelease) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(PUT_APPLIED)
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
        .bind(&r.facts.platform_digest)
        .bind(r.files.as_ref().map(|f| serde_json::to_string(f).expect("a map of strings serializes")))
}

fn put_approval(a: &Approval) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(PUT_APPROVAL)
        .bind(&a.plan_id)
        .bind(&a.approver)
        .bind(ts(&a.approved_at))
        .bind(&a.statement)
        .bind(&a.signature)
}

fn put_rehearsal<'a>(
    environment: &'a str,
    service: &'a str,
    digest: &'a str,
    receipt: &'a str,
    at: &DateTime<Utc>,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
    sqlx::query(PUT_REHEARSAL).bind(environment).bind(service).bind(digest).bind(receipt).bind(ts(at))
}

fn put_plan<'a>(
    plan_id: &'a str,
    at: &DateTime<Utc>,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
    sqlx::query("INSERT INTO applied_plans (plan_id, applied_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(plan_id)
        .bind(ts(at))
}

#[async_trait]
impl Store for SqlStore {
    async fn put_release(&self, r: &ReleaseRecord) -> Result<(), StoreError> {
        put_release(r).execute(&self.pool).await.map_err(q("put release"))?;
        Ok(())
    }

    async fn release(&self, service: &str, digest: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM releases WHERE service = $1 AND digest = $2")
            .bind(service)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get release"))?;
        row.as_ref().map(Self::release_from).transpose()
    }

    async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM releases WHERE service = $1 ORDER BY added_at, digest")
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list releases"))?;
        rows.iter().map(Self::release_from).collect()
    }

    async fn put_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError> {
        put_deployment(d).execute(&self.pool).await.map_err(q("put deployment"))?;
        Ok(())
    }

    async fn fenced(&self, fence: &Fence, writes: &[Write<'_>]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin fenced write"))?;
        // The check and the writes are one transaction: on PostgreSQL the lock row is held
        // (`FOR UPDATE`), on SQLite the first write takes the database's write lock, and the
        // row is read again before the commit.
        let lock_row = match self.backend {
            Backend::Postgres => "SELECT plan_id FROM locks WHERE environment = $1 AND service = $2 FOR UPDATE",
            Backend::Sqlite => "SELECT plan_id FROM locks WHERE environment = $1 AND service = $2",
        };
        check_fence(&mut tx, lock_row, fence).await?;
        for w in writes {
            match w {
                Write::Deployment(d) => put_deployment(d).execute(&mut *tx).await.map_err(q("put deployment"))?,
                Write::History(e) => insert_history(e, false).execute(&mut *tx).await.map_err(q("append history"))?,
                Write::Applied(a) => put_applied(a).execute(&mut *tx).await.map_err(q("put applied release"))?,
            };
        }
        check_fence(&mut tx, lock_row, fence).await?;
        tx.commit().await.map_err(q("commit fenced write"))?;
        Ok(())
    }

    async fn deployments(&self, environment: &str, service: &str) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE environment = $1 AND service = $2 ORDER BY host")
            .bind(environment)
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list deployments"))?;
        rows.iter().map(Self::deployment_from).collect()
    }

    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.all(
            "SELECT * FROM deployments ORDER BY environment, service, host",
            "list deployments",
            Self::deployment_from,
        )
        .await
    }

    async fn put_applied_release(&self, r: &AppliedRelease) -> Result<(), StoreError> {
        put_applied(r).execute(&self.pool).await.map_err(q("put applied release"))?;
        Ok(())
    }

    async fn applied_release(
        &self,
        environment: &str,
        service: &str,
        release_id: &str,
    ) -> Result<Option<AppliedRelease>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM applied_releases WHERE environment = $1 AND service = $2 AND release_id = $3")
                .bind(environment)
                .bind(service)
                .bind(release_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("get applied release"))?;
        row.as_ref().map(Self::applied_from).transpose()
    }

    async fn append_receipt(&self, make: MakeReceipt<'_>) -> Result<StoredReceipt, StoreError> {
        let mut tx = self.pool.begin_with(self.backend.begin_chain()).await.map_err(q("begin a receipt append"))?;
        if let Some(lock) = self.backend.lock_chain() {
            sqlx::query(lock).execute(&mut *tx).await.map_err(q("lock the receipt chain"))?;
        }
        let head = sqlx::query("SELECT seq, sha256 FROM receipts ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("read the chain head"))?;
        let (seq, previous) = match head {
            Some(row) => (row.try_get::<i64, _>("seq").map_err(q("seq"))?, Some(text(&row, "sha256")?)),
            None => (0, None),
        };
        let stored = make(seq as u64 + 1, previous);
        if stored.index.seq != seq + 1 {
            return Err(StoreError::SequenceTaken(stored.index.seq));
        }
        match insert_receipt(&stored).execute(&mut *tx).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::SequenceTaken(stored.index.seq))
            }
            Err(source) => return Err(StoreError::Query { what: "append receipt", source }),
        }
        tx.commit().await.map_err(q("commit a receipt append"))?;
        Ok(stored)
    }

    async fn receipt_head(&self) -> Result<Option<ReceiptIndexEntry>, StoreError> {
        let row = sqlx::query("SELECT * FROM receipts ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(q("receipt head"))?;
        row.as_ref().map(Self::receipt_from).transpose()
    }

    async fn receipts(&self) -> Result<Vec<ReceiptIndexEntry>, StoreError> {
        self.all("SELECT * FROM receipts ORDER BY seq", "list receipts", Self::receipt_from).await
    }

    async fn stored_receipts(&self, after: i64) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = sqlx::query("SELECT * FROM receipts WHERE seq > $1 ORDER BY seq")
            .bind(after)
            .fetch_all(&self.pool)
            .await
            .map_err(q("read receipts"))?;
        rows.iter().map(Self::stored_from).collect()
    }

    async fn fill_receipt(&self, seq: i64, bytes: &[u8], signature: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE receipts SET body = $1, signature = $2 WHERE seq = $3 AND body IS NULL")
            .bind(bytes.to_vec())
            .bind(signature)
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(q("fill receipt"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_lock(&self, l: &LockRecord, now: DateTime<Utc>) -> Result<LockOutcome, StoreError> {
        // Each step is one atomic statement; a lost race re-reads and decides again.
        for _ in 0..5 {
            match self.lock_holder(&l.environment, &l.service).await? {
                None => {
                    if insert_lock(l).execute(&self.pool).await.map_err(q("take lock"))?.rows_affected() == 1 {
                        return Ok(LockOutcome::Taken);
                    }
                }
                Some(holder) if holder.expired(now) => {
                    // Compare-and-swap on the incarnation we saw: plan ids are single use.
                    let done = sqlx::query(
                        "UPDATE locks SET holder_user = $1, holder_host = $2, holder_pid = $3, holder_boot = $4,
                           plan_id = $5, since = $6, expires_at = $7
                         WHERE environment = $8 AND service = $9 AND plan_id = $10 AND expires_at <> '' AND expires_at < $11",
                    )
                    .bind(&l.holder_user)
                    .bind(&l.holder_host)
                    .bind(l.holder_pid)
                    .bind(&l.holder_boot)
                    .bind(&l.plan_id)
                    .bind(ts(&l.since))
                    .bind(l.expires_at.as_ref().map(ts).unwrap_or_default())
                    .bind(&l.environment)
                    .bind(&l.service)
                    .bind(&holder.plan_id)
                    .bind(ts(&now))
                    .execute(&self.pool)
                    .await
                    .map_err(q("take over lock"))?;
                    if done.rows_affected() == 1 {
                        return Ok(LockOutcome::TakenOver(holder));
                    }
                }
                Some(holder) => return Ok(LockOutcome::Held(holder)),
            }
        }
        match self.lock_holder(&l.environment, &l.service).await? {
            Some(holder) => Ok(LockOutcome::Held(holder)),
            None => Box::pin(self.try_lock(l, now)).await,
        }
    }

    async fn renew_lock(
        &self,
        environment: &str,
        service: &str,
        plan_id: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE locks SET expires_at = $1 WHERE environment = $2 AND service = $3 AND plan_id = $4")
                .bind(ts(&until))
                .bind(environment)
                .bind(service)
                .bind(plan_id)
                .execute(&self.pool)
                .await
                .map_err(q("renew lock"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn lock_holder(&self, environment: &str, service: &str) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM locks WHERE environment = $1 AND service = $2")
            .bind(environment)
            .bind(service)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read lock"))?;
        row.as_ref().map(Self::lock_from).transpose()
    }

    async fn unlock(&self, environment: &str, service: &str, plan_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM locks WHERE environment = $1 AND service = $2 AND plan_id = $3")
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
        sqlx::query("DELETE FROM locks WHERE environment = $1 AND service = $2")
            .bind(environment)
            .bind(service)
            .execute(&self.pool)
            .await
            .map_err(q("force unlock"))?;
        Ok(holder)
    }

    async fn append_history(&self, e: &HistoryEntry) -> Result<(), StoreError> {
        insert_history(e, false).execute(&self.pool).await.map_err(q("append history"))?;
        Ok(())
    }

    async fn history(&self, environment: &str, service: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM history WHERE environment = $1 AND service = $2 ORDER BY seq")
            .bind(environment)
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(q("read history"))?;
        rows.iter().map(Self::history_from).collect()
    }

    async fn record_plan(&self, plan_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = put_plan(plan_id, &at).execute(&self.pool).await.map_err(q("record plan"))?;
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
        put_rehearsal(environment, service, digest, receipt, &at)
            .execute(&self.pool)
            .await
            .map_err(q("record rehearsal"))?;
        Ok(())
    }

    async fn rehearsals(&self, service: &str, digest: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT environment, receipt FROM rehearsals WHERE service = $1 AND digest = $2 ORDER BY at")
                .bind(service)
                .bind(digest)
                .fetch_all(&self.pool)
                .await
                .map_err(q("read rehearsals"))?;
        rows.iter().map(|r| Ok((text(r, "environment")?, text(r, "receipt")?))).collect()
    }

    async fn approve(&self, a: &Approval) -> Result<(), StoreError> {
        // The latest approval of an approver for a plan replaces an earlier one (a renewed
        // approval after the first expired).
        put_approval(a).execute(&self.pool).await.map_err(q("approve"))?;
        Ok(())
    }

    async fn approvals(&self, plan_id: &str) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query("SELECT * FROM approvals WHERE plan_id = $1 ORDER BY approved_at, approver")
            .bind(plan_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list approvals"))?;
        rows.iter().map(Self::approval_from).collect()
    }

    async fn dump(&self) -> Result<StateDump, StoreError> {
        Ok(StateDump {
            releases: self
                .all("SELECT * FROM releases ORDER BY service, digest", "dump releases", Self::release_from)
                .await?,
            deployments: self
                .all(
                    "SELECT * FROM deployments ORDER BY environment, service, host",
                    "dump deployments",
                    Self::deployment_from,
                )
                .await?,
            applied_releases: self
                .all(
                    "SELECT * FROM applied_releases ORDER BY environment, service, release_id",
                    "dump applied releases",
                    Self::applied_from,
                )
                .await?,
            receipts: self.all("SELECT * FROM receipts ORDER BY seq", "dump receipts", Self::stored_from).await?,
            locks: self.all("SELECT * FROM locks ORDER BY environment, service", "dump locks", Self::lock_from).await?,
            approvals: self
                .all("SELECT * FROM approvals ORDER BY plan_id, approver", "dump approvals", Self::approval_from)
                .await?,
            history: self.all("SELECT * FROM history ORDER BY seq", "dump history", Self::history_from).await?,
            applied_plans: self
                .all("SELECT * FROM applied_plans ORDER BY plan_id", "dump applied plans", |r| {
                    Ok(AppliedPlan { plan_id: text(r, "plan_id")?, applied_at: time(r, "applied_at")? })
                })
                .await?,
            rehearsals: self
                .all("SELECT * FROM rehearsals ORDER BY environment, service, digest", "dump rehearsals", |r| {
                    Ok(Rehearsal {
                        environment: text(r, "environment")?,
                        service: text(r, "service")?,
                        digest: text(r, "digest")?,
                        receipt: text(r, "receipt")?,
                        at: time(r, "at")?,
                    })
                })
                .await?,
        })
    }

    async fn load(&self, d: &StateDump) -> Result<(), StoreError> {
        if !self.dump().await?.is_empty() {
            return Err(StoreError::NotEmpty(self.location.clone()));
        }
        // All or nothing: a failed load leaves the destination empty.
        let mut tx = self.pool.begin().await.map_err(q("begin load"))?;
        let load = q("load state");
        for r in &d.releases {
            put_release(r).execute(&mut *tx).await.map_err(q("load releases"))?;
        }
        for r in &d.deployments {
            put_deployment(r).execute(&mut *tx).await.map_err(q("load deployments"))?;
        }
        for r in &d.applied_releases {
            put_applied(r).execute(&mut *tx).await.map_err(q("load applied releases"))?;
        }
        for r in &d.receipts {
            insert_receipt(r).execute(&mut *tx).await.map_err(q("load receipts"))?;
        }
        for r in &d.locks {
            insert_lock(r).execute(&mut *tx).await.map_err(q("load locks"))?;
        }
        for r in &d.approvals {
            put_approval(r).execute(&mut *tx).await.map_err(q("load approvals"))?;
        }
        for r in &d.history {
            insert_history(r, true).execute(&mut *tx).await.map_err(q("load history"))?;
        }
        for r in &d.applied_plans {
            put_plan(&r.plan_id, &r.applied_at).execute(&mut *tx).await.map_err(q("load applied plans"))?;
        }
        for r in &d.rehearsals {
            put_rehearsal(&r.environment, &r.service, &r.digest, &r.receipt, &r.at)
                .execute(&mut *tx)
                .await
                .map_err(q("load rehearsals"))?;
        }
        if self.backend == Backend::Postgres {
            // Explicit sequence numbers do not move PostgreSQL's sequence: move it past them.
            sqlx::query("SELECT setval(pg_get_serial_sequence('history', 'seq'), COALESCE((SELECT MAX(seq) FROM history), 0) + 1, false)")
                .execute(&mut *tx)
                .await
                .map_err(q("advance the history sequence"))?;
        }
        tx.commit().await.map_err(load)?;
        Ok(())
    }
}
