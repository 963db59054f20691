//! Receipts: one canonical, signed JSON document per apply, rollback, refusal, approval
//! or lock override, each naming the sha256 of the one before it. Pure: building,
//! encoding and checking a chain; the files are read and written by `receipt_log`.

use crate::canonical;
use crate::untrusted::HostText;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// What a receipt records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptKind {
    Apply,
    Rollback,
    Refusal,
    Approval,
    LockOverride,
    /// A release was promoted, rolled back and promoted again in an environment.
    Rehearsal,
    /// The watch saw a target leave `in-sync` (or change how it is out of sync).
    Drift,
    /// `prove egress`: what each host's workload could and could not reach.
    EgressProof,
    /// `adopt`: a live release with no record, verified and recorded as its host's release.
    Adoption,
    /// `host forget`: a host's recorded history retired (re-imaged or replaced).
    HostForget,
    /// `repair`: a host's recorded release staged again from the recorded files.
    Repair,
    /// `prove ENV`: whether an environment meets the production controls, each re-derived.
    Readiness,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Rollback => "rollback",
            Self::Refusal => "refusal",
            Self::Approval => "approval",
            Self::LockOverride => "lock-override",
            Self::Rehearsal => "rehearsal",
            Self::Drift => "drift",
            Self::EgressProof => "egress-proof",
            Self::Adoption => "adoption",
            Self::HostForget => "host-forget",
            Self::Repair => "repair",
            Self::Readiness => "readiness",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Apply,
            Self::Rollback,
            Self::Refusal,
            Self::Approval,
            Self::LockOverride,
            Self::Rehearsal,
            Self::Drift,
            Self::EgressProof,
            Self::Adoption,
            Self::HostForget,
            Self::Repair,
            Self::Readiness,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The release a receipt is about: [`ReleaseFacts`]. Secret values have no field there:
/// services carry secret *names* only, and those are not needed to audit a deployment.
pub use crate::release::ReleaseFacts as ReceiptRelease;

/// What happened on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOutcome {
    pub host: String,
    /// Release id live before, and after.
    pub before: Option<String>,
    pub after: Option<String>,
    pub rollback_target: Option<String>,
    /// `changed`, `unchanged`, `rolled-back`, `failed`, `untouched`.
    pub outcome: String,
    /// What the host said, sanitized (`HostText`): never raw host output.
    pub detail: Option<HostText>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub approver: String,
    pub at: String,
    /// The signed statement (`approval::Statement` bytes) and its SSH signature, so an
    /// auditor checks it with `ssh-keygen -Y verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Everything a receipt says except its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    pub kind: ReceiptKind,
    /// RFC 3339, UTC.
    pub time: String,
    pub operator: String,
    pub plan_id: Option<String>,
    pub environment: Option<String>,
    pub service: Option<String>,
    pub release: Option<ReceiptRelease>,
    pub hosts: Vec<HostOutcome>,
    pub approvals: Vec<ApprovalRecord>,
    /// `succeeded`, `failed`, `refused`, `recorded`, `paused`, `halted`, ….
    pub outcome: String,
    pub detail: Option<String>,
    /// A rollout's canary proof: soaks, the failure budget, a pause (absent otherwise, so
    /// receipts written before these existed keep their bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRecord>,
}

/// What a receipt records of a rollout's soaks, failure budget and pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RolloutRecord {
    /// Each host's soak, in the order they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soak: Vec<crate::soak::SoakRecord>,
    /// With a failure budget: how many hosts failed, and how many may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<FailureBudget>,
    /// The rollout paused after this batch (1: the canary); `agentctl resume` continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_after: Option<usize>,
    /// Batches in the plan.
    pub batches: usize,
    /// A resumed run: the receipt of the pause it continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

/// Hosts that failed against the plan's failure budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureBudget {
    pub failed: usize,
    pub max: usize,
}

/// A receipt as stored: the body, its sequence number and the hash of its predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub seq: u64,
    /// `sha256:<hex>` of the previous receipt file's bytes; `None` for the first.
    pub previous: Option<String>,
    pub controlplane_version: String,
    #[serde(flatten)]
    pub body: ReceiptBody,
}

impl Receipt {
    /// `000042-apply.json`.
    pub fn file_name(&self) -> String {
        file_name(self.seq, self.body.kind)
    }

    /// The file's bytes: canonical JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        canonical::to_canonical(self).expect("receipts hold no floats")
    }
}

pub fn file_name(seq: u64, kind: ReceiptKind) -> String {
    format!("{seq:06}-{}.json", kind.as_str())
}

/// `sha256:<hex>` of `bytes`.
pub fn hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The detached signature file's content for receipt bytes: base64 DER, as
/// `cosign sign-blob` writes and `cosign verify-blob` reads.
pub fn signature_text(sig_der: &[u8]) -> String {
    B64.encode(sig_der)
}

/// A receipt file as found on disk.
#[derive(Debug, Clone)]
pub struct ReceiptFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// The `.sig` file's content, if there is one.
    pub signature: Option<Vec<u8>>,
}

impl From<crate::records::StoredReceipt> for ReceiptFile {
    /// A receipt of the chain in the store, as the chain check reads files.
    fn from(r: crate::records::StoredReceipt) -> Self {
        Self {
            name: r.index.file,
            bytes: r.bytes,
            signature: (!r.signature.is_empty()).then(|| r.signature.into_bytes()),
        }
    }
}

/// One thing wrong with a chain, naming the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    pub receipt: String,
    pub problem: String,
}

/// The outcome of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub receipts: usize,
    pub last_seq: u64,
    pub head: Option<String>,
    pub problems: Vec<ChainProblem>,
    /// `.sig` files of an append that crashed before its receipt landed (harmless).
    pub incomplete: Vec<String>,
    /// The receipts whose own signature and form verified, in file order.
    #[serde(skip)]
    pub verified: Vec<Receipt>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a detached signature over exact bytes: the receipt key's public half. The
/// cryptography lives at the edge (`controlplane::keys`); the chain logic here is pure.
pub trait SignatureCheck: Sync {
    fn verify(&self, msg: &[u8], signature: &[u8]) -> bool;
}

/// A chain signed across a receipt-key rotation: a signature holds when any of the keys
/// verifies it (`receipts verify --key old.pub --key new.pub`).
impl<T: SignatureCheck> SignatureCheck for Vec<T> {
    fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        self.iter().any(|k| k.verify(msg, signature))
    }
}

/// The state store's view of the chain head, when it is available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHead {
    pub seq: u64,
    pub sha256: String,
}

/// Checks every signature and link of a receipts directory's content. `files` are the
/// `.json` receipts; `orphan_signatures` are `.sig` files without one.
pub fn verify_chain(
    files: &[ReceiptFile],
    orphan_signatures: &[String],
    key: &dyn SignatureCheck,
    store_head: Option<&StoreHead>,
) -> ChainReport {
    let checked = check_files(files, key);
    let problem = |receipt: &str, problem: String| ChainProblem { receipt: receipt.to_owned(), problem };
    let mut problems: Vec<ChainProblem> = Vec::new();
    // Sequence number -> indexes of the files that claim it (by name).
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        match seq_of(&f.name) {
            Some(seq) => by_seq.entry(seq).or_default().push(i),
            None => problems.push(problem(&f.name, "not a receipt file name".into())),
        }
        if let Err(p) = &checked[i].receipt {
            problems.push(problem(&f.name, p.clone()));
        }
    }
    let last_seq = by_seq.keys().next_back().copied().unwrap_or(0);
    for seq in 1..=last_seq {
        match by_seq.get(&seq).map(Vec::as_slice) {
            None => problems.push(problem(
                &file_name_any(seq),
                format!("receipt {seq} is missing (deleted?); the chain runs to {last_seq}"),
            )),
            Some([_]) => {}
            Some(many) => {
                let names: Vec<_> = many.iter().map(|&i| files[i].name.as_str()).collect();
                problems
                    .push(problem(&names.join(", "), format!("{} receipts claim sequence number {seq}", many.len())));
            }
        }
    }
    // Links: each receipt names the hash of the file with the sequence number before it.
    for (&seq, idx) in &by_seq {
        let Some(Ok(r)) = idx.first().map(|&i| &checked[i].receipt) else { continue };
        let expected = if seq == 1 {
            None
        } else {
            match by_seq.get(&(seq - 1)) {
                Some(prev) => Some(checked[prev[0]].hash.clone()),
                None => continue, // already reported as missing
            }
        };
        if r.previous != expected {
            let what = match (&r.previous, &expected) {
                (None, Some(_)) => "claims to be the first receipt, but is not".to_owned(),
                (Some(_), None) => "names a predecessor, but is the first receipt".to_owned(),
                _ => format!(
                    "names previous hash `{}`, but receipt {} hashes to `{}` (reordered, replaced or inserted?)",
                    r.previous.clone().unwrap_or_default(),
                    seq - 1,
                    expected.clone().unwrap_or_default()
                ),
            };
            problems.push(problem(&files[idx[0]].name, what));
        }
    }
    let head = by_seq.get(&last_seq).map(|idx| checked[idx[0]].hash.clone());
    if let Some(h) = store_head {
        if h.seq > last_seq {
            problems.push(problem(&file_name_any(h.seq), format!("the state store's chain head is receipt {}, but the directory ends at {last_seq} (receipts removed from the tail?)", h.seq)));
        } else if h.seq < last_seq {
            problems.push(problem(&file_name_any(last_seq), format!("the directory runs to receipt {last_seq}, but the state store's head is {} (receipts not recorded by the control plane?)", h.seq)));
        } else if head.as_deref() != Some(h.sha256.as_str()) {
            problems.push(problem(
                &file_name_any(last_seq),
                "the last receipt's hash differs from the state store's chain head (replaced?)".into(),
            ));
        }
    }
    let incomplete: Vec<String> =
        orphan_signatures.iter().filter(|s| seq_of(s).is_some_and(|n| n > last_seq)).cloned().collect();
    for s in orphan_signatures.iter().filter(|s| !incomplete.contains(s)) {
        problems.push(problem(s, "a signature without its receipt (receipt deleted?)".into()));
    }
    problems.sort_by(|a, b| a.receipt.cmp(&b.receipt).then(a.problem.cmp(&b.problem)));
    problems.dedup();
    let verified = checked.into_iter().filter_map(|c| c.receipt.ok()).collect();
    ChainReport { receipts: files.len(), last_seq, head, problems, incomplete, verified }
}

fn file_name_any(seq: u64) -> String {
    format!("{seq:06}-*.json")
}

/// One file checked on its own.
struct Checked {
    receipt: Result<Receipt, String>,
    hash: String,
}

/// Signature, format and name checks and the hash of each file, on every core:
/// signature verification dominates the cost of checking a long chain.
fn check_files(files: &[ReceiptFile], key: &dyn SignatureCheck) -> Vec<Checked> {
    let check = |f: &ReceiptFile| Checked { receipt: verify_one(f, key), hash: hash(&f.bytes) };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || files.len() < 64 {
        return files.iter().map(check).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            files.chunks(chunk).map(|c| s.spawn(move || c.iter().map(check).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("verification threads do not panic")).collect()
    })
}

/// Checks one receipt: signature over the exact bytes, canonical form, name = content.
pub fn verify_one(f: &ReceiptFile, key: &dyn SignatureCheck) -> Result<Receipt, String> {
    let Some(sig) = &f.signature else { return Err("no signature file".into()) };
    let sig = B64.decode(String::from_utf8_lossy(sig).trim()).map_err(|_| "signature file is not base64".to_owned())?;
    if !key.verify(&f.bytes, &sig) {
        return Err("signature does not verify with the receipt key (edited, re-signed or forged)".into());
    }
    let r: Receipt = serde_json::from_slice(&f.bytes).map_err(|e| format!("not a receipt: {e}"))?;
    if r.to_bytes() != f.bytes {
        return Err("not in canonical form".into());
    }
    if r.file_name() != f.name {
        return Err(format!(
            "is receipt {} of kind `{}`, not what its file name says (renamed or swapped?)",
            r.seq,
            r.body.kind.as_str()
        ));
    }
    Ok(r)
}

/// The sequence number a receipt or signature file name starts with.
pub fn seq_of(name: &str) -> Option<u64> {
    let digits = name.split('-').next()?;
    (digits.len() == 6).then(|| digits.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in signature scheme for the chain logic: `sha256(secret || msg)`. The real
    /// ECDSA keys are tested with this chain in `controlplane::keys`.
    struct SigningKey(u8);

    impl SigningKey {
        fn generate() -> Result<Self, ()> {
            Ok(Self(7))
        }
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            Sha256::new().chain_update([self.0]).chain_update(msg).finalize().to_vec()
        }
        fn public(&self) -> &Self {
            self
        }
    }

    impl SignatureCheck for SigningKey {
        fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
            self.sign(msg) == signature
        }
    }

    fn body(kind: ReceiptKind, n: u64) -> ReceiptBody {
        ReceiptBody {
            rollout: None,
            kind,
            time: format!("2026-11-23T10:00:{:02}Z", n % 60),
            operator: "alice".into(),
            plan_id: Some(format!("p-{n}")),
            environment: Some("prod".into()),
            service: Some("api".into()),
            release: Some(ReceiptRelease { digest: format!("sha256:{n:064}"), ..Default::default() }),
            hosts: vec![HostOutcome {
                host: "vm-1".into(),
                before: Some("r-0".into()),
                after: Some("r-1".into()),
                rollback_target: Some("r-0".into()),
                outcome: "changed".into(),
                detail: None,
            }],
            approvals: vec![],
            outcome: "succeeded".into(),
            detail: None,
        }
    }

    /// A valid chain of `n` receipts.
    fn chain(key: &SigningKey, n: u64) -> Vec<ReceiptFile> {
        let mut out: Vec<ReceiptFile> = Vec::new();
        for seq in 1..=n {
            let r = Receipt {
                seq,
                previous: out.last().map(|p| hash(&p.bytes)),
                controlplane_version: "0.1.0".into(),
                body: body(ReceiptKind::Apply, seq),
            };
            let bytes = r.to_bytes();
            let signature = Some(signature_text(&key.sign(&bytes)).into_bytes());
            out.push(ReceiptFile { name: r.file_name(), bytes, signature });
        }
        out
    }

    fn check(files: &[ReceiptFile], key: &SigningKey, head: Option<&StoreHead>) -> ChainReport {
        verify_chain(files, &[], key.public(), head)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let key = SigningKey::generate().unwrap();
        let files = chain(&key, 5);
        let head = StoreHead { seq: 5, sha256: hash(&files[4].bytes) };
        let r = check(&files, &key, Some(&head));
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.last_seq, 5);
    }

    #[test]
    fn the_body_round_trips_through_canonical_bytes() {
        let key = SigningKey::generate().unwrap();
        let f = &chain(&key, 1)[0];
        let r = verify_one(f, key.public()).unwrap();
        assert_eq!(r.body, body(ReceiptKind::Apply, 1));
        assert!(String::from_utf8_lossy(&f.bytes).starts_with("{\"approvals\":[]"));
    }

    #[test]
    fn the_first_receipt_has_no_predecessor() {
        let key = SigningKey::generate().unwrap();
        let mut files = chain(&key, 2);
        let mut r: Receipt = serde_json::from_slice(&files[0].bytes).unwrap();
        r.previous = Some(hash(b"x"));
        files[0].bytes = r.to_bytes();
        files[0].signature = Some(signature_text(&key.sign(&files[0].bytes)).into_bytes());
        let report = check(&files, &key, None);
        assert!(
            report.problems.iter().any(|p| p.receipt == "000001-apply.json" && p.problem.contains("first receipt")),
            "{report:?}"
        );
    }

    #[test]
    fn kinds_and_names() {
        assert_eq!(file_name(42, ReceiptKind::LockOverride), "000042-lock-override.json");
        assert_eq!(seq_of("000042-lock-override.json.sig"), Some(42));
        assert_eq!(seq_of("README.md"), None);
        assert_eq!(ReceiptKind::parse("rollback"), Some(ReceiptKind::Rollback));
    }
}
