//! Dynamic batching on real agents with the tiny model: small jobs of one
//! model fill one batch and it goes as soon as it is full, long before its
//! `max_queue_delay`; a lone partial batch waits for the delay, then goes;
//! and a p99 target the model cannot meet makes the leader choose a smaller
//! batch, which `dml models` shows.
//!
//! Needs the binaries and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use anyhow::bail;
use dml_shared::infer::{InferRequest, InferResponse, JobState, RateInfo};
use dml_tests::infer::{Images, infer, prepare, submit, wait_job};
use dml_tests::sdfs::{READY, SdfsCluster, cluster_slot};
use std::net::SocketAddr;
use std::time::Duration;

/// Slack for a loaded two-core machine.
const BOUND: Duration = Duration::from_secs(120);
const DATASET: &str = "datasets/batching/";

async fn c1(at: SocketAddr) -> anyhow::Result<RateInfo> {
    match infer(at, InferRequest::Rates).await? {
        InferResponse::Rates(r) => r
            .into_iter()
            .find(|r| r.model == "tiny")
            .ok_or_else(|| anyhow::anyhow!("no rates for tiny")),
        other => bail!("rates answered {other:?}"),
    }
}

async fn done(at: SocketAddr, id: u64) -> dml_shared::infer::JobInfo {
    let j = wait_job(&[at], id, BOUND, "the job to finish", |j| {
        j.state != JobState::Running
    })
    .await
    .unwrap();
    assert_eq!(j.state, JobState::Done, "{j:?}");
    j
}

/// `dml set-batch-size tiny ARGS... --json`: what is in force.
async fn set(c: &SdfsCluster, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["set-batch-size", "tiny"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = c.dml(1, &all).await.unwrap();
    out.ensure_success().unwrap();
    out.json().unwrap()
}

#[tokio::test]
async fn dynamic_batching_fills_a_batch_within_max_queue_delay() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("infer-batching", 3).await.unwrap();
    let all: Vec<usize> = (0..c.len()).collect();
    c.leader_index(&all, READY).await.unwrap();
    let at = c.addrs[1];
    prepare(&c, 1, &["tiny"], DATASET, Images::Small(16))
        .await
        .unwrap();

    // Two jobs of 3 images with batches of up to 6 and a 60 s delay: the
    // first waits for more images, the second fills the batch, and it goes
    // at once as one model run.
    let v = set(&c, &["6", "--max-queue-delay", "60s"]).await;
    assert_eq!(
        (
            &v["batch_size"],
            &v["max_queue_delay_ms"],
            &v["effective_batch"]
        ),
        (&6.into(), &60_000.into(), &6.into()),
        "{v}"
    );
    let a = submit(at, "tiny", 3, DATASET).await.unwrap();
    let b = submit(at, "tiny", 3, DATASET).await.unwrap();
    for id in [a, b] {
        let j = done(at, id).await;
        assert_eq!((j.done, j.queries), (3, 1), "{j:?}");
        let waited = j.finished_ms.unwrap() - j.submitted_ms;
        assert!(
            waited < 60_000,
            "job {id} took {waited} ms: the full batch should not wait for the delay"
        );
    }
    let r = c1(at).await.unwrap();
    assert_eq!(
        (r.queries_total, r.mean_batch),
        (2, 6.0),
        "two queries in one batch of 6: {r:?}"
    );

    // A lone job of 5 with batches of up to 16: its partial batch waits
    // the 1.5 s delay for more images, then goes as one query.
    set(&c, &["16", "--max-queue-delay", "1500ms"]).await;
    let id = submit(at, "tiny", 5, DATASET).await.unwrap();
    let j = done(at, id).await;
    assert_eq!((j.done, j.queries), (5, 1), "{j:?}");
    let waited = j.finished_ms.unwrap() - j.submitted_ms;
    assert!(
        waited >= 1500,
        "job {id} finished {waited} ms after submission, before the delay"
    );

    // A p99 target of 1 ms, which no query of 16 images meets: once 20
    // queries of 16 are measured, the leader tries batches of 8, and shows
    // its choice; `+`/`-` and set-batch-size still set the largest batch.
    let v = set(
        &c,
        &["16", "--max-queue-delay", "0s", "--p99-target", "1ms"],
    )
    .await;
    assert_eq!(
        (&v["p99_target_ms"], &v["effective_batch"]),
        (&1.into(), &16.into()),
        "{v}"
    );
    let id = submit(at, "tiny", 320, DATASET).await.unwrap();
    let j = done(at, id).await;
    assert_eq!(j.queries, 20, "{j:?}");
    let out = c.dml(1, &["models", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let models = out.json().unwrap();
    let tiny = models
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "tiny"))
        .cloned()
        .expect("tiny in dml models");
    assert_eq!(
        (&tiny["batch_size"], &tiny["effective_batch"]),
        (&16.into(), &8.into()),
        "{tiny}"
    );
    let out = c.dml(1, &["models"]).await.unwrap();
    assert!(out.stdout.contains("8 of 16"), "{}", out.stdout);
    // Off again: the largest batch.
    let v = set(&c, &["--p99-target", "off"]).await;
    assert_eq!(
        (&v["p99_target_ms"], &v["effective_batch"]),
        (&serde_json::Value::Null, &16.into()),
        "{v}"
    );
}
