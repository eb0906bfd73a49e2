//! Put plans answered before their log entry commits. Under its lease (so its
//! state holds everything earlier leaders committed) the leader picks the
//! version itself, appends `Op::BeginPutAt` and answers the client at once:
//! the plan's Raft write overlaps the replica chain's store. The put's commit
//! or abort first waits for the plan's outcome (`claim`). A plan whose entry
//! never commits fails that commit; its copies are orphans that reconcile
//! drops after `sdfs.put_timeout`, as with any failed put.

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
    /// Plans appended and not yet claimed, with when they were appended.
    open: HashMap<(String, u64), (Instant, watch::Receiver<Outcome>)>,
}

/// What a put asked of the leader.
pub(crate) struct PlanRequest {
    pub name: String,
    pub size: u64,
    pub replicas: Vec<SocketAddr>,
    pub deadline_ms: u64,
}

impl Inner {
    /// Reserves the next version of `req.name`, appends its plan and returns
    /// the version without waiting for the entry to commit.
    pub(crate) async fn plan_put(&self, req: PlanRequest) -> Result<u64, Refusal> {
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
        plans
            .open
            .insert((req.name, version), (Instant::now(), outcome));
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
        Ok(version)
    }

    /// Waits for the plan of (`name`, `version`) if this leader appended it
    /// and nobody claimed it yet; its failure is the caller's.
    pub(crate) async fn claim_plan(&self, name: &str, version: u64) -> Result<(), Refusal> {
        let Some((_, mut outcome)) = self
            .plans
            .lock()
            .await
            .open
            .remove(&(name.to_string(), version))
        else {
            return Ok(());
        };
        let wait = self.s.leader_wait() + Duration::from_millis(100);
        match tokio::time::timeout(wait, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(r)) => match r.as_ref() {
                Some(Err(e)) => Err(Refusal::Failed(e.clone().into())),
                _ => Ok(()),
            },
            _ => Err(ControlError::NoQuorum { waited: wait }.into()),
        }
    }
}
