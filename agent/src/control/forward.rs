//! Finding the leader and getting a control-plane request to it. While this
//! agent leads, its leader task (`task.rs`) serves the request. Otherwise
//! it goes on to the leader, sent `leader_only` (only the leader serves it),
//! through the shared [`LeaderRouter`] (the same route clients take): a
//! voter knows the leader from its Raft metrics, a non-voter asks the
//! voters; it follows `NotLeader` hints and retries with backoff until
//! `Settings::leader_wait` runs out.

use super::error::ControlError;
use super::{Inner, Settings, error::Refusal};
use dml_shared::Error;
use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::client::Client;
use dml_shared::control::ControlRequest;
use dml_shared::router::{AskAgents, BoxFuture, FindLeader, LeaderRouter, RouterOptions};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Idle connections kept for forwarding to the leader.
const FORWARD_POOL: usize = 16;
/// How long a `Leader` request waits for the state digest being hashed.
const DIGEST_WAIT: Duration = Duration::from_millis(100);
/// A state digest is hashed again only after this many times the last
/// hash's length (at most a tenth of a core).
const DIGEST_PAUSE: u32 = 9;

/// The state digest [`Inner::leader_info`] reports (pure: takes `now`).
#[derive(Debug, Default)]
pub(crate) struct Digest {
    /// (applied index, digest) last hashed.
    done: Option<(u64, String)>,
    /// A hash is running.
    running: bool,
    /// No hash starts before this.
    not_before: Option<std::time::Instant>,
}

/// What a `Leader` answer does about the digest at its index.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Ready(String),
    /// Hash now (the caller runs it and reports [`Digest::finished`]).
    Start,
    /// A hash is running or pausing: answer without one.
    Later,
}

impl Digest {
    fn ask(&mut self, at: u64, now: std::time::Instant) -> Ask {
        if let Some((_, h)) = self.done.as_ref().filter(|(i, _)| *i == at) {
            return Ask::Ready(h.clone());
        }
        if self.running || self.not_before.is_some_and(|t| now < t) {
            return Ask::Later;
        }
        self.running = true;
        Ask::Start
    }

    /// A hash that took `took` ended at `now`.
    fn finished(&mut self, hashed: Option<(u64, String)>, took: Duration, now: std::time::Instant) {
        self.running = false;
        self.not_before = Some(now + took * DIGEST_PAUSE);
        if hashed.is_some() {
            self.done = hashed;
        }
    }
}

impl Inner {
    /// The leader's address from this voter's Raft metrics.
    pub(crate) fn raft_leader(&self) -> Option<SocketAddr> {
        let raft = self.raft.get()?;
        let m = raft.metrics().borrow().clone();
        let id = m.current_leader?;
        if let Some(Ok(a)) = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.parse())
        {
            return Some(a);
        }
        self.voter_addr(id)
    }

    /// Who leads, as this agent knows it; `digest`: with the state digest
    /// when it is at hand ([`Inner::applied_digest`]).
    pub(crate) async fn leader_info(&self, digest: bool) -> LeaderInfo {
        if let Some(raft) = self.raft.get() {
            let m = raft.metrics().borrow().clone();
            let applied = match digest {
                true => self.applied_digest().await,
                false => None,
            };
            let (last_applied, applied_digest) = match applied {
                Some((i, d)) => (Some(i), d),
                None => (m.last_applied.map(|l| l.index), None),
            };
            // A leader cut off from its majority keeps its term until it
            // hears of a newer one: say so rather than claim it.
            let unacked_ms = match m.state {
                openraft::ServerState::Leader => m
                    .millis_since_quorum_ack
                    .filter(|ms| *ms > self.s.control.election_timeout_max.as_millis() as u64),
                _ => None,
            };
            return LeaderInfo {
                leader: self.raft_leader(),
                term: m.current_term,
                voters: self.s.voters.clone(),
                is_voter: true,
                last_applied,
                applied_digest,
                unacked_ms,
                raft_ids: {
                    let config = m.membership_config.membership();
                    config
                        .voter_ids()
                        .filter_map(|id| Some((id, config.get_node(&id)?.addr.parse().ok()?)))
                        .collect()
                },
            };
        }
        let mut best = None;
        for v in &self.s.voters {
            let mut c = Client::new(*v).with_timeout(self.s.control.rpc_timeout);
            if let Ok(Response::Leader(info)) = c.call(&Request::Leader).await {
                if info.leader.is_some() {
                    best = Some(info);
                    break;
                }
                best.get_or_insert(info);
            }
        }
        let info = best.unwrap_or(LeaderInfo {
            leader: None,
            term: 0,
            voters: Vec::new(),
            is_voter: false,
            last_applied: None,
            applied_digest: None,
            unacked_ms: None,
            raft_ids: Vec::new(),
        });
        if info.leader.is_some() {
            self.router.set_leader(info.leader);
        }
        LeaderInfo {
            voters: self.s.voters.clone(),
            // A configured voter still choosing its Raft id (`voters.rs`) is one.
            is_voter: self.s.is_voter(),
            last_applied: None,
            applied_digest: None,
            ..info
        }
    }

    /// The state machine's last applied index, and its digest if it is at
    /// hand. Hashing encodes the whole state (about a second at a million
    /// versions): it runs on a blocking thread, one at a time, waited for
    /// up to [`DIGEST_WAIT`], and not again before [`DIGEST_PAUSE`] times
    /// its length has passed. Hashed on the async workers at every call
    /// whose index had moved (telemetry asks twice a second), it stalled
    /// every voter of a million versions and Raft with it (`docs/SDFS.md`).
    async fn applied_digest(&self) -> Option<(u64, Option<String>)> {
        let sm = self.sm.as_ref()?;
        let at = super::store::read_sm(sm, |d| d.last_applied.map(|l| l.index))?;
        let hashed = {
            let mut d = self.digest.lock().unwrap_or_else(|p| p.into_inner());
            match d.ask(at, std::time::Instant::now()) {
                Ask::Ready(h) => return Some((at, Some(h))),
                Ask::Later => return Some((at, None)),
                Ask::Start => {}
            }
            // An O(1) copy under the lock; encoded after it.
            let (index, state) =
                super::store::read_sm(sm, |d| (d.last_applied.map(|l| l.index), d.state.clone()));
            let (tx, rx) = tokio::sync::oneshot::channel();
            let cache = self.digest.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let hashed = index
                    .zip(postcard::to_allocvec(&state).ok())
                    .map(|(i, b)| (i, blake3::hash(&b).to_hex()[..16].to_string()));
                drop(state);
                cache.lock().unwrap_or_else(|p| p.into_inner()).finished(
                    hashed.clone(),
                    started.elapsed(),
                    std::time::Instant::now(),
                );
                let _ = tx.send(hashed);
            });
            rx
        };
        match tokio::time::timeout(DIGEST_WAIT, hashed).await {
            Ok(Ok(Some((i, h)))) => Some((i, Some(h))),
            _ => Some((at, None)),
        }
    }

    /// The leader task of this agent's term, if it leads.
    fn leader_task(&self) -> Result<super::task::LeaderHandle, Refusal> {
        let task = self.leader.borrow().clone();
        task.ok_or_else(|| Refusal::NotLeader(self.raft_leader().filter(|l| *l != self.s.me)))
    }

    /// Entry point of every control-plane request this agent receives:
    /// served by the leader task while this agent leads, else sent on to
    /// the leader through the agent's [`LeaderRouter`]. A `leader_only`
    /// request is served here or refused with `NotLeader`.
    pub(crate) async fn control(&self, req: ControlRequest, leader_only: bool) -> Response {
        let answer = |r: Result<_, Refusal>| match r {
            Ok(r) => Response::Control(r),
            Err(Refusal::NotLeader(leader)) => Response::NotLeader { leader },
            Err(Refusal::Failed(e)) => Response::Error(e.into()),
        };
        if leader_only {
            let served = match self.leader_task() {
                Ok(task) => task.serve(req).await,
                Err(e) => Err(e),
            };
            return answer(served);
        }
        // While Raft names this agent, it serves here, never through its
        // own API (that would take a client's connection slot): just after
        // an election its leader task may not run yet, so it tries again.
        let deadline = Instant::now() + self.s.leader_wait();
        while self.raft.get().is_some() && self.raft_leader() == Some(self.s.me) {
            let served = match self.leader_task() {
                Ok(task) => task.serve(req.clone()).await,
                Err(e) => Err(e),
            };
            match served {
                Err(Refusal::NotLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(self.s.control.heartbeat_interval).await;
                }
                Err(Refusal::NotLeader(_)) => return Response::Error(self.no_leader().into()),
                other => return answer(other),
            }
        }
        // A voter's Raft metrics know of an election before the router's cache does.
        if let Some(l) = self.raft.get().and(self.raft_leader()) {
            self.router.set_leader(Some(l));
        }
        let idempotent = req.is_idempotent();
        match self.router.control(req).await {
            Ok(m) => Response::Control(m),
            Err(Error::Remote(e)) => Response::Error(e),
            // Never delivered, or safe to repeat: it kept trying until
            // `leader_wait`, and no leader answered.
            Err(e @ (Error::NotLeader { .. } | Error::Connect { .. })) => {
                tracing::debug!(error = %e, "no leader answered");
                Response::Error(self.no_leader().into())
            }
            Err(_) if idempotent => Response::Error(self.no_leader().into()),
            // Maybe delivered: not repeated.
            Err(e) => Response::Error(
                ControlError::Forward {
                    reason: e.to_string(),
                }
                .into(),
            ),
        }
    }

    fn no_leader(&self) -> ControlError {
        ControlError::NoLeader {
            waited: self.s.leader_wait(),
            voters: self.s.voters.clone(),
        }
    }
}

/// Builds the agent's one route to the leader: a voter reads the leader
/// from its Raft metrics, a non-voter asks the voters.
pub(crate) fn router(s: &Settings, me: Weak<Inner>, voter: bool) -> LeaderRouter {
    let finder: Arc<dyn FindLeader> = if voter {
        Arc::new(RaftLeader(me))
    } else {
        Arc::new(AskAgents::new(s.voters.clone(), s.control.rpc_timeout))
    };
    let wait = s.leader_wait();
    LeaderRouter::finding(
        finder,
        RouterOptions {
            // The leader itself may wait up to `leader_wait` for a quorum.
            call_timeout: wait + s.control.rpc_timeout,
            leader_wait: wait,
            connect_timeout: s.control.rpc_timeout,
            // Relays stay inside the cluster and a voter finds the leader
            // in its own Raft metrics: a worker's next try after a fail-over
            // comes within a heartbeat, not after a grown backoff.
            min_backoff: s.control.heartbeat_interval / 2,
            max_backoff: s.control.heartbeat_interval,
            pool_size: FORWARD_POOL,
            local_socket: false,
        },
    )
}

/// A voter's view of who leads: its Raft metrics.
struct RaftLeader(Weak<Inner>);

impl FindLeader for RaftLeader {
    fn find(&self) -> BoxFuture<'_, Option<SocketAddr>> {
        Box::pin(async move { self.0.upgrade()?.raft_leader() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashed on the async workers at every call whose index had moved, the
    /// digest stalled every voter of a million versions (and Raft with them).
    #[test]
    fn one_digest_is_hashed_at_a_time_and_the_next_waits_nine_times_as_long() {
        let mut d = Digest::default();
        let t = std::time::Instant::now();
        let at = |secs: u64| t + Duration::from_secs(secs);
        assert_eq!(d.ask(5, t), Ask::Start);
        assert_eq!(d.ask(5, t), Ask::Later, "one hash at a time");
        assert_eq!(d.ask(6, t), Ask::Later);
        d.finished(Some((5, "ab".into())), Duration::from_secs(1), at(1));
        assert_eq!(d.ask(5, at(2)), Ask::Ready("ab".into()));
        assert_eq!(d.ask(7, at(2)), Ask::Later, "pausing");
        assert_eq!(d.ask(7, at(9)), Ask::Later);
        assert_eq!(d.ask(7, at(10)), Ask::Start);
        // A quick hash does not pause the next.
        d.finished(Some((7, "cd".into())), Duration::ZERO, at(10));
        assert_eq!(d.ask(7, at(10)), Ask::Ready("cd".into()));
        assert_eq!(d.ask(8, at(10)), Ask::Start);
    }
}
