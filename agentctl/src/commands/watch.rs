//! `agentctl watch`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::deploy::SystemClock;
use controlplane::held::HeldClient;
use controlplane::jobs::watch::{Connections, Events, WatchSettings, Watcher};
use controlplane::metrics::Metrics;
use controlplane::ssh::SshClient;
use controlplane::store::SqlStore;
use controlplane::watch::{sign_webhook, Event};
use std::io::Write as _;
use std::time::Duration;

pub struct Args {
    pub env: Option<String>,
    pub interval: Duration,
    pub fresh_interval: Duration,
    pub full_interval: Duration,
    pub metrics: std::net::SocketAddr,
    pub webhook: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub drift_receipts: bool,
}

/// Events as JSON lines on stdout, to the webhook and to the receipt chain (in the
/// background, in order).
struct Sink {
    webhook: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    receipts: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
}

impl Events for Sink {
    /// A host's change of state: printed and sent like a rollout's, and recorded as drift
    /// (a drift receipt) unless it is back in sync.
    fn emit(&self, event: &Event) {
        self.rollout(event);
        if let Some(tx) = self.receipts.as_ref().filter(|_| event.to != "in-sync") {
            let _ = tx.send(event.clone());
        }
    }

    /// A rollout's state: on stdout and to the webhook; its receipts are the rollout's own.
    fn rollout(&self, event: &Event) {
        let Ok(line) = serde_json::to_vec(event) else { return };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        if let Some(tx) = &self.webhook {
            let _ = tx.send(line);
        }
    }
}

/// Writes a signed `drift` receipt for each event it is sent (when drift was first seen).
fn drift_receipts(ctx: &Context) -> Result<tokio::sync::mpsc::UnboundedSender<Event>, Failure> {
    let key = super::context::receipt_key(ctx)?;
    let log = super::context::receipts(ctx);
    let operator = ctx.operator();
    let state = ctx.location()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let store = match SqlStore::open(&state).await {
            Ok(s) => s,
            Err(e) => return tracing::warn!("drift receipts: cannot open the state store: {e}"),
        };
        while let Some(e) = rx.recv().await {
            let body = e.receipt(&operator);
            if let Err(err) = log.append(body, &key, &store).await {
                tracing::warn!("drift receipt not written: {err}");
            }
        }
    });
    Ok(tx)
}

/// Delivers event bodies to `url`, each signed over its timestamp and body.
fn webhook_sender(url: String, secret: Vec<u8>) -> tokio::sync::mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        while let Some(body) = rx.recv().await {
            let ts = chrono::Utc::now().timestamp();
            let sig = sign_webhook(&secret, ts, &body);
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-agentctl-timestamp", ts.to_string())
                .header("x-agentctl-signature", sig)
                .body(body)
                .send()
                .await;
            if let Err(e) = sent {
                tracing::warn!("webhook delivery failed: {e}");
            }
        }
    });
    tx
}

pub async fn run(g: &Globals, a: Args) -> Result<Report, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let secret = match &a.webhook_secret_env {
        Some(name) => Some(std::env::var(name).map_err(|_| {
            Failure::new(Code::Invalid, anyhow::anyhow!("the webhook secret variable `{name}` is not set"))
                .hint("export the secret under that name; its value never goes into the manifests")
        })?),
        None => None,
    };
    let metrics = Metrics::new().map_err(|e| Failure::new(Code::Failed, e))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let bound = controlplane::metrics::serve(a.metrics, metrics.clone(), async {
        let _ = server_stopped.await;
    })
    .await
    .map_err(|e| {
        Failure::new(Code::Failed, anyhow::Error::new(e).context(format!("cannot listen on `{}`", a.metrics)))
            .hint("choose another `--metrics` address")
    })?;
    eprintln!("metrics on http://{bound}/metrics");
    let receipts = if a.drift_receipts { Some(drift_receipts(&Context::load(g)?)?) } else { None };
    let sink =
        Sink { webhook: a.webhook.clone().zip(secret).map(|(url, s)| webhook_sender(url, s.into_bytes())), receipts };
    let (mut term, mut int, mut hup) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    loop {
        let ctx = Context::load(g)?;
        let envs: Vec<_> =
            ctx.set.environments.iter().filter(|e| a.env.as_deref().is_none_or(|n| e.name.as_str() == n)).collect();
        if envs.is_empty() {
            return Err(Failure::new(Code::Invalid, anyhow::anyhow!("no environment `{}`", a.env.unwrap_or_default())));
        }
        let store = match ctx.read_store().await? {
            Some(s) => s,
            None => SqlStore::in_memory().await?,
        };
        let identity = ctx.set.resolve(&ctx.set.ssh.identity);
        let timeout = Duration::from_secs(ctx.set.ssh.connect_timeout_secs);
        let kex = ctx.set.ssh.key_exchange.as_deref();
        let ssh = Connections {
            fresh: SshClient::new(envs.iter().flat_map(|e| &e.hosts), &identity, timeout)?.with_key_exchange(kex)?,
            held: HeldClient::new(&identity, kex, timeout)?,
        };
        let settings = WatchSettings {
            interval: a.interval,
            fresh_interval: a.fresh_interval,
            full_interval: a.full_interval,
            concurrency: ctx.set.ssh.concurrency,
            probe_timeout: Duration::from_secs(ctx.set.ssh.connect_timeout_secs.max(5)),
        };
        let services = ctx.set.services.values().collect();
        let watcher = Watcher::new(&store, &ssh, settings, &sink, &metrics, &SystemClock, services);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let run = watcher.run(&envs, stopped);
        tokio::pin!(run);
        let (reload, finished) = tokio::select! {
            _ = &mut run => (false, true),
            _ = term.recv() => (false, false),
            _ = int.recv() => (false, false),
            _ = hup.recv() => (true, false),
        };
        let _ = stop.send(true);
        if !finished {
            run.await;
        }
        if !reload {
            break;
        }
        eprintln!("SIGHUP: reloading the manifests");
    }
    let _ = stop_server.send(());
    // stdout carries only the events' JSON lines: how the watch ended goes to stderr.
    eprintln!("watch stopped");
    Ok(Report::streamed())
}
