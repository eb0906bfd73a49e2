//! Put plans answered before their log entry commits. Under its lease (so its
//! state holds everything earlier leaders committed) the leader picks the
//! version itself and answers the client at once.
//! - A small put's plan (at most [`DEFER_MAX`] bytes) stays in the leader's
//!   memory, and its commit appends plan and commit as one `Op::PutAt`: one
//!   Raft write per put, not two. A leader that changes before the commit
//!   forgets the plan, so the commit is refused and the put fails.
//! - A larger put's plan is appended as `Op::BeginPutAt` at once, so it
//!   overlaps the replica chain's store and a new leader sees the version
//!   taken. Its commit or abort first waits for the plan's outcome (`claim`).
//!   A plan whose entry never commits fails that commit.
//!
//! A plan is named by the term of the leader that made it (`PutPlan.plan`),
//! and commits and aborts name it back: a later leader never takes another
//! leader's plan for one of its own (a plan of the same number it made
//! since). It commits an earlier leader's plan only as a retry of a commit
//! that already applied.
//!
//! The copies of a failed put are orphans that reconcile drops after
//! `sdfs.put_timeout`, as with any failed put.

use super::Inner;
use super::leader::Refusal;
use super::types::{Applied, Command, Op};
use crate::control::error::ControlError;
use crate::membership::driver::unix_ms;
use openraft::error::ClientWriteError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A plan's outcome once its entry applied or failed to.
type Outcome = Option<Result<(), Failed>>;

/// Why a plan's entry did not apply (a clonable [`ControlError`]).
#[derive(Clone, Debug)]
enum Failed {
    NoQuorum(Duration),
    Rejected(String),
    Raft(String),
}

impl From<Failed> for ControlError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::NoQuorum(waited) => ControlError::NoQuorum { waited },
            Failed::Rejected(m) => ControlError::Rejected(m),
            Failed::Raft(m) => ControlError::Raft(m),
        }
    }
}

/// The leader's plans of one term.
#[derive(Default)]
pub(crate) struct Plans {
    term: u64,
    /// Next version to hand out, for names with plans ahead of the state.
    next: HashMap<String, u64>,
    /// Plans not yet claimed, with when they were made.
    open: HashMap<(String, u64), (Instant, Plan)>,
}

/// The largest put whose plan is not appended before its commit. Its store
/// takes milliseconds, far less than an election (`control.election_timeout_min`).
pub(crate) const DEFER_MAX: u64 = 4 << 20;

/// A plan the leader made.
enum Plan {
    /// In memory only; the commit carries it (`Op::PutAt`).
    Deferred { size: u64 },
    /// Appended; its outcome once known.
    Appended(watch::Receiver<Outcome>),
}

/// What a claimed plan asks of the commit.
pub(crate) enum Claimed {
    /// Append plan and commit together: `Op::PutAt` with this size.
    Deferred { size: u64 },
    /// This leader's plan is in the log (or was claimed before, by a commit
    /// this one retries): `Op::CommitPut`.
    Logged,
    /// An earlier leader made the plan.
    Foreign,
}

/// What a put asked of the leader.
pub(crate) struct PlanRequest {
    pub name: String,
    pub size: u64,
    pub replicas: Vec<SocketAddr>,
    pub deadline_ms: u64,
}

impl Inner {
    /// Reserves the next version of `req.name` and returns it with the plan's
    /// id (this leader's term). The plan stays in memory (small puts) or is
    /// appended without waiting for the entry to commit.
    pub(crate) async fn plan_put(&self, req: PlanRequest) -> Result<(u64, u64), Refusal> {
        let Some(raft) = &self.raft else {
            return Err(Refusal::NotLeader(None));
        };
        // Current state: the lease holds, or a quorum round renews it.
        self.linearize().await?;
        let term = raft.metrics().borrow().current_term;
        // One appender at a time, so plans enter the log in version order.
        let mut plans = self.plans.lock().await;
        if plans.term != term {
            *plans = Plans {
                term,
                ..Plans::default()
            };
        }
        let forget = self.s.sdfs.put_timeout * 2;
        plans.open.retain(|_, (at, _)| at.elapsed() < forget);
        let next = &mut plans.next;
        let version = self.read(|s| {
            // Names the state caught up with need no entry.
            next.retain(|n, v| *v > s.next_version(n));
            next.get(&req.name)
                .copied()
                .unwrap_or(0)
                .max(s.next_version(&req.name))
        })?;
        if req.size <= DEFER_MAX {
            plans.next.insert(req.name.clone(), version + 1);
            let plan = Plan::Deferred { size: req.size };
            plans
                .open
                .insert((req.name, version), (Instant::now(), plan));
            return Ok((version, term));
        }
        let cmd = Command {
            now_ms: unix_ms(),
            op: Op::BeginPutAt {
                name: req.name.clone(),
                version,
                size: req.size,
                replicas: req.replicas,
                deadline_ms: req.deadline_ms,
            },
        };
        let rx = raft
            .client_write_ff(cmd)
            .await
            .map_err(|e| ControlError::Raft(e.to_string()))?;
        plans.next.insert(req.name.clone(), version + 1);
        let (tx, outcome) = watch::channel(None);
        let plan = Plan::Appended(outcome);
        plans
            .open
            .insert((req.name, version), (Instant::now(), plan));
        drop(plans);
        let wait = self.s.leader_wait();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(wait, rx).await {
                Err(_) => Err(Failed::NoQuorum(wait)),
                Ok(Err(_)) => Err(Failed::Raft("the Raft core stopped".into())),
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => Err(Failed::Rejected(
                    "the leader changed before the put's plan committed; retry the put".into(),
                )),
                Ok(Ok(Err(e))) => Err(Failed::Raft(e.to_string())),
                Ok(Ok(Ok(r))) => match r.data {
                    Applied::Rejected(m) => Err(Failed::Rejected(m)),
                    _ => Ok(()),
                },
            };
            let _ = tx.send(Some(r));
        });
        Ok((version, term))
    }

    /// Takes the plan of (`name`, `version`) if this leader made it and
    /// nobody claimed it yet, waiting for an appended plan's outcome (its
    /// failure is the caller's).
    pub(crate) async fn claim_plan(
        &self,
        name: &str,
        version: u64,
        plan_id: u64,
    ) -> Result<Claimed, Refusal> {
        let term = self
            .raft
            .as_ref()
            .map(|r| r.metrics().borrow().current_term);
        let mut plans = self.plans.lock().await;
        if Some(plan_id) != term || plans.term != plan_id {
            return Ok(Claimed::Foreign);
        }
        let Some((_, plan)) = plans.open.remove(&(name.to_string(), version)) else {
            return Ok(Claimed::Logged);
        };
        drop(plans);
        let mut outcome = match plan {
            Plan::Deferred { size } => return Ok(Claimed::Deferred { size }),
            Plan::Appended(outcome) => outcome,
        };
        let wait = self.s.leader_wait() + Duration::from_millis(100);
        match tokio::time::timeout(wait, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(r)) => match r.as_ref() {
                Some(Err(e)) => Err(Refusal::Failed(e.clone().into())),
                _ => Ok(Claimed::Logged),
            },
            _ => Err(ControlError::NoQuorum { waited: wait }.into()),
        }
    }
}
