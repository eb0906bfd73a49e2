//! A voter restarted on an empty data directory, with real agents: it must not reuse its
//! Raft node id (its votes and entries are gone), so it rejoins under a new one and the
//! leader replaces the old. Shown by its quorum: once replaced, it and two other voters
//! of five commit without the other two.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use dml_agent::control::types::voter_id;
use dml_tests::sdfs::{READY, SDFS_POLL, SdfsCluster, SdfsOptions, api, cluster_slot};
use dml_tests::{wait_for, wait_until};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound on the wiped voter being a voter again: detection of its restart, catching up as
/// a learner, and two membership entries; the rest is slack for a loaded two-core machine.
const REJOIN_BOUND: Duration = Duration::from_secs(60);

/// The Raft voters as agent `i` holds them.
async fn raft_ids(c: &SdfsCluster, i: usize) -> anyhow::Result<Vec<(u64, SocketAddr)>> {
    Ok(api::leader_info(c.addrs[i]).await?.raft_ids)
}

#[tokio::test]
async fn a_voter_wiped_and_restarted_rejoins_under_a_new_id_and_counts_for_quorum() {
    let _slot = cluster_slot().await;
    let mut opts = SdfsOptions::new(5);
    opts.control.voters = Vec::new();
    let mut c = SdfsCluster::start_with("voter-wiped", opts).await.unwrap();
    assert_eq!(c.voter_indices(), vec![0, 1, 2, 3, 4]);
    let before = wait_for(
        "five voters in the Raft config",
        READY,
        SDFS_POLL,
        async || {
            let ids = raft_ids(&c, 1).await?;
            anyhow::ensure!(ids.len() == 5, "{ids:?}");
            Ok(ids)
        },
    )
    .await
    .unwrap();
    // Voters that started together all took their bootstrap ids: none found the cluster
    // made already and rejoined.
    for (id, a) in &before {
        assert_eq!(*id, voter_id(*a), "{a} started under a new id: {before:?}");
    }
    let old_id = before.iter().find(|(_, a)| *a == c.addrs[0]).unwrap().0;
    c.must_put(1, "before", b"written before the wipe")
        .await
        .unwrap();

    // Agent 0, the voter that creates the cluster, loses its whole data directory. It
    // must neither create a second cluster nor reuse its id.
    c.kill(0).await.unwrap();
    let data = c.data_dir(0);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    c.restart(0).await.unwrap();
    c.wait_answering(0, READY).await.unwrap();

    let after = wait_for(
        "agent 0 a voter again",
        REJOIN_BOUND,
        SDFS_POLL,
        async || {
            // Its own view and a survivor's agree: five voters, agent 0 under a new id.
            let mine = raft_ids(&c, 0).await?;
            let theirs = raft_ids(&c, 1).await?;
            let addrs: BTreeSet<SocketAddr> = theirs.iter().map(|(_, a)| *a).collect();
            anyhow::ensure!(
                theirs.len() == 5 && addrs.len() == 5 && mine == theirs,
                "agent 0 holds {mine:?}, agent 1 {theirs:?}"
            );
            Ok(theirs)
        },
    )
    .await
    .unwrap();
    let new_id = after.iter().find(|(_, a)| *a == c.addrs[0]).unwrap().0;
    assert_ne!(new_id, old_id, "the wiped voter reused its Raft id");
    for (id, a) in &before {
        if *a != c.addrs[0] {
            assert!(
                after.contains(&(*id, *a)),
                "{a} lost its id {id}: {after:?}"
            );
        }
    }
    let info = api::leader_info(c.addrs[1]).await.unwrap();
    assert!(info.term > 0 && info.leader.is_some(), "{info:?}");

    // Two other voters die. Only with agent 0 counted under its new id do three of the
    // five remain; the put commits and everything reads back through agent 0.
    let leader = c.leader_index(&[0, 1, 2, 3, 4], READY).await.unwrap();
    let victims: Vec<usize> = [1, 2, 3, 4]
        .into_iter()
        .filter(|i| *i != leader)
        .take(2)
        .collect();
    for &v in &victims {
        c.kill(v).await.unwrap();
    }
    let alive: Vec<usize> = (0..5).filter(|i| !victims.contains(i)).collect();
    c.wait_leader(&alive, REJOIN_BOUND).await.unwrap();
    // Until membership declares the two failed, a put's plan may still name them.
    wait_until(
        "a put through the three",
        REJOIN_BOUND,
        SDFS_POLL,
        async || {
            c.must_put(
                0,
                "after",
                b"written by a quorum that needs the rejoined voter",
            )
            .await
            .map(drop)
        },
    )
    .await
    .unwrap();
    c.must_get(0, "before", b"written before the wipe")
        .await
        .unwrap();
    c.must_get(
        0,
        "after",
        b"written by a quorum that needs the rejoined voter",
    )
    .await
    .unwrap();
}

/// A vote request from a Raft node id no voter holds (a key holder that is not a voter) is
/// refused, and no voter's term moves to the one it asked for.
#[tokio::test]
async fn a_vote_request_from_a_node_that_is_not_a_voter_is_refused_and_moves_no_term() {
    use dml_agent::control::network::{RaftMessage, RaftReply, RaftRpc};
    use dml_shared::api::{Request, Response};
    use openraft::Vote;
    use openraft::raft::VoteRequest;
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("vote-stranger", 3).await.unwrap();
    let target = c.addrs[1];
    let term = api::leader_info(target).await.unwrap().term;
    let asked = term + 50;
    let msg = RaftMessage {
        to: voter_id(target),
        rpc: RaftRpc::Vote(VoteRequest::new(Vote::new(asked, 0xdead_beef), None)),
    };
    let bytes = postcard::to_allocvec(&msg).unwrap();
    let answer = dml_shared::client::Client::new(target)
        .call(&Request::Raft(bytes))
        .await
        .unwrap();
    let Response::Raft(b) = answer else {
        panic!("answered {answer:?}")
    };
    match postcard::from_bytes::<RaftReply>(&b).unwrap() {
        RaftReply::Failed(m) => assert!(m.contains("not a voter"), "{m}"),
        other => panic!("a stranger's vote request got {other:?}"),
    }
    for a in &c.addrs {
        let t = api::leader_info(*a).await.unwrap().term;
        assert!(t < asked, "{a} moved to term {t}");
    }
}
