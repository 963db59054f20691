//! Day two on a fleet this control plane did not build: `adopt` records what a host runs
//! (verified first) as its way back; `host forget` retires the recorded history of a host
//! that was re-imaged or replaced under the same name. Both are dry runs until applied,
//! write under the service's lock, and end in a receipt.

use crate::adopt::{self, Candidate, Found};
use crate::deploy::{DeployError, Deployer, Receipts};
use crate::ids::PlanId;
use crate::manifest::{Environment, Service};
use crate::receipt::{HostOutcome, ReceiptBody, ReceiptKind};
use crate::records::HistoryEntry;
use crate::release::ReleaseFacts;
use crate::store::{AppliedRelease, DeploymentRecord, Fence, Write};
use crate::untrusted::HostText;
use crate::verify::{Requirements, Verified};
use crate::vm::Fleet;

/// What one host has to adopt, or why not.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "finding", rename_all = "kebab-case")]
pub enum HostFinding {
    /// A live release with no record, verified: adopting records it.
    Adopt { release_id: String, image: String, source_commit: String, signer_key_id: String },
    /// What runs is already recorded.
    Recorded { release_id: String },
    /// Nothing runs.
    Nothing,
    /// What runs cannot be adopted, and why.
    Refused { reason: String },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostAdoption {
    pub host: String,
    #[serde(flatten)]
    pub finding: HostFinding,
}

/// What `adopt` found (and, applied, recorded).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Adoption {
    pub environment: String,
    pub service: String,
    pub hosts: Vec<HostAdoption>,
    /// The receipt, when it was applied.
    pub receipt: Option<String>,
}

impl Adoption {
    /// Why applying this adoption is refused (some host runs what cannot be adopted), if it is.
    pub fn refusal(&self) -> Option<DeployError> {
        let hosts = self.refused();
        (!hosts.is_empty()).then(|| DeployError::NotAdoptable {
            service: self.service.clone(),
            environment: self.environment.clone(),
            hosts,
        })
    }

    /// The hosts whose live release cannot be adopted, with why.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.hosts
            .iter()
            .filter_map(|h| match &h.finding {
                HostFinding::Refused { reason } => Some((h.host.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What a host's recorded history held, when it was forgotten.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Forgotten {
    pub service: String,
    /// Its history as a stack, oldest first (the last entry was its recorded release).
    pub history: Vec<String>,
    pub receipt: Option<String>,
}

/// What `host forget` found (and, applied, retired).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Forget {
    pub environment: String,
    pub host: String,
    pub services: Vec<Forgotten>,
}

impl Deployer<'_> {
    pub(crate) fn host_in(&self, env: &Environment, host: &str) -> Result<(), DeployError> {
        if env.hosts.iter().any(|h| h.name.as_str() == host) {
            Ok(())
        } else {
            Err(DeployError::UnknownHost {
                host: host.to_owned(),
                environment: env.name.to_string(),
                known: env.hosts.iter().map(|h| h.name.to_string()).collect::<Vec<_>>().join(", "),
            })
        }
    }

    /// What there is to adopt of `service` on `env`'s hosts (or `host` alone): each live
    /// release the state has no record of, checked on the host and verified against the
    /// trust policy as a promotion to `env` would be. Changes nothing.
    pub async fn adoption(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        host: Option<&str>,
    ) -> Result<(Adoption, Vec<(String, Candidate, Verified)>), DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        if let Some(h) = host {
            self.host_in(env, h)?;
        }
        let recorded = self.recorded(env, service).await?;
        let current = recorded.current();
        let targets = recorded.probe_targets(&env.hosts, None);
        let observed = self.observe(fleet, env, service, &targets).await?;
        let observed = observed.into_iter().filter(|(h, _)| host.is_none_or(|x| x == h));
        let mut hosts = Vec::new();
        let mut adoptable = Vec::new();
        for (name, obs) in observed {
            let finding = match adopt::check(service, env.name.as_str(), &obs, current.get(&name).map(String::as_str)) {
                Ok(Found::Nothing) => HostFinding::Nothing,
                Ok(Found::Recorded(id)) => HostFinding::Recorded { release_id: id.to_string() },
                Err(reason) => HostFinding::Refused { reason },
                Ok(Found::Candidate(c)) => match self.verify_candidate(env, service, &c).await {
                    Ok(v) => {
                        let f = HostFinding::Adopt {
                            release_id: c.release_id.to_string(),
                            image: c.image.to_string(),
                            source_commit: c.json.source_commit.clone(),
                            signer_key_id: v.signature.key_id.clone(),
                        };
                        adoptable.push((name.clone(), *c, v));
                        f
                    }
                    Err(e) => HostFinding::Refused { reason: format!("its image does not verify: {e}") },
                },
            };
            hosts.push(HostAdoption { host: name, finding });
        }
        let adoption =
            Adoption { environment: env.name.to_string(), service: service.name.to_string(), hosts, receipt: None };
        Ok((adoption, adoptable))
    }

    async fn verify_candidate(&self, env: &Environment, service: &Service, c: &Candidate) -> Result<Verified, String> {
        let req = Requirements {
            provenance: env.require_provenance,
            sbom: env.require_sbom,
            commit: Some(c.json.source_commit.clone()),
        };
        let v = self.verifier.verify_release(&c.image, &req).await.map_err(|e| e.to_string())?;
        let runs = v.platform_digest(&service.platform).map_err(|e| e.to_string())?;
        let named = c.json.platform_image.as_deref().and_then(|i| i.rsplit_once('@')).map(|(_, d)| d);
        if runs.as_ref().map(|d| d.as_str()) != named {
            return Err(format!(
                "the release runs {}, but the image's manifest for {} is {}",
                named.unwrap_or("the image itself"),
                service.platform,
                runs.map_or_else(|| "the image itself".to_owned(), |d| d.to_string())
            ));
        }
        Ok(v)
    }

    /// Adopts what [`Deployer::adoption`] finds: records each verified live release as its
    /// host's release (its way back from now on), under the service's lock, with a
    /// receipt. Refused whole (nothing recorded) if any selected host runs what cannot be
    /// adopted.
    pub async fn adopt(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        host: Option<&str>,
        receipts: &Receipts<'_>,
    ) -> Result<Adoption, DeployError> {
        // Names first (a bad one writes nothing, not even a lock), then the lock, and only
        // then what the hosts run and what is recorded: no apply can move them in between.
        let env = self.environment(env_name)?;
        self.service(service_name)?;
        if let Some(h) = host {
            self.host_in(env, h)?;
        }
        let token = self.token("adopt", env_name, service_name);
        let fence = self.take_lock(env_name, service_name, &token, receipts).await?;
        let result = self.adopt_locked(fleet, host, &token, &fence, receipts).await;
        self.release_lock(&fence).await;
        result
    }

    async fn adopt_locked(
        &self,
        fleet: &Fleet,
        host: Option<&str>,
        token: &PlanId,
        fence: &Fence,
        receipts: &Receipts<'_>,
    ) -> Result<Adoption, DeployError> {
        let (env_name, service_name) = (fence.environment.as_str(), fence.service.as_str());
        let (mut adoption, adoptable) = self.adoption(fleet, env_name, service_name, host).await?;
        if let Some(refusal) = adoption.refusal() {
            return Err(refusal);
        }
        if adoptable.is_empty() {
            return Ok(adoption);
        }
        let now = self.clock.now();
        let mut deployments = Vec::new();
        let mut entries = Vec::new();
        let mut applied = Vec::new();
        for (host, c, v) in &adoptable {
            let facts = ReleaseFacts {
                repository: c.image.repository.to_string(),
                digest: c.image.digest.to_string(),
                source_commit: c.json.source_commit.clone(),
                signer_key_id: v.signature.key_id.clone(),
                provenance: v.provenance().map(|p| p.layer.clone()),
                sbom: v.sbom().map(|p| p.layer.clone()),
                signature: Some(v.signature_summary()),
                contents: None,
                platform_digest: c
                    .json
                    .platform_image
                    .as_deref()
                    .and_then(|i| i.rsplit_once('@'))
                    .map(|(_, d)| d.into()),
            };
            deployments.push(DeploymentRecord {
                environment: env_name.to_owned(),
                service: service_name.to_owned(),
                host: host.clone(),
                release_id: c.release_id.to_string(),
                digest: facts.digest.clone(),
                source_commit: facts.source_commit.clone(),
                content_hash: c.content_hash.to_string(),
                rollback_target: None,
                plan_id: token.to_string(),
                updated_at: now,
            });
            entries.push(HistoryEntry {
                environment: env_name.to_owned(),
                service: service_name.to_owned(),
                host: host.clone(),
                seq: 0,
                release_id: c.release_id.to_string(),
                kind: "adopt".into(),
                plan_id: token.to_string(),
                at: now,
            });
            applied.push(AppliedRelease {
                environment: env_name.to_owned(),
                service: service_name.to_owned(),
                release_id: c.release_id.to_string(),
                content_hash: c.content_hash.to_string(),
                facts,
                applied_at: now,
                files: None,
            });
        }
        let mut writes: Vec<Write<'_>> = deployments.iter().map(Write::Deployment).collect();
        writes.extend(entries.iter().map(Write::History));
        writes.extend(applied.iter().map(Write::Applied));
        let written = self.store.fenced(fence, &writes).await;
        let hosts = adoptable
            .iter()
            .map(|(host, c, _)| HostOutcome {
                host: host.clone(),
                before: None,
                after: Some(c.release_id.to_string()),
                rollback_target: None,
                outcome: if written.is_ok() { "adopted" } else { "not-adopted" }.into(),
                detail: Some(HostText::new(&format!("{} (commit {})", c.image, c.json.source_commit))),
            })
            .collect();
        let single = applied.first().map(|a| a.facts.clone()).filter(|f| applied.iter().all(|a| a.facts == *f));
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Adoption,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(token.to_string()),
            environment: Some(env_name.to_owned()),
            service: Some(service_name.to_owned()),
            release: single,
            hosts,
            approvals: Vec::new(),
            outcome: if written.is_ok() { "adopted" } else { "failed" }.into(),
            detail: written.as_ref().err().map(ToString::to_string),
        };
        let receipt = receipts.log.append(body, receipts.key, self.store).await;
        written?;
        adoption.receipt = Some(receipt?.file_name());
        Ok(adoption)
    }

    /// What `host` of `env` has recorded, per service of the manifests. Changes nothing.
    pub async fn forgetting(&self, env_name: &str, host: &str) -> Result<Forget, DeployError> {
        let env = self.environment(env_name)?;
        self.host_in(env, host)?;
        let mut services = Vec::new();
        for service in self.set.services.values() {
            let recorded = self.recorded(env, service).await?;
            let history = recorded.stacks.get(host).cloned().unwrap_or_default();
            if !history.is_empty() {
                services.push(Forgotten { service: service.name.to_string(), history, receipt: None });
            }
        }
        Ok(Forget { environment: env.name.to_string(), host: host.to_owned(), services })
    }

    /// Retires `host`'s recorded history in `env` for every service (a re-imaged or
    /// replaced host): from now on nothing is recorded for it, so it has no way back to
    /// check; one receipt per service names what was recorded.
    pub async fn forget(&self, env_name: &str, host: &str, receipts: &Receipts<'_>) -> Result<Forget, DeployError> {
        let mut forget = self.forgetting(env_name, host).await?;
        for f in &mut forget.services {
            let token = self.token("forget", env_name, &f.service);
            let fence = self.take_lock(env_name, &f.service, &token, receipts).await?;
            let now = self.clock.now();
            let cleared = DeploymentRecord::nothing(env_name, &f.service, host, token.as_str(), now);
            let entry = HistoryEntry {
                environment: env_name.to_owned(),
                service: f.service.clone(),
                host: host.to_owned(),
                seq: 0,
                release_id: String::new(),
                kind: "forget".into(),
                plan_id: token.to_string(),
                at: now,
            };
            let written = self.store.fenced(&fence, &[Write::Deployment(&cleared), Write::History(&entry)]).await;
            let body = ReceiptBody {
                rollout: None,
                kind: ReceiptKind::HostForget,
                time: self.now(),
                operator: self.operator.clone(),
                plan_id: Some(token.to_string()),
                environment: Some(env_name.to_owned()),
                service: Some(f.service.clone()),
                release: None,
                hosts: vec![HostOutcome {
                    host: host.to_owned(),
                    before: f.history.last().cloned(),
                    after: None,
                    rollback_target: None,
                    outcome: if written.is_ok() { "forgotten" } else { "failed" }.into(),
                    detail: Some(HostText::new(&format!("recorded history, oldest first: {}", f.history.join(", ")))),
                }],
                approvals: Vec::new(),
                outcome: if written.is_ok() { "forgotten" } else { "failed" }.into(),
                detail: written.as_ref().err().map(ToString::to_string),
            };
            let receipt = receipts.log.append(body, receipts.key, self.store).await;
            self.release_lock(&fence).await;
            written?;
            f.receipt = Some(receipt?.file_name());
        }
        Ok(forget)
    }

    /// A single-use token for a write under the lock (the fencing token).
    pub(crate) fn token(&self, what: &str, env: &str, service: &str) -> PlanId {
        let text = format!(
            "{what} {env} {service} {} {} {}",
            self.clock.now().to_rfc3339(),
            std::process::id(),
            self.operator
        );
        PlanId::new(&crate::receipt::hash(text.as_bytes())).unwrap_or_else(|_| unreachable!("a sha256 is a plan id"))
    }

    pub(crate) async fn release_lock(&self, fence: &Fence) {
        if let Err(e) = self.store.unlock(&fence.environment, &fence.service, &fence.plan_id).await {
            self.sink.event(&format!("cannot release the lock ({e}); it ends when its lease runs out"));
        }
    }
}
