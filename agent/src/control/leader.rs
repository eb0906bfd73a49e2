//! The leader's request path: metadata requests (placement, put
//! begin/commit/abort, delete, reads) served in the caller's task, and the
//! Raft access they share (`propose`, `linearize`). What only the leader
//! keeps (plans, read lease, scheduler) lives in the leader task
//! (`task.rs`), reached through its [`LeaderHandle`].

use super::Inner;
use super::error::{ControlError, Refusal};
use super::placement;
use super::plans::{Claimed, PlanRequest};
use super::store::read_sm;
use super::task::{LeaderHandle, Request};
use super::types::{Applied, Command, Op};
use crate::membership::driver::unix_ms;
use crate::timing::CLAIM_SLACK;
use crate::timing::VIEW_TTL;
use dml_shared::api::MemberState;
use dml_shared::sdfs::{ChangeOutcome, MetaRequest, MetaResponse, validate_name};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `members` lists identities at `addr`, and none of them is live. An
/// address it does not list (a view still being learned) is not departed.
pub(crate) fn departed_in(members: &[dml_shared::api::MemberInfo], addr: SocketAddr) -> bool {
    let mut at = members.iter().filter(|m| m.id.addr == addr).peekable();
    at.peek().is_some() && at.all(|m| !m.state.is_live())
}

/// Most versions one `Assigned` answer lists, so it stays far below the
/// frame limit even with 1 KiB names and many replicas.
const ASSIGNED_MAX: usize = 2000;

/// What became of a put commit or a delete appended in term `appended`
/// (for a put, its plan's term), seen by a leader of term `term` whose
/// state is current: applied (`done`), or lost for good once a later leader
/// has applied an entry of its own term without it, or still pending in the
/// log of the leader that appended it.
fn outcome(done: bool, appended: u64, term: u64) -> ChangeOutcome {
    if done {
        ChangeOutcome::Committed
    } else if appended < term {
        ChangeOutcome::Failed
    } else {
        ChangeOutcome::Pending
    }
}

impl Inner {
    fn leader_addr_of(&self, leader_node: Option<openraft::BasicNode>) -> Option<SocketAddr> {
        leader_node.and_then(|n| n.addr.parse().ok())
    }

    /// The leader task of this agent's term, if it leads.
    pub(crate) fn leader_task(&self) -> Result<LeaderHandle, Refusal> {
        let task = self.leader.borrow().clone();
        task.ok_or_else(|| Refusal::NotLeader(self.raft_leader().filter(|l| *l != self.s.me)))
    }

    /// Appends `op` to the log and waits for it to apply, for at most
    /// [`super::Settings::leader_wait`] in all. It appends only under a
    /// lease (renewed by a quorum round if it ran out), so a leader cut off
    /// for longer than that fails at once with nothing written
    /// (`NoQuorum`); an entry appended but not confirmed in time may still
    /// commit later (`Unconfirmed`).
    pub(crate) async fn propose(&self, op: Op) -> Result<Applied, Refusal> {
        let Some(raft) = &self.raft else {
            return Err(Refusal::NotLeader(None));
        };
        let wait = self.s.leader_wait();
        let start = std::time::Instant::now();
        self.linearize().await?;
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(ControlError::NoQuorum { waited: wait }.into());
        }
        let cmd = Command {
            now_ms: unix_ms(),
            op,
        };
        let sent = std::time::Instant::now();
        // A term change between this read and the append fails the append.
        let term = raft.metrics().borrow().current_term;
        match tokio::time::timeout(left, raft.client_write(cmd)).await {
            Err(_) => Err(ControlError::Unconfirmed { waited: wait, term }.into()),
            Ok(Ok(r)) => {
                // A quorum appended it after `sent`: they follow this leader.
                self.extend_lease(r.log_id.leader_id.term, sent).await;
                Ok(r.data)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Refusal::NotLeader(self.leader_addr_of(f.leader_node)))
            }
            Ok(Err(e)) => Err(ControlError::Raft(e.to_string()).into()),
        }
    }

    /// This node's current Raft term (0 without Raft).
    pub(crate) fn term(&self) -> u64 {
        self.raft
            .as_ref()
            .map_or(0, |r| r.metrics().borrow().current_term)
    }

    /// [`Inner::linearize`], then the term: every entry of an earlier term in
    /// this leader's log is then applied (it applied one of its own term).
    async fn settled_term(&self) -> Result<u64, Refusal> {
        self.linearize().await?;
        Ok(self.term())
    }

    /// Confirms leadership with a quorum and waits until reads see every
    /// committed entry, so a deposed leader never answers from stale state.
    pub(crate) async fn linearize(&self) -> Result<(), Refusal> {
        let Some(raft) = &self.raft else {
            return Err(Refusal::NotLeader(None));
        };
        let task = self.leader_task()?;
        if task.ask(Request::LeaseHolds).await? {
            return Ok(());
        }
        let term = raft.metrics().borrow().current_term;
        let sent = std::time::Instant::now();
        let wait = self.s.leader_wait();
        match tokio::time::timeout(wait, raft.ensure_linearizable()).await {
            Err(_) => Err(ControlError::NoQuorum { waited: wait }.into()),
            Ok(Ok(_)) => {
                self.extend_lease(term, sent).await;
                Ok(())
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(Refusal::NotLeader(self.leader_addr_of(f.leader_node)))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                let waited = Duration::from_millis(sent.elapsed().as_millis() as u64);
                Err(ControlError::NoQuorum { waited }.into())
            }
            Ok(Err(e)) => Err(ControlError::Raft(e.to_string()).into()),
        }
    }

    /// Records that a quorum acknowledged this leader (in `term`) after
    /// `since`, extending the read lease (`lease.rs`) its task holds.
    async fn extend_lease(&self, term: u64, since: std::time::Instant) {
        if let Ok(task) = self.leader_task() {
            let _ = task.tell(Request::ExtendLease { term, since }).await;
        }
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&super::state::MetaState) -> T,
    ) -> Result<T, Refusal> {
        let sm = self.sm.as_ref().ok_or(Refusal::NotLeader(None))?;
        Ok(read_sm(sm, |d| f(&d.state)))
    }

    /// Whether membership lists identities at `addr` and none of them is
    /// live (all failed or departed). The list is read at most every
    /// [`VIEW_TTL`].
    pub(crate) async fn departed(&self, addr: SocketAddr) -> bool {
        let cached = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VIEW_TTL)
            .map(|(_, m)| m.clone());
        let members = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(self.membership.members().await.unwrap_or_default());
                *self.view.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::time::Instant::now(), m.clone()));
                m
            }
        };
        departed_in(&members, addr)
    }

    /// (live: alive or suspect, alive) agent addresses from membership.
    pub(crate) async fn live_view(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let members = self.membership.members().await.unwrap_or_default();
        let pick = |ok: fn(MemberState) -> bool| {
            let mut v: Vec<SocketAddr> = members
                .iter()
                .filter(|m| ok(m.state))
                .map(|m| m.id.addr)
                .collect();
            v.sort();
            v.dedup();
            v
        };
        (
            pick(MemberState::is_live),
            pick(|s| s == MemberState::Alive),
        )
    }

    /// Takes the plan of (`name`, `version`) from the leader task, waiting
    /// for an appended plan's outcome (its failure is the caller's).
    async fn claim_plan(
        &self,
        task: &LeaderHandle,
        name: &str,
        version: u64,
        plan: u64,
    ) -> Result<Claimed, Refusal> {
        let name = name.to_string();
        let wait = self.s.leader_wait() + CLAIM_SLACK;
        let ask = task.ask(|reply| Request::Claim {
            name,
            version,
            plan,
            reply,
        });
        match tokio::time::timeout(wait, ask).await {
            Ok(answer) => Ok(answer?.map_err(ControlError::from)?),
            Err(_) => Err(ControlError::NoQuorum { waited: wait }.into()),
        }
    }

    /// Serves `req` if this agent leads; the leader-side metadata logic.
    pub(crate) async fn serve_at_leader(&self, req: MetaRequest) -> Result<MetaResponse, Refusal> {
        let task = self.leader_task()?;
        let rejected = |a: Applied| match a {
            Applied::Rejected(m) => Err(Refusal::Failed(ControlError::Rejected(m))),
            other => Ok(other),
        };
        match req {
            MetaRequest::BeginPut { name, size } => {
                validate_name(&name).map_err(|e| ControlError::BadRequest(e.to_string()))?;
                let (_, alive) = self.live_view().await;
                let quorum = self.s.sdfs.write_quorum;
                if alive.len() < quorum {
                    return Err(ControlError::TooFewAlive {
                        alive: alive.len(),
                        quorum,
                    }
                    .into());
                }
                let chain = placement::place(&name, &alive, self.s.replicas);
                let deadline_ms = unix_ms() + self.s.sdfs.put_timeout.as_millis() as u64;
                // Current state: the lease holds, or a quorum round renews it.
                self.linearize().await?;
                let req = PlanRequest {
                    name,
                    size,
                    replicas: chain.clone(),
                    deadline_ms,
                };
                let version = task
                    .ask(|reply| Request::PlanPut { req, reply })
                    .await?
                    .map_err(ControlError::from)?;
                let plan = task.term();
                Ok(MetaResponse::PutPlan {
                    version,
                    chain,
                    quorum,
                    plan,
                })
            }
            MetaRequest::CommitPut {
                name,
                version,
                checksum,
                holders,
                plan,
            } => {
                let quorum = self.s.sdfs.write_quorum;
                let op = match self.claim_plan(&task, &name, version, plan).await? {
                    Claimed::Deferred { size } => Op::PutAt {
                        name,
                        version,
                        size,
                        checksum,
                        holders,
                        quorum,
                    },
                    Claimed::Logged => Op::CommitPut {
                        name,
                        version,
                        checksum,
                        holders,
                        quorum,
                    },
                    // Only a retry of a commit that applied (its answer was
                    // lost with the earlier leader) succeeds.
                    Claimed::Foreign => {
                        self.linearize().await?;
                        let done = self.read(|s| s.is_committed_as(&name, version, &checksum))?;
                        return if done {
                            Ok(MetaResponse::Committed { version })
                        } else {
                            Err(ControlError::Rejected(format!(
                                "the put of \"{name}\" v{version} was planned by an earlier leader (term {plan}) and did not commit; retry the put"
                            ))
                            .into())
                        };
                    }
                };
                match self.propose(op).await {
                    Ok(a) => match rejected(a)? {
                        Applied::Version(version) => Ok(MetaResponse::Committed { version }),
                        other => Err(unexpected(other)),
                    },
                    // Appended, not confirmed: the client asks `PutOutcome`
                    // until the answer is final.
                    Err(Refusal::Failed(e @ ControlError::Unconfirmed { .. })) => {
                        Ok(MetaResponse::Unconfirmed {
                            reason: e.to_string(),
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            MetaRequest::PutOutcome {
                name,
                version,
                checksum,
                plan,
            } => {
                let term = self.settled_term().await?;
                let committed = self.read(|s| s.is_committed_as(&name, version, &checksum))?;
                Ok(MetaResponse::Outcome(outcome(committed, plan, term)))
            }
            MetaRequest::AbortPut {
                name,
                version,
                plan,
            } => {
                match self.claim_plan(&task, &name, version, plan).await {
                    // A plan that failed, never left memory or is an earlier
                    // leader's (its deadline expires it) leaves nothing to abort.
                    Err(_) | Ok(Claimed::Deferred { .. } | Claimed::Foreign) => {
                        return Ok(MetaResponse::Done);
                    }
                    Ok(Claimed::Logged) => {}
                }
                rejected(self.propose(Op::AbortPut { name, version }).await?)?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::Delete { name } => {
                self.linearize().await?;
                let newest = self
                    .read(|s| s.stat(&name))?
                    .and_then(|f| f.versions.last().map(|v| v.version));
                let Some(through) = newest else {
                    return Err(ControlError::NoSuchFile(name).into());
                };
                match self.propose(Op::Delete { name }).await {
                    Ok(a) => {
                        rejected(a)?;
                        Ok(MetaResponse::Done)
                    }
                    // Appended, not confirmed: the client asks `DeleteOutcome`
                    // until the answer is final.
                    Err(Refusal::Failed(e @ ControlError::Unconfirmed { term, .. })) => {
                        Ok(MetaResponse::DeleteUnconfirmed {
                            reason: e.to_string(),
                            term,
                            through,
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            MetaRequest::DeleteOutcome {
                name,
                term: appended,
                through,
            } => {
                let term = self.settled_term().await?;
                let oldest = self
                    .read(|s| s.stat(&name))?
                    .and_then(|f| f.versions.first().map(|v| v.version));
                let gone = oldest.is_none_or(|v| v > through);
                Ok(MetaResponse::Outcome(outcome(gone, appended, term)))
            }
            MetaRequest::Stat { name } => {
                self.linearize().await?;
                self.read(|s| s.stat(&name))?
                    .map(MetaResponse::File)
                    .ok_or_else(|| ControlError::NoSuchFile(name).into())
            }
            MetaRequest::List { glob } => {
                self.linearize().await?;
                Ok(MetaResponse::Files(self.read(|s| s.list(&glob))?))
            }
            MetaRequest::Count => {
                self.linearize().await?;
                let (files, versions, bytes) = self.read(|s| s.count())?;
                Ok(MetaResponse::Count {
                    files,
                    versions,
                    bytes,
                })
            }
            MetaRequest::Nodes => {
                self.linearize().await?;
                let (live, _) = self.live_view().await;
                Ok(MetaResponse::Nodes(self.read(|s| s.nodes(&live))?))
            }
            MetaRequest::Wanted { node, items } => {
                self.linearize().await?;
                let keep = self.read(|s| {
                    items
                        .iter()
                        .map(|(name, v, sum)| s.wanted(node, name, *v, sum))
                        .collect()
                })?;
                Ok(MetaResponse::Wanted(keep))
            }
            MetaRequest::Assigned { node, after, limit } => {
                self.linearize().await?;
                let limit = (limit as usize).clamp(1, ASSIGNED_MAX);
                let (items, more) = self.read(|s| s.assigned(node, after.as_ref(), limit))?;
                Ok(MetaResponse::Assigned { items, more })
            }
            MetaRequest::Infer(r) => self.serve_infer(&task, r).await,
            MetaRequest::AtLeader(_) => Err(ControlError::BadRequest(
                "a forwarded request was forwarded again".into(),
            )
            .into()),
        }
    }
}

fn unexpected(a: Applied) -> Refusal {
    Refusal::Failed(ControlError::Raft(format!(
        "unexpected result {a:?} from the state machine"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::NodeId;
    use dml_shared::api::MemberInfo;

    fn member(addr: &str, started: u64, state: MemberState) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(addr.parse().unwrap(), started),
            state,
            incarnation: 0,
            last_heard_ms: None,
            monitors: Vec::new(),
        }
    }

    #[test]
    fn an_address_is_departed_only_when_every_identity_there_is_gone() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!departed_in(&[], a), "unknown: not departed");
        let failed = member("127.0.0.1:1", 1, MemberState::Failed);
        let left = member("127.0.0.1:1", 2, MemberState::Left);
        let back = member("127.0.0.1:1", 3, MemberState::Alive);
        let suspect = member("127.0.0.1:1", 3, MemberState::Suspect);
        let other = member("127.0.0.1:2", 1, MemberState::Alive);
        assert!(departed_in(&[failed.clone(), other.clone()], a));
        assert!(departed_in(&[failed.clone(), left.clone()], a));
        assert!(!departed_in(&[failed.clone(), back], a), "rejoined");
        assert!(!departed_in(&[failed, suspect], a), "suspect is still live");
        assert!(!departed_in(&[other], a));
    }

    #[test]
    fn an_unconfirmed_put_is_final_once_a_later_leader_answers() {
        assert_eq!(outcome(true, 3, 3), ChangeOutcome::Committed);
        assert_eq!(outcome(true, 3, 5), ChangeOutcome::Committed);
        assert_eq!(outcome(false, 3, 4), ChangeOutcome::Failed);
        // Its own leader still holds it in the log.
        assert_eq!(outcome(false, 3, 3), ChangeOutcome::Pending);
    }
}
