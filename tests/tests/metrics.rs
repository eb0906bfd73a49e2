//! The Prometheus endpoint of real agents: three agents, each with `[metrics] bind`, are
//! scraped over HTTP; the text format parses, and the figures agree with the cluster
//! (3 live members everywhere, one leader, a term, SDFS writes after a put). The
//! `process_*` series and `dml_build_info` are there; after an inference job the C1
//! counters and the C2 histogram of the workers that ran it have grown. Anything but
//! `GET /metrics` is a 404, and an oversized request head is refused.
//!
//! With `metrics.token_file`, `/metrics` needs the bearer token (none or a wrong one: 401
//! with `WWW-Authenticate`), a token file others can read stops the start, and a wildcard
//! bind is warned about; `/healthz` answers 200 while `/readyz` is 503 until the agent
//! knows a leader, and again after `dml leave`.
//!
//! Needs the project venv (ONNX Runtime) and the binaries: `bash scripts/setup.sh`,
//! `cargo build --workspace --bins`.

use anyhow::{Result, anyhow, bail, ensure};
use dml_shared::config::SdfsConfig;
use dml_shared::infer::JobState;
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use dml_tests::infer::{JOB_POLL, small_images, submit, tiny_model, wait_job};
use dml_tests::metrics::{
    Reply, Samples, dashboard_exprs, get, http, parse, promql_metrics, rule_exprs, sample_names,
    scrape,
};
use dml_tests::ports::free_fixed_addr;
use dml_tests::sdfs::{DML, READY, SDFS_POLL, cluster_slot, test_control, test_sdfs};
use dml_tests::{Agent, AgentSpec, Cluster, test_membership, wait_for};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time for a small tiny-model job on a loaded two-core machine.
const JOB_DEADLINE: Duration = Duration::from_secs(240);
/// Images in that job.
const JOB_IMAGES: u32 = 6;

fn value(s: &Samples, key: &str) -> Result<f64> {
    s.value(key)
}

/// One histogram of a scrape.
#[derive(Debug)]
struct Histogram {
    /// `(le, cumulative count)` in order of the bounds, `+Inf` last.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The histogram `name` for `labels` (`model="tiny"`); checks that the buckets never
/// decrease and that the `+Inf` bucket is the count.
fn histogram(s: &Samples, name: &str, labels: &str) -> Result<Histogram> {
    ensure!(
        s.kind(name) == Some("histogram"),
        "{name} is {:?}",
        s.kind(name)
    );
    let mut buckets = Vec::new();
    for (l, v) in s.series(&format!("{name}_bucket")) {
        let Some(rest) = l.strip_prefix(&format!("{{{labels},le=\"")) else {
            continue;
        };
        let le = rest
            .strip_suffix("\"}")
            .ok_or_else(|| anyhow!("bad bucket labels {l}"))?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        buckets.push((le, v));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    ensure!(buckets.len() >= 2, "{name}{{{labels}}} buckets {buckets:?}");
    ensure!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}{{{labels}}} buckets decrease: {buckets:?}"
    );
    let sum = value(s, &format!("{name}_sum{{{labels}}}"))?;
    let count = value(s, &format!("{name}_count{{{labels}}}"))?;
    let last = buckets.last().copied().unwrap_or_default();
    ensure!(
        last == (f64::INFINITY, count),
        "{name}{{{labels}}}: +Inf bucket {last:?}, count {count}"
    );
    Ok(Histogram {
        buckets,
        sum,
        count,
    })
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
        assert!(value(s, "dml_raft_rpc_failures_total").is_ok(), "agent {i}");
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
    // No C1/C2 series before any query (they appear with a model's first query);
    // the process and build series everywhere.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    for (i, s) in scrapes.iter().enumerate() {
        for (family, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_open_fds", "gauge"),
            ("dml_build_info", "gauge"),
        ] {
            assert_eq!(s.kind(family), Some(kind), "agent {i}: {family}");
        }
        for family in [
            "dml_infer_queries_total",
            "dml_infer_query_latency_seconds_count",
        ] {
            assert!(
                s.series(family).is_empty(),
                "agent {i}: {family} {:?}",
                s.series(family)
            );
        }
        assert!(value(s, "process_cpu_seconds_total").unwrap() > 0.0);
        assert!(value(s, "process_resident_memory_bytes").unwrap() > 0.0);
        assert!(
            value(s, "process_virtual_memory_bytes").unwrap()
                >= value(s, "process_resident_memory_bytes").unwrap()
        );
        // Sockets and the data store at least.
        assert!(value(s, "process_open_fds").unwrap() >= 5.0, "agent {i}");
        let started = value(s, "process_start_time_seconds").unwrap();
        let age = now.as_secs_f64() - started;
        assert!(
            (-1.0..3600.0).contains(&age),
            "agent {i} started {age} s ago"
        );
        let build = format!(
            "dml_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(s, &build).unwrap(), 1.0, "agent {i}");
    }

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

    // The leader alone exports the cluster's versions, counted off its state
    // lock; the health request the console's SDFS pane reads agrees.
    wait_for("the leader's SDFS totals", READY, SDFS_POLL, async || {
        let mut exported = Vec::new();
        for m in &metrics {
            let s = scrape(*m)?;
            if let Ok(v) = value(&s, "dml_sdfs_cluster_versions") {
                exported.push((v, value(&s, "dml_sdfs_under_replicated_versions")?));
            }
        }
        ensure!(exported == [(1.0, 0.0)], "leader figures {exported:?}");
        Ok(())
    })
    .await
    .unwrap();
    let health = MetaRequest::Health {
        replicas: 3,
        sample: 5,
    };
    match dml_tests::sdfs::api::meta(addrs[2], health).await.unwrap() {
        MetaResponse::Health(t) => {
            assert_eq!(
                (t.files, t.versions, t.under_replicated),
                (1, 1, 0),
                "{t:?}"
            );
            assert_eq!(t.bytes, bytes.len() as u64);
        }
        other => panic!("wanted the totals, got {other:?}"),
    }
    // Asked for 4 copies of a 3-replica store, the one version is short of one.
    let health = MetaRequest::Health {
        replicas: 4,
        sample: 5,
    };
    match dml_tests::sdfs::api::meta(addrs[1], health).await.unwrap() {
        MetaResponse::Health(t) => {
            assert_eq!(t.under_replicated, 1, "{t:?}");
            assert_eq!(t.sample, vec![("metrics/put.bin".to_string(), 1, 3)]);
        }
        other => panic!("wanted the totals, got {other:?}"),
    }

    // An inference job: the workers that ran its queries count them and their images,
    // and their latency histograms grow by as many observations.
    let model = tiny_model();
    c.agents[0]
        .dml(&["put", model.to_str().unwrap(), "models/tiny.onnx"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let images = c.dir().join("images");
    small_images(&images, JOB_IMAGES as usize).unwrap();
    c.agents[0]
        .dml(
            &["sdfs", "load", images.to_str().unwrap(), "datasets/metrics"],
            DML,
        )
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let job = submit(addrs[0], "tiny", JOB_IMAGES, "datasets/metrics")
        .await
        .unwrap();
    wait_job(addrs, job, JOB_DEADLINE, "the job to finish", |j| {
        j.state == JobState::Done
    })
    .await
    .unwrap();
    // The last worker records its query once the leader took it, which may be
    // just after the job shows as done: polled.
    let model = "model=\"tiny\"";
    wait_for("C1 and C2 after the job", READY, JOB_POLL, async || {
        let (mut queries, mut images, mut observed) = (0.0, 0.0, 0.0);
        for (i, m) in metrics.iter().enumerate() {
            let s = scrape(*m)?;
            let q = s
                .series("dml_infer_queries_total")
                .get(format!("{{{model}}}").as_str())
                .copied()
                .unwrap_or(0.0);
            if q == 0.0 {
                continue;
            }
            for family in ["dml_infer_queries_total", "dml_infer_images_total"] {
                ensure!(
                    s.kind(family) == Some("counter"),
                    "agent {i}: {family} is {:?}",
                    s.kind(family)
                );
            }
            let Histogram {
                buckets,
                sum,
                count,
            } = histogram(&s, "dml_infer_query_latency_seconds", model)?;
            ensure!(count == q, "agent {i}: {q} queries but {count} latencies");
            ensure!(sum > 0.0, "agent {i}: latency sum {sum}");
            ensure!(
                buckets.iter().any(|(le, n)| le.is_finite() && *n > 0.0),
                "agent {i}: every latency above the last bound: {buckets:?}"
            );
            queries += q;
            images += value(&s, &format!("dml_infer_images_total{{{model}}}"))?;
            observed += count;
        }
        ensure!(
            images >= f64::from(JOB_IMAGES),
            "{images} images counted of {JOB_IMAGES}"
        );
        ensure!(queries >= 1.0 && observed == queries, "{queries} queries");
        Ok(())
    })
    .await
    .unwrap();

    dashboards_read_only_exported_metrics(&metrics);

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

/// Every metric the Grafana dashboard and the alert rules in `assets/` read is
/// one that these agents export (after a put and an inference job, and from the
/// leader for the cluster-wide families). Prints what it checked.
fn dashboards_read_only_exported_metrics(metrics: &[SocketAddr]) {
    let mut exported = std::collections::BTreeSet::new();
    for m in metrics {
        exported.extend(sample_names(&scrape(*m).unwrap()));
    }
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(assets.join("grafana/dml.json")).unwrap())
            .expect("assets/grafana/dml.json is JSON");
    let panel_exprs = dashboard_exprs(&dashboard);
    let (rules, alerts) =
        rule_exprs(&std::fs::read_to_string(assets.join("prometheus/alerts.yml")).unwrap());
    assert_eq!(rules.len(), alerts, "an alert rule without a one-line expr");
    assert!(
        panel_exprs.len() >= 20,
        "{} dashboard queries",
        panel_exprs.len()
    );
    for (file, exprs) in [
        ("grafana/dml.json", &panel_exprs),
        ("prometheus/alerts.yml", &rules),
    ] {
        let mut read = std::collections::BTreeSet::new();
        for e in exprs.iter() {
            let names = promql_metrics(e);
            assert!(
                !names.is_empty() || e.contains("up{"),
                "{file}: query reads no dml metric: {e}"
            );
            read.extend(names);
        }
        let missing: Vec<&String> = read.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} reads metrics no agent exports: {missing:?}"
        );
        eprintln!(
            "{file}: {} queries read {} metrics, all exported: {}",
            exprs.len(),
            read.len(),
            read.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
}

/// The token of the guarded endpoint.
const TOKEN: &str = "metrics-test-token-0123456789abcdef";

/// `GET path` with `Authorization: <auth>`.
fn get_with(addr: SocketAddr, path: &str, auth: &str) -> Result<Reply> {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
    )
}

/// Polls `path` until it answers `status` with a body starting with `body`.
async fn wait_answer(addr: SocketAddr, path: &str, status: u16, body: &str) -> Result<()> {
    wait_for(
        &format!("{path} at {addr} to answer {status} {body:?}"),
        READY,
        SDFS_POLL,
        async || {
            let r = get(addr, path)?;
            ensure!(
                r.status == status && r.body.starts_with(body),
                "{} {:?}",
                r.status,
                r.body
            );
            Ok(())
        },
    )
    .await
}

#[tokio::test]
async fn metrics_need_the_token_and_readiness_waits_for_a_leader() {
    let _slot = cluster_slot().await;
    let mut c = Cluster::new("metrics-token", test_membership()).unwrap();
    let mut addrs = Vec::new();
    while addrs.len() < 5 {
        let a = free_fixed_addr().unwrap();
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let (addrs, metric_addrs) = addrs.split_at(3);
    let token_file = c.dir().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let spec = |i: usize, extra: String| {
        let mut s = AgentSpec::new(format!("a{i}"), test_membership())
            .bind(addrs[i])
            .nodes(addrs)
            .control(test_control())
            .sdfs(SdfsConfig {
                replicas: Some(3),
                write_quorum: 2,
                ..test_sdfs()
            });
        s.extra_config = extra;
        if i > 0 {
            s = s.introducer(addrs[0]);
        }
        s
    };
    // On every address, guarded by the token; the test reaches it on loopback.
    let guarded = format!(
        "\n[metrics]\nbind = \"0.0.0.0:{}\"\ntoken_file = \"{}\"\n",
        metric_addrs[0].port(),
        token_file.display()
    );
    let m0: SocketAddr = format!("127.0.0.1:{}", metric_addrs[0].port())
        .parse()
        .unwrap();

    // A token file other users can read stops the start, naming the file and why.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Started outside the cluster, whose directory a failed spawn would keep.
        let e = Agent::start(spec(0, guarded.clone()), c.dir())
            .await
            .map(|_| ())
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("metrics.token_file") && e.contains("mode 0644"),
            "{e}"
        );
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    c.spawn(spec(0, guarded)).await.unwrap();
    let log = c.agents.last().unwrap().stderr();
    assert!(
        log.contains("reachable from other hosts") && log.contains("needs the bearer token"),
        "no exposure warning in:\n{log}"
    );

    // One of three voters: up, joined, but no leader can be elected.
    wait_answer(m0, "/healthz", 200, "ok").await.unwrap();
    wait_answer(m0, "/readyz", 503, "no control-plane leader known")
        .await
        .unwrap();
    let r = get(m0, "/readyz").unwrap();
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");

    // /metrics: no token, another scheme, a wrong token are refused; the token is served.
    for (auth, wrong) in [
        (None, false),
        (Some(format!("Basic {TOKEN}")), false),
        (Some(format!("Bearer {TOKEN}x")), true),
        (
            Some("Bearer ".to_string() + &TOKEN[..TOKEN.len() - 1]),
            true,
        ),
    ] {
        let r = match &auth {
            None => get(m0, "/metrics").unwrap(),
            Some(a) => get_with(m0, "/metrics", a).unwrap(),
        };
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        let challenge = &r.headers["www-authenticate"];
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        assert_eq!(challenge.contains("invalid_token"), wrong, "{challenge}");
        assert!(!r.body.contains("dml_up"), "{auth:?}: {}", r.body);
    }
    let r = get_with(m0, "/metrics", &format!("Bearer {TOKEN}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse(&r.body).unwrap();
    assert_eq!(s.value("dml_up").unwrap(), 1.0);
    assert_eq!(s.value("dml_raft_leader_known").unwrap(), 0.0);

    // The other voters come (loopback, no token): a leader, and every agent is ready.
    let m1 = metric_addrs[1];
    c.spawn(spec(1, format!("\n[metrics]\nbind = \"{m1}\"\n")))
        .await
        .unwrap();
    assert!(
        !c.agents[1].stderr().contains("reachable from other hosts"),
        "a loopback endpoint was warned about"
    );
    c.spawn(spec(2, String::new())).await.unwrap();
    wait_answer(m0, "/readyz", 200, "ok").await.unwrap();
    wait_answer(m1, "/readyz", 200, "ok").await.unwrap();
    scrape(m1).unwrap();
    let r = http(m0, b"HEAD /readyz HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // Left the membership: alive but not ready; back after a join.
    c.agents[1]
        .dml(&["leave"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    wait_answer(m1, "/readyz", 503, "not joined to the membership")
        .await
        .unwrap();
    assert_eq!(get(m1, "/healthz").unwrap().status, 200);
    c.agents[1]
        .dml(&["join"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    wait_answer(m1, "/readyz", 200, "ok").await.unwrap();
}
