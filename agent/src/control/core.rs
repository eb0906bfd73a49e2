//! The leader's own state, as one pure core: the scheduler, the put plans,
//! the read lease, and the bookkeeping of its periodic work (stale puts to
//! expire, repair copies in flight, finished jobs' outputs being stored).
//! It never reads a clock, a socket or the Raft log: the leader task
//! (`task.rs`) hands it the applied state and `now`, and executes what it
//! returns (entries to append, copies to run, answers to send).

use super::balance::{self, BalanceProgress, Balancer};
use super::lease::ReadLease;
use super::plans::Plans;
use super::progress::Progress;
use super::repair::{self, Bounds, Copy, Repairs, View};
use super::scheduler::{Batching, Completion, Dispatch, Scheduler};
use super::state::MetaState;
use super::workers::Workers;
use dml_shared::infer::{
    ImageResult, JobId, JobState, LatencyInfo, Lease, Outcome, Placement, QueryTiming, RateInfo,
    WorkerFigures, WorkerProgress,
};
use dml_shared::models::Registry;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the core needs from the settings.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Shortest query lease (`inference.lease_timeout`).
    pub min_lease: Duration,
    /// How long an unclaimed put plan is kept (twice `sdfs.put_timeout`).
    pub forget_plans: Duration,
    /// `sdfs.put_timeout`: a new leader expires no pending put before it
    /// has led this long (see [`LeaderCore::maintain`]).
    pub put_timeout: Duration,
    /// How long a read lease lasts (half of `control.election_timeout_min`).
    pub read_lease: Duration,
    /// Repair copies in flight per agent (`sdfs.repair_per_source`, `sdfs.repair_per_target`).
    pub repair_bounds: Bounds,
    /// Copies of each version (`Config::replicas`).
    pub replicas: usize,
    /// `sdfs.balance_threshold`: the spread of bytes past which balance plans
    /// on its own; `None` when `sdfs.auto_balance` is off.
    pub balance_threshold: Option<f64>,
    pub registry: Arc<Registry>,
}

/// A query picked for a worker: the lease to send, and the results of
/// images gone from SDFS since the job was submitted (to record first).
#[derive(Clone, Debug, PartialEq)]
pub struct Picked {
    pub lease: Lease,
    pub gone: Vec<ImageResult>,
}

/// What a maintenance pass asks the task to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Look for pending puts past their deadline at this wall-clock time,
    /// off the state-machine lock (a scan of every version); append
    /// `Op::ExpirePending` if there are any; then [`LeaderCore::expired`].
    pub expire_puts: Option<u64>,
    /// Read the membership view, then scan ([`LeaderCore::scan_job`]).
    pub fetch_view: bool,
    /// Store these finished jobs' outputs, then [`LeaderCore::output_stored`].
    pub outputs: Vec<JobId>,
    /// Leases expired: workers waiting for work should look again.
    pub work: bool,
}

/// A model's batch size: set through Raft, else the registry's.
pub fn batch_size(registry: &Registry, state: &MetaState, model: &str) -> u32 {
    state
        .jobs
        .batch
        .get(model)
        .copied()
        .or_else(|| registry.get(model).map(|m| m.batch))
        .unwrap_or(1)
}

/// A model's batching: its batch size (C3) as the largest batch, and its
/// dynamic batching settings.
pub fn batching(registry: &Registry, state: &MetaState, model: &str) -> Batching {
    let p = state.jobs.policy(model);
    Batching {
        max: batch_size(registry, state, model),
        delay: Duration::from_millis(p.max_queue_delay_ms),
        target: p.p99_target_ms.map(Duration::from_millis),
    }
}

/// The leader's state for one term.
#[derive(Debug)]
pub struct LeaderCore {
    term: u64,
    cfg: CoreConfig,
    sched: Scheduler,
    plans: Plans,
    lease: ReadLease,
    /// Re-replication: the backlog and the copies in flight.
    repairs: Repairs,
    /// Balance: the moves planned and running.
    balance: Balancer,
    /// Jobs whose output is being stored.
    storing: HashSet<JobId>,
    /// An `ExpirePending` append is in flight.
    expiring: bool,
    /// A membership read for repair is in flight.
    viewing: bool,
    /// No periodic repair and balance scan before this ([`LeaderCore::scan_took`]).
    scan_after: Option<Instant>,
    /// A member departed while a scan ran: scan again once it ends.
    scan_again: bool,
    workers: Workers,
    /// Each job's progress per worker (`dml job`).
    progress: Progress,
    /// When this term's leadership began (monotonic).
    started: Instant,
}

/// A periodic scan waits this many times what the last one took.
pub const SCAN_PAUSE: u32 = 9;

/// A repair and balance scan of every version, to run on a blocking thread:
/// the membership view it scans with and what balance's decision needs.
#[derive(Clone, Debug)]
pub struct ScanJob {
    replicas: usize,
    live: Vec<SocketAddr>,
    alive: Vec<SocketAddr>,
    balance: Option<balance::Ask>,
}

/// What a [`ScanJob`] found, for [`LeaderCore::scanned`].
#[derive(Debug)]
pub struct Scanned {
    live: Vec<SocketAddr>,
    alive: Vec<SocketAddr>,
    repair: repair::Found,
    balance: Option<balance::Found>,
    /// How long the scan took (set by whoever ran it).
    pub took: Duration,
}

impl ScanJob {
    /// Scans `state` (an O(1) copy of the files, see `MetaState::files_copy`);
    /// the runner sets [`Scanned::took`].
    pub fn run(self, state: &MetaState) -> Scanned {
        let repair = repair::scan(state, self.replicas, &self.live);
        let balance = self.balance.map(|ask| ask.run(state, repair.waiting()));
        Scanned {
            repair,
            balance,
            took: Duration::ZERO,
            live: self.live,
            alive: self.alive,
        }
    }
}

impl LeaderCore {
    /// The core of the leader of `term` from `now`, empty: the scheduler is
    /// rebuilt from the replicated jobs by [`LeaderCore::sync`].
    pub fn new(term: u64, cfg: CoreConfig, now: Instant) -> Self {
        Self {
            term,
            sched: Scheduler::new(term, cfg.min_lease),
            plans: Plans::new(term, cfg.forget_plans),
            lease: ReadLease::new(term, cfg.read_lease),
            repairs: Repairs::new(cfg.replicas, cfg.repair_bounds),
            balance: Balancer::new(cfg.replicas, cfg.balance_threshold),
            storing: HashSet::new(),
            expiring: false,
            viewing: false,
            scan_after: None,
            scan_again: false,
            workers: Workers::new(now),
            progress: Progress::default(),
            started: now,
            cfg,
        }
    }

    pub fn workers(&mut self) -> &mut Workers {
        &mut self.workers
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn registry(&self) -> &Registry {
        &self.cfg.registry
    }

    pub fn plans(&mut self) -> &mut Plans {
        &mut self.plans
    }

    pub fn lease(&mut self) -> &mut ReadLease {
        &mut self.lease
    }

    /// Brings the scheduler in line with the applied jobs and expires stale
    /// leases. Returns whether there may be new work for waiting workers.
    pub fn sync(&mut self, state: &MetaState, now: Instant) -> bool {
        let admitted = self.sched.sync(&state.jobs, now);
        let expired = self.sched.expire(now);
        let sched = &self.sched;
        // A finished job's last completions may be heard after the
        // scheduler let the job go: they still count.
        let done = |job: JobId| {
            state
                .jobs
                .jobs
                .get(&job)
                .is_some_and(|j| j.state == JobState::Done)
        };
        self.progress
            .retain_open(|q, job| sched.lease(q).is_some() || done(job));
        admitted + expired > 0
    }

    /// The next query for `worker` (fair time across jobs, dynamic
    /// batching), with the SDFS versions of its model and images; the
    /// queries of other jobs batched with it are in its lease's `with`.
    /// `None`: no work for it now.
    pub fn dispatch(
        &mut self,
        worker: SocketAddr,
        state: &MetaState,
        now: Instant,
    ) -> Option<Picked> {
        self.sync(state, now);
        let registry = &self.cfg.registry;
        let policy = |m: &str| batching(registry, state, m);
        let mut first = self.sched.dispatch_batched(worker, policy, now)?;
        let with = std::mem::take(&mut first.with);
        let (mut lease, gone) = self.lease_of(first, worker, state, now)?;
        for d in with {
            let query = d.query;
            if lease.images.is_empty() {
                // Its own images are all gone from SDFS: it runs nothing.
                self.sched.release(query);
                continue;
            }
            match self.lease_of(d, worker, state, now) {
                Some((l, g)) if g.is_empty() => lease.with.push(l),
                // An image gone from SDFS: its job's own query records it.
                _ => self.sched.release(query),
            }
        }
        Some(Picked { lease, gone })
    }

    /// The lease of one dispatched query, and the results of its images
    /// gone from SDFS.
    fn lease_of(
        &mut self,
        d: Dispatch,
        worker: SocketAddr,
        state: &MetaState,
        now: Instant,
    ) -> Option<(Lease, Vec<ImageResult>)> {
        self.progress.dispatched(d.query, d.job, worker, now);
        let job = &state.jobs.jobs[&d.job];
        let spec = self.cfg.registry.get(&d.model)?;
        let model_file = spec.sdfs_name();
        let model_version = state.stat(&model_file)?.versions.pop()?;
        let mut images = Vec::new();
        let mut gone = Vec::new();
        for i in &d.images {
            let name = job.image(*i).to_string();
            match state.stat(&name).and_then(|mut f| f.versions.pop()) {
                Some(v) => images.push((*i, name, v)),
                None => gone.push(ImageResult {
                    index: *i,
                    outcome: Outcome::Error(format!("image \"{name}\" is no longer in SDFS")),
                    image: name,
                }),
            }
        }
        let lease = Lease {
            query: d.query,
            job: d.job,
            model: d.model,
            model_file,
            model_version,
            images,
            lease_ms: d.lease.as_millis() as u64,
            with: Vec::new(),
        };
        Some((lease, gone))
    }

    /// When a batch now waiting to fill (dynamic batching) will be ready.
    pub fn next_ready(&mut self, state: &MetaState, now: Instant) -> Option<Instant> {
        let registry = &self.cfg.registry;
        self.sched.next_ready(|m| batching(registry, state, m), now)
    }

    /// The batch size `model` is dispatched at now.
    pub fn effective_batch(&mut self, state: &MetaState, model: &str, now: Instant) -> u32 {
        let b = batching(&self.cfg.registry, state, model);
        self.sched.effective_batch(model, &b, now)
    }

    /// The state machine accepted a query's results.
    pub fn completed(&mut self, c: Completion<'_>, now: Instant) {
        self.progress.completed(c.query, c.new, c.time, now);
        self.sched.completed(c, now);
    }

    /// A worker's own C2 histograms, sent with its lease request.
    pub fn worker_report(&mut self, worker: SocketAddr, figures: &WorkerFigures) {
        self.sched.worker_report(worker, figures);
    }

    /// A worker's report of `query` arrived with these results.
    pub fn reported(&mut self, query: u64, results: &[ImageResult]) {
        let errors = results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Error(_)))
            .count();
        self.progress.reported(query, errors as u32);
    }

    /// `job` was cancelled: its pending images are dropped and its leases
    /// released. Returns how many leases.
    pub fn cancelled(&mut self, job: JobId) -> usize {
        let released = self.sched.drop_job(job);
        let sched = &self.sched;
        self.progress.retain_open(|q, _| sched.lease(q).is_some());
        released
    }

    /// Queries of `job` leased now.
    pub fn job_in_flight(&self, job: JobId) -> u32 {
        self.sched
            .placement()
            .iter()
            .filter(|p| p.job == job)
            .flat_map(|p| p.workers.iter().map(|(_, n)| *n))
            .sum()
    }

    /// `job`'s progress per worker under this leader, with the queries each
    /// holds now.
    pub fn job_workers(&self, job: JobId) -> Vec<WorkerProgress> {
        let placement = self.sched.placement();
        let held = placement
            .iter()
            .find(|p| p.job == job)
            .map_or(&[][..], |p| &p.workers[..]);
        self.progress.workers(job, held)
    }

    /// The times of `job`'s last queries under this leader, in order.
    pub fn job_query_times(&self, job: JobId) -> Vec<QueryTiming> {
        self.progress.query_times(job)
    }

    /// `worker` cannot run `query`'s model: (job, distinct refusals).
    pub fn refuse(&mut self, query: u64, worker: SocketAddr) -> Option<(JobId, usize)> {
        self.sched.refuse(query, worker)
    }

    /// `worker` failed or left: its queries go back to pending. Returns how many.
    pub fn worker_gone(&mut self, worker: SocketAddr) -> usize {
        self.sched.worker_gone(worker)
    }

    /// Queries leased right now.
    pub fn in_flight(&self) -> usize {
        self.sched.in_flight()
    }

    /// C1 of every registered model; `totals` are the applied counts.
    pub fn rates(&mut self, state: &MetaState, now: Instant) -> Vec<RateInfo> {
        self.cfg
            .registry
            .models
            .iter()
            .map(|m| {
                let (queries_total, images_total) = state.jobs.totals(&m.name);
                let (q, i) = self.sched.rate(&m.name, now);
                RateInfo {
                    model: m.name.clone(),
                    queries_per_s: q,
                    images_per_s: i,
                    queries_total,
                    images_total,
                    mean_batch: self.sched.mean_batch(&m.name, now),
                }
            })
            .collect()
    }

    /// C2 of every registered model that completed a query under this leader.
    pub fn latency(&self) -> Vec<LatencyInfo> {
        self.cfg
            .registry
            .models
            .iter()
            .filter_map(|m| self.sched.latency(&m.name))
            .collect()
    }

    /// C5: the workers holding leases of each running job.
    pub fn placement(&self) -> Vec<Placement> {
        self.sched.placement()
    }

    /// The periodic pass: forget stale plans, expire leases, and say what
    /// to start (each kind of work at most once at a time).
    ///
    /// Pending puts expire by their deadline on the wall clock (`now_ms`,
    /// which the task anchors to its monotonic clock for the term), but not
    /// before this leader has led for `put_timeout`: a deadline set by an
    /// earlier leader came from that leader's clock, and a new leader whose
    /// clock is ahead would otherwise cut its puts short.
    pub fn maintain(&mut self, state: &MetaState, now: Instant, now_ms: u64) -> Maintenance {
        self.plans.forget_stale(now, |n| state.next_version(n));
        let work = self.sync(state, now);
        let settled = now.saturating_duration_since(self.started) >= self.cfg.put_timeout;
        let expire_puts = (!self.expiring && settled).then_some(now_ms);
        self.expiring |= expire_puts.is_some();
        let fetch_view = !self.viewing && self.scan_after.is_none_or(|t| now >= t);
        self.viewing |= fetch_view;
        let outputs: Vec<JobId> = state
            .jobs
            .jobs
            .iter()
            .filter(|(id, j)| {
                // A cancelled job's partial output is stored as a finished one's.
                matches!(j.state, JobState::Done | JobState::Cancelled)
                    && j.output.is_none()
                    && !self.storing.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        self.storing.extend(outputs.iter().copied());
        Maintenance {
            expire_puts,
            fetch_view,
            outputs,
            work,
        }
    }

    /// The last repair and balance scan took `took` (on a blocking thread,
    /// one of two cores here): the next periodic one waits [`SCAN_PAUSE`]
    /// times as long, so scans of every version (a second or more at a
    /// million) take at most a tenth of the CPU. A departure during the scan
    /// still scans at once.
    pub fn scan_took(&mut self, took: Duration, now: Instant) {
        self.scan_after = match std::mem::take(&mut self.scan_again) {
            true => None,
            false => Some(now + took * SCAN_PAUSE),
        };
    }

    /// A member departed: the next maintenance pass scans, whatever the
    /// pause (after the scan running now, if any).
    pub fn scan_soon(&mut self) {
        self.scan_after = None;
        self.scan_again = self.viewing;
    }

    /// The `ExpirePending` append finished (either way).
    pub fn expired(&mut self) {
        self.expiring = false;
    }

    /// The membership view arrived: what a scan of every version needs,
    /// to run off the leader task over a copy of the files
    /// ([`ScanJob::run`]); its result goes to [`LeaderCore::scanned`].
    pub fn scan_job(&self, view: View<'_>) -> ScanJob {
        ScanJob {
            replicas: self.cfg.replicas,
            live: view.live.to_vec(),
            alive: view.alive.to_vec(),
            balance: self.balance.ask(view.alive),
        }
    }

    /// A scan ended: versions short of copies (and replica sets to trim)
    /// become repair's backlog, balance plans if the alive agents or the
    /// spread called for it, and the copies there is room for start. The
    /// next periodic scan pauses ([`LeaderCore::scan_took`]).
    pub fn scanned(
        &mut self,
        state: &MetaState,
        done: Scanned,
        now: Instant,
    ) -> (repair::Scan, Vec<Copy>) {
        self.scan_took(done.took, now);
        self.take_scan(state, done)
    }

    fn take_scan(&mut self, state: &MetaState, done: Scanned) -> (repair::Scan, Vec<Copy>) {
        self.viewing = false;
        let view = View {
            live: &done.live,
            alive: &done.alive,
        };
        let scan = self.repairs.take(view, done.repair);
        self.balance.take(&done.alive, done.balance);
        (scan, self.next_repairs(state))
    }

    /// A scan could not finish (its thread panicked): the next pass tries again.
    pub fn scan_failed(&mut self) {
        self.viewing = false;
        self.scan_again = false;
    }

    /// A scan on the caller's thread ([`LeaderCore::scan_job`],
    /// [`ScanJob::run`], then [`LeaderCore::scanned`] without the pause).
    pub fn plan_repair(&mut self, state: &MetaState, view: View<'_>) -> (repair::Scan, Vec<Copy>) {
        let done = self.scan_job(view).run(state);
        self.take_scan(state, done)
    }

    /// The copies there is room for now: repair's from the last scan's
    /// backlog first, then balance moves (after a copy ended).
    pub fn next_repairs(&mut self, state: &MetaState) -> Vec<Copy> {
        let mut copies = self.repairs.next(state);
        copies.extend(self.balance.next(state, &mut self.repairs));
        copies
    }

    /// `dml sdfs balance`: the plan over `alive`; started unless `dry_run`.
    pub fn balance_request(
        &mut self,
        state: &MetaState,
        alive: &[SocketAddr],
        dry_run: bool,
    ) -> dml_shared::sdfs::BalancePlan {
        self.balance.request(state, alive, dry_run)
    }

    /// If the copy of `name` v`version` to `target` is a balance move: the
    /// holder it replaces, which drops its copy once the move is recorded.
    pub fn balance_source(
        &self,
        name: &str,
        version: u64,
        target: SocketAddr,
    ) -> Option<SocketAddr> {
        self.balance.source_of(name, version, target)
    }

    /// Balance's moves, for the metrics.
    pub fn balance_progress(&self) -> BalanceProgress {
        self.balance.progress()
    }

    /// The repair copy of `name` v`version` to `target` ended: recorded in
    /// the metadata (`ok`), or failed.
    pub fn copy_done(
        &mut self,
        name: &str,
        version: u64,
        target: SocketAddr,
        ok: bool,
        now: Instant,
    ) {
        if !self
            .balance
            .done(name, version, target, ok, &mut self.repairs)
        {
            self.repairs.done(name, version, target, ok, now);
        }
    }

    /// Repair copies in flight.
    pub fn copies_in_flight(&self) -> usize {
        self.repairs.in_flight()
    }

    /// Re-replication's progress, for telemetry.
    pub fn repair_progress(&mut self, now: Instant) -> dml_shared::telemetry::RepairProgress {
        self.repairs.progress(now)
    }

    /// Storing `job`'s output finished (either way); a failure is retried
    /// by a later pass.
    pub fn output_stored(&mut self, job: JobId) {
        self.storing.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::types::{Applied, Command, Op};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn core(per_target: usize) -> LeaderCore {
        LeaderCore::new(
            3,
            CoreConfig {
                min_lease: Duration::from_secs(10),
                forget_plans: Duration::from_secs(60),
                put_timeout: Duration::from_secs(30),
                read_lease: Duration::from_millis(75),
                repair_bounds: Bounds {
                    per_source: 100,
                    per_target,
                },
                replicas: 4,
                balance_threshold: Some(0.1),
                registry: Arc::new(Registry::builtin()),
            },
            Instant::now(),
        )
    }

    fn apply(s: &mut MetaState, op: Op) -> Applied {
        s.apply(&Command { now_ms: 1, op })
    }

    fn put_on_one(s: &mut MetaState, name: &str) {
        let op = Op::PutAt {
            name: name.into(),
            version: 1,
            size: 5,
            checksum: [1; 32],
            holders: vec![addr(1)],
            quorum: 1,
        };
        assert_eq!(apply(s, op), Applied::Version(1));
    }

    #[test]
    fn a_finished_copy_starts_the_next_without_a_new_scan() {
        let mut s = MetaState::default();
        for name in ["a", "b", "c"] {
            put_on_one(&mut s, name);
        }
        // One slot per target, on two targets: two copies at once.
        let mut c = core(1);
        let live: Vec<SocketAddr> = (1..=3).map(addr).collect();
        let view = View {
            live: &live,
            alive: &live,
        };
        let (_, first) = c.plan_repair(&s, view);
        assert_eq!(first.len(), 2, "one per target");
        assert_eq!(c.copies_in_flight(), 2);
        assert!(c.next_repairs(&s).is_empty(), "no room left");
        let done = &first[0];
        let op = Op::SetReplicas {
            name: done.name.clone(),
            version: done.version,
            add: vec![done.target],
            drop: Vec::new(),
        };
        apply(&mut s, op);
        c.copy_done(&done.name, done.version, done.target, true, Instant::now());
        let next = c.next_repairs(&s);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].target, done.target, "the freed target");
        assert_eq!(c.copies_in_flight(), 2);
        assert_eq!(c.repair_progress(Instant::now()).copies_per_sec, 1);
    }

    #[test]
    fn a_new_leader_whose_clock_is_ahead_expires_no_pending_put_before_the_put_timeout() {
        let mut s = MetaState::default();
        let op = Op::BeginPutAt {
            name: "f".into(),
            version: 1,
            size: 5,
            replicas: vec![addr(1)],
            deadline_ms: 31_000,
        };
        assert_eq!(apply(&mut s, op), Applied::Version(1));
        let t = Instant::now();
        let mut c = LeaderCore::new(4, core(1).cfg, t);
        // The clock reads 61 s: the deadline (31 s) looks long past.
        assert_eq!(c.maintain(&s, t, 61_000).expire_puts, None);
        let later = t + Duration::from_secs(29);
        assert_eq!(c.maintain(&s, later, 90_000).expire_puts, None);
        let settled = t + Duration::from_secs(30);
        assert_eq!(c.maintain(&s, settled, 91_000).expire_puts, Some(91_000));
        assert!(s.listing().has_expired_pending(91_000));
        // One look at a time, until the task reports back.
        assert_eq!(c.maintain(&s, settled, 92_000).expire_puts, None);
        c.expired();
        // A deadline not yet reached is kept however long the term.
        assert_eq!(c.maintain(&s, settled, 30_999).expire_puts, Some(30_999));
        assert!(!s.listing().has_expired_pending(30_999));
    }

    #[test]
    fn maintenance_starts_each_kind_of_work_once_until_it_reports_back() {
        let mut s = MetaState::default();
        let job = match apply(
            &mut s,
            Op::SubmitJob {
                model: "tiny".into(),
                dataset: "d/".into(),
                images: vec!["d/x".into()],
                count: 1,
                weight: 1,
            },
        ) {
            Applied::Job(j) => j,
            other => panic!("{other:?}"),
        };
        let result = ImageResult {
            index: 0,
            image: "d/x".into(),
            outcome: Outcome::Error("x".into()),
        };
        let op = Op::CompleteQuery {
            job,
            results: vec![result],
        };
        assert!(matches!(
            apply(&mut s, op),
            Applied::Accepted { new: 1, .. }
        ));
        let mut c = core(4);
        let t = Instant::now();
        let m = c.maintain(&s, t, 1);
        assert_eq!((m.outputs, m.fetch_view), (vec![job], true));
        let again = c.maintain(&s, t, 1);
        assert_eq!(again, Maintenance::default(), "all in flight");
        c.output_stored(job);
        let live = [addr(1)];
        c.plan_repair(
            &s,
            View {
                live: &live,
                alive: &live,
            },
        );
        let m = c.maintain(&s, t, 1);
        assert_eq!((m.outputs, m.fetch_view), (vec![job], true), "retried");
    }

    /// Scans of every version (repair's, balance's) took over a second per
    /// view at a million versions, once a second, on the leader task.
    #[test]
    fn periodic_scans_pause_for_nine_times_the_last_ones_length_unless_a_member_departs() {
        let s = MetaState::default();
        let live = [addr(1)];
        let view = View {
            live: &live,
            alive: &live,
        };
        let mut c = core(4);
        let t = Instant::now();
        assert!(c.maintain(&s, t, 1).fetch_view);
        c.plan_repair(&s, view);
        c.scan_took(Duration::from_secs(1), t);
        let at = |secs: u64| t + Duration::from_secs(secs);
        assert!(!c.maintain(&s, at(1), 1).fetch_view);
        assert!(!c.maintain(&s, at(8), 1).fetch_view);
        assert!(c.maintain(&s, at(9), 1).fetch_view);
        c.plan_repair(&s, view);
        c.scan_took(Duration::from_secs(1), at(10));
        assert!(!c.maintain(&s, at(11), 1).fetch_view);
        c.scan_soon();
        assert!(
            c.maintain(&s, at(11), 1).fetch_view,
            "a departure scans at once"
        );
        // A quick scan pauses for no longer than the maintenance period.
        c.plan_repair(&s, view);
        c.scan_took(Duration::ZERO, at(12));
        assert!(c.maintain(&s, at(12), 1).fetch_view);
        // A departure while a scan runs (off the task) scans again once it ends.
        let job = c.scan_job(view);
        c.scan_soon();
        assert!(!c.maintain(&s, at(13), 1).fetch_view, "one scan at a time");
        let mut done = job.run(&s);
        done.took = Duration::from_secs(1);
        c.scanned(&s, done, at(14));
        assert!(c.maintain(&s, at(14), 1).fetch_view, "the departure's scan");
        let mut done = c.scan_job(view).run(&s);
        done.took = Duration::from_secs(1);
        c.scanned(&s, done, at(15));
        assert!(!c.maintain(&s, at(16), 1).fetch_view, "paused again");
    }
}
