//! Applying a plan: derived again and compared (a file is a request, never authority),
//! approvals counted, refusals recorded, then the run under the lock (`run.rs`).

use super::*;

impl<'a> Deployer<'a> {
    /// Records a refusal that happened before a plan existed (verification, gate), when
    /// the operator asked to apply: every apply attempt ends with a receipt.
    pub async fn record_refusal(
        &self,
        env: &str,
        service: &str,
        e: &DeployError,
        receipts: &Receipts<'_>,
    ) -> Result<String, DeployError> {
        let r = self.write_refusal(None, Some(env.to_owned()), Some(service.to_owned()), e, receipts).await?;
        Ok(r.file_name())
    }

    /// Writes the receipt of a refusal: what was asked (plan, environment, service) and why not.
    pub(super) async fn write_refusal(
        &self,
        plan_id: Option<String>,
        environment: Option<String>,
        service: Option<String>,
        e: &DeployError,
        receipts: &Receipts<'_>,
    ) -> Result<crate::receipt::Receipt, DeployError> {
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Refusal,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id,
            environment,
            service,
            release: None,
            hosts: Vec::new(),
            approvals: Vec::new(),
            outcome: "refused".into(),
            detail: Some(refusal_detail(e)),
        };
        Ok(receipts.log.append(body, receipts.key, self.store).await?)
    }

    /// Applies what `requested` asks for, or refuses it. `requested` is not believed: the
    /// plan is derived again here, and the request must match it exactly (policy fields
    /// come from the manifests, hosts must not have moved). Every outcome past reading the
    /// request ends with a receipt.
    pub async fn apply(
        &self,
        fleet: &Fleet,
        requested: &Plan,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        self.apply_seen(fleet, requested, None, receipts).await
    }

    /// Applies a plan this process derived: like [`Deployer::apply`], except that the
    /// hosts are not probed a second time (what they reported moments ago is used).
    /// Verification, the gate, the rendering and the store are consulted again.
    pub async fn apply_derived(
        &self,
        fleet: &Fleet,
        derived: &Derived,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        self.apply_seen(fleet, &derived.plan, Some(&derived.observed), receipts).await
    }

    pub(super) async fn apply_seen(
        &self,
        fleet: &Fleet,
        requested: &Plan,
        seen: Option<&Observed>,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let env = self.environment(&requested.environment)?;
        let service = self.service(&requested.service)?;
        let requested_id = requested.id();
        let id = &requested_id;
        let refuse = |e: DeployError| async move {
            let (env, svc) = (Some(env.name.to_string()), Some(service.name.to_string()));
            self.write_refusal(Some(id.to_string()), env, svc, &e, receipts).await?;
            Err::<ApplyReport, _>(e)
        };

        // 0. A plan is single use and expires. One that was applied says so, with its receipt.
        let applied = self
            .store
            .receipts()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.plan_id.as_deref() == Some(id.as_str()) && matches!(r.kind.as_str(), "apply" | "rollback"));
        if let Some(r) = applied {
            return refuse(DeployError::AlreadyApplied { plan: id.clone(), receipt: r.file }).await;
        }
        if let Err(e) = plan::check_age(requested, self.clock.now(), self.set.settings.plan_max_age_secs) {
            return refuse(DeployError::Expired(e)).await;
        }
        let created = Made {
            at: DateTime::parse_from_rfc3339(&requested.created_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| self.clock.now()),
            by: requested.author.clone(),
        };
        // 1. Derive the plan again: verification, the gate, rendering and observation all
        //    run now. A release that is not recorded cannot be promoted from a file.
        let derived = match requested.kind {
            PlanKind::Promote => {
                let record = match self.store.release(service.name.as_str(), &requested.release.facts.digest).await? {
                    Some(r) => r,
                    None => {
                        return refuse(DeployError::UnknownRelease {
                            service: service.name.to_string(),
                            reference: requested.release.facts.digest.clone(),
                        })
                        .await
                    }
                };
                self.derive_promotion(fleet, env, service, &record, &created, seen).await
            }
            PlanKind::Rollback => {
                let id = requested.release.release_id.as_str();
                self.derive_rollback(fleet, env, service, id, &created, seen).await
            }
        };
        let plan = match derived {
            Ok(d) => d.plan,
            Err(
                e @ (DeployError::Verify(_)
                | DeployError::Gate { .. }
                | DeployError::Plan(_)
                | DeployError::WayBackBroken { .. }),
            ) => return refuse(e).await,
            Err(e @ (DeployError::UnknownRollbackRelease { .. } | DeployError::NothingToRollBack { .. })) => {
                return refuse(e).await
            }
            Err(e) => return Err(e),
        };
        match plan::compare(requested, &plan) {
            Ok(()) => {}
            Err(Mismatch::Stale(moved)) => {
                return refuse(DeployError::Stale { plan: requested_id.clone(), moved }).await
            }
            Err(Mismatch::Tampered(diffs)) => {
                return refuse(DeployError::PlanTampered { plan: requested_id.clone(), diffs }).await
            }
        }
        let plan_id = plan.id();

        // 2. Approvals: each signature verified against the environment's approvers now,
        //    each statement checked against this plan, counted per distinct approver.
        let (approval_records, counted, not_counted) = self.check_approvals(env, &plan, &plan_id).await?;
        if (counted as u32) < env.approvals {
            let e = DeployError::Approvals { plan: plan_id, need: env.approvals, have: counted, not_counted };
            return refuse(e).await;
        }
        let targets = plan.hosts.iter().map(|h| (h.host.clone(), h.rollback_target.clone())).collect();
        self.run_locked(fleet, &plan, &plan_id, env, service, approval_records, None, targets, true, receipts).await
    }

    /// Applies a checked plan under the lock: the egress expectations pinned, the lock
    /// taken (and, for a new plan, the plan recorded as applied once), the batches walked
    /// while the lease is renewed, and the lock released whatever happens.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_locked(
        &self,
        fleet: &Fleet,
        plan: &Plan,
        plan_id: &PlanId,
        env: &'_ Environment,
        service: &'_ Service,
        approvals: Vec<ApprovalRecord>,
        resumed: Option<canary::Resumed>,
        targets: BTreeMap<String, Option<ReleaseId>>,
        record: bool,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let refuse = |e: DeployError| async move {
            let (env, svc) = (Some(env.name.to_string()), Some(service.name.to_string()));
            self.write_refusal(Some(plan_id.to_string()), env, svc, &e, receipts).await?;
            Err::<ApplyReport, _>(e)
        };
        if self.interrupt.requested() {
            return self.finish_interrupted_early(plan, plan_id, approvals, receipts).await;
        }

        let egress_checks = match env.egress.prove_on_apply && !plan.is_noop() {
            true => Some(crate::egress_proof::expectations(env, service).await?),
            false => None,
        };

        // 3. The lock: a lease in the store, renewed while the apply runs. A holder whose
        //    lease ran out (it died, or lost the database) is taken over, on the record.
        let lease = self.lease();
        let now = self.clock.now();
        match self.take_lock(&plan.environment, &plan.service, plan_id, receipts).await {
            Err(e @ DeployError::Locked { .. }) => return refuse(e).await,
            other => other?,
        };
        // A resume continues the pause it was checked against: still the last rollout, now
        // that the lock is held (a concurrent resume or rollback came first otherwise).
        if let Some(r) = &resumed {
            let last = self.last_rollout(&plan.environment, &plan.service).await?;
            if last.as_ref().map(|l| l.receipt.as_str()) != Some(r.from_receipt.as_str()) {
                self.store.unlock(&plan.environment, &plan.service, plan_id.as_str()).await?;
                let why = format!(
                    "another rollout of `{}` in `{}` ended its pause while this one waited for the lock (receipt {})",
                    plan.service,
                    plan.environment,
                    last.map(|l| l.receipt).unwrap_or_default()
                );
                return Err(DeployError::NotPaused { plan: plan_id.clone(), why });
            }
        }
        // A plan that changes something is applied once, whatever the outcome.
        if record && !plan.is_noop() && !self.store.record_plan(plan_id.as_str(), self.clock.now()).await? {
            self.store.unlock(&plan.environment, &plan.service, plan_id.as_str()).await?;
            return refuse(DeployError::Replayed(plan_id.clone())).await;
        }
        let run = Run {
            d: self,
            fleet,
            plan,
            plan_id,
            env,
            service,
            approvals,
            egress_checks,
            progress: std::sync::Mutex::new(BTreeMap::new()),
            batches: plan.batches.clone(),
            targets,
            resumed,
            soaked: std::sync::Mutex::new(Vec::new()),
        };
        self.interrupt.applying.store(true, Ordering::SeqCst);
        let result = tokio::select! {
            result = run.apply_locked(receipts) => result,
            never = self.keep_lease(plan, plan_id, lease, now) => match never {},
            () = self.interrupt.aborted() => run.aborted(receipts).await,
        };
        // A lock that cannot be released now runs out with its lease.
        let unlock = self.store.unlock(&plan.environment, &plan.service, plan_id.as_str());
        match tokio::time::timeout(ABORT_WRITE_BUDGET, unlock).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.sink.event(&format!("cannot release the lock ({e}); it ends when its lease runs out")),
            Err(_) => self.sink.event("the store did not answer the unlock; the lock ends when its lease runs out"),
        }
        self.interrupt.applying.store(false, Ordering::SeqCst);
        result
    }

    /// The approvals of `plan_id` that count (as receipt records), how many distinct
    /// approvers that is, and why each other stored approval does not count.
    pub(super) async fn check_approvals(
        &self,
        env: &Environment,
        plan: &Plan,
        plan_id: &PlanId,
    ) -> Result<(Vec<ApprovalRecord>, usize, Vec<crate::approval::NotCounted>), DeployError> {
        use crate::approval::{self, NotCounted, Statement};
        let stored = self.store.approvals(plan_id.as_str()).await?;
        let mut verified = Vec::new();
        let mut not_counted = Vec::new();
        for a in &stored {
            let checked = crate::sshsig::verify(&env.approvers, a.statement.as_bytes(), &a.signature)
                .and_then(|who| Statement::parse(a.statement.as_bytes()).map(|s| (who, s)));
            match checked {
                Ok((approver, statement)) => verified.push((a, approval::Verified { approver, statement })),
                Err(reason) => not_counted.push(NotCounted { approver: a.approver.clone(), reason }),
            }
        }
        let list: Vec<approval::Verified> = verified.iter().map(|(_, v)| v.clone()).collect();
        let (counted, refused) = approval::count(
            &list,
            &approval::Expected {
                plan_id: plan_id.as_str(),
                environment: &plan.environment,
                service: &plan.service,
                release_digest: &plan.release.facts.digest,
                author: &plan.author,
                author_may_approve: env.author_may_approve,
                max_validity_secs: env.approval_valid_secs,
                now: self.clock.now(),
            },
        );
        not_counted.extend(refused);
        let records = verified
            .iter()
            .filter(|(_, v)| counted.contains(&v.approver))
            .map(|(a, v)| ApprovalRecord {
                approver: v.approver.clone(),
                at: a.approved_at.to_rfc3339(),
                statement: Some(a.statement.clone()),
                signature: Some(a.signature.clone()),
            })
            .collect();
        Ok((records, counted.len(), not_counted))
    }

    /// A stop asked for before the lock: nothing moved; the receipt says so.
    pub(super) async fn finish_interrupted_early(
        &self,
        plan: &Plan,
        plan_id: &PlanId,
        approvals: Vec<ApprovalRecord>,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let body = receipt_body(self, plan, plan_id, approvals, Outcome::Interrupted.as_str(), None, Vec::new());
        receipts.log.append(body, receipts.key, self.store).await?;
        Err(DeployError::Interrupted)
    }

    /// Applies a saved plan: the id it was shown with must be the hash of what it says,
    /// then [`Deployer::apply`] derives the plan again and compares.
    pub async fn apply_saved(
        &self,
        fleet: &Fleet,
        saved: &plan::SavedPlan,
        receipts: &Receipts<'_>,
    ) -> Result<ApplyReport, DeployError> {
        let actual = saved.plan.id();
        if actual != saved.plan_id {
            let e = DeployError::PlanTampered {
                plan: saved.plan_id.clone(),
                diffs: vec![FieldDiff {
                    field: "plan_id".into(),
                    file: saved.plan_id.to_string(),
                    derived: actual.to_string(),
                }],
            };
            let env = self.environment(&saved.plan.environment).ok().map(|e| e.name.to_string());
            let svc = self.service(&saved.plan.service).ok().map(|s| s.name.to_string());
            self.write_refusal(Some(saved.plan_id.to_string()), env, svc, &e, receipts).await?;
            return Err(e);
        }
        self.apply(fleet, &saved.plan, receipts).await
    }
}
