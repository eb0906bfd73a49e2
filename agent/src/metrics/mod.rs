//! The Prometheus endpoint: `GET /metrics` in the text format 0.0.4,
//! encoded by `prometheus-client`, behind an optional bearer token; and
//! `/healthz`, `/readyz` for load balancers and systemd.
//!
//! - [`http`]: the HTTP/1.1 server (hyper), its routes and its limits.
//! - [`token`]: the bearer token (`metrics.token_file`).
//! - [`health`]: what liveness and readiness mean.
//! - [`scrape`]: figures read from the services' handles at each scrape
//!   (membership, authentication, SDFS, the worker, Raft).
//! - C1 counters and the C2 latency histogram live with the worker that
//!   records them ([`crate::infer::figures`]); a scrape encodes them.
//! - [`process`]: the `process_*` series from `/proc/self`.
//!
//! This file holds the server handle and `dml_build_info`.

pub mod health;
pub mod http;
pub mod process;
pub mod scrape;
pub mod token;

pub use crate::infer::figures::InferMetrics;

use crate::control::ControlHandle;
use crate::infer::worker::Worker;
use crate::membership::driver::MembershipHandle;
use crate::sdfs::SdfsHandle;
use anyhow::Context;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use token::Token;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the endpoint reads at each scrape.
#[derive(Clone)]
pub struct Sources {
    /// This agent's address (to tell whether it leads the control plane).
    pub me: SocketAddr,
    pub membership: MembershipHandle,
    pub control: ControlHandle,
    pub sdfs: SdfsHandle,
    /// The inference worker, when this agent runs one.
    pub worker: Option<Arc<Worker>>,
    /// This agent's cluster key and what it refused.
    pub auth: dml_shared::auth::AuthContext,
    /// Copies each SDFS version should have (`sdfs.replicas`).
    pub replicas: usize,
}

/// The families that live between scrapes, and the sources read at each.
struct Exporter {
    /// `dml_build_info`, the worker's C1/C2 and `process_*`.
    registry: Registry,
    sources: Sources,
}

impl Exporter {
    fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "dml_build",
            "The agent's version; always 1.",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        if let Some(w) = &sources.worker {
            w.infer_metrics().register(&mut registry);
        }
        registry.register_collector(Box::new(process::ProcessCollector));
        Self { registry, sources }
    }

    /// The whole exposition, as the figures are now.
    async fn render(&self) -> String {
        let mut now = Registry::default();
        now.register_collector(Box::new(scrape::Scrape::read(&self.sources).await));
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &now);
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl http::Endpoints for Exporter {
    fn content_type(&self) -> &'static str {
        CONTENT_TYPE
    }
    async fn metrics(&self) -> String {
        self.render().await
    }
    async fn health(&self) -> http::Probe {
        health::health(&self.sources).await
    }
    async fn ready(&self) -> http::Probe {
        health::ready(&self.sources).await
    }
}

/// The warning for an endpoint reachable from other hosts, if `addr` is.
fn exposure_warning(addr: SocketAddr, token: bool) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(if token {
        format!(
            "metrics are served on {addr}, reachable from other hosts: /metrics needs the \
             bearer token but travels in clear text (no TLS); /healthz and /readyz are open"
        )
    } else {
        format!(
            "metrics are served on {addr}, reachable from other hosts, WITHOUT a token: \
             anyone who can reach it reads the cluster's figures; set metrics.token_file \
             or bind metrics to 127.0.0.1"
        )
    })
}

/// The running endpoint; [`MetricsServer::shutdown`] stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `bind` and starts serving; with `token`, `/metrics` needs it.
    pub async fn start(
        bind: SocketAddr,
        token: Option<Token>,
        sources: Sources,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen for metrics on {bind} (metrics.bind)"))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            token = token.is_some(),
            "metrics at http://{addr}/metrics, health at /healthz and /readyz"
        );
        if let Some(w) = exposure_warning(addr, token.is_some()) {
            tracing::warn!("{w}");
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(http::serve(
            listener,
            http::Limits::default(),
            Arc::new(Exporter::new(sources)),
            token,
            stop_rx,
        ));
        Ok(Self { addr, stop, task })
    }

    /// The bound address (the port is known even when `bind` asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the connections being served and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_endpoint_other_hosts_reach_is_warned_about() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(exposure_warning(at("127.0.0.1:9100"), false), None);
        assert_eq!(exposure_warning(at("[::1]:9100"), false), None);
        let open = exposure_warning(at("0.0.0.0:9100"), false).unwrap();
        assert!(open.contains("WITHOUT a token"), "{open}");
        let guarded = exposure_warning(at("10.0.0.5:9100"), true).unwrap();
        assert!(guarded.contains("needs the bearer token"), "{guarded}");
    }
}
