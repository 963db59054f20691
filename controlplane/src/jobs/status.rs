//! `status`: probe every host over a fresh SSH connection (a multiplexed connection
//! could outlive the host's sshd and fool a liveness check), one round trip per
//! (host, service) and at most one connection per host at a time (a host's services are
//! probed one after the other, so sshd's `MaxStartups` never drops one), hosts in
//! parallel up to the concurrency, a per-probe timeout, then classify.

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
    /// The recorded release's image and commit (`sha256:…` short, commit short), when one is recorded.
    pub recorded_release: Option<String>,
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
    // One queue per host (by address, port and user: the same machine may appear in
    // several environments), in the order the pairs name them.
    let mut queues: Vec<((String, u16, String), Vec<usize>)> = Vec::new();
    for (i, (_, host, _)) in pairs.iter().enumerate() {
        let key = (host.address.clone(), host.port, host.user.to_string());
        match queues.iter_mut().find(|(k, _)| *k == key) {
            Some((_, q)) => q.push(i),
            None => queues.push((key, vec![i])),
        }
    }
    let one_host = |queue: Vec<usize>| async move {
        let host = pairs[queue[0]].1;
        let cmds: Vec<_> = queue.iter().map(|&i| observe::probe_command(host, pairs[i].2, &[])).collect();
        let answers = run_fresh_many(ssh, host, &cmds, observe::MAX_PROBE_OUTPUT, settings.timeout).await;
        let mut out = Vec::with_capacity(queue.len());
        for (k, i) in queue.into_iter().enumerate() {
            let (env, host, service) = pairs[i];
            let rec = recorded.iter().find(|d| {
                d.environment == env.name.as_str() && d.service == service.name.as_str() && d.host == host.name.as_str()
            });
            let observed = match &answers {
                Err(e) => Err((e.to_string(), e.is_security())),
                Ok(a) => observe::parse(&a[k]).map_err(|reason| {
                    let e = SshError::Run {
                        host: host.name.to_string(),
                        detail: HostText::new(&format!("probe answer cannot be believed: {reason}")),
                    };
                    (e.to_string(), false)
                }),
            };
            let status = match observed {
                Ok(obs) => {
                    let mut status = drift::classify(service.name.as_str(), rec, &obs);
                    // Where the environment enforces egress, the loaded rules must mean what
                    // the live release's rules mean.
                    if env.egress.enforce && status == Status::InSync && service.lists_egress_rules() {
                        status = match probe_egress(ssh, host, service, settings.timeout).await {
                            Ok(out) => drift::classify_egress(service.name.as_str(), &out),
                            Err(e) => Status::Unreachable { reason: e.to_string(), security: false },
                        };
                    }
                    (status, obs.release_id().map(ToString::to_string))
                }
                Err((reason, security)) => (Status::Unreachable { reason, security }, None),
            };
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
            out.push((
                i,
                Row {
                    environment: env.name.to_string(),
                    service: service.name.to_string(),
                    host: host.name.to_string(),
                    recorded: rec.map(|r| r.release_id.clone()).filter(|r| !r.is_empty()),
                    recorded_release: rec.filter(|r| !r.release_id.is_empty()).map(|r| {
                        crate::release::ReleaseFacts {
                            digest: r.digest.clone(),
                            source_commit: r.source_commit.clone(),
                            ..Default::default()
                        }
                        .short()
                    }),
                    live: status.1,
                    status: status.0,
                },
            ));
        }
        out
    };
    let one_host = &one_host;
    let mut rows: Vec<(usize, Row)> = futures::stream::iter(queues.into_iter().map(|(_, q)| one_host(q)))
        .buffer_unordered(settings.concurrency.max(1))
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Runs `cmds` one after the other over one fresh connection to `host` (each under its own
/// deadline), and returns each one's output, at most `limit` bytes each. The outputs are
/// told apart by a marker holding a random nonce made for this run: content planted on the
/// host before the probe cannot pass for another command's output.
pub async fn run_fresh_many(
    ssh: &SshClient,
    host: &Host,
    cmds: &[crate::remote::RemoteCommand],
    limit: usize,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, SshError> {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let marker = |i: usize| format!("@@agentctl-probe {nonce} {i}@@\n");
    let mut line = String::new();
    for (i, c) in cmds.iter().enumerate() {
        // `</dev/null`: a probe never reads the rest of the script from stdin.
        line.push_str(&format!(
            "printf '%s' {}; {} </dev/null; ",
            crate::remote::quote(&marker(i)),
            c.with_deadline(timeout.as_secs()).shell_line()
        ));
    }
    // Each probe has its own deadline on the host; the host as a whole gets at most three,
    // so one that accepts and then stalls cannot hold `status` for a deadline per service.
    let n = u32::try_from(cmds.len()).unwrap_or(u32::MAX).clamp(1, 3);
    // The script goes on stdin: a hundred probes are more than one argument may hold.
    let whole = crate::remote::RemoteCommand { program: "sh".into(), args: vec!["-s".into()] };
    let (limit_all, time_all) = (limit.saturating_mul(cmds.len()), timeout.saturating_mul(n));
    let stdout = run_fresh_with(ssh, host, &whole, Some(line.as_bytes()), limit_all, time_all).await?;
    let mut out = Vec::with_capacity(cmds.len());
    let mut rest: &[u8] = &stdout;
    for i in 0..cmds.len() {
        let m = marker(i);
        let Some(at) = find(rest, m.as_bytes()) else {
            return Err(SshError::Run {
                host: host.name.to_string(),
                detail: HostText::new(&format!("the answer to probe {} of {} is missing", i + 1, cmds.len())),
            });
        };
        if i > 0 {
            out.push(rest[..at].to_vec());
        }
        rest = &rest[at + m.len()..];
    }
    out.push(rest.to_vec());
    if out.iter().any(|o| o.len() > limit) {
        return Err(SshError::OutputTooLarge { host: host.name.to_string(), limit });
    }
    Ok(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Names what changed on each `tampered` row's host: its recorded release directory is
/// listed (one more round trip, tampered rows only) and compared with the files recorded
/// when the release was applied; the paths are added to the row's reason, with the
/// command that repairs the host. A release whose files were not kept is left as it is.
pub async fn explain_tampered(
    ssh: &SshClient,
    store: &dyn crate::store::Store,
    pairs: &[(&Environment, &Host, &Service)],
    rows: &mut [Row],
    timeout: Duration,
) {
    for row in rows.iter_mut() {
        let (Status::Tampered { reason }, Some(id)) = (&mut row.status, &row.recorded) else { continue };
        let Some((env, host, service)) = pairs.iter().find(|(e, h, s)| {
            e.name.as_str() == row.environment && h.name.as_str() == row.host && s.name.as_str() == row.service
        }) else {
            continue;
        };
        let files = match store.applied_release(&row.environment, &row.service, id).await {
            Ok(Some(crate::store::AppliedRelease { files: Some(f), .. })) => f,
            _ => continue,
        };
        let Ok(applied) = crate::repair::decode(&files) else { continue };
        let cmd = crate::repair::listing_command(host, service, id);
        let named = match run_fresh(ssh, host, &cmd, crate::repair::MAX_LISTING, timeout).await {
            Ok(out) => match crate::repair::parse_listing(&out) {
                Ok(listing) => crate::repair::describe(&crate::repair::changes(&applied, &listing)).join("; "),
                Err(why) => format!("what changed cannot be listed: {why}"),
            },
            Err(e) => format!("what changed cannot be listed: {e}"),
        };
        if !named.is_empty() {
            reason.push_str(&format!(
                "; {named}; `agentctl repair {} --env {} --host {}` puts it back",
                service.name, env.name, host.name
            ));
        }
    }
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

/// Attempts at a connection that the host reset during key exchange (sshd's `MaxStartups`
/// drops connections beyond its limit that way; other clients may be connecting too).
const KEX_RESET_ATTEMPTS: u32 = 3;

/// Runs `cmd` over a fresh connection; a connection reset during key exchange is tried
/// again, up to [`KEX_RESET_ATTEMPTS`] in all, after a short pause.
async fn run_fresh(
    ssh: &SshClient,
    host: &Host,
    cmd: &crate::remote::RemoteCommand,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SshError> {
    run_fresh_with(ssh, host, cmd, None, limit, timeout).await
}

/// [`run_fresh`], with `stdin` given to the command.
async fn run_fresh_with(
    ssh: &SshClient,
    host: &Host,
    cmd: &crate::remote::RemoteCommand,
    stdin: Option<&[u8]>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SshError> {
    let mut attempt = 1;
    loop {
        match run_once(ssh, host, cmd, stdin, limit, timeout).await {
            Err(SshError::Connect { detail, .. }) if attempt < KEX_RESET_ATTEMPTS && reset_in_kex(detail.as_str()) => {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether OpenSSH's message says the connection was dropped before it was set up.
fn reset_in_kex(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("kex_exchange_identification")
        || (m.contains("connection reset by peer") && !m.contains("authenticated"))
}

async fn run_once(
    ssh: &SshClient,
    host: &Host,
    cmd: &crate::remote::RemoteCommand,
    stdin: Option<&[u8]>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SshError> {
    let cmd = cmd.with_deadline(timeout.as_secs());
    let mut child = tokio::process::Command::new("ssh")
        .args(ssh.ssh_args(host))
        .arg("--")
        .arg(cmd.shell_line())
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
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
    let input = child.stdin.take();
    let work = async {
        let feed = async {
            if let (Some(mut w), Some(bytes)) = (input, stdin) {
                use tokio::io::AsyncWriteExt as _;
                // A host that stops reading fails the command, not the write.
                let _ = w.write_all(bytes).await;
            }
        };
        let (stdout, stderr, ()) = tokio::join!(read_bounded(&mut out, limit), read_bounded(&mut err, 16 * 1024), feed);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What OpenSSH prints when sshd drops a connection before key exchange (its
    /// `MaxStartups` limit) is tried again; a refusal, a timeout or a key problem is not.
    #[test]
    fn only_a_reset_before_the_session_is_retried() {
        for retried in [
            "kex_exchange_identification: read: Connection reset by peer",
            "kex_exchange_identification: Connection closed by remote host",
            "Connection reset by peer",
        ] {
            assert!(reset_in_kex(retried), "{retried}");
        }
        for final_ in [
            "ssh: connect to host 127.0.0.1 port 22: Connection refused",
            "Host key verification failed.",
            "Permission denied (publickey).",
            "Connection timed out during banner exchange",
        ] {
            assert!(!reset_in_kex(final_), "{final_}");
        }
    }
}

/// A rollout that stands between two states: paused at its pause point, or halted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldRollout {
    pub environment: String,
    pub service: String,
    /// `paused` or `halted`.
    pub state: String,
    /// What it means and the next commands.
    pub detail: String,
}

/// The paused or halted last rollout of each (environment, service) of `pairs`, read
/// from the receipt chain. A store that cannot be read is named in the detail.
pub async fn held_rollouts(store: &dyn crate::store::Store, pairs: &[(&str, &str)]) -> Vec<HeldRollout> {
    let mut out = Vec::new();
    for (env, service) in pairs {
        let held = match crate::deploy::last_rollout(store, env, service).await {
            Ok(last) => last.and_then(|l| l.held()).map(|(state, detail)| (state.to_owned(), detail)),
            Err(e) => Some(("unknown".to_owned(), format!("the last rollout cannot be read: {e}"))),
        };
        if let Some((state, detail)) = held {
            out.push(HeldRollout { environment: (*env).to_owned(), service: (*service).to_owned(), state, detail });
        }
    }
    out
}
