//! Drift classification: what was recorded against what a host reports, re-derived
//! from the host itself. Pure.

use crate::observe::{Current, Observation};
use crate::records::DeploymentRecord;
use crate::untrusted::HostText;
use serde::Serialize;

/// One field that differs, with both values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub field: &'static str,
    pub recorded: String,
    pub live: String,
}

/// How one (host, service) stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    InSync,
    Drifted {
        differences: Vec<Difference>,
    },
    Missing {
        reason: String,
    },
    Tampered {
        reason: String,
    },
    Unreachable {
        reason: String,
        security: bool,
    },
    /// Nothing recorded and nothing live.
    NotDeployed,
    /// The release is in sync, but the egress rules loaded on the host do not mean what
    /// the release's rules mean (flushed, edited, never loaded).
    Egress {
        differences: Vec<String>,
    },
    /// The live release's workload does not run: its container is stopped, exited or
    /// gone, or the host has no Podman (the Podman runtime).
    Stopped {
        reason: String,
    },
    /// The live release's workload restarted since it started.
    CrashLooping {
        reason: String,
    },
    /// What runs under the service's names was not started by agentctl for the live
    /// release (made by hand, or a stray beside it).
    Foreign {
        reason: String,
    },
}

impl Status {
    pub fn label(&self) -> &'static str {
        match self {
            Self::InSync => "in-sync",
            Self::Drifted { .. } => "drifted",
            Self::Missing { .. } => "missing",
            Self::Tampered { .. } => "tampered",
            Self::Unreachable { .. } => "unreachable",
            Self::NotDeployed => "not-deployed",
            Self::Egress { .. } => "egress",
            Self::Stopped { .. } => "stopped",
            Self::CrashLooping { .. } => "crash-looping",
            Self::Foreign { .. } => "foreign",
        }
    }

    /// In sync, or rightly empty.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::InSync | Self::NotDeployed)
    }

    /// One line saying what is wrong.
    pub fn detail(&self) -> String {
        match self {
            Self::InSync | Self::NotDeployed => String::new(),
            Self::Egress { differences } => differences.join("; "),
            Self::Drifted { differences } => differences
                .iter()
                .map(|d| format!("{}: recorded `{}`, live `{}`", d.field, d.recorded, d.live))
                .collect::<Vec<_>>()
                .join("; "),
            Self::Missing { reason }
            | Self::Tampered { reason }
            | Self::Stopped { reason }
            | Self::CrashLooping { reason }
            | Self::Foreign { reason } => reason.clone(),
            // Once: the SSH edge's own message may already say it.
            Self::Unreachable { reason, security: true } if !reason.starts_with("SECURITY:") => {
                format!("SECURITY: {reason}")
            }
            Self::Unreachable { reason, .. } => reason.clone(),
        }
    }
}

fn or_none(s: Option<&str>) -> String {
    s.unwrap_or("none").to_owned()
}

/// Compares the egress rules loaded on a host with the live release's (`egress.json`).
pub fn classify_egress(service: &str, obs: &crate::observe::EgressObservation) -> Status {
    let expected = match &obs.release {
        None => None,
        Some(b) => match serde_json::from_slice::<crate::egress::Pinned>(b) {
            Ok(p) => Some(p.ruleset),
            Err(e) => return Status::Tampered { reason: format!("egress.json cannot be read: {e}") },
        },
    };
    let live = crate::egress::from_nft_json(service, &obs.live);
    match (expected, live) {
        (None, Ok(None)) => Status::InSync,
        (None, Ok(Some(_))) => Status::Egress { differences: vec!["rules are loaded but the release has none".into()] },
        (Some(_), Ok(None)) => Status::Egress { differences: vec!["no egress rules are loaded (flushed?)".into()] },
        (Some(_), Err(why)) | (None, Err(why)) => {
            Status::Egress { differences: vec![format!("the loaded rules are not ours: {why}")] }
        }
        (Some(e), Ok(Some(l))) => {
            let d = crate::egress::differences(&e, &l);
            if d.is_empty() {
                Status::InSync
            } else {
                Status::Egress { differences: d }
            }
        }
    }
}

/// Classifies what `obs` shows for a service whose recorded state is `record`.
pub fn classify(service: &str, record: Option<&DeploymentRecord>, obs: &Observation) -> Status {
    let id = match &obs.current {
        Current::Outside(t) => {
            return Status::Tampered { reason: format!("`current` points outside the releases directory, at `{t}`") }
        }
        Current::Missing => {
            return match record {
                Some(r) if !r.release_id.is_empty() => {
                    Status::Missing { reason: format!("no `current` (recorded `{}`)", r.release_id) }
                }
                _ => Status::NotDeployed,
            };
        }
        Current::Release(id) => id,
    };
    let Some(live_hash) = &obs.content_hash else {
        return Status::Missing { reason: format!("`current` points at `releases/{id}`, which is gone") };
    };
    if !obs.odd_entries.is_empty() {
        return Status::Tampered {
            reason: format!(
                "release `{id}` contains entries that are not regular files: {}",
                obs.odd_entries.iter().map(HostText::as_str).collect::<Vec<_>>().join(", ")
            ),
        };
    }
    let json = match obs.release() {
        Ok(Some(j)) => j,
        Ok(None) => return Status::Tampered { reason: format!("release `{id}` has no `release.json`") },
        Err(e) => return Status::Tampered { reason: format!("release `{id}`: {}", HostText::new(&e)) },
    };
    if json.release_id != id.as_str() || json.service != service {
        return Status::Tampered {
            reason: format!(
                "`release.json` says release `{}` of `{}`, but sits in `releases/{id}` of `{service}`",
                HostText::new(&json.release_id),
                HostText::new(&json.service)
            ),
        };
    }
    let Some(r) = record.filter(|r| !r.release_id.is_empty()) else {
        return Status::Drifted {
            differences: vec![Difference {
                field: "symlink target",
                recorded: "none".into(),
                live: format!("releases/{id}"),
            }],
        };
    };
    if r.release_id == id.as_str() && r.content_hash != live_hash.as_str() {
        return Status::Tampered {
            reason: format!(
                "release `{id}` is not what was applied: content identity {live_hash} instead of {} (files, modes, links or extra entries changed)",
                r.content_hash
            ),
        };
    }
    let mut differences = Vec::new();
    let mut diff = |field: &'static str, recorded: String, live: String| {
        if recorded != live {
            differences.push(Difference { field, recorded, live });
        }
    };
    diff("symlink target", format!("releases/{}", r.release_id), format!("releases/{id}"));
    diff("source commit", r.source_commit.clone(), HostText::new(&json.source_commit).to_string());
    let running = obs.running.as_ref().map(HostText::as_str);
    // Like with like: a release of an image index runs its platform manifest, which its
    // `release.json` names (believed only for the recorded release, whose content identity
    // was just checked); any other release runs the image's own digest.
    let platform = json
        .platform_image
        .as_deref()
        .and_then(|i| i.rsplit_once('@'))
        .map(|(_, d)| d.to_owned())
        .filter(|_| r.release_id == id.as_str());
    let expected = platform.clone().unwrap_or_else(|| r.digest.clone());
    let podman = running.filter(|r| r.starts_with("podman=")).map(crate::podman::Report::parse);
    let findings = match podman {
        // A runtime of the host's own may report the index's digest or the platform's.
        None if running.is_some() && (running == Some(r.digest.as_str()) || running == platform.as_deref()) => {
            Vec::new()
        }
        None => {
            diff("image digest", expected.clone(), or_none(running));
            Vec::new()
        }
        Some(Err(e)) => return Status::Tampered { reason: e },
        Some(Ok(report)) => report.findings(id.as_str(), &expected),
    };
    use crate::podman::Finding;
    for f in &findings {
        if let Finding::Digest(live) = f {
            diff("image digest", expected.clone(), live.clone());
        }
    }
    let said = |pick: fn(&Finding) -> bool| -> Option<String> {
        let v: Vec<String> = findings.iter().filter(|f| pick(f)).map(ToString::to_string).collect();
        (!v.is_empty()).then(|| v.join("; "))
    };
    if let Some(reason) = said(|f| matches!(f, Finding::Foreign(_) | Finding::Strays(_))) {
        return Status::Foreign { reason };
    }
    if !differences.is_empty() {
        return Status::Drifted { differences };
    }
    if let Some(reason) = said(|f| matches!(f, Finding::NoPodman | Finding::Absent | Finding::Stopped(_))) {
        return Status::Stopped { reason };
    }
    if let Some(reason) = said(|f| matches!(f, Finding::CrashLooping(_))) {
        return Status::CrashLooping { reason };
    }
    Status::InSync
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_security_event_says_security_once() {
        for reason in ["host `a` presented another key", "SECURITY: host `a` presented another key"] {
            let d = Status::Unreachable { reason: reason.into(), security: true }.detail();
            assert_eq!(d.matches("SECURITY:").count(), 1, "{d}");
        }
    }
    use crate::release::ReleaseJson;

    const ID: &str = "r-0123456789abcdef";
    const OTHER: &str = "r-fedcba9876543210";
    const D: &str = "sha256:aaaa";

    fn json(id: &str, service: &str, commit: &str) -> Vec<u8> {
        let j = ReleaseJson {
            service: service.into(),
            environment: "prod".into(),
            release_id: id.into(),
            image: format!("r/x@{D}"),
            digest: D.into(),
            source_commit: commit.into(),
            signer_key_id: "k".into(),
            provenance: None,
            sbom: None,
            platform_image: None,
        };
        serde_json::to_vec(&j).unwrap()
    }

    fn obs(current: Current, json: Option<Vec<u8>>, hash: Option<&str>, running: Option<&str>) -> Observation {
        Observation {
            current,
            release_json_sha256: None,
            release_json: json,
            content_hash: hash.map(crate::ids::test_hash),
            odd_entries: vec![],
            target_hashes: Default::default(),
            running: running.map(HostText::new),
        }
    }

    fn record() -> DeploymentRecord {
        DeploymentRecord {
            environment: "prod".into(),
            service: "api".into(),
            host: "vm-1".into(),
            release_id: ID.into(),
            digest: D.into(),
            source_commit: "c1".into(),
            content_hash: crate::ids::test_hash("sha256:h").to_string(),
            rollback_target: None,
            plan_id: "p".into(),
            updated_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    fn healthy() -> Observation {
        obs(Current::Release(crate::ids::test_id(ID)), Some(json(ID, "api", "c1")), Some("sha256:h"), Some(D))
    }

    fn check(o: Observation, want: &str, detail: &str) {
        let s = classify("api", Some(&record()), &o);
        assert_eq!(s.label(), want, "{s:?}");
        assert!(s.detail().contains(detail), "{s:?}");
    }

    #[test]
    fn classifies_every_case() {
        check(healthy(), "in-sync", "");
        check(
            obs(
                Current::Release(crate::ids::test_id(OTHER)),
                Some(json(OTHER, "api", "c1")),
                Some("sha256:h"),
                Some(D),
            ),
            "drifted",
            "symlink target: recorded `releases/r-0123456789abcdef`, live `releases/r-fedcba9876543210`",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(json(ID, "api", "c2")), Some("sha256:h"), Some(D)),
            "drifted",
            "source commit: recorded `c1`, live `c2`",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(json(ID, "api", "c1")), Some("sha256:edited"), Some(D)),
            // Regression: `chmod 4777` on a live file stayed `in-sync`; any change to what
            // was applied is tampering, not drift.
            "tampered",
            "is not what was applied",
        );
        check(
            obs(
                Current::Release(crate::ids::test_id(ID)),
                Some(json(ID, "api", "c1")),
                Some("sha256:h"),
                Some("sha256:other"),
            ),
            "drifted",
            "image digest: recorded `sha256:aaaa`, live `sha256:other`",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(json(ID, "api", "c1")), Some("sha256:h"), None),
            "drifted",
            "live `none`",
        );
        // An image index's release runs its platform manifest: that digest is in sync (a
        // runtime of the host's own may report either), any other is drift.
        let p = &format!("sha256:{}", "b".repeat(64));
        let indexed = |running: &str| {
            let mut j: ReleaseJson = serde_json::from_slice(&json(ID, "api", "c1")).unwrap();
            j.platform_image = Some(format!("r/x@{p}"));
            let j = serde_json::to_vec(&j).unwrap();
            obs(Current::Release(crate::ids::test_id(ID)), Some(j), Some("sha256:h"), Some(running))
        };
        check(indexed(p), "in-sync", "");
        check(indexed(D), "in-sync", "");
        check(indexed("sha256:other"), "drifted", &format!("image digest: recorded `{p}`, live `sha256:other`"));
        let podman = |digest: &str| format!("podman=1 container=running digest={digest} restarts=0 release={ID}");
        check(indexed(&podman(p)), "in-sync", "");
        let c = format!("sha256:{}", "c".repeat(64));
        check(indexed(&podman(&c)), "drifted", &format!("image digest: recorded `{p}`, live `{c}`"));
        check(obs(Current::Missing, None, None, None), "missing", "no `current`");
        check(obs(Current::Release(crate::ids::test_id(ID)), None, None, None), "missing", "gone");
        check(obs(Current::Outside(HostText::new("../../etc")), None, None, None), "tampered", "outside");
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(b"{not json".to_vec()), Some("sha256:h"), Some(D)),
            "tampered",
            "malformed",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(json(OTHER, "api", "c1")), Some("sha256:h"), Some(D)),
            "tampered",
            "says release",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), Some(json(ID, "web", "c1")), Some("sha256:h"), Some(D)),
            "tampered",
            "of `web`",
        );
        check(
            obs(Current::Release(crate::ids::test_id(ID)), None, Some("sha256:h"), Some(D)),
            "tampered",
            "no `release.json`",
        );
        let mut odd = healthy();
        odd.odd_entries = vec![HostText::new("./link")];
        check(odd, "tampered", "not regular files");
    }

    #[test]
    fn nothing_recorded() {
        assert_eq!(classify("api", None, &obs(Current::Missing, None, None, None)), Status::NotDeployed);
        assert_eq!(classify("api", None, &healthy()).label(), "drifted");
    }
}
