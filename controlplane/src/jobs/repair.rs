//! `repair`: a host whose recorded release was changed by hand (`status` says
//! `tampered`) gets that release back, from what the control plane recorded when it
//! applied it — the rendered files (checked against the recorded content identity) and
//! the image (verified again now) — never from what the host holds. A dry run until
//! applied; applied under the service's lock, and ends in a receipt. The changed
//! directory is set aside on the host (`releases/.damaged-ID-…`), not deleted.

use crate::deploy::{vm, DeployError, Deployer, Receipts};
use crate::drift::{self, Status};
use crate::ids::{PlanId, ReleaseId};
use crate::manifest::{Environment, Runtime, Service};
use crate::receipt::{HostOutcome, ReceiptBody, ReceiptKind};
use crate::records::HistoryEntry;
use crate::release::ReleaseFacts;
use crate::repair::Change;
use crate::rollout::Step;
use crate::store::{Fence, ReleaseRecord, Write};
use crate::untrusted::HostText;
use crate::vm::{Fleet, GoldenVm};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a repair of one host would do (the dry run), and did (applied).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    pub environment: String,
    pub service: String,
    pub host: String,
    /// The recorded release the host gets back.
    pub release_id: String,
    pub release: ReleaseFacts,
    /// How the host differs from it now (`status`'s classification).
    pub status: Status,
    /// What changed in the release's directory, path by path.
    pub changes: Vec<Change>,
    /// Set when applied.
    pub outcome: Option<String>,
    pub receipt: Option<String>,
    pub failure: Option<String>,
}

impl Repair {
    /// Nothing differs: there is nothing to repair.
    pub fn in_sync(&self) -> bool {
        self.status == Status::InSync
    }
}

/// What the control plane knows of the host's recorded release.
struct Known {
    id: ReleaseId,
    record: ReleaseRecord,
    content_hash: String,
    files: BTreeMap<String, Vec<u8>>,
    deployment: crate::store::DeploymentRecord,
}

impl Deployer<'_> {
    /// The dry run: what differs on `host` from its recorded release, and whether that
    /// release can be put back (its files were kept and hash as recorded; its image
    /// verifies now). Changes nothing.
    pub async fn plan_repair(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        host: &str,
    ) -> Result<Repair, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        self.host_in(env, host)?;
        let known = self.known(env, service, host).await?;
        self.verify_record(env, &known.record).await?;
        let vm = vm(fleet, host)?;
        let obs = vm.probe(service, &[&known.id]).await?;
        let status = drift::classify(service.name.as_str(), Some(&known.deployment), &obs);
        let changes = match obs.target_hashes.get(&known.id) {
            Some(h) if h.as_str() == known.content_hash => Vec::new(),
            Some(_) => crate::repair::changes(&known.files, &vm.list_release(service, known.id.as_str()).await?),
            None => vec![Change::Removed { path: format!("releases/{}", known.id) }],
        };
        Ok(Repair {
            environment: env.name.to_string(),
            service: service.name.to_string(),
            host: host.to_owned(),
            release_id: known.id.to_string(),
            release: known.record.facts.clone(),
            status,
            changes,
            outcome: None,
            receipt: None,
            failure: None,
        })
    }

    /// Applies a repair of `host`: under the lock, the dry run again, then the recorded
    /// files staged afresh (the changed directory set aside), `current` pointed at them,
    /// and the workload started again from them and health-checked; a `repair` receipt
    /// either way.
    pub async fn repair(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        host: &str,
        receipts: &Receipts<'_>,
    ) -> Result<Repair, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        self.host_in(env, host)?;
        let token = self.token("repair", env_name, service_name);
        let fence = self.take_lock(env_name, service_name, &token, receipts).await?;
        let result = self.repair_locked(fleet, env, service, host, &token, &fence, receipts).await;
        self.release_lock(&fence).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn repair_locked(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        host: &str,
        token: &PlanId,
        fence: &Fence,
        receipts: &Receipts<'_>,
    ) -> Result<Repair, DeployError> {
        let mut repair = self.plan_repair(fleet, env.name.as_str(), service.name.as_str(), host).await?;
        if repair.in_sync() {
            return Ok(repair);
        }
        let known = self.known(env, service, host).await?;
        let vm = vm(fleet, host)?;
        let result = self.put_back(vm, env, service, &known, token).await;
        let (outcome, detail) = match &result {
            Ok(()) => ("succeeded", None),
            Err(e) => ("failed", Some(e.clone())),
        };
        let now = self.clock.now();
        if result.is_ok() {
            let mut d = known.deployment.clone();
            d.plan_id = token.to_string();
            d.updated_at = now;
            let entry = HistoryEntry {
                environment: env.name.to_string(),
                service: service.name.to_string(),
                host: host.to_owned(),
                seq: 0,
                release_id: known.id.to_string(),
                kind: "repair".into(),
                plan_id: token.to_string(),
                at: now,
            };
            self.store.fenced(fence, &[Write::Deployment(&d), Write::History(&entry)]).await?;
        }
        let changed = crate::repair::describe(&repair.changes).join("; ");
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Repair,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(token.to_string()),
            environment: Some(env.name.to_string()),
            service: Some(service.name.to_string()),
            release: Some(known.record.facts.clone()),
            hosts: vec![HostOutcome {
                host: host.to_owned(),
                before: Some(known.id.to_string()),
                after: result.is_ok().then(|| known.id.to_string()),
                rollback_target: None,
                outcome: if result.is_ok() { "repaired" } else { "failed" }.into(),
                detail: Some(HostText::new(&match &detail {
                    None => format!("was {}: {changed}", repair.status.label()),
                    Some(e) => format!("was {}: {changed}; the repair failed: {e}", repair.status.label()),
                })),
            }],
            approvals: Vec::new(),
            outcome: outcome.into(),
            detail: detail.clone(),
        };
        let r = receipts.log.append(body, receipts.key, self.store).await?;
        repair.outcome = Some(outcome.into());
        repair.receipt = Some(r.file_name());
        repair.failure = detail;
        Ok(repair)
    }

    /// The recorded release of `host` and what is needed to put it back, or why it cannot be.
    async fn known(&self, env: &Environment, service: &Service, host: &str) -> Result<Known, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let not = |reason: String| DeployError::NotRepairable {
            host: host.to_owned(),
            service: s.to_owned(),
            environment: e.to_owned(),
            reason,
        };
        let recorded = self.recorded(env, service).await?;
        let id =
            recorded.current().get(host).cloned().ok_or_else(|| {
                not("no release is recorded for it (promote one, or `agentctl adopt` what runs)".into())
            })?;
        let applied = self
            .store
            .applied_release(e, s, &id)
            .await?
            .ok_or_else(|| not(format!("release `{id}` has no record of what it was")))?;
        let files = applied.files.as_ref().ok_or_else(|| {
            not(format!(
                "the files of release `{id}` were not kept (it was adopted, or applied by an earlier version): promote a release to replace it"
            ))
        })?;
        let files =
            crate::repair::decode(files).map_err(|why| not(format!("the recorded files are corrupt: {why}")))?;
        if crate::release::content_hash(&files) != applied.content_hash {
            return Err(not(format!("the recorded files of `{id}` do not hash to its recorded content identity")));
        }
        let deployment = self
            .store
            .deployments(e, s)
            .await?
            .into_iter()
            .find(|d| d.host == host && d.release_id == id)
            .ok_or_else(|| not(format!("no deployment of `{id}` is recorded for it")))?;
        let corrupt = |err: crate::ids::IdError| {
            DeployError::Store(crate::store::StoreError::Corrupt { what: "history", detail: err.to_string() })
        };
        Ok(Known {
            id: ReleaseId::new(&id).map_err(corrupt)?,
            record: ReleaseRecord {
                service: s.to_owned(),
                facts: applied.facts.clone(),
                evidence: String::new(),
                added_at: applied.applied_at,
                added_by: String::new(),
            },
            content_hash: applied.content_hash,
            files,
            deployment,
        })
    }

    /// Stages the recorded files again, points `current` at them and starts the workload
    /// from them; `Err` says which step failed and why.
    async fn put_back(
        &self,
        vm: &dyn GoldenVm,
        env: &Environment,
        service: &Service,
        known: &Known,
        token: &PlanId,
    ) -> Result<(), String> {
        let id = known.id.as_str();
        let refs: Vec<(&str, &[u8])> = known.files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        let tar = crate::tarball::tar(&refs).map_err(|e| e.to_string())?;
        vm.stage(service, id, &known.content_hash, &tar).await.map_err(|e| format!("staging: {e}"))?;
        self.sink.event(&format!("{}: staged `{id}` again from the recorded files", vm.name()));
        let steps = match &service.runtime {
            Runtime::Command(_) => vec![Step::Swap(id.into()), Step::Activate(id.into()), Step::Health],
            // The container mounted the directory that was set aside: it is made again.
            Runtime::Podman(_) => {
                vec![Step::Swap(id.into()), Step::Discard(id.into()), Step::Restore, Step::Check(id.into())]
            }
        };
        let health = Duration::from_secs(env.rollout.health_timeout_secs);
        for step in &steps {
            vm.step(service, step, health, token.as_str()).await.map_err(|e| format!("{}: {e}", step.describe()))?;
            self.sink.event(&format!("{}: {} done", vm.name(), step.describe()));
        }
        Ok(())
    }
}
