//! The canary's proof, around the batches of an apply: the soak (a healthy batch keeps
//! running under watch before the rollout goes on), the failure budget (hosts that moved
//! go back once it is spent), and the pause (`pause_after`, then `agentctl resume` or
//! `agentctl rollback`). The decisions are the core's (`rollout::after_batch`,
//! `soak::judge`); this file takes the looks, moves the hosts back and finds a paused
//! rollout in the receipt chain.

use super::{DeployError, Deployer, Receipts, Run};
use crate::ids::{PlanId, ReleaseId};
use crate::manifest::{Environment, Runtime, Service, Soak};
use crate::plan::{self, Mismatch, PlanKind, SavedPlan};
use crate::receipt::{FailureBudget, HostOutcome, Receipt, RolloutRecord};
use crate::rollout::{HostEnd, HostMove, Next, Step};
use crate::soak::{judge, Seen, SoakRecord};
use crate::store::{DeploymentRecord, Store, StoreError, Write};
use crate::untrusted::HostText;
use crate::vm::{Fleet, GoldenVm};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a paused run left, for the run that resumes it.
#[derive(Debug, Clone)]
pub(super) struct Resumed {
    /// Batches the paused run walked.
    pub offset: usize,
    /// The hosts it moved or that failed, as its receipt says.
    pub settled: BTreeMap<String, HostOutcome>,
    /// How many of them failed (against the failure budget).
    pub failed_before: usize,
    /// The paused run's receipt.
    pub from_receipt: String,
}

/// The last rollout of a service in an environment, as its receipt says.
#[derive(Debug, Clone)]
pub struct LastRollout {
    /// Its receipt's file name.
    pub receipt: String,
    pub body: crate::receipt::ReceiptBody,
}

impl LastRollout {
    /// Paused at its pause point: `agentctl resume` or `agentctl rollback` comes next.
    pub fn paused(&self) -> bool {
        self.body.outcome == "paused"
    }

    /// The batch it paused after (1: the canary), and of how many.
    pub fn paused_after(&self) -> Option<(usize, usize)> {
        let r = self.body.rollout.as_ref()?;
        Some((r.paused_after?, r.batches))
    }

    /// The hosts it moved to its release (and kept).
    pub fn moved(&self) -> Vec<&HostOutcome> {
        self.body.hosts.iter().filter(|h| h.outcome == "changed").collect()
    }

    /// For a rollout that is held (paused, or halted with hosts kept on its release) or
    /// halted: its state word and what it means, naming the next commands.
    pub fn held(&self) -> Option<(&'static str, String)> {
        let (env, service) = (self.body.environment.as_deref()?, self.body.service.as_deref()?);
        let moved: Vec<&str> = self.moved().iter().map(|h| h.host.as_str()).collect();
        let moved = if moved.is_empty() { "none".to_owned() } else { moved.join(", ") };
        let plan = self.body.plan_id.as_deref().unwrap_or("none");
        match self.body.outcome.as_str() {
            "paused" => {
                let (after, of) = self.paused_after().unwrap_or((0, 0));
                let which = if after == 1 { "the canary".to_owned() } else { format!("batch {after}") };
                Some((
                    "paused",
                    format!(
                        "paused after {which} of {of} batch(es), plan {plan} (receipt {}); moved: {moved}; `agentctl resume PLAN.json` continues, `agentctl rollback {service} --env {env} --apply` returns them",
                        self.receipt
                    ),
                ))
            }
            "halted" => Some((
                "halted",
                format!(
                    "halted: failure budget spent, plan {plan} (receipt {}); still on its release: {moved}{}",
                    self.receipt,
                    if self.moved().is_empty() {
                        String::new()
                    } else {
                        format!("; `agentctl rollback {service} --env {env} --apply` returns them")
                    }
                ),
            )),
            _ => None,
        }
    }
}

/// The last apply or rollback receipt of `service` in `env`, if any (from the store's
/// receipt chain). A receipt that does not parse is [`StoreError::Corrupt`].
pub async fn last_rollout(store: &dyn Store, env: &str, service: &str) -> Result<Option<LastRollout>, StoreError> {
    let index = store.receipts().await?;
    let ours: Vec<_> = index
        .iter()
        .filter(|r| {
            r.environment.as_deref() == Some(env)
                && r.service.as_deref() == Some(service)
                && matches!(r.kind.as_str(), "apply" | "rollback")
        })
        .collect();
    let Some(first) = ours.first() else { return Ok(None) };
    let stored = store.stored_receipts(first.seq - 1).await?;
    // Newest first; a receipt of a run that moved no host (refused after its plan, stopped
    // before the lock, failed at staging) leaves the last rollout as it was.
    for r in ours.iter().rev() {
        let Some(s) = stored.iter().find(|s| s.index.seq == r.seq) else { continue };
        // A receipt indexed before its bytes were kept (an old store) says nothing here.
        let Ok(receipt) = serde_json::from_slice::<Receipt>(&s.bytes) else { continue };
        let moved = receipt.body.outcome == "paused"
            || receipt.body.hosts.iter().any(|h| !matches!(h.outcome.as_str(), "untouched" | "unchanged"));
        if moved {
            return Ok(Some(LastRollout { receipt: r.file.clone(), body: receipt.body }));
        }
    }
    Ok(None)
}

impl Deployer<'_> {
    /// The last apply or rollback receipt of `service` in `env`, if any.
    pub async fn last_rollout(&self, env: &str, service: &str) -> Result<Option<LastRollout>, DeployError> {
        Ok(last_rollout(self.store, env, service).await?)
    }

    /// The release the hosts a paused (or halted, hosts kept) rollout moved came from: where
    /// `agentctl rollback` (without `--to`) returns them, leaving the hosts that never
    /// moved alone. `None` when the last rollout ended otherwise.
    pub(super) async fn paused_way_back(
        &self,
        env: &Environment,
        service: &Service,
    ) -> Result<Option<String>, DeployError> {
        let Some(last) = self.last_rollout(env.name.as_str(), service.name.as_str()).await? else { return Ok(None) };
        if !(last.paused() || last.body.outcome == "halted") {
            return Ok(None);
        }
        let mut targets: Vec<String> = last.moved().iter().filter_map(|h| h.rollback_target.clone()).collect();
        targets.sort();
        targets.dedup();
        match targets.len() {
            1 => Ok(targets.pop()),
            0 => Ok(None),
            _ => {
                Err(DeployError::SplitRollbackTarget { environment: env.name.to_string(), targets: targets.join(", ") })
            }
        }
    }

    /// Continues a paused rollout from the batch after its pause: the plan file must be the
    /// paused one (its id is the hash of what it says, and the last rollout's receipt
    /// names it as paused); the plan is derived again like any saved plan — the hosts that
    /// moved must still run its release, the rest must be as planned — and its approvals
    /// are counted again.
    pub async fn resume_saved(
        &self,
        fleet: &Fleet,
        saved: &SavedPlan,
        receipts: &Receipts<'_>,
    ) -> Result<super::ApplyReport, DeployError> {
        let file = &saved.plan;
        let id = file.id();
        let not_paused = |why: String| DeployError::NotPaused { plan: saved.plan_id.clone(), why };
        if id != saved.plan_id {
            return Err(not_paused(format!("the file was edited: what it says hashes to `{id}`")));
        }
        let env = self.environment(&file.environment)?;
        let service = self.service(&file.service)?;
        let last = self.last_rollout(env.name.as_str(), service.name.as_str()).await?;
        let last = match last {
            Some(l) if l.body.plan_id.as_deref() == Some(id.as_str()) && l.paused() => l,
            Some(l) if l.body.plan_id.as_deref() == Some(id.as_str()) => {
                return Err(not_paused(format!("its rollout ended `{}` (receipt {})", l.body.outcome, l.receipt)))
            }
            Some(l) if self.was_applied(&id).await? => {
                return Err(not_paused(format!(
                    "a later rollout of `{}` in `{}` came after it (receipt {}, plan {})",
                    service.name,
                    env.name,
                    l.receipt,
                    l.body.plan_id.as_deref().unwrap_or("none")
                )))
            }
            _ => return Err(not_paused("it was never paused (no receipt records a pause of it)".into())),
        };
        let (offset, batches) = last.paused_after().unwrap_or((0, file.batches.len()));
        if file.kind != PlanKind::Promote
            || offset == 0
            || offset >= file.batches.len()
            || batches != file.batches.len()
        {
            return Err(not_paused(format!("its pause receipt {} does not name a batch to go on from", last.receipt)));
        }
        let settled: BTreeMap<String, HostOutcome> = last
            .body
            .hosts
            .iter()
            .filter(|h| matches!(h.outcome.as_str(), "changed" | "rolled-back" | "failed"))
            .map(|h| (h.host.clone(), h.clone()))
            .collect();
        let moved: Vec<String> = last.moved().iter().map(|h| h.host.clone()).collect();
        let failed: Vec<String> = settled.keys().filter(|h| !moved.contains(h)).cloned().collect();
        let id_text = id.to_string();
        let id_text = &id_text;
        let refuse = |e: DeployError| async move {
            let (e_name, s_name) = (Some(env.name.to_string()), Some(service.name.to_string()));
            self.write_refusal(Some(id_text.clone()), e_name, s_name, &e, receipts).await?;
            Err::<super::ApplyReport, _>(e)
        };

        // Derived again, as made then: verification, the gate, rendering, observation.
        let record = match self.store.release(service.name.as_str(), &file.release.facts.digest).await? {
            Some(r) => r,
            None => {
                let reference = file.release.facts.digest.clone();
                return refuse(DeployError::UnknownRelease { service: service.name.to_string(), reference }).await;
            }
        };
        let made = super::Made {
            at: chrono::DateTime::parse_from_rfc3339(&file.created_at)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(|_| self.clock.now()),
            by: file.author.clone(),
        };
        let derived = match self.derive_promotion(fleet, env, service, &record, &made, None).await {
            Ok(d) => d.plan,
            Err(e @ (DeployError::Verify(_) | DeployError::Gate { .. } | DeployError::Plan(_))) => {
                return refuse(e).await
            }
            Err(e) => return Err(e),
        };
        match plan::compare_resumed(file, &derived, &moved, &failed, offset) {
            Ok(()) => {}
            Err(Mismatch::Stale(moved)) => return refuse(DeployError::Stale { plan: id.clone(), moved }).await,
            Err(Mismatch::Tampered(diffs)) => {
                return refuse(DeployError::PlanTampered { plan: id.clone(), diffs }).await
            }
        }
        let (approvals, counted, not_counted) = self.check_approvals(env, file, &id).await?;
        if (counted as u32) < env.approvals {
            let e = DeployError::Approvals { plan: id.clone(), need: env.approvals, have: counted, not_counted };
            return refuse(e).await;
        }
        self.sink.event(&format!(
            "resuming plan {id} after batch {offset} of {} ({} host(s) moved before the pause)",
            file.batches.len(),
            moved.len()
        ));
        let failed_before = failed.len();
        let resumed = Resumed { offset, settled, failed_before, from_receipt: last.receipt };
        let targets = file.hosts.iter().map(|h| (h.host.clone(), h.rollback_target.clone())).collect();
        let mut plan = derived;
        plan.batches = file.batches[offset..].to_vec();
        plan.pause_after = file.pause_after;
        self.run_locked(fleet, &plan, &id, env, service, approvals, Some(resumed), targets, false, receipts).await
    }

    /// Whether a receipt of plan `id` exists (it was applied, and perhaps paused).
    async fn was_applied(&self, id: &PlanId) -> Result<bool, DeployError> {
        Ok(self.store.receipts().await?.iter().any(|r| r.plan_id.as_deref() == Some(id.as_str()) && r.kind == "apply"))
    }
}

impl Run<'_, '_> {
    /// Watches the workload of each host of batch `number` that is healthy for the soak's
    /// length; returns the hosts whose workload changed, with what changed.
    pub(super) async fn soak_batch(&self, number: usize, hosts: &[String], soak: Soak) -> Vec<(String, String)> {
        if hosts.is_empty() {
            return Vec::new();
        }
        self.d.sink.event(&format!(
            "soaking batch {number} for {}s (a look every {}s): {}",
            soak.secs,
            soak.interval_secs,
            hosts.join(", ")
        ));
        let looks = futures::future::join_all(hosts.iter().map(|h| self.soak_host(h, number, soak))).await;
        hosts.iter().zip(looks).filter_map(|(h, r)| r.err().map(|why| (h.clone(), why))).collect()
    }

    async fn soak_host(&self, name: &str, number: usize, soak: Soak) -> Result<(), String> {
        let from = self.d.now();
        let started = tokio::time::Instant::now();
        let (length, every) = (Duration::from_secs(soak.secs), Duration::from_secs(soak.interval_secs));
        let mut checks = 0;
        let mut observed = None;
        let verdict = match self.fleet.get(name) {
            None => Err("the host is not connected".to_owned()),
            Some(vm) => match self.look(vm).await {
                Err(why) => Err(why),
                Ok(first) => loop {
                    observed.get_or_insert_with(|| first.describe());
                    let left = length.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        break Ok("held");
                    }
                    tokio::time::sleep(every.min(left)).await;
                    if self.d.interrupt.requested() || self.d.interrupt.lease_lost().is_some() {
                        break Ok("not finished: the run was stopped");
                    }
                    checks += 1;
                    if let Err(why) = self.check(vm, &first).await {
                        break Err(why);
                    }
                },
            },
        };
        let at = started.elapsed().as_secs();
        let text = match &verdict {
            Ok(word) => (*word).to_owned(),
            Err(why) => format!("failed after {at}s: {why}"),
        };
        match &verdict {
            Ok(_) => self.d.sink.event(&format!("{name}: soak {text} ({checks} checks)")),
            Err(_) => self.d.sink.event(&format!("{name}: soak {text}")),
        }
        let record = SoakRecord {
            host: name.to_owned(),
            batch: number,
            from,
            to: self.d.now(),
            checks,
            observed: HostText::new(observed.as_deref().unwrap_or("nothing: the first look failed")).to_string(),
            verdict: HostText::new(&text).to_string(),
        };
        self.soaked.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        verdict.map(|_| ()).map_err(|why| format!("{why} (after {at}s of {}s)", soak.secs))
    }

    /// One look at what runs on `vm`.
    async fn look(&self, vm: &dyn GoldenVm) -> Result<Seen, String> {
        // A probe that does not answer (a dropped connection) is asked once more before it
        // counts as a change: the soak judges the workload, not the network.
        let obs = match vm.probe(self.service, &[]).await {
            Ok(o) => o,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                vm.probe(self.service, &[]).await.map_err(|e| format!("cannot read what runs: {e}"))?
            }
        };
        if obs.release_id() != Some(&self.plan.release.release_id) {
            return Err(format!("`current` no longer points at `{}`", self.plan.release.release_id));
        }
        Seen::from_report(obs.running.as_ref())
    }

    /// A later look, judged against the first, then the workload's own health check.
    async fn check(&self, vm: &dyn GoldenVm, first: &Seen) -> Result<(), String> {
        let now = self.look(vm).await?;
        let release = &self.plan.release;
        let digests = [Some(release.facts.digest.as_str()), release.facts.platform_digest.as_deref()];
        judge(first, &now, release.release_id.as_str(), &digests.into_iter().flatten().collect::<Vec<_>>())?;
        let step = match self.service.runtime {
            Runtime::Podman(_) => Step::Check(release.release_id.to_string()),
            Runtime::Command(_) => Step::Health,
        };
        let timeout = Duration::from_secs(self.env.rollout.health_timeout_secs);
        vm.step(self.service, &step, timeout, self.plan_id.as_str())
            .await
            .map_err(|e| format!("health check failed: {e}"))
    }

    /// Moves a host that had moved back to its way back (`reason`: why). It ends
    /// `RolledBack` when it is back, `Failed` when it could not be returned.
    pub(super) async fn revert_host(&self, name: &str, reason: String) -> HostEnd {
        let failed = |back: String| HostEnd::Failed { reason: reason.clone(), back };
        let Some(vm) = self.fleet.get(name) else { return failed("the host is not connected".into()) };
        let release = self.plan.release.release_id.as_str();
        let health = Duration::from_secs(self.env.rollout.health_timeout_secs);
        let target = self.targets.get(name).cloned().flatten();
        let Some(target) = target else {
            // Nothing ran before: the command runtime removes `current`; a container stays.
            return match self.service.runtime {
                Runtime::Command(_) => match vm.step(self.service, &Step::Unset, health, self.plan_id.as_str()).await {
                    Ok(()) => HostEnd::RolledBack { reason },
                    Err(e) => failed(format!("unset failed: {e}")),
                },
                Runtime::Podman(_) => failed(
                    "the host ran nothing before this release, so there is nothing to go back to; its container runs (stop it with `podman stop`)".into(),
                ),
            };
        };
        let mut machine = match self.service.runtime {
            Runtime::Podman(_) => HostMove::start_first(target.as_str()),
            Runtime::Command(_) => HostMove::new(target.as_str(), Some(release)),
        };
        self.d.sink.event(&format!("{name}: going back to {target}: {reason}"));
        let mut step = machine.first();
        loop {
            // Without the lease this run may no longer own the host: nothing forward starts.
            let lost = if step.is_forward() { self.d.interrupt.lease_lost() } else { None };
            let result = match lost {
                Some(why) => Err(format!("not started: {why}")),
                None => vm.step(self.service, &step, health, self.plan_id.as_str()).await.map_err(|t| t.to_string()),
            };
            match machine.after(&step, result) {
                Next::Run(s) => step = s,
                Next::Done(HostEnd::Changed) => return HostEnd::RolledBack { reason },
                Next::Done(HostEnd::RolledBack { reason: why } | HostEnd::Failed { reason: why, .. }) => {
                    return failed(format!("could not go back to `{target}`: {why}"))
                }
            }
        }
    }

    /// Records a host moved back by [`Run::revert_host`]: its outcome, and, once it is back,
    /// its deployment and history (a rollback to its way back).
    pub(super) async fn settle_revert(
        &self,
        name: &str,
        end: &HostEnd,
        number: usize,
        total: usize,
        outcomes: &mut BTreeMap<String, HostOutcome>,
        failure: &mut Option<String>,
    ) {
        let d = self.d;
        let target = self.targets.get(name).cloned().flatten();
        let Some(o) = outcomes.get_mut(name) else { return };
        o.outcome = end.outcome().into();
        match end {
            HostEnd::RolledBack { reason } => {
                o.after = target.as_ref().map(ToString::to_string);
                o.detail = Some(HostText::new(reason));
                d.sink.event(&format!("{name}: {reason}; back on {}", o.after.as_deref().unwrap_or("nothing")));
                failure.get_or_insert(format!("host `{name}` failed in batch {number} of {total}: {reason}"));
                if let Err(e) = self.record_back(name, target.as_ref()).await {
                    o.detail = Some(HostText::new(&format!("{reason}; back, but not recorded: {e}")));
                    d.interrupt.lose_lease(e.to_string());
                }
            }
            HostEnd::Failed { reason, back } => {
                // On its new release, its old one, or between them: a person looks.
                o.after = None;
                o.detail = Some(HostText::new(&format!("{reason}; the way back failed: {back}")));
                d.sink.event(&format!("{name}: FAILED: {reason}; could not be moved back: {back}"));
                failure.get_or_insert(format!(
                    "host `{name}` failed in batch {number} of {total} and could not be moved back: {reason}"
                ));
            }
            HostEnd::Changed => {}
        }
    }

    /// Writes that `host` runs `target` again (or nothing), as a rollback would.
    async fn record_back(&self, host: &str, target: Option<&ReleaseId>) -> Result<(), DeployError> {
        let (d, plan) = (self.d, self.plan);
        let fence = self.fence();
        let Some(target) = target else {
            let mut r = self.deployment(host, None);
            r.plan_id = self.plan_id.to_string();
            // Nothing runs, as before the rollout: the host's history starts again.
            let entry = self.history_entry(host, "", "forget");
            d.store.fenced(&fence, &[Write::Deployment(&r), Write::History(&entry)]).await?;
            return Ok(());
        };
        let applied = d.store.applied_release(&plan.environment, &plan.service, target.as_str()).await?;
        let (digest, commit, hash) =
            applied.map(|a| (a.facts.digest, a.facts.source_commit, a.content_hash)).unwrap_or_default();
        let r = DeploymentRecord {
            environment: plan.environment.clone(),
            service: plan.service.clone(),
            host: host.to_owned(),
            release_id: target.to_string(),
            digest,
            source_commit: commit,
            content_hash: hash,
            rollback_target: Some(target.to_string()),
            plan_id: self.plan_id.to_string(),
            updated_at: d.clock.now(),
        };
        let entry = self.history_entry(host, target.as_str(), "rollback");
        d.store.fenced(&fence, &[Write::Deployment(&r), Write::History(&entry)]).await?;
        Ok(())
    }

    /// The failure budget is spent: every host this rollout moved (in this run or before
    /// its pause) goes back, a batch at a time (the environment's batch size), as they came.
    pub(super) async fn return_moved(&self, outcomes: &mut BTreeMap<String, HostOutcome>) {
        let moved: Vec<String> = outcomes.values().filter(|o| o.outcome == "changed").map(|o| o.host.clone()).collect();
        if moved.is_empty() {
            return;
        }
        self.d.sink.event(&format!("the failure budget is spent: returning {}", moved.join(", ")));
        let why = "returned: the failure budget was spent".to_owned();
        let per = self.env.rollout.batch.per_batch(self.env.hosts.len());
        let mut ignored = None;
        for batch in moved.chunks(per) {
            if self.d.interrupt.lease_lost().is_some() {
                break;
            }
            self.note_progress(outcomes, batch);
            let ends = futures::future::join_all(batch.iter().map(|h| self.revert_host(h, why.clone()))).await;
            for (name, end) in batch.iter().zip(ends) {
                self.settle_revert(name, &end, 0, 0, outcomes, &mut ignored).await;
                if let (Some(o), HostEnd::RolledBack { .. }) = (outcomes.get_mut(name), &end) {
                    o.outcome = "returned".into();
                }
            }
            self.note_progress(outcomes, &[]);
        }
    }

    /// What the receipt says of the canary's proof; `None` for a plain rollout.
    pub(super) fn rollout_record(&self, failed: Option<usize>, paused_after: Option<usize>) -> Option<RolloutRecord> {
        let plan = self.plan;
        let soak = self.soaked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let proof = plan.soak.is_some() || plan.max_failures.is_some() || plan.pause_after.is_some();
        if !proof && self.resumed.is_none() {
            return None;
        }
        let offset = self.resumed.as_ref().map_or(0, |r| r.offset);
        Some(RolloutRecord {
            soak,
            failures: plan.max_failures.zip(failed).map(|(max, failed)| FailureBudget { failed, max }),
            paused_after,
            batches: offset + self.batches.len(),
            resumed_from: self.resumed.as_ref().map(|r| r.from_receipt.clone()),
        })
    }
}
