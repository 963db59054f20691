//! The real cosign binaries the interop tests run: Debian's own `cosign` packages (trixie:
//! 2.5, sid: 3.1; static Go binaries that run on Debian 12), unpacked under `target/`
//! with a private apt list, so nothing in the machine's apt setup changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One cosign release the tests use: the Debian suite that ships it and where it lives.
#[derive(Debug, Clone, Copy)]
pub struct Cosign {
    /// `2.5`, `3.1`.
    pub version: &'static str,
    /// The Debian suite whose `cosign` package is that version.
    pub suite: &'static str,
}

/// cosign 2.5 (Debian trixie): legacy `.sig` / `.att` tags by default.
pub const COSIGN_2_5: Cosign = Cosign { version: "2.5", suite: "trixie" };
/// cosign 3.1 (Debian sid): Sigstore bundles as OCI referrers by default.
pub const COSIGN_3_1: Cosign = Cosign { version: "3.1", suite: "sid" };

impl Cosign {
    /// `target/cosign-<version>`: the apt lists, the package and the unpacked tree.
    pub fn dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(format!("cosign-{}", self.version))
    }

    /// The binary.
    pub fn bin(&self) -> PathBuf {
        self.dir().join("root/usr/bin/cosign")
    }

    /// Downloads and unpacks the package unless the binary is there. Needs Debian's
    /// package archive (the machine's own mirror), not root.
    pub fn install(&self) -> Result<PathBuf, String> {
        let bin = self.bin();
        if bin.exists() {
            return Ok(bin);
        }
        let d = self.dir();
        for sub in ["lists/partial", "cache/archives/partial", "root"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| format!("{}: {e}", d.join(sub).display()))?;
        }
        let mirror = mirror().ok_or("no Debian mirror in /etc/apt (sources.list or debian.sources)")?;
        let list = d.join("sources.list");
        let line =
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {} main\n", self.suite);
        std::fs::write(&list, line).map_err(|e| format!("{}: {e}", list.display()))?;
        let opts = [
            format!("-oDir::Etc::SourceList={}", list.display()),
            "-oDir::Etc::SourceParts=/nonexistent".to_owned(),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
        ];
        let run = |c: &mut Command, what: &str| -> Result<(), String> {
            let out = c.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        run(Command::new("apt-get").args(&opts).args(["update", "-qq"]), "apt-get update (private list)")?;
        run(
            Command::new("apt-get").args(&opts).args(["download", "cosign"]).current_dir(&d),
            "apt-get download cosign",
        )?;
        let deb = std::fs::read_dir(&d)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or("apt-get download left no .deb")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(d.join("root")), "dpkg-deb -x")?;
        if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("the package did not hold {}", bin.display()))
        }
    }
}

/// The machine's Debian mirror, from deb822 or one-line sources.
fn mirror() -> Option<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_822 = deb822
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|u| u.split_whitespace().next().map(str::to_owned));
    if from_822.is_some() {
        return from_822;
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")).map(str::to_owned))
}
