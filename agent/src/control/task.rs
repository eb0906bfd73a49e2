//! The leader task: one tokio task per leader term owns the [`LeaderCore`]
//! (scheduler, put plans, read lease, repair and output bookkeeping) and
//! serves every control-plane request that reaches this leader, start to
//! finish. The supervisor ([`supervise`]) starts it when this voter becomes
//! leader for a term and drops it when that term ends.
//!
//! Everything reaches it as one [`Input`]: requests with a oneshot reply
//! (through a [`LeaderHandle`]), membership departures, Raft status changes,
//! ticks, and the results of the work it spawned. A request that needs the
//! current state waits behind the read lease (one quorum round renews it for
//! all that wait); `serve.rs` decides each request's [`Step`], and this task
//! carries it out. It never waits for a Raft commit, a quorum round or a
//! transfer: those run in spawned futures that feed their result back.

use super::core::{CoreConfig, LeaderCore, Maintenance, Scanned};
use super::error::{ControlError, Refusal};
use super::plans::Failed;
use super::ports::{Ports, Status};
use super::repair::{Copy, View};
use super::serve::{self, Answer, Ctx, LiveView, ServeConfig, Step, Then, Upkeep};
use super::state::{HEALTH_SAMPLE_MAX, LIST_SCAN_MAX, MetaState};
use super::types::{Applied, Command, Op};
use crate::membership::Event;
use crate::membership::driver::TimedEvent;
use dml_shared::clock::unix_ms;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::infer::{InferRequest, InferResponse, JobId};
use dml_shared::sdfs::{LIST_PAGE_MAX, MetaRequest, MetaResponse};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Inputs queued for the leader task before senders wait.
const INPUT_QUEUE: usize = 1024;

/// The answer to one request.
pub(crate) type Reply = oneshot::Sender<Result<ControlResponse, Refusal>>;

/// Everything the leader task reacts to.
pub(crate) enum Input {
    /// A control-plane request; answered on its oneshot.
    Serve { req: ControlRequest, reply: Reply },
    /// Membership: this member failed or left.
    Departed(SocketAddr),
    /// Raft's status changed (leadership, applied index).
    Status,
    /// The maintenance period elapsed.
    Tick,
    /// A quorum round started at `since` ended.
    Confirmed {
        since: Instant,
        result: Result<(), Refusal>,
    },
    /// An entry this task appended applied, failed or timed out.
    Applied {
        then: Then,
        reply: Option<Reply>,
        sent: Instant,
        result: Result<(Applied, u64), Refusal>,
    },
    /// A large put's appended plan applied or failed.
    PlanSettled {
        name: String,
        version: u64,
        outcome: Result<(), Failed>,
    },
    /// The membership view, read for a request or for repair.
    Viewed { view: LiveView, then: AfterView },
    /// A parked lease request's wait is over.
    WaitOver(u64),
    /// A batch waiting to fill (dynamic batching) is ready now.
    BatchReady,
    /// A repair copy to `target` ended; the entry recording it if it stored.
    Copied {
        name: String,
        version: u64,
        target: SocketAddr,
        record: Option<Op>,
    },
    /// Storing a job's output ended; the file if it stored.
    OutputPut { job: JobId, name: Option<String> },
    /// The look for pending puts past their deadline ended.
    ExpiryChecked { found: bool },
    /// A repair and balance scan ended (`None`: it failed).
    Scanned(Option<Scanned>),
}

/// What a membership view was read for.
pub(crate) enum AfterView {
    Serve(ControlRequest, Reply),
    Repair,
}

/// Work waiting for the read lease.
enum Gated {
    Serve(ControlRequest, Reply, Option<LiveView>),
    Append(Op, Then, Option<Reply>),
}

/// What the leader task needs from the settings.
#[derive(Clone, Debug)]
pub(crate) struct TaskConfig {
    pub core: CoreConfig,
    pub serve: ServeConfig,
    /// How long an append or a quorum round may take.
    pub leader_wait: Duration,
    pub maintenance_period: Duration,
}

/// Reaches the leader task of one term. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LeaderHandle {
    tx: mpsc::Sender<Input>,
    term: u64,
}

impl LeaderHandle {
    /// Has the task serve `req`. A task that ended (its term is over) means
    /// this agent no longer leads.
    /// A request that must not run twice and whose task ended after taking
    /// it may have been appended: its outcome is unknown, not a redirect.
    pub(crate) async fn serve(&self, req: ControlRequest) -> Result<ControlResponse, Refusal> {
        let (reply, rx) = oneshot::channel();
        let once = !req.is_idempotent();
        self.tx
            .send(Input::Serve { req, reply })
            .await
            .map_err(|_| Refusal::NotLeader(None))?;
        rx.await.map_err(|_| match once {
            true => Refusal::Failed(ControlError::SteppedDown { term: self.term }),
            false => Refusal::NotLeader(None),
        })?
    }
}

/// Watches Raft's metrics on a voter: publishes its [`Status`], and keeps
/// one leader task running while this voter leads, a new one per term.
pub(crate) async fn supervise(
    inner: Arc<super::Inner>,
    publish: watch::Sender<Option<LeaderHandle>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(raft) = inner.raft.get().cloned() else {
        return;
    };
    let me = inner.id();
    let mut metrics = raft.metrics();
    let (status_tx, _) = watch::channel(Status::default());
    let mut running: Option<(u64, JoinHandle<()>)> = None;
    loop {
        let status = {
            let m = metrics.borrow_and_update();
            Status {
                leading: m.state == openraft::ServerState::Leader && m.current_leader == Some(me),
                term: m.current_term,
                applied: m.last_applied.map(|l| (l.leader_id.term, l.index)),
            }
        };
        status_tx.send_replace(status);
        let leading = status.leading.then_some(status.term);
        if running.as_ref().map(|(t, _)| *t) != leading {
            if let Some((term, task)) = running.take() {
                publish.send_replace(None);
                task.abort();
                tracing::info!(term, "leader task stopped: this agent no longer leads");
            }
            if let Some(term) = leading {
                let cfg = task_config(&inner.s);
                let ports = super::ports::Live(inner.clone());
                let events = Some(inner.membership.subscribe());
                let (handle, task) = spawn(ports, cfg, term, status_tx.subscribe(), events);
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

fn task_config(s: &super::Settings) -> TaskConfig {
    TaskConfig {
        core: CoreConfig {
            min_lease: s.inference.lease_timeout,
            forget_plans: s.sdfs.put_timeout * 2,
            put_timeout: s.sdfs.put_timeout,
            read_lease: s.control.election_timeout_min / 2,
            repair_bounds: super::repair::Bounds {
                per_source: s.sdfs.repair_per_source,
                per_target: s.sdfs.repair_per_target,
            },
            replicas: s.replicas,
            balance_threshold: s.sdfs.auto_balance.then_some(s.sdfs.balance_threshold),
            registry: s.registry.clone(),
        },
        serve: ServeConfig {
            replicas: s.replicas,
            write_quorum: s.sdfs.write_quorum,
            put_timeout: s.sdfs.put_timeout,
            max_lease_wait: crate::timing::MAX_LEASE_WAIT,
            keyring_seed: dml_shared::auth::installed().ok().map(|a| a.keyring()),
            keyring_encrypted: s.encrypt_tcp,
        },
        leader_wait: s.leader_wait(),
        maintenance_period: s.control.maintenance_period,
    }
}

/// Starts the leader task of `term`.
pub(crate) fn spawn<P: Ports>(
    ports: P,
    cfg: TaskConfig,
    term: u64,
    status: watch::Receiver<Status>,
    events: Option<broadcast::Receiver<TimedEvent>>,
) -> (LeaderHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let task = LeaderTask {
        core: LeaderCore::new(term, cfg.core.clone(), now()),
        ports: Arc::new(ports),
        cfg,
        tx: tx.clone(),
        status: status.clone(),
        gated: Vec::new(),
        confirming: false,
        claims: HashMap::new(),
        parked: HashMap::new(),
        next_wait: 0,
        batch_timer: None,
        applied: None,
        synced: false,
        barrier: false,
        unsynced: Vec::new(),
        clock: TermClock::start(),
    };
    let join = tokio::spawn(task.run(rx, status, events));
    (LeaderHandle { tx, term }, join)
}

/// A worker's lease request waiting for work.
struct Parked {
    worker: SocketAddr,
    deadline: Instant,
    reply: Reply,
}

/// The task's state: the core, the work in flight, and its channels.
struct LeaderTask<P> {
    core: LeaderCore,
    ports: Arc<P>,
    cfg: TaskConfig,
    /// For feeding back the results of spawned work.
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<Status>,
    /// Requests and appends waiting for the read lease.
    gated: Vec<Gated>,
    /// A quorum round is in flight.
    confirming: bool,
    /// Commits and aborts waiting for their appended plan's outcome.
    claims: HashMap<(String, u64), Vec<(MetaRequest, Reply)>>,
    /// Lease requests waiting for work, by number.
    parked: HashMap<u64, Parked>,
    next_wait: u64,
    /// When a [`Input::BatchReady`] is due, if one is.
    batch_timer: Option<Instant>,
    /// The applied index the scheduler was last synced at.
    applied: Option<u64>,
    /// This task's barrier entry has applied (see [`LeaderTask::start_barrier`]).
    synced: bool,
    /// The barrier entry is in flight.
    barrier: bool,
    /// Requests waiting for the barrier.
    unsynced: Vec<(ControlRequest, Reply, Option<LiveView>)>,
    /// The wall clock as this term began, run on by the monotonic clock.
    clock: TermClock,
}

/// The leader's wall clock for one term: read once at the start, then
/// advanced by the monotonic clock, so a wall-clock jump (an NTP step, a
/// host's clock set by hand) during the term moves no deadline or stamp of
/// its entries. Jumps before the term are [`LeaderCore::maintain`]'s.
#[derive(Clone, Copy, Debug)]
struct TermClock {
    wall_ms: u64,
    mono: Instant,
}

impl TermClock {
    fn start() -> Self {
        Self {
            wall_ms: unix_ms(),
            mono: now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.wall_ms + now().saturating_duration_since(self.mono).as_millis() as u64
    }
}

/// The time on the task's clock (tokio's, so a paused runtime drives it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn send(reply: Reply, answer: Result<ControlResponse, ControlError>) {
    let _ = reply.send(answer.map_err(Refusal::Failed));
}

impl<P: Ports> LeaderTask<P> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut status: watch::Receiver<Status>,
        mut events: Option<broadcast::Receiver<TimedEvent>>,
    ) {
        let mut tick = tokio::time::interval(self.cfg.maintenance_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.start_barrier().await;
        loop {
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(i) => i,
                    None => return,
                },
                _ = tick.tick() => Input::Tick,
                changed = status.changed() => match changed {
                    Ok(()) => Input::Status,
                    Err(_) => return,
                },
                ev = async { events.as_mut().expect("guarded").recv().await }, if events.is_some() => match ev {
                    Ok(e) => match e.event {
                        Event::Failed(id) | Event::Left(id) => Input::Departed(id.addr),
                        // Back under the same identity: its copies count again and it may
                        // take queries; views are read by address, so a scan now is enough.
                        Event::Reinstated(_) => Input::Tick,
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
        match input {
            Input::Serve { req, reply } => self.serve(req, reply, None).await,
            Input::Departed(worker) => {
                self.core.scan_soon();
                let n = self.core.worker_gone(worker);
                if n > 0 {
                    tracing::info!(%worker, queries = n, "re-dispatching the queries of a departed worker");
                    self.wake().await;
                }
                self.maintain().await;
            }
            Input::Status => return self.status_changed().await,
            Input::Tick => self.maintain().await,
            Input::Confirmed { since, result } => self.confirmed(since, result).await,
            Input::Applied {
                then,
                reply,
                sent,
                result,
            } => {
                let recorded = matches!(then, Then::Upkeep(Upkeep::CopyRecorded { .. }));
                self.applied(then, reply, sent, result).await;
                if recorded {
                    self.next_repairs();
                }
            }
            Input::PlanSettled {
                name,
                version,
                outcome,
            } => {
                if let Some(claim) = self.core.plans().settled(&name, version, outcome) {
                    for (req, reply) in self.claims.remove(&(name, version)).unwrap_or_default() {
                        let step = self.read(|_, cx| serve::claimed(cx, req, claim.clone()));
                        self.execute(step, None, reply).await;
                    }
                }
            }
            Input::Viewed { view, then } => match then {
                AfterView::Serve(req, reply) => self.serve(req, reply, Some(view)).await,
                AfterView::Repair => self.scan(&view),
            },
            Input::ExpiryChecked { found: true } => {
                self.append(Op::ExpirePending, Then::Upkeep(Upkeep::Expired), None)
                    .await;
            }
            Input::ExpiryChecked { found: false } => self.core.expired(),
            Input::Scanned(done) => self.scanned(done).await,
            Input::WaitOver(id) => {
                if let Some(p) = self.parked.remove(&id) {
                    let _ = p.reply.send(Ok(InferResponse::Lease(None).into()));
                }
            }
            Input::BatchReady => {
                if self.batch_timer.is_some_and(|t| t <= now()) {
                    self.batch_timer = None;
                }
                self.wake().await;
            }
            Input::Copied {
                name,
                version,
                target,
                record,
            } => match record {
                Some(op) => {
                    let then = Then::Upkeep(Upkeep::CopyRecorded {
                        name,
                        version,
                        target,
                    });
                    self.append(op, then, None).await;
                }
                None => {
                    self.core.copy_done(&name, version, target, false, now());
                    self.next_repairs();
                }
            },
            Input::OutputPut { job, name } => match name {
                Some(name) => {
                    let then = Then::Upkeep(Upkeep::OutputRecorded(job));
                    self.append(Op::SetJobOutput { job, name }, then, None)
                        .await;
                }
                None => self.core.output_stored(job),
            },
        }
        true
    }

    /// Runs `f` on the core and the current state.
    fn read<T>(&mut self, f: impl FnOnce(&mut LeaderCore, &Ctx) -> T) -> T {
        self.read_with(None, f)
    }

    fn read_with<T>(
        &mut self,
        view: Option<&LiveView>,
        f: impl FnOnce(&mut LeaderCore, &Ctx) -> T,
    ) -> T {
        let (ports, core, cfg, clock) = (&self.ports, &mut self.core, &self.cfg.serve, self.clock);
        ports.read(|state| {
            let cx = Ctx {
                cfg,
                state,
                view,
                now: now(),
                now_ms: clock.now_ms(),
            };
            f(core, &cx)
        })
    }

    /// Whether the state is current and appends are allowed without a
    /// quorum round: the lease runs, this agent still leads in its term, and
    /// an entry of this term is applied (so everything earlier leaders
    /// committed is too).
    fn lease_holds(&mut self) -> bool {
        let term = self.core.term();
        let s = *self.status.borrow();
        self.synced && s.leading && s.term == term && s.applied.is_some_and(|(t, _)| t == term) && {
            let at = now();
            self.core.lease().holds(at)
        }
    }

    /// Serves `req` now if the lease holds, else after a quorum round.
    /// Leases of queries and workers' unready reports touch the leader core only and never
    /// wait.
    async fn serve(&mut self, req: ControlRequest, reply: Reply, view: Option<LiveView>) {
        let ungated = matches!(
            req,
            ControlRequest::Infer(InferRequest::Lease { .. } | InferRequest::Unready { .. })
        );
        if !ungated && !self.synced {
            self.unsynced.push((req, reply, view));
        } else if ungated || self.lease_holds() {
            self.serve_now(req, reply, view).await;
        } else {
            self.gate(Gated::Serve(req, reply, view));
        }
    }

    /// Appends this task's first entry. A leader may take over its own term after a restart
    /// (openraft restores a leader whose vote it finds committed), and then its state can lack
    /// entries it committed before the restart (the committed index on disk lags): until an
    /// entry appended now has applied, the state is not current, so requests wait for it.
    async fn start_barrier(&mut self) {
        if self.synced || self.barrier {
            return;
        }
        self.barrier = true;
        let then = Then::Upkeep(Upkeep::Barrier);
        self.append_now(Op::ExpirePending, then, None).await;
    }

    /// The barrier entry applied (the waiting requests are served) or failed (they fail, and
    /// the next tick tries again).
    async fn barrier_done(&mut self, sent: Instant, result: Result<(Applied, u64), Refusal>) {
        self.barrier = false;
        let waiting = std::mem::take(&mut self.unsynced);
        match result {
            Ok((_, term)) if term == self.core.term() => {
                self.synced = true;
                self.core.lease().extend(term, sent);
                for (req, reply, view) in waiting {
                    self.serve(req, reply, view).await;
                }
            }
            Ok(_) => {
                for (_, reply, _) in waiting {
                    let _ = reply.send(Err(Refusal::NotLeader(None)));
                }
            }
            Err(e) => {
                // Nothing the waiting requests asked for was written.
                let e = match e {
                    Refusal::Failed(ControlError::Unconfirmed { waited, .. }) => {
                        Refusal::Failed(ControlError::NoQuorum { waited })
                    }
                    e => e,
                };
                for (_, reply, _) in waiting {
                    let _ = reply.send(Err(repeat(&e)));
                }
            }
        }
    }

    async fn serve_now(&mut self, req: ControlRequest, reply: Reply, view: Option<LiveView>) {
        // A worker that cannot run a query's model hands it back: others
        // waiting for work may take it.
        let refused = view.is_some()
            && matches!(
                req,
                ControlRequest::Infer(InferRequest::Complete {
                    failed: Some(_),
                    ..
                })
            );
        let step = self.read_with(view.as_ref(), |core, cx| {
            serve::serve(core, cx, req.clone())
        });
        let balance = matches!(
            req,
            ControlRequest::Sdfs(MetaRequest::Balance { dry_run: false })
        );
        self.execute(step, Some(req), reply).await;
        if refused {
            self.wake().await;
        }
        if balance {
            self.next_repairs();
        }
    }

    /// Carries out one step of a request (`req` for the steps that serve it
    /// again later).
    async fn execute(&mut self, step: Step, req: Option<ControlRequest>, reply: Reply) {
        match step {
            Step::Reply(r) => send(reply, r),
            Step::Append(op, then) => self.append(op, then, Some(reply)).await,
            Step::View => match req {
                Some(req) => self.fetch_view(AfterView::Serve(req, reply)),
                None => send(
                    reply,
                    Err(ControlError::Raft("a view without a request".into())),
                ),
            },
            Step::AwaitPlan { name, version } => match req {
                Some(ControlRequest::Sdfs(m)) => {
                    self.claims
                        .entry((name, version))
                        .or_default()
                        .push((m, reply));
                }
                _ => send(
                    reply,
                    Err(ControlError::Raft("a claim without a put".into())),
                ),
            },
            Step::AppendPlan { op, reply: answer } => self.append_plan(op, answer, reply).await,
            Step::Park {
                worker,
                deadline,
                ready,
            } => {
                self.batch_ready_at(ready);
                let id = self.next_wait;
                self.next_wait += 1;
                self.parked.insert(
                    id,
                    Parked {
                        worker,
                        deadline,
                        reply,
                    },
                );
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline.into()).await;
                    let _ = tx.send(Input::WaitOver(id)).await;
                });
            }
            // The lock is held only to take the listing's O(1) copy.
            Step::List(glob) => {
                let listing = self.ports.read(|s| s.listing());
                tokio::task::spawn_blocking(move || {
                    let files = listing.all(&glob);
                    send(reply, Ok(MetaResponse::Files(files).into()));
                });
            }
            Step::ListPage { glob, after, limit } => {
                let listing = self.ports.read(|s| s.listing());
                tokio::task::spawn_blocking(move || {
                    let limit = limit.min(LIST_PAGE_MAX) as usize;
                    let page = listing.page(&glob, after.as_deref(), limit, LIST_SCAN_MAX);
                    let files = MetaResponse::FilesPage {
                        files: page.files,
                        next: page.next,
                    };
                    send(reply, Ok(files.into()));
                });
            }
            Step::Health { replicas, sample } => {
                let listing = self.ports.read(|s| s.listing());
                tokio::task::spawn_blocking(move || {
                    let sample = sample.min(HEALTH_SAMPLE_MAX) as usize;
                    let totals = listing.totals(replicas, sample);
                    send(reply, Ok(MetaResponse::Health(totals).into()));
                });
            }
            Step::Scan(scan) => {
                let listing = self.ports.read(|s| s.listing());
                tokio::task::spawn_blocking(move || {
                    send(reply, Ok(scan.answer(&listing).into()));
                });
            }
            Step::FetchOutput { name, job } => {
                let read = self.ports.read_output(name);
                tokio::spawn(async move {
                    let answer = read
                        .await
                        .map(|results| InferResponse::Output { job, results }.into());
                    send(reply, answer);
                });
            }
        }
    }

    /// Queues work behind the read lease and starts a quorum round if none
    /// is in flight.
    fn gate(&mut self, work: Gated) {
        self.gated.push(work);
        if self.confirming {
            return;
        }
        self.confirming = true;
        let since = now();
        let (confirm, tx) = (self.ports.confirm(), self.tx.clone());
        tokio::spawn(async move {
            let result = confirm.await;
            let _ = tx.send(Input::Confirmed { since, result }).await;
        });
    }

    /// A quorum round ended: the waiting work runs (its state is current
    /// now), or fails with the round.
    async fn confirmed(&mut self, since: Instant, result: Result<(), Refusal>) {
        self.confirming = false;
        let gated = std::mem::take(&mut self.gated);
        match result {
            Ok(()) => {
                let term = self.core.term();
                self.core.lease().extend(term, since);
                for work in gated {
                    match work {
                        Gated::Serve(req, reply, view) => self.serve_now(req, reply, view).await,
                        Gated::Append(op, then, reply) => self.append_now(op, then, reply).await,
                    }
                }
            }
            Err(e) => {
                for work in gated {
                    match work {
                        Gated::Serve(_, reply, _) => {
                            let _ = reply.send(Err(repeat(&e)));
                        }
                        Gated::Append(_, then, reply) => {
                            let failed = match repeat(&e) {
                                Refusal::Failed(f) => f,
                                Refusal::NotLeader(_) => no_longer_leads(),
                            };
                            serve::answer(&mut self.core, then, Err(failed), now());
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(repeat(&e)));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Appends `op` under the lease (after a quorum round if it ran out).
    async fn append(&mut self, op: Op, then: Then, reply: Option<Reply>) {
        if self.lease_holds() {
            self.append_now(op, then, reply).await;
        } else {
            self.gate(Gated::Append(op, then, reply));
        }
    }

    /// Hands `op` to Raft now; a spawned future waits up to `leader_wait`
    /// for it to apply and feeds the result back.
    async fn append_now(&mut self, op: Op, then: Then, reply: Option<Reply>) {
        let sent = now();
        let cmd = Command {
            now_ms: self.clock.now_ms(),
            op,
        };
        let submitted = self.ports.submit(cmd).await;
        let (wait, term, tx) = (self.cfg.leader_wait, self.core.term(), self.tx.clone());
        tokio::spawn(async move {
            let result = match submitted {
                Err(e) => Err(e),
                Ok(pending) => match tokio::time::timeout(wait, pending).await {
                    Ok(r) => r,
                    Err(_) => Err(ControlError::Unconfirmed { waited: wait, term }.into()),
                },
            };
            let _ = tx
                .send(Input::Applied {
                    then,
                    reply,
                    sent,
                    result,
                })
                .await;
        });
    }

    /// A large put's plan: handed to Raft in version order, answered at
    /// once; its outcome is fed back for the commit to claim.
    async fn append_plan(&mut self, op: Op, answer: dml_shared::sdfs::MetaResponse, reply: Reply) {
        let Op::BeginPutAt { name, version, .. } = &op else {
            return send(
                reply,
                Err(ControlError::Raft("a plan appends BeginPutAt".into())),
            );
        };
        let (name, version) = (name.clone(), *version);
        let cmd = Command {
            now_ms: self.clock.now_ms(),
            op,
        };
        let pending = match self.ports.submit(cmd).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.core.plans().appended(&name, version, now());
        send(reply, Ok(answer.into()));
        let (wait, tx) = (self.cfg.leader_wait, self.tx.clone());
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(wait, pending).await {
                Err(_) => Err(Failed::NoQuorum(wait)),
                Ok(Err(Refusal::NotLeader(_))) => Err(Failed::Rejected(
                    "the leader changed before the put's plan committed; retry the put".into(),
                )),
                Ok(Err(Refusal::Failed(e))) => Err(Failed::Raft(e.to_string())),
                Ok(Ok((Applied::Rejected(m), _))) => Err(Failed::Rejected(m)),
                Ok(Ok(_)) => Ok(()),
            };
            let _ = tx
                .send(Input::PlanSettled {
                    name,
                    version,
                    outcome,
                })
                .await;
        });
    }

    /// An appended entry's result: the lease is extended (a quorum
    /// appended it after `sent`), and the reply made from it.
    async fn applied(
        &mut self,
        then: Then,
        reply: Option<Reply>,
        sent: Instant,
        result: Result<(Applied, u64), Refusal>,
    ) {
        if matches!(then, Then::Upkeep(Upkeep::Barrier)) {
            return self.barrier_done(sent, result).await;
        }
        // A delete committed: its holders drop their copies now, not at
        // their next reconcile.
        if let (
            Then::Delete {
                name,
                through,
                holders,
            },
            Ok((Applied::Done, _)),
        ) = (&then, &result)
        {
            self.ports.drop_deleted(name, *through, holders);
        }
        // A balance move recorded: the holder it replaced drops its copy.
        if let (
            Then::Upkeep(Upkeep::CopyRecorded {
                name,
                version,
                target,
            }),
            Ok((Applied::Done, _)),
        ) = (&then, &result)
            && let Some(from) = self.core.balance_source(name, *version, *target)
        {
            self.ports.drop_deleted(name, *version, &[from]);
        }
        let worker_wait = match &then {
            Then::Gone {
                lease: None,
                worker,
                deadline,
            } => Some((*worker, *deadline)),
            _ => None,
        };
        let (result, hint) = match result {
            Ok((a, term)) => {
                self.core.lease().extend(term, sent);
                (Ok(a), None)
            }
            // Raft took the entry, then this leader stepped down: a redirect
            // would run the request twice if a later leader commits it.
            Err(Refusal::NotLeader(_)) if then.once_only() => {
                let term = self.core.term();
                (Err(ControlError::SteppedDown { term }), None)
            }
            Err(Refusal::NotLeader(h)) => (Err(no_longer_leads()), Some(h)),
            Err(Refusal::Failed(e)) => (Err(e), None),
        };
        let answer = serve::answer(&mut self.core, then, result, now());
        let Some(reply) = reply else {
            return;
        };
        if let Some(h) = hint {
            let _ = reply.send(Err(Refusal::NotLeader(h)));
            return;
        }
        match answer {
            Answer::Reply(r) => send(reply, *r),
            Answer::LeaseAgain => {
                if let Some((worker, deadline)) = worker_wait {
                    let step = self.read(|core, cx| serve::lease(core, cx, worker, deadline));
                    self.execute(step, None, reply).await;
                }
            }
            Answer::None => {}
        }
    }

    /// Leadership or the applied index changed: `false` once this term's
    /// leadership is over; new applied entries may bring jobs.
    async fn status_changed(&mut self) -> bool {
        let s = *self.status.borrow();
        if !(s.leading && s.term == self.core.term()) {
            return false;
        }
        let applied = s.applied.map(|(_, i)| i);
        if applied != self.applied {
            self.applied = applied;
            if self.read(|core, cx| core.sync(cx.state, cx.now)) {
                self.wake().await;
            }
        }
        true
    }

    /// Wakes the parked lease requests when a batch waiting to fill will be
    /// ready (one timer, for the earliest).
    fn batch_ready_at(&mut self, ready: Option<Instant>) {
        let Some(at) = ready else {
            return;
        };
        if self.batch_timer.is_some_and(|t| t <= at && t > now()) {
            return;
        }
        self.batch_timer = Some(at);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = tx.send(Input::BatchReady).await;
        });
    }

    /// Work may have appeared: parked lease requests look again.
    async fn wake(&mut self) {
        let ids: Vec<u64> = self.parked.keys().copied().collect();
        for id in ids {
            let Some(p) = self.parked.remove(&id) else {
                continue;
            };
            let step = self.read(|core, cx| serve::lease(core, cx, p.worker, p.deadline));
            match step {
                // Still nothing: keep waiting, on the timer already set.
                Step::Park { ready, .. } => {
                    self.batch_ready_at(ready);
                    self.parked.insert(id, p);
                }
                step => self.execute(step, None, p.reply).await,
            }
        }
    }

    fn fetch_view(&self, then: AfterView) {
        let (view, tx) = (self.ports.view(), self.tx.clone());
        tokio::spawn(async move {
            let view = view.await;
            let _ = tx.send(Input::Viewed { view, then }).await;
        });
    }

    /// The periodic pass: starts what the core asks for.
    async fn maintain(&mut self) {
        if !self.synced {
            self.start_barrier().await;
            return;
        }
        let Maintenance {
            expire_puts,
            fetch_view,
            outputs,
            work,
        } = self.read(|core, cx| core.maintain(cx.state, cx.now, cx.now_ms));
        if work {
            self.wake().await;
        }
        if let Some(now_ms) = expire_puts {
            // A scan of every version: on the listing's O(1) copy, off the lock.
            let (listing, tx) = (self.ports.read(|s| s.listing()), self.tx.clone());
            tokio::task::spawn_blocking(move || {
                let found = listing.has_expired_pending(now_ms);
                let _ = tx.blocking_send(Input::ExpiryChecked { found });
            });
        }
        if fetch_view {
            self.fetch_view(AfterView::Repair);
        }
        for job in outputs {
            let results = self
                .ports
                .read(|s| s.jobs.jobs.get(&job).map(|j| j.results()));
            let Some(results) = results else {
                self.core.output_stored(job);
                continue;
            };
            let (store, tx) = (self.ports.store_output(job, results), self.tx.clone());
            tokio::spawn(async move {
                let name = store.await;
                let _ = tx.send(Input::OutputPut { job, name }).await;
            });
        }
    }

    /// Starts a repair and balance scan of every version with the
    /// membership view: on a blocking thread over an O(1) copy of the
    /// files, so this task keeps serving (and the log applying) meanwhile;
    /// its result comes back as [`Input::Scanned`].
    fn scan(&mut self, view: &LiveView) {
        let files = self.ports.read(MetaState::files_copy);
        let job = self.core.scan_job(View {
            live: &view.live,
            alive: &view.alive,
        });
        let (run, tx) = (self.ports.scan(job, files), self.tx.clone());
        tokio::spawn(async move {
            let done = run.await;
            let _ = tx.send(Input::Scanned(done)).await;
        });
    }

    /// A scan ended: starts the copies it calls for, appends the trims.
    async fn scanned(&mut self, done: Option<Scanned>) {
        let Some(done) = done else {
            tracing::warn!("sdfs: the repair and balance scan failed; the next pass scans again");
            self.core.scan_failed();
            return;
        };
        if done.took >= Duration::from_millis(200) {
            tracing::info!(
                took_ms = done.took.as_millis() as u64,
                "sdfs: repair and balance scan of every version"
            );
        }
        let (scan, copies) = self.read(|core, cx| core.scanned(cx.state, done, cx.now));
        self.start_copies(copies);
        for (name, version) in &scan.unavailable {
            tracing::warn!(%name, version, "no live holder of this version: it is unavailable until one returns");
        }
        for t in scan.trims {
            let op = Op::SetReplicas {
                name: t.name,
                version: t.version,
                add: Vec::new(),
                drop: t.dead,
            };
            self.append(op, Then::Upkeep(Upkeep::Trimmed), None).await;
        }
    }

    /// A copy ended: starts the copies there is room for now.
    fn next_repairs(&mut self) {
        let copies = self.read(|core, cx| core.next_repairs(cx.state));
        self.start_copies(copies);
    }

    /// Runs each copy in its own future, and publishes repair's progress.
    fn start_copies(&mut self, copies: Vec<Copy>) {
        for copy in copies {
            let (name, version, target) = (copy.name.clone(), copy.version, copy.target);
            let (run, tx) = (self.ports.copy(copy), self.tx.clone());
            tokio::spawn(async move {
                let record = run.await;
                let _ = tx
                    .send(Input::Copied {
                        name,
                        version,
                        target,
                        record,
                    })
                    .await;
            });
        }
        let progress = self.core.repair_progress(now());
        self.ports.repair_progress(progress);
        self.ports.balance_progress(self.core.balance_progress());
    }
}

fn no_longer_leads() -> ControlError {
    ControlError::Raft("this agent no longer leads".into())
}

/// A quorum round's failure, once more for each request that waited on it.
fn repeat(e: &Refusal) -> Refusal {
    match e {
        Refusal::NotLeader(h) => Refusal::NotLeader(*h),
        Refusal::Failed(ControlError::NoQuorum { waited }) => {
            Refusal::Failed(ControlError::NoQuorum { waited: *waited })
        }
        Refusal::Failed(f) => Refusal::Failed(ControlError::Raft(f.to_string())),
    }
}
