//! One store test suite, run against both backends: SQLite in a temporary directory and
//! a real PostgreSQL server started by the test (`lab::postgres`, Debian's package).

use chrono::{DateTime, Utc};
use controlplane::release::ReleaseFacts;
use controlplane::store::*;
use lab::postgres::{self, Postgres};
use std::sync::Arc;

/// A store under test and what keeps it alive.
struct Backend {
    location: Location,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<Postgres>,
}

impl Backend {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self { location: Location::Sqlite(dir.path().join("state/cp.db")), _sqlite: Some(dir), _postgres: None }
    }

    fn postgres() -> Self {
        let pg = Postgres::start().unwrap();
        pg.create_database("controlplane").unwrap();
        let location =
            Location::Postgres { url: pg.url("controlplane"), password: Some(postgres::PASSWORD.to_owned()) };
        Self { location, _sqlite: None, _postgres: Some(pg) }
    }

    async fn open(&self) -> SqlStore {
        SqlStore::open(&self.location).await.unwrap()
    }
}

/// Runs each suite function once per backend, as its own test.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::sqlite()).await })*
        }
        mod postgresql {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::postgres()).await })*
        }
    };
}

on_both!(
    round_trips_every_table,
    concurrent_appends_from_several_control_planes_keep_one_chain,
    a_lock_is_a_lease_taken_over_only_after_it_expires,
    a_holder_whose_lease_was_taken_over_writes_nothing,
    concurrent_lockers_have_exactly_one_winner,
    a_read_only_store_refuses_every_write,
    dump_and_load_keep_every_row,
);

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 123_000).unwrap()
}

fn receipt_maker(seq: u64, previous: Option<String>, writer: &str) -> StoredReceipt {
    let bytes = format!("{{\"seq\":{seq},\"previous\":{previous:?},\"writer\":\"{writer}\"}}").into_bytes();
    StoredReceipt {
        index: ReceiptIndexEntry {
            seq: seq as i64,
            kind: "apply".into(),
            file: format!("{seq:06}-apply.json"),
            sha256: controlplane::receipt::hash(&bytes),
            plan_id: Some("p-1".into()),
            environment: Some("prod".into()),
            service: None,
            created_at: t(seq as i64),
        },
        bytes,
        signature: format!("sig-{seq}"),
    }
}

fn lock(user: &str, plan: &str, since: DateTime<Utc>, lease_secs: i64) -> LockRecord {
    LockRecord {
        environment: "prod".into(),
        service: "api".into(),
        holder_user: user.into(),
        holder_host: "laptop".into(),
        holder_pid: 42,
        holder_boot: "boot-1".into(),
        plan_id: plan.into(),
        since,
        expires_at: Some(since + chrono::Duration::seconds(lease_secs)),
    }
}

async fn round_trips_every_table(b: Backend) {
    let store = b.open().await;
    let rel = ReleaseRecord {
        service: "api".into(),
        facts: ReleaseFacts {
            digest: format!("sha256:{}", "a".repeat(64)),
            repository: "127.0.0.1:5000/demo/api".into(),
            source_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            signer_key_id: "sha256:k".into(),
            provenance: Some("sha256:p".into()),
            sbom: None,
            signature: None,
            contents: None,
            platform_digest: Some(format!("sha256:{}", "b".repeat(64))),
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

    let first = store.append_receipt(&|seq, prev| receipt_maker(seq, prev, "a")).await.unwrap();
    assert_eq!(first.index.seq, 1);
    let second = store.append_receipt(&|seq, prev| receipt_maker(seq, prev, "a")).await.unwrap();
    assert_eq!(second.index.seq, 2);
    assert!(String::from_utf8_lossy(&second.bytes).contains(&first.index.sha256), "chained to the first");
    assert_eq!(store.stored_receipts(0).await.unwrap(), vec![first.clone(), second.clone()]);
    assert_eq!(store.stored_receipts(1).await.unwrap(), vec![second.clone()]);
    assert_eq!(store.receipts().await.unwrap(), vec![first.index.clone(), second.index.clone()]);
    assert_eq!(store.receipt_head().await.unwrap(), Some(second.index.clone()));
    // A maker that claims another number is refused, not stored.
    assert!(matches!(
        store.append_receipt(&|_, prev| receipt_maker(7, prev, "a")).await,
        Err(StoreError::SequenceTaken(7))
    ));
    assert_eq!(store.receipts().await.unwrap().len(), 2);

    let l = lock("alice", "p-1", t(4), 60);
    assert_eq!(store.try_lock(&l, t(4)).await.unwrap(), LockOutcome::Taken);
    assert_eq!(store.lock_holder("prod", "api").await.unwrap(), Some(l.clone()));
    assert!(!store.unlock("prod", "api", "p-2").await.unwrap());
    assert!(store.unlock("prod", "api", "p-1").await.unwrap());
    let legacy = LockRecord { expires_at: None, ..l.clone() };
    assert_eq!(store.try_lock(&legacy, t(5)).await.unwrap(), LockOutcome::Taken);
    assert_eq!(store.lock_holder("prod", "api").await.unwrap(), Some(legacy.clone()));
    assert_eq!(
        store.try_lock(&lock("bob", "p-2", t(9_999), 60), t(9_999)).await.unwrap(),
        LockOutcome::Held(legacy.clone()),
        "a lock without a lease never expires"
    );
    assert_eq!(store.force_unlock("prod", "api").await.unwrap(), Some(legacy));
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
            signature: None,
            contents: None,
            platform_digest: Some(format!("sha256:{}", "c".repeat(64))),
        },
        applied_at: t(6),
        files: None,
    };
    store.put_applied_release(&applied).await.unwrap();
    assert_eq!(store.applied_release("prod", "api", "r-1").await.unwrap(), Some(applied.clone()));
    // A later write of the same release keeps what was recorded, and adds the files that
    // were not kept yet (an adopted release promoted later).
    let files = std::collections::BTreeMap::from([("config/api.env".to_owned(), "UE9SVD0xCg==".to_owned())]);
    let again = AppliedRelease { files: Some(files.clone()), content_hash: "other".into(), ..applied.clone() };
    store.put_applied_release(&again).await.unwrap();
    let kept = store.applied_release("prod", "api", "r-1").await.unwrap().unwrap();
    assert_eq!((kept.content_hash.as_str(), kept.files.as_ref()), ("h", Some(&files)));
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

    store.put_rehearsal("staging", "api", "d", "000002-rehearsal.json", t(9)).await.unwrap();
    store.put_rehearsal("staging", "api", "d", "000003-rehearsal.json", t(10)).await.unwrap();
    assert_eq!(
        store.rehearsals("api", "d").await.unwrap(),
        [("staging".to_owned(), "000003-rehearsal.json".to_owned())]
    );

    let a = Approval {
        plan_id: "p-1".into(),
        approver: "carol".into(),
        approved_at: t(5),
        statement: "{}".into(),
        signature: "sig".into(),
    };
    store.approve(&a).await.unwrap();
    let renewed = Approval { approved_at: t(6), ..a.clone() };
    store.approve(&renewed).await.unwrap();
    assert_eq!(store.approvals("p-1").await.unwrap(), vec![renewed]);

    // Reopening keeps everything (the migrations are not re-run destructively).
    store.close().await;
    let again = b.open().await;
    assert_eq!(again.releases("api").await.unwrap(), vec![rel]);
    assert_eq!(again.receipt_head().await.unwrap(), Some(second.index));
}

async fn concurrent_appends_from_several_control_planes_keep_one_chain(b: Backend) {
    // Four stores (four pools, as four control planes would have) appending at once.
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = Arc::new(b.open().await);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let name = format!("w{writer}");
                store.append_receipt(&|seq, prev| receipt_maker(seq, prev, &name)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = b.open().await.stored_receipts(0).await.unwrap();
    assert_eq!(all.iter().map(|r| r.index.seq).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    let mut previous: Option<String> = None;
    for r in &all {
        // Each receipt names the hash of the one before it: no fork, no gap.
        let text = String::from_utf8_lossy(&r.bytes);
        assert!(text.contains(&format!("\"previous\":{previous:?}")), "receipt {} does not chain: {text}", r.index.seq);
        assert_eq!(r.index.sha256, controlplane::receipt::hash(&r.bytes));
        previous = Some(r.index.sha256.clone());
    }
    let writers: std::collections::BTreeSet<_> =
        all.iter().map(|r| String::from_utf8_lossy(&r.bytes).split("writer").nth(1).unwrap().to_owned()).collect();
    assert_eq!(writers.len(), 4, "every writer appended");
}

async fn a_lock_is_a_lease_taken_over_only_after_it_expires(b: Backend) {
    let store = b.open().await;
    let alice = lock("alice", "p-1", t(0), 30);
    assert_eq!(store.try_lock(&alice, t(0)).await.unwrap(), LockOutcome::Taken);
    let bob = |at| lock("bob", "p-2", at, 30);
    // Within the lease: held, whoever asks.
    assert_eq!(store.try_lock(&bob(t(29)), t(29)).await.unwrap(), LockOutcome::Held(alice.clone()));
    // The holder renews: the lease moves on.
    assert!(store.renew_lock("prod", "api", "p-1", t(55)).await.unwrap());
    assert_eq!(
        store.try_lock(&bob(t(45)), t(45)).await.unwrap(),
        LockOutcome::Held(LockRecord { expires_at: Some(t(55)), ..alice.clone() })
    );
    // Past the lease: taken over, naming the previous holder.
    let outcome = store.try_lock(&bob(t(56)), t(56)).await.unwrap();
    assert_eq!(outcome, LockOutcome::TakenOver(LockRecord { expires_at: Some(t(55)), ..alice }));
    assert_eq!(store.lock_holder("prod", "api").await.unwrap(), Some(bob(t(56))));
    // The old holder finds out at its next renewal, and cannot release the new holder's lock.
    assert!(!store.renew_lock("prod", "api", "p-1", t(80)).await.unwrap());
    assert!(!store.unlock("prod", "api", "p-1").await.unwrap());
    assert!(store.unlock("prod", "api", "p-2").await.unwrap());
}

/// Writes under a lock carry its holder's plan as a fencing token: once the lease was
/// taken over, the old holder's writes are refused whole (nothing of them lands), the new
/// holder's go through, and a released lock fences everyone.
async fn a_holder_whose_lease_was_taken_over_writes_nothing(b: Backend) {
    let store = b.open().await;
    let fence = |plan: &str| Fence { environment: "prod".into(), service: "api".into(), plan_id: plan.into() };
    let deployment = |release: &str, plan: &str| DeploymentRecord {
        environment: "prod".into(),
        service: "api".into(),
        host: "vm-1".into(),
        release_id: release.into(),
        digest: "d".into(),
        source_commit: "c".into(),
        content_hash: "h".into(),
        rollback_target: None,
        plan_id: plan.into(),
        updated_at: t(1),
    };
    let history = |release: &str, plan: &str| HistoryEntry {
        environment: "prod".into(),
        service: "api".into(),
        host: "vm-1".into(),
        seq: 0,
        release_id: release.into(),
        kind: "promote".into(),
        plan_id: plan.into(),
        at: t(1),
    };
    assert_eq!(store.try_lock(&lock("alice", "p-1", t(0), 30), t(0)).await.unwrap(), LockOutcome::Taken);
    let (d1, h1) = (deployment("r-1", "p-1"), history("r-1", "p-1"));
    store.fenced(&fence("p-1"), &[Write::Deployment(&d1), Write::History(&h1)]).await.unwrap();

    // Alice stalls past her lease; Bob takes the lock over.
    assert!(matches!(store.try_lock(&lock("bob", "p-2", t(40), 30), t(40)).await.unwrap(), LockOutcome::TakenOver(_)));
    let (d2, h2) = (deployment("r-2", "p-1"), history("r-2", "p-1"));
    let err = store.fenced(&fence("p-1"), &[Write::Deployment(&d2), Write::History(&h2)]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced { plan_id, holder: Some(h), .. } if plan_id == "p-1" && h == "p-2"),
        "{err:?}"
    );
    assert_eq!(store.deployments("prod", "api").await.unwrap(), vec![d1.clone()], "nothing of the write landed");
    assert_eq!(store.history("prod", "api").await.unwrap().len(), 1);

    let (d3, h3) = (deployment("r-3", "p-2"), history("r-3", "p-2"));
    store.fenced(&fence("p-2"), &[Write::Deployment(&d3), Write::History(&h3)]).await.unwrap();
    assert_eq!(store.deployments("prod", "api").await.unwrap(), vec![d3]);
    assert!(store.unlock("prod", "api", "p-2").await.unwrap());
    let err = store.fenced(&fence("p-2"), &[Write::Deployment(&d1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { holder: None, .. }), "{err:?}");
}

async fn concurrent_lockers_have_exactly_one_winner(b: Backend) {
    let stale = lock("dead", "p-0", t(0), 1);
    b.open().await.try_lock(&stale, t(0)).await.unwrap();
    // Eight control planes race for an expired lease: one takes it over, the others see it held.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = b.open().await;
        tasks.push(tokio::spawn(async move {
            store.try_lock(&lock(&format!("cp{i}"), &format!("p-{}", i + 1), t(100), 30), t(100)).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let winners: Vec<_> = outcomes.iter().filter(|o| matches!(o, LockOutcome::TakenOver(_))).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(matches!(winners[0], LockOutcome::TakenOver(prev) if prev.holder_user == "dead"));
    let holder = b.open().await.lock_holder("prod", "api").await.unwrap().unwrap();
    for o in &outcomes {
        if let LockOutcome::Held(h) = o {
            assert_eq!(h, &holder, "the losers name the winner");
        }
    }
}

async fn a_read_only_store_refuses_every_write(b: Backend) {
    let store = b.open().await;
    store.append_receipt(&|seq, prev| receipt_maker(seq, prev, "a")).await.unwrap();
    let before = store.dump().await.unwrap();
    let ro = SqlStore::open_read_only(&b.location).await.unwrap().expect("the state exists");
    assert_eq!(ro.dump().await.unwrap(), before, "reads work");
    assert!(ro.append_receipt(&|seq, prev| receipt_maker(seq, prev, "ro")).await.is_err());
    assert!(ro.try_lock(&lock("ro", "p-9", t(0), 30), t(0)).await.is_err());
    assert!(ro.record_plan("p-9", t(0)).await.is_err());
    assert_eq!(store.dump().await.unwrap(), before, "nothing changed");
}

async fn dump_and_load_keep_every_row(b: Backend) {
    // Fill a SQLite store, load it into the backend under test, and back.
    let src_dir = tempfile::tempdir().unwrap();
    let src = SqlStore::open(&Location::Sqlite(src_dir.path().join("src.db"))).await.unwrap();
    for i in 0..5 {
        src.append_receipt(&|seq, prev| receipt_maker(seq, prev, "a")).await.unwrap();
        src.append_history(&HistoryEntry {
            environment: "prod".into(),
            service: "api".into(),
            host: format!("vm-{i}"),
            seq: 0,
            release_id: "r-1".into(),
            kind: "promote".into(),
            plan_id: "p-1".into(),
            at: t(i),
        })
        .await
        .unwrap();
    }
    src.try_lock(&lock("alice", "p-1", t(0), 30), t(0)).await.unwrap();
    src.record_plan("p-1", t(1)).await.unwrap();
    src.put_rehearsal("staging", "api", "d", "000002-rehearsal.json", t(2)).await.unwrap();
    let dump = src.dump().await.unwrap();

    let dst = b.open().await;
    dst.load(&dump).await.unwrap();
    assert_eq!(dst.dump().await.unwrap().differences(&dump), Vec::<String>::new());
    // A loaded store goes on where the source stopped: the next numbers follow.
    dst.append_history(&HistoryEntry { host: "vm-9".into(), ..dump.history[0].clone() }).await.unwrap();
    assert_eq!(dst.history("prod", "api").await.unwrap().last().unwrap().seq, 6);
    assert_eq!(dst.append_receipt(&|seq, prev| receipt_maker(seq, prev, "b")).await.unwrap().index.seq, 6);
    // Loading into a store that is not empty is refused and changes nothing.
    let before = dst.dump().await.unwrap();
    assert!(matches!(dst.load(&dump).await, Err(StoreError::NotEmpty(_))));
    assert_eq!(dst.dump().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_over_tls_verifies_the_server_with_the_settings_in_the_url() {
    let pg = Postgres::start_tls().unwrap();
    let ca = pg.ca().unwrap().display().to_string();
    let at = |query: &str| Location::Postgres {
        url: format!("postgres://postgres@127.0.0.1:{}/postgres?{query}", pg.port()),
        password: Some(postgres::PASSWORD.to_owned()),
    };
    // The TLS settings in the URL reach the driver: the server is verified against the CA.
    let store = SqlStore::open(&at(&format!("sslmode=verify-full&sslrootcert={ca}"))).await.unwrap();
    store.append_receipt(&|seq, prev| receipt_maker(seq, prev, "tls")).await.unwrap();
    assert_eq!(store.receipts().await.unwrap().len(), 1);
    // Without TLS the server refuses the connection (hostssl only) ...
    assert!(SqlStore::open(&at("sslmode=disable")).await.is_err());
    // ... and with TLS but without trusting its CA, the client refuses the server.
    let err = SqlStore::open(&at("sslmode=verify-full")).await.unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate") || format!("{err:?}").contains("Tls"), "{err:?}");
}

/// Reads never migrate a shared PostgreSQL: on an empty database a read-only open finds "no
/// state yet" and leaves it without a single table; once the owner has migrated it, a role
/// that may only SELECT reads everything through the read-only open (a read that tried to
/// migrate would need CREATE, which it does not have).
#[tokio::test(flavor = "multi_thread")]
async fn reads_never_migrate_a_shared_postgresql() {
    let pg = Postgres::start().unwrap();
    pg.create_database("shared").unwrap();
    let owner = Location::Postgres { url: pg.url("shared"), password: Some(postgres::PASSWORD.to_owned()) };
    let admin = format!("postgres://postgres:{}@127.0.0.1:{}/shared", postgres::PASSWORD, pg.port());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    let tables = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(SqlStore::open_read_only(&owner).await.unwrap().is_none(), "an empty database is no state yet");
    assert_eq!(tables().await, 0, "the read created nothing");

    let store = SqlStore::open(&owner).await.unwrap();
    store.append_receipt(&|seq, prev| receipt_maker(seq, prev, "owner")).await.unwrap();
    for sql in [
        "CREATE ROLE reader LOGIN PASSWORD 'reader-password'",
        "GRANT CONNECT ON DATABASE shared TO reader",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        "GRANT USAGE ON SCHEMA public TO reader",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let before = tables().await;
    let reader = Location::Postgres {
        url: format!("postgres://reader@127.0.0.1:{}/shared", pg.port()),
        password: Some("reader-password".to_owned()),
    };
    let ro = SqlStore::open_read_only(&reader).await.unwrap().expect("the state exists");
    assert_eq!(ro.dump().await.unwrap(), store.dump().await.unwrap(), "the SELECT-only role reads everything");
    assert!(ro.append_receipt(&|seq, prev| receipt_maker(seq, prev, "reader")).await.is_err());
    assert_eq!(tables().await, before, "nothing was created by the reads");
    pool.close().await;
}
