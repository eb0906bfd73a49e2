//! An agent whose every async worker is held busy with CPU-bound work for
//! 20 s is never suspected: its failure detector runs on a thread and
//! runtime of its own. Three real agents on 127.0.0.1; every wait polls a
//! condition against a deadline.

mod common;

use common::{TempDir, config, free_port};
use dml_agent::agent::Agent;
use dml_shared::api::MemberState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long every worker of the busy agent stays busy.
const BUSY: Duration = Duration::from_secs(20);
/// Longest wait for the group to form.
const SETTLE: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The busy agent's state in `observer`'s view.
async fn state_of(observer: &Agent, busy: SocketAddr) -> Option<MemberState> {
    let members = observer.membership().members().await?;
    members
        .iter()
        .filter(|m| m.id.addr == busy)
        .map(|m| m.state)
        .next()
}

#[test]
fn an_agent_with_every_async_worker_busy_is_never_suspected() {
    let dir = TempDir::new("busy");
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    // The busy agent on its own two-worker runtime (a 2-core host), the
    // observers on another.
    let busy_rt = runtime();
    let rt = runtime();
    let busy = busy_rt
        .block_on(Agent::start(&config(addrs[0], &addrs, &dir), true))
        .unwrap();
    let observers: Vec<Agent> = rt.block_on(async {
        let mut v = Vec::new();
        for a in &addrs[1..] {
            v.push(Agent::start(&config(*a, &addrs, &dir), true).await.unwrap());
        }
        v
    });
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let mut all = true;
            for o in &observers {
                all &= state_of(o, addrs[0]).await == Some(MemberState::Alive);
            }
            if all {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the group did not form"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let refuted_before = rt
        .block_on(busy.membership().stats())
        .expect("membership answers")
        .refuted;

    // Every worker of the busy agent's runtime spins, never yielding.
    let until = Instant::now() + BUSY;
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            busy_rt.spawn(async move {
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut looks = 0;
    rt.block_on(async {
        while Instant::now() < until {
            for o in &observers {
                let s = state_of(o, addrs[0]).await;
                assert_eq!(
                    s,
                    Some(MemberState::Alive),
                    "{} sees the busy agent as {s:?} after {:?}",
                    o.id.addr,
                    BUSY - until.saturating_duration_since(Instant::now())
                );
                looks += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(looks > 100, "the observers looked only {looks} times");
    // Nobody suspected it even briefly: it never had to refute a suspicion.
    let refuted_after = rt
        .block_on(busy.membership().stats())
        .expect("membership answers")
        .refuted;
    assert_eq!(
        refuted_after, refuted_before,
        "the busy agent was suspected and refuted it"
    );
    busy_rt.block_on(async {
        for s in spinners {
            s.await.unwrap();
        }
        busy.shutdown().await;
    });
    rt.block_on(async {
        for o in observers {
            o.shutdown().await;
        }
    });
}
