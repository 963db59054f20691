//! The job: plan a promotion or rollback (verify, render, observe; changes nothing) and
//! apply a plan (verify again, lock, re-observe, record the way back, stage, swap,
//! activate, health-check, roll back a failed host, record, write the receipt).
//! This is the only code that mutates hosts; it talks to them through [`Remote`].

use crate::image::{Digest, PinnedImage, Repository};
use crate::keys::{PublicKey, SigningKey};
use crate::manifest::{Environment, Host, ManifestSet, Service};
use crate::names::{EnvName, ServiceName};
use crate::observe::{self, Observation};
use crate::plan::{self, Action, Moved, Plan, PlanError, PlanInput, PlanKind, PlannedRelease};
use crate::receipt::{ApprovalRecord, HostOutcome, ReceiptBody, ReceiptKind, ReceiptRelease};
use crate::receipt_log::{ReceiptError, ReceiptLog};
use crate::registry::Registry;
use crate::release::{self, ReleaseInput};
use crate::ssh::{Remote, SshClient, SshError, SshSession};
use crate::steps;
use crate::store::{AppliedRelease, DeploymentRecord, LockRecord, ReleaseRecord, Store, StoreError};
use crate::verify::{Requirements, Verified, Verifier, VerifyError};
use std::collections::BTreeMap;
use std::time::Duration;

const STEP_OUTPUT_LIMIT: usize = 64 * 1024;
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no environment `{0}` in the manifests")]
    UnknownEnvironment(String),
    #[error("no service `{0}` in the manifests")]
    UnknownService(String),
    #[error("no recorded release of `{service}` matches `{reference}`")]
    UnknownRelease { service: String, reference: String },
    #[error("`{reference}` matches {count} releases of `{service}`; give more of the digest")]
    AmbiguousRelease { service: String, reference: String, count: usize },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("release `{digest}` has not succeeded in `{after}`, which comes before `{environment}`")]
    Gate { environment: String, after: String, digest: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("host `{host}` sent a probe answer that cannot be believed: {reason}")]
    Probe { host: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error(transparent)]
    Render(#[from] release::ReleaseError),
    #[error("the saved plan was edited: its content hashes to `{actual}`, not `{claimed}`")]
    PlanTampered { claimed: String, actual: String },
    #[error("plan `{plan}` is stale: {} thing(s) moved since it was made", moved.len())]
    Stale { plan: String, moved: Vec<Moved> },
    #[error("`{service}` in `{environment}` is locked by {} on {} (pid {}, plan {}, since {})", holder.holder_user, holder.holder_host, holder.holder_pid, holder.plan_id, holder.since.to_rfc3339())]
    Locked { environment: String, service: String, holder: Box<LockRecord> },
    #[error("plan `{plan}` needs {need} approval(s) and has {have}")]
    Approvals { plan: String, need: u32, have: usize },
    #[error("no rollback target is recorded for `{service}` in `{environment}`")]
    NoRollbackTarget { environment: String, service: String },
    #[error("hosts of `{environment}` record different rollback targets ({targets}); choose one with `--to`")]
    SplitRollbackTarget { environment: String, targets: String },
    #[error("release `{release}` was never applied to `{service}` in `{environment}`, so it cannot be rolled back to")]
    UnknownRollbackRelease { environment: String, service: String, release: String },
    #[error("the plan's release `{planned}` is not what the manifests render for it now (`{rendered}`): templates, signer or attestations changed, or the plan file was forged")]
    ContentMismatch { planned: String, rendered: String },
    #[error("staging failed on host `{host}`: {reason}; no host was changed")]
    Staging { host: String, reason: String },
}

impl DeployError {
    /// A refusal by policy (exit 4) rather than a failure (exit 1) or bad input (exit 2).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Verify(_)
                | Self::Gate { .. }
                | Self::Stale { .. }
                | Self::Locked { .. }
                | Self::Approvals { .. }
                | Self::PlanTampered { .. }
                | Self::ContentMismatch { .. }
                | Self::Plan(_)
        )
    }

    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownEnvironment(_)
                | Self::UnknownService(_)
                | Self::UnknownRelease { .. }
                | Self::AmbiguousRelease { .. }
                | Self::UnknownRollbackRelease { .. }
        )
    }
}

/// Progress of an apply, for whoever shows it.
pub trait Sink: Send + Sync {
    fn event(&self, line: &str);
}

/// What happened on each host, and whether the rollout succeeded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub plan_id: String,
    pub succeeded: bool,
    pub hosts: Vec<HostOutcome>,
    pub receipt: String,
    pub failure: Option<String>,
}

/// The fleet of one environment: one SSH session per host, reused for the whole run.
pub struct Fleet {
    sessions: BTreeMap<String, SshSession>,
}

impl Fleet {
    /// Connects to every host (bounded concurrency); the first failure is returned.
    pub async fn connect(ssh: &SshClient, hosts: &[Host], concurrency: usize) -> Result<Self, SshError> {
        use futures::StreamExt as _;
        let results: Vec<_> =
            futures::stream::iter(hosts.iter().map(|h| async move { (h.name.to_string(), ssh.connect(h).await) }))
                .buffered(concurrency.max(1))
                .collect()
                .await;
        let mut sessions = BTreeMap::new();
        for (name, r) in results {
            sessions.insert(name, r?);
        }
        Ok(Self { sessions })
    }

    fn session(&self, host: &str) -> &SshSession {
        &self.sessions[host]
    }

    pub async fn close(self) {
        for (_, s) in self.sessions {
            s.close().await;
        }
    }
}

/// Everything the job needs, gathered by the caller.
pub struct Deployer<'a> {
    pub set: &'a ManifestSet,
    pub store: &'a dyn Store,
    pub registry: &'a Registry,
    pub keys: Vec<PublicKey>,
    pub ssh: &'a SshClient,
    pub operator: String,
    pub sink: &'a dyn Sink,
}

impl<'a> Deployer<'a> {
    fn environment(&self, name: &str) -> Result<&'a Environment, DeployError> {
        EnvName::new(name)
            .ok()
            .and_then(|n| self.set.environment(&n))
            .ok_or_else(|| DeployError::UnknownEnvironment(name.into()))
    }

    fn service(&self, name: &str) -> Result<&'a Service, DeployError> {
        ServiceName::new(name)
            .ok()
            .and_then(|n| self.set.service(&n))
            .ok_or_else(|| DeployError::UnknownService(name.into()))
    }

    fn verifier(&self) -> Verifier<'_> {
        Verifier { registry: self.registry, keys: self.keys.clone(), builders: self.set.trust.builders.clone() }
    }

    fn requirements(env: &Environment, commit: &str) -> Requirements {
        Requirements { provenance: env.require_provenance, sbom: env.require_sbom, commit: Some(commit.to_owned()) }
    }

    /// The recorded release `reference` names: `repo@sha256:...`, `sha256:...` or a digest prefix.
    pub async fn resolve_release(&self, service: &Service, reference: &str) -> Result<ReleaseRecord, DeployError> {
        let all = self.store.releases(service.name.as_str()).await?;
        let needle = reference.rsplit('@').next().unwrap_or(reference);
        let needle = needle.strip_prefix("sha256:").unwrap_or(needle);
        let matches: Vec<_> = all
            .into_iter()
            .filter(|r| r.digest.trim_start_matches("sha256:").starts_with(needle) && !needle.is_empty())
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one")),
            0 => Err(DeployError::UnknownRelease { service: service.name.to_string(), reference: reference.into() }),
            count => Err(DeployError::AmbiguousRelease {
                service: service.name.to_string(),
                reference: reference.into(),
                count,
            }),
        }
    }

    async fn verify_record(&self, env: &Environment, record: &ReleaseRecord) -> Result<Verified, DeployError> {
        let image = PinnedImage {
            repository: Repository::new(&record.repository)
                .map_err(|e| VerifyError::BadReference(record.repository.clone(), e))?,
            digest: Digest::new(&record.digest).map_err(|e| VerifyError::BadReference(record.digest.clone(), e))?,
        };
        Ok(self.verifier().verify_pinned(&image, &Self::requirements(env, &record.source_commit)).await?)
    }

    /// A release reaches an environment only after it succeeded in the one before.
    async fn gate(&self, env: &Environment, service: &Service, digest: &str) -> Result<(), DeployError> {
        let Some(after) = &env.after else { return Ok(()) };
        let prev = self.set.environment(after).expect("validated reference");
        let recorded = self.store.deployments(after.as_str(), service.name.as_str()).await?;
        let everywhere =
            prev.hosts.iter().all(|h| recorded.iter().any(|d| d.host == h.name.as_str() && d.digest == digest));
        if everywhere {
            Ok(())
        } else {
            Err(DeployError::Gate {
                environment: env.name.to_string(),
                after: after.to_string(),
                digest: digest.into(),
            })
        }
    }

    /// Observes `service` on every host of `env` (one round trip each).
    pub async fn observe(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        targets: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, Observation)>, DeployError> {
        let futs = env.hosts.iter().map(|h| async move {
            let target = targets.get(h.name.as_str()).map(String::as_str);
            let cmd = observe::probe_command(h, service, target);
            let out = fleet
                .session(h.name.as_str())
                .run(&cmd, None, observe::MAX_PROBE_OUTPUT, Duration::from_secs(30))
                .await?;
            let obs = observe::parse(&out.stdout)
                .map_err(|reason| DeployError::Probe { host: h.name.to_string(), reason })?;
            Ok::<_, DeployError>((h.name.to_string(), obs))
        });
        futures::future::join_all(futs).await.into_iter().collect()
    }

    /// Content hashes of recorded releases, and the release recorded per host.
    async fn recorded(
        &self,
        env: &Environment,
        service: &Service,
    ) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), DeployError> {
        let mut hashes = BTreeMap::new();
        let mut per_host = BTreeMap::new();
        for d in self.store.deployments(env.name.as_str(), service.name.as_str()).await? {
            if !d.release_id.is_empty() {
                hashes.insert(d.release_id.clone(), d.content_hash.clone());
                per_host.insert(d.host.clone(), d.release_id.clone());
            }
        }
        Ok((hashes, per_host))
    }

    /// Plans a promotion of `reference` to `env`. Changes nothing anywhere.
    pub async fn plan_promotion(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
    ) -> Result<Plan, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let record = self.resolve_release(service, reference).await?;
        let verified = self.verify_record(env, &record).await?;
        self.gate(env, service, &record.digest).await?;
        let content = release::render(&ReleaseInput {
            service,
            environment: &env.name,
            image: &verified.image,
            source_commit: &record.source_commit,
            signer_key_id: &verified.signature.key_id,
            provenance: verified.provenance().map(|p| p.layer.as_str()),
            sbom: verified.sbom().map(|p| p.layer.as_str()),
        })?;
        let observed = self.observe(fleet, env, service, &BTreeMap::new()).await?;
        let (known, recorded) = self.recorded(env, service).await?;
        let planned = PlannedRelease {
            release_id: content.id.clone(),
            image: verified.image.to_string(),
            digest: verified.image.digest.to_string(),
            source_commit: record.source_commit.clone(),
            signer_key_id: verified.signature.key_id.clone(),
            provenance: content.json.provenance.clone(),
            sbom: content.json.sbom.clone(),
            content_hash: content.content_hash.clone(),
        };
        Ok(plan::build(&PlanInput {
            kind: PlanKind::Promote,
            environment: env,
            service,
            release: planned,
            content: Some(&content),
            observed: &observed,
            known_hashes: &known,
            recorded: &recorded,
        })?)
    }

    /// Plans a rollback to the recorded rollback target, or to release `to`.
    pub async fn plan_rollback(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        to: Option<&str>,
    ) -> Result<Plan, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let (e, s) = (env.name.to_string(), service.name.to_string());
        let target = match to {
            Some(t) => t.to_owned(),
            None => {
                let recorded = self.store.deployments(&e, &s).await?;
                let mut targets: Vec<String> =
                    recorded.iter().filter_map(|d| d.rollback_target.clone()).filter(|t| !t.is_empty()).collect();
                targets.sort();
                targets.dedup();
                match targets.len() {
                    0 => return Err(DeployError::NoRollbackTarget { environment: e, service: s }),
                    1 => targets.remove(0),
                    _ => return Err(DeployError::SplitRollbackTarget { environment: e, targets: targets.join(", ") }),
                }
            }
        };
        let applied = self.store.applied_release(&e, &s, &target).await?.ok_or_else(|| {
            DeployError::UnknownRollbackRelease { environment: e.clone(), service: s.clone(), release: target.clone() }
        })?;
        // Going back is still a deployment: the image must still verify.
        let record = ReleaseRecord {
            service: s.clone(),
            digest: applied.digest.clone(),
            repository: applied.image.split('@').next().unwrap_or_default().to_owned(),
            source_commit: applied.source_commit.clone(),
            signer_key_id: applied.signer_key_id.clone(),
            provenance: applied.provenance.clone(),
            sbom: applied.sbom.clone(),
            evidence: String::new(),
            added_at: applied.applied_at,
            added_by: String::new(),
        };
        let verified = self.verify_record(env, &record).await?;
        let targets: BTreeMap<String, String> =
            env.hosts.iter().map(|h| (h.name.to_string(), target.clone())).collect();
        let observed = self.observe(fleet, env, service, &targets).await?;
        let (known, recorded) = self.recorded(env, service).await?;
        let planned = PlannedRelease {
            release_id: target,
            image: verified.image.to_string(),
            digest: applied.digest,
            source_commit: applied.source_commit,
            signer_key_id: verified.signature.key_id.clone(),
            provenance: applied.provenance,
            sbom: applied.sbom,
            content_hash: applied.content_hash,
        };
        Ok(plan::build(&PlanInput {
            kind: PlanKind::Rollback,
            environment: env,
            service,
            release: planned,
            content: None,
            observed: &observed,
            known_hashes: &known,
            recorded: &recorded,
        })?)
    }

    /// Records a refusal that happened before a plan existed (verification, gate), when
    /// the operator asked to apply: every apply attempt ends with a receipt.
    pub async fn record_refusal(
        &self,
        env: &str,
        service: &str,
        e: &DeployError,
        receipts: &ReceiptLog,
        receipt_key: &SigningKey,
    ) -> Result<String, DeployError> {
        let body = ReceiptBody {
            kind: ReceiptKind::Refusal,
            time: now(),
            operator: self.operator.clone(),
            plan_id: None,
            environment: Some(env.to_owned()),
            service: Some(service.to_owned()),
            release: None,
            hosts: Vec::new(),
            approvals: Vec::new(),
            outcome: "refused".into(),
            detail: Some(e.to_string()),
        };
        Ok(receipts.append(body, receipt_key, Some(self.store)).await?.file_name())
    }

    /// Applies `plan` exactly, or refuses it. Every outcome ends with a receipt.
    pub async fn apply(
        &self,
        fleet: &Fleet,
        plan: &Plan,
        receipts: &ReceiptLog,
        receipt_key: &SigningKey,
    ) -> Result<ApplyReport, DeployError> {
        let plan_id = plan.id();
        let env = self.environment(&plan.environment)?;
        let service = self.service(&plan.service)?;
        let receipt_kind = if plan.kind == PlanKind::Promote { ReceiptKind::Apply } else { ReceiptKind::Rollback };
        let release = ReceiptRelease {
            repository: plan.release.image.split('@').next().unwrap_or_default().to_owned(),
            digest: plan.release.digest.clone(),
            source_commit: plan.release.source_commit.clone(),
            signer_key_id: plan.release.signer_key_id.clone(),
            provenance: plan.release.provenance.clone(),
            sbom: plan.release.sbom.clone(),
        };
        let approvals = self.store.approvals(&plan_id).await?;
        let approval_records: Vec<ApprovalRecord> = approvals
            .iter()
            .map(|a| ApprovalRecord { approver: a.approver.clone(), at: a.approved_at.to_rfc3339() })
            .collect();
        let body = |outcome: &str, detail: Option<String>, hosts: Vec<HostOutcome>| ReceiptBody {
            kind: receipt_kind,
            time: now(),
            operator: self.operator.clone(),
            plan_id: Some(plan_id.clone()),
            environment: Some(plan.environment.clone()),
            service: Some(plan.service.clone()),
            release: Some(release.clone()),
            hosts,
            approvals: approval_records.clone(),
            outcome: outcome.into(),
            detail,
        };
        let refuse = |e: DeployError, hosts: Vec<HostOutcome>| async move {
            let mut b = body("refused", Some(e.to_string()), hosts);
            b.kind = ReceiptKind::Refusal;
            receipts.append(b, receipt_key, Some(self.store)).await?;
            Err::<ApplyReport, _>(e)
        };

        // 1. Verify again: a signature may have been revoked since the plan was made.
        let record = ReleaseRecord {
            service: plan.service.clone(),
            digest: plan.release.digest.clone(),
            repository: release.repository.clone(),
            source_commit: plan.release.source_commit.clone(),
            signer_key_id: String::new(),
            provenance: None,
            sbom: None,
            evidence: String::new(),
            added_at: chrono::Utc::now(),
            added_by: String::new(),
        };
        let verified = match self.verify_record(env, &record).await {
            Ok(v) => v,
            Err(e) => return refuse(e, Vec::new()).await,
        };
        // A promotion's files must be what the manifests render now for this release: a
        // saved plan is data from outside and could carry anything.
        if plan.kind == PlanKind::Promote {
            let content = release::render(&ReleaseInput {
                service,
                environment: &env.name,
                image: &verified.image,
                source_commit: &plan.release.source_commit,
                signer_key_id: &verified.signature.key_id,
                provenance: verified.provenance().map(|p| p.layer.as_str()),
                sbom: verified.sbom().map(|p| p.layer.as_str()),
            })?;
            let files_match = plan.decoded_files().is_ok_and(|f| f == content.files);
            if content.id != plan.release.release_id
                || content.content_hash != plan.release.content_hash
                || !files_match
            {
                let e = DeployError::ContentMismatch { planned: plan.release.release_id.clone(), rendered: content.id };
                return refuse(e, Vec::new()).await;
            }
        }
        if (approvals.len() as u32) < plan.approvals_required {
            return refuse(
                DeployError::Approvals { plan: plan_id.clone(), need: plan.approvals_required, have: approvals.len() },
                Vec::new(),
            )
            .await;
        }
        // 2. The lock.
        let lock = LockRecord {
            environment: plan.environment.clone(),
            service: plan.service.clone(),
            holder_user: self.operator.clone(),
            holder_host: hostname(),
            holder_pid: i64::from(std::process::id()),
            plan_id: plan_id.clone(),
            since: chrono::Utc::now(),
        };
        if let Err(holder) = self.store.try_lock(&lock).await? {
            return refuse(
                DeployError::Locked {
                    environment: plan.environment.clone(),
                    service: plan.service.clone(),
                    holder: Box::new(holder),
                },
                Vec::new(),
            )
            .await;
        }
        let result = self.apply_locked(fleet, plan, &plan_id, env, service, receipts, receipt_key, &body).await;
        self.store.unlock(&plan.environment, &plan.service, &plan_id).await?;
        result
    }

    #[expect(clippy::too_many_arguments, reason = "one call site; the pieces are the apply's own state")]
    async fn apply_locked(
        &self,
        fleet: &Fleet,
        plan: &Plan,
        plan_id: &str,
        env: &Environment,
        service: &Service,
        receipts: &ReceiptLog,
        receipt_key: &SigningKey,
        body: &ReceiptBodyFn<'_>,
    ) -> Result<ApplyReport, DeployError> {
        // 3. Re-observe: a plan whose assumptions moved is refused.
        let targets: BTreeMap<String, String> = if plan.kind == PlanKind::Rollback {
            env.hosts.iter().map(|h| (h.name.to_string(), plan.release.release_id.clone())).collect()
        } else {
            BTreeMap::new()
        };
        let observed = self.observe(fleet, env, service, &targets).await?;
        let moved = plan::staleness(plan, &observed);
        if !moved.is_empty() {
            let e = DeployError::Stale { plan: plan_id.to_owned(), moved };
            let detail = stale_detail(&e);
            let mut b = body("refused", Some(detail), Vec::new());
            b.kind = ReceiptKind::Refusal;
            receipts.append(b, receipt_key, Some(self.store)).await?;
            return Err(e);
        }
        // Going back: the target must still be intact where it will be swapped in.
        if plan.kind == PlanKind::Rollback {
            for (name, obs) in &observed {
                let changing = plan.hosts.iter().any(|h| &h.host == name && h.action == Action::Change);
                if changing && obs.target_hash.as_deref() != Some(plan.release.content_hash.as_str()) {
                    let e = DeployError::Plan(PlanError::RollbackTargetBroken {
                        host: name.clone(),
                        reason: format!(
                            "release `{}` changed or disappeared since the plan was made",
                            plan.release.release_id
                        ),
                    });
                    let mut b = body("refused", Some(e.to_string()), Vec::new());
                    b.kind = ReceiptKind::Refusal;
                    receipts.append(b, receipt_key, Some(self.store)).await?;
                    return Err(e);
                }
            }
        }
        let host =
            |name: &str| env.hosts.iter().find(|h| h.name.as_str() == name).expect("plan hosts are the environment's");
        let existing: BTreeMap<String, DeploymentRecord> = self
            .store
            .deployments(&plan.environment, &plan.service)
            .await?
            .into_iter()
            .map(|d| (d.host.clone(), d))
            .collect();

        // 4. Record the way back before the first host is touched.
        for h in plan.hosts.iter().filter(|h| h.action == Action::Change) {
            let mut d = existing.get(&h.host).cloned().unwrap_or_else(|| DeploymentRecord {
                environment: plan.environment.clone(),
                service: plan.service.clone(),
                host: h.host.clone(),
                release_id: String::new(),
                digest: String::new(),
                source_commit: String::new(),
                content_hash: String::new(),
                rollback_target: None,
                plan_id: String::new(),
                updated_at: chrono::Utc::now(),
            });
            d.rollback_target = h.rollback_target.clone();
            d.plan_id = plan_id.to_owned();
            d.updated_at = chrono::Utc::now();
            self.store.put_deployment(&d).await?;
        }
        self.store
            .put_applied_release(&AppliedRelease {
                environment: plan.environment.clone(),
                service: plan.service.clone(),
                release_id: plan.release.release_id.clone(),
                image: plan.release.image.clone(),
                digest: plan.release.digest.clone(),
                source_commit: plan.release.source_commit.clone(),
                content_hash: plan.release.content_hash.clone(),
                signer_key_id: plan.release.signer_key_id.clone(),
                provenance: plan.release.provenance.clone(),
                sbom: plan.release.sbom.clone(),
                applied_at: chrono::Utc::now(),
            })
            .await?;

        let mut outcomes: BTreeMap<String, HostOutcome> = plan
            .hosts
            .iter()
            .map(|h| {
                let (outcome, after) = if h.action == Action::None {
                    ("unchanged", Some(h.after.clone()))
                } else {
                    ("untouched", h.before.clone())
                };
                (
                    h.host.clone(),
                    HostOutcome {
                        host: h.host.clone(),
                        before: h.before.clone(),
                        after,
                        rollback_target: h.rollback_target.clone(),
                        outcome: outcome.into(),
                        detail: None,
                    },
                )
            })
            .collect();

        // 5. Stage everywhere first: staging changes nothing live, and a failure here
        //    stops the rollout before any host moved.
        if plan.kind == PlanKind::Promote && !plan.is_noop() {
            let files = plan.decoded_files().map_err(|reason| DeployError::Staging { host: "*".into(), reason })?;
            let tar = crate::tarball::tar(&files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect::<Vec<_>>());
            let stage_all = plan.hosts.iter().filter(|h| h.action == Action::Change).map(|h| {
                let tar = &tar;
                async move {
                    let cmd =
                        steps::stage(host(&h.host), service, &plan.release.release_id, &plan.release.content_hash);
                    let out = fleet.session(&h.host).run(&cmd, Some(tar), STEP_OUTPUT_LIMIT, STEP_TIMEOUT).await;
                    (h.host.clone(), out)
                }
            });
            for (name, out) in futures::future::join_all(stage_all).await {
                let reason = match out {
                    Ok(o) if o.success() => {
                        self.sink.event(&format!("staged `{}` on {name}", plan.release.release_id));
                        continue;
                    }
                    Ok(o) => format!("exit {:?}: {}", o.status, o.stderr.trim()),
                    Err(e) => e.to_string(),
                };
                let e = DeployError::Staging { host: name, reason };
                let r = receipts
                    .append(
                        body("failed", Some(e.to_string()), outcomes.into_values().collect()),
                        receipt_key,
                        Some(self.store),
                    )
                    .await?;
                self.sink.event(&format!("receipt {}", r.file_name()));
                return Err(e);
            }
        }

        // 6. Batch by batch: swap, activate, health-check; a failed host goes back.
        let mut failure = None;
        for (i, batch) in plan.batches.iter().enumerate() {
            self.sink.event(&format!(
                "batch {} of {}{}: {}",
                i + 1,
                plan.batches.len(),
                if i == 0 { " (canary)" } else { "" },
                batch.join(", ")
            ));
            let results = futures::future::join_all(batch.iter().map(|name| {
                let h = plan.hosts.iter().find(|x| &x.host == name).expect("batch hosts are plan hosts");
                self.move_host(fleet.session(name), host(name), service, plan, h.rollback_target.as_deref())
            }))
            .await;
            for (name, r) in batch.iter().zip(results) {
                let o = outcomes.get_mut(name).expect("known host");
                match r {
                    Ok(()) => {
                        o.after = Some(plan.release.release_id.clone());
                        o.outcome = "changed".into();
                        let prev = existing.get(name);
                        self.store
                            .put_deployment(&DeploymentRecord {
                                environment: plan.environment.clone(),
                                service: plan.service.clone(),
                                host: name.clone(),
                                release_id: plan.release.release_id.clone(),
                                digest: plan.release.digest.clone(),
                                source_commit: plan.release.source_commit.clone(),
                                content_hash: plan.release.content_hash.clone(),
                                rollback_target: o
                                    .rollback_target
                                    .clone()
                                    .or_else(|| prev.and_then(|p| p.rollback_target.clone())),
                                plan_id: plan_id.to_owned(),
                                updated_at: chrono::Utc::now(),
                            })
                            .await?;
                        self.sink.event(&format!("{name}: {} is live and healthy", plan.release.release_id));
                    }
                    Err(HostFailure { reason, restored }) => {
                        o.outcome = if restored { "rolled-back".into() } else { "failed".into() };
                        o.after = if restored { o.before.clone() } else { None };
                        o.detail = Some(reason.clone());
                        self.sink.event(&format!(
                            "{name}: FAILED: {reason}; {}",
                            if restored { "rolled back" } else { "could not be rolled back" }
                        ));
                        failure.get_or_insert(format!(
                            "host `{name}` failed in batch {} of {}: {reason}",
                            i + 1,
                            plan.batches.len()
                        ));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        let hosts: Vec<HostOutcome> = outcomes.into_values().collect();
        let succeeded = failure.is_none();
        let r = receipts
            .append(
                body(if succeeded { "succeeded" } else { "failed" }, failure.clone(), hosts.clone()),
                receipt_key,
                Some(self.store),
            )
            .await?;
        Ok(ApplyReport { plan_id: plan_id.to_owned(), succeeded, hosts, receipt: r.file_name(), failure })
    }

    /// Swap, activate and health-check one host; on failure put it back on `target`.
    async fn move_host(
        &self,
        s: &SshSession,
        host: &Host,
        service: &Service,
        plan: &Plan,
        target: Option<&str>,
    ) -> Result<(), HostFailure> {
        let id = &plan.release.release_id;
        let health_timeout = Duration::from_secs(plan.health_timeout_secs);
        let step = |cmd: crate::remote::RemoteCommand, timeout: Duration, what: &'static str| async move {
            match s.run(&cmd, None, STEP_OUTPUT_LIMIT, timeout).await {
                Ok(o) if o.success() => Ok(()),
                Ok(o) => Err(format!(
                    "{what} `{cmd}` exited with status {}: {}",
                    o.status.map_or("signal".into(), |c| c.to_string()),
                    o.stderr.trim()
                )),
                Err(SshError::Timeout { .. }) => {
                    Err(format!("{what} `{cmd}` did not finish within {} s", timeout.as_secs()))
                }
                Err(e) => Err(format!("{what}: {e}")),
            }
        };
        let forward = async {
            step(steps::swap(host, service, id), STEP_TIMEOUT, "swap").await?;
            step(steps::activate(host, service, id), STEP_TIMEOUT, "activation").await?;
            step(steps::health(service), health_timeout, "health check").await
        };
        let Err(reason) = forward.await else { return Ok(()) };
        let back = async {
            match target {
                Some(t) => {
                    step(steps::swap(host, service, t), STEP_TIMEOUT, "swap back").await?;
                    step(steps::activate(host, service, t), STEP_TIMEOUT, "re-activation").await
                }
                None => step(steps::unset(host, service), STEP_TIMEOUT, "unset").await,
            }
        };
        let restored = match back.await {
            Ok(()) => true,
            Err(e) => {
                self.sink.event(&format!("{}: rollback failed too: {e}", host.name));
                false
            }
        };
        Err(HostFailure { reason, restored })
    }
}

/// Builds a receipt body from (outcome, detail, per-host outcomes).
type ReceiptBodyFn<'a> = dyn Fn(&str, Option<String>, Vec<HostOutcome>) -> ReceiptBody + Sync + 'a;

struct HostFailure {
    reason: String,
    restored: bool,
}

/// Each host and field that moved, old and new value, one per line.
pub fn stale_detail(e: &DeployError) -> String {
    match e {
        DeployError::Stale { moved, .. } => moved
            .iter()
            .map(|m| format!("host `{}`: {} was `{}` when planned, is `{}` now", m.host, m.field, m.planned, m.now))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Reads a saved plan, refusing one whose content no longer matches its id.
pub fn load_saved(text: &str) -> Result<Plan, DeployError> {
    let saved: plan::SavedPlan = serde_json::from_str(text)
        .map_err(|e| DeployError::PlanTampered { claimed: "?".into(), actual: format!("unreadable plan: {e}") })?;
    let actual = saved.plan.id();
    if actual != saved.plan_id {
        return Err(DeployError::PlanTampered { claimed: saved.plan_id, actual });
    }
    Ok(saved.plan)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
