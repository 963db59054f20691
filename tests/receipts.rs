//! Signed, hash-chained receipts: every tampering is caught and named; one receipt is
//! checked by an independent implementation (openssl); appends are safe under
//! concurrency and after a crash.

mod common;

use common::*;
use controlplane::keys::SigningKey;
use controlplane::receipt::{HostOutcome, Receipt, ReceiptBody, ReceiptKind, ReceiptRelease};
use controlplane::receipt_log::ReceiptLog;
use controlplane::store::{Location, SqlStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    fn init() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let out = Command::new(BIN).arg("init").arg(&dir).env_remove("AGENTCTL_RECEIPT_KEY_PASSWORD").output().unwrap();
        assert_ok(&out);
        Self { _tmp: tmp, dir }
    }

    fn receipts(&self) -> PathBuf {
        self.dir.join("receipts")
    }

    fn agentctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).arg("--manifests").arg(self.dir.join("manifests")).args(args).output().unwrap()
    }

    fn key(&self) -> SigningKey {
        SigningKey::load(&self.dir.join("state/receipt.key"), b"").unwrap()
    }

    async fn store(&self) -> SqlStore {
        SqlStore::open(&Location::Sqlite(self.dir.join("state/controlplane.db"))).await.unwrap()
    }

    async fn append(&self, n: u64) {
        let key = self.key();
        let store = self.store().await;
        let log = ReceiptLog::new(self.receipts());
        for i in 0..n {
            log.append(body(i), &key, &store).await.unwrap();
        }
    }
}

fn body(i: u64) -> ReceiptBody {
    let kind =
        [ReceiptKind::Apply, ReceiptKind::Rollback, ReceiptKind::Refusal, ReceiptKind::Approval][(i % 4) as usize];
    ReceiptBody {
        rollout: None,
        kind,
        time: format!("2026-11-23T12:{:02}:{:02}Z", (i / 60) % 60, i % 60),
        operator: "alice".into(),
        plan_id: Some(format!("sha256:{i:064x}")),
        environment: Some(if i.is_multiple_of(2) { "staging" } else { "prod" }.into()),
        service: Some("api".into()),
        release: Some(ReceiptRelease {
            repository: "127.0.0.1:5000/demo/api".into(),
            digest: format!("sha256:{:064x}", i + 1000),
            source_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            signer_key_id: "sha256:k".into(),
            provenance: None,
            sbom: None,
            signature: None,
            platform_digest: None,
            contents: None,
        }),
        hosts: vec![HostOutcome {
            host: "vm-1".into(),
            before: Some("r-a".into()),
            after: Some("r-b".into()),
            rollback_target: Some("r-a".into()),
            outcome: "changed".into(),
            detail: None,
        }],
        approvals: vec![],
        outcome: "succeeded".into(),
        detail: None,
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn restore(dir: &Path, snap: &BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, bytes) in snap {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn name_of(dir: &Path, seq: u64) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("{seq:06}-")) && n.ends_with(".json"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_is_caught_and_named() {
    let p = Project::init();
    p.append(120).await;
    let out = p.agentctl(&["receipts", "verify"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("120 receipt(s)"), "{}", stdout(&out));
    assert!(stdout(&out).contains("compared with the state store"));

    let dir = p.receipts();
    let snap = snapshot(&dir);
    let r50 = name_of(&dir, 50);
    let r51 = name_of(&dir, 51);
    let last = name_of(&dir, 120);
    let forged_key = SigningKey::generate().unwrap();

    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper, String)> = vec![
        (
            "edit one byte of a body",
            Box::new({
                let r50 = r50.clone();
                move |d: &Path| {
                    let mut b = std::fs::read(d.join(&r50)).unwrap();
                    let i = b.iter().position(|&c| c == b'a').unwrap();
                    b[i] = b'b';
                    std::fs::write(d.join(&r50), b).unwrap();
                }
            }),
            r50.clone(),
        ),
        (
            "replace a signature",
            Box::new({
                let (r50, r51) = (r50.clone(), r51.clone());
                move |d: &Path| {
                    std::fs::copy(d.join(format!("{r51}.sig")), d.join(format!("{r50}.sig"))).map(|_| ()).unwrap()
                }
            }),
            r50.clone(),
        ),
        (
            "delete a middle receipt",
            Box::new({
                let r50 = r50.clone();
                move |d: &Path| {
                    std::fs::remove_file(d.join(&r50)).unwrap();
                    std::fs::remove_file(d.join(format!("{r50}.sig"))).unwrap();
                }
            }),
            "000050-*.json".into(),
        ),
        (
            "delete the last receipt",
            Box::new({
                let last = last.clone();
                move |d: &Path| {
                    std::fs::remove_file(d.join(&last)).unwrap();
                    std::fs::remove_file(d.join(format!("{last}.sig"))).unwrap();
                }
            }),
            "000120-*.json".into(),
        ),
        (
            "swap two receipts",
            Box::new({
                let (r50, r51) = (r50.clone(), r51.clone());
                move |d: &Path| {
                    for ext in ["", ".sig"] {
                        let a = std::fs::read(d.join(format!("{r50}{ext}"))).unwrap();
                        let b = std::fs::read(d.join(format!("{r51}{ext}"))).unwrap();
                        std::fs::write(d.join(format!("{r50}{ext}")), b).unwrap();
                        std::fs::write(d.join(format!("{r51}{ext}")), a).unwrap();
                    }
                }
            }),
            r50.clone(),
        ),
        (
            "insert a receipt signed by another key",
            Box::new({
                let r50 = r50.clone();
                let key = forged_key;
                move |d: &Path| {
                    // A well-formed, correctly chained replacement: only the key gives it away.
                    let mut r: Receipt = serde_json::from_slice(&std::fs::read(d.join(&r50)).unwrap()).unwrap();
                    r.body.operator = "mallory".into();
                    let bytes = r.to_bytes();
                    std::fs::write(d.join(&r50), &bytes).unwrap();
                    std::fs::write(
                        d.join(format!("{r50}.sig")),
                        controlplane::receipt::signature_text(&key.sign(&bytes)),
                    )
                    .unwrap();
                }
            }),
            r50.clone(),
        ),
    ];
    for (what, tamper, named) in cases {
        restore(&dir, &snap);
        tamper(&dir);
        let out = p.agentctl(&["receipts", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{what}: must fail\n{}", stdout(&out));
        assert!(
            stdout(&out).contains(&format!("BAD  {named}")),
            "{what}: expected `{named}` named in:\n{}",
            stdout(&out)
        );
        // Auditors without the state store still see everything but a removed tail.
        let out = p.agentctl(&[
            "receipts",
            "verify",
            "--dir",
            dir.to_str().unwrap(),
            "--key",
            p.dir.join("manifests/trust/receipts.pub").to_str().unwrap(),
        ]);
        if what != "delete the last receipt" {
            assert_eq!(out.status.code(), Some(1), "{what} (offline): must fail\n{}", stdout(&out));
        }
    }
    restore(&dir, &snap);
    assert_ok(&p.agentctl(&["receipts", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_verifies_a_receipt_independently() {
    let p = Project::init();
    p.append(3).await;
    let dir = p.receipts();
    let name = name_of(&dir, 2);
    let sig_b64 = std::fs::read_to_string(dir.join(format!("{name}.sig"))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let der = tmp.path().join("sig.der");
    use base64::Engine as _;
    std::fs::write(&der, base64::engine::general_purpose::STANDARD.decode(sig_b64.trim()).unwrap()).unwrap();
    let verify = |file: &Path| {
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(p.dir.join("manifests/trust/receipts.pub"))
            .arg("-signature")
            .arg(&der)
            .arg(file)
            .output()
            .unwrap()
    };
    let out = verify(&dir.join(&name));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Verified OK"));
    // The README's own commands, exactly as written, from where it says to run them.
    let readme = std::fs::read_to_string(p.dir.join("receipts/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("openssl dgst"))
        .expect("the README shows the openssl check");
    let out = Command::new("sh")
        .arg("-ec")
        .arg(block.replace("000001-apply.json", &name))
        .current_dir(&p.dir)
        .output()
        .unwrap();
    assert!(out.status.success() && stdout(&out).contains("Verified OK"), "{}{}", stdout(&out), stderr(&out));
    // And openssl rejects an edited copy: the check is not vacuous.
    let edited = tmp.path().join("edited.json");
    let mut b = std::fs::read(dir.join(&name)).unwrap();
    b[5] ^= 1;
    std::fs::write(&edited, b).unwrap();
    assert!(!verify(&edited).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_never_share_a_sequence_number() {
    let p = Project::init();
    let key = std::sync::Arc::new(p.key());
    let mut tasks = Vec::new();
    for writer in 0..2 {
        let dir = p.receipts();
        let key = key.clone();
        let db = p.dir.join("state/controlplane.db");
        tasks.push(tokio::spawn(async move {
            let store = SqlStore::open(&Location::Sqlite(db)).await.unwrap();
            let log = ReceiptLog::new(dir);
            for i in 0..40 {
                log.append(body(writer * 100 + i), &key, &store).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = p.agentctl(&["receipts", "verify"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("80 receipt(s)"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_signature_and_receipt_leaves_a_verifiable_chain() {
    let p = Project::init();
    p.append(3).await;
    let dir = p.receipts();
    // What a crash after the `.sig` rename and before the receipt rename leaves behind.
    std::fs::write(dir.join("000004-apply.json.sig"), "MEUCIQ==").unwrap();
    std::fs::write(dir.join(".000004-apply.json.tmp"), "{\"half\":").unwrap();
    let out = p.agentctl(&["receipts", "verify"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("did not complete"), "{}", stdout(&out));
    p.append(2).await;
    let out = p.agentctl(&["receipts", "verify"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("5 receipt(s)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_show_and_report() {
    let p = Project::init();
    p.append(6).await;
    let out = p.agentctl(&["receipts", "list"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("6 receipt(s)"));
    let out = p.agentctl(&["receipts", "show", "3", "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seq"], 3);
    // A refusal whose detail holds Markdown code and markup.
    let mut refusal = body(6);
    refusal.detail = Some("the way back is broken: run `agentctl repair api` <script>".into());
    ReceiptLog::new(p.receipts()).append(refusal, &p.key(), &p.store().await).await.unwrap();
    let html = p.dir.join("report.html");
    assert_ok(&p.agentctl(&["receipts", "report", "--out", html.to_str().unwrap()]));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.contains("run <code>agentctl repair api</code> &lt;script&gt;"), "code rendered as code: {text}");
    assert!(!text.contains("<script>"), "markup from a receipt is escaped");
    assert!(text.contains("staging / api") && text.contains("prod / api"), "grouped per environment and service");
    assert!(text.contains("Every signature and every link of the chain verifies"));
    assert_exit(&p.agentctl(&["receipts", "show", "99"]), 2, "no receipt `99`");
}

/// What a version that kept receipt bytes only in the directory left in the store.
async fn forget_bytes(db: &Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("UPDATE receipts SET body = NULL, signature = NULL").execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_kept_only_in_the_directory_move_into_the_store_at_the_next_append() {
    let p = Project::init();
    p.append(3).await;
    let db = p.dir.join("state/controlplane.db");
    forget_bytes(&db).await;
    assert_exit(&p.agentctl(&["receipts", "verify", "--store"]), 1, "");
    p.append(1).await;
    let out = p.agentctl(&["receipts", "verify", "--store"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("4 receipt(s)"), "{}", stdout(&out));

    // An edited file is not adopted: the append fails, and the store is unchanged.
    forget_bytes(&db).await;
    let name = name_of(&p.receipts(), 2);
    let path = p.receipts().join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let store = p.store().await;
    let before = controlplane::store::Store::dump(&store).await.unwrap();
    let err = ReceiptLog::new(p.receipts()).append(body(9), &p.key(), &store).await.unwrap_err();
    assert!(err.to_string().contains(&name) || format!("{err:?}").contains("hash"), "{err}");
    assert_eq!(controlplane::store::Store::dump(&store).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_that_fell_behind_is_caught_up_by_the_next_append_and_export_keeps_evidence() {
    let p = Project::init();
    p.append(3).await;
    // The directory lost its last receipt (a failed write, a full disk): the store has it.
    let last = name_of(&p.receipts(), 3);
    std::fs::remove_file(p.receipts().join(&last)).unwrap();
    assert_exit(&p.agentctl(&["receipts", "verify"]), 1, "");
    p.append(1).await;
    let out = p.agentctl(&["receipts", "verify"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("4 receipt(s)"), "{}", stdout(&out));

    // Export into a directory holding an edited copy: the edit is named, never overwritten.
    let export = tempfile::tempdir().unwrap();
    let dir = export.path().display().to_string();
    assert_ok(&p.agentctl(&["receipts", "export", "--dir", &dir]));
    let edited = export.path().join(name_of(&p.receipts(), 2));
    let mut bytes = std::fs::read(&edited).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&edited, &bytes).unwrap();
    let out = p.agentctl(&["receipts", "export", "--dir", &dir]);
    assert_exit(&out, 1, "differ from the state store's chain");
    assert!(stderr(&out).contains(&name_of(&p.receipts(), 2)) || stdout(&out).contains(&name_of(&p.receipts(), 2)));
    assert_eq!(std::fs::read(&edited).unwrap(), bytes, "the edited file is kept as evidence");
}

/// A receipt-key rotation: receipts signed before it verify with the old public key,
/// those after with the new one; `--key` given twice checks the whole chain, and either
/// key alone names the receipts it cannot verify.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_signed_across_a_key_rotation_verifies_with_both_keys() {
    let p = Project::init();
    p.append(2).await;
    let old = p.dir.join("old-receipts.pub");
    std::fs::copy(p.dir.join("manifests/trust/receipts.pub"), &old).unwrap();
    // Rotate: a new pair where the manifests look for it.
    let new_key = SigningKey::generate().unwrap();
    std::fs::remove_file(p.dir.join("state/receipt.key")).unwrap();
    new_key.write_pair(&p.dir.join("state/receipt"), b"").unwrap();
    std::fs::rename(p.dir.join("state/receipt.pub"), p.dir.join("manifests/trust/receipts.pub")).unwrap();
    p.append(2).await;
    let new = p.dir.join("manifests/trust/receipts.pub");
    let dir = p.receipts();
    let verify = |keys: &[&Path]| {
        let mut args = vec!["receipts", "verify", "--dir", dir.to_str().unwrap()];
        for k in keys {
            args.extend(["--key", k.to_str().unwrap()]);
        }
        p.agentctl(&args)
    };
    let out = verify(&[&old, &new]);
    assert_ok(&out);
    assert!(stdout(&out).contains("ok: 4 receipt(s)"), "{}", stdout(&out));
    let out = verify(&[&new]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("BAD  {}", name_of(&dir, 1))), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&format!("BAD  {}", name_of(&dir, 3))), "{}", stdout(&out));
    let out = verify(&[&old]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("BAD  {}", name_of(&dir, 3))), "{}", stdout(&out));
}
