//! `rehearse`: promote, roll back, promote again, each a real apply with its receipt — the
//! proof that the way back works before a later environment may rely on it.

use super::*;

impl<'a> Deployer<'a> {
    /// Rollback proof: promotes `reference` in `env`, rolls it back to the recorded way
    /// back, and promotes it again, each with its receipt; then writes the rehearsal
    /// receipt that environments with `require_rehearsal` look for.
    pub async fn rehearse(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
        receipts: &Receipts<'_>,
    ) -> Result<Rehearsal, DeployError> {
        let step = |name: &'static str, r: ApplyReport| {
            if r.succeeded() {
                Ok(r)
            } else {
                Err(DeployError::RehearsalFailed { step: name, receipt: r.receipt })
            }
        };
        // A rehearsal runs its three applies back to back: a pause point would stop it
        // after its first canary, its environment left paused.
        if self.environment(env_name)?.rollout.pause_after.is_some() {
            return Err(DeployError::PausedRehearsal { environment: env_name.to_owned() });
        }
        let forward = self.promotion(fleet, env_name, service_name, reference).await?;
        let first = step("promote", self.apply_derived(fleet, &forward, receipts).await?)?;
        let (forward, back) = (forward.plan, self.rollback(fleet, env_name, service_name, None).await?);
        if back.plan.release.release_id == forward.release.release_id {
            return Err(DeployError::RehearsalFailed {
                step: "roll back (no earlier release recorded)",
                receipt: first.receipt,
            });
        }
        let rolled = step("roll back", self.apply_derived(fleet, &back, receipts).await?)?;
        let (back, again) = (back.plan, self.promotion(fleet, env_name, service_name, reference).await?);
        let second = step("promote again", self.apply_derived(fleet, &again, receipts).await?)?;
        let again = again.plan;
        let detail = format!(
            "promoted `{}` ({}), rolled back to `{}` ({}), promoted again ({})",
            forward.release.release_id, first.receipt, back.release.release_id, rolled.receipt, second.receipt
        );
        let body = ReceiptBody {
            rollout: None,
            kind: ReceiptKind::Rehearsal,
            time: self.now(),
            operator: self.operator.clone(),
            plan_id: Some(again.id().to_string()),
            environment: Some(again.environment.clone()),
            service: Some(again.service.clone()),
            release: Some(again.release.facts.clone()),
            hosts: second.hosts.clone(),
            approvals: Vec::new(),
            outcome: "succeeded".into(),
            detail: Some(detail.clone()),
        };
        let r = receipts.log.append(body, receipts.key, self.store).await?;
        self.store
            .put_rehearsal(
                &again.environment,
                &again.service,
                &again.release.facts.digest,
                &r.file_name(),
                self.clock.now(),
            )
            .await?;
        Ok(Rehearsal { receipt: r.file_name(), detail, back_to: back.release.release_id.to_string() })
    }
}
