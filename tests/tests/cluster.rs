//! Real `dml-agent` processes on 127.0.0.1: convergence, crash detection (SIGKILL),
//! a frozen agent (SIGSTOP) refuting its failure and reinstated, graceful exit (SIGTERM) and
//! joining while the introducer is still down; what systemd hears (readiness,
//! watchdog pings, stopping).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use dml_shared::NodeId;
use dml_tests::events::EventKind;
use dml_tests::ports::free_local_addr;
use dml_tests::view::{
    VIEW_POLL, check_not_failed, check_not_live, fmt_ids, live_members, state_of,
};
use dml_tests::view::{wait_converged, wait_not_live};
use dml_tests::{Agent, AgentSpec, Cluster, test_membership, wait_until};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Time for a cluster to converge after its agents start (or a member rejoins).
const CONVERGE: Duration = Duration::from_secs(30);
/// Time for a crashed, frozen or departed member to be removed by everyone. The timers of
/// [`test_membership`] detect a crash in about 3 s; the rest is slack for a loaded machine.
const REMOVE: Duration = Duration::from_secs(20);
/// Time for an agent to exit after a signal.
const EXIT: Duration = Duration::from_secs(10);

/// One check that every observer has logged `kind` for every one of `ids`.
fn check_logged(observers: &[&Agent], ids: &[NodeId], kind: EventKind) -> anyhow::Result<()> {
    for o in observers {
        let events = o.events()?;
        for id in ids {
            if !events.iter().any(|e| e.member == *id && e.event == kind) {
                anyhow::bail!("agent {} has not logged {kind:?} for {id}", o.name());
            }
        }
    }
    Ok(())
}

/// Panics if any observer has logged `kind` for `id`.
fn assert_never_logged(observers: &[&Agent], id: NodeId, kind: EventKind) {
    for o in observers {
        let bad: Vec<_> = o
            .events()
            .unwrap()
            .into_iter()
            .filter(|e| e.member == id && e.event == kind)
            .collect();
        assert!(
            bad.is_empty(),
            "agent {} logged {kind:?} for {id}: {bad:?}",
            o.name()
        );
    }
}

/// `k` agents that follow one another on the hash ring, starting after agent 0 (the
/// introducer, which stays up): the hardest case for a ring monitored by M = k successors.
fn consecutive_on_ring(c: &Cluster, k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.agents.len()).collect();
    order.sort_by_key(|&i| c.agents[i].id().ring_hash());
    let at = order.iter().position(|&i| i == 0).unwrap();
    (1..=k).map(|j| order[(at + j) % order.len()]).collect()
}

#[tokio::test]
async fn ten_agents_converge_on_the_same_ten_live_members() {
    let mut c = Cluster::start("converge-10", 10, test_membership())
        .await
        .unwrap();
    let t = Instant::now();
    let ids = c.wait_converged(CONVERGE).await.unwrap();
    eprintln!("10 agents converged in {:.1?}", t.elapsed());
    assert_eq!(ids.len(), 10);
    let started: BTreeSet<NodeId> = c.agents.iter().map(Agent::id).collect();
    assert_eq!(
        ids, started,
        "the live members are the agents as they started"
    );

    // The counters show a working detector, and nobody was lost on the way.
    let agents = &c.agents;
    wait_until("every agent to probe", CONVERGE, VIEW_POLL, async || {
        for a in agents {
            let s = a.client().stats().await?;
            anyhow::ensure!(s.probes_sent > 0, "agent {} has sent no probe", a.name());
        }
        Ok(())
    })
    .await
    .unwrap();
    for a in &c.agents {
        let s = a.client().stats().await.unwrap();
        assert!(s.packets_recv > 0, "agent {}: {s:?}", a.name());
        assert_eq!(s.members_live, 10, "agent {}: {s:?}", a.name());
        assert_eq!(
            (s.declared_failed, s.false_failures),
            (0, 0),
            "agent {}: {s:?}",
            a.name()
        );
    }
}

#[tokio::test]
async fn three_agents_killed_at_once_are_removed_by_all_seven_survivors() {
    let mut c = Cluster::start("sigkill-3", 10, test_membership())
        .await
        .unwrap();
    c.wait_converged(CONVERGE).await.unwrap();

    let victims = consecutive_on_ring(&c, 3);
    let dead = c.ids(&victims);
    for &v in &victims {
        c.agents[v].kill().unwrap();
    }
    let t = Instant::now();
    for &v in &victims {
        c.agents[v].wait_exit(EXIT).await.unwrap();
    }
    let survivors = c.others(&victims);
    wait_not_live(&survivors, &dead, REMOVE).await.unwrap();
    eprintln!(
        "{} removed by all 7 survivors {:.1?} after SIGKILL",
        fmt_ids(&dead),
        t.elapsed()
    );

    // Every survivor removed them as failed (not as having left), and no survivor lost
    // another survivor on the way.
    wait_until(
        "every survivor to log the failures",
        REMOVE,
        VIEW_POLL,
        async || check_logged(&survivors, &dead, EventKind::Failed),
    )
    .await
    .unwrap();
    let live = wait_converged(&survivors, CONVERGE).await.unwrap();
    assert_eq!(live.len(), 7);
    for &s in &survivors {
        assert_never_logged(&survivors, s.id(), EventKind::Failed);
    }
}

#[tokio::test]
async fn an_agent_frozen_past_the_suspicion_timeout_is_failed_then_refutes_and_is_reinstated() {
    let m = test_membership();
    let mut c = Cluster::start("sigstop", 5, m.clone()).await.unwrap();
    c.wait_converged(CONVERGE).await.unwrap();

    let v = 2;
    let old = c.agents[v].id();
    c.agents[v].stop().unwrap();
    let t = Instant::now();
    let others = c.others(&[v]);
    wait_not_live(&others, &[old], REMOVE).await.unwrap();
    let removed_after = t.elapsed();
    eprintln!("frozen {old} removed by the other 4 after {removed_after:.1?}");
    assert!(
        removed_after >= m.suspicion_min,
        "removed after {removed_after:?}, before the shortest suspicion ({:?})",
        m.suspicion_min
    );
    wait_until(
        "the others to log the failure",
        REMOVE,
        VIEW_POLL,
        async || check_logged(&others, &[old], EventKind::Failed),
    )
    .await
    .unwrap();

    // Thawed, it learns it was declared failed and refutes with a higher incarnation: the
    // others take it back under the same identity (a restart would be a new one).
    c.agents[v].cont().unwrap();
    let all: Vec<&Agent> = c.agents.iter().collect();
    let live = wait_converged(&all, CONVERGE).await.unwrap();
    assert!(live.contains(&old), "{old} is live everywhere again");
    assert_eq!(c.agents[v].current_id().await.unwrap(), old);
    wait_until(
        "the others to log the reinstatement",
        CONVERGE,
        VIEW_POLL,
        async || check_logged(&others, &[old], EventKind::Reinstated),
    )
    .await
    .unwrap();
    check_logged(&[&c.agents[v]], &[old], EventKind::Refuted).unwrap();
    check_not_failed(&all, &[old]).await.unwrap();
}

#[tokio::test]
async fn sigterm_exits_zero_and_the_others_see_a_leave_not_a_failure() {
    let mut c = Cluster::start("sigterm", 4, test_membership())
        .await
        .unwrap();
    c.wait_converged(CONVERGE).await.unwrap();

    let v = 2;
    let id = c.agents[v].id();
    c.agents[v].terminate().unwrap();
    let status = c.agents[v].wait_exit(EXIT).await.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    let others = c.others(&[v]);
    wait_until(
        "every other agent to log the leave",
        REMOVE,
        VIEW_POLL,
        async || check_logged(&others, &[id], EventKind::Left),
    )
    .await
    .unwrap();
    check_not_live(&others, &[id]).await.unwrap();
    for o in &others {
        let state = state_of(o.addr(), id).await.unwrap();
        assert!(
            state.is_none_or(|s| s == dml_shared::api::MemberState::Left),
            "agent {} lists {id} as {state:?}",
            o.name()
        );
    }
    // Well past a failure detection: a departed member must not be turned into a failed one.
    let deadline = c.membership().suspicion_timeout * 2;
    let t = Instant::now();
    while t.elapsed() < deadline {
        assert_never_logged(&others, id, EventKind::Failed);
        tokio::time::sleep(VIEW_POLL).await;
    }
    assert_never_logged(&others, id, EventKind::Failed);
    wait_converged(&others, CONVERGE).await.unwrap();
}

#[tokio::test]
async fn agents_started_while_the_introducer_is_down_join_once_it_comes_up() {
    let m = test_membership();
    let mut c = dml_tests::Cluster::new("introducer-down", m.clone()).unwrap();
    let intro = free_local_addr().unwrap();
    for i in 0..3 {
        let spec = AgentSpec::new(format!("j{i}"), m.clone()).introducer(intro);
        c.spawn(spec).await.unwrap();
    }
    // Alone while nobody answers at the introducer's address.
    for a in &c.agents {
        let live = live_members(a.addr()).await.unwrap();
        let others: Vec<_> = live.iter().filter(|id| **id != a.id()).collect();
        assert!(
            others.is_empty(),
            "agent {} already sees {others:?}",
            a.name()
        );
    }
    // Let the joiners back off to their longest retry wait before the introducer starts.
    tokio::time::sleep(m.join_backoff_max * 2).await;

    c.spawn(AgentSpec::new("introducer", m.clone()).bind(intro))
        .await
        .unwrap();
    let t = Instant::now();
    let live = c.wait_converged(CONVERGE).await.unwrap();
    eprintln!(
        "4 agents converged {:.1?} after the introducer came up",
        t.elapsed()
    );
    assert_eq!(live.len(), 4);
    assert!(live.iter().any(|id| id.addr == intro));
}

/// The notifications a `Type=notify` unit with `WatchdogSec=` gets: READY=1 with a status,
/// WATCHDOG=1 again and again while the agent runs, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn systemd_hears_readiness_watchdog_pings_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = dml_tests::TestDir::new("sd-notify").unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut spec = AgentSpec::new("a", test_membership());
    spec.env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    // A 400 ms watchdog: a ping every 100 ms.
    spec.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    let mut agent = Agent::start(spec, dir.path()).await.unwrap();
    let mut heard = Vec::<String>::new();
    let mut listen = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + CONVERGE;
        let mut buf = [0u8; 1024];
        while !done(&heard) {
            assert!(Instant::now() < deadline, "no {what}; heard {heard:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    listen("READY=1", &|h| {
        h.iter().any(|m| m.contains("READY=1\nSTATUS="))
    });
    let pings = |h: &[String]| h.iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    listen("five watchdog pings", &|h| pings(h) >= 5);
    agent.terminate().unwrap();
    listen("STOPPING=1", &|h| {
        h.iter().any(|m| m.contains("STOPPING=1"))
    });
    agent.wait_exit(EXIT).await.unwrap();
}
