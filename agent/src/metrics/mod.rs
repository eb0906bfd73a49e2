//! The Prometheus endpoint: `GET /metrics` in the text format 0.0.4,
//! encoded by `prometheus-client`.
//!
//! - [`http`]: the HTTP/1.1 server (hyper) and its limits.
//! - [`scrape`]: figures read from the services' handles at each scrape
//!   (membership, authentication, SDFS, the worker, Raft).
//! - C1 counters and the C2 latency histogram live with the worker that
//!   records them ([`crate::infer::figures`]); a scrape encodes them.
//! - [`process`]: the `process_*` series from `/proc/self`.
//!
//! This file holds the server handle and `dml_build_info`.

pub mod http;
pub mod process;
pub mod scrape;

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

/// The running endpoint; [`MetricsServer::shutdown`] stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `bind` and starts serving.
    pub async fn start(bind: SocketAddr, sources: Sources) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen for metrics on {bind} (metrics.bind)"))?;
        let addr = listener.local_addr()?;
        tracing::info!("metrics at http://{addr}/metrics");
        let (stop, stop_rx) = watch::channel(false);
        let exporter = Arc::new(Exporter::new(sources));
        let render = move || {
            let e = exporter.clone();
            async move { e.render().await }
        };
        let task = tokio::spawn(http::serve(
            listener,
            http::Limits::default(),
            CONTENT_TYPE,
            render,
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
