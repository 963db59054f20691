//! What an image's layers hold: secret values found file by file, layer by layer.
//!
//! A layer is a tar stream; a file deleted by a later layer (a whiteout) is still in the
//! image, so each layer is scanned on its own and a finding names the layer's digest and
//! the path — never the value. The edge streams the bytes ([`FileScan`] sees them in
//! chunks, with a bounded overlap so a value split across two chunks is still found);
//! this module decides what counts and what the manifests allow.
//!
//! Image contents are checked for what is a secret wherever it appears — private key
//! blocks and tokens with an issuer's well-known prefix ([`crate::secrets`]) — but not
//! for "high entropy", which every certificate bundle and binary in an image would match.

use crate::secrets::SecretKind;
use crate::untrusted::HostText;
use serde::{Deserialize, Serialize};

/// Bytes of a file kept from one chunk to the next: longer than any value the scanner
/// recognizes by its prefix, so one split across chunks is still seen whole.
pub const OVERLAP: usize = 512;

/// The scanner for one file's bytes, fed in chunks of any size. Memory: the chunk and
/// [`OVERLAP`] bytes.
#[derive(Debug, Default)]
pub struct FileScan {
    tail: Vec<u8>,
    found: Option<SecretKind>,
}

impl FileScan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next `chunk` of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() || chunk.is_empty() {
            return;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        self.found = find_in(&String::from_utf8_lossy(&window));
        let keep = window.len().min(OVERLAP);
        self.tail = window.split_off(window.len() - keep);
    }

    /// What the file held, if anything.
    pub fn finish(self) -> Option<SecretKind> {
        self.found
    }
}

/// The secret kinds that count in image contents (see the module's documentation).
fn find_in(text: &str) -> Option<SecretKind> {
    if text.contains("PRIVATE KEY-----") {
        return Some(SecretKind::PrivateKeyBlock);
    }
    // A known token is its prefix (3 bytes or more) and a tail of 16 or more: shorter
    // runs are skipped before the prefixes are compared (most of a file's words).
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "+_-".contains(c)))
        .filter(|t| t.len() >= 19)
        .find_map(crate::secrets::known_token)
}

/// A secret value in a layer: where, and what kind (never the value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The layer's digest (`sha256:…`).
    pub layer: String,
    /// The file's path in the layer, sanitized.
    pub path: HostText,
    /// What it looks like, e.g. "a private key block".
    pub kind: String,
}

impl Finding {
    pub fn new(layer: &str, path: &str, kind: SecretKind) -> Self {
        Self { layer: layer.to_owned(), path: HostText::new(path), kind: kind.describe() }
    }
}

/// A path the manifests allow to hold a secret-looking value, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// An absolute path in the image, e.g. `/usr/share/doc/example/test-key.pem`; a
    /// trailing `/` allows everything under it.
    pub path: String,
    pub reason: String,
}

impl Allowed {
    /// Whether this entry covers `path`, a file's path exactly as the layer has it: resolved
    /// as a runtime unpacks it (`.`, `..` and repeated `/` folded, relative to the root); a
    /// path that climbs above the root or holds a control character is never covered.
    pub fn covers(&self, path: &str) -> bool {
        let Some(path) = resolve(path) else { return false };
        match self.path.strip_suffix('/') {
            Some(dir) => path.starts_with(&format!("{dir}/")),
            None => path == self.path,
        }
    }
}

/// `path` as an absolute path in the image, `.` and `..` resolved, or `None` when it climbs
/// above the root or holds a control character.
fn resolve(path: &str) -> Option<String> {
    if path.chars().any(char::is_control) {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// One layer as scanned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerScan {
    pub digest: String,
    /// Regular files read.
    pub files: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
}

/// The whole image: every layer, what was found, and what of it the manifests allow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentScan {
    pub layers: Vec<LayerScan>,
    /// Findings no `allow` entry covers: each refuses the release.
    pub findings: Vec<Finding>,
    /// Findings an `allow` entry covers, with its reason.
    pub allowed: Vec<(Finding, String)>,
    /// Findings past [`MAX_FINDINGS`], refused and allowed, counted only.
    #[serde(default)]
    pub more_findings: u64,
    #[serde(default)]
    pub more_allowed: u64,
}

/// Findings kept in a scan's record; past it, only the count grows.
pub const MAX_FINDINGS: usize = 50;

impl ContentScan {
    /// Records `finding` (whose file is at `path`, as the layer has it: allowances are
    /// decided on it, never on the sanitized path shown), as refused or as allowed by the
    /// first entry of `allow` that covers it.
    pub fn add(&mut self, finding: Finding, path: &str, allow: &[Allowed]) {
        match allow.iter().find(|a| a.covers(path)) {
            Some(a) if self.allowed.len() < MAX_FINDINGS => self.allowed.push((finding, a.reason.clone())),
            Some(_) => self.more_allowed += 1,
            None if self.findings.len() < MAX_FINDINGS => self.findings.push(finding),
            None => self.more_findings += 1,
        }
    }

    /// The scan a release's evidence (the JSON object `release add` records) holds under
    /// `contents`, if the release was scanned.
    pub fn from_evidence(evidence: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(evidence).ok()?;
        serde_json::from_value(v.get("contents")?.clone()).ok()
    }

    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// One line for receipts, plans and `release list`, e.g. `2 layers, 14 files, 3.1 MiB:
    /// no secret values` or `…: 1 allowed (/etc/x: test fixture)`.
    pub fn summary(&self) -> String {
        let files: u64 = self.layers.iter().map(|l| l.files).sum();
        let bytes: u64 = self.layers.iter().map(|l| l.bytes).sum();
        let size = match bytes {
            0..1024 => format!("{bytes} B"),
            1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
            _ => format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
        };
        let mut s = format!("{} layer(s), {files} file(s), {size}: ", self.layers.len());
        if self.findings.is_empty() {
            s.push_str("no secret values");
        } else {
            s.push_str(&format!("{} secret value(s)", self.findings.len() as u64 + self.more_findings));
        }
        if !self.allowed.is_empty() {
            let mut named: Vec<String> = self.allowed.iter().map(|(f, why)| format!("{}: {why}", f.path)).collect();
            if self.more_allowed > 0 {
                named.push(format!("{} more", self.more_allowed));
            }
            s.push_str(&format!("; {} allowed ({})", self.allowed.len() as u64 + self.more_allowed, named.join("; ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<SecretKind> {
        let mut s = FileScan::new();
        for c in chunks {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn finds_key_blocks_and_known_tokens_even_split_across_chunks() {
        assert_eq!(scan(&[b"-----BEGIN EC PRIVATE KEY-----\nMHc"]), Some(SecretKind::PrivateKeyBlock));
        assert_eq!(scan(&[b"token=ghp_0123456789abcd", b"efABCDEF0123\n"]), Some(SecretKind::KnownToken("ghp_")));
        assert_eq!(scan(&[b"-----BEGIN RSA PRIV", b"ATE KEY-----"]), Some(SecretKind::PrivateKeyBlock));
        // Split one byte at a time.
        let text = b"x AKIAIOSFODNN7EXAMPLE y";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(scan(&bytes), Some(SecretKind::KnownToken("AKIA")));
        // A value far behind the overlap is still found in its own chunk.
        let big = vec![b'a'; 100_000];
        assert_eq!(scan(&[&big, b" sk-proj-abcdefghijklmnop1234 ", &big]), Some(SecretKind::KnownToken("sk-")));
    }

    #[test]
    fn certificates_base64_tables_and_binaries_are_not_secrets() {
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQk1Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBBQkNERUY\n-----END CERTIFICATE-----\n";
        assert_eq!(scan(&[cert]), None);
        assert_eq!(scan(&[b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"]), None);
        let binary: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
        assert_eq!(scan(&[&binary]), None);
        assert_eq!(scan(&[b"sk-1 is a word, AKIA alone too"]), None);
    }

    #[test]
    fn allowed_paths_cover_files_and_directories_and_nothing_else() {
        let file = Allowed { path: "/etc/test.pem".into(), reason: "fixture".into() };
        assert!(file.covers("etc/test.pem") && file.covers("./etc/test.pem") && file.covers("/etc/test.pem"));
        assert!(!file.covers("etc/test.pem.bak") && !file.covers("etc"));
        let dir = Allowed { path: "/usr/share/doc/".into(), reason: "docs".into() };
        assert!(dir.covers("usr/share/doc/x/key.pem") && !dir.covers("usr/share/docs/key.pem"));
        // Resolved as unpacked: a climb out of the allowed directory is not in it.
        assert!(!dir.covers("usr/share/doc/../../../root/.ssh/id_rsa"));
        assert!(dir.covers("usr//share/./doc/x/../y/key.pem"));
        assert!(!file.covers("../etc/test.pem") && !file.covers("etc/test.pem\u{1b}"));

        let mut s = ContentScan::default();
        let a = Finding::new("sha256:a", "etc/test.pem", SecretKind::PrivateKeyBlock);
        s.add(a, "etc/test.pem", std::slice::from_ref(&file));
        let b = Finding::new("sha256:b", "root/.ssh/id_ed25519", SecretKind::PrivateKeyBlock);
        s.add(b, "root/.ssh/id_ed25519", &[file]);
        assert_eq!(s.allowed.len(), 1);
        assert_eq!(s.findings.len(), 1);
        assert!(!s.clean());
        assert!(s.summary().contains("1 secret value(s); 1 allowed (etc/test.pem: fixture)"), "{}", s.summary());
    }

    /// Past [`MAX_FINDINGS`] only counts grow, and the summary says how many there were.
    #[test]
    fn findings_past_the_bound_are_counted() {
        let mut s = ContentScan::default();
        for i in 0..(MAX_FINDINGS + 7) {
            let path = format!("f{i}");
            s.add(Finding::new("sha256:a", &path, SecretKind::PrivateKeyBlock), &path, &[]);
        }
        assert_eq!((s.findings.len(), s.more_findings), (MAX_FINDINGS, 7));
        assert!(s.summary().contains(&format!("{} secret value(s)", MAX_FINDINGS + 7)), "{}", s.summary());
    }
}
