//! `agentctl prove ENV`: whether an environment meets the controls a production promotion
//! must meet, re-derived now from the registry, the hosts, the store and the receipts —
//! it changes nothing but its own `readiness` receipt. One [`Control`] per check and
//! subject (a service that runs there, or the environment):
//!
//! - `signature`: what runs verifies against the trust policy now, with the provenance
//!   and SBOM the environment requires;
//! - `contents`: its layers hold no secret value (scanned again, with today's allowances);
//! - `egress`: the default-deny proof, run from every host as the workload;
//! - `rollback`: it was rehearsed (promoted, rolled back, promoted) here or before here;
//! - `secrets`: the files rendered for it hold no secret value (secrets go by name);
//! - `approvals`: a production environment (the end of the `after` chain) needs approvals
//!   from its approvers, the plan's author excluded;
//! - `host-keys`: every host presents the key its manifest pins;
//! - `receipts`: the receipt chain verifies, against the store's head;
//! - `workflows`: `check --ci` is clean for the workflows directory given.

use crate::egress_proof;
use crate::manifest::{Environment, ManifestSet, Service};
use crate::receipt::{self, HostOutcome, ReceiptBody, ReceiptKind, SignatureCheck, StoreHead};
use crate::receipt_log::ReceiptLog;
use crate::store::Store;
use crate::untrusted::HostText;
use crate::verify::{Requirements, Verifier};
use crate::vm::Fleet;
use serde::Serialize;
use std::path::Path;

/// How a control came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Holds,
    Fails,
    /// Nothing to check here (nothing runs, not a production environment, no workflows given).
    NotApplicable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::Fails => "FAILS",
            Self::NotApplicable => "n/a",
        }
    }
}

/// One control for one subject, with what shows it and what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Control {
    pub control: &'static str,
    /// A service, or `env ENV`.
    pub subject: String,
    pub outcome: Outcome,
    pub evidence: HostText,
    /// The command (or edit) that fixes a failing control.
    pub fix: Option<String>,
}

/// What the check reads.
pub struct Readiness<'a> {
    pub set: &'a ManifestSet,
    pub env: &'a Environment,
    pub store: &'a dyn Store,
    pub verifier: &'a Verifier<'a>,
    /// The environment's hosts, or why they could not all be reached.
    pub fleet: Result<&'a Fleet, String>,
    pub receipts: &'a ReceiptLog,
    /// The receipt keys the chain verifies with.
    pub receipt_keys: &'a dyn SignatureCheck,
    /// A repository or workflows directory for `check --ci`, when given.
    pub workflows: Option<&'a Path>,
}

impl Readiness<'_> {
    fn row(
        &self,
        control: &'static str,
        subject: &str,
        outcome: Outcome,
        evidence: &str,
        fix: Option<String>,
    ) -> Control {
        Control { control, subject: subject.to_owned(), outcome, evidence: HostText::new(evidence), fix }
    }

    /// Every control, services first (in manifest order), then the environment's.
    pub async fn check(&self) -> Vec<Control> {
        let mut rows = Vec::new();
        for service in self.set.services.values() {
            rows.extend(self.service(service).await);
        }
        let env = format!("env {}", self.env.name);
        rows.push(self.approvals(&env));
        rows.push(self.host_keys(&env));
        rows.push(self.receipt_chain(&env).await);
        rows.push(self.workflows(&env));
        rows
    }

    async fn service(&self, service: &Service) -> Vec<Control> {
        let name = service.name.as_str();
        let env = self.env.name.as_str();
        let na = |control| self.row(control, name, Outcome::NotApplicable, "nothing runs here", None);
        let records = match self.store.deployments(env, name).await {
            Ok(r) => r,
            Err(e) => return vec![self.row("signature", name, Outcome::Fails, &format!("the store: {e}"), None)],
        };
        let mut ids: Vec<&str> = records.iter().map(|r| r.release_id.as_str()).filter(|id| !id.is_empty()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return ["signature", "contents", "egress", "rollback", "secrets"].into_iter().map(na).collect();
        }
        // Hosts mid-rollout run different releases: each is checked, under its own subject.
        let mut rows = Vec::new();
        for id in &ids {
            let subject = if ids.len() > 1 { format!("{name} {id}") } else { name.to_owned() };
            rows.extend(self.release(service, id, &subject).await);
        }
        rows.push(self.egress(service).await);
        rows
    }

    /// The controls of one release of `service` that runs here.
    async fn release(&self, service: &Service, id: &str, subject: &str) -> Vec<Control> {
        let name = service.name.as_str();
        let env = self.env.name.as_str();
        let applied = match self.store.applied_release(env, name, id).await {
            Ok(Some(a)) => a,
            other => {
                let why = other.err().map(|e| e.to_string()).unwrap_or_else(|| format!("release {id} has no record"));
                return vec![self.row(
                    "signature",
                    subject,
                    Outcome::Fails,
                    &why,
                    Some(format!("agentctl status --env {env} {name}")),
                )];
            }
        };
        let facts = &applied.facts;
        let image = format!("{}@{}", facts.repository, facts.digest);
        let mut rows = Vec::new();

        // Signature, provenance and SBOM, now.
        let req = Requirements {
            provenance: self.env.require_provenance,
            sbom: self.env.require_sbom,
            commit: Some(facts.source_commit.clone()),
        };
        rows.push(match self.verifier.verify(&image, &req).await {
            Ok(v) => {
                let mut evidence = format!("{id} {image}: {}", v.signature_summary());
                if let Some(p) = v.provenance() {
                    evidence.push_str(&format!("; provenance {}", p.layer));
                }
                if let Some(s) = v.sbom() {
                    evidence.push_str(&format!("; SBOM {}", s.layer));
                }
                self.row("signature", subject, Outcome::Holds, &evidence, None)
            }
            Err(e) => {
                let fix = e.hint().unwrap_or_else(|| format!("agentctl verify {image}"));
                self.row("signature", subject, Outcome::Fails, &format!("{id}: {e}"), Some(fix))
            }
        });

        // Layers, scanned again with today's allowances.
        let runs = facts.platform_digest.as_deref().unwrap_or(&facts.digest);
        let pinned = crate::image::Repository::new(&facts.repository).and_then(|repository| {
            Ok(crate::image::PinnedImage { repository, digest: crate::image::Digest::new(&facts.digest)? })
        });
        let scanned = match (pinned, crate::image::Digest::new(runs)) {
            (Ok(p), Ok(d)) => crate::content_scan::scan_image(self.verifier.registry, &p, &d, &service.contents_allow)
                .await
                .map_err(|e| e.to_string()),
            _ => Err(format!("`{image}` is not a pinned image")),
        };
        rows.push(match scanned {
            Ok(s) if s.clean() => self.row("contents", subject, Outcome::Holds, &s.summary(), None),
            Ok(s) => {
                let found: Vec<String> = s.findings.iter().map(|f| format!("`{}` in layer {} ({})", f.path, f.layer, f.kind)).collect();
                self.row(
                    "contents",
                    subject,
                    Outcome::Fails,
                    &format!("{}: {}", s.summary(), found.join("; ")),
                    Some(format!("rebuild without the value and promote it (`agentctl promote {name} --env {env} --release REF`), or allow the path with a reason under `[[contents.allow]]`")),
                )
            }
            Err(e) => self.row("contents", subject, Outcome::Fails, &e, Some("check that the registry is reachable, then run `agentctl prove` again".into())),
        });

        // The way back, rehearsed here or before here.
        let earlier: Vec<String> = std::iter::once(env.to_owned()).chain(self.set.earlier(self.env)).collect();
        rows.push(match self.store.rehearsals(name, &facts.digest).await {
            Ok(done) => match done.iter().find(|(e, _)| earlier.contains(e)) {
                Some((e, receipt)) => self.row(
                    "rollback",
                    subject,
                    Outcome::Holds,
                    &format!("rehearsed in `{e}` (receipt {receipt})"),
                    None,
                ),
                None => self.row(
                    "rollback",
                    subject,
                    Outcome::Fails,
                    &format!("{} has no rollback rehearsal in {}", facts.short(), earlier.join(", ")),
                    Some(format!(
                        "agentctl rehearse {name} --env {} --release {} --apply",
                        earlier.last().map_or(env, String::as_str),
                        facts.digest
                    )),
                ),
            },
            Err(e) => self.row("rollback", subject, Outcome::Fails, &format!("the store: {e}"), None),
        });

        // Secrets by name: nothing rendered for what runs holds a value.
        rows.push(match &applied.files {
            None => self.row("secrets", subject, Outcome::NotApplicable, "the rendered files of this release were not recorded (applied before they were kept)", None),
            Some(files) => {
                use base64::Engine as _;
                let found: Vec<String> = files
                    .iter()
                    .filter_map(|(path, b64)| match base64::engine::general_purpose::STANDARD.decode(b64) {
                        Err(_) => Some(format!("the recorded `{path}` cannot be decoded, so it cannot be checked")),
                        Ok(bytes) => crate::secrets::find_secret(&String::from_utf8_lossy(&bytes))
                            .map(|kind| format!("`{path}` holds {}", kind.describe())),
                    })
                    .collect();
                let names: Vec<&str> = service.secrets.iter().map(|s| s.as_str()).collect();
                if found.is_empty() {
                    let by_name = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
                    self.row("secrets", subject, Outcome::Holds, &format!("{} rendered file(s) without secret values; secrets by name: {by_name}", files.len()), None)
                } else {
                    self.row("secrets", subject, Outcome::Fails, &found.join("; "), Some(format!("move the value into the hosts' secret store, name it under `secrets` in services/{name}.toml, and promote again")))
                }
            }
        });
        rows
    }

    async fn egress(&self, service: &Service) -> Control {
        let name = service.name.as_str();
        let env = self.env.name.as_str();
        if !service.connects_as_workload() {
            return self.row(
                "egress",
                name,
                Outcome::Fails,
                "cannot be proven: the service's runtime names no `egress_connect` command",
                Some(format!("add `egress_connect` to services/{name}.toml (the Podman runtime always can), then `agentctl prove egress {name} --env {env}`")),
            );
        }
        let fleet = match &self.fleet {
            Ok(f) => *f,
            Err(e) => {
                return self.row(
                    "egress",
                    name,
                    Outcome::Fails,
                    &format!("not proven: {e}"),
                    Some(format!("agentctl status --env {env}")),
                )
            }
        };
        let expectations = match egress_proof::expectations(self.env, service).await {
            Ok(x) => x,
            Err(e) => return self.row("egress", name, Outcome::Fails, &e.to_string(), None),
        };
        let proofs = egress_proof::prove(fleet, self.env, service, &expectations).await;
        let failed: Vec<String> =
            proofs.iter().filter(|p| !p.held()).map(|p| format!("{}: {}", p.host, p.failures().join("; "))).collect();
        if failed.is_empty() {
            let tried: usize = proofs.iter().map(|p| p.tried.len()).sum();
            self.row(
                "egress",
                name,
                Outcome::Holds,
                &format!("{tried} expectation(s) held on {} host(s), the loaded rules the release's", proofs.len()),
                None,
            )
        } else {
            self.row(
                "egress",
                name,
                Outcome::Fails,
                &failed.join(" | "),
                Some(format!("`agentctl status --env {env}` shows whether the loaded rules match the release's; roll back and promote it to load them again")),
            )
        }
    }

    /// A production environment: the end of the `after` chain — no environment comes after
    /// it (a single environment is its own production).
    fn production(&self) -> bool {
        !self.set.environments.iter().any(|e| e.after.as_ref() == Some(&self.env.name))
    }

    fn approvals(&self, subject: &str) -> Control {
        let env = self.env.name.as_str();
        if !self.production() {
            return self.row(
                "approvals",
                subject,
                Outcome::NotApplicable,
                "not a production environment (another environment comes after it)",
                None,
            );
        }
        let e = self.env;
        let mut missing = Vec::new();
        if e.approvals == 0 {
            missing.push("no approval is required".to_owned());
        }
        if e.approvers.is_empty() {
            missing.push("no approvers are listed".to_owned());
        }
        if e.author_may_approve {
            missing.push("the plan's author may approve their own plan".to_owned());
        }
        if missing.is_empty() {
            self.row(
                "approvals",
                subject,
                Outcome::Holds,
                &format!("{} approval(s) from {} approver(s), never the plan's author", e.approvals, e.approvers.len()),
                None,
            )
        } else {
            self.row(
                "approvals",
                subject,
                Outcome::Fails,
                &missing.join("; "),
                Some(format!("in environments/{env}.toml: `approvals = 1`, `approvers = \"trust/{env}.allowed_signers\"`, no `author_may_approve`")),
            )
        }
    }

    fn host_keys(&self, subject: &str) -> Control {
        let env = self.env.name.as_str();
        match &self.fleet {
            Ok(_) => self.row("host-keys", subject, Outcome::Holds, &format!("{} host(s), each presenting the key its manifest pins", self.env.hosts.len()), None),
            Err(e) => self.row(
                "host-keys",
                subject,
                Outcome::Fails,
                e,
                Some(format!("`agentctl status --env {env}` names the host; a re-imaged host's new key is pinned by hand (docs/OPERATIONS.md, \"Replacing a host\")")),
            ),
        }
    }

    async fn receipt_chain(&self, subject: &str) -> Control {
        let fix = Some("`agentctl receipts verify` names each bad receipt; keep the directory as evidence".to_owned());
        let (files, orphans) = match self.receipts.read() {
            Ok(x) => x,
            Err(e) => return self.row("receipts", subject, Outcome::Fails, &e.to_string(), fix),
        };
        let head = match self.store.receipt_head().await {
            Ok(h) => Some(h.map_or(StoreHead { seq: 0, sha256: String::new() }, |e| StoreHead {
                seq: e.seq as u64,
                sha256: e.sha256,
            })),
            Err(e) => return self.row("receipts", subject, Outcome::Fails, &format!("the store: {e}"), fix),
        };
        let report = receipt::verify_chain(&files, &orphans, self.receipt_keys, head.as_ref());
        if report.ok() {
            self.row(
                "receipts",
                subject,
                Outcome::Holds,
                &format!("{} receipt(s) verify; head {}", report.receipts, report.head.as_deref().unwrap_or("none")),
                None,
            )
        } else {
            let bad: Vec<String> = report.problems.iter().map(|p| format!("{}: {}", p.receipt, p.problem)).collect();
            self.row("receipts", subject, Outcome::Fails, &bad.join("; "), fix)
        }
    }

    fn workflows(&self, subject: &str) -> Control {
        let Some(dir) = self.workflows else {
            return self.row(
                "workflows",
                subject,
                Outcome::NotApplicable,
                "no workflows given (`--workflows DIR`)",
                None,
            );
        };
        let fix = Some(format!("agentctl check --ci {}", dir.display()));
        let files = match crate::workflow_files::read(dir) {
            Ok((_, files)) => files,
            Err(e) => return self.row("workflows", subject, Outcome::Fails, &e.to_string(), fix),
        };
        let mut found = Vec::new();
        for f in &files {
            let text = &f.text;
            for finding in crate::workflow::check(text) {
                let file = f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                found.push(format!("{file}:{}:{}: {}", finding.line, finding.column, finding.rule));
            }
        }
        if found.is_empty() {
            self.row("workflows", subject, Outcome::Holds, &format!("{} workflow(s) clean", files.len()), None)
        } else {
            let shown: Vec<&str> = found.iter().take(10).map(String::as_str).collect();
            self.row(
                "workflows",
                subject,
                Outcome::Fails,
                &format!("{} finding(s): {}", found.len(), shown.join("; ")),
                fix,
            )
        }
    }
}

/// Whether every control holds (those that do not apply aside).
pub fn ready(controls: &[Control]) -> bool {
    controls.iter().all(|c| c.outcome != Outcome::Fails)
}

/// The signed record of a readiness check: outcome `ready` or `not-ready`, one line per
/// control in `detail` (control, subject, result, evidence).
pub fn receipt_body(env: &Environment, operator: &str, time: String, controls: &[Control]) -> ReceiptBody {
    let detail: Vec<String> = controls
        .iter()
        .map(|c| format!("{} {}: {} ({})", c.control, c.subject, c.outcome.as_str(), c.evidence))
        .collect();
    ReceiptBody {
        rollout: None,
        kind: ReceiptKind::Readiness,
        time,
        operator: operator.to_owned(),
        plan_id: None,
        environment: Some(env.name.to_string()),
        service: None,
        release: None,
        hosts: Vec::<HostOutcome>::new(),
        approvals: vec![],
        outcome: if ready(controls) { "ready" } else { "not-ready" }.into(),
        detail: Some(detail.join("\n")),
    }
}
