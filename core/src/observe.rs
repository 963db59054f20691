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

/// The probe: `root service targets|- probe-argv...`, where `targets` is a space-separated
/// list of validated release ids whose directories are hashed too. Data only in arguments.
const PROBE_SCRIPT: &str = r#"set -u
root="$1"; service="$2"; targets="$3"; shift 3
d="$root/$service"
b64() { base64 -w0; echo; }
@HASH_DIR@echo "agentctl-probe 1"
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
    ];
    args.extend(service.probe.iter().cloned());
    RemoteCommand::script(&probe_script(), args)
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
    args.extend(service.egress_list.iter().flatten().cloned());
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
    let running = match running {
        Some(r) if r.len() > MAX_RUNNING => return Err(format!("runtime reported over {MAX_RUNNING} bytes")),
        Some(r) => Some(HostText::from_bytes(&r)).filter(|t| !t.is_empty()),
        None => None,
    };
    Ok(Observation {
        current,
        release_json_sha256: release_json.as_ref().map(|b| format!("sha256:{}", hex::encode(Sha256::digest(b)))),
        release_json,
        content_hash,
        odd_entries: String::from_utf8_lossy(&odd).lines().filter(|l| !l.is_empty()).map(HostText::new).collect(),
        target_hashes,
        running,
    })
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
}
