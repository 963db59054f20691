//! The soak: after a batch is healthy, its workload is watched for a while before the
//! rollout goes on (`[rollout] soak_secs`). Pure decisions: what one look at a host says
//! ([`Seen`]) and whether it still holds against the first look ([`judge`]); the job
//! takes the looks and keeps the clock.

use crate::podman::{ContainerState, Report};
use crate::untrusted::HostText;
use serde::{Deserialize, Serialize};

/// What the runtime reported about the release's workload at one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The Podman runtime: the container of the release.
    Container { status: String, id: String, restarts: u64, digest: String, release: String },
    /// The command runtime: the digest it reports as running (empty: nothing).
    Digest(String),
}

impl Seen {
    /// What the look saw, for the receipt: `container 0123456789ab running, 0 restarts,
    /// image sha256:…`, or the digest the runtime reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Container { status, id, restarts, digest, .. } => {
                format!("container {} {status}, {restarts} restarts, image {digest}", short(id))
            }
            Self::Digest(d) if d.is_empty() => "the runtime reports nothing running".into(),
            Self::Digest(d) => format!("the runtime reports {d} running"),
        }
    }

    /// Reads the probe's `running` report (already sanitized). `Err`: what the report says
    /// instead of a workload (no Podman, no container) or why it cannot be read.
    pub fn from_report(running: Option<&HostText>) -> Result<Self, String> {
        let text = running.map(HostText::as_str).unwrap_or_default().trim();
        if !text.starts_with("podman=") {
            return Ok(Self::Digest(text.to_owned()));
        }
        match Report::parse(text)?.container {
            Some(ContainerState::Present { status, digest, restarts, release, id }) => {
                Ok(Self::Container { status, id, restarts, digest, release })
            }
            Some(ContainerState::Absent) => Err("the release's container is gone (removed?)".into()),
            None if text == "podman=none" => Err("podman is no longer installed".into()),
            None => Err("`current` no longer names a release".into()),
        }
    }
}

/// Whether the workload still holds at a later look `now`, against the first look `first`
/// (taken when the soak began) and the release's `release` id and image `digests` (the
/// signed digest and, for an image index, its platform manifest's: a runtime may report
/// either). `Err` says what changed.
pub fn judge(first: &Seen, now: &Seen, release: &str, digests: &[&str]) -> Result<(), String> {
    let ours = |d: &str| digests.contains(&d);
    let wanted = digests.last().copied().unwrap_or_default();
    match (first, now) {
        (
            Seen::Container { id: id0, restarts: r0, .. },
            Seen::Container { status, id, restarts, digest: live, release: label },
        ) => {
            if label != release {
                return Err(format!("the container under the release's name is labelled `{label}`, not `{release}`"));
            }
            if status != "running" {
                return Err(format!("the container is {status}, not running"));
            }
            if !id0.is_empty() && id != id0 {
                return Err(format!("the container was replaced (id {} is now {})", short(id0), short(id)));
            }
            if restarts != r0 {
                return Err(format!("the container restarted (restart count {r0} is now {restarts})"));
            }
            if !ours(live) {
                return Err(format!("the container runs image {live}, not the release's {wanted}"));
            }
            Ok(())
        }
        (_, Seen::Digest(live)) if ours(live) => Ok(()),
        (_, Seen::Digest(live)) => Err(format!(
            "the runtime reports `{}` running, not the release's `{wanted}`",
            if live.is_empty() { "nothing" } else { live }
        )),
        (Seen::Digest(_), Seen::Container { .. }) => Err("the runtime changed during the soak".into()),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What a receipt records of one host's soak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoakRecord {
    pub host: String,
    /// The batch (1: the canary).
    pub batch: usize,
    /// When the watch began and ended (RFC 3339, UTC).
    pub from: String,
    pub to: String,
    /// Looks taken after the first.
    pub checks: u32,
    /// What the first look saw (the workload each later look is held against).
    pub observed: String,
    /// `held`, or what changed.
    pub verdict: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const ID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn look(status: &str, id: &str, restarts: u64) -> Seen {
        let line = format!("podman=1 container={status} digest={D} restarts={restarts} release=r-1 id={id}");
        Seen::from_report(Some(&HostText::new(&line))).unwrap()
    }

    #[test]
    fn a_steady_workload_holds_and_every_change_is_named() {
        let id = &ID[..64];
        let first = look("running", id, 0);
        assert_eq!(judge(&first, &look("running", id, 0), "r-1", &[D]), Ok(()));
        let other = "b".repeat(64);
        for (now, says) in [
            (look("exited", id, 0), "the container is exited, not running"),
            (look("running", id, 1), "restart count 0 is now 1"),
            (look("running", &other, 0), "the container was replaced (id aaaaaaaaaaaa is now bbbbbbbbbbbb)"),
        ] {
            let why = judge(&first, &now, "r-1", &[D]).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
        assert!(judge(&first, &look("running", id, 0), "r-2", &[D]).unwrap_err().contains("labelled `r-1`"));
        assert!(judge(&first, &look("running", id, 0), "r-1", &[&D.replace('1', "2")])
            .unwrap_err()
            .contains("runs image"));
    }

    #[test]
    fn gone_containers_and_the_command_runtime() {
        let gone = Seen::from_report(Some(&HostText::new("podman=1 container=absent"))).unwrap_err();
        assert!(gone.contains("gone"), "{gone}");
        assert!(Seen::from_report(Some(&HostText::new("podman=none"))).unwrap_err().contains("no longer installed"));
        let first = Seen::from_report(Some(&HostText::new(D))).unwrap();
        assert_eq!(judge(&first, &first, "r-1", &[D]), Ok(()));
        let nothing = Seen::from_report(None).unwrap();
        assert!(judge(&first, &nothing, "r-1", &[D]).unwrap_err().contains("`nothing` running"));
        // An image index: the runtime may report the index's digest or its platform's.
        let platform = D.replace('1', "9");
        let runs_platform = Seen::from_report(Some(&HostText::new(&platform))).unwrap();
        assert_eq!(judge(&first, &runs_platform, "r-1", &[D, &platform]), Ok(()));
        assert!(judge(&first, &runs_platform, "r-1", &[D]).is_err());
    }
}
