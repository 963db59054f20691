//! Turns the files of a manifest directory into a [`ManifestSet`], or into every
//! problem found in them. Pure: the caller reads the files.

use super::model::*;
use super::raw::{self, S};
use crate::diagnostic::{Diagnostic, LineIndex};
use crate::image::{ImageError, Repository};
use crate::names::{EnvName, HostName, SecretName, ServiceName, UserName};
use crate::secrets::find_secret;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The settings file every manifest set has.
pub const CONTROLPLANE_FILE: &str = "controlplane.toml";

/// Validates the files of manifest directory `dir` (paths in `files` are relative to it).
pub fn validate(dir: &Path, files: &BTreeMap<PathBuf, String>) -> Result<ManifestSet, Vec<Diagnostic>> {
    let mut v = Validator { dir, files, diags: Vec::new(), lease: None };
    let set = v.run();
    if v.diags.is_empty() {
        Ok(set.expect("a manifest set without diagnostics is complete"))
    } else {
        Err(v.diags)
    }
}

struct Validator<'a> {
    dir: &'a Path,
    files: &'a BTreeMap<PathBuf, String>,
    diags: Vec<Diagnostic>,
    /// The lock's lease in seconds, once the control-plane settings are read.
    lease: Option<u64>,
}

/// Where a value came from, for one diagnostic.
struct At<'f> {
    file: &'f Path,
    index: &'f LineIndex,
}

impl<'a> Validator<'a> {
    fn run(&mut self) -> Option<ManifestSet> {
        for (path, text) in self.files {
            if path.extension().is_some_and(|e| e == "toml") {
                self.scan_toml_for_secrets(path, text);
            } else if path.starts_with("templates") {
                self.scan_text_for_secrets(path, text);
            }
        }
        let cp = self.control_plane();
        self.lease = cp.as_ref().map(|c| c.0.lock_lease_secs);
        let envs = self.environments();
        let services = self.services();
        if let (Some(envs), Some(services)) = (&envs, &services) {
            self.render_templates(envs, services);
        }
        let (settings, registries, trust, ssh) = cp?;
        Some(ManifestSet {
            dir: self.dir.to_path_buf(),
            settings,
            registries,
            trust,
            ssh,
            environments: envs?,
            services: services?,
        })
    }

    /// Renders every template for every environment with the context a release gets
    /// (closed: no environment, clock or files), so what would fail at plan time fails here
    /// with the template's file and line.
    fn render_templates(&mut self, envs: &[Environment], services: &BTreeMap<ServiceName, Service>) {
        let mut seen = std::collections::BTreeSet::new();
        for service in services.values() {
            for env in envs {
                for e in crate::release::check_templates(service, env.name.as_str()) {
                    let key = (e.template().to_owned(), e.line(), e.to_string());
                    if seen.insert(key) {
                        let hint = match &e {
                            crate::release::ReleaseError::Render { .. } => {
                                "templates see `service`, `environment` and `release` only (see docs/MANIFESTS.md)"
                            }
                            crate::release::ReleaseError::Secret { .. } => {
                                "render a secret's name and let the runtime on the host resolve it"
                            }
                        };
                        let file = PathBuf::from(e.template());
                        self.push(&file, (e.line(), 1), "", e.to_string(), Some(hint.into()));
                    }
                }
            }
        }
    }

    fn push(&mut self, file: &Path, loc: (usize, usize), field: &str, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.dir.join(file),
            line: loc.0,
            column: loc.1,
            field: field.to_owned(),
            message,
            hint,
        });
    }

    fn err<T>(&mut self, at: &At<'_>, v: &S<T>, field: &str, message: String, hint: Option<&str>) {
        let loc = at.index.locate(v.span().start);
        self.push(at.file, loc, field, message, hint.map(str::to_owned));
    }

    /// Parses one TOML file into its as-written type, reporting a syntax or type error,
    /// and every unknown field (each blanked out in turn, so that the next is found too).
    fn parse<T: DeserializeOwned>(&mut self, path: &Path) -> Option<(T, LineIndex)> {
        let text = self.files.get(path)?;
        let index = LineIndex::new(text);
        let mut current = std::borrow::Cow::Borrowed(text.as_str());
        let mut unknown = 0;
        loop {
            let e = match toml::from_str::<T>(&current) {
                Ok(v) if unknown == 0 => return Some((v, index)),
                Ok(_) => return None,
                Err(e) => e,
            };
            let offset = e.span().map_or(0, |s| s.start);
            let field = field_at(text, offset);
            let message = e.message().trim_end().replace('\n', " ");
            let is_unknown = message.starts_with("unknown field");
            let hint = match unknown::did_you_mean(&message).filter(|_| is_unknown) {
                Some(meant) => Some(format!(
                    "did you mean `{meant}`? unknown fields are refused so that a typo never switches a setting off"
                )),
                None => hint_for_parse_error(&message),
            };
            self.push(path, index.locate(offset), &field, message, hint);
            unknown += 1;
            match unknown::blank_entry(&current, offset).filter(|_| is_unknown && unknown < unknown::MAX_UNKNOWN) {
                Some(next) => current = std::borrow::Cow::Owned(next),
                None => return None,
            }
        }
    }

    // ---- secrets -------------------------------------------------------------------

    fn scan_toml_for_secrets(&mut self, path: &Path, text: &str) {
        let Ok(doc) = toml_edit::Document::parse(text) else { return };
        let index = LineIndex::new(text);
        let mut found = Vec::new();
        walk_strings(doc.as_item(), String::new(), &mut |field, value, span| {
            // Host keys are public and high-entropy by nature.
            if field.ends_with("host_key") {
                return;
            }
            if let Some(kind) = find_secret(value) {
                found.push((field, kind, span));
            }
        });
        for (field, kind, span) in found {
            let loc = index.locate(span.map_or(0, |s| s.start));
            self.push(
                path,
                loc,
                &field,
                format!("looks like a secret value: {}", kind.describe()),
                Some(
                    "manifests hold secret *names* only: list the name under `secrets = [...]` of the \
                     service and provide the value on the host"
                        .into(),
                ),
            );
        }
    }

    fn scan_text_for_secrets(&mut self, path: &Path, text: &str) {
        for (n, line) in text.lines().enumerate() {
            if let Some(kind) = find_secret(line) {
                self.push(
                    path,
                    (n + 1, 1),
                    "",
                    format!("template contains a secret value: {}", kind.describe()),
                    Some("templates are rendered into release directories; reference the secret by name".into()),
                );
            }
        }
    }

    // ---- controlplane.toml ---------------------------------------------------------

    fn control_plane(&mut self) -> Option<(Settings, Vec<RegistrySettings>, TrustPolicy, SshSettings)> {
        let path = Path::new(CONTROLPLANE_FILE);
        if !self.files.contains_key(path) {
            self.push(
                path,
                (0, 0),
                "",
                "missing: every manifest set has a `controlplane.toml`".into(),
                Some("run `agentctl init` to scaffold one, or point `--manifests` at the right directory".into()),
            );
            return None;
        }
        let (file, index) = self.parse::<raw::ControlPlaneFile>(path)?;
        let at = At { file: path, index: &index };
        let before = self.diags.len();

        let s = file.controlplane.get_ref();
        let state_password_env =
            self.env_var_name(&at, s.state_password_env.as_ref(), "controlplane.state_password_env");
        let state = self.state_url(&at, &s.state, state_password_env);
        let lock_lease_secs = match &s.lock_lease_secs {
            None => DEFAULT_LOCK_LEASE_SECS,
            Some(v) if (3..=3600).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    &at,
                    v,
                    "controlplane.lock_lease_secs",
                    format!("{} is not between 3 and 3600", v.get_ref()),
                    Some("the holder renews its lease every third of it; the default is 60"),
                );
                DEFAULT_LOCK_LEASE_SECS
            }
        };
        let receipt_key = PathBuf::from(s.receipt_key.get_ref());
        if stays_inside(&receipt_key) {
            self.err(
                &at,
                &s.receipt_key,
                "controlplane.receipt_key",
                "the receipt-signing private key would sit inside the manifest directory, which is committed".into(),
                Some("keep it outside, e.g. `../state/receipt.key`"),
            );
        }
        let receipt_key_password_env =
            self.env_var_name(&at, s.receipt_key_password_env.as_ref(), "controlplane.receipt_key_password_env");
        let operator_env = self
            .env_var_name(&at, s.operator_env.as_ref(), "controlplane.operator_env")
            .unwrap_or_else(|| "USER".into());
        let receipt_public_key = PathBuf::from(s.receipt_public_key.get_ref());
        self.public_key(&at, &s.receipt_public_key, "controlplane.receipt_public_key");
        let plan_max_age_secs = match &s.plan_max_age_secs {
            None => DEFAULT_PLAN_MAX_AGE_SECS,
            Some(v) if (1..=7 * 24 * 3600).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    &at,
                    v,
                    "controlplane.plan_max_age_secs",
                    format!("{} is not between 1 and 604800 (one week)", v.get_ref()),
                    Some("plans are meant to be applied soon after review; the default is 3600"),
                );
                DEFAULT_PLAN_MAX_AGE_SECS
            }
        };
        let settings = Settings {
            plan_max_age_secs,
            lock_lease_secs,
            state: state.unwrap_or(StateUrl::Sqlite(PathBuf::new())),
            receipts_dir: PathBuf::from(s.receipts.get_ref()),
            receipt_key,
            receipt_key_password_env,
            receipt_public_key,
            operator_env,
        };

        let mut registries: Vec<RegistrySettings> = Vec::new();
        for (i, r) in file.registry.iter().enumerate() {
            let r = r.get_ref();
            let field = format!("registry[{i}]");
            let host = r.host.get_ref();
            if !valid_registry_host(host) {
                self.err(
                    &at,
                    &r.host,
                    &format!("{field}.host"),
                    format!("`{host}` is not a registry host: expected `host[:port]`"),
                    Some("write e.g. `127.0.0.1:5000` or `ghcr.io`"),
                );
            } else if registries.iter().any(|x| &x.host == host) {
                self.err(
                    &at,
                    &r.host,
                    &format!("{field}.host"),
                    format!("registry `{host}` is listed twice"),
                    Some("merge the two `[[registry]]` entries"),
                );
            }
            registries.push(RegistrySettings {
                host: host.clone(),
                insecure: r.insecure,
                username_env: self.env_var_name(&at, r.username_env.as_ref(), &format!("{field}.username_env")),
                password_env: self.env_var_name(&at, r.password_env.as_ref(), &format!("{field}.password_env")),
            });
        }

        let t = file.trust.get_ref();
        if t.keys.get_ref().is_empty() && t.identity.is_empty() {
            self.err(
                &at,
                &t.keys,
                "trust.keys",
                "no trusted keys and no keyless identities: nothing could ever be promoted".into(),
                Some("list the cosign public key(s) CI signs with, e.g. `keys = [\"trust/release.pub\"]`, or a `trusted_root` and `[[trust.identity]]` entries"),
            );
        }
        let mut keys = Vec::new();
        for (i, k) in t.keys.get_ref().iter().enumerate() {
            if let Some(pem) = self.public_key(&at, k, &format!("trust.keys[{i}]")) {
                keys.push(TrustedKey { path: PathBuf::from(k.get_ref()), pem });
            }
        }
        let mut builders = Vec::new();
        for (i, b) in t.builders.iter().enumerate() {
            if b.get_ref().trim().is_empty() {
                self.err(
                    &at,
                    b,
                    &format!("trust.builders[{i}]"),
                    "empty builder id".into(),
                    Some("write the builder id provenance names, e.g. `https://github.com/actions/runner`"),
                );
            }
            builders.push(b.get_ref().clone());
        }

        let keyless = self.keyless(&at, t);

        let ssh = file.ssh.get_ref();
        let identity = PathBuf::from(ssh.identity.get_ref());
        if stays_inside(&identity) {
            self.err(
                &at,
                &ssh.identity,
                "ssh.identity",
                "the SSH private key would sit inside the manifest directory, which is committed".into(),
                Some("keep it outside, e.g. `../state/ssh/id_ed25519`"),
            );
        }
        let concurrency = self.ranged(&at, ssh.concurrency.as_ref(), "ssh.concurrency", 1, 256, 16);
        let connect_timeout_secs =
            self.ranged(&at, ssh.connect_timeout_secs.as_ref(), "ssh.connect_timeout_secs", 1, 120, 10);
        let key_exchange = ssh.key_exchange.as_ref().map(|list| {
            for (i, a) in list.get_ref().iter().enumerate() {
                let ok = !a.get_ref().is_empty()
                    && a.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
                if !ok {
                    self.err(
                        &at,
                        a,
                        &format!("ssh.key_exchange[{i}]"),
                        format!("`{}` is not an SSH key-exchange algorithm name", a.get_ref().escape_debug()),
                        Some("e.g. `sntrup761x25519-sha512@openssh.com` or `curve25519-sha256` (see `ssh -Q kex`)"),
                    );
                }
            }
            list.get_ref().iter().map(|a| a.get_ref().clone()).collect::<Vec<_>>()
        });

        (self.diags.len() == before).then_some({
            (
                settings,
                registries,
                TrustPolicy { keys, builders, keyless },
                SshSettings {
                    identity,
                    concurrency: concurrency as usize,
                    connect_timeout_secs: connect_timeout_secs as u64,
                    key_exchange,
                },
            )
        })
    }

    fn state_url(&mut self, at: &At<'_>, v: &S<String>, password_env: Option<String>) -> Option<StateUrl> {
        let url = v.get_ref();
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if !path.is_empty() {
                return Some(StateUrl::Sqlite(PathBuf::from(path)));
            }
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let problem = match url::Url::parse(url) {
                Err(e) => Some((
                    format!("`{url}` is not a URL: {e}"),
                    "e.g. `postgres://controlplane@db.internal:5432/controlplane?sslmode=verify-full`",
                )),
                Ok(u) if u.password().is_some() => Some((
                    "the state URL carries a password, and manifests are committed".to_owned(),
                    "remove it from the URL and name the variable that holds it in `state_password_env`",
                )),
                Ok(u) if u.host_str().is_none_or(str::is_empty) => Some((
                    "the state URL names no host".to_owned(),
                    "e.g. `postgres://controlplane@127.0.0.1:5432/controlplane`",
                )),
                Ok(u) if u.path().trim_start_matches('/').is_empty() => Some((
                    "the state URL names no database".to_owned(),
                    "add the database after the host, e.g. `…:5432/controlplane`",
                )),
                Ok(_) => None,
            };
            return match problem {
                Some((message, hint)) => {
                    self.err(at, v, "controlplane.state", message, Some(hint));
                    None
                }
                None => Some(StateUrl::Postgres { url: url.clone(), password_env }),
            };
        }
        self.err(
            at,
            v,
            "controlplane.state",
            format!("`{url}` is not a state URL"),
            Some("write `sqlite:PATH` (relative to the manifest directory), e.g. `sqlite:../state/controlplane.db`, or `postgres://USER@HOST:PORT/DATABASE`"),
        );
        None
    }

    fn env_var_name(&mut self, at: &At<'_>, v: Option<&S<String>>, field: &str) -> Option<String> {
        let v = v?;
        match SecretName::new(v.get_ref()) {
            Ok(_) => Some(v.get_ref().clone()),
            Err(_) => {
                self.err(
                    at,
                    v,
                    field,
                    format!("`{}` is not an environment variable name", v.get_ref()),
                    Some("name the variable that holds the value, e.g. `REGISTRY_PASSWORD`; never the value itself"),
                );
                None
            }
        }
    }

    /// A PEM public key file inside the manifest directory.
    /// The keyless part of the trust policy: a trusted root and at least one identity,
    /// or neither.
    fn keyless(&mut self, at: &At<'_>, t: &raw::Trust) -> Option<KeylessPolicy> {
        let mut identities = Vec::new();
        for (i, id) in t.identity.iter().enumerate() {
            let field = |f: &str| format!("trust.identity[{i}].{f}");
            let raw = id.get_ref();
            let issuer = raw.issuer.get_ref().trim().to_owned();
            if issuer.is_empty() {
                self.err(
                    at,
                    &raw.issuer,
                    &field("issuer"),
                    "empty OIDC issuer".into(),
                    Some("e.g. `https://token.actions.githubusercontent.com`"),
                );
            }
            let subject = match (&raw.subject, &raw.subject_regexp) {
                (Some(s), None) if !s.get_ref().is_empty() => Some(SubjectMatch::Exact(s.get_ref().clone())),
                (None, Some(r)) => match SubjectMatch::anchored(r.get_ref()) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                        self.err(at, r, &field("subject_regexp"), format!("not a regular expression: {first}"), Some("e.g. `https://github.com/acme/api/\\.github/workflows/.*`; it must match the whole subject"));
                        None
                    }
                },
                _ => {
                    self.err(at, id, &format!("trust.identity[{i}]"), "an identity needs exactly one of `subject` and `subject_regexp`".into(), Some("e.g. `subject = \"https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main\"`"));
                    None
                }
            };
            if let Some(subject) = subject {
                identities.push(AllowedIdentity { issuer, subject });
            }
        }
        let root = match &t.trusted_root {
            None if identities.is_empty() => return None,
            None => {
                self.err(at, &t.keys, "trust.trusted_root", "keyless identities are listed but no `trusted_root`".into(), Some("name the Sigstore trusted root, e.g. `trusted_root = \"trust/trusted_root.json\"` (`cosign trusted-root create` or `gh attestation trusted-root` writes one)"));
                return None;
            }
            Some(r) => r,
        };
        if identities.is_empty() {
            self.err(
                at,
                root,
                "trust.identity",
                "a trusted root but no `[[trust.identity]]`: no keyless signer would be allowed".into(),
                Some("add `[[trust.identity]]` with `issuer` and `subject` (or `subject_regexp`)"),
            );
        }
        let rel = normalize(Path::new(root.get_ref()));
        let json = match self.files.get(&rel) {
            Some(text) => text.clone(),
            None => {
                self.err(
                    at,
                    root,
                    "trust.trusted_root",
                    format!("`{}` does not exist in the manifest directory", rel.display()),
                    Some("keep it in the manifests, e.g. `trust/trusted_root.json`"),
                );
                return None;
            }
        };
        let media = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned));
        if !media.as_deref().is_some_and(|m| m.starts_with("application/vnd.dev.sigstore.trustedroot")) {
            self.err(
                at,
                root,
                "trust.trusted_root",
                format!("`{}` is not a Sigstore trusted root (`trusted_root.json`)", rel.display()),
                Some(
                    "expected JSON with `\"mediaType\": \"application/vnd.dev.sigstore.trustedroot+json;version=0.1\"`",
                ),
            );
            return None;
        }
        Some(KeylessPolicy { trusted_root: rel, trusted_root_json: json, identities })
    }

    fn public_key(&mut self, at: &At<'_>, v: &S<String>, field: &str) -> Option<String> {
        let rel = Path::new(v.get_ref());
        match self.files.get(&normalize(rel)) {
            Some(pem) if pem.contains("-----BEGIN PUBLIC KEY-----") => Some(pem.clone()),
            Some(_) => {
                self.err(at, v, field, format!("`{}` is not a PEM public key", rel.display()), Some("expected a `-----BEGIN PUBLIC KEY-----` file as `cosign generate-key-pair` or `agentctl keys generate` writes"));
                None
            }
            None => {
                self.err(
                    at,
                    v,
                    field,
                    format!("`{}` does not exist in the manifest directory", rel.display()),
                    Some("public keys live inside the manifest directory, e.g. `trust/release.pub`"),
                );
                None
            }
        }
    }

    /// Reads an `allowed_signers` file of approvers; its problems are reported at its lines.
    fn approvers(&mut self, at: &At<'_>, v: &S<String>) -> Vec<crate::approval::AllowedSigner> {
        let rel = normalize(Path::new(v.get_ref()));
        let Some(text) = self.files.get(&rel) else {
            self.err(
                at,
                v,
                "approvers",
                format!("`{}` does not exist in the manifest directory", rel.display()),
                Some("keep the approvers' `allowed_signers` file in the manifests, e.g. `trust/prod.allowed_signers`"),
            );
            return Vec::new();
        };
        match crate::approval::parse_allowed_signers(text) {
            Ok(list) => list,
            Err((line, message)) => {
                self.push(
                    &rel,
                    (line, 1),
                    "",
                    format!("not an allowed_signers line: {message}"),
                    Some("write `NAME ssh-ed25519 AAAA… [comment]`, as `ssh-keygen -Y verify` reads it".into()),
                );
                Vec::new()
            }
        }
    }

    fn ranged(&mut self, at: &At<'_>, v: Option<&S<i64>>, field: &str, min: i64, max: i64, default: i64) -> i64 {
        match v {
            None => default,
            Some(x) if (min..=max).contains(x.get_ref()) => *x.get_ref(),
            Some(x) => {
                self.err(at, x, field, format!("{} is out of range: expected {min} to {max}", x.get_ref()), None);
                default
            }
        }
    }

    // ---- environments --------------------------------------------------------------

    fn named_files(&mut self, folder: &str) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for path in self.files.keys() {
            let in_folder = path.parent() == Some(Path::new(folder)) && path.extension().is_some_and(|e| e == "toml");
            if in_folder {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                out.push((path.clone(), stem));
            }
        }
        out
    }

    fn environments(&mut self) -> Option<Vec<Environment>> {
        let before = self.diags.len();
        let mut envs = Vec::new();
        let mut afters = Vec::new();
        let mut seen_hosts: BTreeMap<(String, u16), (EnvName, HostName)> = BTreeMap::new();
        for (path, stem) in self.named_files("environments") {
            let name = match EnvName::new(&stem) {
                Ok(n) => n,
                Err(e) => {
                    self.push(
                        &path,
                        (0, 0),
                        "",
                        format!("file name: {e}"),
                        Some("rename the file; the environment is called after it".into()),
                    );
                    continue;
                }
            };
            let Some((file, index)) = self.parse::<raw::EnvironmentFile>(&path) else { continue };
            let at = At { file: &path, index: &index };
            let after = file.after.as_ref().and_then(|a| match EnvName::new(a.get_ref()) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.err(&at, a, "after", e.to_string(), None);
                    None
                }
            });
            if let Some(a) = &file.after {
                afters.push((path.clone(), index.locate(a.span().start), name.clone(), a.get_ref().clone()));
            }
            let approvals = self.ranged(&at, file.approvals.as_ref(), "approvals", 0, 10, 0) as u32;
            let approval_valid_secs = self.ranged(
                &at,
                file.approval_valid_secs.as_ref(),
                "approval_valid_secs",
                60,
                7 * 24 * 3600,
                24 * 3600,
            ) as u64;
            let approvers = match &file.approvers {
                Some(v) => self.approvers(&at, v),
                None => Vec::new(),
            };
            let principals: std::collections::BTreeSet<&String> =
                approvers.iter().flat_map(|a| &a.principals).collect();
            if (principals.len() as u32) < approvals {
                let message = format!(
                    "{approvals} approval(s) required, but {} approver(s) listed in `approvers`",
                    principals.len()
                );
                let hint = Some("list the approvers' SSH public keys in an `allowed_signers` file (`NAME ssh-ed25519 AAAA…`) and name it in `approvers`");
                match (&file.approvers, &file.approvals) {
                    (Some(v), _) => self.err(&at, v, "approvers", message, hint),
                    (None, Some(v)) => self.err(&at, v, "approvals", message, hint),
                    (None, None) => {}
                }
            }
            let mut egress = EgressPolicy::default();
            if let Some(e) = &file.egress {
                let e = e.get_ref();
                egress.enforce = e.enforce;
                egress.prove_on_apply = e.prove_on_apply;
                if e.prove_on_apply && !e.enforce {
                    self.push(
                        &path,
                        (1, 1),
                        "egress.prove_on_apply",
                        "an egress proof on apply needs `enforce = true`".into(),
                        Some("set `enforce = true` in `[egress]`".into()),
                    );
                }
                for (i, c) in e.canaries.iter().enumerate() {
                    match crate::egress::Rule::parse(c.get_ref()) {
                        Ok(r @ crate::egress::Rule { to: crate::egress::Destination::Net(n), .. }) if n.is_host() => {
                            egress.canaries.push(r)
                        }
                        Ok(_) => self.err(
                            &at,
                            c,
                            &format!("egress.canaries[{i}]"),
                            format!("`{}` is not one address", c.get_ref().escape_debug()),
                            Some("a canary is `IP:PORT`: one address to try, e.g. `203.0.113.7:443`"),
                        ),
                        Err(why) => self.err(
                            &at,
                            c,
                            &format!("egress.canaries[{i}]"),
                            format!("`{}` is not a destination: {why}", c.get_ref().escape_debug()),
                            Some("a canary is `IP:PORT`, e.g. `203.0.113.7:443`"),
                        ),
                    }
                }
            }
            let mut hosts: Vec<Host> = Vec::new();
            for (i, h) in file.host.iter().enumerate() {
                let Some(host) = self.host(&at, h.get_ref(), i) else { continue };
                if hosts.iter().any(|x| x.name == host.name) {
                    self.err(
                        &at,
                        &h.get_ref().name,
                        &format!("host[{i}].name"),
                        format!("duplicate host `{}` in environment `{name}`", host.name),
                        Some("host names are unique within an environment"),
                    );
                }
                let endpoint = (host.address.clone(), host.port);
                if let Some((env, other)) = seen_hosts.get(&endpoint) {
                    self.err(
                        &at,
                        &h.get_ref().address,
                        &format!("host[{i}].address"),
                        format!("`{}:{}` is already host `{other}` of environment `{env}`", host.address, host.port),
                        Some("each golden VM belongs to one environment"),
                    );
                } else {
                    seen_hosts.insert(endpoint, (name.clone(), host.name.clone()));
                }
                hosts.push(host);
            }
            if file.host.is_empty() {
                self.push(&path, (1, 1), "host", "no hosts: an environment needs at least one `[[host]]`".into(), None);
            }
            let rollout = self.rollout(&at, &file.rollout, file.host.len());
            envs.push(Environment {
                name,
                after,
                approvals,
                approvers,
                approvers_file: file.approvers.as_ref().map(|v| normalize(Path::new(v.get_ref()))),
                approval_valid_secs,
                author_may_approve: file.author_may_approve,
                require_rehearsal: file.require_rehearsal,
                require_provenance: file.require_provenance,
                require_sbom: file.require_sbom,
                rollout: rollout.unwrap_or(Rollout::plain(BatchSize::Count(1), 30)),
                egress,
                hosts,
            });
        }
        // Files that failed to parse still name an environment: no cascade of "does not exist".
        let known: Vec<String> = self.named_files("environments").into_iter().map(|(_, stem)| stem).collect();
        for (path, loc, env, after) in afters.iter().cloned() {
            if env.as_str() == after {
                self.push(
                    &path,
                    loc,
                    "after",
                    format!("environment `{env}` comes after itself"),
                    Some("name the environment a release must pass before this one, or remove `after`".into()),
                );
            } else if !known.contains(&after) {
                self.push(
                    &path,
                    loc,
                    "after",
                    format!("environment `{env}` comes after `{after}`, which does not exist"),
                    Some(format!("known environments: {}", known.join(", "))),
                );
            }
        }
        let ordered = order_environments(envs);
        match ordered {
            Ok(envs) if self.diags.len() == before => Some(envs),
            Ok(_) => None,
            Err(_) => {
                // Name each environment on a cycle at its own `after` (a self-reference was
                // reported above; environments merely waiting behind a cycle are not on it).
                let after_of: BTreeMap<&str, &str> =
                    afters.iter().map(|(_, _, env, after)| (env.as_str(), after.as_str())).collect();
                let cycle_from = |start: &str| -> Option<Vec<String>> {
                    let mut path = vec![start.to_owned()];
                    let mut cur = start;
                    for _ in 0..after_of.len() {
                        cur = after_of.get(cur)?;
                        path.push(cur.to_owned());
                        if cur == start {
                            return Some(path);
                        }
                    }
                    None
                };
                for (path, loc, env, after) in &afters {
                    if env.as_str() == after {
                        continue;
                    }
                    if let Some(cycle) = cycle_from(env.as_str()) {
                        self.push(
                            path,
                            *loc,
                            "after",
                            format!("environments form a cycle: {}", cycle.join(" -> ")),
                            Some("one environment must come first (no `after`)".into()),
                        );
                    }
                }
                None
            }
        }
    }

    fn host(&mut self, at: &At<'_>, h: &raw::Host, i: usize) -> Option<Host> {
        let f = |s: &str| format!("host[{i}].{s}");
        let before = self.diags.len();
        let name =
            HostName::new(h.name.get_ref()).map_err(|e| self.err(at, &h.name, &f("name"), e.to_string(), None)).ok();
        if !valid_address(h.address.get_ref()) {
            self.err(
                at,
                &h.address,
                &f("address"),
                format!("`{}` is not an IP address or host name", h.address.get_ref().escape_debug()),
                Some("write e.g. `127.0.0.1` or `vm-1.internal`"),
            );
        }
        let port = self.ranged(at, h.port.as_ref(), &f("port"), 1, 65535, 22) as u16;
        let user =
            UserName::new(h.user.get_ref()).map_err(|e| self.err(at, &h.user, &f("user"), e.to_string(), None)).ok();
        let host_key = parse_host_key(h.host_key.get_ref());
        if host_key.is_none() {
            self.err(at, &h.host_key, &f("host_key"), "expected a pinned SSH host public key, `ssh-ed25519 AAAA...`".into(), Some("copy the host's `/etc/ssh/ssh_host_ed25519_key.pub` (algorithm and key, no comment) from a trusted channel"));
        }
        let root = remote_path(h.root.get_ref());
        if root.is_none() {
            self.err(
                at,
                &h.root,
                &f("root"),
                format!("`{}` is not a safe absolute path", h.root.get_ref().escape_debug()),
                Some(
                    "use an absolute path of letters, digits, `.`, `_`, `-` and `/`, with no `..`, e.g. `/srv/agents`",
                ),
            );
        }
        if self.diags.len() != before {
            return None;
        }
        Some(Host {
            name: name?,
            address: h.address.get_ref().clone(),
            port,
            user: user?,
            host_key: host_key?,
            root: root?,
        })
    }

    // ---- services ------------------------------------------------------------------

    fn services(&mut self) -> Option<BTreeMap<ServiceName, Service>> {
        let before = self.diags.len();
        let mut out = BTreeMap::new();
        for (path, stem) in self.named_files("services") {
            let name = match ServiceName::new(&stem) {
                Ok(n) => n,
                Err(e) => {
                    self.push(
                        &path,
                        (0, 0),
                        "",
                        format!("file name: {e}"),
                        Some("rename the file; the service is called after it".into()),
                    );
                    continue;
                }
            };
            let Some((file, index)) = self.parse::<raw::ServiceFile>(&path) else { continue };
            let at = At { file: &path, index: &index };
            if let Some(svc) = self.service(&at, name.clone(), &file) {
                out.insert(name, svc);
            }
        }
        (self.diags.len() == before).then_some(out)
    }

    fn service(&mut self, at: &At<'_>, name: ServiceName, f: &raw::ServiceFile) -> Option<Service> {
        let repository = match Repository::new(f.image.get_ref()) {
            Ok(r) => Some(r),
            Err(e @ ImageError::RepositoryWithVersion(_)) => {
                self.err(at, &f.image, "image", format!("{e}: image references here are not pinned; a tag is mutable"), Some("write the repository alone (`127.0.0.1:5000/demo/api`); a release pins the digest: `agentctl release add SERVICE REPO@sha256:...`"));
                None
            }
            Err(e) => {
                self.err(at, &f.image, "image", e.to_string(), None);
                None
            }
        };
        let mut templates: Vec<Template> = Vec::new();
        for (i, t) in f.template.iter().enumerate() {
            let t = t.get_ref();
            let source = normalize(Path::new(t.source.get_ref()));
            let text = self.files.get(&source).cloned();
            match &text {
                None => self.err(
                    at,
                    &t.source,
                    &format!("template[{i}].source"),
                    format!("template `{}` does not exist in the manifest directory", t.source.get_ref()),
                    Some("templates live under `templates/` in the manifest directory"),
                ),
                Some(text) => {
                    if let Err(e) = tera::Tera::default().add_raw_template("t", text) {
                        let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
                        self.err(
                            at,
                            &t.source,
                            &format!("template[{i}].source"),
                            format!("template `{}` does not parse: {}", t.source.get_ref(), cause.replace('\n', " ")),
                            None,
                        );
                    }
                }
            }
            let target = t.target.get_ref();
            let target_ok = relative_path_ok(target)
                && !["release.json", "egress.nft", "egress.json", "runtime.json"].contains(&target.as_str());
            if !target_ok {
                self.err(at, &t.target, &format!("template[{i}].target"), format!("`{}` is not a safe path inside the release directory", target.escape_debug()), Some("use a relative path without `..` (and not `release.json`, which the control plane writes), e.g. `config/app.env`"));
            } else if templates.iter().any(|x| x.target == *target) {
                self.err(
                    at,
                    &t.target,
                    &format!("template[{i}].target"),
                    format!("two templates render to `{target}`"),
                    None,
                );
            }
            templates.push(Template { source, text: text.unwrap_or_default(), target: target.clone() });
        }
        let mut secrets = Vec::new();
        for (i, s) in f.secrets.iter().enumerate() {
            match SecretName::new(s.get_ref()) {
                Ok(n) => secrets.push(n),
                Err(e) => self.err(at, s, &format!("secrets[{i}]"), e.to_string(), None),
            }
        }
        let mut egress_rules = Vec::new();
        for (i, e) in f.egress.iter().enumerate() {
            match crate::egress::Rule::parse(e.get_ref()) {
                Ok(r) => egress_rules.push(r),
                Err(why) => self.err(
                    at,
                    e,
                    &format!("egress[{i}]"),
                    format!("`{}` is not an egress rule: {why}", e.get_ref().escape_debug()),
                    Some("write `host:port`, `ip:port` or `cidr:port` (TCP), e.g. `api.example.com:443`, `10.0.0.0/8:5432`"),
                ),
            }
        }
        let contents_allow = self.contents_allow(at, f);
        let runtime = self.runtime(at, f, &templates);
        let platform = match f.runtime.as_ref().and_then(|r| r.get_ref().platform.as_ref()) {
            None => crate::platform::Platform::default(),
            Some(v) => crate::platform::Platform::parse(v.get_ref()).unwrap_or_else(|e| {
                self.err(
                    at,
                    v,
                    "runtime.platform",
                    e.to_string(),
                    Some("e.g. `platform = \"linux/arm64\"`; the default is `linux/amd64`"),
                );
                crate::platform::Platform::default()
            }),
        };
        Some(Service {
            name,
            repository: repository?,
            runtime: runtime?,
            platform,
            templates,
            secrets,
            egress: f.egress.iter().map(|e| e.get_ref().clone()).collect(),
            egress_rules,
            egress_loopback: f.egress_loopback,
            contents_allow,
        })
    }

    /// `[[contents.allow]]`: absolute paths in the image (a trailing `/` for a directory),
    /// no `..`, each with a reason.
    fn contents_allow(&mut self, at: &At<'_>, f: &raw::ServiceFile) -> Vec<crate::contents::Allowed> {
        let mut out = Vec::new();
        let Some(contents) = &f.contents else { return out };
        for (i, a) in contents.get_ref().allow.iter().enumerate() {
            let a = a.get_ref();
            let path = a.path.get_ref();
            let path_ok = path.starts_with('/')
                && path.len() > 1
                && !path.split('/').any(|c| c == ".." || c == ".")
                && !path.chars().any(char::is_control);
            if !path_ok {
                self.err(
                    at,
                    &a.path,
                    &format!("contents.allow[{i}].path"),
                    format!("`{}` is not an absolute path in the image", path.escape_debug()),
                    Some("write the file's path as the image has it, e.g. `/usr/share/doc/example/test-key.pem`, or a directory ending in `/`"),
                );
                continue;
            }
            let reason = a.reason.get_ref().trim();
            if reason.is_empty() {
                self.err(
                    at,
                    &a.reason,
                    &format!("contents.allow[{i}].reason"),
                    "an allowed path needs a reason".into(),
                    Some(
                        "say why the value is not a secret, e.g. `reason = \"a test key the upstream package ships\"`",
                    ),
                );
                continue;
            }
            out.push(crate::contents::Allowed { path: path.clone(), reason: reason.to_owned() });
        }
        out
    }

    fn argv(&mut self, at: &At<'_>, v: &S<Vec<S<String>>>, field: &str) -> Option<Vec<String>> {
        if v.get_ref().is_empty() {
            self.err(at, v, field, "empty command".into(), Some("write the program and its arguments as a list, e.g. `[\"/usr/local/bin/agent-runtime\", \"activate\"]`"));
            return None;
        }
        let mut out = Vec::new();
        for (i, a) in v.get_ref().iter().enumerate() {
            let arg = a.get_ref();
            if arg.is_empty() || arg.contains('\0') || arg.contains('\n') || arg.len() > 1024 {
                self.err(
                    at,
                    a,
                    &format!("{field}[{i}]"),
                    "arguments must be non-empty single lines under 1024 bytes".into(),
                    None,
                );
                return None;
            }
            out.push(arg.clone());
        }
        Some(out)
    }
}

/// How long a saved plan stays valid when the manifests do not say.
pub const DEFAULT_PLAN_MAX_AGE_SECS: u64 = 3600;
/// How long a lock lease lasts without renewal unless the manifests say otherwise.
pub const DEFAULT_LOCK_LEASE_SECS: u64 = 60;

/// Environments in promotion order, or the cycle that prevents one.
fn order_environments(mut envs: Vec<Environment>) -> Result<Vec<Environment>, Vec<String>> {
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Environment> = Vec::new();
    while !envs.is_empty() {
        let ready = envs.iter().position(|e| match &e.after {
            None => true,
            Some(a) => out.iter().any(|o| &o.name == a) || !envs.iter().any(|x| &x.name == a),
        });
        match ready {
            Some(i) => out.push(envs.remove(i)),
            None => return Err(envs.iter().map(|e| e.name.to_string()).collect()),
        }
    }
    Ok(out)
}

/// Calls `f(field path, value, span)` for every string value under `item`.
/// Receives (field path, string value, span) while walking a document.
type StringVisitor<'a> = dyn FnMut(String, &str, Option<std::ops::Range<usize>>) + 'a;

fn walk_strings(item: &toml_edit::Item, path: String, f: &mut StringVisitor<'_>) {
    use toml_edit::{Item, Value};
    fn walk_value(v: &Value, path: String, f: &mut StringVisitor<'_>) {
        match v {
            Value::String(s) => f(path, s.value(), s.span()),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk_value(x, format!("{path}[{i}]"), f);
                }
            }
            Value::InlineTable(t) => {
                for (k, x) in t.iter() {
                    walk_value(x, join(&path, k), f);
                }
            }
            _ => {}
        }
    }
    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    }
    match item {
        Item::Value(v) => walk_value(v, path, f),
        Item::Table(t) => {
            for (k, x) in t.iter() {
                walk_strings(x, join(&path, k), f);
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                for (k, x) in t.iter() {
                    walk_strings(x, join(&format!("{path}[{i}]"), k), f);
                }
            }
        }
        Item::None => {}
    }
}

/// The key a parse error points into: the left side of `key = value` on that line, or
/// the table header.
fn field_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    if let Some((key, _)) = line.split_once('=') {
        return key.trim().to_owned();
    }
    line.trim().trim_matches(|c| c == '[' || c == ']').to_owned()
}

fn hint_for_parse_error(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("check the spelling: unknown fields are refused so that a typo never switches a setting off".into())
    } else if message.starts_with("missing field") {
        Some("add the field; see manifests/ in the project for a commented example".into())
    } else if message.contains("invalid type") {
        Some("check the value's type (quoted string, number, list, table)".into())
    } else {
        None
    }
}

/// True when `p`, relative to the manifest directory, stays inside it.
fn stays_inside(p: &Path) -> bool {
    !p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
}

fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

fn valid_registry_host(s: &str) -> bool {
    let (host, port) = s.rsplit_once(':').unwrap_or((s, "1"));
    valid_address(host) && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn valid_address(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn parse_host_key(s: &str) -> Option<HostKey> {
    const ALGORITHMS: &[&str] =
        &["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"];
    let mut parts = s.split(' ');
    let (algorithm, key) = (parts.next()?, parts.next()?);
    let blob = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    // The blob starts with its own algorithm name: a key pasted under the wrong label is wrong.
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let named = len == algorithm.len() && blob.get(4..4 + len)? == algorithm.as_bytes();
    (parts.next().is_none() && ALGORITHMS.contains(&algorithm) && named)
        .then(|| HostKey { algorithm: algorithm.into(), key: key.into() })
}

fn safe_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn remote_path(s: &str) -> Option<RemotePath> {
    let rest = s.strip_prefix('/')?;
    (s.len() <= 200 && !rest.is_empty() && rest.trim_end_matches('/').split('/').all(safe_component))
        .then(|| RemotePath(s.trim_end_matches('/').to_owned()))
}

/// A relative path for files inside a release directory. Spaces and quotes are allowed
/// (nothing builds a shell line from them); control characters, backslashes, leading
/// `-` or `.` and `..` are not.
pub fn relative_path_ok(s: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && !c.starts_with('.')
            && !c.starts_with('-')
            && c.chars().all(|ch| !ch.is_control() && ch != '\\')
    };
    s.len() <= 99 && !s.starts_with('/') && s.split('/').all(component_ok)
}

mod rollout;
mod runtime;
mod unknown;

#[cfg(test)]
mod tests;
