//! Reading a manifest directory: the one place manifests touch the filesystem. The
//! format and its validation are the core's (`controlplane_core::manifest`); this module
//! is re-exported, with them, as `controlplane::manifest`.

pub use controlplane_core::manifest::*;

use crate::diagnostic::Diagnostic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files larger than this are not manifests; refusing them bounds memory.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_FILES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in manifest set `{}`", diagnostics.len(), dir.display())]
    Invalid { dir: PathBuf, diagnostics: Vec<Diagnostic> },
}

/// Reads every file of the manifest directory `dir` and validates the set.
pub fn load(dir: &Path) -> Result<ManifestSet, ManifestError> {
    let files = read_tree(dir)?;
    validate(dir, &files).map_err(|diagnostics| ManifestError::Invalid { dir: dir.to_path_buf(), diagnostics })
}

/// All files below `dir` (hidden ones skipped), keyed by their path relative to it.
pub fn read_tree(dir: &Path) -> Result<BTreeMap<PathBuf, String>, ManifestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if meta.len() > MAX_FILE_BYTES || files.len() >= MAX_FILES {
                let e = std::io::Error::other(format!("over {MAX_FILE_BYTES} bytes or {MAX_FILES} files"));
                return Err(ManifestError::Io { path, source: e });
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            // Binary files (none belong here) are kept as lossy text so validation can name them.
            files.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok(files)
}

/// The files the manifests point at that an apply will open, checked by `check`: the
/// SSH identity and the receipt-signing key must exist and be readable. (Not part of
/// [`load`]: an auditor or a CI signer has the manifests without these keys.)
pub fn check_files(set: &ManifestSet) -> Vec<Diagnostic> {
    let file = Path::new(CONTROLPLANE_FILE);
    let text = std::fs::read_to_string(set.dir.join(file)).unwrap_or_default();
    let line_of =
        |key: &str| text.lines().position(|l| l.trim_start().starts_with(key) && l.contains('=')).map_or(0, |i| i + 1);
    let mut out = Vec::new();
    for (field, key, path, what) in [
        ("ssh.identity", "identity", &set.ssh.identity, "the SSH identity agentctl logs in to golden VMs with"),
        ("controlplane.receipt_key", "receipt_key", &set.settings.receipt_key, "the receipt-signing key"),
    ] {
        let full = set.resolve(path);
        if let Err(e) = std::fs::File::open(&full) {
            let line = line_of(key);
            out.push(Diagnostic {
                file: set.dir.join(file),
                line,
                column: usize::from(line > 0),
                field: field.into(),
                message: format!("cannot read {what} at `{}`: {e}", full.display()),
                hint: Some(if key == "identity" {
                    "create it (`ssh-keygen -t ed25519 -f PATH`) or point `identity` at the key the hosts authorize"
                        .into()
                } else {
                    "run `agentctl init` to create one, or point `receipt_key` at the existing key".into()
                }),
            });
        }
    }
    out
}
