//! Turns the files of a manifest directory into a [`ManifestSet`], or into every
//! problem found in them. Pure: the caller reads the files.
//!
//! This file runs the validation and holds what every part shares (locations, parsing,
//! ranges); each part of the manifest set has its file in `validate/`: `controlplane`,
//! `environments` (and `rollout`, an environment's `[rollout]`), `services` (and `runtime`,
//! a service's `[runtime]`), `secrets` (secret values anywhere), `unknown` (unknown fields).

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
}

/// How long a saved plan stays valid when the manifests do not say.
pub const DEFAULT_PLAN_MAX_AGE_SECS: u64 = 3600;
/// How long a lock lease lasts without renewal unless the manifests say otherwise.
pub const DEFAULT_LOCK_LEASE_SECS: u64 = 60;

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

mod controlplane;
mod environments;
mod rollout;
mod runtime;
mod secrets;
mod services;
mod unknown;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
