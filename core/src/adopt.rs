//! Adoption: what a host runs that the state has no record of (a fleet deployed before
//! this control plane, a fresh state database), checked from what the host reports before
//! it may become the host's recorded release — its way back. The signature of its image is
//! checked by the caller; here, everything the host says about it must agree.

use crate::ids::{ContentHash, ReleaseId};
use crate::image::{Digest, PinnedImage};
use crate::manifest::Service;
use crate::observe::{Current, Observation};
use crate::release::ReleaseJson;
use crate::untrusted::HostText;

/// A live release that may be adopted, once its image verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub release_id: ReleaseId,
    /// Its `release.json` (every text field sanitized).
    pub json: ReleaseJson,
    /// The image it names (pinned by digest, in the service's repository).
    pub image: PinnedImage,
    /// The content identity of its directory as the host hashed it: recorded as the
    /// release's, so that any later change is tampering.
    pub content_hash: ContentHash,
}

/// What there is to adopt on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No `current`: nothing runs, nothing to adopt.
    Nothing,
    /// The live release is already the recorded one.
    Recorded(ReleaseId),
    /// A live release with no record, consistent in every way the host can show.
    Candidate(Box<Candidate>),
}

/// Checks what `obs` (one host's probe) shows of `service` in `environment`, given the
/// release the state records for it (`recorded`). `Err` says why what runs cannot be
/// adopted.
pub fn check(service: &Service, environment: &str, obs: &Observation, recorded: Option<&str>) -> Result<Found, String> {
    let id = match &obs.current {
        Current::Missing => return Ok(Found::Nothing),
        Current::Outside(t) => return Err(format!("`current` points outside the releases directory, at `{t}`")),
        Current::Release(id) => id.clone(),
    };
    if recorded == Some(id.as_str()) {
        return Ok(Found::Recorded(id));
    }
    let Some(content_hash) = obs.content_hash.clone() else {
        return Err(format!("`current` points at `releases/{id}`, which is gone"));
    };
    if !obs.odd_entries.is_empty() {
        return Err(format!("release `{id}` contains entries that are not regular files"));
    }
    let json = match obs.release() {
        Ok(Some(j)) => sanitized(j),
        Ok(None) => return Err(format!("release `{id}` has no `release.json`")),
        Err(e) => return Err(format!("release `{id}`: {}", HostText::new(&e))),
    };
    let says = |what: &str, value: &str, expected: &str| {
        format!("its `release.json` names {what} `{value}`, not `{expected}`")
    };
    if json.release_id != id.as_str() {
        return Err(says("release", &json.release_id, id.as_str()));
    }
    if json.service != service.name.as_str() {
        return Err(says("service", &json.service, service.name.as_str()));
    }
    if json.environment != environment {
        return Err(says("environment", &json.environment, environment));
    }
    let image = match crate::image::ImageRef::parse(&json.image) {
        Ok(crate::image::ImageRef::Pinned(p)) => p,
        _ => return Err(format!("its `release.json` names `{}`, which is not an image pinned by digest", json.image)),
    };
    if image.repository != service.repository {
        return Err(says("repository", image.repository.as_str(), service.repository.as_str()));
    }
    if image.digest.as_str() != json.digest {
        return Err(format!("its `release.json` names image `{}` but digest `{}`", json.image, json.digest));
    }
    let platform = match json.platform_image.as_deref() {
        None => None,
        Some(p) => match crate::image::ImageRef::parse(p) {
            Ok(crate::image::ImageRef::Pinned(pi)) if pi.repository == service.repository => {
                Some(pi.digest.to_string())
            }
            _ => {
                return Err(format!(
                    "its `release.json` names `{p}` to run, which is not the service's image pinned by digest"
                ))
            }
        },
    };
    let expected = platform.clone().unwrap_or_else(|| json.digest.clone());
    let running = obs.running.as_ref().map(HostText::as_str);
    match running {
        Some(r) if r.starts_with("podman=") => {
            let report = crate::podman::Report::parse(r)?;
            let findings = report.findings(id.as_str(), &expected);
            if !findings.is_empty() {
                let said: Vec<String> = findings.iter().map(ToString::to_string).collect();
                return Err(format!("its workload is not running as released: {}", said.join("; ")));
            }
        }
        Some(r) if r == json.digest || Some(r) == platform.as_deref() => {}
        Some(r) => return Err(format!("the runtime reports image `{r}` running, not `{expected}`")),
        None => return Err("the runtime reports nothing running".into()),
    }
    if Digest::new(&expected).is_err() {
        return Err(format!("its `release.json` names a malformed platform image `{expected}`"));
    }
    Ok(Found::Candidate(Box::new(Candidate { release_id: id, json, image, content_hash })))
}

/// `release.json`'s text fields, sanitized (they are shown and recorded).
fn sanitized(j: ReleaseJson) -> ReleaseJson {
    let s = |v: String| HostText::new(&v).as_str().to_owned();
    ReleaseJson {
        service: s(j.service),
        environment: s(j.environment),
        release_id: s(j.release_id),
        image: s(j.image),
        digest: s(j.digest),
        source_commit: s(j.source_commit),
        signer_key_id: s(j.signer_key_id),
        provenance: j.provenance.map(s),
        sbom: j.sbom.map(s),
        platform_image: j.platform_image.map(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::tests_support;

    const ID: &str = "r-0123456789abcdef";

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    fn json(edit: impl FnOnce(&mut ReleaseJson)) -> Vec<u8> {
        let (set, _) = tests_support::example();
        let svc = set.services.values().next().unwrap();
        let mut j = ReleaseJson {
            service: svc.name.to_string(),
            environment: "prod".into(),
            release_id: ID.into(),
            image: format!("{}@{}", svc.repository, digest()),
            digest: digest(),
            source_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            signer_key_id: "sha256:k".into(),
            provenance: None,
            sbom: None,
            platform_image: None,
        };
        edit(&mut j);
        serde_json::to_vec(&j).unwrap()
    }

    fn obs(json: Vec<u8>, running: Option<&str>) -> Observation {
        Observation {
            current: Current::Release(crate::ids::test_id(ID)),
            release_json_sha256: None,
            release_json: Some(json),
            content_hash: Some(crate::ids::test_hash("sha256:h")),
            odd_entries: vec![],
            target_hashes: Default::default(),
            running: running.map(HostText::new),
        }
    }

    fn run(o: &Observation, recorded: Option<&str>) -> Result<Found, String> {
        let (set, _) = tests_support::example();
        check(set.services.values().next().unwrap(), "prod", o, recorded)
    }

    #[test]
    fn a_consistent_live_release_is_a_candidate() {
        let d = digest();
        let found = run(&obs(json(|_| {}), Some(&d)), None).unwrap();
        let Found::Candidate(c) = found else { panic!("{found:?}") };
        assert_eq!((c.release_id.as_str(), c.image.digest.as_str()), (ID, d.as_str()));
        assert_eq!(run(&obs(json(|_| {}), Some(&d)), Some(ID)).unwrap(), Found::Recorded(crate::ids::test_id(ID)));
        let nothing = Observation { current: Current::Missing, ..obs(json(|_| {}), None) };
        assert_eq!(run(&nothing, None).unwrap(), Found::Nothing);
    }

    #[test]
    fn what_the_host_cannot_show_consistently_is_not_adopted() {
        let d = digest();
        let cases: Vec<(Observation, &str)> = vec![
            (obs(json(|j| j.environment = "staging".into()), Some(&d)), "names environment `staging`, not `prod`"),
            (obs(json(|j| j.release_id = "r-fedcba9876543210".into()), Some(&d)), "names release"),
            (obs(json(|j| j.service = "web".into()), Some(&d)), "names service `web`"),
            (obs(json(|j| j.image = format!("127.0.0.1:5000/other/x@{d}")), Some(&d)), "names repository"),
            (obs(json(|j| j.image = "127.0.0.1:5000/demo/api:latest".into()), Some(&d)), "not an image pinned"),
            (obs(b"{\"EVIL\":1}".to_vec(), Some(&d)), "release.json is malformed"),
            (obs(json(|_| {}), None), "reports nothing running"),
            (obs(json(|_| {}), Some("sha256:other")), "reports image `sha256:other` running"),
            (obs(json(|_| {}), Some("podman=1")), "not running as released"),
            (Observation { content_hash: None, ..obs(json(|_| {}), Some(&d)) }, "which is gone"),
            (obs(json(|j| j.platform_image = Some("garbage".into())), Some(&d)), "names `garbage` to run"),
        ];
        for (o, why) in cases {
            let err = run(&o, None).unwrap_err();
            assert!(err.contains(why), "expected `{why}` in `{err}`");
        }
    }
}
