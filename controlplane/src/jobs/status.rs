//! `status`: probe every host over a fresh SSH connection (a multiplexed connection
//! could outlive the host's sshd and fool a liveness check), one round trip per
//! (host, service), bounded concurrency and a per-host timeout, then classify.

use crate::drift::{self, Status};
use crate::manifest::{Environment, Host, Service};
use crate::observe;
use crate::ssh::{read_bounded, SshClient, SshError};
use crate::store::DeploymentRecord;
use crate::untrusted::HostText;
use futures::StreamExt as _;
use serde::Serialize;
use std::time::Duration;

/// One (host, service) and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub environment: String,
    pub service: String,
    pub host: String,
    pub recorded: Option<String>,
    pub live: Option<String>,
    #[serde(flatten)]
    pub status: Status,
}

/// How to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub concurrency: usize,
    pub timeout: Duration,
}

/// Probes `pairs` and classifies each against `recorded`. `progress` is called after
/// each probe with (done, total).
pub async fn probe_all(
    ssh: &SshClient,
    pairs: &[(&Environment, &Host, &Service)],
    recorded: &[DeploymentRecord],
    settings: ProbeSettings,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Row> {
    let total = pairs.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let done = &done;
    futures::stream::iter(pairs.iter().map(|(env, host, service)| async move {
        let rec = recorded.iter().find(|d| {
            d.environment == env.name.as_str() && d.service == service.name.as_str() && d.host == host.name.as_str()
        });
        let status = match probe_one(ssh, host, service, settings.timeout).await {
            Ok(obs) => {
                let mut status = drift::classify(service.name.as_str(), rec, &obs);
                // Where the environment enforces egress, the loaded rules must mean what the
                // live release's rules mean.
                if env.egress.enforce && status == Status::InSync && service.lists_egress_rules() {
                    status = match probe_egress(ssh, host, service, settings.timeout).await {
                        Ok(out) => drift::classify_egress(service.name.as_str(), &out),
                        Err(e) => Status::Unreachable { reason: e.to_string(), security: false },
                    };
                }
                (status, obs.release_id().map(ToString::to_string))
            }
            Err(e) => {
                let security = matches!(e, SshError::HostKeyMismatch { .. });
                (Status::Unreachable { reason: e.to_string(), security }, None)
            }
        };
        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
        Row {
            environment: env.name.to_string(),
            service: service.name.to_string(),
            host: host.name.to_string(),
            recorded: rec.map(|r| r.release_id.clone()).filter(|r| !r.is_empty()),
            live: status.1,
            status: status.0,
        }
    }))
    .buffered(settings.concurrency.max(1))
    .collect()
    .await
}

/// One `ssh` process, one round trip.
pub async fn probe_one(
    ssh: &SshClient,
    host: &Host,
    service: &Service,
    timeout: Duration,
) -> Result<observe::Observation, SshError> {
    let cmd = observe::probe_command(host, service, &[]);
    let stdout = run_fresh(ssh, host, &cmd, observe::MAX_PROBE_OUTPUT, timeout).await?;
    observe::parse(&stdout).map_err(|reason| SshError::Run {
        host: host.name.to_string(),
        detail: HostText::new(&format!("probe answer cannot be believed: {reason}")),
    })
}

/// The live release's `egress.json` and the loaded rules, over a fresh connection.
pub async fn probe_egress(
    ssh: &SshClient,
    host: &Host,
    service: &Service,
    timeout: Duration,
) -> Result<observe::EgressObservation, SshError> {
    let cmd = observe::egress_command(host, service);
    let stdout = run_fresh(ssh, host, &cmd, observe::MAX_PROBE_OUTPUT, timeout).await?;
    observe::parse_egress(&stdout).map_err(|reason| SshError::Run {
        host: host.name.to_string(),
        detail: HostText::new(&format!("egress answer cannot be believed: {reason}")),
    })
}

async fn run_fresh(
    ssh: &SshClient,
    host: &Host,
    cmd: &crate::remote::RemoteCommand,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SshError> {
    let cmd = cmd.with_deadline(timeout.as_secs());
    let mut child = tokio::process::Command::new("ssh")
        .args(ssh.ssh_args(host))
        .arg("--")
        .arg(cmd.shell_line())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SshError::Connect {
            host: host.name.to_string(),
            detail: HostText::new(&format!("cannot run ssh: {e}")),
        })?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let work = async {
        let (stdout, stderr) = tokio::join!(read_bounded(&mut out, limit), read_bounded(&mut err, 16 * 1024));
        let status = child.wait().await;
        (stdout, stderr, status)
    };
    let (stdout, stderr, status) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SshError::Timeout { host: host.name.to_string(), secs: timeout.as_secs() })?;
    let run = |detail: String| SshError::Run { host: host.name.to_string(), detail: HostText::new(&detail) };
    let stderr = String::from_utf8_lossy(&stderr.map_err(|e| run(e.to_string()))?.unwrap_or_default()).into_owned();
    let status = status.map_err(|e| run(e.to_string()))?;
    if status.code() == Some(255) {
        return Err(SshError::from_ssh_message(host, &stderr, timeout.as_secs()));
    }
    stdout.map_err(|e| run(e.to_string()))?.ok_or(SshError::OutputTooLarge { host: host.name.to_string(), limit })
}
