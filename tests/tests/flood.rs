//! No denial of service before authentication, with real agents: 2,000 connections that
//! never authenticate, from one address, held and reopened against the leader, while a
//! client on another address asks it for the members over new TCP connections, a put
//! commits, and the leader keeps its term.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use dml_shared::api::{Request, Response};
use dml_shared::client::Client;
use dml_tests::flood::{FLOODER, Flood};
use dml_tests::sdfs::{READY, SdfsCluster, api, cluster_slot};
use std::time::{Duration, Instant};

/// Connections the flood holds open at once.
const FLOOD: usize = 2000;
/// How long commands run under the flood.
const UNDER_FLOOD: Duration = Duration::from_secs(10);
/// Bound on one `members` call under the flood: the answer must come, not a refusal.
const CALL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unauthenticated_connections_held_and_reopened_leave_the_cluster_serving() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("flood", 5).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    let leader = c.leader_index(&all, READY).await.unwrap();
    let target = c.addrs[leader];
    let term = api::leader_info(target).await.unwrap().term;

    let f = Flood::start(target, FLOOD, FLOODER);
    // The flood is up before the client starts.
    let t = Instant::now();
    while f.opened() < FLOOD as u64 && t.elapsed() < READY {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // New TCP connections from 127.0.0.1, each asking for the members.
    let mut latencies = Vec::new();
    let mut put = false;
    let end = Instant::now() + UNDER_FLOOD;
    while Instant::now() < end {
        let t = Instant::now();
        let r = Client::new(target)
            .with_timeout(CALL)
            .call(&Request::Members)
            .await;
        match r {
            Ok(Response::Members(m)) => assert_eq!(m.len(), 5, "{m:?}"),
            other => panic!("members under the flood: {other:?}"),
        }
        latencies.push(t.elapsed());
        if !put {
            c.must_put(leader, "under-flood", b"put while the leader is flooded")
                .await
                .unwrap();
            put = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = api::leader_info(target).await.unwrap();
    let (opened, closed) = (f.opened(), f.closed());
    drop(f);
    latencies.sort();
    eprintln!(
        "{} flood connections opened, {} closed by the agent; {} members calls, p50 {:?}, max {:?}",
        opened,
        closed,
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert!(
        opened >= FLOOD as u64,
        "the flood never reached {FLOOD} connections"
    );
    assert_eq!(
        (after.leader, after.term),
        (Some(target), term),
        "the leader lost its term under the flood"
    );
    c.must_get(
        (leader + 1) % 5,
        "under-flood",
        b"put while the leader is flooded",
    )
    .await
    .unwrap();
}
