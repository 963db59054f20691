//! Deriving a plan: the release resolved and verified now, the environment's gate and
//! rehearsal checked, the hosts observed, the plan built by the core (`plan::build`).

use super::*;

impl<'a> Deployer<'a> {
    /// The recorded release `reference` names, by any of its names: a release id as plans,
    /// status and history show it (`r-…`, or a unique prefix of one, in any environment);
    /// its image digest (`repo@sha256:…`, `sha256:…` or a unique prefix); or a tag of the
    /// service's repository (`v2` or `repo:v2`), resolved now to its digest and shown pinned.
    pub async fn resolve_release(&self, service: &Service, reference: &str) -> Result<ReleaseRecord, DeployError> {
        let s = service.name.as_str();
        if reference.starts_with("r-") {
            let mut digests = std::collections::BTreeSet::new();
            for env in &self.set.environments {
                for id in self.release_ids(env, service, reference).await? {
                    if let Some(a) = self.store.applied_release(env.name.as_str(), s, &id).await? {
                        digests.insert(a.facts.digest);
                    }
                }
            }
            let unknown = || DeployError::UnknownRelease { service: s.into(), reference: reference.into() };
            return match digests.len() {
                0 => Err(unknown()),
                1 => crate::catalog::resolve(self.store, s, digests.first().ok_or_else(unknown)?).await,
                count => Err(DeployError::AmbiguousRelease { service: s.into(), reference: reference.into(), count }),
            };
        }
        match crate::catalog::resolve(self.store, s, reference).await {
            Err(DeployError::UnknownRelease { .. }) if tag_of(service, reference).is_some() => {
                let tag = tag_of(service, reference).unwrap_or_default();
                let digest = self.verifier.resolve_tag(&service.repository, tag).await?.ok_or_else(|| {
                    DeployError::UnknownRelease { service: s.into(), reference: format!("{reference} (no such tag)") }
                })?;
                self.sink.event(&format!("tag `{tag}` is {}@{digest} now", service.repository));
                crate::catalog::resolve(self.store, s, digest.as_str()).await.map_err(|e| match e {
                    DeployError::UnknownRelease { .. } => DeployError::UnknownRelease {
                        service: s.into(),
                        reference: format!("{reference} (now {digest})"),
                    },
                    other => other,
                })
            }
            other => other,
        }
    }

    /// The release ids in `env`'s recorded history of `service` that are `prefix` or start
    /// with it (the exact id alone when one is exactly it).
    pub(super) async fn release_ids(
        &self,
        env: &Environment,
        service: &Service,
        prefix: &str,
    ) -> Result<Vec<String>, DeployError> {
        let mut ids: Vec<String> = Vec::new();
        for h in self.store.history(env.name.as_str(), service.name.as_str()).await? {
            if h.release_id == prefix {
                return Ok(vec![h.release_id]);
            }
            if !h.release_id.is_empty() && h.release_id.starts_with(prefix) && !ids.contains(&h.release_id) {
                ids.push(h.release_id);
            }
        }
        Ok(ids)
    }

    pub(crate) async fn verify_record(
        &self,
        env: &Environment,
        record: &ReleaseRecord,
    ) -> Result<Verified, DeployError> {
        let (image, req) = requirements(env, record)?;
        Ok(self.verifier.verify_release(&image, &req).await?)
    }

    /// A release reaches an environment only after it succeeded on every host of the one before.
    pub(super) async fn gate(&self, env: &Environment, service: &Service, digest: &str) -> Result<(), DeployError> {
        let Some(after) = &env.after else { return Ok(()) };
        let gate =
            || DeployError::Gate { environment: env.name.to_string(), after: after.to_string(), digest: digest.into() };
        let Some(prev) = self.set.environment(after) else { return Err(gate()) };
        let recorded = self.store.deployments(after.as_str(), service.name.as_str()).await?;
        let everywhere =
            prev.hosts.iter().all(|h| recorded.iter().any(|d| d.host == h.name.as_str() && d.digest == digest));
        if everywhere {
            Ok(())
        } else {
            Err(gate())
        }
    }

    /// Where `env` requires it, the release must have been rehearsed in an environment
    /// that comes before it.
    pub(super) async fn rehearsed(
        &self,
        env: &Environment,
        service: &Service,
        digest: &str,
    ) -> Result<(), DeployError> {
        if !env.require_rehearsal {
            return Ok(());
        }
        let earlier = self.set.earlier(env);
        let done = self.store.rehearsals(service.name.as_str(), digest).await?;
        if done.iter().any(|(e, _)| earlier.contains(e)) {
            return Ok(());
        }
        Err(DeployError::NotRehearsed {
            environment: env.name.to_string(),
            digest: digest.to_owned(),
            earlier: earlier.first().cloned().unwrap_or_default(),
        })
    }

    /// Observes `service` on every host of `env` (one round trip each, all at once),
    /// hashing each host's `targets` besides the live release.
    pub async fn observe(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        targets: &BTreeMap<String, Vec<ReleaseId>>,
    ) -> Result<Vec<(String, Observation)>, DeployError> {
        let futs = env.hosts.iter().map(|h| async move {
            let vm = vm(fleet, h.name.as_str())?;
            let list: Vec<&ReleaseId> = targets.get(h.name.as_str()).into_iter().flatten().collect();
            Ok::<_, DeployError>((h.name.to_string(), vm.probe(service, &list).await?))
        });
        let observed: Vec<(String, Observation)> =
            futures::future::join_all(futs).await.into_iter().collect::<Result<_, _>>()?;
        if service.podman().is_some() {
            for (host, obs) in &observed {
                let report = obs.running.as_ref().map(|r| crate::podman::Report::parse(r.as_str()));
                if let Some(Err(reason)) | Some(Ok(Err(reason))) = report.map(|r| r.map(|r| r.ready())) {
                    return Err(DeployError::HostNotReady {
                        host: host.clone(),
                        service: service.name.to_string(),
                        hint: crate::podman::readiness_hint(&reason, service.name.as_str()),
                        reason,
                    });
                }
            }
        }
        Ok(observed)
    }

    /// What was recorded for (environment, service): each host's history as a stack, and
    /// the content identity of each recorded release.
    pub(crate) async fn recorded(&self, env: &Environment, service: &Service) -> Result<Recorded, DeployError> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let deployments = self.store.deployments(e, s).await?;
        let mut stacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_host: BTreeMap<&str, Vec<crate::records::HistoryEntry>> = BTreeMap::new();
        let history = self.store.history(e, s).await?;
        for h in &history {
            by_host.entry(h.host.as_str()).or_default().push(h.clone());
        }
        for (host, entries) in by_host {
            stacks.insert(host.to_owned(), crate::history::stack(&entries));
        }
        // State recorded before histories were kept: the deployment and its way back.
        for d in &deployments {
            if !stacks.contains_key(&d.host) && !d.release_id.is_empty() {
                let stack = d.rollback_target.iter().filter(|t| !t.is_empty()).cloned().chain([d.release_id.clone()]);
                stacks.insert(d.host.clone(), stack.collect());
            }
        }
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        for d in &deployments {
            if !d.release_id.is_empty() {
                hashes.insert(d.release_id.clone(), d.content_hash.clone());
            }
        }
        let ids: std::collections::BTreeSet<&String> = stacks.values().flatten().collect();
        for id in ids {
            if !hashes.contains_key(id) {
                if let Some(a) = self.store.applied_release(e, s, id).await? {
                    hashes.insert(id.clone(), a.content_hash);
                }
            }
        }
        Ok(Recorded { stacks, hashes })
    }

    /// Plans a promotion of `reference` to `env`. Changes nothing anywhere.
    pub async fn plan_promotion(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
    ) -> Result<Plan, DeployError> {
        Ok(self.promotion(fleet, env_name, service_name, reference).await?.plan)
    }

    /// [`Deployer::plan_promotion`], keeping what the hosts reported for an apply now.
    pub async fn promotion(
        &self,
        fleet: &Fleet,
        env_name: &str,
        service_name: &str,
        reference: &str,
    ) -> Result<Derived, DeployError> {
        let env = self.environment(env_name)?;
        let service = self.service(service_name)?;
        let record = self.resolve_release(service, reference).await?;
        self.derive_promotion(fleet, env, service, &record, &self.made_now(), None).await
    }

    /// The promotion plan for `record`, derived from the manifests, the store and the hosts.
    pub(super) async fn derive_promotion(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        record: &ReleaseRecord,
        made: &Made,
        seen: Option<&Observed>,
    ) -> Result<Derived, DeployError> {
        let verified = self.verify_record(env, record).await?;
        self.gate(env, service, &record.facts.digest).await?;
        self.rehearsed(env, service, &record.facts.digest).await?;
        let egress = if env.egress.enforce { Some(pin_egress(service).await?) } else { None };
        let platform_digest = verified.platform_digest(&service.platform)?;
        let content = release::render(&ReleaseInput {
            service,
            environment: &env.name,
            image: &verified.image,
            source_commit: &record.facts.source_commit,
            signer_key_id: &verified.signature.key_id,
            provenance: verified.provenance().map(|p| p.layer.as_str()),
            sbom: verified.sbom().map(|p| p.layer.as_str()),
            egress: egress.as_ref(),
            platform_digest: platform_digest.as_ref(),
        })?;
        let recorded = self.recorded(env, service).await?;
        let observed = match seen {
            Some(o) => o.clone(),
            None => self.observe(fleet, env, service, &recorded.probe_targets(&env.hosts, None)).await?,
        };
        let planned = PlannedRelease {
            release_id: ReleaseId::new(&content.id).map_err(|e| PlanError::Invalid(e.to_string()))?,
            content_hash: ContentHash::new(&content.content_hash).map_err(|e| PlanError::Invalid(e.to_string()))?,
            facts: ReleaseFacts {
                repository: verified.image.repository.to_string(),
                digest: verified.image.digest.to_string(),
                source_commit: record.facts.source_commit.clone(),
                signer_key_id: verified.signature.key_id.clone(),
                provenance: content.json.provenance.clone(),
                sbom: content.json.sbom.clone(),
                signature: Some(verified.signature_summary()),
                contents: crate::contents::ContentScan::from_evidence(&record.evidence).map(|s| s.summary()),
                platform_digest: platform_digest.map(|d| d.to_string()),
            },
        };
        let plan = self
            .build_plan(
                fleet,
                &PlanInput {
                    kind: PlanKind::Promote,
                    environment: env,
                    service,
                    release: planned,
                    content: Some(&content),
                    observed: &observed,
                    known_hashes: &recorded.hashes,
                    recorded: &recorded.current(),
                    created_at: made.at,
                    author: &made.by,
                },
            )
            .await?;
        Ok(Derived { plan, observed })
    }

    /// [`plan::build`], except that a live release with no record on a host while another
    /// apply holds the lock is that apply's move in progress: the refusal names the holder.
    ///
    /// A broken way back whose release was changed by hand names what changed (the
    /// recorded release's directory listed and compared with its recorded files).
    pub(super) async fn build_plan(&self, fleet: &Fleet, input: &PlanInput<'_>) -> Result<Plan, DeployError> {
        match plan::build(input) {
            Err(PlanError::RollbackTargetBroken { host, reason }) => {
                let changes = match input.recorded.get(&host) {
                    Some(id) => self.changes_on(fleet, input.environment, input.service, &host, id).await,
                    None => Vec::new(),
                };
                Err(DeployError::WayBackBroken {
                    host,
                    service: input.service.name.to_string(),
                    environment: input.environment.name.to_string(),
                    reason,
                    changes,
                })
            }
            Err(e @ PlanError::Unadopted { .. }) => {
                let (env, service) = (input.environment.name.as_str(), input.service.name.as_str());
                match self.store.lock_holder(env, service).await? {
                    Some(holder) if !holder.expired(self.clock.now()) => {
                        let liveness = lock::holder(&holder, &self.machine, self.pid_exists);
                        Err(DeployError::Locked {
                            environment: env.to_owned(),
                            service: service.to_owned(),
                            holder: Box::new(holder),
                            liveness,
                        })
                    }
                    _ => Err(e.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// What changed in release `id`'s directory on `host` against its recorded files, as
    /// lines (empty when the files were not kept; a line saying why when it cannot be listed).
    pub(super) async fn changes_on(
        &self,
        fleet: &Fleet,
        env: &Environment,
        service: &Service,
        host: &str,
        id: &str,
    ) -> Vec<String> {
        let (e, s) = (env.name.as_str(), service.name.as_str());
        let files = match self.store.applied_release(e, s, id).await {
            Ok(Some(AppliedRelease { files: Some(f), .. })) => f,
            _ => return Vec::new(),
        };
        let (Ok(applied), Some(vm)) = (crate::repair::decode(&files), fleet.get(host)) else { return Vec::new() };
        match vm.list_release(service, id).await {
            Ok(listing) => crate::repair::describe(&crate::repair::changes(&applied, &listing)),
            Err(e) => vec![format!("what changed cannot be listed: {e}")],
        }
    }
}
