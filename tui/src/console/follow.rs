//! The telemetry subscription: connects to an agent, reads its frames, moves
//! to the leader when the agent is not it, and when the agent dies moves to
//! another live member it reported. Every step becomes an [`Event`].
//!
//! A subscription is a stream, not a request, so it does not go through
//! [`dml_shared::router::LeaderRouter`]: the leader it follows is the one
//! named in the frames. Pauses after every candidate failed use the router's
//! backoff.

use super::app::{ConnEvent, Event};
use dml_shared::api::{MemberInfo, MemberState, Request, Response};
use dml_shared::client::{connect, read_response, send_request, unexpected};
use dml_shared::conn::Conn;
use dml_shared::router;
use dml_shared::telemetry::{Frame, MIN_INTERVAL_MS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Time allowed to connect and subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// No frame for this long (several push periods) means the agent is gone.
const STALL: Duration = Duration::from_millis(MIN_INTERVAL_MS * 6);
/// An agent that failed is not followed as leader again for this long.
const SHUN: Duration = Duration::from_secs(10);
/// Pause after every candidate failed, growing (with jitter) to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Members worth failing over to, best first: alive before suspect, then by
/// address; never `current`, each address once.
pub fn failover_candidates(current: SocketAddr, members: &[MemberInfo]) -> Vec<SocketAddr> {
    let mut live: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| m.state.is_live() && m.id.addr != current)
        .collect();
    live.sort_by_key(|m| {
        (
            m.state != MemberState::Alive,
            m.id.addr,
            u64::MAX - m.id.started,
        )
    });
    let mut out: Vec<SocketAddr> = Vec::new();
    for m in live {
        if !out.contains(&m.id.addr) {
            out.push(m.id.addr);
        }
    }
    out
}

/// Opens a subscription.
pub async fn subscribe(addr: SocketAddr) -> Result<Conn, String> {
    let open = async {
        let mut s = connect(addr).await?;
        send_request(&mut s, &Request::Subscribe).await?;
        Ok::<_, dml_shared::Error>(s)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
    }
}

/// Reads the next frame.
pub async fn next_frame(s: &mut Conn) -> Result<Frame, String> {
    match tokio::time::timeout(STALL, read_response(s)).await {
        Ok(Ok(Response::Telemetry(f))) => Ok(*f),
        Ok(Ok(other)) => Err(unexpected(other).to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no frame for {STALL:?}")),
    }
}

/// Why a connection ended.
enum End {
    Lost(String),
    Leader(SocketAddr),
}

/// Runs until `tx` closes: follows `start`, then whoever leads.
pub async fn run(start: SocketAddr, tx: mpsc::Sender<Event>) {
    let mut target = start;
    let mut candidates: Vec<SocketAddr> = Vec::new();
    let mut failed: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut backoff = router::backoff(BACKOFF_MIN, BACKOFF_MAX);
    let mut misses = 0usize;
    loop {
        if tx
            .send(Event::Conn(ConnEvent::Connecting(target)))
            .await
            .is_err()
        {
            return;
        }
        let end = match subscribe(target).await {
            Err(e) => End::Lost(e),
            Ok(mut s) => {
                if tx
                    .send(Event::Conn(ConnEvent::Connected(target)))
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    let f = match next_frame(&mut s).await {
                        Ok(f) => f,
                        Err(e) => break End::Lost(e),
                    };
                    misses = 0;
                    backoff = router::backoff(BACKOFF_MIN, BACKOFF_MAX);
                    candidates = failover_candidates(target, &f.members);
                    let leader = f.leader.as_ref().and_then(|l| l.leader);
                    let live = |a: SocketAddr| {
                        f.members
                            .iter()
                            .any(|m| m.id.addr == a && m.state == MemberState::Alive)
                    };
                    if tx.send(Event::Frame(Box::new(f.clone()))).await.is_err() {
                        return;
                    }
                    if let Some(l) = leader
                        && l != target
                        && live(l)
                        && failed.get(&l).is_none_or(|t| t.elapsed() > SHUN)
                    {
                        break End::Leader(l);
                    }
                }
            }
        };
        match end {
            End::Leader(l) => {
                let ev = ConnEvent::FollowLeader {
                    from: target,
                    to: l,
                };
                if tx.send(Event::Conn(ev)).await.is_err() {
                    return;
                }
                target = l;
            }
            End::Lost(error) => {
                failed.insert(target, Instant::now());
                // Candidates not failed recently first; the start address last.
                let (mut order, recent): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
                    .iter()
                    .partition(|a| failed.get(a).is_none_or(|t| t.elapsed() > SHUN));
                order.extend(recent);
                if !order.contains(&start) && start != target {
                    order.push(start);
                }
                if order.is_empty() {
                    order.push(target);
                }
                let next = order[misses % order.len()];
                misses += 1;
                if misses >= order.len() {
                    tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX)).await;
                    misses = 0;
                }
                let ev = ConnEvent::Lost {
                    from: target,
                    error,
                    next,
                };
                if tx.send(Event::Conn(ev)).await.is_err() {
                    return;
                }
                target = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::NodeId;

    fn m(port: u16, started: u64, state: MemberState) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(SocketAddr::from(([127, 0, 0, 1], port)), started),
            state,
            incarnation: 0,
            last_heard_ms: None,
            monitors: vec![],
        }
    }

    #[test]
    fn failover_prefers_alive_members_and_skips_dead_and_self() {
        let me = SocketAddr::from(([127, 0, 0, 1], 8001));
        let members = [
            m(8001, 1, MemberState::Alive),
            m(8005, 1, MemberState::Suspect),
            m(8003, 1, MemberState::Failed),
            m(8004, 1, MemberState::Alive),
            m(8002, 1, MemberState::Left),
            m(8004, 2, MemberState::Alive),
        ];
        let ports: Vec<u16> = failover_candidates(me, &members)
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(ports, vec![8004, 8005]);
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_reported_lost_and_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        use dml_shared::auth::{ClusterKey, KEY_LEN, install};
        install(ClusterKey::from_bytes([4; KEY_LEN])).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(run(addr, tx));
        assert!(matches!(
            rx.recv().await,
            Some(Event::Conn(ConnEvent::Connecting(a))) if a == addr
        ));
        match rx.recv().await {
            Some(Event::Conn(ConnEvent::Lost { from, error, next })) => {
                assert_eq!((from, next), (addr, addr));
                assert!(error.contains("cannot reach agent"), "{error}");
            }
            other => panic!("expected Lost, got {other:?}"),
        }
        task.abort();
    }
}
