//! C1 and C2 on real agents with the tiny model: every completed query is
//! counted exactly once (the last one of each job too), C2 splits each
//! query's time into queue and compute, and a new leader rebuilds C2 from
//! the workers' own histograms after the old one is SIGKILLed (less the
//! queries the dead agent's own worker ran: its histograms died with it).
//!
//! Needs the binaries and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use anyhow::bail;
use dml_shared::infer::{InferRequest, InferResponse, JobState, LatencyInfo, RateInfo};
use dml_tests::infer::{Images, infer, prepare, set_batch, submit, wait_job};
use dml_tests::sdfs::{READY, SdfsCluster, cluster_slot};
use dml_tests::wait::wait_for;
use std::net::SocketAddr;
use std::time::Duration;

/// Slack for a loaded two-core machine and a fail-over.
const BOUND: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
const DATASET: &str = "datasets/c2/";

async fn c2(at: SocketAddr) -> anyhow::Result<Option<LatencyInfo>> {
    match infer(at, InferRequest::Latency).await? {
        InferResponse::Latency(l) => Ok(l.into_iter().find(|l| l.model == "tiny")),
        other => bail!("latency answered {other:?}"),
    }
}

async fn c1(at: SocketAddr) -> anyhow::Result<RateInfo> {
    match infer(at, InferRequest::Rates).await? {
        InferResponse::Rates(r) => r
            .into_iter()
            .find(|r| r.model == "tiny")
            .ok_or_else(|| anyhow::anyhow!("no rates for tiny")),
        other => bail!("rates answered {other:?}"),
    }
}

#[tokio::test]
async fn c2_counts_every_query_of_odd_sized_jobs_and_survives_a_leader_kill() {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("infer-c2", 4).await.unwrap();
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await.unwrap();
    let via = (0..c.len()).find(|i| *i != leader).unwrap();
    let at = c.addrs[via];
    prepare(&c, via, &["tiny"], DATASET, Images::Sample(24))
        .await
        .unwrap();
    set_batch(at, "tiny", 4).await.unwrap();

    // 8, 15 and 7 images at batch 4: 2 + 4 + 2 queries, the last of the
    // second and third jobs short.
    let mut queries = 0;
    let mut by_leader = 0;
    for n in [8, 15, 7] {
        let id = submit(at, "tiny", n, DATASET).await.unwrap();
        let j = wait_job(&[at], id, BOUND, "the job to finish", |j| {
            j.state != JobState::Running
        })
        .await
        .unwrap();
        assert_eq!((j.state, j.done), (JobState::Done, n), "{j:?}");
        queries += j.queries;
        // The completion that ended the job is in C1 and C2 as it answers.
        let l = c2(at).await.unwrap().expect("C2 of tiny");
        assert_eq!(l.count, queries, "C2 after job {id}: {l:?}");
        let r = c1(at).await.unwrap();
        assert_eq!(r.queries_total, queries, "C1 after job {id}: {r:?}");
        let InferResponse::Job(detail) = infer(at, InferRequest::Job { job: id }).await.unwrap()
        else {
            panic!("dml job answers the job");
        };
        by_leader += detail
            .workers
            .iter()
            .filter(|w| w.worker == c.addrs[leader])
            .map(|w| w.queries)
            .sum::<u64>();
    }
    assert_eq!(queries, 2 + 4 + 2);
    let before = c2(at).await.unwrap().unwrap();
    // Queue and compute are both measured and add up to the query time
    // (histograms keep three significant digits).
    assert!(before.compute.mean_ms > 0.0, "{before:?}");
    let sum = before.queue.mean_ms + before.compute.mean_ms;
    assert!(
        (before.mean_ms - sum).abs() <= 0.01 * before.mean_ms + 0.01,
        "{before:?}"
    );

    // A new leader has C2 back from the workers' reports, not from zero.
    c.kill(leader).await.unwrap();
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = c.leader_index(&survivors, READY).await.unwrap();
    assert_ne!(new_leader, leader);
    let survived = queries - by_leader;
    eprintln!("{by_leader} of {queries} queries ran on the killed leader");
    let after = wait_for(
        "C2 rebuilt by the new leader",
        BOUND,
        POLL,
        async || match c2(at).await {
            Ok(l) if l.as_ref().map_or(0, |l| l.count) >= survived => Ok(l),
            other => bail!("not yet: {other:?}"),
        },
    )
    .await
    .unwrap();
    assert_eq!(after.as_ref().map_or(0, |l| l.count), survived, "{after:?}");
    // C1's totals are in Raft: exact.
    assert_eq!(c1(at).await.unwrap().queries_total, queries);
    // The old leader's own queries are gone with it, so the spread may
    // differ; the other workers' are all there.
    if let Some(after) = after {
        assert!(after.max_ms <= before.max_ms + 0.01, "{before:?} {after:?}");
    }
}
