//! The leader task: one tokio task per leader term owns the [`LeaderCore`]
//! (scheduler, put plans, read lease, repair and output bookkeeping). The
//! supervisor ([`supervise`]) starts it when this voter becomes leader for a
//! term and drops it when that term ends. Everything reaches it as one
//! [`Input`]: requests with a oneshot reply (from the request path in
//! `leader.rs` and `infer.rs`, through a [`LeaderHandle`]), membership
//! events, Raft metric changes, ticks, and the results of the work it
//! spawned. It never waits for a Raft commit or a transfer: those run in
//! spawned futures that feed their result back as an input.

use super::Inner;
use super::core::{CoreConfig, LeaderCore, Maintenance, Picked};
use super::error::Refusal;
use super::plans::{Claim, Claimed, Failed, PlanRequest};
use super::repair::{Copy, View};
use super::store::read_sm;
use super::types::{Applied, Command, Op, voter_id};
use crate::membership::Event;
use crate::membership::driver::unix_ms;
use dml_shared::api::{Request as ApiRequest, Response};
use dml_shared::client::Client;
use dml_shared::infer::{JobId, LatencyInfo, Placement, RateInfo};
use dml_shared::sdfs::DataRequest;
use openraft::error::ClientWriteError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Inputs queued for the leader task before senders wait.
const INPUT_QUEUE: usize = 256;

/// Everything the leader task reacts to.
pub(crate) enum Input {
    /// A request of the request path; answered on its oneshot.
    Request(Request),
    /// Membership: this member failed or left.
    Departed(SocketAddr),
    /// Raft's metrics changed (leadership, applied index).
    Metrics,
    /// The maintenance period elapsed.
    Tick,
    /// An appended put plan's entry applied or failed.
    PlanSettled {
        name: String,
        version: u64,
        outcome: Result<(), Failed>,
    },
    /// The membership view asked for by a maintenance pass: (live, alive).
    View(Vec<SocketAddr>, Vec<SocketAddr>),
    /// The `ExpirePending` append finished.
    Expired,
    /// A repair copy finished (either way).
    CopyDone { name: String, version: u64 },
    /// Storing a job's output finished (either way).
    OutputStored(JobId),
}

/// What the request path asks of the leader's state.
pub(crate) enum Request {
    /// Whether reads may skip the quorum round.
    LeaseHolds(oneshot::Sender<bool>),
    /// A quorum acknowledged the leader of `term` after `since`.
    ExtendLease {
        term: u64,
        since: Instant,
    },
    /// Reserve a version for a put: the version, or why no plan was made.
    PlanPut {
        req: PlanRequest,
        reply: oneshot::Sender<Result<u64, Failed>>,
    },
    /// Claim a put's plan for its commit or abort.
    Claim {
        name: String,
        version: u64,
        plan: u64,
        reply: oneshot::Sender<Result<Claimed, Failed>>,
    },
    /// The next query for a worker, if there is one now.
    Dispatch {
        worker: SocketAddr,
        reply: oneshot::Sender<Option<Picked>>,
    },
    /// A query's results were applied.
    Completed {
        query: u64,
        job: JobId,
        images: Vec<u32>,
        new: u32,
        elapsed: Duration,
    },
    /// A worker cannot run a query's model: (job, distinct refusals).
    Refuse {
        query: u64,
        worker: SocketAddr,
        reply: oneshot::Sender<Option<(JobId, usize)>>,
    },
    /// Jobs changed in the applied state (a submit): admit them now.
    JobsChanged,
    Rates(oneshot::Sender<Vec<RateInfo>>),
    Latency(oneshot::Sender<Vec<LatencyInfo>>),
    Placement(oneshot::Sender<Vec<Placement>>),
}

/// Reaches the leader task of one term. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LeaderHandle {
    term: u64,
    tx: mpsc::Sender<Input>,
    /// Bumped whenever workers waiting for a query should look again.
    work: watch::Receiver<u64>,
}

impl LeaderHandle {
    /// The term this task leads in (the id of its put plans).
    pub(crate) fn term(&self) -> u64 {
        self.term
    }

    /// A receiver that changes when work may have appeared.
    pub(crate) fn work(&self) -> watch::Receiver<u64> {
        self.work.clone()
    }

    /// Sends a request without waiting for an answer.
    pub(crate) async fn tell(&self, req: Request) -> Result<(), Refusal> {
        self.tx
            .send(Input::Request(req))
            .await
            .map_err(|_| Refusal::NotLeader(None))
    }

    /// Sends a request made around a reply channel and waits for the answer.
    /// A task that ended (its term is over) means this agent no longer leads.
    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.tell(make(tx)).await?;
        rx.await.map_err(|_| Refusal::NotLeader(None))
    }
}

/// Watches Raft's metrics on a voter and keeps one leader task running
/// while this voter leads, a new one per term; publishes its handle.
pub(crate) async fn supervise(
    inner: Arc<Inner>,
    publish: watch::Sender<Option<LeaderHandle>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(raft) = inner.raft.clone() else {
        return;
    };
    let me = voter_id(inner.s.me);
    let mut metrics = raft.metrics();
    let mut running: Option<(u64, JoinHandle<()>)> = None;
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            (m.state == openraft::ServerState::Leader && m.current_leader == Some(me))
                .then_some(m.current_term)
        };
        if running.as_ref().map(|(t, _)| *t) != leading {
            if let Some((term, task)) = running.take() {
                publish.send_replace(None);
                task.abort();
                tracing::info!(term, "leader task stopped: this agent no longer leads");
            }
            if let Some(term) = leading {
                let (handle, task) = spawn(inner.clone(), term);
                publish.send_replace(Some(handle));
                running = Some((term, task));
                tracing::info!(term, "leader task started");
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    publish.send_replace(None);
    if let Some((_, task)) = running {
        task.abort();
    }
}

fn spawn(inner: Arc<Inner>, term: u64) -> (LeaderHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let (work_tx, work) = watch::channel(0);
    let s = &inner.s;
    let cfg = CoreConfig {
        min_lease: s.inference.lease_timeout,
        forget_plans: s.sdfs.put_timeout * 2,
        read_lease: s.control.election_timeout_min / 2,
        repair_concurrency: s.sdfs.repair_concurrency,
        replicas: s.replicas,
        registry: s.registry.clone(),
    };
    let task = LeaderTask {
        core: LeaderCore::new(term, cfg),
        inner,
        tx: tx.clone(),
        work: work_tx,
        claims: HashMap::new(),
        applied: None,
    };
    let join = tokio::spawn(task.run(rx));
    (LeaderHandle { term, tx, work }, join)
}

/// The task's state: the core and the ends of its channels.
struct LeaderTask {
    core: LeaderCore,
    inner: Arc<Inner>,
    /// For feeding back the results of spawned work.
    tx: mpsc::Sender<Input>,
    work: watch::Sender<u64>,
    /// Commits waiting for their appended plan's outcome.
    claims: HashMap<(String, u64), oneshot::Sender<Result<Claimed, Failed>>>,
    /// The applied index the scheduler was last synced at.
    applied: Option<u64>,
}

impl LeaderTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let Some(raft) = self.inner.raft.clone() else {
            return;
        };
        let mut metrics = raft.metrics();
        let mut events = Some(self.inner.membership.subscribe());
        let mut tick = tokio::time::interval(self.inner.s.control.maintenance_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(i) => i,
                    None => return,
                },
                _ = tick.tick() => Input::Tick,
                changed = metrics.changed() => match changed {
                    Ok(()) => Input::Metrics,
                    Err(_) => return,
                },
                ev = async { events.as_mut().expect("guarded").recv().await }, if events.is_some() => match ev {
                    Ok(e) => match e.event {
                        Event::Failed(id) | Event::Left(id) => Input::Departed(id.addr),
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    // Membership stopped: keep the other inputs.
                    Err(broadcast::error::RecvError::Closed) => {
                        events = None;
                        continue;
                    }
                },
            };
            if !self.handle(input).await {
                return;
            }
        }
    }

    /// Reacts to one input; `false` once this term's leadership is over.
    async fn handle(&mut self, input: Input) -> bool {
        let now = Instant::now();
        match input {
            Input::Request(r) => self.request(r, now).await,
            Input::Departed(worker) => {
                let n = self.core.worker_gone(worker);
                if n > 0 {
                    tracing::info!(%worker, queries = n, "re-dispatching the queries of a departed worker");
                    self.wake_workers();
                }
                self.maintain(now);
            }
            Input::Metrics => return self.metrics(now),
            Input::Tick => self.maintain(now),
            Input::PlanSettled {
                name,
                version,
                outcome,
            } => {
                if let Some(answer) = self.core.plans().settled(&name, version, outcome)
                    && let Some(reply) = self.claims.remove(&(name, version))
                {
                    let _ = reply.send(answer);
                }
            }
            Input::View(live, alive) => self.repair(&live, &alive),
            Input::Expired => self.core.expired(),
            Input::CopyDone { name, version } => self.core.copy_done(&name, version),
            Input::OutputStored(job) => self.core.output_stored(job),
        }
        true
    }

    fn wake_workers(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Reads the applied state (the state-machine lock is held only for `f`).
    fn read<T>(&mut self, f: impl FnOnce(&mut LeaderCore, &super::state::MetaState) -> T) -> T {
        let sm = self.inner.sm.as_ref().expect("the leader is a voter");
        let core = &mut self.core;
        read_sm(sm, |d| f(core, &d.state))
    }

    /// Still the leader of this term? New applied entries may bring jobs.
    fn metrics(&mut self, now: Instant) -> bool {
        let Some(raft) = &self.inner.raft else {
            return false;
        };
        let (leading, applied) = {
            let m = raft.metrics().borrow().clone();
            (
                m.state == openraft::ServerState::Leader
                    && m.current_term == self.core.term()
                    && m.current_leader == Some(voter_id(self.inner.s.me)),
                m.last_applied.map(|l| l.index),
            )
        };
        if !leading {
            return false;
        }
        if applied != self.applied {
            self.applied = applied;
            if self.read(|core, s| core.sync(s, now)) {
                self.wake_workers();
            }
        }
        true
    }

    async fn request(&mut self, req: Request, now: Instant) {
        match req {
            Request::LeaseHolds(reply) => {
                let _ = reply.send(self.lease_holds(now));
            }
            Request::ExtendLease { term, since } => self.core.lease().extend(term, since),
            Request::PlanPut { req, reply } => {
                let _ = reply.send(self.plan_put(req, now).await);
            }
            Request::Claim {
                name,
                version,
                plan,
                reply,
            } => match self.core.plans().claim(&name, version, plan) {
                Claim::Now(answer) => {
                    let _ = reply.send(answer);
                }
                Claim::Wait => {
                    self.claims.insert((name, version), reply);
                }
            },
            Request::Dispatch { worker, reply } => {
                let picked = self.read(|core, s| core.dispatch(worker, s, now));
                let _ = reply.send(picked);
            }
            Request::Completed {
                query,
                job,
                images,
                new,
                elapsed,
            } => {
                self.read(|core, s| core.sync(s, now));
                self.core.completed(query, job, &images, new, elapsed, now);
            }
            Request::Refuse {
                query,
                worker,
                reply,
            } => {
                let _ = reply.send(self.core.refuse(query, worker));
                self.wake_workers();
            }
            Request::JobsChanged => {
                if self.read(|core, s| core.sync(s, now)) {
                    self.wake_workers();
                }
            }
            Request::Rates(reply) => {
                let rates = self.read(|core, s| {
                    core.sync(s, now);
                    core.rates(s, now)
                });
                let _ = reply.send(rates);
            }
            Request::Latency(reply) => {
                let _ = reply.send(self.core.latency());
            }
            Request::Placement(reply) => {
                self.read(|core, s| core.sync(s, now));
                let _ = reply.send(self.core.placement());
            }
        }
    }

    /// Whether reads may skip the quorum round: the lease runs, this agent
    /// still leads in its term, and an entry of this term is applied (so
    /// everything earlier leaders committed is too).
    fn lease_holds(&mut self, now: Instant) -> bool {
        let Some(raft) = &self.inner.raft else {
            return false;
        };
        let term = self.core.term();
        let current = {
            let m = raft.metrics();
            let m = m.borrow();
            m.state == openraft::ServerState::Leader
                && m.current_term == term
                && m.last_applied.is_some_and(|l| l.leader_id.term == term)
        };
        current && self.core.lease().holds(now)
    }

    /// Makes a put's plan. A large plan's entry is handed to Raft here, in
    /// version order; its commit is awaited by a spawned future.
    async fn plan_put(&mut self, req: PlanRequest, now: Instant) -> Result<u64, Failed> {
        let planned = self.read(|core, s| core.plans().plan(req, |n| s.next_version(n), now));
        let Some(op) = planned.append else {
            return Ok(planned.version);
        };
        let Op::BeginPutAt { name, version, .. } = &op else {
            unreachable!("a plan appends BeginPutAt");
        };
        let (name, version) = (name.clone(), *version);
        let raft = self.inner.raft.as_ref().expect("the leader is a voter");
        let cmd = Command {
            now_ms: unix_ms(),
            op,
        };
        // Only hands the entry to the Raft core; does not wait for it.
        let rx = raft
            .client_write_ff(cmd)
            .await
            .map_err(|e| Failed::Raft(e.to_string()))?;
        self.core.plans().appended(&name, version, now);
        let wait = self.inner.s.leader_wait();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(wait, rx).await {
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
            let _ = tx
                .send(Input::PlanSettled {
                    name,
                    version,
                    outcome,
                })
                .await;
        });
        Ok(version)
    }

    /// The periodic pass: starts what the core asks for.
    fn maintain(&mut self, now: Instant) {
        let Maintenance {
            expire_puts,
            fetch_view,
            outputs,
            work,
        } = self.read(|core, s| core.maintain(s, now, unix_ms()));
        if work {
            self.wake_workers();
        }
        if expire_puts {
            let (inner, tx) = (self.inner.clone(), self.tx.clone());
            tokio::spawn(async move {
                match inner.propose(Op::ExpirePending).await {
                    Ok(_) => tracing::info!("expired stale pending puts"),
                    Err(Refusal::NotLeader(_)) => {}
                    Err(Refusal::Failed(e)) => {
                        tracing::warn!(error = %e, "cannot expire stale puts")
                    }
                }
                let _ = tx.send(Input::Expired).await;
            });
        }
        if fetch_view {
            let (inner, tx) = (self.inner.clone(), self.tx.clone());
            tokio::spawn(async move {
                let (live, alive) = inner.live_view().await;
                let _ = tx.send(Input::View(live, alive)).await;
            });
        }
        for job in outputs {
            let (inner, tx) = (self.inner.clone(), self.tx.clone());
            tokio::spawn(async move {
                match inner.store_output(job).await {
                    Ok(()) => tracing::info!(job, "job output stored in SDFS"),
                    Err(e) => tracing::warn!(job, error = %e, "cannot store the job's output yet"),
                }
                let _ = tx.send(Input::OutputStored(job)).await;
            });
        }
    }

    /// Plans repair from the membership view and starts it: trims in one
    /// spawned future, each copy in its own.
    fn repair(&mut self, live: &[SocketAddr], alive: &[SocketAddr]) {
        let plan = self.read(|core, s| core.plan_repair(s, View { live, alive }));
        for (name, version) in &plan.unavailable {
            tracing::warn!(%name, version, "no live holder of this version: it is unavailable until one returns");
        }
        if !plan.trims.is_empty() {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                for t in plan.trims {
                    let op = Op::SetReplicas {
                        name: t.name,
                        version: t.version,
                        add: Vec::new(),
                        drop: t.dead,
                    };
                    if let Err(Refusal::Failed(e)) = inner.propose(op).await {
                        tracing::warn!(error = %e, "cannot drop dead holders from a replica set");
                    }
                }
            });
        }
        for copy in plan.copies {
            let (inner, tx) = (self.inner.clone(), self.tx.clone());
            tokio::spawn(async move {
                let (name, version) = (copy.name.clone(), copy.version);
                {
                    let _counted = InFlight::new(&inner.repairs);
                    run_copy(&inner, copy).await;
                }
                let _ = tx.send(Input::CopyDone { name, version }).await;
            });
        }
    }
}

/// Counts a repair copy in flight for telemetry while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Asks the target to copy the version, then records it as a holder.
async fn run_copy(inner: &Inner, copy: Copy) {
    let sdfs = &inner.s.sdfs;
    let transfer = Duration::from_secs_f64(copy.size as f64 / sdfs.repair_bytes_per_sec as f64);
    let mut client = Client::new(copy.target).with_timeout(transfer + sdfs.put_timeout);
    let req = ApiRequest::Data(DataRequest::Replicate {
        name: copy.name.clone(),
        version: copy.version,
        size: copy.size,
        checksum: copy.checksum,
        sources: copy.sources.clone(),
    });
    tracing::info!(name = %copy.name, version = copy.version, target = %copy.target, "repair: copying");
    match client.call(&req).await {
        Ok(Response::Stored { holders, .. }) if holders.contains(&copy.target) => {
            let op = Op::SetReplicas {
                name: copy.name.clone(),
                version: copy.version,
                add: vec![copy.target],
                drop: copy.dead,
            };
            match inner.propose(op).await {
                Ok(_) => {
                    tracing::info!(name = %copy.name, version = copy.version, target = %copy.target, "repair: copy recorded")
                }
                Err(Refusal::NotLeader(_)) => {}
                Err(Refusal::Failed(e)) => {
                    tracing::warn!(name = %copy.name, error = %e, "repair: cannot record the copy")
                }
            }
        }
        Ok(other) => {
            tracing::warn!(name = %copy.name, target = %copy.target, answer = ?other, "repair: copy refused")
        }
        Err(e) => {
            tracing::warn!(name = %copy.name, target = %copy.target, error = %e, "repair: copy failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_in_flight_is_counted_until_it_ends() {
        let n = AtomicU64::new(0);
        {
            let _a = InFlight::new(&n);
            let _b = InFlight::new(&n);
            assert_eq!(n.load(Ordering::Relaxed), 2);
        }
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }
}
