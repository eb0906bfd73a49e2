//! Finding the leader and getting a metadata request to it. A voter knows
//! the leader from its Raft metrics; a non-voter asks the voters. Requests
//! are forwarded wrapped in `MetaRequest::AtLeader`, which only the leader
//! serves; anyone else answers `NotLeader` with its best guess, and the
//! forwarding agent follows that hint until `Settings::leader_wait` runs out.

use super::error::ControlError;
use super::types::voter_id;
use super::{Inner, error::Refusal};
use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::client::Client;
use dml_shared::sdfs::MetaRequest;
use std::net::SocketAddr;
use tokio::time::Instant;

/// Idle connections kept for forwarding to the leader.
const FORWARD_POOL: usize = 16;

impl Inner {
    /// The leader's address from this voter's Raft metrics.
    pub(crate) fn raft_leader(&self) -> Option<SocketAddr> {
        let raft = self.raft.as_ref()?;
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
        self.s.voters.iter().copied().find(|v| voter_id(*v) == id)
    }

    pub(crate) async fn leader_info(&self) -> LeaderInfo {
        if let Some(raft) = &self.raft {
            let m = raft.metrics().borrow().clone();
            let (last_applied, applied_digest) = match self.applied_digest() {
                Some((i, d)) => (Some(i), Some(d)),
                None => (m.last_applied.map(|l| l.index), None),
            };
            return LeaderInfo {
                leader: self.raft_leader(),
                term: m.current_term,
                voters: self.s.voters.clone(),
                is_voter: true,
                last_applied,
                applied_digest,
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
        });
        if info.leader.is_some() {
            *self.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = info.leader;
        }
        LeaderInfo {
            voters: self.s.voters.clone(),
            is_voter: false,
            last_applied: None,
            applied_digest: None,
            ..info
        }
    }

    /// (index, digest) of the state machine's last applied entry, hashed
    /// once per index (the state is read under one lock with its index).
    fn applied_digest(&self) -> Option<(u64, String)> {
        let sm = self.sm.as_ref()?;
        let at = super::store::read_sm(sm, |d| d.last_applied.map(|l| l.index))?;
        let mut cache = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref().filter(|(i, _)| *i == at) {
            return Some(c.clone());
        }
        let (index, bytes) = super::store::read_sm(sm, |d| {
            (
                d.last_applied.map(|l| l.index),
                postcard::to_allocvec(&d.state).ok(),
            )
        });
        let fresh = (index?, blake3::hash(&bytes?).to_hex()[..16].to_string());
        *cache = Some(fresh.clone());
        Some(fresh)
    }

    /// The leader as best known now, asking the voters if need be.
    async fn find_leader(&self) -> Option<SocketAddr> {
        if self.raft.is_some() {
            return self.raft_leader();
        }
        let hint = *self.leader_hint.lock().unwrap_or_else(|p| p.into_inner());
        match hint {
            Some(l) => Some(l),
            None => self.leader_info().await.leader,
        }
    }

    /// An open connection to `leader` from the pool, or a new client.
    fn pooled(&self, leader: SocketAddr, timeout: std::time::Duration) -> Client {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|c| c.addr() == leader) {
            Some(i) => pool.swap_remove(i).with_timeout(timeout),
            None => Client::new(leader).with_timeout(timeout),
        }
    }

    /// Returns a client whose last call succeeded to the pool (bounded).
    fn unpool(&self, c: Client) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < FORWARD_POOL {
            pool.push(c);
        }
    }

    fn forget_leader(&self) {
        *self.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Entry point of every metadata request this agent receives.
    pub(crate) async fn meta(&self, req: MetaRequest) -> Response {
        if let MetaRequest::AtLeader(inner) = req {
            return match self.serve_at_leader(*inner).await {
                Ok(r) => Response::Meta(r),
                Err(Refusal::NotLeader(leader)) => Response::NotLeader { leader },
                Err(Refusal::Failed(e)) => Response::Error(e.into()),
            };
        }
        let wait = self.s.leader_wait();
        let deadline = Instant::now() + wait;
        let mut hint: Option<SocketAddr> = None;
        loop {
            let leader = match hint.take() {
                Some(l) => Some(l),
                None => self.find_leader().await,
            };
            match leader {
                Some(l) if l == self.s.me && self.raft.is_some() => {
                    match self.serve_at_leader(req.clone()).await {
                        Ok(r) => return Response::Meta(r),
                        Err(Refusal::NotLeader(h)) => hint = h.filter(|h| *h != self.s.me),
                        Err(Refusal::Failed(e)) => return Response::Error(e.into()),
                    }
                }
                Some(l) => {
                    // A pooled connection may have been closed by the other
                    // side; only a request that is safe to repeat takes one.
                    let timeout = wait + self.s.control.rpc_timeout;
                    let mut c = if req.is_idempotent() {
                        self.pooled(l, timeout)
                    } else {
                        Client::new(l).with_timeout(timeout)
                    };
                    let fwd = Request::Meta(MetaRequest::AtLeader(Box::new(req.clone())));
                    let answer = c.call(&fwd).await;
                    if answer.is_ok() {
                        self.unpool(c);
                    }
                    match answer {
                        Ok(Response::NotLeader { leader }) => {
                            self.forget_leader();
                            hint = leader.filter(|h| *h != l);
                        }
                        Ok(other) => return other,
                        Err(dml_shared::Error::Remote(m)) => return Response::Error(m),
                        // Not delivered: safe to try again.
                        Err(dml_shared::Error::Connect { .. }) => self.forget_leader(),
                        // Maybe delivered: only a request that is safe to
                        // repeat is tried again (at the new leader).
                        Err(e) => {
                            self.forget_leader();
                            if !req.is_idempotent() {
                                let e = ControlError::Forward {
                                    leader: l,
                                    reason: e.to_string(),
                                };
                                return Response::Error(e.into());
                            }
                        }
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                let e = ControlError::NoLeader {
                    waited: wait,
                    voters: self.s.voters.clone(),
                };
                return Response::Error(e.into());
            }
            if hint.is_none() {
                tokio::time::sleep(self.s.control.heartbeat_interval).await;
            }
        }
    }
}
