//! `watch`: the continuous drift watch. One held SSH connection per host, probed every
//! interval (with jitter); a fresh connection at a lower rate, because a held connection
//! can outlive a host's sshd; reconnects with backoff; every change of state an event and
//! a metric. Decisions are the core's (`controlplane_core::watch`, `drift::classify`).

use crate::deploy::Clock;
use crate::drift::{self, Status};
use crate::held::HeldClient;
use crate::manifest::{Environment, Host, Service};
use crate::metrics::Metrics;
use crate::observe::{Answer, Observation, Stamp};
use crate::ssh::SshClient;
use crate::status::probe_one;
use crate::store::Store;
use crate::vm::{GoldenVm, SshVm};
use crate::watch::{backoff, jittered, Event, Target, Tracker};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch::Receiver;

/// How the watch runs.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Between probes over the held connection.
    pub interval: Duration,
    /// Between fresh connections to each host.
    pub fresh_interval: Duration,
    /// Every release is hashed in full at least this often; between, a probe whose
    /// stamp still holds skips hashing (see [`crate::observe::Stamp`]).
    pub full_interval: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    pub probe_timeout: Duration,
}

/// The watch's two ways to a host: held in-process connections for the probes, and
/// OpenSSH for the fresh connection that proves the host's sshd still accepts one.
#[derive(Debug)]
pub struct Connections {
    pub fresh: SshClient,
    pub held: HeldClient,
}

/// Where events go.
pub trait Events: Send + Sync {
    fn emit(&self, event: &Event);
    /// A rollout changed state (`rollout-paused`, `rollout-halted`, `rollout-done`; host
    /// `*`): shown like a host's event, but not drift.
    fn rollout(&self, event: &Event) {
        let _ = event;
    }
}

/// One watch over some environments.
pub struct Watcher<'a> {
    pub store: &'a dyn Store,
    pub ssh: &'a Connections,
    pub settings: WatchSettings,
    pub events: &'a dyn Events,
    pub metrics: &'a Metrics,
    pub clock: &'a dyn Clock,
    pub services: Vec<&'a Service>,
    tracker: Mutex<Tracker>,
    connecting: tokio::sync::Semaphore,
}

impl<'a> Watcher<'a> {
    pub fn new(
        store: &'a dyn Store,
        ssh: &'a Connections,
        settings: WatchSettings,
        events: &'a dyn Events,
        metrics: &'a Metrics,
        clock: &'a dyn Clock,
        services: Vec<&'a Service>,
    ) -> Self {
        let connecting = tokio::sync::Semaphore::new(settings.concurrency.max(1));
        Self { store, ssh, settings, events, metrics, clock, services, tracker: Mutex::default(), connecting }
    }

    /// Watches every host of `envs` until `stop` turns true; closes every connection.
    pub async fn run(&self, envs: &[&Environment], stop: Receiver<bool>) {
        let hosts = envs.iter().flat_map(|e| e.hosts.iter().map(move |h| (*e, h)));
        let loops = hosts.enumerate().map(|(i, (e, h))| self.host_loop(e, h, i as u64, stop.clone()));
        futures::future::join(futures::future::join_all(loops), self.rollout_loop(envs, stop.clone())).await;
    }

    /// Reads each (environment, service)'s last rollout every interval; a rollout that
    /// pauses, halts, or leaves either state is an event.
    async fn rollout_loop(&self, envs: &[&Environment], mut stop: Receiver<bool>) {
        let mut last: std::collections::HashMap<(String, String), &'static str> = Default::default();
        loop {
            for e in envs {
                for s in &self.services {
                    let Ok(rollout) = crate::deploy::last_rollout(self.store, e.name.as_str(), s.name.as_str()).await
                    else {
                        continue;
                    };
                    let held = rollout.as_ref().and_then(|r| r.held());
                    let state = match &held {
                        Some(("paused", _)) => "rollout-paused",
                        Some(_) => "rollout-halted",
                        None => "rollout-done",
                    };
                    let key = (e.name.to_string(), s.name.to_string());
                    let before = last.insert(key, state);
                    if before == Some(state) || (before.is_none() && held.is_none()) {
                        continue;
                    }
                    let detail = match (held, rollout) {
                        (Some((_, d)), _) => d,
                        (None, Some(r)) => {
                            format!("the last rollout ended `{}` (receipt {})", r.body.outcome, r.receipt)
                        }
                        (None, None) => String::new(),
                    };
                    let target =
                        Target { environment: e.name.to_string(), service: s.name.to_string(), host: "*".into() };
                    let from = before.unwrap_or("unknown").to_owned();
                    self.events.rollout(&Event { time: self.now(), target, from, to: state.to_owned(), detail });
                }
            }
            if !Self::pause(self.settings.interval.max(Duration::from_secs(1)), &mut stop).await {
                return;
            }
        }
    }

    fn now(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn target(&self, env: &Environment, host: &Host, service: &Service) -> Target {
        Target { environment: env.name.to_string(), service: service.name.to_string(), host: host.name.to_string() }
    }

    fn record(&self, target: &Target, status: Status, stop: &Receiver<bool>) {
        if *stop.borrow() {
            // What fails while shutting down is the shutdown, not the host.
            return;
        }
        self.metrics.state(target, status.label());
        let event = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).update(target, status, &self.now());
        if let Some(e) = event {
            self.events.emit(&e);
        }
    }

    fn all_unreachable(&self, env: &Environment, host: &Host, reason: &str, security: bool, stop: &Receiver<bool>) {
        self.metrics.connection(env.name.as_str(), host.name.as_str(), false);
        for s in &self.services {
            let status = Status::Unreachable { reason: reason.to_owned(), security };
            self.record(&self.target(env, host, s), status, stop);
        }
    }

    /// Sleeps `d`, or less if `stop` turns true; whether to go on.
    async fn pause(d: Duration, stop: &mut Receiver<bool>) -> bool {
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !*stop.borrow(),
            _ = stop.changed() => false,
        }
    }

    async fn host_loop(&self, env: &Environment, host: &Host, index: u64, mut stop: Receiver<bool>) {
        let mut vm: Option<SshVm> = None;
        let mut attempt = 0u32;
        let mut round = 0u64;
        let mut next_fresh = Instant::now() + self.settings.fresh_interval;
        let mut next_full = Instant::now() + self.settings.full_interval;
        // Per service: the last stamp and what was observed under it.
        let mut seen: std::collections::HashMap<String, (Stamp, Observation)> = Default::default();
        let interval_ms = self.settings.interval.as_millis() as u64;
        loop {
            if vm.is_none() {
                let connected = {
                    let _permit = self.connecting.acquire().await;
                    // RSA pins are checked by OpenSSH (a multiplexed session), which the
                    // in-process client cannot do in this build; every other by the held one.
                    if host.host_key.algorithm == "ssh-rsa" {
                        self.ssh.fresh.connect(host).await.map(SshVm::new)
                    } else {
                        self.ssh.held.hold(host).await.map(SshVm::new)
                    }
                };
                match connected {
                    Ok(session) => {
                        vm = Some(session);
                        attempt = 0;
                        self.metrics.connection(env.name.as_str(), host.name.as_str(), true);
                    }
                    Err(e) => {
                        let security = e.is_security();
                        self.all_unreachable(env, host, &e.to_string(), security, &stop);
                        let wait = backoff(attempt, interval_ms.max(100), 30_000);
                        attempt += 1;
                        if !Self::pause(Duration::from_millis(wait), &mut stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if let Some(held) = &vm {
                let mut broken = false;
                if Instant::now() >= next_full {
                    // Hash everything this round, whatever the stamps say.
                    seen.clear();
                    next_full = Instant::now() + self.settings.full_interval;
                }
                for service in &self.services {
                    let target = self.target(env, host, service);
                    let started = Instant::now();
                    let key = service.name.as_str();
                    let answer = held.probe_since(service, seen.get(key).map(|(s, _)| s)).await;
                    let answered = answer.map_err(|e| e.to_string()).and_then(|a| {
                        let kind = if matches!(a, Answer::Same { .. }) { "same" } else { "full" };
                        let (obs, stamp) = a.observation(seen.get(key)).map_err(|reason| {
                            format!("host `{}` sent a probe answer that cannot be believed: {reason}", host.name)
                        })?;
                        Ok((obs, stamp, kind))
                    });
                    match answered {
                        Ok((obs, stamp, kind)) => {
                            match stamp {
                                Some(s) => seen.insert(key.to_owned(), (s, obs.clone())),
                                None => seen.remove(key),
                            };
                            self.metrics.probe_kind(&target, kind);
                            let unix = self.clock.now().timestamp_millis() as f64 / 1000.0;
                            self.metrics.probe_ok(&target, started.elapsed().as_secs_f64(), unix);
                            let recorded = self.store.deployments(env.name.as_str(), service.name.as_str()).await;
                            let rec = recorded.ok().and_then(|r| r.into_iter().find(|d| d.host == host.name.as_str()));
                            self.record(&target, drift::classify(service.name.as_str(), rec.as_ref(), &obs), &stop);
                        }
                        Err(reason) => {
                            seen.remove(key);
                            self.record(&target, Status::Unreachable { reason, security: false }, &stop);
                            broken = true;
                        }
                    }
                }
                if broken {
                    self.metrics.connection(env.name.as_str(), host.name.as_str(), false);
                    if let Some(v) = vm.take() {
                        Box::new(v).close().await;
                    }
                }
            }
            // A held connection can outlive the host's sshd: ask for a new one now and then.
            if vm.is_some() && Instant::now() >= next_fresh {
                next_fresh = Instant::now() + self.settings.fresh_interval;
                if let Some(service) = self.services.first() {
                    if let Err(e) = probe_one(&self.ssh.fresh, host, service, self.settings.probe_timeout).await {
                        let security = e.is_security();
                        let reason = format!("the host no longer accepts new connections: {e}");
                        self.all_unreachable(env, host, &reason, security, &stop);
                        if let Some(v) = vm.take() {
                            Box::new(v).close().await;
                        }
                    }
                }
            }
            round += 1;
            if !Self::pause(Duration::from_millis(jittered(interval_ms, index, round)), &mut stop).await {
                break;
            }
        }
        if let Some(v) = vm.take() {
            Box::new(v).close().await;
        }
    }
}
