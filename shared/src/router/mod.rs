//! The one way to the control-plane leader, for clients, agents and the
//! console: [`LeaderRouter`] gets a control-plane request to the Raft
//! leader. It follows `NotLeader` redirects, caches the leader it learns
//! (and sends straight there, `leader_only`), keeps one pool of idle
//! connections (also lent to the data path), and retries what is safe to
//! retry with a capped, jittered exponential backoff until a deadline.
//!
//! - [`route`]: the decisions for one request, a synchronous core fed the
//!   outcome of each attempt and the time.
//! - this file: the driver doing the IO, the leader cache and the pool, and
//!   [`into_control`], the one place an agent's answer becomes a result.

pub mod route;

use crate::api::{LeaderInfo, Request, Response};
pub use crate::client::into_control;
use crate::client::{Client, read_response, send_request, unexpected};
use crate::conn::{Conn, IdleConns};
use crate::control::{ControlRequest, ControlResponse};
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::sdfs::{MetaRequest, MetaResponse};
use backon::BackoffBuilder;
use route::{Hop, Outcome, Route, Step};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timeouts, pauses and sizes of a router.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Time allowed to connect, and then for one answer.
    pub call_timeout: Duration,
    /// How long one request keeps trying while no leader answers (an election).
    pub leader_wait: Duration,
    /// How long a new connection may take (at most `call_timeout`): an agent cut off by a
    /// network that drops packets never refuses, and nothing was sent to it yet, so the
    /// request goes elsewhere soon rather than after a whole call's time.
    pub connect_timeout: Duration,
    /// First pause between attempts; each next one doubles, up to
    /// `max_backoff`, and each gets up to as much again of random jitter.
    pub min_backoff: Duration,
    /// Longest pause between attempts, before jitter.
    pub max_backoff: Duration,
    /// Idle connections kept, all agents together.
    pub pool_size: usize,
    /// Connect through an agent's local socket when it runs on this host
    /// (a client's bulk data), else always over TCP.
    pub local_socket: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            leader_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            pool_size: 16,
            local_socket: true,
        }
    }
}

/// Pauses doubling from `min` to `max`, each with up to as much again of
/// random jitter, without end.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A boxed future, for [`FindLeader`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a router without an entry agent learns who leads (an agent reads its
/// Raft metrics, or asks the voters).
pub trait FindLeader: Send + Sync {
    /// The leader as best known now; `None` while nobody knows.
    fn find(&self) -> BoxFuture<'_, Option<SocketAddr>>;
}

/// Finds the leader by asking agents in turn who leads (`Request::Leader`):
/// the first that names one wins (a non-voter asking the voters).
pub struct AskAgents {
    agents: Vec<SocketAddr>,
    timeout: Duration,
}

impl AskAgents {
    /// Asks `agents` in this order, allowing each `timeout` to answer.
    pub fn new(agents: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { agents, timeout }
    }
}

impl FindLeader for AskAgents {
    fn find(&self) -> BoxFuture<'_, Option<SocketAddr>> {
        Box::pin(async move {
            for a in &self.agents {
                let mut c = Client::new(*a).with_timeout(self.timeout);
                if let Ok(LeaderInfo {
                    leader: Some(l), ..
                }) = c.leader().await
                {
                    return Some(l);
                }
            }
            None
        })
    }
}

/// How requests reach the leader while it is not known.
enum Way {
    /// Through this agent, which forwards them; it is asked who leads in the
    /// background.
    Entry(SocketAddr),
    /// Only `leader_only`, to whoever this names.
    Find(Arc<dyn FindLeader>),
}

struct Inner {
    way: Way,
    opts: RouterOptions,
    pool: IdleConns,
    /// The leader last seen answering.
    leader: Mutex<Option<SocketAddr>>,
    /// A background question to the entry agent is under way.
    learning: AtomicBool,
}

/// Sends metadata requests to the leader. Cheap to clone; clones share the
/// leader last seen and the idle connections.
#[derive(Clone)]
pub struct LeaderRouter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaderRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entry = match &self.inner.way {
            Way::Entry(a) => Some(*a),
            Way::Find(_) => None,
        };
        f.debug_struct("LeaderRouter")
            .field("entry", &entry)
            .field("leader", &self.leader())
            .finish()
    }
}

/// What became of one attempt.
enum Attempt {
    Answer(ControlResponse),
    /// Worth another attempt as the route decides; the error if not.
    Retry(Outcome, Error),
    Failed(Error),
}

impl LeaderRouter {
    /// A router whose requests go through `agent` (which forwards them to the
    /// leader) until the leader is known, then straight to the leader.
    pub fn through(agent: SocketAddr, opts: RouterOptions) -> Self {
        Self::with_way(Way::Entry(agent), opts)
    }

    /// A router that asks `finder` who leads and sends only to the leader
    /// (an agent forwarding what it was sent).
    pub fn finding(finder: Arc<dyn FindLeader>, opts: RouterOptions) -> Self {
        Self::with_way(Way::Find(finder), opts)
    }

    fn with_way(way: Way, opts: RouterOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                way,
                pool: IdleConns::new(opts.pool_size),
                opts,
                leader: Mutex::default(),
                learning: AtomicBool::new(false),
            }),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> &RouterOptions {
        &self.inner.opts
    }

    /// The leader last seen, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records who leads, as learned elsewhere (`None` forgets it).
    pub fn set_leader(&self, leader: Option<SocketAddr>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// Forgets `addr` as the leader, if it is the one cached (it stopped
    /// answering).
    pub fn forget(&self, addr: SocketAddr) {
        let mut g = self.inner.leader.lock().unwrap_or_else(|p| p.into_inner());
        if *g == Some(addr) {
            *g = None;
        }
    }

    /// The leader: the one last seen, else found out now (the entry agent
    /// or the finder is asked) and remembered; `None` while nobody names one.
    pub async fn find_leader(&self) -> Option<SocketAddr> {
        if let Some(l) = self.leader() {
            return Some(l);
        }
        let found = match &self.inner.way {
            Way::Find(f) => f.find().await,
            Way::Entry(a) => {
                let mut c = Client::new(*a).with_timeout(self.inner.opts.call_timeout);
                c.leader().await.ok().and_then(|l| l.leader)
            }
        };
        if found.is_some() {
            self.set_leader(found);
        }
        found
    }

    /// Sends `req` to the leader and returns its answer. Redirects are
    /// followed; unreachable agents and lost answers are gone around or asked
    /// again (the latter only for an idempotent request) with backoff, until
    /// [`RouterOptions::leader_wait`] has passed; then the last error. An
    /// unreachable entry agent and a refusal are reported at once.
    pub async fn control(&self, req: ControlRequest) -> Result<ControlResponse> {
        let opts = &self.inner.opts;
        let idempotent = req.is_idempotent();
        let entry = match &self.inner.way {
            Way::Entry(a) => Some(*a),
            Way::Find(_) => None,
        };
        let pauses = backoff(opts.min_backoff, opts.max_backoff);
        let deadline = Instant::now() + opts.leader_wait;
        let mut route = Route::new(entry, idempotent, deadline, pauses);
        let mut hop = route.first(self.leader());
        let mut last = None;
        loop {
            let step = match hop {
                Hop::Find => {
                    let found = match &self.inner.way {
                        Way::Find(f) => f.find().await,
                        Way::Entry(_) => None,
                    };
                    route.handle_found(found, Instant::now())
                }
                Hop::Entry(addr) | Hop::Leader(addr) => {
                    let leader_only = matches!(hop, Hop::Leader(_));
                    if !leader_only {
                        self.learn_leader();
                    }
                    let wire = Request::Control {
                        req: req.clone(),
                        leader_only,
                    };
                    match self.attempt(addr, &wire, idempotent).await {
                        Attempt::Answer(m) => {
                            if matches!(hop, Hop::Leader(_)) {
                                self.set_leader(Some(addr));
                            }
                            return Ok(m);
                        }
                        Attempt::Failed(e) => return Err(e),
                        Attempt::Retry(outcome, e) => {
                            self.forget(addr);
                            last = Some(e);
                            route.handle_outcome(hop, outcome, Instant::now())
                        }
                    }
                }
            };
            hop = match step {
                Step::Go(h) => h,
                Step::Wait(d, h) => {
                    tokio::time::sleep(d).await;
                    h
                }
                Step::GiveUp => {
                    return Err(last.unwrap_or_else(|| Error::NotLeader {
                        addr: "any agent asked".into(),
                        leader: None,
                    }));
                }
            };
        }
    }

    /// [`LeaderRouter::control`] for SDFS metadata.
    pub async fn meta(&self, req: MetaRequest) -> Result<MetaResponse> {
        match self.control(ControlRequest::Sdfs(req)).await? {
            ControlResponse::Sdfs(m) => Ok(m),
            other => Err(unexpected(Response::Control(other))),
        }
    }

    /// [`LeaderRouter::control`] for inference.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        match self.control(ControlRequest::Infer(req)).await? {
            ControlResponse::Infer(r) => Ok(r),
            other => Err(unexpected(Response::Control(other))),
        }
    }

    /// One request on a connection to `addr`: a pooled one for a request
    /// that is safe to repeat, a fresh one otherwise (a pooled connection
    /// may have been closed by the other side, and then nobody can tell
    /// whether the request arrived).
    async fn attempt(&self, addr: SocketAddr, req: &Request, idempotent: bool) -> Attempt {
        let limit = self.inner.opts.call_timeout;
        let timeout = || Error::Timeout {
            addr: addr.to_string(),
            timeout: limit,
        };
        let pooled = if idempotent {
            self.take_idle(addr)
        } else {
            None
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let connect = self.inner.opts.connect_timeout.min(limit);
                match tokio::time::timeout(connect, self.connect(addr)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) if e.is_transient() => {
                        return Attempt::Retry(Outcome::Unreachable, e);
                    }
                    Ok(Err(e)) => return Attempt::Failed(e),
                    Err(_) => {
                        let e = Error::Timeout {
                            addr: addr.to_string(),
                            timeout: connect,
                        };
                        return Attempt::Retry(Outcome::Unreachable, e);
                    }
                }
            }
        };
        // A broken connection mid-call stays an i/o error (transient), so an
        // idempotent request is asked again instead of reported failed.
        let call = async {
            send_request(&mut conn, req).await?;
            read_response(&mut conn).await
        };
        let answer = match tokio::time::timeout(limit, call).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) if e.is_transient() => return Attempt::Retry(Outcome::Lost, e),
            Ok(Err(e)) => return Attempt::Failed(e),
            Err(_) => return Attempt::Retry(Outcome::Lost, timeout()),
        };
        self.keep(addr, conn);
        match into_control(addr, answer) {
            Ok(m) => Attempt::Answer(m),
            Err(e @ Error::NotLeader { leader, .. }) => {
                Attempt::Retry(Outcome::NotLeader(leader), e)
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    /// Asks the entry agent who leads, in the background, unless the leader
    /// is known or someone is already asking; later requests go straight there.
    fn learn_leader(&self) {
        let Way::Entry(agent) = self.inner.way else {
            return;
        };
        if self.leader().is_some() || self.inner.learning.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut c = Client::new(agent).with_timeout(me.inner.opts.call_timeout);
            if let Some(l) = c.leader().await.ok().and_then(|l| l.leader) {
                me.set_leader(Some(l));
            }
            me.inner.learning.store(false, Ordering::Release);
        });
    }

    /// An idle pooled connection to `addr` that is still open.
    pub fn take_idle(&self, addr: SocketAddr) -> Option<Conn> {
        self.inner.pool.take(addr)
    }

    /// Keeps a connection whose last exchange ended cleanly, for reuse.
    pub fn keep(&self, addr: SocketAddr, conn: Conn) {
        self.inner.pool.put(addr, conn)
    }

    /// A new connection to `addr` (through its local socket when it runs on
    /// this host and [`RouterOptions::local_socket`] is set).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn> {
        if self.inner.opts.local_socket {
            Conn::connect_near(addr).await
        } else {
            Conn::connect(addr).await
        }
    }
}

/// [`into_control`] for an SDFS metadata request.
pub fn into_meta(addr: SocketAddr, answer: Response) -> Result<MetaResponse> {
    match into_control(addr, answer)? {
        ControlResponse::Sdfs(m) => Ok(m),
        other => Err(unexpected(Response::Control(other))),
    }
}

/// Whether `e` is an agent's own refusal (it says what went wrong, and where).
pub fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Remote(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Names `leader` and counts the questions.
    struct Fixed {
        leader: Option<SocketAddr>,
        asked: AtomicUsize,
    }

    impl FindLeader for Fixed {
        fn find(&self) -> BoxFuture<'_, Option<SocketAddr>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { self.leader })
        }
    }

    #[tokio::test]
    async fn find_leader_asks_the_finder_once_until_the_leader_is_forgotten() {
        let l = SocketAddr::from(([127, 0, 0, 1], 8003));
        let finder = Arc::new(Fixed {
            leader: Some(l),
            asked: AtomicUsize::new(0),
        });
        let router = LeaderRouter::finding(finder.clone(), RouterOptions::default());
        assert_eq!(router.find_leader().await, Some(l));
        assert_eq!(router.find_leader().await, Some(l));
        assert_eq!(finder.asked.load(Ordering::SeqCst), 1);
        router.forget(SocketAddr::from(([127, 0, 0, 1], 8001)));
        assert_eq!(router.leader(), Some(l), "another agent is not forgotten");
        router.forget(l);
        assert_eq!(router.leader(), None);
        assert_eq!(router.find_leader().await, Some(l));
        assert_eq!(finder.asked.load(Ordering::SeqCst), 2);
    }
}
