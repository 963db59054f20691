//! A golden VM as the apply job sees it: probe, stage, and run one rollout step. The
//! job only ever talks to hosts through [`GoldenVm`], so the same apply runs over SSH
//! ([`SshVm`]) and against an in-memory host in unit tests.
//!
//! Everything a host sends back reaches the job as [`HostText`] (bounded, sanitized) or
//! as a strictly parsed [`Observation`].

use crate::held::HeldClient;
use crate::ids::ReleaseId;
use crate::manifest::{Host, Runtime, Service};
use crate::observe::{self, Answer, Observation, Stamp};
use crate::podman;
use crate::remote::RemoteCommand;
use crate::rollout::Step;
use crate::ssh::{Remote, SshClient, SshError};
use crate::steps;
use crate::untrusted::HostText;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// Output kept from a step; more is cut.
const STEP_OUTPUT_LIMIT: usize = 64 * 1024;
/// How long a step other than the health check may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than a remote deadline we wait for the host to report it.
const DEADLINE_GRACE: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("host `{host}` sent a probe answer that cannot be believed: {reason}")]
    Probe { host: String, reason: HostText },
    #[error("service `{service}` names no `{field}` command in its manifest")]
    NoCommand { service: String, field: &'static str },
    #[error("on host `{host}`: {detail}")]
    Command { host: String, detail: HostText },
}

/// How long one egress connection attempt may take on the host (the runtime's own limit
/// is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One golden VM, for one run.
#[async_trait]
pub trait GoldenVm: Send + Sync {
    fn name(&self) -> &str;
    /// Observes `service`; `targets` are releases whose directories are hashed too.
    async fn probe(&self, service: &Service, targets: &[&ReleaseId]) -> Result<Observation, VmError>;
    /// The watch's probe: everything and its stamp, or `same` while `seen` still holds.
    async fn probe_since(&self, service: &Service, seen: Option<&Stamp>) -> Result<Answer, VmError> {
        let _ = seen;
        Ok(Answer::Full { observation: self.probe(service, &[]).await?, stamp: None })
    }
    /// Stages release `id` from the tar stream `tar`; the host checks `content_hash`.
    async fn stage(&self, service: &Service, id: &str, content_hash: &str, tar: &[u8]) -> Result<(), HostText>;
    /// Runs one rollout step of plan `plan`; `Err` says why it failed.
    async fn step(&self, service: &Service, step: &Step, health_timeout: Duration, plan: &str) -> Result<(), HostText>;
    /// Tries a TCP connection to `addr:port` as `service`'s workload identity from its
    /// network: `Ok(true)` connected, `Ok(false)` refused, rejected or timed out.
    async fn connect(&self, service: &Service, addr: std::net::IpAddr, port: u16) -> Result<bool, VmError> {
        let _ = (addr, port);
        Err(VmError::NoCommand { service: service.name.to_string(), field: "egress_connect" })
    }
    /// The service's loaded egress ruleset as `nft -j` lists it (raw, bounded; empty when
    /// none is loaded).
    async fn egress_rules(&self, service: &Service) -> Result<Vec<u8>, VmError> {
        Err(VmError::NoCommand { service: service.name.to_string(), field: "egress_rules" })
    }
    /// The live release's `egress.json` and the rules loaded for the service, in one
    /// round trip (the egress probe).
    async fn egress_state(&self, service: &Service) -> Result<crate::observe::EgressObservation, VmError> {
        Err(VmError::NoCommand { service: service.name.to_string(), field: "egress_rules" })
    }
    /// Lists release `id`'s directory (what `repair` and a refusal compare with the
    /// recorded files).
    async fn list_release(&self, service: &Service, id: &str) -> Result<crate::repair::Listing, VmError> {
        let _ = id;
        Err(VmError::NoCommand { service: service.name.to_string(), field: "list_release" })
    }
    /// Ends the connection.
    async fn close(self: Box<Self>) {}
}

/// The hosts of one environment for one run, by name.
pub struct Fleet {
    vms: BTreeMap<String, Box<dyn GoldenVm>>,
}

impl Fleet {
    pub fn new(vms: impl IntoIterator<Item = Box<dyn GoldenVm>>) -> Self {
        Self { vms: vms.into_iter().map(|v| (v.name().to_owned(), v)).collect() }
    }

    /// Connects to every host over SSH (bounded concurrency); the first failure is returned.
    pub async fn connect(ssh: &SshClient, hosts: &[Host], concurrency: usize) -> Result<Self, SshError> {
        Self::connect_with(hosts, concurrency, |h| async move { Ok(SshVm::new(ssh.connect(h).await?)) }).await
    }

    /// Holds an in-process connection to every host (what the watch does).
    pub async fn hold(held: &HeldClient, hosts: &[Host], concurrency: usize) -> Result<Self, SshError> {
        Self::connect_with(hosts, concurrency, |h| async move { Ok(SshVm::new(held.hold(h).await?)) }).await
    }

    async fn connect_with<'h, F, Fut>(hosts: &'h [Host], concurrency: usize, open: F) -> Result<Self, SshError>
    where
        F: Fn(&'h Host) -> Fut,
        Fut: std::future::Future<Output = Result<SshVm, SshError>>,
    {
        use futures::StreamExt as _;
        let results: Vec<_> =
            futures::stream::iter(hosts.iter().map(open)).buffered(concurrency.max(1)).collect().await;
        let mut vms: Vec<Box<dyn GoldenVm>> = Vec::new();
        let mut failed = None;
        for r in results {
            match r {
                Ok(vm) => vms.push(Box::new(vm)),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            // Close what did connect: a control master left behind would outlive us.
            futures::future::join_all(vms.into_iter().map(|vm| vm.close())).await;
            return Err(e);
        }
        Ok(Self::new(vms))
    }

    pub fn get(&self, name: &str) -> Option<&dyn GoldenVm> {
        self.vms.get(name).map(|b| &**b)
    }

    /// Closes every connection (SSH masters exit now rather than at the guard's sweep).
    pub async fn close(self) {
        futures::future::join_all(self.vms.into_values().map(|vm| vm.close())).await;
    }
}

/// A golden VM over one SSH connection (OpenSSH's multiplexed session, or a held
/// in-process one).
pub struct SshVm {
    session: Box<dyn Remote>,
}

impl SshVm {
    /// A golden VM over an open session.
    pub fn new(session: impl Remote + 'static) -> Self {
        Self { session: Box::new(session) }
    }

    async fn run(
        &self,
        cmd: &RemoteCommand,
        stdin: Option<&[u8]>,
        timeout: Duration,
        what: &str,
    ) -> Result<(), HostText> {
        // The host ends the command at the deadline; we wait a little longer for its answer.
        let remote = cmd.with_deadline(timeout.as_secs());
        let started = std::time::Instant::now();
        let result = self.session.run(&remote, stdin, STEP_OUTPUT_LIMIT, timeout + DEADLINE_GRACE).await;
        tracing::info!(host = self.name(), step = what, ms = started.elapsed().as_millis() as u64, "remote step");
        match result {
            Ok(o) if o.success() => Ok(()),
            Ok(o) if o.status.is_some_and(|c| RemoteCommand::DEADLINE_STATUSES.contains(&c)) => {
                Err(HostText::new(&format!("{what} did not finish within {} s (ended on the host)", timeout.as_secs())))
            }
            Ok(o) => Err(HostText::new(&format!(
                "{what} exited with status {}: {}",
                o.status.map_or("(killed by a signal)".into(), |c| c.to_string()),
                o.stderr
            ))),
            Err(SshError::Timeout { .. }) => {
                Err(HostText::new(&format!("{what} did not finish within {} s", timeout.as_secs())))
            }
            Err(e) => Err(HostText::new(&format!("{what}: {e}"))),
        }
    }
}

#[async_trait]
impl GoldenVm for SshVm {
    fn name(&self) -> &str {
        self.session.host().name.as_str()
    }

    async fn probe(&self, service: &Service, targets: &[&ReleaseId]) -> Result<Observation, VmError> {
        let host = self.session.host();
        let cmd = observe::probe_command(host, service, targets).with_deadline(PROBE_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, observe::MAX_PROBE_OUTPUT, PROBE_TIMEOUT + DEADLINE_GRACE).await?;
        observe::parse(&out.stdout)
            .map_err(|reason| VmError::Probe { host: host.name.to_string(), reason: HostText::new(&reason) })
    }

    async fn probe_since(&self, service: &Service, seen: Option<&Stamp>) -> Result<Answer, VmError> {
        let host = self.session.host();
        let cmd = observe::watch_command(host, service, seen).with_deadline(PROBE_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, observe::MAX_PROBE_OUTPUT, PROBE_TIMEOUT + DEADLINE_GRACE).await?;
        observe::parse_answer(&out.stdout)
            .map_err(|reason| VmError::Probe { host: host.name.to_string(), reason: HostText::new(&reason) })
    }

    async fn stage(&self, service: &Service, id: &str, content_hash: &str, tar: &[u8]) -> Result<(), HostText> {
        let host = self.session.host();
        let cmd = steps::stage(host, service, id, content_hash);
        self.run(&cmd, Some(tar), STEP_TIMEOUT, "staging").await?;
        // The image comes before any host moves: a registry that refuses this host's
        // credentials (or an unknown digest) stops the rollout here.
        if let Some(p) = service.podman() {
            self.run(&podman::pull(host, service, p, id), None, STEP_TIMEOUT, "the image pull").await?;
        }
        Ok(())
    }

    async fn step(&self, service: &Service, step: &Step, health_timeout: Duration, plan: &str) -> Result<(), HostText> {
        let host = self.session.host();
        let (cmd, timeout) = match &service.runtime {
            Runtime::Command(c) => match step {
                Step::Swap(id) | Step::SwapBack(id) => (steps::swap(host, service, id), STEP_TIMEOUT),
                Step::Activate(id) | Step::Reactivate(id) => (steps::activate(host, service, c, id), STEP_TIMEOUT),
                Step::Health => (steps::health(service, c), health_timeout),
                Step::Unset => (steps::unset(host, service), STEP_TIMEOUT),
                other => return Err(HostText::new(&format!("the command runtime has no {} step", other.describe()))),
            },
            Runtime::Podman(p) => match step {
                Step::Start(id) => (podman::start(host, service, p, Some(id), plan), STEP_TIMEOUT),
                Step::Check(id) => (podman::check(host, service, p, id), health_timeout),
                Step::Swap(id) => (podman::swap(host, service, p, id), STEP_TIMEOUT),
                Step::Discard(id) => (podman::discard(host, service, p, id), STEP_TIMEOUT),
                Step::Restore => (podman::start(host, service, p, None, plan), STEP_TIMEOUT),
                other => return Err(HostText::new(&format!("the Podman runtime has no {} step", other.describe()))),
            },
        };
        // The service's own commands are worth naming; our fixed scripts are not.
        let what = match (step, &service.runtime) {
            (Step::Activate(_) | Step::Reactivate(_) | Step::Health, Runtime::Command(_)) => format!("`{cmd}`"),
            _ => step.describe().to_owned(),
        };
        self.run(&cmd, None, timeout, &what).await
    }

    async fn connect(&self, service: &Service, addr: std::net::IpAddr, port: u16) -> Result<bool, VmError> {
        let cmd = match &service.runtime {
            Runtime::Podman(_) => podman::connect(service, addr, port),
            Runtime::Command(c) => {
                let argv = c
                    .egress_connect
                    .as_ref()
                    .ok_or_else(|| VmError::NoCommand { service: service.name.to_string(), field: "egress_connect" })?;
                let mut args: Vec<String> = argv[1..].to_vec();
                args.extend([service.name.to_string(), addr.to_string(), port.to_string()]);
                RemoteCommand::new(argv[0].clone(), args)
            }
        }
        .with_deadline(CONNECT_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, 4096, CONNECT_TIMEOUT + DEADLINE_GRACE).await?;
        match out.status {
            Some(0) => Ok(true),
            Some(_) => Ok(false),
            None => Err(VmError::Command {
                host: self.name().to_owned(),
                detail: HostText::new("the connection attempt was killed by a signal"),
            }),
        }
    }

    async fn egress_rules(&self, service: &Service) -> Result<Vec<u8>, VmError> {
        let argv = match &service.runtime {
            Runtime::Podman(_) => podman::rules_argv(),
            Runtime::Command(c) => c
                .egress_list
                .clone()
                .ok_or_else(|| VmError::NoCommand { service: service.name.to_string(), field: "egress_rules" })?,
        };
        let mut args: Vec<String> = argv[1..].to_vec();
        args.push(service.name.to_string());
        let cmd = RemoteCommand::new(argv[0].clone(), args).with_deadline(PROBE_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, 256 * 1024, PROBE_TIMEOUT + DEADLINE_GRACE).await?;
        if !out.success() {
            return Err(VmError::Command {
                host: self.name().to_owned(),
                detail: HostText::new(&format!("`{cmd}` exited with status {:?}: {}", out.status, out.stderr)),
            });
        }
        Ok(out.stdout)
    }

    async fn egress_state(&self, service: &Service) -> Result<crate::observe::EgressObservation, VmError> {
        if !service.lists_egress_rules() {
            return Err(VmError::NoCommand { service: service.name.to_string(), field: "egress_rules" });
        }
        let host = self.session.host();
        let cmd = observe::egress_command(host, service).with_deadline(PROBE_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, observe::MAX_PROBE_OUTPUT, PROBE_TIMEOUT + DEADLINE_GRACE).await?;
        observe::parse_egress(&out.stdout)
            .map_err(|reason| VmError::Probe { host: host.name.to_string(), reason: HostText::new(&reason) })
    }

    async fn list_release(&self, service: &Service, id: &str) -> Result<crate::repair::Listing, VmError> {
        let host = self.session.host();
        let cmd = crate::repair::listing_command(host, service, id).with_deadline(PROBE_TIMEOUT.as_secs());
        let out = self.session.run(&cmd, None, crate::repair::MAX_LISTING, PROBE_TIMEOUT + DEADLINE_GRACE).await?;
        if !out.success() {
            return Err(VmError::Command {
                host: host.name.to_string(),
                detail: HostText::new(&out.stderr.to_string()),
            });
        }
        crate::repair::parse_listing(&out.stdout)
            .map_err(|reason| VmError::Probe { host: host.name.to_string(), reason: HostText::new(&reason) })
    }

    async fn close(self: Box<Self>) {
        self.session.close().await;
    }
}
