//! Reading a repository's CI workflows from disk, for `check --ci` and `prove --workflows`:
//! `DIR/.github/workflows/*.yml` (or `*.yaml`), or those files directly in `DIR`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkflowFilesError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no workflow files (`*.yml`, `*.yaml`) in `{}`: nothing was checked", .0.display())]
    Empty(PathBuf),
}

/// One workflow file: its path and text.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub path: PathBuf,
    pub text: String,
}

/// The directory the workflows were read from and each of them, sorted by path; none is
/// an error (an empty directory is not a clean one).
pub fn read(dir: &Path) -> Result<(PathBuf, Vec<Workflow>), WorkflowFilesError> {
    let nested = dir.join(".github/workflows");
    let root = if nested.is_dir() { nested } else { dir.to_path_buf() };
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WorkflowFilesError::Read { path, source }
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(read_err(&root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(WorkflowFilesError::Empty(root));
    }
    let workflows = paths
        .into_iter()
        .map(|path| {
            let text =
                super::bounded::read_to_string(&path, super::bounded::MAX_WORKFLOW_BYTES).map_err(read_err(&path))?;
            Ok(Workflow { text, path })
        })
        .collect::<Result<_, WorkflowFilesError>>()?;
    Ok((root, workflows))
}
