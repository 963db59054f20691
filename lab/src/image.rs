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
