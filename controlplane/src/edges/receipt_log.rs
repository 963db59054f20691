//! The receipt chain's two homes: the state store, where appends happen (serialized by
//! the database, so several control planes keep one chain), and a receipts directory,
//! the store's export that auditors verify offline (kept up to date at every append,
//! crash-safe by write-fsync-rename). Decisions about the chain live in `receipt`.

use crate::keys::SigningKey;
use crate::receipt::{self, Receipt, ReceiptBody, ReceiptFile};
use crate::store::{ReceiptIndexEntry, Store, StoreError, StoredReceipt};
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("cannot read or write receipts in `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the last receipt `{name}` is unreadable, so no receipt can be chained after it: {detail}")]
    BrokenHead { name: String, detail: String },
    #[error("receipt `{name}` cannot move from the receipts directory into the state store: {detail}; restore it from a backup (nothing was recorded), and keep the edited copy as evidence")]
    Unadoptable { name: String, detail: String },
    #[error("cannot append to the receipt chain in the state store")]
    Append {
        #[source]
        source: StoreError,
    },
    #[error("cannot read the receipt chain from the state store")]
    Store {
        #[source]
        source: StoreError,
    },
}

/// What `export` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Export {
    pub written: usize,
    pub unchanged: usize,
    /// Files already in the directory whose bytes differ from the store's.
    pub conflicts: Vec<String>,
    /// Receipts the store indexes without bytes (an older version's; never adopted).
    pub without_bytes: Vec<String>,
    /// The chain head exported: sequence number and hash.
    pub head: Option<(i64, String)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReceiptError + '_ {
    move |source| ReceiptError::Io { path: path.to_path_buf(), source }
}

/// A receipts directory.
#[derive(Debug, Clone)]
pub struct ReceiptLog {
    dir: PathBuf,
}

impl ReceiptLog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every receipt file (sorted by name) and the `.sig` files without a receipt.
    pub fn read(&self) -> Result<(Vec<ReceiptFile>, Vec<String>), ReceiptError> {
        let mut jsons = Vec::new();
        let mut sigs = std::collections::BTreeSet::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for entry in entries {
            let name = entry.map_err(io(&self.dir))?.file_name().to_string_lossy().into_owned();
            if receipt::seq_of(&name).is_none() {
                continue;
            }
            if name.ends_with(".json") {
                jsons.push(name);
            } else if name.ends_with(".json.sig") {
                sigs.insert(name);
            }
        }
        jsons.sort();
        let with_sig: Vec<(String, bool)> = jsons
            .into_iter()
            .map(|n| {
                let has = sigs.remove(&format!("{n}.sig"));
                (n, has)
            })
            .collect();
        // Reading ten thousand small files is syscall-bound: spread it over the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let chunk = with_sig.len().div_ceil(threads).max(1);
        let files = std::thread::scope(|s| {
            let handles: Vec<_> = with_sig
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || c.iter().map(|(n, has)| self.read_one(n, *has)).collect::<Result<Vec<_>, _>>())
                })
                .collect();
            let mut files = Vec::with_capacity(with_sig.len());
            for h in handles {
                files.extend(h.join().expect("reader threads do not panic")?);
            }
            Ok::<_, ReceiptError>(files)
        })?;
        Ok((files, sigs.into_iter().collect()))
    }

    fn read_one(&self, name: &str, has_signature: bool) -> Result<ReceiptFile, ReceiptError> {
        let path = self.dir.join(name);
        let max = super::bounded::MAX_RECEIPT_BYTES;
        let bytes = super::bounded::read(&path, max).map_err(io(&path))?;
        let sig_path = self.dir.join(format!("{name}.sig"));
        let signature =
            if has_signature { Some(super::bounded::read(&sig_path, max).map_err(io(&sig_path))?) } else { None };
        Ok(ReceiptFile { name: name.to_owned(), bytes, signature })
    }

    /// Appends a receipt for `body` to the store's one chain (the next sequence number,
    /// chained to the head, signed, in one database transaction), then brings this
    /// directory up to the chain's head. The store is the record: a directory that
    /// cannot be written is reported and caught up by the next append or `export`.
    pub async fn append(
        &self,
        body: ReceiptBody,
        key: &SigningKey,
        store: &dyn Store,
    ) -> Result<Receipt, ReceiptError> {
        self.adopt_legacy(store).await?;
        let version = crate::VERSION.to_owned();
        let make = |seq: u64, previous: Option<String>| {
            let r = Receipt { seq, previous, controlplane_version: version.clone(), body: body.clone() };
            let bytes = r.to_bytes();
            let signature = receipt::signature_text(&key.sign(&bytes));
            StoredReceipt {
                index: ReceiptIndexEntry {
                    seq: seq as i64,
                    kind: r.body.kind.as_str().to_owned(),
                    file: r.file_name(),
                    sha256: receipt::hash(&bytes),
                    plan_id: r.body.plan_id.clone(),
                    environment: r.body.environment.clone(),
                    service: r.body.service.clone(),
                    created_at: chrono::Utc::now(),
                },
                bytes,
                signature,
            }
        };
        let stored = store.append_receipt(&make).await.map_err(|source| ReceiptError::Append { source })?;
        let r: Receipt = serde_json::from_slice(&stored.bytes)
            .map_err(|e| ReceiptError::BrokenHead { name: stored.index.file.clone(), detail: e.to_string() })?;
        tracing::info!(seq = r.seq, kind = %stored.index.kind, file = %stored.index.file, "receipt appended");
        if let Err(e) = self.sync(store).await {
            tracing::warn!(error = %e, dir = %self.dir.display(), "receipt {} is recorded in the state store; the receipts directory is behind", r.seq);
        }
        Ok(r)
    }

    /// Writes the store's receipts past this directory's last one (crash-safe: signature
    /// first, each by write-fsync-rename); returns how many.
    pub async fn sync(&self, store: &dyn Store) -> Result<usize, ReceiptError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let _lock = self.lock()?;
        let last = self.last_seq()?;
        let newer = store.stored_receipts(last as i64).await.map_err(|source| ReceiptError::Store { source })?;
        let mut written = 0;
        for r in newer.iter().filter(|r| !r.bytes.is_empty()) {
            self.write_receipt(r)?;
            written += 1;
        }
        if written > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(written)
    }

    /// Writes every receipt of the store into this directory: what an auditor verifies
    /// offline. A file already there with other bytes is never overwritten: it is named
    /// in the report (evidence of an edit on one side or the other).
    pub async fn export(&self, store: &dyn Store) -> Result<Export, ReceiptError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let _lock = self.lock()?;
        let all = store.stored_receipts(0).await.map_err(|source| ReceiptError::Store { source })?;
        let mut out = Export::default();
        for r in &all {
            if r.bytes.is_empty() {
                out.without_bytes.push(r.index.file.clone());
                continue;
            }
            let path = self.dir.join(&r.index.file);
            match std::fs::read(&path) {
                Ok(existing) if existing == r.bytes => {
                    let sig = self.dir.join(format!("{}.sig", r.index.file));
                    if std::fs::read(&sig).ok().as_deref() == Some(r.signature.as_bytes()) {
                        out.unchanged += 1;
                    } else {
                        out.conflicts.push(format!("{}.sig", r.index.file));
                    }
                }
                Ok(_) => out.conflicts.push(r.index.file.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.write_receipt(r)?;
                    out.written += 1;
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        out.head = all.last().map(|r| (r.index.seq, r.index.sha256.clone()));
        sync_dir(&self.dir)?;
        Ok(out)
    }

    /// Receipts indexed by a version that kept their bytes only in this directory: their
    /// bytes move into the store (each checked against the hash the store indexed), so
    /// the store holds the whole chain. Cheap when there is nothing to adopt.
    async fn adopt_legacy(&self, store: &dyn Store) -> Result<(), ReceiptError> {
        let store_err = |source| ReceiptError::Store { source };
        let Some(head) = store.receipt_head().await.map_err(store_err)? else { return Ok(()) };
        let head_has_bytes =
            store.stored_receipts(head.seq - 1).await.map_err(store_err)?.first().is_some_and(|r| !r.bytes.is_empty());
        if head_has_bytes {
            return Ok(());
        }
        // Every file is checked before the first is adopted: all or nothing.
        let mut adopt = Vec::new();
        for r in store.stored_receipts(0).await.map_err(store_err)?.iter().filter(|r| r.bytes.is_empty()) {
            let path = self.dir.join(&r.index.file);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            if receipt::hash(&bytes) != r.index.sha256 {
                return Err(ReceiptError::Unadoptable {
                    name: r.index.file.clone(),
                    detail: format!("its hash is not the {} the state store indexed (edited?)", r.index.sha256),
                });
            }
            let sig_path = self.dir.join(format!("{}.sig", r.index.file));
            let sig = std::fs::read_to_string(&sig_path).map_err(io(&sig_path))?;
            adopt.push((r.index.seq, bytes, sig));
        }
        for (seq, bytes, sig) in adopt {
            store.fill_receipt(seq, &bytes, &sig).await.map_err(store_err)?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::fs::File, ReceiptError> {
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // Two processes writing one directory do not interleave half-written files.
        lock.lock().map_err(io(&lock_path))?;
        Ok(lock)
    }

    fn write_receipt(&self, r: &StoredReceipt) -> Result<(), ReceiptError> {
        // The signature lands first: a crash between the renames leaves an orphan `.sig`
        // past the end of the chain, which the next write overwrites and `verify` ignores.
        self.write_atomically(&format!("{}.sig", r.index.file), r.signature.as_bytes())?;
        self.write_atomically(&r.index.file, &r.bytes)
    }

    /// The highest sequence number of a receipt file here (0 for none).
    fn last_seq(&self) -> Result<u64, ReceiptError> {
        let mut last = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let name = entry.map_err(io(&self.dir))?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                last = last.max(receipt::seq_of(&name).unwrap_or(0));
            }
        }
        Ok(last)
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), ReceiptError> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dst = self.dir.join(name);
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))
    }
}

fn sync_dir(dir: &Path) -> Result<(), ReceiptError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
