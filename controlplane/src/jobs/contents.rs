//! Scanning an image's layers for secret values (`release add`, `verify`): each layer
//! streams from the registry (digest-checked, bounded in size) through a decompressor and
//! a tar reader, file by file through the core's [`FileScan`], in constant memory; what
//! counts and what the manifests allow is the core's ([`controlplane_core::contents`]).

use crate::image::{Digest, PinnedImage};
use crate::registry::{Registry, RegistryError};
use controlplane_core::contents::{Allowed, ContentScan, FileScan, Finding, LayerScan};
use controlplane_core::untrusted::HostText;
use std::io::Read;

/// The largest layer streamed, as served (compressed): 8 GiB.
pub const MAX_LAYER_BYTES: u64 = 8 << 30;
/// Bytes read from a file at a time, and the pipe between download and scan.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot scan the layers of `{image}`")]
    Registry {
        image: PinnedImage,
        #[source]
        source: RegistryError,
    },
    #[error("the manifest `{digest}` of `{image}` is missing or has no layers list: {detail}")]
    Manifest { image: PinnedImage, digest: String, detail: String },
    #[error("layer `{layer}` of `{image}` has media type `{media_type}`, which agentctl cannot read, so it cannot be checked for secret values")]
    Unsupported { image: PinnedImage, layer: String, media_type: String },
    #[error("layer `{layer}` of `{image}` is not a readable tar stream: {detail}")]
    Unreadable { image: PinnedImage, layer: String, detail: String },
}

impl ScanError {
    /// The registry is unreachable or failing: retryable (exit 1).
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Registry { source, .. } if source.is_outage())
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unsupported { .. } => Some(
                "publish the image with gzip or uncompressed layers (`docker buildx … --output compression=gzip`)"
                    .into(),
            ),
            Self::Registry { .. } => {
                Some("check that the registry is up and reachable, then retry; nothing was recorded".into())
            }
            Self::Unreadable { .. } | Self::Manifest { .. } => Some(
                "the image as pushed is broken (a layer that is not the tar stream its media type says, or a missing manifest): build and push it again, then sign and record the new digest".into(),
            ),
        }
    }
}

/// How a layer's bytes are compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

fn compression(media_type: &str) -> Option<Compression> {
    let t = media_type.trim();
    if t.ends_with("tar+gzip") || t.ends_with("tar.gzip") {
        Some(Compression::Gzip)
    } else if t.ends_with(".tar") || t.ends_with("tar") && t.contains("layer") {
        Some(Compression::None)
    } else {
        None
    }
}

/// Scans every layer of the image manifest `manifest` (the image's own digest, or for
/// an index the platform manifest the hosts run) of `image`'s repository. A finding no
/// entry of `allow` covers is in [`ContentScan::findings`]; the caller refuses on it.
pub async fn scan_image(
    registry: &Registry,
    image: &PinnedImage,
    manifest: &Digest,
    allow: &[Allowed],
) -> Result<ContentScan, ScanError> {
    let reg = |source| ScanError::Registry { image: image.clone(), source };
    let bad = |detail: String| ScanError::Manifest { image: image.clone(), digest: manifest.to_string(), detail };
    let (bytes, _) = registry
        .manifest(&image.repository, manifest.as_str())
        .await
        .map_err(reg)?
        .ok_or_else(|| bad("not found".into()))?;
    let layers = crate::cosign::manifest_layers(&bytes).map_err(bad)?;
    let mut scan = ContentScan::default();
    for layer in &layers {
        let digest = layer.digest.to_string();
        let Some(compression) = compression(&layer.media_type) else {
            return Err(ScanError::Unsupported {
                image: image.clone(),
                layer: digest,
                media_type: layer.media_type.clone(),
            });
        };
        let (writer, reader) = tokio::io::duplex(4 * CHUNK);
        let name = digest.clone();
        let parse = tokio::task::spawn_blocking(move || {
            scan_layer(tokio_util::io::SyncIoBridge::new(reader), compression, &name)
        });
        let pulled = registry.blob_into(&image.repository, &layer.digest, writer, MAX_LAYER_BYTES).await;
        let parsed = parse.await.map_err(|e| ScanError::Unreadable {
            image: image.clone(),
            layer: digest.clone(),
            detail: format!("the scan stopped: {e}"),
        })?;
        // A download cut short makes the tar reader fail too: the registry's error is
        // the cause then. A reader that failed on its own input stops the download.
        // Which side stopped first decides whose error it is: a reader that failed on its
        // input closes the pipe (the download then reports `SinkClosed`); a download cut
        // short leaves the reader at a truncated stream.
        let (layer_scan, findings) = match (pulled, parsed) {
            (Ok(_), Ok(done)) => done,
            (Err(RegistryError::SinkClosed { .. }) | Ok(_), Err(detail)) => {
                return Err(ScanError::Unreadable { image: image.clone(), layer: digest, detail })
            }
            (Err(source), _) => return Err(reg(source)),
        };
        scan.layers.push(layer_scan);
        for (path, kind) in findings {
            scan.add(Finding::new(&digest, &path, kind), &path, allow);
        }
    }
    Ok(scan)
}

/// The most a long-name or PAX header entry may hold (real ones hold a path).
const MAX_HEADER_DATA: u64 = 64 * 1024;
/// The most a layer may decompress to: 64 GiB (a gzip bomb stops here).
pub const MAX_DECOMPRESSED: u64 = 64 << 30;

/// A reader that fails past `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!("it decompresses to more than {} GiB", MAX_DECOMPRESSED >> 30))
        })?;
        Ok(n)
    }
}

/// A secret value found in a layer: the file's path as the layer has it, and what it is.
type Found = (String, controlplane_core::secrets::SecretKind);

/// Scans one layer held in memory (`gzip`: compressed), as [`scan_image`] scans a fetched
/// one: how many files it read and how many findings it made, or why it cannot be read. For the fuzz targets
/// and property tests (`controlplane::fuzzing`).
pub fn scan_bytes(data: &[u8], gzip: bool) -> Result<(u64, u64), String> {
    let compression = if gzip { Compression::Gzip } else { Compression::None };
    scan_layer(data, compression, "sha256:fuzz").map(|(scan, found)| (scan.files, found.len() as u64))
}

/// Reads one layer's tar stream to its end (so the digest covers every byte), feeding
/// each file's data (regular, contiguous and sparse entries) through a [`FileScan`].
/// Memory is bounded: tar's long-name and PAX entries are read here, at most
/// [`MAX_HEADER_DATA`] each, instead of whole by the tar reader.
fn scan_layer(reader: impl Read, compression: Compression, layer: &str) -> Result<(LayerScan, Vec<Found>), String> {
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
    };
    let mut archive = tar::Archive::new(Capped { inner: decoded, left: MAX_DECOMPRESSED });
    let (mut files, mut bytes, mut found) = (0u64, 0u64, Vec::new());
    let mut buf = vec![0u8; CHUNK];
    // The path a GNU long-name or PAX entry gives the entry after it.
    let mut next_path: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(|e| e.to_string())?.raw(true) {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            let size = entry.header().entry_size().map_err(|e| e.to_string())?;
            if size > MAX_HEADER_DATA {
                return Err(format!("a {kind:?} header entry of {size} bytes (at most {MAX_HEADER_DATA})"));
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
            if kind.is_gnu_longname() {
                next_path = Some(data.split(|&b| b == 0).next().unwrap_or_default().to_vec());
            } else if kind.is_pax_local_extensions() {
                let path = tar::PaxExtensions::new(&data)
                    .filter_map(Result::ok)
                    .find(|x| x.key_bytes() == b"path")
                    .map(|x| x.value_bytes().to_vec());
                next_path = path.or(next_path);
            }
            continue;
        }
        let path_bytes = next_path.take().unwrap_or_else(|| entry.path_bytes().into_owned());
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse) {
            continue;
        }
        let path = String::from_utf8_lossy(&path_bytes).into_owned();
        let mut file = FileScan::new();
        loop {
            let n = entry.read(&mut buf).map_err(|e| format!("{}: {e}", HostText::new(&path)))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            file.feed(&buf[..n]);
        }
        files += 1;
        if let Some(kind) = file.finish() {
            found.push((path, kind));
        }
    }
    // What follows the archive's end-of-file blocks (padding) is read too.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok((LayerScan { digest: layer.to_owned(), files, bytes }, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn media_types_name_their_compression() {
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
        assert_eq!(compression("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert_eq!(
            compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar+zstd"), None);
        assert_eq!(compression("application/vnd.in-toto+json"), None);
    }

    #[test]
    fn a_layer_is_read_file_by_file_gzip_or_not() {
        let layer = tar(&[
            ("etc/ok.conf", b"name=api\n"),
            ("root/.ssh/id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n"),
            ("app/.wh.token", b""),
        ]);
        let (scan, findings) = scan_layer(&layer[..], Compression::None, "sha256:l").unwrap();
        assert_eq!((scan.files, findings.len()), (3, 1));
        assert_eq!(findings[0].0, "root/.ssh/id_ed25519");
        assert_eq!(findings[0].1.describe(), "a private key block");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer).unwrap();
        let (_, findings) = scan_layer(&gz.finish().unwrap()[..], Compression::Gzip, "sha256:l").unwrap();
        assert_eq!(findings.len(), 1);

        assert!(scan_layer(
            &b"not a tar stream at all, but long enough to be read as a header"[..],
            Compression::Gzip,
            "x"
        )
        .is_err());
    }

    /// A long path (a GNU long-name entry) names the file it belongs to; a long-name entry
    /// claiming a huge size is refused before anything is read into memory.
    #[test]
    fn long_names_are_read_bounded() {
        let long = format!("{}/id_ed25519", "deep/".repeat(40));
        let layer = tar(&[(long.as_str(), b"-----BEGIN OPENSSH PRIVATE KEY-----\n")]);
        let (_, findings) = scan_layer(&layer[..], Compression::None, "sha256:l").unwrap();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].0, long);

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 30);
        h.set_path("././@LongLink").unwrap();
        h.set_cksum();
        let mut bomb = h.as_bytes().to_vec();
        bomb.extend_from_slice(&[0u8; 1024]);
        let err = scan_layer(&bomb[..], Compression::None, "sha256:l").unwrap_err();
        assert!(err.contains("header entry of 1073741824 bytes"), "{err}");
    }

    /// A gzip bomb stops at the bound instead of decompressing without end.
    #[test]
    fn decompression_stops_at_its_bound() {
        let mut capped = Capped { inner: &[7u8; 100][..], left: 10 };
        let mut out = Vec::new();
        let err = std::io::Read::read_to_end(&mut capped, &mut out).unwrap_err();
        assert!(err.to_string().contains("decompresses to more than"), "{err}");
    }
}
