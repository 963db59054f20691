//! One apply under the lock (`Run`): the way back recorded, staging, the batches walked
//! host by host (the core's `HostMove` decides each step), each outcome recorded, the
//! receipt. The canary's proof around the batches is `canary.rs`.

use super::*;

impl Run<'_, '_> {
    /// The fencing token of this run's writes under the lock.
    pub(super) fn fence(&self) -> Fence {
        Fence {
            environment: self.plan.environment.clone(),
            service: self.plan.service.clone(),
            plan_id: self.plan_id.to_string(),
        }
    }

    pub(super) fn body(&self, outcome: &str, detail: Option<String>, hosts: Vec<HostOutcome>) -> ReceiptBody {
        let mut body = receipt_body(self.d, self.plan, self.plan_id, self.approvals.clone(), outcome, detail, hosts);
        body.rollout = self.rollout_record(None, None);
        body
    }

    pub(super) fn deployment(&self, host: &str, prev: Option<&DeploymentRecord>) -> DeploymentRecord {
        prev.cloned().unwrap_or_else(|| {
            DeploymentRecord::nothing(&self.plan.environment, &self.plan.service, host, "", self.d.clock.now())
        })
    }

    pub(super) async fn apply_locked(&self, receipts: &Receipts<'_>) -> Result<ApplyReport, DeployError> {
        let (d, plan) = (self.d, self.plan);
        let existing: BTreeMap<String, DeploymentRecord> = d
            .store
            .deployments(&plan.environment, &plan.service)
            .await?
            .into_iter()
            .map(|r| (r.host.clone(), r))
            .collect();
        let moving: Vec<&String> = self.batches.iter().flatten().collect();

        // 4. Record the way back before the first host is touched, under the lock.
        let mut way_back = Vec::new();
        for h in plan.hosts.iter().filter(|h| h.action == Action::Change && moving.contains(&&h.host)) {
            let mut r = self.deployment(&h.host, existing.get(&h.host));
            r.rollback_target = h.rollback_target.as_ref().map(ToString::to_string);
            r.plan_id = self.plan_id.to_string();
            r.updated_at = d.clock.now();
            way_back.push(r);
        }
        let applied = AppliedRelease {
            environment: plan.environment.clone(),
            service: plan.service.clone(),
            release_id: plan.release.release_id.to_string(),
            content_hash: plan.release.content_hash.to_string(),
            facts: plan.release.facts.clone(),
            applied_at: d.clock.now(),
            // What `repair` stages again (a rollback's plan carries no files: kept as recorded).
            files: (!plan.files.is_empty()).then(|| plan.files.clone()),
        };
        let mut writes: Vec<Write<'_>> = way_back.iter().map(Write::Deployment).collect();
        writes.push(Write::Applied(&applied));
        d.store.fenced(&self.fence(), &writes).await?;

        let mut outcomes: BTreeMap<String, HostOutcome> = plan
            .hosts
            .iter()
            .map(|h| {
                let id = |r: &Option<ReleaseId>| r.as_ref().map(ToString::to_string);
                let (outcome, after) = match h.action {
                    Action::None => ("unchanged", Some(h.after.to_string())),
                    Action::Change => ("untouched", id(&h.before)),
                };
                let o = HostOutcome {
                    host: h.host.clone(),
                    before: id(&h.before),
                    after,
                    rollback_target: id(&h.rollback_target),
                    outcome: outcome.into(),
                    detail: None,
                };
                (h.host.clone(), o)
            })
            .collect();
        // A resumed run: the hosts the paused run moved (or failed) are as it left them.
        if let Some(r) = &self.resumed {
            outcomes.extend(r.settled.iter().map(|(h, o)| (h.clone(), o.clone())));
        }
        self.note_progress(&outcomes, &[]);

        // 5. Stage everywhere first: staging changes nothing live, and a failure here stops
        //    the rollout before any host moved.
        if plan.kind == PlanKind::Promote && !plan.is_noop() {
            if let Err(e) = self.stage_all().await {
                let r = receipts
                    .log
                    .append(
                        self.body("failed", Some(e.to_string()), outcomes.into_values().collect()),
                        receipts.key,
                        d.store,
                    )
                    .await?;
                d.sink.event(&format!("receipt {}", r.file_name()));
                return Err(e);
            }
        }

        // 6. Batch by batch: each host walks its steps (the core decides each next one);
        //    a soaking batch is watched; the core decides whether the next batch starts.
        let offset = self.resumed.as_ref().map_or(0, |r| r.offset);
        let total = offset + self.batches.len();
        let policy = rollout::Policy { max_failures: plan.max_failures, pause_after: plan.pause_after };
        let mut failed = self.resumed.as_ref().map_or(0, |r| r.failed_before);
        let mut ends: BTreeMap<String, HostEnd> = BTreeMap::new();
        let mut failure = None;
        let mut decision = rollout::AfterBatch::Next;
        let mut last = offset;
        for (i, batch) in self.batches.iter().enumerate() {
            let number = offset + i + 1;
            if d.interrupt.requested() {
                decision = rollout::AfterBatch::Stop;
                break;
            }
            last = number;
            self.note_progress(&outcomes, batch);
            d.sink.event(&format!(
                "batch {number} of {total}{}: {}",
                if number == 1 { " (canary)" } else { "" },
                batch.join(", ")
            ));
            let results = futures::future::join_all(batch.iter().map(|name| self.move_host(name))).await;
            for (name, end) in batch.iter().zip(results) {
                self.settle(name, &end, number, total, &existing, &mut outcomes, &mut failure).await;
                ends.insert(name.clone(), end);
            }
            self.note_progress(&outcomes, &[]);
            // The soak: a healthy batch keeps running under watch before the rollout goes on;
            // a host whose workload changes goes back like one that failed its health check.
            let soaks = plan.soak.filter(|s| number == 1 || s.every_batch);
            if let (Some(soak), false) = (soaks, d.interrupt.requested()) {
                let healthy: Vec<String> =
                    batch.iter().filter(|n| ends.get(*n) == Some(&HostEnd::Changed)).cloned().collect();
                for (name, why) in self.soak_batch(number, &healthy, soak).await {
                    let end = self.revert_host(&name, format!("soak failed: {why}")).await;
                    self.settle_revert(&name, &end, number, total, &mut outcomes, &mut failure).await;
                    ends.insert(name, end);
                }
            }
            self.note_progress(&outcomes, &[]);
            let batch_ends: Vec<HostEnd> = batch.iter().filter_map(|n| ends.get(n).cloned()).collect();
            decision = rollout::after_batch(policy, number, total, &batch_ends, failed, d.interrupt.requested());
            failed += batch_ends.iter().filter(|e| **e != HostEnd::Changed).count();
            if decision != rollout::AfterBatch::Next {
                break;
            }
        }
        let interrupted = d.interrupt.requested();
        let changing: Vec<Option<HostEnd>> = plan
            .hosts
            .iter()
            .filter(|h| h.action == Action::Change && moving.contains(&&h.host))
            .map(|h| ends.get(&h.host).cloned())
            .collect();
        let mut outcome = rollout::outcome(&changing, interrupted);
        if outcome == Outcome::Succeeded && self.resumed.as_ref().is_some_and(|r| r.failed_before > 0) {
            outcome = Outcome::Failed;
            failure.get_or_insert_with(|| "hosts failed before the pause (within the failure budget)".into());
        }
        let mut paused_after = None;
        match decision {
            rollout::AfterBatch::Halt => {
                let max = plan.max_failures.unwrap_or_default();
                let why = format!("halted: failure budget spent ({failed} host(s) failed; the budget is {max})");
                d.sink.event(&why);
                // Without the lease this run no longer owns the hosts: they stay as they are.
                if plan.on_budget_spent != Some(crate::manifest::OnBudgetSpent::Keep)
                    && d.interrupt.lease_lost().is_none()
                {
                    self.return_moved(&mut outcomes).await;
                }
                failure = Some(match failure {
                    Some(first) => format!("{why}; first: {first}"),
                    None => why,
                });
                outcome = Outcome::Halted;
            }
            rollout::AfterBatch::Pause if !interrupted => {
                paused_after = Some(last);
                outcome = Outcome::Paused;
                let which = if last == 1 { "the canary".to_owned() } else { format!("batch {last} of {total}") };
                let why = format!(
                    "paused after {which}: `agentctl resume PLAN.json` continues with batch {} of {total}; `agentctl rollback {} --env {} --apply` returns the hosts that moved",
                    last + 1,
                    plan.service,
                    plan.environment
                );
                d.sink.event(&why);
                failure = Some(why);
            }
            _ => {}
        }
        // Without its lease the run cannot vouch for the state: never "succeeded", even when
        // every host moved (their records may have been refused).
        if d.interrupt.lease_lost().is_some()
            && matches!(outcome, Outcome::Succeeded | Outcome::Paused | Outcome::Halted)
        {
            outcome = Outcome::Interrupted;
        }
        if outcome == Outcome::Interrupted {
            match d.interrupt.lease_lost() {
                Some(why) => {
                    failure = Some(format!("stopped: {why}; no further host step was started"));
                    d.sink.event(&format!("stopped: {why}; no further host step was started"));
                }
                None => {
                    failure.get_or_insert_with(|| "interrupted: no further host was started".into());
                    d.sink.event("interrupted: the hosts that were moving finished; no further host was started");
                }
            }
        }
        let hosts: Vec<HostOutcome> = outcomes.into_values().collect();
        let mut body = self.body(outcome.as_str(), failure.clone(), hosts.clone());
        body.rollout = self.rollout_record(Some(failed), paused_after);
        let r = self.final_receipt(body, receipts).await?;
        Ok(ApplyReport { plan_id: self.plan_id.clone(), outcome, hosts, receipt: r.file_name(), failure })
    }

    /// Records how host `name` ended in batch `number` of `total`: its outcome, and, when it
    /// moved, its deployment and history (under the lock's fence).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle(
        &self,
        name: &str,
        end: &HostEnd,
        number: usize,
        total: usize,
        existing: &BTreeMap<String, DeploymentRecord>,
        outcomes: &mut BTreeMap<String, HostOutcome>,
        failure: &mut Option<String>,
    ) {
        let (d, plan) = (self.d, self.plan);
        let Some(o) = outcomes.get_mut(name) else { return };
        o.outcome = end.outcome().into();
        match end {
            HostEnd::Changed => {
                o.after = Some(plan.release.release_id.to_string());
                let mut r = self.deployment(name, existing.get(name));
                r.release_id = plan.release.release_id.to_string();
                r.digest = plan.release.facts.digest.clone();
                r.source_commit = plan.release.facts.source_commit.clone();
                r.content_hash = plan.release.content_hash.to_string();
                r.rollback_target = o.rollback_target.clone().or(r.rollback_target);
                r.plan_id = self.plan_id.to_string();
                r.updated_at = d.clock.now();
                let kind = if plan.kind == PlanKind::Promote { "promote" } else { "rollback" };
                let entry = self.history_entry(name, plan.release.release_id.as_str(), kind);
                match d.store.fenced(&self.fence(), &[Write::Deployment(&r), Write::History(&entry)]).await {
                    Ok(()) => d.sink.event(&format!("{name}: {} is live and healthy", plan.release.release_id)),
                    // Another control plane holds the lock now, or the store cannot be
                    // written: what this host runs is not recorded by us, and nothing
                    // more starts.
                    Err(e) => {
                        o.detail = Some(HostText::new(&format!("live, but not recorded: {e}")));
                        d.sink.event(&format!("{name}: live, but not recorded: {e}"));
                        d.interrupt.lose_lease(e.to_string());
                    }
                }
            }
            HostEnd::RolledBack { reason } => {
                // Back on its way back: the recorded release, or nothing.
                o.after = o.rollback_target.clone();
                o.detail = Some(HostText::new(reason));
                d.sink.event(&format!("{name}: FAILED: {reason}; rolled back"));
                failure.get_or_insert(format!("host `{name}` failed in batch {number} of {total}: {reason}"));
            }
            HostEnd::Failed { reason, back } => {
                o.after = None;
                o.detail = Some(HostText::new(&format!("{reason}; the way back failed too: {back}")));
                d.sink.event(&format!("{name}: FAILED: {reason}; could not be rolled back: {back}"));
                failure.get_or_insert(format!(
                    "host `{name}` failed in batch {number} of {total} and could not be rolled back: {reason}"
                ));
            }
        }
    }

    /// A history entry of this run for `host`.
    pub(super) fn history_entry(&self, host: &str, release_id: &str, kind: &str) -> crate::records::HistoryEntry {
        crate::records::HistoryEntry {
            environment: self.plan.environment.clone(),
            service: self.plan.service.clone(),
            host: host.to_owned(),
            seq: 0,
            release_id: release_id.to_owned(),
            kind: kind.into(),
            plan_id: self.plan_id.to_string(),
            at: self.d.clock.now(),
        }
    }

    /// Keeps each host's outcome so far; the hosts of `moving` are marked as such.
    pub(super) fn note_progress(&self, outcomes: &BTreeMap<String, HostOutcome>, moving: &[String]) {
        let mut now = outcomes.clone();
        for name in moving {
            if let Some(o) = now.get_mut(name) {
                o.outcome = "unknown".into();
                o.after = None;
                o.detail = Some(HostText::new(
                    "aborted while it moved: it runs its old or its new release (`agentctl status` shows which)",
                ));
            }
        }
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// A second interrupt dropped the run where it was: an `aborted` receipt with what is
    /// known of each host, written once within a bounded time.
    pub(super) async fn aborted(&self, receipts: &Receipts<'_>) -> Result<ApplyReport, DeployError> {
        self.d.sink.event("aborted: the moving hosts' steps were dropped where they were");
        let hosts: Vec<HostOutcome> =
            self.progress.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let detail = "aborted by a second interrupt: hosts marked `unknown` were moving".to_owned();
        let body = self.body("aborted", Some(detail), hosts);
        match tokio::time::timeout(ABORT_WRITE_BUDGET, receipts.log.append(body, receipts.key, self.d.store)).await {
            Ok(Ok(r)) => Err(DeployError::Aborted { receipt: r.file_name() }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DeployError::Store(StoreError::Unanswered {
                what: "the aborted run's receipt",
                secs: ABORT_WRITE_BUDGET.as_secs_f64(),
            })),
        }
    }

    /// Appends the run's last receipt. Hosts may have moved, so a store that cannot be
    /// reached is tried again for a bounded time (about two minutes) before giving up.
    pub(super) async fn final_receipt(
        &self,
        body: ReceiptBody,
        receipts: &Receipts<'_>,
    ) -> Result<crate::receipt::Receipt, DeployError> {
        let mut wait = Duration::from_millis(500);
        for attempt in 1.. {
            match receipts.log.append(body.clone(), receipts.key, self.d.store).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 8 => {
                    self.d
                        .sink
                        .event(&format!("cannot write the receipt ({e}); trying again in {}s", wait.as_secs_f32()));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    pub(super) async fn stage_all(&self) -> Result<(), DeployError> {
        let plan = self.plan;
        let files = plan
            .decoded_files()
            .map_err(|reason| DeployError::Staging { host: "*".into(), reason: HostText::new(&reason) })?;
        let tar = crate::tarball::tar(&files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect::<Vec<_>>())?;
        // The hosts of this run's batches (a resumed run's are what the pause left).
        let moving: Vec<&String> = self.batches.iter().flatten().collect();
        let stage_all =
            plan.hosts.iter().filter(|h| h.action == Action::Change && moving.contains(&&h.host)).map(|h| {
                let tar = &tar;
                async move {
                    let result = match self.fleet.get(&h.host) {
                        Some(vm) => {
                            let (id, hash) = (plan.release.release_id.as_str(), plan.release.content_hash.as_str());
                            vm.stage(self.service, id, hash, tar).await
                        }
                        None => Err(HostText::new("the host is not connected")),
                    };
                    (h.host.clone(), result)
                }
            });
        for (name, result) in futures::future::join_all(stage_all).await {
            match result {
                Ok(()) => self.d.sink.event(&format!("staged `{}` on {name}", plan.release.release_id)),
                Err(reason) => return Err(DeployError::Staging { host: name, reason }),
            }
        }
        Ok(())
    }

    /// After a healthy check: the digest the host's runtime reports as running must be the
    /// release's (or, for an image index, its platform manifest's).
    pub(super) async fn read_back(&self, vm: &dyn GoldenVm) -> Result<(), String> {
        let obs = vm.probe(self.service, &[]).await.map_err(|e| format!("cannot read back what runs: {e}"))?;
        let facts = &self.plan.release.facts;
        let running = obs.running.as_ref().map(|r| r.as_str().trim().to_owned()).unwrap_or_default();
        if running == facts.digest || Some(&running) == facts.platform_digest.as_ref() {
            return Ok(());
        }
        Err(format!(
            "the runtime reports `{}` running, not the release's `{}`",
            if running.is_empty() { "nothing" } else { &running },
            facts.running_digest()
        ))
    }

    /// Walks one host through its steps; the core's [`HostMove`] decides each next one.
    pub(super) async fn move_host(&self, name: &str) -> HostEnd {
        let target = self.plan.hosts.iter().find(|h| h.host == name).and_then(|h| h.rollback_target.as_ref());
        let release = self.plan.release.release_id.as_str();
        let mut machine = match self.service.runtime {
            // Podman: the new container is healthy before `current` moves (docs/RUNTIME.md).
            crate::manifest::Runtime::Podman(_) => HostMove::start_first(release),
            crate::manifest::Runtime::Command(_) => HostMove::new(release, target.map(ReleaseId::as_str)),
        };
        let Some(vm) = self.fleet.get(name) else {
            return HostEnd::Failed { reason: "the host is not connected".into(), back: "not attempted".into() };
        };
        let health = Duration::from_secs(self.env.rollout.health_timeout_secs);
        let mut step = machine.first();
        loop {
            // Without a lease this run may no longer own the hosts: no step forward starts
            // (the way back still runs, so a host that was moving returns).
            let lost = if step.is_forward() { self.d.interrupt.lease_lost() } else { None };
            let mut result = match lost {
                Some(why) => Err(format!("not started: {why}")),
                None => vm.step(self.service, &step, health, self.plan_id.as_str()).await.map_err(|t| t.to_string()),
            };
            // The egress proof is part of the health gate: a host whose workload reaches what
            // it must not (or not what it must) fails like an unhealthy one.
            if let (Ok(()), true, Some(checks)) = (&result, step.is_health(), &self.egress_checks) {
                let proof = crate::egress_proof::prove_host(vm, self.service, checks).await;
                if !proof.held() {
                    result = Err(format!("egress proof failed: {}", proof.failures().join("; ")));
                }
            }
            // What was started must be what runs: the runtime's own report is read back
            // (the Podman runtime reads its container's image in the health check itself).
            if let (Ok(()), true, crate::manifest::Runtime::Command(_)) =
                (&result, step.is_health(), &self.service.runtime)
            {
                if let Err(why) = self.read_back(vm).await {
                    result = Err(why);
                }
            }
            if let Err(e) = &result {
                if !step.is_forward() {
                    self.d.sink.event(&format!("{name}: the way back failed: {e}"));
                }
            }
            match machine.after(&step, result) {
                Next::Run(s) => step = s,
                Next::Done(end) => return end,
            }
        }
    }
}
