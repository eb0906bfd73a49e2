//! Three real agents (TCP and UDP on 127.0.0.1) running the control plane:
//! election, a write visible on every voter, failover after the leader
//! stops, and a minority that cannot commit. Every wait polls a condition
//! against a deadline.

mod common;

use common::{TempDir, config, free_port};
use dml_agent::agent::Agent;
use dml_shared::api::Response;
use dml_shared::config::{Config, Preset};
use dml_shared::control::ControlResponse;
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the cluster to settle after a change.
const SETTLE: Duration = Duration::from_secs(20);

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader every given agent agrees on.
async fn agreed_leader(agents: &[&Agent]) -> SocketAddr {
    poll("a leader all agree on", async || {
        let mut seen = None;
        for a in agents {
            let l = a.control().leader_info().await.leader?;
            if seen.is_some_and(|s| s != l) {
                return None;
            }
            seen = Some(l);
        }
        seen.filter(|l| agents.iter().any(|a| a.id.addr == *l))
    })
    .await
}

fn live(agents: &[Option<Agent>]) -> Vec<&Agent> {
    agents.iter().flatten().collect()
}

/// A put whose bytes are on those of `holders` in the planned chain (the
/// leader refuses holders it did not plan).
async fn put(agent: &Agent, name: &str, holders: &[SocketAddr]) -> Result<u64, String> {
    let (version, plan, chain) = begin(agent, name).await?;
    let holders: Vec<SocketAddr> = holders
        .iter()
        .filter(|h| chain.contains(h))
        .copied()
        .collect();
    commit(agent, name, version, plan, &holders).await
}

/// A put's plan: its version, the plan's id and the chain.
async fn begin(agent: &Agent, name: &str) -> Result<(u64, u64, Vec<SocketAddr>), String> {
    let begin = MetaRequest::BeginPut {
        name: name.into(),
        size: 3,
    };
    match agent.control().meta(begin).await {
        Response::Control(ControlResponse::Sdfs(MetaResponse::PutPlan {
            version,
            chain,
            plan,
            ..
        })) => {
            assert!(!chain.is_empty());
            Ok((version, plan, chain))
        }
        Response::Error(e) => Err(e.message),
        other => panic!("BeginPut: {other:?}"),
    }
}

async fn commit(
    agent: &Agent,
    name: &str,
    version: u64,
    plan: u64,
    holders: &[SocketAddr],
) -> Result<u64, String> {
    let commit = MetaRequest::CommitPut {
        name: name.into(),
        version,
        checksum: [9; 32],
        holders: holders.to_vec(),
        plan,
    };
    match agent.control().meta(commit).await {
        Response::Control(ControlResponse::Sdfs(MetaResponse::Committed { version })) => {
            Ok(version)
        }
        Response::Error(e) => Err(e.message),
        other => panic!("CommitPut: {other:?}"),
    }
}

fn committed_version(agent: &Agent, name: &str) -> Option<u64> {
    agent
        .control()
        .with_state(|s| s.stat(name).map(|f| f.versions.last().unwrap().version))
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_replicate_fail_over_and_a_minority_cannot_commit() {
    let dir = TempDir::new("control-raft");
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut agents = Vec::new();
    for a in &addrs {
        agents.push(Some(
            Agent::start(&config(*a, &addrs, &dir), true).await.unwrap(),
        ));
    }
    // A fourth agent that does not vote: it forwards.
    let outsider_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut oc = config(outsider_addr, &addrs, &dir);
    oc.nodes.push(outsider_addr);
    let outsider = Agent::start(&oc, true).await.unwrap();

    // Election.
    let leader = agreed_leader(&live(&agents)).await;

    // A write through a follower is forwarded, committed and applied everywhere.
    let follower = live(&agents)
        .into_iter()
        .find(|a| a.id.addr != leader)
        .unwrap();
    assert_eq!(put(follower, "a", &addrs).await, Ok(1));
    let info = poll("the outsider to know the leader", async || {
        let i = outsider.control().leader_info().await;
        i.leader.is_some().then_some(i)
    })
    .await;
    assert_eq!((info.leader, info.is_voter), (Some(leader), false));
    assert_eq!(info.voters, addrs);
    assert_eq!(put(&outsider, "a", &addrs).await, Ok(2));
    poll("version 2 of a on every voter", async || {
        live(&agents)
            .iter()
            .all(|a| committed_version(a, "a") == Some(2))
            .then_some(())
    })
    .await;
    match follower
        .control()
        .meta(MetaRequest::Stat {
            name: "nope".into(),
        })
        .await
    {
        Response::Error(e) => {
            assert_eq!(e.kind, dml_shared::ErrorKind::NotFound, "{e}");
            assert!(e.message.contains("no such SDFS file \"nope\""), "{e}");
        }
        other => panic!("stat of a missing file: {other:?}"),
    }

    // A plan left open across the failover, and one that committed.
    let (open_version, open_plan, _) = begin(follower, "z").await.unwrap();
    let (a3, a3_plan, a3_chain) = begin(follower, "a").await.unwrap();
    assert_eq!(commit(follower, "a", a3, a3_plan, &a3_chain).await, Ok(3));

    // Failover: stop the leader; the other two elect a new one and keep writing.
    let idx = addrs.iter().position(|a| *a == leader).unwrap();
    agents[idx].take().unwrap().shutdown().await;
    let new_leader = agreed_leader(&live(&agents)).await;
    assert_ne!(new_leader, leader);
    let writer = live(&agents)[0];
    // The new leader gives the open plan's number to a plan of its own; the
    // old plan's commit is refused and the new one commits.
    let (z, z_plan, z_chain) = begin(writer, "z").await.unwrap();
    assert_eq!(z, open_version, "the old plan never reached the log");
    assert_ne!(z_plan, open_plan);
    let e = commit(writer, "z", open_version, open_plan, &addrs)
        .await
        .unwrap_err();
    assert!(e.contains("planned by an earlier leader"), "{e}");
    assert_eq!(commit(writer, "z", z, z_plan, &z_chain).await, Ok(z));
    // A commit asked again after the leader changed is answered.
    assert_eq!(commit(writer, "a", a3, a3_plan, &a3_chain).await, Ok(3));
    assert_eq!(put(writer, "b", &addrs).await, Ok(1));
    poll("b on both survivors", async || {
        live(&agents)
            .iter()
            .all(|a| committed_version(a, "b") == Some(1))
            .then_some(())
    })
    .await;

    // Minority: one voter of three left. Nothing can commit, nothing is applied.
    let idx = addrs.iter().position(|a| *a == new_leader).unwrap();
    agents[idx].take().unwrap().shutdown().await;
    let last = live(&agents)[0];
    let applied_before = last.control().leader_info().await.last_applied;
    let started = Instant::now();
    let err = put(last, "c", &addrs).await.unwrap_err();
    assert!(
        err.contains("majority") || err.contains("leader"),
        "unexpected error: {err}"
    );
    assert!(started.elapsed() < SETTLE, "the refusal took too long");
    assert_eq!(
        last.control().with_state(|s| s.version("c", 1).cloned()),
        Some(None)
    );
    assert_eq!(committed_version(last, "b"), Some(1));
    assert_eq!(
        last.control().leader_info().await.last_applied,
        applied_before
    );

    for a in agents.into_iter().flatten() {
        a.shutdown().await;
    }
    outsider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_voter_keeps_its_state_and_the_log_stays_bounded() {
    let dir = TempDir::new("snap");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut c = config(addr, &[addr], &dir);
    c.control.snapshot_every = 5;
    let agent = Agent::start(&c, true).await.unwrap();
    agreed_leader(&[&agent]).await;
    for i in 0..24 {
        assert_eq!(put(&agent, &format!("f{i}"), &[addr]).await, Ok(1));
    }
    // 24 entries and more (a small put is one): several snapshots, the log
    // purged behind them.
    let status = poll("a snapshot and a purge", async || {
        let s = agent.control().log_status()?;
        (s.snapshot? >= 20 && s.purged.is_some()).then_some(s)
    })
    .await;
    let kept = status.last_log_index.unwrap() - status.purged.unwrap();
    assert!(kept <= 2 * 5 + 2, "{kept} entries kept: {status:?}");
    let before = agent.control().with_state(|s| s.count()).unwrap();
    agent.shutdown().await;

    let agent = Agent::start(&c, true).await.unwrap();
    agreed_leader(&[&agent]).await;
    poll("the state back after a restart", async || {
        (agent.control().with_state(|s| s.count()) == Some(before)).then_some(())
    })
    .await;
    assert_eq!(before, (24, 24, 72));
    // Version numbers continue where they were.
    assert_eq!(put(&agent, "f0", &[addr]).await, Ok(2));
    agent.shutdown().await;
}

#[tokio::test]
async fn without_voters_metadata_requests_fail_clearly() {
    let dir = TempDir::new("none");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut c = Config::preset(Preset::Local);
    c.bind = addr;
    c.data_dir = dir.0.clone();
    let agent = Agent::start(&c, true).await.unwrap();
    match agent.control().meta(MetaRequest::Count).await {
        Response::Error(e) => {
            assert_eq!(e.kind, dml_shared::ErrorKind::Refused, "{e}");
            assert!(e.message.contains("no voters are configured"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(agent.control().leader_info().await.leader, None);
    agent.shutdown().await;
}
