//! `agentctl status`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::status::render as render_status;
use crate::render::Report;
use crate::Globals;
use controlplane::ssh::SshClient;
use controlplane::status::{self, ProbeSettings, Row};
use controlplane::store::Store as _;
use std::io::IsTerminal as _;
use std::time::Duration;

pub struct Args<'a> {
    pub service: Option<&'a str>,
    pub env: Option<&'a str>,
    pub watch: Option<u64>,
    pub concurrency: Option<usize>,
    pub timeout: u64,
}

pub async fn run(g: &Globals, a: Args<'_>) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let envs: Vec<_> = ctx.set.environments.iter().filter(|e| a.env.is_none_or(|n| e.name.as_str() == n)).collect();
    if envs.is_empty() {
        return Err(Failure::new(
            Code::Invalid,
            anyhow::anyhow!("no environment `{}` in the manifests", a.env.unwrap_or_default()),
        ));
    }
    let services: Vec<_> =
        ctx.set.services.values().filter(|s| a.service.is_none_or(|n| s.name.as_str() == n)).collect();
    if services.is_empty() {
        return Err(Failure::new(
            Code::Invalid,
            anyhow::anyhow!("no service `{}` in the manifests", a.service.unwrap_or_default()),
        ));
    }
    let mut pairs = Vec::new();
    for e in &envs {
        for h in &e.hosts {
            for s in &services {
                pairs.push((*e, h, *s));
            }
        }
    }
    let ssh = SshClient::new(
        envs.iter().flat_map(|e| &e.hosts),
        &ctx.set.resolve(&ctx.set.ssh.identity),
        Duration::from_secs(ctx.set.ssh.connect_timeout_secs.min(a.timeout)),
    )?
    .with_key_exchange(ctx.set.ssh.key_exchange.as_deref())?;
    let settings = ProbeSettings {
        concurrency: a.concurrency.unwrap_or(ctx.set.ssh.concurrency),
        timeout: Duration::from_secs(a.timeout),
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = move |done: usize, total: usize| {
        if terminal {
            eprint!("\rprobing: {done}/{total}");
            if done == total {
                eprint!("\r\x1b[K");
            }
        }
    };
    let mut previous: Option<Vec<Row>> = None;
    loop {
        let recorded = match ctx.read_store().await? {
            Some(store) => store.all_deployments().await?,
            None => Vec::new(),
        };
        let mut rows = status::probe_all(&ssh, &pairs, &recorded, settings, &progress).await;
        let mut held = Vec::new();
        if let Some(store) = ctx.read_store().await? {
            status::explain_tampered(&ssh, &store, &pairs, &mut rows, settings.timeout).await;
            let names: Vec<(&str, &str)> =
                envs.iter().flat_map(|e| services.iter().map(move |s| (e.name.as_str(), s.name.as_str()))).collect();
            held = status::held_rollouts(&store, &names).await;
        }
        let Some(interval) = a.watch else { return finish(g, rows, held) };
        match &previous {
            None => println!("{}", render_status(&rows, &held)),
            Some(prev) => {
                for (old, new) in prev.iter().zip(&rows) {
                    if old.status != new.status {
                        println!(
                            "{}  {}/{}/{}: {} -> {}  {}",
                            chrono::Utc::now().format("%H:%M:%S"),
                            new.environment,
                            new.service,
                            new.host,
                            old.status.label(),
                            new.status.label(),
                            new.status.detail()
                        );
                    }
                }
            }
        }
        previous = Some(rows);
        tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
    }
}

fn finish(g: &Globals, rows: Vec<Row>, held: Vec<status::HeldRollout>) -> Result<Report, Failure> {
    let ok = rows.iter().all(|r| r.status.is_ok());
    let text = render_status(&rows, &held);
    let mut json = serde_json::json!({ "in_sync": ok, "hosts": rows });
    if !held.is_empty() {
        json["rollouts"] = serde_json::to_value(&held)?;
    }
    if ok {
        Ok(Report::new(text, json))
    } else {
        let bad = rows.iter().filter(|r| !r.status.is_ok()).count();
        let security =
            rows.iter().any(|r| matches!(r.status, controlplane::drift::Status::Unreachable { security: true, .. }));
        let out = if g.json { serde_json::to_string_pretty(&json)? } else { text };
        let mut f = Failure::new(Code::Drift, anyhow::anyhow!("{bad} host(s) not in sync")).with_output(out);
        if security {
            f = f.hint("a host presented an unexpected SSH host key: treat it as a security incident, do not re-pin it blindly");
        }
        Err(f)
    }
}
