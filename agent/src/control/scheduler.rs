//! The leader's inference scheduler, in memory (rebuilt from the Raft state
//! by each new leader): query leases, weighted fair-time dispatch, and the
//! C1/C2/C5 figures. Pure: every call takes `now`.
//!
//! Fair time: each running job has an account of the worker time charged to
//! it, and a weight (`submit-job --weight`). A query is charged at dispatch
//! by its model's measured compute time per image (the mean of its last
//! [`COST_SAMPLES`] queries, so that one slow query on a busy host does not
//! swing the charges of the next ones; a model not measured yet is charged
//! [`UNMEASURED_IMAGE_COST`]), corrected to the
//! worker's measurement when it completes, and refunded if its lease is
//! released unfinished. The next query goes to the job whose account over
//! weight would be smallest after it, so jobs share worker time by weight
//! whatever a query of their model costs, each within one query of its
//! share.
//!
//! When a job is admitted, every account restarts from the work the job has
//! in flight, the newcomer's from nothing: work leased before it arrived
//! still takes worker time after, so the newcomer takes the next free
//! slots until it holds its share of them, and no job is starved.
//!
//! Dynamic batching, as Triton's dynamic batcher: a model's batch size is
//! the largest batch ([`Batching::max`], or below it as its p99 target
//! chose, see `batching.rs`). A query that leaves room in its batch takes
//! images of other jobs of the same model into the same batch, each as its
//! own query (lease, charge, completion) run together by one worker. A
//! model whose pending images fill no batch waits until the oldest of them
//! has waited [`Batching::delay`] (an image is pending from its job's
//! admission); meanwhile workers take other models' queries. Fair time holds
//! as before: every query is charged to its own job.

use super::batching::LatencyTargets;
use super::jobs::JobsState;
use crate::latency::{QueryTime, WorkerHists};
pub use crate::timing::SCHEDULER_RATE_WINDOW as RATE_WINDOW;
use crate::timing::SCHEDULER_UNMEASURED_IMAGE_COST as UNMEASURED_IMAGE_COST;
use dml_shared::infer::{JobId, LatencyInfo, Placement, WorkerFigures};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Completed queries a model's charge per image is the mean of (the newest).
const COST_SAMPLES: usize = 64;

/// A query handed out and not yet completed.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRec {
    pub job: JobId,
    pub worker: SocketAddr,
    pub images: Vec<u32>,
    pub deadline: Instant,
    /// Worker time charged to the job for it, in microseconds.
    pub cost: f64,
}

/// How a model's queries are batched: from the replicated settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Largest batch (C3).
    pub max: u32,
    /// Longest the oldest pending image waits for a batch to fill.
    pub delay: Duration,
    /// p99 query time to keep to by choosing the batch size up to `max`.
    pub target: Option<Duration>,
}

impl Batching {
    /// Batches of at most `max`, formed at once.
    pub fn fixed(max: u32) -> Self {
        Self {
            max,
            delay: Duration::ZERO,
            target: None,
        }
    }
}

#[derive(Debug)]
struct JobSched {
    model: String,
    weight: u32,
    /// When it was admitted: its images are pending from then.
    since: Instant,
    /// Worker time charged since the last admission, in microseconds.
    account: f64,
    /// Images with no result and no lease, lowest index first.
    pending: BTreeSet<u32>,
    /// Workers that could not run this job's model; not asked again.
    refused: BTreeSet<SocketAddr>,
}

impl JobSched {
    /// The weighted account if `cost` more were charged.
    fn after(&self, cost: f64) -> f64 {
        (self.account + cost) / f64::from(self.weight.max(1))
    }
}

/// Per-model figures kept by the leader.
#[derive(Debug, Default)]
struct ModelStats {
    /// Compute time per image of the last [`COST_SAMPLES`] queries, in
    /// microseconds, and their sum.
    image_costs: VecDeque<f64>,
    image_cost_sum: f64,
    /// Longest query seen, to stretch leases of slow models.
    slowest: Duration,
}

impl ModelStats {
    /// Mean compute time per image of the recent queries, in microseconds.
    fn image_cost(&self) -> Option<f64> {
        (!self.image_costs.is_empty()).then(|| self.image_cost_sum / self.image_costs.len() as f64)
    }

    fn observe_cost(&mut self, per_image_us: f64) {
        if self.image_costs.len() == COST_SAMPLES
            && let Some(old) = self.image_costs.pop_front()
        {
            self.image_cost_sum -= old;
        }
        self.image_costs.push_back(per_image_us);
        self.image_cost_sum += per_image_us;
    }
}

/// A completed query in the last [`RATE_WINDOW`] (C1 and the shares).
#[derive(Debug)]
struct Done {
    at: Instant,
    job: JobId,
    model: String,
    images: u32,
    /// Its share of its batch's worker time.
    compute_us: f64,
    /// Its images in its batch, and its share of the batch (for the mean batch).
    ran: u32,
    part: f64,
}

/// A query to hand out: its id, job and image indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    pub query: u64,
    pub job: JobId,
    pub model: String,
    pub images: Vec<u32>,
    pub lease: Duration,
    /// Worker time charged for it, in microseconds.
    pub cost: f64,
    /// Queries of other jobs of the same model in the same batch, leased to
    /// the same worker.
    pub with: Vec<Dispatch>,
}

/// A completion the state machine accepted.
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    pub query: u64,
    pub job: JobId,
    pub model: &'a str,
    pub worker: SocketAddr,
    pub images: &'a [u32],
    /// Images that had no result before: a query with none is a duplicate
    /// and counts in no figure.
    pub new: u32,
    pub time: QueryTime,
    /// Images of the batch it ran in (0: its own); it is charged its share.
    pub batch_images: u32,
}

#[derive(Debug)]
pub struct Scheduler {
    /// Query ids are `prefix | counter`, unique across leader terms.
    prefix: u64,
    next_query: u64,
    min_lease: Duration,
    jobs: BTreeMap<JobId, JobSched>,
    leases: HashMap<u64, LeaseRec>,
    models: HashMap<String, ModelStats>,
    recent: VecDeque<Done>,
    /// C2 of each worker: what it reported, or recorded here since.
    hists: HashMap<SocketAddr, WorkerHists>,
    /// Query times per batch size, for models with a p99 target.
    targets: LatencyTargets,
}

impl Scheduler {
    /// `term` makes query ids of this leadership unique; `min_lease` is the
    /// shortest lease (config `inference.lease_timeout`).
    pub fn new(term: u64, min_lease: Duration) -> Self {
        Self {
            prefix: term << 40,
            next_query: 0,
            min_lease,
            jobs: BTreeMap::new(),
            leases: HashMap::new(),
            models: HashMap::new(),
            recent: VecDeque::new(),
            hists: HashMap::new(),
            targets: LatencyTargets::default(),
        }
    }

    /// Brings the job list in line with the replicated state: admits new
    /// running jobs (with every image still missing pending; every account
    /// restarts from its work in flight) and forgets ended ones and their
    /// leases. Cheap when nothing changed: it walks the jobs, not their
    /// images. Returns how many jobs it admitted (at `now`).
    pub fn sync(&mut self, state: &JobsState, now: Instant) -> usize {
        let running = |id: &JobId| {
            state
                .jobs
                .get(id)
                .is_some_and(|j| j.state == dml_shared::infer::JobState::Running)
        };
        self.jobs.retain(|id, _| running(id));
        self.leases.retain(|_, l| running(&l.job));
        let newcomers: Vec<JobId> = state
            .jobs
            .iter()
            .filter(|(id, j)| {
                j.state == dml_shared::infer::JobState::Running && !self.jobs.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect();
        if newcomers.is_empty() {
            return 0;
        }
        for j in self.jobs.values_mut() {
            j.account = 0.0;
        }
        for l in self.leases.values() {
            if let Some(j) = self.jobs.get_mut(&l.job) {
                j.account += l.cost;
            }
        }
        for id in &newcomers {
            let job = &state.jobs[id];
            self.jobs.insert(
                *id,
                JobSched {
                    model: job.model.clone(),
                    weight: job.weight.max(1),
                    since: now,
                    account: 0.0,
                    pending: job.missing().collect(),
                    refused: BTreeSet::new(),
                },
            );
        }
        newcomers.len()
    }

    /// Puts the images of expired leases back to pending and forgets
    /// completions older than [`RATE_WINDOW`]; returns how many leases
    /// expired.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.trim(now);
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for q in &expired {
            self.release(*q);
        }
        expired.len()
    }

    /// Releases every lease held by `worker` (it failed or left).
    pub fn worker_gone(&mut self, worker: SocketAddr) -> usize {
        let gone: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.worker == worker)
            .map(|(q, _)| *q)
            .collect();
        for q in &gone {
            self.release(*q);
        }
        gone.len()
    }

    /// Forgets `job` (cancelled): its pending images are dropped and every
    /// lease of it is released, so no worker is handed its queries again
    /// and a late result of one is not its lease's. Returns the leases released.
    pub fn drop_job(&mut self, job: JobId) -> usize {
        self.jobs.remove(&job);
        let before = self.leases.len();
        self.leases.retain(|_, l| l.job != job);
        before - self.leases.len()
    }

    /// Ends a lease unfinished: its images go back to pending and its
    /// charge is refunded.
    pub fn release(&mut self, query: u64) {
        if let Some(l) = self.leases.remove(&query)
            && let Some(j) = self.jobs.get_mut(&l.job)
        {
            j.account -= l.cost;
            j.pending.extend(l.images);
        }
    }

    /// `worker` could not run `query`'s model: its images go back to
    /// pending and the worker gets no more queries of that job. Returns the
    /// job and how many distinct workers have refused it.
    pub fn refuse(&mut self, query: u64, worker: SocketAddr) -> Option<(JobId, usize)> {
        let job = self.leases.get(&query)?.job;
        self.release(query);
        let j = self.jobs.get_mut(&job)?;
        j.refused.insert(worker);
        Some((job, j.refused.len()))
    }

    /// What a query of `images` images of `model` is charged, in microseconds.
    fn cost(&self, model: &str, images: usize) -> f64 {
        let per_image = self
            .models
            .get(model)
            .and_then(ModelStats::image_cost)
            .unwrap_or(UNMEASURED_IMAGE_COST.as_micros() as f64);
        per_image * images as f64
    }

    /// The next query for `worker` with batches of at most `batch` formed
    /// at once (see [`Scheduler::dispatch_batched`]).
    pub fn dispatch(
        &mut self,
        worker: SocketAddr,
        batch: impl Fn(&str) -> u32,
        now: Instant,
    ) -> Option<Dispatch> {
        self.dispatch_batched(worker, |m| Batching::fixed(batch(m)), now)
    }

    /// The batch size `model` runs at now: its largest, or below it as its
    /// p99 target chose.
    pub fn effective_batch(&mut self, model: &str, b: &Batching, now: Instant) -> u32 {
        match b.target {
            Some(t) => self.targets.choose(model, b.max, t, self.leases.len(), now),
            None => b.max.max(1),
        }
    }

    /// When `model`'s pending images make a batch of `size`: at once (the
    /// oldest one's admission) if they fill it or there is no delay, else
    /// once the oldest has waited `delay`. `None`: nothing pending.
    fn batch_ready(&self, model: &str, size: u32, delay: Duration) -> Option<Instant> {
        let (pending, oldest) = self
            .jobs
            .values()
            .filter(|j| j.model == model && !j.pending.is_empty())
            .fold((0usize, None::<Instant>), |(n, o), j| {
                (
                    n + j.pending.len(),
                    Some(o.map_or(j.since, |o| o.min(j.since))),
                )
            });
        let oldest = oldest?;
        if delay.is_zero() || pending >= size as usize {
            return Some(oldest);
        }
        Some(oldest + delay)
    }

    /// Each model with pending images, its batch size now and whether a
    /// batch of it is ready at `now` (else when it will be).
    fn batches(
        &mut self,
        policy: &impl Fn(&str) -> Batching,
        now: Instant,
    ) -> HashMap<String, (u32, Instant)> {
        let models: BTreeSet<String> = self
            .jobs
            .values()
            .filter(|j| !j.pending.is_empty())
            .map(|j| j.model.clone())
            .collect();
        models
            .into_iter()
            .filter_map(|m| {
                let b = policy(&m);
                let size = self.effective_batch(&m, &b, now);
                let at = self.batch_ready(&m, size, b.delay)?;
                Some((m, (size, at)))
            })
            .collect()
    }

    /// When a batch that is waiting to fill will be ready (the earliest),
    /// if one is waiting at `now`.
    pub fn next_ready(
        &mut self,
        policy: impl Fn(&str) -> Batching,
        now: Instant,
    ) -> Option<Instant> {
        self.batches(&policy, now)
            .into_values()
            .map(|(_, at)| at)
            .filter(|at| *at > now)
            .min()
    }

    /// The next query for `worker`: from the job, among those whose model
    /// has a batch ready (`policy` gives each model's batching), whose
    /// weighted account would be smallest after it. A query that leaves
    /// room in its batch takes other jobs of the model into it (`with`),
    /// those least ahead first.
    pub fn dispatch_batched(
        &mut self,
        worker: SocketAddr,
        policy: impl Fn(&str) -> Batching,
        now: Instant,
    ) -> Option<Dispatch> {
        let ready = self.batches(&policy, now);
        let size_of = |m: &str| {
            ready
                .get(m)
                .and_then(|(size, at)| (*at <= now).then_some(*size))
        };
        let (id, size) = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.pending.is_empty() && !j.refused.contains(&worker))
            .filter_map(|(id, j)| {
                let size = size_of(&j.model)?;
                let n = (size as usize).min(j.pending.len());
                Some((*id, size, self.cost(&j.model, n), j))
            })
            .min_by(|(a, _, ca, ja), (b, _, cb, jb)| {
                ja.after(*ca).total_cmp(&jb.after(*cb)).then(a.cmp(b))
            })
            .map(|(id, size, _, _)| (id, size))?;
        let mut first = self.lease_images(id, worker, size as usize, now)?;
        let mut room = (size as usize).saturating_sub(first.images.len());
        if room > 0 {
            let mut others: Vec<(f64, JobId)> = self
                .jobs
                .iter()
                .filter(|(o, j)| {
                    **o != id
                        && j.model == first.model
                        && !j.pending.is_empty()
                        && !j.refused.contains(&worker)
                })
                .map(|(o, j)| (j.after(0.0), *o))
                .collect();
            others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (_, o) in others {
                if room == 0 {
                    break;
                }
                if let Some(d) = self.lease_images(o, worker, room, now) {
                    room -= d.images.len();
                    first.with.push(d);
                }
            }
        }
        Some(first)
    }

    /// Leases up to `n` of `job`'s pending images to `worker`, charged to it.
    fn lease_images(
        &mut self,
        id: JobId,
        worker: SocketAddr,
        n: usize,
        now: Instant,
    ) -> Option<Dispatch> {
        let job = self.jobs.get(&id)?;
        let images: Vec<u32> = job.pending.iter().take(n.max(1)).copied().collect();
        let model = job.model.clone();
        let cost = self.cost(&model, images.len());
        let lease = self.lease_for(&model);
        let job = self.jobs.get_mut(&id)?;
        for i in &images {
            job.pending.remove(i);
        }
        job.account += cost;
        let query = self.prefix | self.next_query;
        self.next_query += 1;
        self.leases.insert(
            query,
            LeaseRec {
                job: id,
                worker,
                images: images.clone(),
                deadline: now + lease,
                cost,
            },
        );
        Some(Dispatch {
            query,
            job: id,
            model,
            images,
            lease,
            cost,
            with: Vec::new(),
        })
    }

    /// A lease long enough for this model: at least the configured minimum,
    /// and four times the slowest query seen.
    fn lease_for(&self, model: &str) -> Duration {
        let slowest = self.models.get(model).map_or(Duration::ZERO, |f| f.slowest);
        self.min_lease.max(slowest * 4)
    }

    /// Records a completion the state machine accepted: ends the lease
    /// (its charge becomes the measured compute time), takes the images off
    /// pending (a late result from an earlier lease or leader counts too),
    /// and feeds C1, C2 and the model's cost, also when the completion
    /// ended its job.
    pub fn completed(&mut self, c: Completion<'_>, now: Instant) {
        let batch_us = c.time.compute.as_secs_f64() * 1e6;
        // A query run with others in one batch is charged its share.
        let own = c.images.len() as u32;
        let ran = c.batch_images.max(own).max(1);
        let part = f64::from(own) / f64::from(ran);
        let compute_us = batch_us * part;
        let lease = self.leases.remove(&c.query);
        if let Some(j) = self.jobs.get_mut(&c.job) {
            if let Some(l) = &lease {
                j.account += compute_us - l.cost;
            }
            for i in c.images {
                j.pending.remove(i);
            }
        }
        if c.images.is_empty() {
            return;
        }
        let m = self.models.entry(c.model.to_string()).or_default();
        m.slowest = m.slowest.max(c.time.total());
        if batch_us > 0.0 {
            m.observe_cost(batch_us / f64::from(ran));
        }
        if c.new > 0 {
            self.recent.push_back(Done {
                at: now,
                job: c.job,
                model: c.model.to_string(),
                images: c.new,
                compute_us,
                ran: own,
                part,
            });
            self.hists
                .entry(c.worker)
                .or_default()
                .record(c.model, c.time);
            self.targets
                .observe(c.model, ran, c.time.total(), c.time.compute, now);
        }
        self.trim(now);
    }

    /// A worker's own C2 histograms (sent with its lease requests).
    pub fn worker_report(&mut self, worker: SocketAddr, figures: &WorkerFigures) {
        self.hists.entry(worker).or_default().merge_report(figures);
    }

    fn trim(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|d| now.saturating_duration_since(d.at) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// C1 over the last [`RATE_WINDOW`]: (queries/s, images/s) of `model`.
    pub fn rate(&mut self, model: &str, now: Instant) -> (f64, f64) {
        self.trim(now);
        let secs = RATE_WINDOW.as_secs_f64();
        let (queries, images) = self
            .recent
            .iter()
            .filter(|d| d.model == model)
            .fold((0u64, 0u64), |(q, i), d| (q + 1, i + u64::from(d.images)));
        (queries as f64 / secs, images as f64 / secs)
    }

    /// Images per model run of `model` over the last [`RATE_WINDOW`]: each
    /// query counts as its share of its batch (0 with no run).
    pub fn mean_batch(&mut self, model: &str, now: Instant) -> f64 {
        self.trim(now);
        let (images, runs) = self
            .recent
            .iter()
            .filter(|d| d.model == model)
            .fold((0.0, 0.0), |(i, r), d| (i + f64::from(d.ran), r + d.part));
        if runs > 0.0 { images / runs } else { 0.0 }
    }

    /// C2 for `model`: every worker's histograms merged, if any holds a query.
    pub fn latency(&self, model: &str) -> Option<LatencyInfo> {
        let mut merged = crate::latency::Hists::default();
        for w in self.hists.values() {
            if let Some(h) = w.get(model) {
                merged.add(h);
            }
        }
        merged.info(model)
    }

    /// C5: the workers holding leases of each running job, its weight and
    /// its shares of the queries and of the worker time of the last
    /// [`RATE_WINDOW`]'s completions among the running jobs.
    pub fn placement(&self) -> Vec<Placement> {
        let mut done: BTreeMap<JobId, (f64, f64)> = BTreeMap::new();
        for d in self
            .recent
            .iter()
            .filter(|d| self.jobs.contains_key(&d.job))
        {
            let e = done.entry(d.job).or_default();
            e.0 += 1.0;
            e.1 += d.compute_us;
        }
        let (queries, time) = done
            .values()
            .fold((0.0, 0.0), |(q, t), (dq, dt)| (q + dq, t + dt));
        let share = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
        self.jobs
            .iter()
            .map(|(id, j)| {
                let mut per: BTreeMap<SocketAddr, u32> = BTreeMap::new();
                for l in self.leases.values().filter(|l| l.job == *id) {
                    *per.entry(l.worker).or_default() += 1;
                }
                let (q, t) = done.get(id).copied().unwrap_or_default();
                Placement {
                    job: *id,
                    model: j.model.clone(),
                    workers: per.into_iter().collect(),
                    weight: j.weight,
                    query_share: share(q, queries),
                    time_share: share(t, time),
                }
            })
            .collect()
    }

    /// Queries leased right now.
    pub fn in_flight(&self) -> usize {
        self.leases.len()
    }

    /// The lease of `query`, if it is still held.
    pub fn lease(&self, query: u64) -> Option<&LeaseRec> {
        self.leases.get(&query)
    }
}

/// The scheduler on a virtual clock with many jobs and workers.
#[cfg(test)]
#[path = "fair_sim.rs"]
mod fair_sim;

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn state_with(jobs: &[(&str, usize)]) -> JobsState {
        let mut s = JobsState::default();
        for (model, n) in jobs {
            let images = (0..*n).map(|i| format!("img{i}")).collect();
            s.submit(model, "d/", images, *n as u32, 0);
        }
        s
    }

    fn results(idx: &[u32]) -> Vec<dml_shared::infer::ImageResult> {
        idx.iter()
            .map(|i| dml_shared::infer::ImageResult {
                index: *i,
                image: String::new(),
                outcome: dml_shared::infer::Outcome::Error("x".into()),
            })
            .collect()
    }

    fn done<'a>(
        query: u64,
        job: JobId,
        model: &'a str,
        images: &'a [u32],
        new: u32,
        compute: Duration,
    ) -> Completion<'a> {
        Completion {
            query,
            job,
            model,
            worker: addr(1),
            images,
            new,
            time: QueryTime {
                queue: Duration::ZERO,
                compute,
            },
            batch_images: 0,
        }
    }

    #[test]
    fn two_jobs_share_worker_time_whatever_their_cost() {
        let mut s = state_with(&[("resnet50", 5000), ("inceptionv3", 5000)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let mut counts: HashMap<JobId, u32> = HashMap::new();
        let unit = Duration::from_millis(10);
        // Inception queries take 3 ticks, ResNet ones 1: workers pull when
        // free and report the time they worked.
        type Running = Option<(u64, JobId, Vec<u32>)>;
        let mut busy_until: Vec<(usize, Running)> = vec![(0, None); 6];
        for tick in 0..600 {
            for (w, slot) in busy_until.iter_mut().enumerate() {
                if slot.0 > tick {
                    continue;
                }
                if let Some((q, job, imgs)) = slot.1.take() {
                    s.complete(job, &results(&imgs), 0);
                    let n = imgs.len() as u32;
                    let (model, cost) = if job == 2 {
                        ("inceptionv3", 3)
                    } else {
                        ("resnet50", 1)
                    };
                    sch.completed(done(q, job, model, &imgs, n, unit * cost), t);
                    *counts.entry(job).or_default() += 1;
                }
                if let Some(d) = sch.dispatch(addr(w as u16), |_| 1, t) {
                    let cost = if d.model == "inceptionv3" { 3 } else { 1 };
                    *slot = (tick + cost, Some((d.query, d.job, d.images)));
                }
            }
        }
        // Worker ticks: each job's queries times their cost.
        let (a, b) = (counts[&1], counts[&2] * 3);
        assert!(a > 500 && b > 500, "{counts:?}");
        assert!(
            a.abs_diff(b) <= 12,
            "worker time {a} vs {b} must stay level ({counts:?})"
        );
        let shares = sch.placement();
        assert!(
            (shares[0].time_share - 0.5).abs() < 0.05 && shares[0].query_share > 0.7,
            "{shares:?}"
        );
    }

    #[test]
    fn a_new_job_takes_the_next_slots_until_it_catches_up_then_alternates() {
        let mut s = state_with(&[("tiny", 1000)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        for _ in 0..50 {
            sch.dispatch(addr(1), |_| 2, t).unwrap();
        }
        s.submit("tiny", "d/", vec!["a".into()], 1000, 0);
        sch.sync(&s, Instant::now());
        // Job 1's 50 queries in flight take worker time after job 2
        // arrived: job 2 goes alone until it has as much, then the two
        // alternate.
        let next: Vec<JobId> = (0..60)
            .map(|_| sch.dispatch(addr(1), |_| 2, t).unwrap().job)
            .collect();
        assert!(next[..50].iter().all(|j| *j == 2), "{next:?}");
        assert_eq!(
            next[50..].iter().filter(|j| **j == 2).count(),
            5,
            "{next:?}"
        );
    }

    #[test]
    fn a_released_lease_is_refunded_and_its_images_go_first_to_the_job_behind() {
        let s = state_with(&[("tiny", 100), ("tiny", 100)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        for w in 1..=4 {
            sch.dispatch(addr(w), |_| 2, t).unwrap();
        }
        // Worker 1 held job 1's first query; it dies: job 1 is now one
        // query behind and gets the next one, its images again.
        assert_eq!(sch.worker_gone(addr(1)), 1);
        let d = sch.dispatch(addr(5), |_| 2, t).unwrap();
        assert_eq!((d.job, d.images.clone()), (1, vec![0, 1]));
        let d = sch.dispatch(addr(5), |_| 2, t).unwrap();
        assert_eq!(d.job, 1, "job 1 was a query behind");
    }

    #[test]
    fn a_weighted_job_gets_worker_time_by_its_weight() {
        let mut s = JobsState::default();
        let images: Vec<String> = (0..1000).map(|i| format!("img{i}")).collect();
        s.submit_weighted("tiny", "d/", images.clone(), 1000, 1, 0);
        s.submit_weighted("tiny", "d/", images, 1000, 3, 0);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let jobs: Vec<JobId> = (0..40)
            .map(|_| sch.dispatch(addr(1), |_| 1, t).unwrap().job)
            .collect();
        assert_eq!(jobs.iter().filter(|j| **j == 2).count(), 30, "{jobs:?}");
        assert_eq!(sch.placement()[1].weight, 3);
    }

    #[test]
    fn the_completion_that_ends_a_job_counts_in_c1_and_c2() {
        let mut s = state_with(&[("tiny", 8)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let a = sch.dispatch(addr(1), |_| 4, t).unwrap();
        let b = sch.dispatch(addr(2), |_| 4, t).unwrap();
        for (d, ends) in [(a, false), (b, true)] {
            let accepted = s.complete(1, &results(&d.images), 0);
            assert_eq!(accepted.finished, ends);
            // The leader syncs (the job ended, so the scheduler forgets it)
            // before it hears of the completion.
            sch.sync(&s, Instant::now());
            let ms = Duration::from_millis(20);
            sch.completed(done(d.query, 1, "tiny", &d.images, 4, ms), t);
        }
        assert_eq!(sch.latency("tiny").unwrap().count, 2);
        assert_eq!(sch.rate("tiny", t), (0.2, 0.8));
        assert_eq!(sch.in_flight(), 0);
    }

    #[test]
    fn expired_and_orphaned_leases_are_dispatched_again() {
        let s = state_with(&[("tiny", 4)]);
        let mut sch = Scheduler::new(7, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let a = sch.dispatch(addr(1), |_| 2, t).unwrap();
        let b = sch.dispatch(addr(2), |_| 2, t).unwrap();
        assert_eq!(
            (a.images.clone(), b.images.clone()),
            (vec![0, 1], vec![2, 3])
        );
        assert_ne!(a.query, b.query);
        assert_eq!(a.query >> 40, 7);
        assert!(sch.dispatch(addr(3), |_| 2, t).is_none());
        // Worker 2 dies: its images go to the next worker.
        assert_eq!(sch.worker_gone(addr(2)), 1);
        assert_eq!(sch.dispatch(addr(3), |_| 2, t).unwrap().images, vec![2, 3]);
        // Worker 1 stalls past its lease.
        assert_eq!(sch.expire(t + Duration::from_secs(11)), 2);
        assert_eq!(
            sch.dispatch(addr(3), |_| 4, t).unwrap().images,
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn a_worker_that_cannot_run_a_model_is_not_asked_again() {
        let s = state_with(&[("tiny", 4)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let a = sch.dispatch(addr(1), |_| 2, t).unwrap();
        assert_eq!(sch.refuse(a.query, addr(1)), Some((1, 1)));
        assert!(sch.dispatch(addr(1), |_| 2, t).is_none());
        assert_eq!(sch.dispatch(addr(2), |_| 2, t).unwrap().images, vec![0, 1]);
        assert_eq!(sch.refuse(a.query, addr(1)), None, "already released");
    }

    #[test]
    fn done_images_and_ended_jobs_are_not_dispatched() {
        let mut s = state_with(&[("tiny", 4)]);
        s.complete(1, &results(&[3]), 0);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        // A new leader admits the job with only the missing images.
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        let q = sch.dispatch(addr(1), |_| 1, t).unwrap();
        assert_eq!(q.images, vec![0]);
        // A late result of an earlier leader's lease for image 2.
        s.complete(1, &results(&[2]), 0);
        sch.completed(done(999, 1, "tiny", &[2], 1, Duration::from_millis(1)), t);
        assert_eq!(sch.dispatch(addr(1), |_| 8, t).unwrap().images, vec![1]);
        s.complete(1, &results(&[0, 1]), 0);
        sch.sync(&s, Instant::now());
        assert_eq!(sch.in_flight(), 0);
        assert!(sch.placement().is_empty());
    }

    #[test]
    fn a_dropped_job_releases_its_leases_and_the_others_go_on() {
        let s = state_with(&[("tiny", 6), ("tiny", 6)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, Instant::now());
        let t = Instant::now();
        for w in 1..=4 {
            sch.dispatch(addr(w), |_| 2, t).unwrap();
        }
        assert_eq!(sch.in_flight(), 4);
        assert_eq!(sch.drop_job(1), 2);
        assert_eq!(sch.in_flight(), 2);
        assert!(sch.placement().iter().all(|p| p.job == 2));
        // Only job 2's last pending images are handed out, then nothing.
        assert_eq!(sch.dispatch(addr(5), |_| 8, t).unwrap().job, 2);
        assert!(sch.dispatch(addr(5), |_| 8, t).is_none());
        assert_eq!(sch.drop_job(1), 0, "already gone");
    }

    fn batched(max: u32, delay_ms: u64) -> impl Fn(&str) -> Batching {
        move |_| Batching {
            max,
            delay: Duration::from_millis(delay_ms),
            target: None,
        }
    }

    /// Every image of a dispatch and its `with`, by job.
    fn batch_of(d: &Dispatch) -> Vec<(JobId, usize)> {
        std::iter::once(d)
            .chain(&d.with)
            .map(|d| (d.job, d.images.len()))
            .collect()
    }

    #[test]
    fn a_partial_batch_waits_for_the_delay_and_a_full_one_goes_at_once() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        let mut s = state_with(&[("tiny", 3)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        let policy = batched(8, 50);
        sch.sync(&s, t);
        // 3 of 8: it waits for more images, up to 50 ms.
        assert!(sch.dispatch_batched(addr(1), &policy, t).is_none());
        assert_eq!(sch.next_ready(&policy, t), Some(t + ms(50)));
        // A second job fills the batch at 20 ms: it goes at once, one batch.
        s.submit(
            "tiny",
            "d/",
            (0..5).map(|i| format!("b{i}")).collect(),
            5,
            0,
        );
        sch.sync(&s, t + ms(20));
        let d = sch.dispatch_batched(addr(1), &policy, t + ms(20)).unwrap();
        assert_eq!(batch_of(&d), [(1, 3), (2, 5)]);
        assert_eq!(sch.in_flight(), 2);
        // A lone partial batch goes when its oldest image has waited 50 ms.
        s.submit("tiny", "d/", vec!["c".into(); 2], 2, 0);
        sch.sync(&s, t + ms(100));
        assert!(
            sch.dispatch_batched(addr(1), &policy, t + ms(149))
                .is_none()
        );
        assert_eq!(sch.next_ready(&policy, t + ms(149)), Some(t + ms(150)));
        let d = sch.dispatch_batched(addr(1), &policy, t + ms(150)).unwrap();
        assert_eq!(batch_of(&d), [(3, 2)]);
        // A full batch goes at once; with no delay a partial one does too.
        s.submit("tiny", "d/", vec!["d".into(); 9], 9, 0);
        sch.sync(&s, t + ms(200));
        let d = sch.dispatch_batched(addr(1), &policy, t + ms(200)).unwrap();
        assert_eq!(batch_of(&d), [(4, 8)]);
        assert!(
            sch.dispatch_batched(addr(1), &policy, t + ms(200))
                .is_none()
        );
        let d = sch
            .dispatch_batched(addr(1), batched(8, 0), t + ms(200))
            .unwrap();
        assert_eq!(batch_of(&d), [(4, 1)]);
        assert_eq!(sch.next_ready(&policy, t + ms(200)), None);
    }

    #[test]
    fn a_waiting_model_leaves_the_workers_to_others() {
        let t = Instant::now();
        let s = state_with(&[("tiny", 2), ("resnet50", 100)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, t);
        let policy = |m: &str| Batching {
            max: 4,
            delay: Duration::from_millis(if m == "tiny" { 100 } else { 0 }),
            target: None,
        };
        // Tiny's batch waits; the workers run resnet50 meanwhile.
        for w in 1..=3 {
            let d = sch.dispatch_batched(addr(w), policy, t).unwrap();
            assert_eq!(batch_of(&d), [(2, 4)]);
        }
        let later = t + Duration::from_millis(100);
        let d = sch.dispatch_batched(addr(4), policy, later).unwrap();
        assert_eq!(batch_of(&d), [(1, 2)], "tiny's turn once its delay is over");
    }

    /// Virtual time, 1 ms steps: a long resnet50 job (40 ms per image,
    /// batches of 4) and a stream of tiny jobs of 3 images every 10 ms (2 ms
    /// per image, batches of up to 8, 25 ms delay) on 4 workers.
    #[test]
    fn small_jobs_beside_a_long_one_are_batched_within_the_delay_and_nobody_starves() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut s = JobsState::default();
        let mut sch = Scheduler::new(1, Duration::from_secs(60));
        let policy = |m: &str| match m {
            "tiny" => Batching {
                max: 8,
                delay: ms(25),
                target: None,
            },
            _ => Batching::fixed(4),
        };
        let per_image = |m: &str| if m == "tiny" { 2 } else { 40 };
        let big = s.submit("resnet50", "d/", vec!["r".into()], 100_000, 0);
        let mut workers: Vec<Option<(u64, Dispatch)>> = vec![None; 4];
        let mut submitted: BTreeMap<JobId, u64> = BTreeMap::new();
        let mut finished: BTreeMap<JobId, u64> = BTreeMap::new();
        // (dispatched at, images, when its oldest job was submitted)
        let mut batches: Vec<(u64, usize, u64)> = Vec::new();
        for at in 0..20_000u64 {
            let now = t0 + ms(at);
            for w in workers.iter_mut() {
                if w.as_ref().is_none_or(|(end, _)| *end > at) {
                    continue;
                }
                let (_, d) = w.take().unwrap();
                let parts: Vec<&Dispatch> = std::iter::once(&d).chain(&d.with).collect();
                let total: usize = parts.iter().map(|p| p.images.len()).sum();
                let took = ms(per_image(&d.model) * total as u64);
                for p in parts {
                    let acc = s.complete(p.job, &results(&p.images), at);
                    if acc.finished {
                        finished.insert(p.job, at);
                    }
                    sch.sync(&s, now);
                    let mut c = done(p.query, p.job, &p.model, &p.images, acc.new, took);
                    c.batch_images = total as u32;
                    sch.completed(c, now);
                }
            }
            if at % 10 == 0 && at < 19_000 {
                let id = s.submit("tiny", "d/", vec!["t".into(); 3], 3, at);
                submitted.insert(id, at);
            }
            sch.sync(&s, now);
            for (i, w) in workers.iter_mut().enumerate() {
                if w.is_some() {
                    continue;
                }
                let Some(d) = sch.dispatch_batched(addr(i as u16), policy, now) else {
                    continue;
                };
                let parts: Vec<&Dispatch> = std::iter::once(&d).chain(&d.with).collect();
                let n: usize = parts.iter().map(|p| p.images.len()).sum();
                if d.model == "tiny" {
                    let oldest = parts.iter().map(|p| submitted[&p.job]).min().unwrap();
                    batches.push((at, n, oldest));
                }
                *w = Some((at + per_image(&d.model) * n as u64, d));
            }
        }
        // A partial batch never goes before its oldest image waited the
        // delay; full ones go before it; each is one model run.
        assert!(
            batches
                .iter()
                .all(|(at, n, oldest)| *n == 8 || at - oldest >= 25),
            "{batches:?}"
        );
        let full_early = batches
            .iter()
            .filter(|(at, n, oldest)| *n == 8 && at - oldest < 25)
            .count();
        assert!(
            full_early >= 10,
            "{full_early} full batches went early: {:?}",
            &batches[..20]
        );
        let mean = batches.iter().map(|b| b.1).sum::<usize>() as f64 / batches.len() as f64;
        assert!(mean > 5.0, "mean tiny batch {mean}");
        // Every tiny job ends within the delay, a resnet50 query (160 ms)
        // and its own run, and the long job keeps about its share.
        assert_eq!(finished.len(), submitted.len(), "every tiny job ended");
        let worst = submitted
            .iter()
            .map(|(id, t)| finished[id] - t)
            .max()
            .unwrap();
        assert!(worst <= 280, "a tiny job took {worst} ms");
        let done_big = s.jobs[&big].done;
        assert!(done_big > 1400, "the long job did {done_big} images");
    }

    #[test]
    fn each_query_of_a_batch_is_charged_its_share() {
        let t = Instant::now();
        let mut s = state_with(&[("tiny", 2), ("tiny", 6)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, t);
        let d = sch.dispatch_batched(addr(1), batched(8, 0), t).unwrap();
        assert_eq!(batch_of(&d), [(1, 2), (2, 6)]);
        let ms80 = Duration::from_millis(80);
        for q in std::iter::once(&d).chain(&d.with) {
            let accepted = s.complete(q.job, &results(&q.images), 0);
            let mut c = done(q.query, q.job, "tiny", &q.images, accepted.new, ms80);
            c.batch_images = 8;
            sch.completed(c, t);
        }
        // One run of 8 images; 80 ms of worker time split 20/60; 10 ms per image.
        assert_eq!(sch.mean_batch("tiny", t), 8.0);
        assert_eq!(sch.cost("tiny", 1), 10_000.0);
        let l = sch.latency("tiny").unwrap();
        assert_eq!(l.count, 2, "each query counts in C2 with the batch's time");
        assert!(l.p50_ms >= 79.0, "{l:?}");
    }

    #[test]
    fn a_p99_target_dispatches_the_size_the_controller_chose() {
        let t = Instant::now();
        let mut s = state_with(&[("tiny", 1000)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s, t);
        let policy = |_: &str| Batching {
            max: 8,
            delay: Duration::ZERO,
            target: Some(Duration::from_millis(50)),
        };
        // Nothing measured: the largest batch.
        assert_eq!(sch.effective_batch("tiny", &policy("tiny"), t), 8);
        let mut imgs = Vec::new();
        for w in 0..24 {
            let d = sch.dispatch_batched(addr(w), policy, t).unwrap();
            assert_eq!(d.images.len(), 8);
            imgs.push((d.query, d.images));
        }
        // Batches of 8 take 400 ms, far over the target: once 20 have
        // completed, it tries 4.
        for (q, images) in &imgs {
            let accepted = s.complete(1, &results(images), 0);
            let c = done(
                *q,
                1,
                "tiny",
                images,
                accepted.new,
                Duration::from_millis(400),
            );
            sch.completed(c, t);
        }
        assert_eq!(sch.effective_batch("tiny", &policy("tiny"), t), 4);
        assert_eq!(
            sch.dispatch_batched(addr(1), policy, t)
                .unwrap()
                .images
                .len(),
            4
        );
    }

    #[test]
    fn rates_and_latency_cover_the_window() {
        let mut sch = Scheduler::new(1, Duration::from_millis(10));
        let t = Instant::now();
        sch.sync(&state_with(&[("tiny", 100)]), t);
        for i in 0..20u64 {
            let at = t + Duration::from_millis(500 * i);
            let c = done(
                i,
                1,
                "tiny",
                &[0, 1, 2, 3],
                4,
                Duration::from_millis(10 + i),
            );
            sch.completed(c, at);
        }
        let end = t + Duration::from_millis(500 * 19);
        let (q, img) = sch.rate("tiny", end);
        assert!((q - 2.0).abs() < 0.11, "{q}");
        assert!((img - 8.0).abs() < 0.41, "{img}");
        let l = sch.latency("tiny").unwrap();
        assert_eq!(l.count, 20);
        assert!(l.p50_ms >= 18.0 && l.p50_ms <= 20.1, "{l:?}");
        assert!(l.max_ms >= 28.9, "{l:?}");
        // The lease of a slow model stretches to 4x its slowest query.
        assert_eq!(sch.lease_for("tiny"), Duration::from_millis(116));
        assert_eq!(sch.lease_for("other"), Duration::from_millis(10));
        assert_eq!(sch.rate("other", end), (0.0, 0.0));
    }
}
