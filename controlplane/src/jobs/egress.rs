//! `prove egress`: on every host, as the service's workload identity, a connection to each
//! allowed destination (must succeed) and to denied ones (must fail), through the
//! runtime's `egress_connect`. Also the per-host proof that `prove_on_apply` adds to the
//! health gate.

use crate::egress::{self, Expectation};
use crate::manifest::{Environment, Service};
use crate::receipt::{HostOutcome, ReceiptBody, ReceiptKind};
use crate::untrusted::HostText;
use crate::vm::{Fleet, GoldenVm, VmError};
use serde::Serialize;

/// One attempted connection and what happened.
#[derive(Debug, Clone, Serialize)]
pub struct Tried {
    #[serde(flatten)]
    pub expectation: Expectation,
    pub connected: bool,
}

impl Tried {
    pub fn held(&self) -> bool {
        self.connected == self.expectation.allowed
    }
}

/// One host's proof.
#[derive(Debug, Clone, Serialize)]
pub struct HostProof {
    pub host: String,
    pub tried: Vec<Tried>,
    /// Why the proof could not run on this host.
    pub error: Option<HostText>,
}

impl HostProof {
    pub fn held(&self) -> bool {
        self.error.is_none() && self.tried.iter().all(Tried::held)
    }

    /// The expectations that did not hold, one phrase each.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tried
            .iter()
            .filter(|t| !t.held())
            .map(|t| {
                let e = &t.expectation;
                if e.allowed {
                    format!("{}:{} ({}) is unreachable", e.addr, e.port, e.why)
                } else {
                    format!("{}:{} ({}) is reachable", e.addr, e.port, e.why)
                }
            })
            .collect();
        out.extend(self.error.iter().map(ToString::to_string));
        out
    }
}

/// What the proof tries for `service` in `env`: the manifests' allowlist, pinned now.
pub async fn expectations(
    env: &Environment,
    service: &Service,
) -> Result<Vec<Expectation>, crate::deploy::DeployError> {
    let pinned = crate::deploy::pin_egress(service).await?;
    Ok(egress::expectations(&pinned.ruleset, &env.egress.canaries))
}

/// Runs every expectation on one host, then checks that what refused the denied ones can
/// only be the release's rules: the rules loaded on the host must mean what the live
/// release's `egress.json` says. A refused connection alone proves nothing (a closed port
/// refuses too, with or without rules), so a host whose rules are missing, edited or
/// unreadable, or whose live release has none, fails the proof.
pub async fn prove_host(vm: &dyn GoldenVm, service: &Service, expectations: &[Expectation]) -> HostProof {
    let mut tried = Vec::new();
    for e in expectations {
        match vm.connect(service, e.addr, e.port).await {
            Ok(connected) => tried.push(Tried { expectation: e.clone(), connected }),
            Err(err) => {
                return HostProof { host: vm.name().to_owned(), tried, error: Some(HostText::new(&err.to_string())) }
            }
        }
    }
    let error = match vm.egress_state(service).await {
        Err(e) => Some(format!(
            "cannot read the loaded egress rules ({e}): a refused connection alone does not show that the rules refused it"
        )),
        Ok(state) if state.release.is_none() => {
            Some("the live release carries no egress rules (is `[egress] enforce` on?): nothing is there to prove".into())
        }
        Ok(state) => match crate::drift::classify_egress(service.name.as_str(), &state) {
            crate::drift::Status::InSync => None,
            other => Some(format!("the loaded rules are not the release's: {}", other.detail())),
        },
    };
    HostProof { host: vm.name().to_owned(), tried, error: error.map(|e| HostText::new(&e)) }
}

/// Runs the proof on every host of `env`, all hosts at once.
pub async fn prove(
    fleet: &Fleet,
    env: &Environment,
    service: &Service,
    expectations: &[Expectation],
) -> Vec<HostProof> {
    let runs = env.hosts.iter().map(|h| async move {
        match fleet.get(h.name.as_str()) {
            Some(vm) => prove_host(vm, service, expectations).await,
            None => HostProof {
                host: h.name.to_string(),
                tried: Vec::new(),
                error: Some(HostText::new(
                    &VmError::Command { host: h.name.to_string(), detail: HostText::new("not connected") }.to_string(),
                )),
            },
        }
    });
    futures::future::join_all(runs).await
}

/// The signed record of a proof.
pub fn receipt_body(
    env: &Environment,
    service: &Service,
    operator: &str,
    time: String,
    proofs: &[HostProof],
) -> ReceiptBody {
    let held = proofs.iter().all(HostProof::held);
    ReceiptBody {
        rollout: None,
        kind: ReceiptKind::EgressProof,
        time,
        operator: operator.to_owned(),
        plan_id: None,
        environment: Some(env.name.to_string()),
        service: Some(service.name.to_string()),
        release: None,
        hosts: proofs
            .iter()
            .map(|p| HostOutcome {
                host: p.host.clone(),
                before: None,
                after: None,
                rollback_target: None,
                outcome: if p.held() { "held".into() } else { "failed".into() },
                detail: Some(HostText::new(
                    &p.tried
                        .iter()
                        .map(|t| {
                            format!(
                                "{}:{} ({}) {} {}",
                                t.expectation.addr,
                                t.expectation.port,
                                t.expectation.why,
                                if t.expectation.allowed { "allow" } else { "deny" },
                                if t.connected { "connected" } else { "refused" }
                            )
                        })
                        .chain(p.error.iter().map(|e| format!("error: {e}")))
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
            })
            .collect(),
        approvals: vec![],
        outcome: if held { "held".into() } else { "failed".into() },
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[tokio::test]
    async fn names_are_resolved_and_the_resolution_recorded() {
        let files: std::collections::BTreeMap<std::path::PathBuf, String> = crate::manifest::example::FILES
            .iter()
            .map(|(p, t)| (std::path::PathBuf::from(p), (*t).to_owned()))
            .collect();
        let set = crate::manifest::validate(std::path::Path::new("m"), &files).unwrap();
        let mut service = set.services.values().next().unwrap().clone();
        service.egress_rules =
            ["localhost:8080", "10.0.0.0/8:5432"].iter().map(|r| egress::Rule::parse(r).unwrap()).collect();
        let pinned = crate::deploy::pin_egress(&service).await.unwrap();
        let localhost = &pinned.resolved["localhost"];
        assert!(localhost.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()), "{localhost:?}");
        assert!(pinned
            .ruleset
            .allow
            .iter()
            .any(|(n, p)| n.addr == "127.0.0.1".parse::<IpAddr>().unwrap() && *p == 8080));
        assert_eq!(pinned.rules, ["localhost:8080", "10.0.0.0/8:5432"]);

        service.egress_rules = vec![egress::Rule::parse("no-such-host.invalid:443").unwrap()];
        let e = crate::deploy::pin_egress(&service).await.unwrap_err();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    }
}
