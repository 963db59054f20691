//! Rollback plans: the target chosen (one step back in the recorded history, a paused
//! rollout's way back, or `--to`), verified again (from the record when the registry is
//! down), and derived like a promotion.

use super::*;

impl<'a> Deployer<'a> {
    /// Plans a rollback to the recorded rollback target, or to release `to`.
    pub async fn plan_rollback(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        to: Option<&str>,
    ) -> Result<Plan, DeployError> {
        Ok(self.rollback(fleet, env_name, service_name, to).await?.plan)
    }

    /// [`Deployer::plan_rollback`], keeping what the hosts reported for an apply now.
    pub async fn rollback(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        to: Option<&str>,
    ) -> Result<Derived, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let (e, s) = (env.name.to_string(), service.name.to_string());
        let target = match to {
            // A release id as plans, `status` and `history` show it, or a unique prefix.
            Some(t) if t.starts_with("r-") => {
                let mut ids = self.release_ids(env, service, t).await?;
                match ids.len() {
                    // Not in the history: the store's record of applied releases decides.
                    0 => t.to_owned(),
                    1 => ids.remove(0),
                    count => return Err(DeployError::AmbiguousRelease { service: s, reference: t.to_owned(), count }),
                }
            }
            // A digest (or `repo@sha256:…`, or a prefix), as `promote --release` takes it.
            Some(t) => self.applied_release_for(env, service, t).await?,
            None => match self.paused_way_back(env, service).await? {
                // A paused rollout: its moved hosts go back where they came from.
                Some(t) => t,
                None => {
                    // One step back in each host's history; the hosts must agree.
                    let recorded = self.recorded(env, service).await?;
                    let mut targets: Vec<String> =
                        recorded.stacks.values().filter_map(|s| crate::history::back(s).map(str::to_owned)).collect();
                    targets.sort();
                    targets.dedup();
                    match targets.len() {
                        0 => return Err(DeployError::NoRollbackTarget { environment: e, service: s }),
                        1 => targets.remove(0),
                        _ => {
                            return Err(DeployError::SplitRollbackTarget {
                                environment: e,
                                targets: targets.join(", "),
                            })
                        }
                    }
                }
            },
        };
        self.derive_rollback(fleet, env, service, &target, &self.made_now(), None).await
    }

    /// The release applied to (environment, service) whose image `reference` names (a
    /// digest, `repo@sha256:…` or a digest prefix): its release id.
    pub(super) async fn applied_release_for(
        &self,
        env: &Environment,
        service: &Service,
        reference: &str,
    ) -> Result<String, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let record = self.resolve_release(service, reference).await.map_err(|err| match err {
            DeployError::UnknownRelease { .. } => DeployError::UnknownRollbackRelease {
                environment: e.into(),
                service: s.into(),
                release: reference.into(),
            },
            other => other,
        })?;
        // Every release the hosts' recorded histories name.
        let recorded = self.recorded(env, service).await?;
        let ids: std::collections::BTreeSet<&String> = recorded.stacks.values().flatten().collect();
        let mut found = Vec::new();
        for id in ids {
            if let Some(a) = self.store.applied_release(e, s, id).await? {
                if a.facts.digest == record.facts.digest {
                    found.push(id.clone());
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(DeployError::UnknownRollbackRelease {
                environment: e.into(),
                service: s.into(),
                release: reference.into(),
            }),
            _ => Err(DeployError::AmbiguousRollbackImage {
                environment: e.into(),
                digest: record.facts.digest.clone(),
                releases: found.join(", "),
            }),
        }
    }

    /// The rollback plan to release `target`, derived from the store and the hosts.
    pub(super) async fn derive_rollback(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        target: &str,
        made: &Made,
        seen: Option<&Observed>,
    ) -> Result<Derived, DeployError> {
        let (e, s) = (env.name.to_string(), service.name.to_string());
        let applied = self.store.applied_release(&e, &s, target).await?.ok_or_else(|| {
            DeployError::UnknownRollbackRelease { environment: e.clone(), service: s.clone(), release: target.into() }
        })?;
        // Going back is still a deployment: the image must still verify.
        let record = ReleaseRecord {
            service: s.clone(),
            facts: applied.facts.clone(),
            evidence: String::new(),
            added_at: applied.applied_at,
            added_by: String::new(),
        };
        let verified = match self.verify_record(env, &record).await {
            // The way back must not depend on the registry (the hosts keep the image): an
            // outage falls back to what was verified when the release was recorded and
            // applied, if its signer is still trusted. Only an unreachable registry: an
            // answer that does not match its digest, or any other wrong answer, stays a refusal.
            Err(DeployError::Verify(VerifyError::Registry {
                image,
                source: crate::registry::RegistryError::Unreachable { .. },
            })) => {
                self.sink.event(&format!(
                    "the registry is unreachable for `{image}`: going back on the recorded verification (signer still trusted)"
                ));
                let (pinned, req) = requirements(env, &record)?;
                self.verifier.verify_recorded(&pinned, &record.facts, &req)?
            }
            other => other?,
        };
        let corrupt = |e: crate::ids::IdError| {
            DeployError::Store(StoreError::Corrupt { what: "applied release", detail: e.to_string() })
        };
        let target_id = ReleaseId::new(target).map_err(corrupt)?;
        let recorded = self.recorded(env, service).await?;
        let observed = match seen {
            Some(o) => o.clone(),
            None => self.observe(fleet, env, service, &recorded.probe_targets(&env.hosts, Some(&target_id))).await?,
        };
        let planned = PlannedRelease {
            release_id: target_id,
            content_hash: ContentHash::new(&applied.content_hash).map_err(corrupt)?,
            facts: ReleaseFacts {
                signer_key_id: verified.signature.key_id.clone(),
                signature: Some(verified.signature_summary()),
                ..applied.facts
            },
        };
        let plan = self
            .build_plan(
                fleet,
                &PlanInput {
                    kind: PlanKind::Rollback,
                    environment: env,
                    service,
                    release: planned,
                    content: None,
                    observed: &observed,
                    known_hashes: &recorded.hashes,
                    recorded: &recorded.current(),
                    created_at: made.at,
                    author: &made.by,
                },
            )
            .await?;
        // A rollback that moves nothing is not a rollback: refused, never a success.
        if plan.is_noop() {
            return Err(DeployError::NothingToRollBack {
                environment: e,
                service: s,
                release: target.to_owned(),
                choices: self.rollback_choices(env, service, target).await?,
            });
        }
        Ok(Derived { plan, observed })
    }

    /// The releases (environment, service)'s hosts ran, other than `except`, newest first,
    /// as `--to` takes them: (release id, short digest and commit).
    pub(super) async fn rollback_choices(
        &self,
        env: &Environment,
        service: &Service,
        except: &str,
    ) -> Result<Vec<(String, String)>, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let mut ids: Vec<String> = Vec::new();
        for h in self.store.history(e, s).await?.into_iter().rev() {
            if !h.release_id.is_empty() && h.release_id != except && !ids.contains(&h.release_id) {
                ids.push(h.release_id);
            }
        }
        let mut choices = Vec::new();
        for id in ids {
            if let Some(a) = self.store.applied_release(e, s, &id).await? {
                choices.push((id, a.facts.short()));
            }
        }
        Ok(choices)
    }
}
