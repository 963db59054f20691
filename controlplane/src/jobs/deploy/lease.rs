//! The lock as a lease: taken (a dead holder's taken over, with a receipt) and renewed
//! while the run lasts; a lease that cannot be renewed stops the run.

use super::*;

impl<'a> Deployer<'a> {
    /// Renews the lock lease every third of its length, for as long as it is polled. If
    /// another control plane took the lock over (this one stalled past its lease), or the
    /// lease cannot be confirmed before it runs out (the store fails or does not answer),
    /// the apply stops — while the lease is still its own, a ninth of it ahead of expiry —
    /// and no further host step starts; the receipt says why.
    pub(super) async fn keep_lease(
        &self,
        plan: &Plan,
        plan_id: &PlanId,
        lease: chrono::Duration,
        taken: DateTime<Utc>,
    ) -> std::convert::Infallible {
        let every = lease.to_std().unwrap_or(Duration::from_secs(60)) / 3;
        let margin = every / 3;
        // The lease is ours until this instant, as far as this process can tell (the time a
        // renewal was asked for plus the lease: the store may have written it later).
        let mut confirmed_until = taken + lease;
        let mut wait = every;
        let stop = |why: String| {
            self.sink.event(&format!("{why}: stopping"));
            self.interrupt.lose_lease(why);
        };
        loop {
            // Never sleep past the point where the run must stop.
            let left = (confirmed_until - self.clock.now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait.min(left.saturating_sub(margin))).await;
            let asked = self.clock.now();
            let left = (confirmed_until - asked).to_std().unwrap_or_default();
            if left <= margin {
                stop(format!(
                    "the lock's lease could not be renewed before it expires at {}",
                    confirmed_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
                return std::future::pending().await;
            }
            // A store that does not answer is a store that cannot renew: bounded so that the
            // answer, or its absence, comes while the lease is still ours.
            let budget = every.min(left - margin);
            let renewed = tokio::time::timeout(
                budget,
                self.store.renew_lock(&plan.environment, &plan.service, plan_id.as_str(), asked + lease),
            )
            .await
            .unwrap_or_else(|_| Err(StoreError::Unanswered { what: "renew lock", secs: budget.as_secs_f64() }));
            match renewed {
                Ok(true) => {
                    confirmed_until = asked + lease;
                    wait = every;
                }
                Ok(false) => {
                    stop("the lock's lease was taken over by another control plane".to_owned());
                    return std::future::pending().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lock lease");
                    self.sink.event(&format!("cannot renew the lock's lease ({e}); trying again"));
                    wait = margin;
                }
            }
        }
    }

    /// Takes `(env, service)`'s lock for `token` (the plan, or an adoption's token) as a
    /// lease from now; a holder whose lease ran out is taken over, with a receipt; a live
    /// holder is [`DeployError::Locked`]. The fence is the token of writes under the lock.
    pub(crate) async fn take_lock(
        &self,
        env: &str,
        service: &str,
        token: &PlanId,
        receipts: &Receipts<'_>,
    ) -> Result<Fence, DeployError> {
        let now = self.clock.now();
        let lock = LockRecord {
            environment: env.to_owned(),
            service: service.to_owned(),
            holder_user: self.operator.clone(),
            holder_host: self.machine.hostname.clone(),
            holder_pid: i64::from(std::process::id()),
            holder_boot: self.machine.boot_id.clone(),
            plan_id: token.to_string(),
            since: now,
            expires_at: Some(now + self.lease()),
        };
        match self.store.try_lock(&lock, now).await? {
            LockOutcome::Taken => {}
            LockOutcome::TakenOver(previous) => self.record_takeover(&previous, token, receipts).await?,
            LockOutcome::Held(holder) => {
                let liveness = lock::holder(&holder, &self.machine, self.pid_exists);
                return Err(DeployError::Locked {
                    environment: env.to_owned(),
                    service: service.to_owned(),
                    holder: Box::new(holder),
                    liveness,
                });
            }
        }
        Ok(Fence { environment: env.to_owned(), service: service.to_owned(), plan_id: token.to_string() })
    }

    /// The receipt of a takeover of an expired lease.
    pub(crate) async fn record_takeover(
        &self,
        previous: &LockRecord,
        plan_id: &PlanId,
        receipts: &Receipts<'_>,
    ) -> Result<(), DeployError> {
        let expired = previous.expires_at.map_or_else(|| "never".into(), |t| t.to_rfc3339());
        let detail = format!(
            "lock taken over by plan {plan_id}: the lease of {} on {} (pid {}, plan {}, since {}) expired at {expired}",
            previous.holder_user,
            previous.holder_host,
            previous.holder_pid,
            previous.plan_id,
            previous.since.to_rfc3339()
        );
        self.sink.event(&detail);
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::LockOverride,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(previous.plan_id.clone()),
            environment: Some(previous.environment.clone()),
            service: Some(previous.service.clone()),
            release: None,
            hosts: vec![],
            approvals: vec![],
            outcome: "recorded".into(),
            detail: Some(detail),
        };
        receipts.log.append(body, receipts.key, self.store).await?;
        Ok(())
    }
}
