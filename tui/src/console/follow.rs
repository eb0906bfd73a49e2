//! The telemetry subscription: connects to an agent, reads its frames, moves
//! to the leader when the agent is not it, and when the agent stops
//! answering moves to the leader a [`LeaderRouter`] finds (asking the live
//! members the frames reported) or to another of those members, whichever
//! answers first (so finding the leader never delays a failover). Every step
//! becomes an [`Event`].
//!
//! A subscription is a stream, not a request, so frames do not go through
//! the router: it only keeps the leader the frames name, finds one when the
//! agent followed is lost, and paces the retries with its backoff.

use super::app::{ConnEvent, Event};
use dml_shared::api::{MemberInfo, MemberState, Request, Response};
use dml_shared::client::{connect, read_response, send_request, unexpected};
use dml_shared::conn::Conn;
use dml_shared::router::{self, AskAgents, BoxFuture, FindLeader, LeaderRouter, RouterOptions};
use dml_shared::telemetry::{Frame, MIN_INTERVAL_MS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Time allowed to connect and subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Time each member is given to say who leads.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// No frame for this long (several push periods) means the agent is gone.
const STALL: Duration = Duration::from_millis(MIN_INTERVAL_MS * 6);
/// An agent that failed is not followed as leader again for this long.
const SHUN: Duration = Duration::from_secs(10);
/// Pause after every candidate failed, growing (with jitter) to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why the agent followed gave no (more) frames.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Client(#[from] dml_shared::Error),
    #[error("no answer from {addr} within {timeout:?}")]
    NoAnswer { addr: SocketAddr, timeout: Duration },
    #[error("no frame for {0:?}")]
    Stalled(Duration),
}

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

/// Where to look after `lost` stopped answering: the candidates not failed
/// recently first, then those that did, then the start address; never
/// empty (`lost` itself when there is nobody else).
pub fn fallback_order(
    lost: SocketAddr,
    start: SocketAddr,
    candidates: &[SocketAddr],
    shunned: impl Fn(SocketAddr) -> bool,
) -> Vec<SocketAddr> {
    let (mut order, recent): (Vec<SocketAddr>, Vec<SocketAddr>) =
        candidates.iter().partition(|a| !shunned(**a));
    order.extend(recent);
    if !order.contains(&start) && start != lost {
        order.push(start);
    }
    if order.is_empty() {
        order.push(lost);
    }
    order
}

/// The leader found after `lost` stopped answering, if it is worth following:
/// not `lost` itself (a stale answer) and not failed recently.
pub fn usable_leader(
    found: Option<SocketAddr>,
    lost: SocketAddr,
    shunned: impl Fn(SocketAddr) -> bool,
) -> Option<SocketAddr> {
    found.filter(|l| *l != lost && !shunned(*l))
}

/// Finds the leader by asking the members the last frame named
/// ([`AskAgents`] over a list the follower keeps up to date).
struct AskMembers {
    members: watch::Receiver<Vec<SocketAddr>>,
}

impl FindLeader for AskMembers {
    fn find(&self) -> BoxFuture<'_, Option<SocketAddr>> {
        let ask = AskAgents::new(self.members.borrow().clone(), ASK_TIMEOUT);
        Box::pin(async move { ask.find().await })
    }
}

/// Opens a subscription.
pub async fn subscribe(addr: SocketAddr) -> Result<Conn, FollowError> {
    let open = async {
        let mut s = connect(addr).await?;
        send_request(&mut s, &Request::Subscribe).await?;
        Ok::<_, dml_shared::Error>(s)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FollowError::NoAnswer {
            addr,
            timeout: CONNECT_TIMEOUT,
        }),
    }
}

/// Reads the next frame.
pub async fn next_frame(s: &mut Conn) -> Result<Frame, FollowError> {
    match tokio::time::timeout(STALL, read_response(s)).await {
        Ok(Ok(Response::Telemetry(f))) => Ok(*f),
        Ok(Ok(other)) => Err(unexpected(other).into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(FollowError::Stalled(STALL)),
    }
}

/// Why a connection ended.
enum End {
    Lost(FollowError),
    Leader(SocketAddr),
}

/// Runs until `tx` closes: follows `start`, then whoever leads.
pub async fn run(start: SocketAddr, tx: mpsc::Sender<Event>) {
    let mut target = start;
    let mut candidates: Vec<SocketAddr> = Vec::new();
    let mut failed: HashMap<SocketAddr, Instant> = HashMap::new();
    let shunned = |failed: &HashMap<SocketAddr, Instant>, a: SocketAddr| {
        failed.get(&a).is_some_and(|t| t.elapsed() <= SHUN)
    };
    let (members, members_rx) = watch::channel(Vec::new());
    let router = LeaderRouter::finding(
        Arc::new(AskMembers {
            members: members_rx,
        }),
        RouterOptions::default(),
    );
    let mut backoff = router::backoff(BACKOFF_MIN, BACKOFF_MAX);
    let mut misses = 0usize;
    // A subscription opened while choosing whom to follow next.
    let mut opened: Option<Result<Conn, FollowError>> = None;
    loop {
        if tx
            .send(Event::Conn(ConnEvent::Connecting(target)))
            .await
            .is_err()
        {
            return;
        }
        let subscribed = match opened.take() {
            Some(r) => r,
            None => subscribe(target).await,
        };
        let end = match subscribed {
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
                    let alive = |a: SocketAddr| {
                        f.members
                            .iter()
                            .any(|m| m.id.addr == a && m.state == MemberState::Alive)
                    };
                    let leader = f
                        .leader
                        .as_ref()
                        .and_then(|l| l.leader)
                        .filter(|l| alive(*l));
                    if leader.is_some() {
                        router.set_leader(leader);
                    }
                    if tx.send(Event::Frame(Box::new(f.clone()))).await.is_err() {
                        return;
                    }
                    if let Some(l) = leader
                        && l != target
                        && !shunned(&failed, l)
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
                router.forget(target);
                let order = fallback_order(target, start, &candidates, |a| shunned(&failed, a));
                let ask: Vec<SocketAddr> = order
                    .iter()
                    .copied()
                    .filter(|a| !shunned(&failed, *a))
                    .collect();
                members.send_replace(ask);
                let fallback = order[misses % order.len()];
                misses += 1;
                if misses >= order.len() {
                    tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX)).await;
                    misses = 0;
                }
                // The leader the router finds, if it answers before the
                // fallback agent does; else the fallback, already subscribed.
                let find = router.find_leader();
                let open = subscribe(fallback);
                tokio::pin!(find, open);
                let mut asked = false;
                let next = loop {
                    tokio::select! {
                        found = &mut find, if !asked => {
                            asked = true;
                            match usable_leader(found, target, |a| shunned(&failed, a)) {
                                Some(l) if l != fallback => break l,
                                Some(_) => {}
                                // A stale or shunned answer is not kept.
                                None => router.set_leader(None),
                            }
                        }
                        r = &mut open => {
                            opened = Some(r);
                            break fallback;
                        }
                    }
                };
                let ev = ConnEvent::Lost {
                    from: target,
                    error: error.to_string(),
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

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn after_a_loss_recently_failed_agents_come_last_and_the_start_after_them() {
        let shunned = |x: SocketAddr| x == a(8002);
        let order = fallback_order(a(8001), a(8009), &[a(8002), a(8003)], shunned);
        assert_eq!(order, vec![a(8003), a(8002), a(8009)]);
        // Losing the start agent itself with nobody else known: retry it.
        assert_eq!(
            fallback_order(a(8001), a(8001), &[], |_| true),
            vec![a(8001)]
        );
        assert_eq!(
            fallback_order(a(8001), a(8001), &[a(8003)], |_| false),
            vec![a(8003)]
        );
    }

    #[test]
    fn the_found_leader_is_followed_unless_it_is_the_lost_or_a_failed_agent() {
        let shunned = |x: SocketAddr| x == a(8002);
        assert_eq!(
            usable_leader(Some(a(8003)), a(8001), shunned),
            Some(a(8003))
        );
        assert_eq!(
            usable_leader(Some(a(8001)), a(8001), shunned),
            None,
            "stale"
        );
        assert_eq!(
            usable_leader(Some(a(8002)), a(8001), shunned),
            None,
            "shunned"
        );
        assert_eq!(usable_leader(None, a(8001), shunned), None);
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
