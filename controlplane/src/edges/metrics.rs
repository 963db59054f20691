//! The watch's Prometheus metrics (the `prometheus` crate, text format 0.0.4) and the
//! small HTTP server that exposes them (`/metrics`, `/healthz`, hyper).

use crate::watch::Target;
use prometheus::{
    Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// Every drift state a target can be in, one gauge each (1 for the current one).
pub const STATES: &[&str] = &["in-sync", "drifted", "missing", "tampered", "unreachable", "not-deployed"];

/// The watch's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    drift: IntGaugeVec,
    last_success: GaugeVec,
    duration: HistogramVec,
    connection: IntGaugeVec,
    probes: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let target = ["environment", "service", "host"];
        let drift = IntGaugeVec::new(
            Opts::new("agentctl_drift_state", "1 for the drift state a target is in, 0 for the others"),
            &["environment", "service", "host", "state"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new("agentctl_last_successful_probe_timestamp_seconds", "Unix time of the last probe that answered"),
            &target,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("agentctl_probe_duration_seconds", "Probe round trip over the held connection")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &target,
        )?;
        let connection = IntGaugeVec::new(
            Opts::new("agentctl_connection_up", "1 while the host accepts connections and the held one works"),
            &["environment", "host"],
        )?;
        registry.register(Box::new(drift.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let probes = IntCounterVec::new(
            Opts::new(
                "agentctl_probes_total",
                "Probes answered, by kind: `full` read and hashed the release, `same` found its stamp unchanged",
            ),
            &["environment", "service", "host", "kind"],
        )?;
        registry.register(Box::new(connection.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        Ok(Self { registry, drift, last_success, duration, connection, probes })
    }

    /// Sets `target`'s drift state (one-hot over [`STATES`]).
    pub fn state(&self, t: &Target, state: &str) {
        for s in STATES {
            let labels = [t.environment.as_str(), t.service.as_str(), t.host.as_str(), s];
            self.drift.with_label_values(&labels).set(i64::from(*s == state));
        }
    }

    pub fn probe_ok(&self, t: &Target, seconds: f64, unix_now: f64) {
        let labels = [t.environment.as_str(), t.service.as_str(), t.host.as_str()];
        self.duration.with_label_values(&labels).observe(seconds);
        self.last_success.with_label_values(&labels).set(unix_now);
    }

    /// Counts an answered probe of `kind` (`full` or `same`).
    pub fn probe_kind(&self, t: &Target, kind: &str) {
        let labels = [t.environment.as_str(), t.service.as_str(), t.host.as_str(), kind];
        self.probes.with_label_values(&labels).inc();
    }

    pub fn connection(&self, environment: &str, host: &str, up: bool) {
        self.connection.with_label_values(&[environment, host]).set(i64::from(up));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` resolves; returns the bound
/// address (port 0 picks a free one) once listening.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let metrics = Arc::new(metrics);
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, kind, body) = match req.uri().path() {
                            "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
                            "/healthz" => (200, "text/plain", "ok\n".to_owned()),
                            _ => (404, "text/plain", "not found\n".to_owned()),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(bound)
}
