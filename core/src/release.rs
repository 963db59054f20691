//! A release directory's content, derived purely from its inputs: the files rendered
//! from the service's templates and `release.json`. The release id is a hash of that
//! content, so the same inputs always give the same directory and re-applying is a no-op.

use crate::canonical;
use crate::image::PinnedImage;
use crate::manifest::{Service, Template};
use crate::names::EnvName;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// The file every release directory carries, describing itself.
pub const RELEASE_JSON: &str = "release.json";
/// `release.json` larger than this is not ours: a probe refuses to believe it.
pub const MAX_RELEASE_JSON: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("template `{template}` of service `{service}` does not render (line {line}): {message}")]
    Render { service: String, template: String, line: usize, message: String },
    #[error("template `{template}` of service `{service}` renders {kind} (rendered line {line}); secret values never go into a release, only secret names")]
    Secret { service: String, template: String, line: usize, kind: String },
}

impl ReleaseError {
    pub fn template(&self) -> &str {
        match self {
            Self::Render { template, .. } | Self::Secret { template, .. } => template,
        }
    }

    pub fn line(&self) -> usize {
        match self {
            Self::Render { line, .. } | Self::Secret { line, .. } => *line,
        }
    }
}

/// Template functions that would let a template read the operator's environment, the
/// clock or a random source: rendering is closed, so a release is a function of its
/// inputs and carries no secret from the machine that plans it.
const CLOSED_FUNCTIONS: &[&str] = &["get_env", "now", "get_random"];

/// Renders one template with `ctx`, closed: only the variables given, no environment,
/// no clock, no other templates.
fn render_one(service: &str, t: &Template, ctx: &tera::Context) -> Result<String, ReleaseError> {
    let mut tera = tera::Tera::default();
    for name in CLOSED_FUNCTIONS {
        let name = *name;
        tera.register_function(name, move |_: &std::collections::HashMap<String, serde_json::Value>| {
            Err(tera::Error::msg(format!(
                "`{name}()` is not available: templates see only the variables the control plane gives them"
            )))
        });
    }
    let fail = |e: tera::Error| {
        let message = error_chain(&e);
        ReleaseError::Render {
            service: service.to_owned(),
            template: t.source.display().to_string(),
            line: locate(&t.text, &message),
            message,
        }
    };
    tera.add_raw_template("template", &t.text).map_err(fail)?;
    let text = tera.render("template", ctx).map_err(fail)?;
    if let Some(kind) = crate::secrets::find_secret(&text) {
        let line = text.lines().position(|l| crate::secrets::find_secret(l).is_some()).map_or(1, |i| i + 1);
        return Err(ReleaseError::Secret {
            service: service.to_owned(),
            template: t.source.display().to_string(),
            line,
            kind: kind.describe(),
        });
    }
    Ok(text)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.retain(|p| !p.starts_with("Failed to render") && !p.starts_with("Failed to parse"));
    parts.join(": ")
}

/// The first line of `text` naming something the error quotes (`name` or 'name').
fn locate(text: &str, message: &str) -> usize {
    let quoted: Vec<&str> = message
        .split(['`', '\''])
        .skip(1)
        .step_by(2)
        .map(|w| w.trim_matches(['[', ']', '"']))
        .filter(|w| !w.is_empty() && *w != "template" && *w != "__tera_one_off")
        .collect();
    // The whole name first (`environment.nmae`), then its head (`get_env` of `get_env()`).
    let heads = quoted.iter().map(|w| w.split(['.', '[', '(']).next().unwrap_or(w));
    for w in quoted.iter().copied().chain(heads).filter(|w| !w.is_empty()) {
        if let Some(i) = text.lines().position(|l| l.contains(w)) {
            return i + 1;
        }
    }
    // Parse errors say ` --> LINE:COL`.
    message.split("--> ").nth(1).and_then(|r| r.split(':').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(1)
}

/// The variables a template sees.
fn context(service: &Service, environment: &str, image: &str, digest: &str, commit: &str) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert(
        "service",
        &serde_json::json!({
            "name": service.name.as_str(),
            // Names only: the runtime on the host resolves the values.
            "secrets": service.secrets.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            "egress": service.egress,
        }),
    );
    ctx.insert("environment", &serde_json::json!({ "name": environment }));
    ctx.insert("release", &serde_json::json!({ "image": image, "digest": digest, "commit": commit }));
    ctx
}

/// Renders every template of `service` for `environment` with placeholder release values,
/// as `check` does: the same closed context as a real release, so what fails here would
/// fail at plan time.
pub fn check_templates(service: &Service, environment: &str) -> Vec<ReleaseError> {
    let digest = format!("sha256:{}", "0".repeat(64));
    let image = format!("{}@{digest}", service.repository);
    let ctx = context(service, environment, &image, &digest, &"0".repeat(40));
    service.templates.iter().filter_map(|t| render_one(service.name.as_str(), t, &ctx).err()).collect()
}

/// What a release is made from.
#[derive(Debug, Clone)]
pub struct ReleaseInput<'a> {
    pub service: &'a Service,
    pub environment: &'a EnvName,
    pub image: &'a PinnedImage,
    pub source_commit: &'a str,
    pub signer_key_id: &'a str,
    pub provenance: Option<&'a str>,
    pub sbom: Option<&'a str>,
    /// The pinned egress rules, when the environment enforces egress: rendered into
    /// `egress.nft` (what the runtime loads) and `egress.json` (what they mean and how each
    /// name resolved), so they are hashed, drift-checked and rolled back with the release.
    pub egress: Option<&'a crate::egress::Pinned>,
    /// The manifest the hosts run when `image` is an image index (chosen for the service's
    /// platform); `None` when `image` is an image manifest.
    pub platform_digest: Option<&'a crate::image::Digest>,
}

/// The nftables file of a release that enforces egress.
pub const EGRESS_NFT: &str = "egress.nft";
/// What the rules of `egress.nft` mean, and how names were pinned.
pub const EGRESS_JSON: &str = "egress.json";
/// The Podman runtime's settings a release runs with (limits, sandbox, health), so that
/// changing them makes a new release that is planned, receipted and rolled back.
pub const RUNTIME_JSON: &str = "runtime.json";

/// What every record of a release says about it: the image, where it came from, who
/// signed it, its attestations. Plans, receipts, the catalog and the record of applied
/// releases all carry this one type (`release.json` on hosts keeps its own strict format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReleaseFacts {
    /// Repository without tag or digest, e.g. `registry:5000/demo/api`.
    pub repository: String,
    /// `sha256:...` the repository's image is pinned to.
    pub digest: String,
    pub source_commit: String,
    pub signer_key_id: String,
    /// Digest of the provenance attestation layer, if one verified.
    pub provenance: Option<String>,
    /// Digest of the SBOM attestation layer, if one verified.
    pub sbom: Option<String>,
    /// What carried the signature and its digest: `legacy sha256:…` (a `.sig` layer),
    /// `bundle sha256:…` or `bundle-keyless sha256:…` (a Sigstore bundle). Set where the
    /// release was verified (plans, receipts, `release add`); not kept in the store's
    /// columns (the catalog keeps it in the release's evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When `digest` is an image index's: the digest of the manifest the hosts run (the
    /// service's platform's entry). Absent for an image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_digest: Option<String>,
    /// What the image's layers hold, as `release add` scanned them: one line, e.g.
    /// `2 layer(s), 14 file(s), 3.1 MiB: no secret values; 1 allowed (/etc/x: why)`
    /// ([`crate::contents::ContentScan::summary`]). Kept in the release's evidence, not
    /// in the store's columns; absent for releases recorded before scans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
}

impl ReleaseFacts {
    /// The release's one human name beside its id: the short digest (`sha256:` and 12 hex
    /// digits) and the source commit (12 characters), e.g. `sha256:0a1b2c3d4e5f, commit 9f8e7d6c5b4a`.
    pub fn short(&self) -> String {
        let digest: String = self.digest.chars().take("sha256:".len() + 12).collect();
        let commit: String = self.source_commit.chars().take(12).collect();
        if commit.is_empty() {
            digest
        } else {
            format!("{digest}, commit {commit}")
        }
    }

    /// `repository@digest`.
    pub fn image(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    /// The digest a host's runtime reports for this release: the platform manifest's for
    /// an image index, else the image's.
    pub fn running_digest(&self) -> &str {
        self.platform_digest.as_deref().unwrap_or(&self.digest)
    }
}

/// `release.json`: what a golden VM's release directory says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseJson {
    pub service: String,
    pub environment: String,
    pub release_id: String,
    pub image: String,
    pub digest: String,
    pub source_commit: String,
    pub signer_key_id: String,
    pub provenance: Option<String>,
    pub sbom: Option<String>,
    /// For an image index: `repository@<platform manifest digest>`, what the Podman runtime
    /// pulls and runs (the index's digest, signed, is `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_image: Option<String>,
}

/// The full content of a release directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseContent {
    pub id: String,
    pub json: ReleaseJson,
    /// Relative path -> bytes, `release.json` included.
    pub files: BTreeMap<String, Vec<u8>>,
    /// What [`content_hash`] gives for `files`; a probe recomputes it on the host.
    pub content_hash: String,
}

impl ReleaseContent {
    /// The tar stream that stages this release.
    pub fn tar(&self) -> Result<Vec<u8>, crate::tarball::TarError> {
        let files: Vec<(&str, &[u8])> = self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        crate::tarball::tar(&files)
    }
}

/// Renders the templates and derives the id and `release.json`.
pub fn render(input: &ReleaseInput<'_>) -> Result<ReleaseContent, ReleaseError> {
    let s = input.service;
    let image = input.image.to_string();
    let ctx = context(s, input.environment.as_str(), &image, input.image.digest.as_str(), input.source_commit);
    let mut files = BTreeMap::new();
    for t in &s.templates {
        files.insert(t.target.clone(), render_one(s.name.as_str(), t, &ctx)?.into_bytes());
    }
    if let Some(p) = s.podman() {
        files.insert(RUNTIME_JSON.to_owned(), canonical::to_canonical(p).expect("no floats"));
    }
    if let Some(pinned) = input.egress {
        files.insert(EGRESS_NFT.to_owned(), crate::egress::render(&pinned.ruleset).into_bytes());
        files.insert(EGRESS_JSON.to_owned(), canonical::to_canonical(pinned).expect("no floats"));
    }
    // The id covers the image and every rendered file, nothing else.
    let mut h = Sha256::new();
    h.update(input.image.to_string().as_bytes());
    let platform_image = input.platform_digest.map(|d| format!("{}@{d}", input.image.repository));
    // Only an index's releases name a platform manifest (the ids of others stay as before).
    if let Some(p) = &platform_image {
        h.update(b"\0platform\0");
        h.update(p.as_bytes());
    }
    for (path, bytes) in &files {
        h.update(b"\0");
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(Sha256::digest(bytes));
    }
    let id = format!("r-{}", &hex::encode(h.finalize())[..16]);
    let json = ReleaseJson {
        service: s.name.to_string(),
        environment: input.environment.to_string(),
        release_id: id.clone(),
        image: input.image.to_string(),
        digest: input.image.digest.to_string(),
        source_commit: input.source_commit.to_owned(),
        signer_key_id: input.signer_key_id.to_owned(),
        provenance: input.provenance.map(str::to_owned),
        sbom: input.sbom.map(str::to_owned),
        platform_image,
    };
    files.insert(RELEASE_JSON.to_owned(), canonical::to_canonical(&json).expect("no floats"));
    let content_hash = content_hash(&files);
    Ok(ReleaseContent { id, json, files, content_hash })
}

/// The shell function the stage and probe scripts use to compute a directory's content
/// identity on a host: every entry counts — directories and files with their permission
/// bits (setuid, setgid and exec included), file bytes, symlinks with their targets, and
/// anything else (FIFOs, sockets, devices) by type. [`content_hash`] computes the same value
/// for the files a release should hold.
pub const HASH_DIR_SH: &str = r#"hash_dir() { (cd "$1" && {
  printf 'dirs\n'; find . -type d -printf '%m %p\0' | LC_ALL=C sort -z
  printf 'files\n'; find . -type f -printf '%m %p\0' | LC_ALL=C sort -z
  printf 'content\n'; find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  printf 'links\n'; find . -type l -printf '%p -> %l\0' | LC_ALL=C sort -z
  printf 'other\n'; find . ! -type d ! -type f ! -type l -printf '%y %p\0' | LC_ALL=C sort -z
} | sha256sum | cut -c1-64); }
"#;

/// The content identity of a release directory holding exactly `files` as staging leaves
/// them (directories 0755, files 0644, nothing else): what `hash_dir` computes on the host.
/// File names are validated to hold no control characters or backslashes, so
/// `sha256sum` prints them as they are.
pub fn content_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::from([".".to_owned()]);
    for p in files.keys() {
        let mut at = p.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(format!("./{parent}"));
            at = parent;
        }
    }
    let sorted = |mut v: Vec<String>| {
        v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        v.concat()
    };
    let mut stream = String::from("dirs\n");
    stream += &sorted(dirs.iter().map(|d| format!("755 {d}\0")).collect());
    stream += "files\n";
    stream += &sorted(files.keys().map(|p| format!("644 ./{p}\0")).collect());
    stream += "content\n";
    let mut content: Vec<(String, String)> =
        files.iter().map(|(p, b)| (format!("./{p}"), hex::encode(Sha256::digest(b)))).collect();
    content.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    stream += &content.iter().map(|(p, h)| format!("{h}  {p}\n")).collect::<String>();
    stream += "links\nother\n";
    format!("sha256:{}", hex::encode(Sha256::digest(stream.as_bytes())))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::manifest;

    /// The example manifest set and its first host.
    /// The example manifests with the command runtime (the lab's shim), and a host.
    pub(crate) fn example() -> (manifest::ManifestSet, manifest::Host) {
        let files = manifest::example::FILES
            .iter()
            .map(|(p, t)| {
                let text = if *p == "services/api.toml" {
                    manifest::example::with_command_runtime(t)
                } else {
                    (*t).to_owned()
                };
                (std::path::PathBuf::from(p), text)
            })
            .collect();
        let set = manifest::validate(std::path::Path::new("m"), &files).unwrap();
        let host = set.environments[0].hosts[0].clone();
        (set, host)
    }

    /// The example manifests as written (the Podman runtime), and a host.
    pub(crate) fn example_podman() -> (manifest::ManifestSet, manifest::Host) {
        let files =
            manifest::example::FILES.iter().map(|(p, t)| (std::path::PathBuf::from(p), (*t).to_owned())).collect();
        let set = manifest::validate(std::path::Path::new("m"), &files).unwrap();
        let host = set.environments[0].hosts[0].clone();
        (set, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn example_service() -> manifest::ManifestSet {
        tests_support::example().0
    }

    fn input<'a>(set: &'a manifest::ManifestSet, env: &'a EnvName, image: &'a PinnedImage) -> ReleaseInput<'a> {
        ReleaseInput {
            service: set.services.values().next().unwrap(),
            environment: env,
            image,
            source_commit: "0123456789abcdef0123456789abcdef01234567",
            signer_key_id: "sha256:k",
            provenance: None,
            sbom: None,
            egress: None,
            platform_digest: None,
        }
    }

    fn image(content: &[u8]) -> PinnedImage {
        PinnedImage {
            repository: crate::image::Repository::new("127.0.0.1:5000/demo/api").unwrap(),
            digest: crate::image::Digest::of(content),
        }
    }

    #[test]
    fn same_inputs_same_release_and_different_inputs_differ() {
        let set = example_service();
        let env = EnvName::new("prod").unwrap();
        let (a, b) = (image(b"a"), image(b"b"));
        let r1 = render(&input(&set, &env, &a)).unwrap();
        let r2 = render(&input(&set, &env, &a)).unwrap();
        assert_eq!(r1, r2);
        assert!(crate::ids::ReleaseId::new(&r1.id).is_ok());
        assert_ne!(render(&input(&set, &env, &b)).unwrap().id, r1.id);
        let staging = EnvName::new("staging").unwrap();
        assert_ne!(render(&input(&set, &staging, &a)).unwrap().id, r1.id, "the rendered env file differs");
        let env_file = String::from_utf8(r1.files["config/api.env"].clone()).unwrap();
        assert!(env_file.contains("SECRETS=API_TOKEN") && env_file.contains(a.digest.as_str()), "{env_file}");
    }

    /// The release's files on disk as staging leaves them (dirs 0755, files 0644).
    fn staged(files: &BTreeMap<String, Vec<u8>>) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for (p, b) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mode = |p: &std::path::Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        mode(dir.path());
        for d in walk_dirs(dir.path()) {
            mode(&d);
        }
        dir
    }

    fn walk_dirs(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                out.extend(walk_dirs(&path));
                out.push(path);
            }
        }
        out
    }

    /// `hash_dir DIR` run by a real shell, as on a host.
    fn hash_on_host(dir: &std::path::Path) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{HASH_DIR_SH}hash_dir \"$1\""))
            .arg("sh")
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
    }

    #[test]
    fn the_content_identity_on_a_host_matches_the_planned_one() {
        let set = example_service();
        let env = EnvName::new("prod").unwrap();
        let img = image(b"a");
        let mut r = render(&input(&set, &env, &img)).unwrap();
        r.files.insert("a b/it's \"deep\"/x.txt".into(), b"x".to_vec());
        let dir = staged(&r.files);
        assert_eq!(hash_on_host(dir.path()), content_hash(&r.files));
    }

    /// Regression: the content hash covered regular files' bytes only, so a symlink to
    /// `/etc/shadow`, a setuid bit, a mode change or an extra directory in a release
    /// passed as intact.
    #[test]
    fn modes_links_and_extra_entries_change_the_content_identity() {
        use std::os::unix::fs::PermissionsExt as _;
        let set = example_service();
        let env = EnvName::new("prod").unwrap();
        let img = image(b"a");
        let r = render(&input(&set, &env, &img)).unwrap();
        let want = content_hash(&r.files);
        let file = |d: &std::path::Path| d.join(RELEASE_JSON);
        let chmod =
            |p: std::path::PathBuf, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        type Tamper = Box<dyn Fn(&std::path::Path)>;
        let cases: Vec<(&str, Tamper)> = vec![
            ("a symlink", Box::new(|d| std::os::unix::fs::symlink("/etc/shadow", d.join("shadow")).unwrap())),
            ("a setuid bit", Box::new(move |d| chmod(file(d), 0o4644))),
            ("an exec bit", Box::new(move |d| chmod(file(d), 0o755))),
            ("a world-writable file", Box::new(move |d| chmod(file(d), 0o666))),
            ("an extra directory", Box::new(|d| std::fs::create_dir(d.join("extra")).unwrap())),
            ("a directory mode", Box::new(move |d| chmod(d.join("config"), 0o777))),
            ("an edited byte", Box::new(move |d| std::fs::write(file(d), b"{}").unwrap())),
            (
                "a FIFO",
                Box::new(|d| {
                    assert!(std::process::Command::new("mkfifo").arg(d.join("pipe")).status().unwrap().success())
                }),
            ),
        ];
        for (what, tamper) in cases {
            let dir = staged(&r.files);
            assert_eq!(hash_on_host(dir.path()), want, "{what}: untouched first");
            tamper(dir.path());
            assert_ne!(hash_on_host(dir.path()), want, "{what} must change the identity");
        }
    }
}
