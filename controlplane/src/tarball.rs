//! A minimal deterministic POSIX ustar writer: release directories travel to golden VMs
//! as one tar stream on stdin (one round trip), and lab images use it for their layers.

/// An archive of regular files (mode 0644, owner 0, time 0), in the order given.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, data) in files {
        out.extend_from_slice(&header(path, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn header(path: &str, len: usize) -> [u8; 512] {
    assert!(path.len() < 100, "tar paths here are validated to be short");
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    let mut octal = |range: std::ops::Range<usize>, v: u64| {
        let width = range.len() - 1;
        h[range].copy_from_slice(format!("{v:0width$o}\0").as_bytes());
    };
    octal(100..108, 0o644);
    octal(108..116, 0);
    octal(116..124, 0);
    octal(124..136, len as u64);
    octal(136..148, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn gnu_tar_extracts_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, super::tar(&[("a.txt", b"one"), ("sub/dir/b.txt", b"two 'quoted' $x")])).unwrap();
        let out =
            std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"one");
        assert_eq!(std::fs::read(dir.path().join("sub/dir/b.txt")).unwrap(), b"two 'quoted' $x");
    }
}
