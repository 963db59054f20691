//! The receipts directory: appending (serialized by a file lock, crash-safe by
//! write-fsync-rename) and reading back. Decisions about the chain live in `receipt`.

use crate::keys::SigningKey;
use crate::receipt::{self, Receipt, ReceiptBody, ReceiptFile};
use crate::store::{ReceiptIndexEntry, Store, StoreError};
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
    #[error("cannot index receipt {seq} in the state store")]
    Index {
        seq: u64,
        #[source]
        source: StoreError,
    },
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
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let sig_path = self.dir.join(format!("{name}.sig"));
        let signature = if has_signature { Some(std::fs::read(&sig_path).map_err(io(&sig_path))?) } else { None };
        Ok(ReceiptFile { name: name.to_owned(), bytes, signature })
    }

    /// Appends a receipt for `body`: the next sequence number, chained to the current
    /// last receipt, signed, written crash-safely, and indexed in `store`.
    pub async fn append(
        &self,
        body: ReceiptBody,
        key: &SigningKey,
        store: Option<&dyn Store>,
    ) -> Result<Receipt, ReceiptError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // Two control-plane processes never pick the same sequence number.
        lock.lock().map_err(io(&lock_path))?;

        let (seq, previous) = self.head()?;
        let r = Receipt { seq: seq + 1, previous, controlplane_version: crate::VERSION.to_owned(), body };
        let bytes = r.to_bytes();
        let sig = receipt::signature_text(&key.sign(&bytes));
        let name = r.file_name();
        // The signature lands first: a crash between the renames leaves an orphan `.sig`
        // past the end of the chain, which the next append overwrites and `verify` ignores.
        self.write_atomically(&format!("{name}.sig"), sig.as_bytes())?;
        self.write_atomically(&name, &bytes)?;
        sync_dir(&self.dir)?;
        if let Some(store) = store {
            let entry = ReceiptIndexEntry {
                seq: r.seq as i64,
                kind: r.body.kind.as_str().to_owned(),
                file: name.clone(),
                sha256: receipt::hash(&bytes),
                plan_id: r.body.plan_id.clone(),
                environment: r.body.environment.clone(),
                service: r.body.service.clone(),
                created_at: chrono::Utc::now(),
            };
            store.append_receipt(&entry).await.map_err(|source| ReceiptError::Index { seq: r.seq, source })?;
        }
        drop(lock);
        Ok(r)
    }

    /// The last receipt's sequence number and hash.
    fn head(&self) -> Result<(u64, Option<String>), ReceiptError> {
        let mut last: Option<(u64, String)> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let name = entry.map_err(io(&self.dir))?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                if let Some(seq) = receipt::seq_of(&name) {
                    if last.as_ref().is_none_or(|(s, _)| seq > *s) {
                        last = Some((seq, name));
                    }
                }
            }
        }
        let Some((seq, name)) = last else { return Ok((0, None)) };
        let path = self.dir.join(&name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice::<Receipt>(&bytes)
            .map_err(|e| ReceiptError::BrokenHead { name: name.clone(), detail: e.to_string() })?;
        Ok((seq, Some(receipt::hash(&bytes))))
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
