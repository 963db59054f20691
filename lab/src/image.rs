//! OCI images without docker: one deterministic tar layer, so distinct content gives a
//! distinct digest and the same content always the same one.

use controlplane::image::Digest;
use controlplane::registry::{Artifact, Layer, OCI_CONFIG, OCI_LAYER_TAR};

/// An image ready to push.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub artifact: Artifact,
}

/// An image whose layer holds `app/content.txt` = `content`.
pub fn build_image(content: &str) -> TestImage {
    let layer = tar_one_file("app/content.txt", content.as_bytes());
    let diff_id = Digest::of(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/app/run"], "Labels": { "org.opencontainers.image.description": "agentctl lab image" } },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    TestImage {
        artifact: Artifact {
            config_media_type: OCI_CONFIG.into(),
            config: serde_json::to_vec(&config).expect("JSON"),
            layers: vec![Layer { media_type: OCI_LAYER_TAR.into(), data: layer, annotations: Default::default() }],
        },
    }
}

/// An image of several layers, each a tar of `(path, bytes)` files (a file named
/// `.wh.NAME` is an OCI whiteout: it deletes `NAME` of the layers below), gzip-compressed
/// as registries usually serve them when `gzip`.
pub fn build_layers(layers: &[Vec<(&str, &[u8])>], gzip: bool) -> TestImage {
    use std::io::Write as _;
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    for files in layers {
        let entries: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, d)| (*p, *d, 0o644)).collect();
        let tar = tar_entries(&entries);
        diff_ids.push(Digest::of(&tar));
        let (media_type, data) = if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("writing to memory");
            (OCI_LAYER_TAR_GZIP, gz.finish().expect("writing to memory"))
        } else {
            (OCI_LAYER_TAR, tar)
        };
        blobs.push(Layer { media_type: media_type.into(), data, annotations: Default::default() });
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/app/run"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    TestImage {
        artifact: Artifact {
            config_media_type: OCI_CONFIG.into(),
            config: serde_json::to_vec(&config).expect("JSON"),
            layers: blobs,
        },
    }
}

/// The OCI media type of a gzip-compressed layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn tar_one_file(path: &str, data: &[u8]) -> Vec<u8> {
    controlplane::tarball::tar(&[(path, data)]).expect("lab layer paths are fixed and short")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_distinct() {
        let a = build_image("one");
        let b = build_image("one");
        let c = build_image("two");
        assert_eq!(a.artifact.layers[0].data, b.artifact.layers[0].data);
        assert_ne!(a.artifact.layers[0].data, c.artifact.layers[0].data);
    }

    #[test]
    fn tar_is_readable_by_tar() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("l.tar");
        std::fs::write(&archive, tar_one_file("app/content.txt", b"hello")).unwrap();
        let out = std::process::Command::new("tar").arg("-xOf").arg(&archive).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"hello");
    }
}

/// How a lab app behaves (each a real, runnable image built from Debian's static
/// busybox: `httpd` serving `/` with its version and `/healthz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves `/` ("api VERSION") and `/healthz` ("ok") on `$PORT` (default 8080).
    Healthy,
    /// Serves `/` but has no `/healthz` (404: the health check fails).
    Unhealthy,
    /// Exits with status 3 as soon as it starts.
    ExitsAtStart,
    /// Serves like `Healthy`, then exits with status 4 after this many seconds.
    CrashesAfter(u32),
    /// Its entry point does not exist: the container cannot start.
    NoEntrypoint,
}

/// An environment variable that makes every lab app exit at start (status 5): set on some
/// hosts only ([`crate::Lab::mark_failing`]), a release fails there and runs elsewhere.
pub const FAIL_MARKER: &str = "LAB_FAIL_ON_THIS_HOST";

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A runnable app image: busybox (one layer, shared by every version) and the app (a
/// second layer). Its first instruction, when `first_connect` is `ADDRESS:PORT`, tries
/// a TCP connection there and prints `first-connect: connected` or `… refused` (what a
/// workload could do before anything else ran). Entry point: `/bin/busybox sh /app/run`.
pub fn build_app(version: &str, behaviour: &Behaviour, first_connect: Option<&str>) -> std::io::Result<TestImage> {
    let busybox = std::fs::read(BUSYBOX)?;
    let base = tar_entries(&[("bin/busybox", &busybox, 0o755)]);
    let mut run = format!(
        "B=/bin/busybox\nif [ -n \"${{{FAIL_MARKER}:-}}\" ]; then echo 'this host is marked to fail'; exit 5; fi\n"
    );
    if let Some(dest) = first_connect {
        let (addr, port) = dest.rsplit_once(':').unwrap_or((dest, "80"));
        run.push_str(&format!(
            "if $B nc -w 2 {addr} {port} </dev/null >/dev/null 2>&1; then echo 'first-connect: connected'; else echo 'first-connect: refused'; fi\n"
        ));
    }
    match behaviour {
        Behaviour::ExitsAtStart => run.push_str("echo 'exiting at start'; exit 3\n"),
        Behaviour::CrashesAfter(s) => {
            run.push_str(&format!("trap 'exit 0' TERM INT\n$B httpd -f -p \"${{PORT:-8080}}\" -h /app/www &\n$B sleep {s}\necho 'crashing'; exit 4\n"))
        }
        _ => run.push_str("trap 'exit 0' TERM INT\n$B httpd -f -p \"${PORT:-8080}\" -h /app/www &\nwait\n"),
    }
    let index = format!("api {version}\n");
    let mut files: Vec<(&str, &[u8], u32)> =
        vec![("app/run", run.as_bytes(), 0o755), ("app/www/index.html", index.as_bytes(), 0o644)];
    if *behaviour != Behaviour::Unhealthy {
        files.push(("app/www/healthz", b"ok\n", 0o644));
    }
    let app = tar_entries(&files);
    let diff_ids = [Digest::of(&base), Digest::of(&app)];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": if *behaviour == Behaviour::NoEntrypoint { serde_json::json!(["/bin/nonexistent"]) } else { serde_json::json!(["/bin/busybox", "sh", "/app/run"]) },
            "Env": ["PATH=/bin"],
            "Labels": { "org.opencontainers.image.version": version, "org.opencontainers.image.description": "agentctl lab app" },
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let layer = |data: Vec<u8>| Layer { media_type: OCI_LAYER_TAR.into(), data, annotations: Default::default() };
    Ok(TestImage {
        artifact: Artifact {
            config_media_type: OCI_CONFIG.into(),
            config: serde_json::to_vec(&config).expect("JSON"),
            layers: vec![layer(base), layer(app)],
        },
    })
}

/// A deterministic tar of regular files with the given modes (directories implied).
fn tar_entries(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut p = std::path::Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    for d in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, &d, std::io::empty()).expect("in-memory tar");
    }
    for (path, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}
