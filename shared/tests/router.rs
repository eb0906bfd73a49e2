//! `LeaderRouter` against fake agents speaking the real wire protocol: each
//! answers by a rule of its own and counts the metadata requests it gets.

use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::auth::{self, ClusterKey};
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::control::ControlRequest;
use dml_shared::framing::DEFAULT_MAX_FRAME;
use dml_shared::router::{AskAgents, BoxFuture, FindLeader, LeaderRouter, RouterOptions};
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use dml_shared::wire::{self, Kind};
use dml_shared::{Error, Result};
use dml_shared::{ErrorKind, RemoteError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// How a fake agent answers the `n`th metadata request it gets (from 0);
/// `None` closes the connection without an answer.
/// The answer to a metadata request (sent `leader_only` or not), the `n`th seen.
type Rule = Arc<dyn Fn(&MetaRequest, bool, usize) -> Option<Response> + Send + Sync>;

struct Agent {
    addr: SocketAddr,
    metas: Arc<AtomicUsize>,
}

impl Agent {
    /// `leader` is what it answers to `Request::Leader`.
    async fn start(leader: Option<SocketAddr>, rule: Rule) -> Agent {
        auth::install(ClusterKey::from_bytes([6; auth::KEY_LEN])).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let metas = Arc::new(AtomicUsize::new(0));
        let seen = metas.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (rule, seen) = (rule.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = serve(s, leader, rule, seen).await;
                });
            }
        });
        Agent { addr, metas }
    }

    fn metas(&self) -> usize {
        self.metas.load(Ordering::SeqCst)
    }
}

async fn serve(
    s: TcpStream,
    leader: Option<SocketAddr>,
    rule: Rule,
    seen: Arc<AtomicUsize>,
) -> Result<()> {
    let mut s = Conn::accept(s, auth::installed()?).await?;
    while let Some(frame) = s.read_frame(DEFAULT_MAX_FRAME).await? {
        let answer = match wire::decode(Kind::Request, &frame)? {
            Request::Leader => Some(Response::Leader(LeaderInfo {
                leader,
                term: 1,
                voters: Vec::new(),
                is_voter: false,
                last_applied: None,
                applied_digest: None,
                unacked_ms: None,
                raft_ids: Vec::new(),
            })),
            Request::Control {
                req: ControlRequest::Sdfs(m),
                leader_only,
            } => {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                rule(&m, leader_only, n)
            }
            other => Some(Response::Error(RemoteError::invalid(format!(
                "fake agent does not serve {other:?}"
            )))),
        };
        let Some(answer) = answer else {
            return Ok(());
        };
        s.write_frame(&wire::encode(Kind::Response, &answer), DEFAULT_MAX_FRAME)
            .await?;
    }
    Ok(())
}

/// Serves `Count` (sent `leader_only` or not) with one file per request seen.
fn leads() -> Rule {
    Arc::new(|m, _, n| {
        let count = MetaResponse::Count {
            files: n as u64,
            versions: 0,
            bytes: 0,
        };
        match m {
            MetaRequest::Count => Some(Response::Control(count.into())),
            other => Some(Response::Error(RemoteError::invalid(format!(
                "not served: {other:?}"
            )))),
        }
    })
}

/// Answers every request `NotLeader`, naming `leader`.
fn redirects(leader: Option<SocketAddr>) -> Rule {
    Arc::new(move |_, _, _| Some(Response::NotLeader { leader }))
}

fn opts() -> RouterOptions {
    RouterOptions {
        call_timeout: Duration::from_secs(5),
        leader_wait: Duration::from_secs(20),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        local_socket: false,
        ..RouterOptions::default()
    }
}

/// Polls `cond` until it holds or 10 s have passed.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_redirect_is_followed_and_the_learned_leader_is_asked_directly() {
    let leader = Agent::start(None, leads()).await;
    let follower = Agent::start(Some(leader.addr), redirects(Some(leader.addr))).await;
    let router = LeaderRouter::through(follower.addr, opts());
    assert!(matches!(
        router.meta(MetaRequest::Count).await.unwrap(),
        MetaResponse::Count { .. }
    ));
    assert_eq!((follower.metas(), leader.metas()), (1, 1));
    eventually("the leader is learned", || {
        router.leader() == Some(leader.addr)
    })
    .await;
    for _ in 0..3 {
        router.meta(MetaRequest::Count).await.unwrap();
    }
    assert_eq!(follower.metas(), 1, "the follower is not asked again");
    assert_eq!(leader.metas(), 4);
}

#[tokio::test]
async fn an_unreachable_entry_agent_is_reported_at_once() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let router = LeaderRouter::through(dead, opts());
    let e = router.meta(MetaRequest::Count).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
}

#[tokio::test]
async fn a_dead_cached_leader_is_forgotten_and_the_entry_agent_asked() {
    let entry = Agent::start(None, leads()).await;
    let router = LeaderRouter::through(entry.addr, opts());
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    router.set_leader(Some(dead));
    router.meta(MetaRequest::Count).await.unwrap();
    assert_eq!(entry.metas(), 1);
    assert_ne!(router.leader(), Some(dead));
}

#[tokio::test]
async fn no_leader_means_waiting_until_one_is_elected() {
    let elected = Arc::new(Mutex::new(None::<SocketAddr>));
    let leader = Agent::start(None, leads()).await;
    let e = elected.clone();
    let follower = Agent::start(
        None,
        Arc::new(move |_, _, _| {
            Some(Response::NotLeader {
                leader: *e.lock().unwrap(),
            })
        }),
    )
    .await;
    let router = LeaderRouter::through(follower.addr, opts());
    let call = tokio::spawn(async move { router.meta(MetaRequest::Count).await });
    eventually("the follower is asked again", || follower.metas() >= 3).await;
    assert_eq!(leader.metas(), 0);
    *elected.lock().unwrap() = Some(leader.addr);
    call.await.unwrap().unwrap();
    assert_eq!(leader.metas(), 1);
}

#[tokio::test]
async fn a_lost_answer_is_asked_again_only_when_the_request_is_idempotent() {
    // The first request of each kind is delivered, but its answer is lost.
    let leader = Agent::start(
        None,
        Arc::new(|m, _, n| match (m, n) {
            (_, 0) => None,
            (MetaRequest::Count, _) => Some(Response::Control(MetaResponse::Done.into())),
            (other, _) => Some(Response::Error(RemoteError::invalid(format!(
                "not served: {other:?}"
            )))),
        }),
    )
    .await;
    let router = LeaderRouter::through(leader.addr, opts());
    let delete = MetaRequest::Delete { name: "x".into() };
    let e = router.meta(delete).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(leader.metas(), 1, "a delete is never sent twice");

    let leader = Agent::start(
        None,
        Arc::new(|_, _, n| (n > 0).then_some(Response::Control(MetaResponse::Done.into()))),
    )
    .await;
    let router = LeaderRouter::through(leader.addr, opts());
    assert_eq!(
        router.meta(MetaRequest::Count).await.unwrap(),
        MetaResponse::Done
    );
    assert_eq!(leader.metas(), 2);
}

#[tokio::test]
async fn a_refusal_is_reported_without_retrying() {
    let leader = Agent::start(
        None,
        Arc::new(|_, _, _| {
            Some(Response::Error(RemoteError::new(
                ErrorKind::Unavailable,
                "disk full",
            )))
        }),
    )
    .await;
    let router = LeaderRouter::through(leader.addr, opts());
    let e = router.meta(MetaRequest::Count).await.unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    assert_eq!(
        e.kind(),
        ErrorKind::Unavailable,
        "the kind crosses the wire"
    );
    assert_eq!(leader.metas(), 1);
}

/// Knows no leader for its first `blind` questions, then `leader`.
struct Finder {
    asked: AtomicUsize,
    blind: usize,
    leader: SocketAddr,
}

impl FindLeader for Finder {
    fn find(&self) -> BoxFuture<'_, Option<SocketAddr>> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { (n >= self.blind).then_some(self.leader) })
    }
}

#[tokio::test]
async fn a_router_without_entry_asks_its_finder_and_sends_only_at_leader() {
    let leader = Agent::start(
        None,
        Arc::new(|m, leader_only, _| match m {
            MetaRequest::Count if leader_only => Some(Response::Control(MetaResponse::Done.into())),
            other => Some(Response::Error(RemoteError::invalid(format!(
                "only leader_only: {other:?}"
            )))),
        }),
    )
    .await;
    let finder = Arc::new(Finder {
        asked: AtomicUsize::new(0),
        blind: 2,
        leader: leader.addr,
    });
    let router = LeaderRouter::finding(finder.clone(), opts());
    assert_eq!(
        router.meta(MetaRequest::Count).await.unwrap(),
        MetaResponse::Done
    );
    assert_eq!(finder.asked.load(Ordering::SeqCst), 3);
    assert_eq!(router.leader(), Some(leader.addr));
    // Known now: the finder is not asked again.
    router.meta(MetaRequest::Count).await.unwrap();
    assert_eq!(finder.asked.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn asking_agents_skips_the_unreachable_and_the_unknowing() {
    let leader = Agent::start(None, leads()).await;
    let unknowing = Agent::start(None, redirects(None)).await;
    let knowing = Agent::start(Some(leader.addr), redirects(Some(leader.addr))).await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let t = Duration::from_secs(5);
    let ask = AskAgents::new(vec![dead, unknowing.addr, knowing.addr], t);
    assert_eq!(ask.find().await, Some(leader.addr));
    assert_eq!(
        AskAgents::new(vec![dead, unknowing.addr], t).find().await,
        None
    );

    let router = LeaderRouter::finding(Arc::new(ask), opts());
    router.meta(MetaRequest::Count).await.unwrap();
    assert_eq!(
        (unknowing.metas(), knowing.metas(), leader.metas()),
        (0, 0, 1)
    );
}
