//! The Prometheus endpoint of real agents: three agents, each with `[metrics] bind`, are
//! scraped over HTTP; the text format parses, and the figures agree with the cluster
//! (3 live members everywhere, one leader, a term, SDFS writes after a put). Anything but
//! `GET /metrics` is a 404, and an oversized request head is refused.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, anyhow, bail, ensure};
use dml_shared::config::SdfsConfig;
use dml_tests::ports::free_fixed_addr;
use dml_tests::sdfs::{DML, READY, SDFS_POLL, cluster_slot, test_control, test_sdfs};
use dml_tests::{AgentSpec, Cluster, test_membership, wait_for};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Time allowed for one HTTP exchange.
const HTTP: Duration = Duration::from_secs(10);

/// Status line, headers (lower-case names) and body of one HTTP/1.1 exchange.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `request` verbatim and reads the whole answer (the server closes the connection).
fn http(addr: SocketAddr, request: &[u8]) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP)
        .with_context(|| format!("cannot connect to metrics at {addr}"))?;
    s.set_read_timeout(Some(HTTP))?;
    s.set_write_timeout(Some(HTTP))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    ensure!(
        parts.next() == Some("HTTP/1.1"),
        "bad status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    // A HEAD answer announces the length of a body it does not send.
    if let Some(len) = headers
        .get("content-length")
        .filter(|_| !request.starts_with(b"HEAD "))
    {
        ensure!(
            len.parse::<usize>()? == body.len(),
            "content-length {len} but {} body bytes",
            body.len()
        );
    }
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dml-tests\r\n\r\n").as_bytes(),
    )
}

/// Samples of one scrape: `name{labels}` -> value.
type Samples = BTreeMap<String, f64>;

/// Parses the text format strictly: every `# TYPE` names a known type, every sample line
/// is `name[{labels}] value` with a family declared before it, and no sample repeats.
fn parse(text: &str) -> Result<Samples> {
    let mut types = BTreeMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad TYPE line {line:?}"))?;
            ensure!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "unknown type in {line:?}"
            );
            ensure!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if series.contains('{') {
            ensure!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        ensure!(
            types.contains_key(family),
            "sample {name} before its # TYPE"
        );
        ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "sample {series} repeated"
        );
    }
    Ok(samples)
}

fn value(s: &Samples, key: &str) -> Result<f64> {
    s.get(key)
        .copied()
        .ok_or_else(|| anyhow!("no sample {key}"))
}

/// Scrapes and parses `GET /metrics`, checking status and content type.
fn scrape(addr: SocketAddr) -> Result<Samples> {
    let r = get(addr, "/metrics")?;
    ensure!(
        r.status == 200,
        "status {} for /metrics: {}",
        r.status,
        r.body
    );
    let ct = r.headers.get("content-type").cloned().unwrap_or_default();
    ensure!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content type {ct:?}"
    );
    parse(&r.body)
}

#[tokio::test]
async fn three_agents_serve_prometheus_metrics_that_agree_with_the_cluster() {
    let _slot = cluster_slot().await;
    let mut c = Cluster::new("metrics", test_membership()).unwrap();
    let mut addrs = Vec::new();
    let mut metrics = Vec::new();
    while addrs.len() < 6 {
        let a = free_fixed_addr().unwrap();
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let (addrs, metric_addrs) = addrs.split_at(3);
    for (i, a) in addrs.iter().enumerate() {
        let mut spec = AgentSpec::new(format!("a{i}"), test_membership())
            .bind(*a)
            .nodes(addrs)
            .control(test_control())
            .sdfs(SdfsConfig {
                replicas: Some(3),
                write_quorum: 2,
                ..test_sdfs()
            });
        spec.extra_config = format!("\n[metrics]\nbind = \"{}\"\n", metric_addrs[i]);
        if i > 0 {
            spec = spec.introducer(addrs[0]);
        }
        c.spawn(spec).await.unwrap();
        metrics.push(metric_addrs[i]);
    }

    // Every agent sees 3 live members, exactly one reports itself leader, all in the
    // same term, and each has applied an entry; polled, since the cluster is still
    // converging.
    let scrapes = wait_for(
        "3 live members and one leader in the metrics",
        READY,
        SDFS_POLL,
        async || {
            let mut all = Vec::new();
            for m in &metrics {
                all.push(scrape(*m)?);
            }
            for (i, s) in all.iter().enumerate() {
                let live = value(s, "dml_membership_members_live")?;
                ensure!(live == 3.0, "agent {i} sees {live} live members");
            }
            let leaders = all
                .iter()
                .map(|s| value(s, "dml_raft_is_leader"))
                .collect::<Result<Vec<_>>>()?;
            ensure!(
                leaders.iter().filter(|v| **v == 1.0).count() == 1
                    && leaders.iter().all(|v| *v == 0.0 || *v == 1.0),
                "is_leader per agent: {leaders:?}"
            );
            let terms = all
                .iter()
                .map(|s| value(s, "dml_raft_term"))
                .collect::<Result<Vec<_>>>()?;
            ensure!(
                terms.iter().all(|t| *t >= 1.0 && *t == terms[0]),
                "terms {terms:?}"
            );
            // A follower reports an applied index once the leader's first
            // entry reached it.
            for (i, s) in all.iter().enumerate() {
                let applied = value(s, "dml_raft_last_applied_index")?;
                ensure!(applied >= 1.0, "agent {i} applied {applied}");
            }
            Ok(all)
        },
    )
    .await
    .unwrap();

    for (i, s) in scrapes.iter().enumerate() {
        assert_eq!(value(s, "dml_up").unwrap(), 1.0);
        assert_eq!(value(s, "dml_raft_is_voter").unwrap(), 1.0, "agent {i}");
        assert_eq!(value(s, "dml_raft_voters").unwrap(), 3.0, "agent {i}");
        assert!(
            value(s, "dml_raft_last_applied_index").unwrap() >= 1.0,
            "agent {i}"
        );
        assert!(value(s, "dml_membership_packets_sent_total").unwrap() > 0.0);
        assert!(value(s, "dml_membership_packets_received_total").unwrap() > 0.0);
        assert!(
            value(s, "dml_membership_bytes_received_total").unwrap()
                >= value(s, "dml_membership_packets_received_total").unwrap()
        );
        assert!(value(s, "dml_uptime_seconds").unwrap() > 0.0);
        assert_eq!(value(s, "dml_sdfs_files").unwrap(), 0.0);
        assert!(
            s.contains_key("dml_worker_queries_completed_total"),
            "agent {i}"
        );
    }
    // C1/C2 only on the leader (which has seen no query yet: no per-model rows).
    let leader = scrapes
        .iter()
        .position(|s| s["dml_raft_is_leader"] == 1.0)
        .unwrap();
    let text = get(metrics[leader], "/metrics").unwrap().body;
    assert!(
        text.contains("# TYPE dml_infer_query_latency_seconds summary"),
        "{text}"
    );
    let follower = get(metrics[(leader + 1) % 3], "/metrics").unwrap().body;
    assert!(!follower.contains("dml_infer_query_latency_seconds"));

    // A put shows up in the SDFS counters of the agents that stored it.
    let local = c.dir().join("put.bin");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let out = c.agents[1]
        .dml(&["put", local.to_str().unwrap(), "metrics/put.bin"], DML)
        .await
        .unwrap();
    out.ensure_success().unwrap();
    wait_for("SDFS counters after a put", READY, SDFS_POLL, async || {
        let mut writes = 0.0;
        let mut files = 0.0;
        let mut written = 0.0;
        for m in &metrics {
            let s = scrape(*m)?;
            writes += value(&s, "dml_sdfs_writes_total")?;
            files += value(&s, "dml_sdfs_files")?;
            written += value(&s, "dml_sdfs_written_bytes_total")?;
        }
        if writes < 2.0 || files < 2.0 {
            bail!("writes {writes}, files {files}");
        }
        ensure!(
            written >= 2.0 * bytes.len() as f64,
            "{written} bytes written"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Anything else is a 404; a HEAD has no body; an endless head is refused.
    let r = get(metrics[0], "/").unwrap();
    assert_eq!(r.status, 404);
    let r = http(metrics[0], b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.status, 404);
    let r = http(metrics[0], b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = http(metrics[0], b"nonsense\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    // The server may close before reading everything; either a 431 or a reset is a refusal.
    match http(metrics[0], &huge) {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => eprintln!("oversized head: connection ended: {e:#}"),
    }
    // The endpoint still serves after all that.
    scrape(metrics[0]).unwrap();
}
