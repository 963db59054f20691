//! What a golden VM says about one service, gathered in one round trip by a fixed
//! script and parsed strictly. Nothing here is believed until it is validated: the
//! output is bounded, `current` is never followed outside the releases directory, and
//! `release.json` is size-limited and parsed with unknown fields refused.

use crate::ids::{ContentHash, ReleaseId};
use crate::manifest::{Host, Service};
use crate::release::{self, ReleaseJson, MAX_RELEASE_JSON};
use crate::remote::RemoteCommand;
use crate::untrusted::HostText;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Output of the probe script beyond this is refused.
pub const MAX_PROBE_OUTPUT: usize = 256 * 1024;
const MAX_RUNNING: usize = 4096;

/// The probe: `root service targets|- seen|- probe-argv...`, where `targets` is a
/// space-separated list of validated release ids whose directories are hashed too, and
/// `seen` asks for the live release's [`Stamp`] (`-`: not wanted; `0`: wanted, none seen
/// yet; a stamp: answer `same` without hashing when it still holds). Data only in
/// arguments.
const PROBE_SCRIPT: &str = r#"set -u
root="$1"; service="$2"; targets="$3"; seen="$4"; shift 4
d="$root/$service"
b64() { base64 -w0; echo; }
@HASH_DIR@stamp=""
if [ "$seen" != - ]; then
  stamp=$(find "$d/current" "$d/releases" -printf '%y %m %U %G %s %i %T@ %C@ %p\0%l\0' 2>/dev/null | sha256sum)
  stamp=${stamp%% *}
  if [ "$stamp" = "$seen" ]; then
    echo "agentctl-probe 1"; echo "same $stamp"
    printf 'running '; "$@" "$service" 2>/dev/null | head -c 4097 | b64
    echo "end"; exit 0
  fi
fi
echo "agentctl-probe 1"
if [ -n "$stamp" ]; then echo "stamp $stamp"; fi
if [ -L "$d/current" ]; then
  t=$(readlink "$d/current")
  printf 'current '; printf %s "$t" | head -c 4096 | b64
else
  t=""; echo "current -"
fi
safe=0
case "$t" in releases/r-*) safe=1 ;; esac
case "$t" in releases/*/*|*..*) safe=0 ;; esac
if [ "$safe" = 1 ] && [ -d "$d/$t" ] && [ ! -L "$d/$t" ]; then
  if [ -f "$d/$t/release.json" ] && [ ! -L "$d/$t/release.json" ]; then printf 'json '; head -c 65537 "$d/$t/release.json" | b64; else echo "json -"; fi
  echo "hash $(hash_dir "$d/$t")"
  printf 'odd '; (cd "$d/$t" && find . ! -type d ! -type f | head -c 4096) | b64
else
  echo "json -"; echo "hash -"; echo "odd -"
fi
for t in $targets; do
  case "$t" in
    r-*) if [ -d "$d/releases/$t" ] && [ ! -L "$d/releases/$t" ]; then echo "target $t $(hash_dir "$d/releases/$t")"; else echo "target $t -"; fi ;;
  esac
done
printf 'running '; "$@" "$service" 2>/dev/null | head -c 4097 | b64
echo "end"
"#;

/// At most this many release directories are hashed besides the live one.
pub const MAX_TARGETS: usize = 8;

/// The probe script with the content-identity function in it.
pub fn probe_script() -> String {
    PROBE_SCRIPT.replace("@HASH_DIR@", release::HASH_DIR_SH)
}

/// The remote command that observes `service` on `host`; `targets` are releases whose
/// directories are hashed too (the way back, the release a rollback goes to).
pub fn probe_command(host: &Host, service: &Service, targets: &[&ReleaseId]) -> RemoteCommand {
    let list: Vec<&str> = targets.iter().take(MAX_TARGETS).map(|t| t.as_str()).collect();
    let mut args = vec![
        host.root.to_string(),
        service.name.to_string(),
        if list.is_empty() { "-".to_owned() } else { list.join(" ") },
        "-".to_owned(),
    ];
    args.extend(running_argv(host, service));
    RemoteCommand::script(&probe_script(), args)
}

/// What the probe runs to learn what is running (it appends the service name).
fn running_argv(host: &Host, service: &Service) -> Vec<String> {
    match &service.runtime {
        crate::manifest::Runtime::Command(c) => c.probe.clone(),
        crate::manifest::Runtime::Podman(_) => crate::podman::running_argv(host, service),
    }
}

/// The watch's probe of `service` on `host`: everything, with the live release's stamp,
/// or only `same` and what is running when the stamp is still `seen`.
pub fn watch_command(host: &Host, service: &Service, seen: Option<&Stamp>) -> RemoteCommand {
    let mut args = vec![
        host.root.to_string(),
        service.name.to_string(),
        "-".to_owned(),
        seen.map_or_else(|| "0".to_owned(), |s| s.0.clone()),
    ];
    args.extend(running_argv(host, service));
    RemoteCommand::script(&probe_script(), args)
}

/// What the host computes over the service's metadata, in one `find` that follows no
/// link: where `current` points, and for every entry under `releases/` (the live release
/// and those kept for rollback) its type, mode, owner, size, inode, modification and
/// change times (nanoseconds), path and link target. Writing, renaming, replacing or
/// changing the mode of anything there changes a change time, so an unchanged stamp lets
/// the watch skip hashing the content; the watch still hashes in full at its
/// `full_interval`, because a change time can be forged by whoever owns the host's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(String);

impl Stamp {
    fn parse(hex: &str) -> Result<Self, String> {
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            Ok(Self(hex.to_owned()))
        } else {
            Err("a stamp is not a sha256".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The watch's probe answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Everything, and the stamp it was read under (none when the host has no release
    /// to stamp, or when it was not asked for one).
    Full { observation: Observation, stamp: Option<Stamp> },
    /// The stamp asked about still holds; what is running is read anew.
    Same { stamp: Stamp, running: Option<HostText> },
}

impl Answer {
    /// The observation this answer stands for, given what was seen under `seen`.
    pub fn observation(self, seen: Option<&(Stamp, Observation)>) -> Result<(Observation, Option<Stamp>), String> {
        match self {
            Answer::Full { observation, stamp } => Ok((observation, stamp)),
            Answer::Same { stamp, running } => match seen {
                Some((s, o)) if *s == stamp => Ok((Observation { running, ..o.clone() }, Some(stamp))),
                _ => Err("the host answered `same` for a stamp it was not asked about".into()),
            },
        }
    }
}

/// The egress probe: `root service rules-argv...`. Prints the live release's
/// `egress.json` and what the runtime lists as loaded, both base64.
const EGRESS_SCRIPT: &str = r#"set -u
root="$1"; service="$2"; shift 2
d="$root/$service"
b64() { base64 -w0; echo; }
echo "agentctl-egress 1"
if [ -L "$d/current" ] && [ -f "$d/current/egress.json" ] && [ ! -L "$d/current/egress.json" ]; then
  printf 'json '; head -c 65537 "$d/current/egress.json" | b64
else
  echo "json -"
fi
printf 'live '; "$@" "$service" 2>/dev/null | head -c 200000 | b64
echo "end"
"#;

/// The remote command that reads `service`'s egress state on `host` (its manifest must
/// name `egress_rules`).
pub fn egress_command(host: &Host, service: &Service) -> RemoteCommand {
    let mut args = vec![host.root.to_string(), service.name.to_string()];
    match &service.runtime {
        crate::manifest::Runtime::Command(c) => args.extend(c.egress_list.iter().flatten().cloned()),
        crate::manifest::Runtime::Podman(_) => args.extend(crate::podman::rules_argv()),
    }
    RemoteCommand::script(EGRESS_SCRIPT, args)
}

/// What the egress probe reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressObservation {
    /// The live release's `egress.json` (at most 64 KiB + 1).
    pub release: Option<Vec<u8>>,
    /// The runtime's listing of the loaded rules (`nft -j`), possibly empty.
    pub live: Vec<u8>,
}

/// Parses the egress probe's output, strictly.
pub fn parse_egress(output: &[u8]) -> Result<EgressObservation, String> {
    if output.len() > MAX_PROBE_OUTPUT {
        return Err(format!("egress output is over {MAX_PROBE_OUTPUT} bytes"));
    }
    let text = std::str::from_utf8(output).map_err(|_| "egress output is not UTF-8".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some("agentctl-egress 1") {
        return Err("egress output does not start with its header".into());
    }
    let mut field = |key: &str| -> Result<Option<Vec<u8>>, String> {
        let line = lines.next().ok_or_else(|| format!("egress output ends before `{key}`"))?;
        let v = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).ok_or_else(|| format!("expected `{key}`"))?;
        if v == "-" || v.is_empty() {
            return Ok(None);
        }
        B64.decode(v).map(Some).map_err(|_| format!("`{key}` is not base64"))
    };
    let release = field("json")?;
    let live = field("live")?.unwrap_or_default();
    if lines.next() != Some("end") {
        return Err("egress output is truncated".into());
    }
    Ok(EgressObservation { release, live })
}

/// Where `current` points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "target", rename_all = "kebab-case")]
pub enum Current {
    /// No `current` symlink.
    Missing,
    /// `releases/<id>` with a well-formed id.
    Release(ReleaseId),
    /// Anywhere else: never followed (sanitized before anyone prints it).
    Outside(HostText),
}

/// One host's state for one service, as it reported it (validated, not yet compared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub current: Current,
    /// Raw `release.json` bytes (at most `MAX_RELEASE_JSON + 1`).
    #[serde(skip)]
    pub release_json: Option<Vec<u8>>,
    pub release_json_sha256: Option<String>,
    /// `sha256:` content hash of the directory `current` points at.
    pub content_hash: Option<ContentHash>,
    /// Entries that are neither files nor directories (symlinks, devices) in the release.
    pub odd_entries: Vec<HostText>,
    /// Content identity of each requested release directory that exists on the host.
    pub target_hashes: std::collections::BTreeMap<ReleaseId, ContentHash>,
    /// What the runtime reports as running (sanitized), if anything.
    pub running: Option<HostText>,
}

impl Observation {
    /// The release directory's id, when `current` points at one.
    pub fn release_id(&self) -> Option<&ReleaseId> {
        match &self.current {
            Current::Release(id) => Some(id),
            _ => None,
        }
    }

    /// `release.json` parsed, or why it cannot be believed.
    pub fn release(&self) -> Result<Option<ReleaseJson>, String> {
        let Some(bytes) = &self.release_json else { return Ok(None) };
        if bytes.len() > MAX_RELEASE_JSON {
            return Err(format!("release.json is over {MAX_RELEASE_JSON} bytes"));
        }
        serde_json::from_slice(bytes).map(Some).map_err(|e| format!("release.json is malformed: {e}"))
    }

    /// What a saved plan remembers of this host, to notice later that it moved.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            current: match &self.current {
                Current::Missing => None,
                Current::Release(id) => Some(format!("releases/{id}")),
                Current::Outside(t) => Some(t.to_string()),
            },
            release_json_sha256: self.release_json_sha256.clone(),
            running: self.running.clone(),
        }
    }
}

/// The parts of a host's state a plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub current: Option<String>,
    pub release_json_sha256: Option<String>,
    pub running: Option<HostText>,
}

/// Parses the probe's output, strictly.
pub fn parse(output: &[u8]) -> Result<Observation, String> {
    match parse_answer(output)? {
        Answer::Full { observation, .. } => Ok(observation),
        Answer::Same { .. } => Err("the host answered `same` to a probe that asked for everything".into()),
    }
}

/// What the runtime reported as running, bounded and sanitized.
fn running_text(running: Option<Vec<u8>>) -> Result<Option<HostText>, String> {
    match running {
        Some(r) if r.len() > MAX_RUNNING => Err(format!("runtime reported over {MAX_RUNNING} bytes")),
        Some(r) => Ok(Some(HostText::from_bytes(&r)).filter(|t| !t.is_empty())),
        None => Ok(None),
    }
}

/// Parses the probe's output, strictly, in either of its two shapes.
pub fn parse_answer(output: &[u8]) -> Result<Answer, String> {
    if output.len() > MAX_PROBE_OUTPUT {
        return Err(format!("probe output is over {MAX_PROBE_OUTPUT} bytes"));
    }
    let text = std::str::from_utf8(output).map_err(|_| "probe output is not UTF-8".to_owned())?;
    let mut lines = text.lines().peekable();
    if lines.next() != Some("agentctl-probe 1") {
        return Err("probe output does not start with its header (a login banner or a shell rc file printing?)".into());
    }
    let field = |lines: &mut std::iter::Peekable<std::str::Lines<'_>>, key: &str| -> Result<Option<String>, String> {
        let line = lines.next().ok_or_else(|| format!("probe output ends before `{key}`"))?;
        if key == "end" {
            return if line == "end" { Ok(None) } else { Err("probe output is truncated".into()) };
        }
        let value = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).ok_or_else(|| {
            format!("expected `{key}` in probe output, got `{}`", line.chars().take(40).collect::<String>())
        })?;
        Ok((value != "-" && !value.is_empty()).then(|| value.to_owned()))
    };
    let decode = |v: Option<String>, what: &str| -> Result<Option<Vec<u8>>, String> {
        v.map(|s| B64.decode(s).map_err(|_| format!("`{what}` is not base64"))).transpose()
    };
    let hex_hash = |v: Option<String>, what: &str| -> Result<Option<ContentHash>, String> {
        v.map(|h| ContentHash::new(&format!("sha256:{h}")).map_err(|_| format!("`{what}` is not a sha256"))).transpose()
    };
    if let Some(same) = lines.next_if(|l| l.starts_with("same ")) {
        let stamp = Stamp::parse(&same["same ".len()..])?;
        let running = running_text(decode(field(&mut lines, "running")?, "running")?)?;
        field(&mut lines, "end").map_err(|_| "probe output is truncated".to_owned())?;
        return Ok(Answer::Same { stamp, running });
    }
    let stamp = match lines.next_if(|l| l.starts_with("stamp ")) {
        Some(l) => Some(Stamp::parse(&l["stamp ".len()..])?),
        None => None,
    };
    let current_raw = decode(field(&mut lines, "current")?, "current")?;
    let release_json = decode(field(&mut lines, "json")?, "json")?;
    let content_hash = hex_hash(field(&mut lines, "hash")?, "hash")?;
    let odd = decode(field(&mut lines, "odd")?, "odd")?.unwrap_or_default();
    let mut target_hashes = std::collections::BTreeMap::new();
    while let Some(t) = lines.next_if(|l| l.starts_with("target ")) {
        let mut words = t.split(' ').skip(1);
        let (Some(id), Some(hash), None) = (words.next(), words.next(), words.next()) else {
            return Err("a `target` line is malformed".into());
        };
        let id = ReleaseId::new(id).map_err(|_| "a `target` line names no release id".to_owned())?;
        if target_hashes.len() >= MAX_TARGETS {
            return Err(format!("the probe reported more than {MAX_TARGETS} targets"));
        }
        if let Some(h) = hex_hash((hash != "-").then(|| hash.to_owned()), "target")? {
            target_hashes.insert(id, h);
        }
    }
    let running = decode(field(&mut lines, "running")?, "running")?;
    field(&mut lines, "end").map_err(|_| "probe output is truncated".to_owned())?;
    let current = match current_raw {
        None => Current::Missing,
        Some(raw) => {
            let t = String::from_utf8_lossy(&raw).into_owned();
            match t.strip_prefix("releases/") {
                Some(id) => match ReleaseId::new(id) {
                    Ok(id) => Current::Release(id),
                    Err(_) => Current::Outside(HostText::new(&t)),
                },
                None => Current::Outside(HostText::new(&t)),
            }
        }
    };
    let running = running_text(running)?;
    let observation = Observation {
        current,
        release_json_sha256: release_json.as_ref().map(|b| format!("sha256:{}", hex::encode(Sha256::digest(b)))),
        release_json,
        content_hash,
        odd_entries: String::from_utf8_lossy(&odd).lines().filter(|l| !l.is_empty()).map(HostText::new).collect(),
        target_hashes,
        running,
    };
    Ok(Answer::Full { observation, stamp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(current: &str, json: &str, hash: &str, running: &str) -> Vec<u8> {
        let e = |s: &str| if s.is_empty() { "-".to_owned() } else { B64.encode(s) };
        format!(
            "agentctl-probe 1\ncurrent {}\njson {}\nhash {hash}\nodd \nrunning {}\nend\n",
            e(current),
            e(json),
            e(running)
        )
        .into_bytes()
    }

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn parses_a_healthy_host() {
        let o = parse(&out("releases/r-0123456789abcdef", "{}", H, "sha256:x\n")).unwrap();
        assert_eq!(o.current, Current::Release(crate::ids::test_id("r-0123456789abcdef")));
        assert_eq!(o.content_hash.as_ref().map(ContentHash::as_str), Some(&*format!("sha256:{H}")));
        assert_eq!(o.running.as_ref().map(HostText::as_str), Some("sha256:x"));
        assert!(o.release().is_err(), "`{{}}` is not a release.json");
    }

    #[test]
    fn outside_targets_are_not_releases() {
        for t in ["../../etc", "/etc", "releases/../../etc", "releases/r-0123456789abcdef/x", "releases/R-1"] {
            assert!(matches!(parse(&out(t, "", "-", "")).unwrap().current, Current::Outside(_)), "{t}");
        }
        assert_eq!(parse(&out("", "", "-", "")).unwrap().current, Current::Missing);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"Welcome to host!\nagentctl-probe 1\n").unwrap_err().contains("header"));
        assert!(parse(b"agentctl-probe 1\ncurrent -\n").unwrap_err().contains("ends before"));
        assert!(parse(&out("x", "", "nothex", "")).is_err());
        assert!(parse(&vec![b'a'; MAX_PROBE_OUTPUT + 1]).is_err());
        let mut truncated = out("x", "", "-", "");
        truncated.truncate(truncated.len() - 4);
        assert!(parse(&truncated).is_err());
    }

    #[test]
    fn oversized_release_json_is_not_believed() {
        let big = "x".repeat(MAX_RELEASE_JSON + 1);
        let o = parse(&out("releases/r-0123456789abcdef", &big, H, "")).unwrap();
        assert!(o.release().unwrap_err().contains("over"));
    }

    #[test]
    fn the_probe_script_runs_against_a_real_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rel = root.join("api/releases/r-0123456789abcdef");
        std::fs::create_dir_all(&rel).unwrap();
        std::fs::write(rel.join("release.json"), "{\"a\":1}").unwrap();
        std::os::unix::fs::symlink("releases/r-0123456789abcdef", root.join("api/current")).unwrap();
        let cmd = RemoteCommand::script(
            &probe_script(),
            [
                root.display().to_string(),
                "api".into(),
                "r-0123456789abcdef".into(),
                "-".into(),
                "echo".into(),
                "sha256:running".into(),
            ],
        );
        let o = std::process::Command::new(&cmd.program).args(&cmd.args).output().unwrap();
        let obs = parse(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
        assert_eq!(obs.current, Current::Release(crate::ids::test_id("r-0123456789abcdef")));
        assert_eq!(obs.release_json.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(obs.running.as_ref().map(HostText::as_str), Some("sha256:running api"));
        let target = obs.target_hashes.get(&crate::ids::test_id("r-0123456789abcdef"));
        assert!(obs.content_hash.is_some() && obs.content_hash.as_ref() == target);

        // Pointed outside: reported, not followed.
        std::fs::remove_file(root.join("api/current")).unwrap();
        std::os::unix::fs::symlink("../../etc", root.join("api/current")).unwrap();
        let o = std::process::Command::new(&cmd.program).args(&cmd.args).output().unwrap();
        let obs = parse(&o.stdout).unwrap();
        assert_eq!(obs.current, Current::Outside(HostText::new("../../etc")));
        assert!(obs.release_json.is_none() && obs.content_hash.is_none());
    }

    fn watch_answer(root: &std::path::Path, seen: Option<&Stamp>) -> Answer {
        let (set, host) = crate::release::tests_support::example();
        let host = Host { root: crate::manifest::RemotePath(root.display().to_string()), ..host };
        let api = set.services.values().find(|s| s.name.as_str() == "api").expect("the example has `api`");
        let mut service = api.clone();
        if let crate::manifest::Runtime::Command(c) = &mut service.runtime {
            c.probe = vec!["echo".into(), "sha256:running".into()];
        }
        let cmd = watch_command(&host, &service, seen);
        let o = std::process::Command::new(&cmd.program).args(&cmd.args).output().unwrap();
        parse_answer(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    #[test]
    fn an_unchanged_stamp_skips_hashing_and_any_change_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rel = root.join("api/releases/r-0123456789abcdef");
        std::fs::create_dir_all(rel.join("etc")).unwrap();
        std::fs::write(rel.join("release.json"), "{\"a\":1}").unwrap();
        std::fs::write(rel.join("etc/config"), "port = 1").unwrap();
        std::os::unix::fs::symlink("releases/r-0123456789abcdef", root.join("api/current")).unwrap();

        let Answer::Full { observation: full, stamp: Some(stamp) } = watch_answer(root, None) else {
            panic!("a first watch probe reads everything and stamps it")
        };
        assert!(full.content_hash.is_some());
        let seen = (stamp.clone(), full.clone());
        let same = watch_answer(root, Some(&stamp));
        assert!(matches!(&same, Answer::Same { stamp: s, .. } if *s == stamp), "{same:?}");
        let (o, _) = same.observation(Some(&seen)).unwrap();
        assert_eq!(o, full, "an unchanged stamp stands for the same observation");

        // The same size and the modification time put back: the change time still moves.
        let config = rel.join("etc/config");
        let mtime = std::fs::metadata(&config).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&config, "port = 2").unwrap();
        std::fs::File::options().write(true).open(&config).unwrap().set_modified(mtime).unwrap();
        let Answer::Full { observation: changed, stamp: Some(new) } = watch_answer(root, Some(&stamp)) else {
            panic!("an edited release is read in full")
        };
        assert_ne!(new, stamp);
        assert_ne!(changed.content_hash, full.content_hash);

        // A new file, a mode change, `current` moved: each ends the stamp.
        let mut last = new;
        let changes: [&dyn Fn(); 3] = [
            &|| std::fs::write(rel.join("etc/extra"), "").unwrap(),
            &|| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(rel.join("etc/extra"), std::fs::Permissions::from_mode(0o600)).unwrap()
            },
            &|| {
                // An identical copy of the release, under another id.
                let copy = root.join("api/releases/r-1111111111111111");
                std::fs::create_dir_all(copy.join("etc")).unwrap();
                for f in ["release.json", "etc/config", "etc/extra"] {
                    std::fs::copy(rel.join(f), copy.join(f)).unwrap();
                }
                std::fs::remove_file(root.join("api/current")).unwrap();
                std::os::unix::fs::symlink("releases/r-1111111111111111", root.join("api/current")).unwrap()
            },
        ];
        for change in changes {
            change();
            match watch_answer(root, Some(&last)) {
                Answer::Full { stamp: Some(s), .. } => last = s,
                other => panic!("a change must end the stamp: {other:?}"),
            }
        }

        // A host that claims `same` for a stamp it was not asked about is not believed.
        let other = Stamp::parse(&"0".repeat(64)).unwrap();
        let lie = Answer::Same { stamp: other, running: None };
        assert!(lie.observation(Some(&seen)).is_err());
        assert!(parse(b"agentctl-probe 1\nsame 00\nrunning -\nend\n").is_err());
    }
}
