//! The Prometheus endpoint: a small HTTP/1.1 server (`GET /metrics`, text
//! format 0.0.4) over membership, SDFS, inference and Raft figures, read
//! from the services' handles at each scrape.
//!
//! One request per connection (`Connection: close`); the request head is
//! limited to [`MAX_HEAD`] bytes and must arrive within [`READ_TIMEOUT`];
//! at most [`MAX_CONNECTIONS`] connections are served at once.

use crate::control::ControlHandle;
use crate::infer::worker::Worker;
use crate::membership::driver::MembershipHandle;
use crate::sdfs::SdfsHandle;
use anyhow::Context;
use dml_shared::api::Response;
use dml_shared::infer::{InferRequest, InferResponse, LatencyInfo, RateInfo};
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for the request head to arrive, and for the answer to be written.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed for each source of figures during a scrape.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        let task = tokio::spawn(serve(listener, Arc::new(sources), stop_rx));
        Ok(Self { addr, stop, task })
    }

    /// The bound address (the port is known even when `bind` asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, sources: Arc<Sources>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let sources = sources.clone();
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &sources).await {
                tracing::debug!("metrics: connection ended: {e}");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { head_only: bool },
    NotFound,
    BadRequest,
}

/// Parses the request line of `head`.
fn parse_head(head: &[u8]) -> Ask {
    let Ok(text) = std::str::from_utf8(head) else {
        return Ask::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Ask::Metrics { head_only: false },
        ("HEAD", "/metrics") => Ask::Metrics { head_only: true },
        _ => Ask::NotFound,
    }
}

/// Reads until the end of the request head (an empty line).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, body, head_only) = match head.as_deref().map(parse_head) {
        None => (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_string(),
            false,
        ),
        Some(Ask::BadRequest) => ("400 Bad Request", "bad request\n".to_string(), false),
        Some(Ask::NotFound) => (
            "404 Not Found",
            "not found; try GET /metrics\n".to_string(),
            false,
        ),
        Some(Ask::Metrics { head_only }) => ("200 OK", render(sources).await, head_only),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// `f`, or `None` if it takes longer than [`SOURCE_TIMEOUT`].
async fn bounded<T>(f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(SOURCE_TIMEOUT, f).await.ok()
}

/// Builds the exposition text.
struct Text(String);

impl Text {
    /// `# HELP` and `# TYPE` lines of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(v));
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the text format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The whole exposition, from the sources as they are now.
pub async fn render(s: &Sources) -> String {
    let mut t = Text(String::with_capacity(8 * 1024));
    t.one("dml_up", "gauge", "1 while the agent serves metrics.", 1.0);
    if let Some(Some(st)) = bounded(s.membership.stats()).await {
        let counters: [(&str, &str, u64); 11] = [
            (
                "packets_sent",
                "Membership datagrams sent.",
                st.packets_sent,
            ),
            (
                "packets_received",
                "Membership datagrams received.",
                st.packets_recv,
            ),
            ("bytes_sent", "Membership bytes sent.", st.bytes_sent),
            (
                "bytes_received",
                "Membership bytes received.",
                st.bytes_recv,
            ),
            ("probes_sent", "Direct probes sent.", st.probes_sent),
            (
                "suspicions",
                "Suspicions this agent raised about others.",
                st.suspicions,
            ),
            (
                "refuted",
                "Suspicions about this agent that it refuted (false positives).",
                st.refuted,
            ),
            (
                "declared_failed",
                "Members this agent saw declared failed.",
                st.declared_failed,
            ),
            (
                "false_failures",
                "Times this agent learned it was declared failed while alive.",
                st.false_failures,
            ),
            (
                "bad_packets",
                "Membership datagrams dropped as malformed.",
                st.bad_packets,
            ),
            (
                "bad_frames",
                "API frames dropped as malformed.",
                st.bad_frames,
            ),
        ];
        let a = dml_shared::auth::counters().snapshot();
        t.family(
            "dml_auth_dropped_total",
            "counter",
            "Traffic dropped by cluster-key authentication, by transport and reason.",
        );
        for (transport, reason, v) in [
            ("udp", "forged", a.udp_forged),
            ("udp", "malformed", a.udp_malformed),
            ("udp", "replayed", a.udp_replayed),
            ("udp", "stale", a.udp_stale),
            ("tcp", "handshake", a.tcp_handshake_failed),
            ("tcp", "forged", a.tcp_forged),
        ] {
            t.sample(
                "dml_auth_dropped_total",
                &[("transport", transport), ("reason", reason)],
                v as f64,
            );
        }
        for (name, help, v) in counters {
            t.one(
                &format!("dml_membership_{name}_total"),
                "counter",
                help,
                v as f64,
            );
        }
        t.one(
            "dml_membership_members_live",
            "gauge",
            "Members alive or suspect in this agent's view (itself included).",
            st.members_live as f64,
        );
        t.one(
            "dml_uptime_seconds",
            "gauge",
            "Time since the membership task started.",
            st.uptime_ms as f64 / 1000.0,
        );
    }
    if let Some(st) = s.sdfs.stats() {
        t.one(
            "dml_sdfs_files",
            "gauge",
            "SDFS versions stored on this agent.",
            st.files as f64,
        );
        t.one(
            "dml_sdfs_stored_bytes",
            "gauge",
            "Total size of the SDFS versions stored on this agent.",
            st.bytes_stored as f64,
        );
        let counters: [(&str, &str, u64); 15] = [
            ("writes", "Chain writes stored here.", st.writes),
            (
                "write_errors",
                "Chain writes that failed here.",
                st.write_errors,
            ),
            (
                "disk_full",
                "Writes refused because the disk was full.",
                st.disk_full,
            ),
            ("reads", "Reads served.", st.reads),
            ("read_errors", "Reads that failed.", st.read_errors),
            (
                "written_bytes",
                "Bytes received into stored copies (writes and repairs).",
                st.bytes_written,
            ),
            ("read_bytes", "Bytes served to readers.", st.bytes_read),
            (
                "repairs",
                "Copies fetched from another replica.",
                st.repairs,
            ),
            (
                "repair_errors",
                "Repair copies that failed.",
                st.repair_errors,
            ),
            ("scrubbed", "Copies re-hashed by scrub.", st.scrubbed),
            (
                "scrub_corruptions",
                "Copies found corrupt.",
                st.scrub_corruptions,
            ),
            (
                "reconcile_deleted",
                "Copies deleted because the metadata no longer wants them here.",
                st.reconcile_deleted,
            ),
            (
                "reconcile_refetched",
                "Copies fetched again because they held other bytes than the committed version.",
                st.reconcile_refetched,
            ),
            (
                "reconcile_restored",
                "Copies fetched again because this agent is named a holder and its disk lost them.",
                st.reconcile_restored,
            ),
            ("tmp_swept", "Stale temp files removed.", st.tmp_swept),
        ];
        for (name, help, v) in counters {
            t.one(&format!("dml_sdfs_{name}_total"), "counter", help, v as f64);
        }
    }
    if let Some(w) = &s.worker {
        let st = w.stats();
        t.one(
            "dml_worker_queries_running",
            "gauge",
            "Queries this worker holds a lease on.",
            st.running as f64,
        );
        t.one(
            "dml_worker_queries_completed_total",
            "counter",
            "Queries this worker completed.",
            st.completed as f64,
        );
    }
    let info = bounded(s.control.leader_info()).await;
    let leads = info.as_ref().is_some_and(|i| i.leader == Some(s.me));
    if let Some(i) = &info {
        t.one(
            "dml_raft_term",
            "gauge",
            "Raft term as this agent knows it.",
            i.term as f64,
        );
        t.one(
            "dml_raft_is_leader",
            "gauge",
            "1 if this agent leads the control plane.",
            f64::from(u8::from(leads)),
        );
        t.one(
            "dml_raft_leader_known",
            "gauge",
            "1 if this agent knows a control-plane leader.",
            f64::from(u8::from(i.leader.is_some())),
        );
        t.one(
            "dml_raft_is_voter",
            "gauge",
            "1 if this agent holds a Raft replica.",
            f64::from(u8::from(i.is_voter)),
        );
        t.one(
            "dml_raft_voters",
            "gauge",
            "Configured Raft voters.",
            i.voters.len() as f64,
        );
    }
    if let Some(l) = s.control.log_status() {
        let indexes = [
            (
                "last_log_index",
                "Index of the last entry in this voter's log.",
                l.last_log_index,
            ),
            (
                "last_applied_index",
                "Index of the last entry applied here.",
                l.last_applied,
            ),
            (
                "snapshot_index",
                "Index covered by this voter's snapshot.",
                l.snapshot,
            ),
            (
                "purged_index",
                "Index up to which this voter's log is purged.",
                l.purged,
            ),
        ];
        for (name, help, v) in indexes {
            if let Some(v) = v {
                t.one(&format!("dml_raft_{name}"), "gauge", help, v as f64);
            }
        }
    }
    if leads {
        leader_figures(s, &mut t).await;
    }
    t.0
}

/// C1 and C2, which only the leader has.
async fn leader_figures(s: &Sources, t: &mut Text) {
    let ask = |r| s.control.meta(MetaRequest::Infer(r));
    if let Some(Response::Meta(MetaResponse::Infer(InferResponse::Rates(rates)))) =
        bounded(ask(InferRequest::Rates)).await
    {
        rate_families(t, &rates);
    }
    if let Some(Response::Meta(MetaResponse::Infer(InferResponse::Latency(lat)))) =
        bounded(ask(InferRequest::Latency)).await
    {
        latency_family(t, &lat);
    }
}

fn rate_families(t: &mut Text, rates: &[RateInfo]) {
    type Get = fn(&RateInfo) -> f64;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "dml_infer_queries_per_second",
            "gauge",
            "C1: queries completed per second over the last 10 s (leader).",
            |r| r.queries_per_s,
        ),
        (
            "dml_infer_images_per_second",
            "gauge",
            "C1: images completed per second over the last 10 s (leader).",
            |r| r.images_per_s,
        ),
        (
            "dml_infer_queries_total",
            "counter",
            "Queries completed this leader term (leader).",
            |r| r.queries_total as f64,
        ),
        (
            "dml_infer_images_total",
            "counter",
            "Images completed this leader term (leader).",
            |r| r.images_total as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        t.family(name, kind, help);
        for r in rates {
            t.sample(name, &[("model", &r.model)], get(r));
        }
    }
}

fn latency_family(t: &mut Text, lat: &[LatencyInfo]) {
    let name = "dml_infer_query_latency_seconds";
    t.family(name, "summary", "C2: query processing time (leader).");
    for l in lat {
        let m = l.model.as_str();
        for (q, v) in [
            ("0.5", l.p50_ms),
            ("0.9", l.p90_ms),
            ("0.95", l.p95_ms),
            ("0.99", l.p99_ms),
        ] {
            t.sample(name, &[("model", m), ("quantile", q)], v / 1000.0);
        }
        t.sample(
            &format!("{name}_sum"),
            &[("model", m)],
            l.mean_ms * l.count as f64 / 1000.0,
        );
        t.sample(&format!("{name}_count"), &[("model", m)], l.count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_routed() {
        let m = Ask::Metrics { head_only: false };
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), m);
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), m);
        assert_eq!(
            parse_head(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Ask::Metrics { head_only: true }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Ask::BadRequest);
        assert_eq!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Ask::BadRequest);
        assert_eq!(parse_head(&[0xff, 0xfe, b'\n', b'\n']), Ask::BadRequest);
    }

    #[test]
    fn samples_escape_labels_and_format_values() {
        let mut t = Text(String::new());
        t.sample("x", &[("model", "a\"b\\c\nd")], 1.5);
        t.sample("y", &[], f64::INFINITY);
        t.sample("z", &[("a", "1"), ("b", "2")], 3.0);
        assert_eq!(
            t.0,
            "x{model=\"a\\\"b\\\\c\\nd\"} 1.5\ny +Inf\nz{a=\"1\",b=\"2\"} 3\n"
        );
    }

    #[test]
    fn latency_is_a_summary_in_seconds() {
        let mut t = Text(String::new());
        latency_family(
            &mut t,
            &[LatencyInfo {
                model: "resnet50".into(),
                count: 4,
                mean_ms: 250.0,
                stddev_ms: 1.0,
                p50_ms: 200.0,
                p90_ms: 300.0,
                p95_ms: 400.0,
                p99_ms: 500.0,
                max_ms: 500.0,
            }],
        );
        assert!(t.0.contains("# TYPE dml_infer_query_latency_seconds summary\n"));
        assert!(t.0.contains(
            "dml_infer_query_latency_seconds{model=\"resnet50\",quantile=\"0.9\"} 0.3\n"
        ));
        assert!(t.0.contains("dml_infer_query_latency_seconds_sum{model=\"resnet50\"} 1\n"));
        assert!(t.0.contains("dml_infer_query_latency_seconds_count{model=\"resnet50\"} 4\n"));
    }
}
