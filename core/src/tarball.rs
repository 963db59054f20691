//! Deterministic tar streams: release directories travel to golden VMs as one tar stream
//! on stdin (one round trip), and lab images use it for their layers. The `tar` crate
//! writes the headers; every entry is a regular file, mode 0644, owner 0, time 0, so the
//! same files always give the same bytes.

/// Why an archive cannot be written (a path tar cannot carry, such as one with `..`).
#[derive(Debug, thiserror::Error)]
#[error("cannot put `{path}` into a tar stream")]
pub struct TarError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// An archive of regular files, in the order given.
pub fn tar(files: &[(&str, &[u8])]) -> Result<Vec<u8>, TarError> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, data) in files {
        let err = |source| TarError { path: (*path).to_owned(), source };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).map_err(err)?;
    }
    b.into_inner().map_err(|source| TarError { path: String::new(), source })
}

#[cfg(test)]
mod tests {
    #[test]
    fn gnu_tar_extracts_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        let long = format!("{}f.txt", "long/".repeat(30));
        let files: [(&str, &[u8]); 3] =
            [("a.txt", b"one"), ("sub/dir/b.txt", b"two 'quoted' $x"), (&long, b"past 100 bytes")];
        let bytes = super::tar(&files).unwrap();
        assert_eq!(bytes, super::tar(&files).unwrap(), "deterministic");
        std::fs::write(&archive, bytes).unwrap();
        let out =
            std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"one");
        assert_eq!(std::fs::read(dir.path().join("sub/dir/b.txt")).unwrap(), b"two 'quoted' $x");
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), b"past 100 bytes");
    }

    #[test]
    fn a_path_that_climbs_out_is_an_error_not_a_panic() {
        assert!(super::tar(&[("../etc/passwd", b"x")]).is_err());
    }
}
