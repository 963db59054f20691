//! `agentctl init`: scaffolds a manifest set, the state database, the receipt-signing
//! key and a release-signing key to start with. All or nothing: everything is written
//! into a private staging directory first and moved into place only when complete.

use crate::keys::{KeyError, SigningKey};
use crate::manifest::example;
use crate::store::{Location, SqlStore, StoreError};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`{}` already exists; `init` never overwrites anything, so nothing was changed", .0.display())]
    Exists(PathBuf),
    #[error("cannot write `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("`ssh-keygen` failed to create the SSH client key: {0}")]
    SshKeygen(String),
}

/// What `init` created.
#[derive(Debug, Serialize)]
pub struct InitReport {
    pub manifests: PathBuf,
    pub state_db: PathBuf,
    pub receipts: PathBuf,
    pub receipt_key: PathBuf,
    pub receipt_public_key: PathBuf,
    pub release_key: PathBuf,
    pub release_public_key: PathBuf,
    pub ssh_identity: PathBuf,
}

/// The top-level entries `init` creates in its directory.
pub const ENTRIES: [&str; 3] = ["manifests", "state", "receipts"];

/// The passwords that encrypt the private keys `init` writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passwords<'a> {
    /// The receipt-signing key's (what `receipt_key_password_env` names at run time).
    pub receipt: &'a [u8],
    /// The release-signing key's (a cosign key: `COSIGN_PASSWORD`, as `sign`, `attest`
    /// and cosign itself read it).
    pub release: &'a [u8],
}

/// Scaffolds into `dir`; `passwords` encrypt the two private keys.
pub async fn scaffold(dir: &Path, passwords: Passwords<'_>) -> Result<InitReport, InitError> {
    for entry in ENTRIES {
        let p = dir.join(entry);
        if p.symlink_metadata().is_ok() {
            return Err(InitError::Exists(p));
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let staging = tempfile::Builder::new().prefix(".agentctl-init-").tempdir_in(dir).map_err(io(dir))?;
    let s = staging.path();

    for (rel, text) in example::FILES {
        let path = s.join("manifests").join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(s)).map_err(io(&path))?;
        if !rel.ends_with(".pub") {
            std::fs::write(&path, text).map_err(io(&path))?;
        }
    }
    let receipt = SigningKey::generate()?;
    receipt.write_pair(&s.join("state/receipt"), passwords.receipt)?;
    std::fs::rename(s.join("state/receipt.pub"), s.join("manifests/trust/receipts.pub")).map_err(io(s))?;
    let release = SigningKey::generate()?;
    release.write_pair(&s.join("state/release"), passwords.release)?;
    std::fs::rename(s.join("state/release.pub"), s.join("manifests/trust/release.pub")).map_err(io(s))?;
    ssh_keygen(&s.join("state/ssh/id_ed25519"))?;
    std::fs::create_dir_all(s.join("receipts")).map_err(io(s))?;
    std::fs::write(s.join("receipts/README.md"), RECEIPTS_README).map_err(io(s))?;
    let db = s.join("state/controlplane.db");
    SqlStore::open(&Location::Sqlite(db)).await?.close().await;

    for entry in ENTRIES {
        std::fs::rename(s.join(entry), dir.join(entry)).map_err(io(&dir.join(entry)))?;
    }
    Ok(InitReport {
        manifests: dir.join("manifests"),
        state_db: dir.join("state/controlplane.db"),
        receipts: dir.join("receipts"),
        receipt_key: dir.join("state/receipt.key"),
        receipt_public_key: dir.join("manifests/trust/receipts.pub"),
        release_key: dir.join("state/release.key"),
        release_public_key: dir.join("manifests/trust/release.pub"),
        ssh_identity: dir.join("state/ssh/id_ed25519"),
    })
}

/// An ed25519 client key for logging in to golden VMs.
fn ssh_keygen(path: &Path) -> Result<(), InitError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io { path: dir.to_path_buf(), source })?;
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "agentctl", "-f"])
        .arg(path)
        .output()
        .map_err(|e| InitError::SshKeygen(format!("{e} (install openssh-client)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(InitError::SshKeygen(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// The README `init` puts in `receipts/`: the same as the repository's.
pub const RECEIPTS_README: &str = include_str!("../../../receipts/README.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scaffolds_a_valid_set_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let report = scaffold(dir.path(), Passwords::default()).await.unwrap();
        let set = crate::manifest::load(&report.manifests).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.trust.keys.len(), 1);
        assert!(report.state_db.exists() && report.ssh_identity.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no staging directory left behind: {names:?}");

        let before = crate::keys::PublicKey::load(&report.receipt_public_key).unwrap().key_id;
        assert!(matches!(scaffold(dir.path(), Passwords::default()).await, Err(InitError::Exists(_))));
        assert_eq!(crate::keys::PublicKey::load(&report.receipt_public_key).unwrap().key_id, before);
    }

    /// One password story: the receipt key under the receipt password, the release key
    /// (a cosign key) under `COSIGN_PASSWORD`'s — it was the receipt password, which `sign`
    /// never read.
    #[tokio::test]
    async fn each_key_is_encrypted_with_the_password_of_what_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let report = scaffold(dir.path(), Passwords { receipt: b"receipts", release: b"cosign" }).await.unwrap();
        assert!(SigningKey::load(&report.receipt_key, b"receipts").is_ok());
        assert!(SigningKey::load(&report.receipt_key, b"cosign").is_err());
        assert!(SigningKey::load(&report.release_key, b"cosign").is_ok());
        assert!(SigningKey::load(&report.release_key, b"receipts").is_err());
    }
}
