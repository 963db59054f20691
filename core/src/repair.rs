//! What changed in a release directory on a host, against the files the control plane
//! recorded when it applied the release: the listing command (a fixed script), its
//! strict parser (bounded; every path sanitized) and the comparison. `status`, the
//! refusal of a plan over a tampered host, and `repair` all name changes this way.

use crate::manifest::{Host, Service};
use crate::remote::RemoteCommand;
use crate::untrusted::HostText;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// The listing's output is cut here (the parser refuses a cut listing).
pub const MAX_LISTING: usize = 1024 * 1024;
/// At most this many entries are believed.
pub const MAX_ENTRIES: usize = 10_000;
/// At most this many changes are named; the rest are counted.
pub const MAX_CHANGES: usize = 20;

/// Lists release `id` of `service` on `host`: per entry `TYPE MODE PATH\0TARGET\0`
/// (`find -printf '%y %m %p\0%l\0'`), then `HASHES\0` and `SHA256  PATH\0` per file.
const LIST: &str = r#"set -eu
d="$1/$2/releases/$3"
[ -d "$d" ] && [ ! -L "$d" ] || { echo "release $3 is not on the host" >&2; exit 3; }
cd "$d"
find . -mindepth 1 -printf '%y %m %p\0%l\0' | head -c 1048576
printf 'HASHES\0'
find . -type f -print0 | head -c 1048576 | xargs -0 -r sha256sum -z | head -c 1048576
"#;

pub fn listing_command(host: &Host, service: &Service, id: &str) -> RemoteCommand {
    RemoteCommand::script(LIST, [host.root.to_string(), service.name.to_string(), id.to_owned()])
}

/// One entry of a release directory as the host lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `f` file, `d` directory, `l` symlink, other `find %y` letters for anything else.
    pub kind: char,
    /// Octal permission bits, e.g. `644`.
    pub mode: String,
    /// Link target (links only), sanitized.
    pub target: Option<HostText>,
    /// `sha256` hex of a file's content.
    pub sha256: Option<String>,
}

/// The listing, by path relative to the release directory (sanitized).
pub type Listing = BTreeMap<String, Entry>;

/// Parses the listing command's output, or says why it cannot be believed.
pub fn parse_listing(out: &[u8]) -> Result<Listing, String> {
    if out.len() >= MAX_LISTING {
        return Err(format!("the listing is over {MAX_LISTING} bytes"));
    }
    let mut fields = out.split(|b| *b == 0);
    let mut listing = Listing::new();
    let path_of = |raw: &[u8]| -> Result<String, String> {
        let s = String::from_utf8_lossy(raw);
        let p = s.strip_prefix("./").ok_or_else(|| "an entry outside the release directory".to_owned())?;
        Ok(HostText::new(p).to_string())
    };
    loop {
        let Some(head) = fields.next() else { return Err("the listing ends early".into()) };
        if head == b"HASHES" {
            break;
        }
        let target = fields.next().ok_or("the listing ends early")?;
        let text = String::from_utf8_lossy(head);
        let mut parts = text.splitn(3, ' ');
        let (Some(kind), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a listing entry without type, mode and path".into());
        };
        let kind = kind.chars().next().filter(|c| kind.len() == 1 && c.is_ascii_lowercase()).ok_or("a bad type")?;
        if mode.is_empty() || mode.len() > 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err("a bad mode".into());
        }
        let target = (kind == 'l').then(|| HostText::new(&String::from_utf8_lossy(target)));
        listing.insert(path_of(path.as_bytes())?, Entry { kind, mode: mode.to_owned(), target, sha256: None });
        if listing.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
    }
    for line in fields.filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let (hash, path) = text.split_once("  ").ok_or("a bad hash line")?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a bad hash".into());
        }
        if let Some(e) = listing.get_mut(&path_of(path.as_bytes())?) {
            e.sha256 = Some(hash.to_ascii_lowercase());
        }
    }
    Ok(listing)
}

/// How one path differs from what was applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// A file's content differs.
    Content { path: String },
    /// A file's or directory's permission bits differ.
    Mode { path: String, recorded: String, live: String },
    /// A symbolic link where a file was, or one that was not there.
    Link { path: String, target: String },
    /// An entry that was not applied.
    Added { path: String, kind: String },
    /// A file that was applied and is gone (or is no longer a file).
    Removed { path: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Content { path } => write!(f, "`{path}`: content changed"),
            Self::Mode { path, recorded, live } => write!(f, "`{path}`: mode {live}, applied as {recorded}"),
            Self::Link { path, target } => write!(f, "`{path}`: a symbolic link to `{target}`"),
            Self::Added { path, kind } => write!(f, "`{path}`: {kind} added"),
            Self::Removed { path } => write!(f, "`{path}`: removed"),
        }
    }
}

fn kind_word(kind: char) -> &'static str {
    match kind {
        'f' => "file",
        'd' => "directory",
        'l' => "symbolic link",
        'p' => "named pipe",
        's' => "socket",
        'b' | 'c' => "device",
        _ => "entry",
    }
}

/// What differs between `applied` (path → bytes, as staging leaves them: files 0644,
/// directories 0755) and `live`, in path order.
pub fn changes(applied: &BTreeMap<String, Vec<u8>>, live: &Listing) -> Vec<Change> {
    let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for p in applied.keys() {
        let mut at = p.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            at = parent;
        }
    }
    let mut out = Vec::new();
    for (path, bytes) in applied {
        match live.get(path) {
            None => out.push(Change::Removed { path: path.clone() }),
            Some(e) if e.kind == 'l' => out.push(Change::Link {
                path: path.clone(),
                target: e.target.as_ref().map(ToString::to_string).unwrap_or_default(),
            }),
            Some(e) if e.kind != 'f' => out.push(Change::Removed { path: path.clone() }),
            Some(e) => {
                if e.sha256.as_deref() != Some(hex::encode(Sha256::digest(bytes)).as_str()) {
                    out.push(Change::Content { path: path.clone() });
                }
                if e.mode != "644" {
                    out.push(Change::Mode { path: path.clone(), recorded: "644".into(), live: e.mode.clone() });
                }
            }
        }
    }
    for (path, e) in live {
        if applied.contains_key(path) {
            continue;
        }
        if e.kind == 'd' && dirs.contains(path) {
            if e.mode != "755" {
                out.push(Change::Mode { path: path.clone(), recorded: "755".into(), live: e.mode.clone() });
            }
            continue;
        }
        if e.kind == 'l' {
            let target = e.target.as_ref().map(ToString::to_string).unwrap_or_default();
            out.push(Change::Link { path: path.clone(), target });
        } else {
            out.push(Change::Added { path: path.clone(), kind: kind_word(e.kind).into() });
        }
    }
    out.sort_by(|a, b| path(a).cmp(path(b)));
    out
}

fn path(c: &Change) -> &str {
    match c {
        Change::Content { path }
        | Change::Mode { path, .. }
        | Change::Link { path, .. }
        | Change::Added { path, .. }
        | Change::Removed { path } => path,
    }
}

/// Recorded files (path → base64, as plans and the store keep them) decoded.
pub fn decode(files: &BTreeMap<String, String>) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use base64::Engine as _;
    files
        .iter()
        .map(|(p, b)| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("`{p}`: {e}"))?;
            Ok((p.clone(), bytes))
        })
        .collect()
}

/// The changes as lines, at most [`MAX_CHANGES`] and a count of the rest.
pub fn describe(changes: &[Change]) -> Vec<String> {
    let mut lines: Vec<String> = changes.iter().take(MAX_CHANGES).map(ToString::to_string).collect();
    if changes.len() > MAX_CHANGES {
        lines.push(format!("and {} more change(s)", changes.len() - MAX_CHANGES));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("config/api.env".to_owned(), b"PORT=8080\n".to_vec()),
            ("release.json".to_owned(), b"{}".to_vec()),
        ])
    }

    /// What the listing script prints for a directory, run for real (find, sha256sum).
    fn list(dir: &std::path::Path) -> Listing {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(LIST)
            .args(["sh", dir.parent().unwrap().parent().unwrap().parent().unwrap().to_str().unwrap(), "api", "r-1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        parse_listing(&out.stdout).unwrap()
    }

    fn staged() -> (tempfile::TempDir, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("api/releases/r-1");
        std::fs::create_dir_all(dir.join("config")).unwrap();
        for (p, b) in applied() {
            std::fs::write(dir.join(&p), b).unwrap();
            std::fs::set_permissions(dir.join(&p), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(dir.join("config"), std::fs::Permissions::from_mode(0o755)).unwrap();
        (root, dir)
    }

    #[test]
    fn an_untouched_release_has_no_changes() {
        let (_root, dir) = staged();
        assert_eq!(changes(&applied(), &list(&dir)), Vec::<Change>::new());
    }

    /// The hand edit of the issue (`echo DEBUG=1 >> config/api.env`), and every other kind.
    #[test]
    fn each_kind_of_change_is_named_by_path() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_root, dir) = staged();
        std::fs::write(dir.join("config/api.env"), "PORT=8080\nDEBUG=1\n").unwrap();
        std::fs::set_permissions(dir.join("release.json"), std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(dir.join("extra\u{1b}[31m.sh"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("config/link")).unwrap();
        let found: Vec<String> = describe(&changes(&applied(), &list(&dir)));
        assert_eq!(
            found,
            [
                "`config/api.env`: content changed",
                "`config/link`: a symbolic link to `/etc/shadow`",
                "`extra.sh`: file added",
                "`release.json`: mode 666, applied as 644",
            ]
        );
        std::fs::remove_file(dir.join("config/api.env")).unwrap();
        assert!(changes(&applied(), &list(&dir)).contains(&Change::Removed { path: "config/api.env".into() }));
    }

    #[test]
    fn a_listing_that_cannot_be_believed_is_refused() {
        for bad in [
            &b"f 644 ./a\0\0"[..],
            b"f 644 /etc/passwd\0\0HASHES\0",
            b"f 99x ./a\0\0HASHES\0",
            b"zz 644 ./a\0\0HASHES\0",
        ] {
            assert!(parse_listing(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_listing(&vec![b'a'; MAX_LISTING]).is_err());
        let many: Vec<u8> = (0..MAX_ENTRIES + 1).flat_map(|i| format!("f 644 ./{i}\0\0").into_bytes()).collect();
        assert!(parse_listing(&[many, b"HASHES\0".to_vec()].concat()).is_err());
        let ok = parse_listing(
            b"f 644 ./a\0\0HASHES\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa  ./a\0",
        )
        .unwrap();
        assert_eq!(ok["a"].sha256.as_deref(), Some("a".repeat(64).as_str()));
    }

    #[test]
    fn many_changes_are_counted_beyond_the_bound() {
        let live = Listing::new();
        let applied: BTreeMap<String, Vec<u8>> = (0..30).map(|i| (format!("f{i:02}"), Vec::new())).collect();
        let lines = describe(&changes(&applied, &live));
        assert_eq!(lines.len(), MAX_CHANGES + 1);
        assert_eq!(lines.last().unwrap(), "and 10 more change(s)");
    }
}
