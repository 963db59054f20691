//! `state migrate`: copy every table and the receipt chain into an empty store, then prove
//! the copy: table by table, chain head by chain head, and the copied chain verified.

use crate::keys::PublicKey;
use crate::receipt::{self, ChainReport, ReceiptFile, StoreHead};
use crate::store::{ReceiptIndexEntry, SqlStore, StateDump, Store as _, StoreError};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("receipt {seq} is indexed without its bytes, and `{}` is missing or differs from the indexed hash", path.display())]
    MissingBytes { seq: i64, path: std::path::PathBuf },
}

/// What the copy holds compared with its source.
#[derive(Debug, serde::Serialize)]
pub struct Migrated {
    /// Rows per table: (table, source, destination).
    pub tables: Vec<(&'static str, usize, usize)>,
    /// Tables whose rows differ, with the first differing row.
    pub differences: Vec<String>,
    /// The copied chain, verified with the receipt key.
    pub chain: ChainReport,
    pub source_head: Option<ReceiptIndexEntry>,
    pub destination_head: Option<ReceiptIndexEntry>,
}

impl Migrated {
    pub fn ok(&self) -> bool {
        let heads = |h: &Option<ReceiptIndexEntry>| h.as_ref().map(|h| (h.seq, h.sha256.clone()));
        self.differences.is_empty() && self.chain.ok() && heads(&self.source_head) == heads(&self.destination_head)
    }
}

/// Copies `src` into the empty `dst`. Receipts an older version indexed without their bytes
/// are read from `receipts_dir`, each checked against its indexed hash; nothing is written
/// when one is missing. `dst` is written in one transaction and only if it is empty.
pub async fn migrate(
    src: &SqlStore,
    dst: &SqlStore,
    receipts_dir: &Path,
    key: &PublicKey,
) -> Result<Migrated, MigrateError> {
    let mut dump = src.dump().await?;
    adopt_directory_bytes(&mut dump, receipts_dir)?;
    dst.load(&dump).await?;
    let copied = dst.dump().await?;
    let source_head = src.receipt_head().await?;
    let files: Vec<ReceiptFile> = copied.receipts.iter().cloned().map(ReceiptFile::from).collect();
    let head = StoreHead {
        seq: source_head.as_ref().map_or(0, |h| h.seq as u64),
        sha256: source_head.as_ref().map(|h| h.sha256.clone()).unwrap_or_default(),
    };
    let chain = receipt::verify_chain(&files, &[], key, Some(&head));
    Ok(Migrated {
        tables: dump.counts().into_iter().zip(copied.counts()).map(|((t, n), (_, m))| (t, n, m)).collect(),
        differences: copied.differences(&dump),
        chain,
        source_head,
        destination_head: dst.receipt_head().await?,
    })
}

fn adopt_directory_bytes(dump: &mut StateDump, dir: &Path) -> Result<(), MigrateError> {
    for r in dump.receipts.iter_mut().filter(|r| r.bytes.is_empty()) {
        let path = dir.join(&r.index.file);
        let bytes = std::fs::read(&path)
            .ok()
            .filter(|b| receipt::hash(b) == r.index.sha256)
            .ok_or_else(|| MigrateError::MissingBytes { seq: r.index.seq, path: path.clone() })?;
        r.signature = std::fs::read_to_string(dir.join(format!("{}.sig", r.index.file))).unwrap_or_default();
        r.bytes = bytes;
    }
    Ok(())
}
