//! The scheduler on a virtual clock: workers with two query slots each
//! (one running, one waiting, as `infer/worker.rs` holds them) run queries
//! of models of different costs, one after another, and jobs of different
//! weights arrive while the workers are busy.
//!
//! What "each job within one query of its weighted share" means here: the
//! test keeps its own account `E_j` of the worker time (the model's true
//! cost per image times the images) of the queries leased to each job,
//! refunded when a lease is released unfinished. Each admission of a job
//! restarts every account from the work the job has in flight then (work
//! leased before a newcomer arrived still takes worker time after), the
//! newcomer's from zero. A job's weighted virtual time is `V_j = E_j / w_j`;
//! one query of job j is `c_j / w_j` (its batch's cost over its weight) and
//! `q` is the largest of those over the jobs with images left to lease.
//! At every instant:
//! - every lease goes to a job with `V_j < min V + q`: a job a query or more
//!   ahead of the furthest-behind job gets nothing;
//! - the spread `max V - min V` is at most `q`, except after an admission or
//!   a released lease, after which it never grows until it is back within `q`
//!   (the newcomer, or the job that lost work, takes the next free slots).
//! And over the run, the worker time each job's completed queries took,
//! over its weight, is level within a few percent.

use crate::control::jobs::JobsState;
use crate::control::scheduler::{Completion, Scheduler};
use crate::latency::QueryTime;
use dml_shared::infer::{JobId, JobState};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BATCH: u32 = 4;
const SLOTS: usize = 2;
/// Time for the leader to notice a dead worker.
const DETECT: Duration = Duration::from_secs(1);

/// True compute time per image.
fn image_cost(model: &str) -> Duration {
    match model {
        "resnet50" => Duration::from_millis(40),
        "inceptionv3" => Duration::from_millis(100),
        _ => Duration::from_millis(10),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A job to submit at `at`.
struct Arrival {
    at: Duration,
    model: &'static str,
    images: u32,
    weight: u32,
}

#[derive(Clone, Debug)]
struct Held {
    query: u64,
    job: JobId,
    model: String,
    images: Vec<u32>,
    leased: Instant,
}

#[derive(Default)]
struct Worker {
    /// Leases held, the first running since `started`.
    held: VecDeque<Held>,
    started: Option<Instant>,
    dead: bool,
}

struct Sim {
    t0: Instant,
    now: Instant,
    /// Virtual time since `t0` the run has reached.
    t: Duration,
    state: JobsState,
    sch: Scheduler,
    workers: Vec<Worker>,
    /// Leases the test knows of: query -> (job, worker index, true cost).
    leases: HashMap<u64, (JobId, usize, Duration)>,
    /// The test's account of each admitted job (see the module doc).
    account: BTreeMap<JobId, Duration>,
    weight: BTreeMap<JobId, u32>,
    /// Worker time of each job's completed queries.
    worked: BTreeMap<JobId, Duration>,
    /// (when, job, true cost) of each completed query.
    completions: Vec<(Duration, JobId, Duration)>,
    /// (when, job) of each lease.
    log: Vec<(Duration, JobId)>,
    /// The spread allowed until it is back within one query (after an
    /// admission or a release).
    allowed: f64,
    /// Leases given while a job was at least a query ahead (must stay 0).
    unfair: Vec<String>,
    /// Largest spread seen once settled, in units of `q`.
    worst: f64,
    dispatches: usize,
}

impl Sim {
    fn new(workers: usize) -> Self {
        let t0 = Instant::now();
        let mut sch = Scheduler::new(1, Duration::from_secs(60));
        // Each model's cost is known from an earlier job (a new model is
        // charged the default until its first query completes).
        for (i, model) in ["tiny", "resnet50", "inceptionv3"].iter().enumerate() {
            let warm = Completion {
                query: u64::MAX - i as u64,
                job: 0,
                model,
                worker: addr(1),
                images: &[0, 1, 2, 3],
                new: 0,
                time: QueryTime {
                    queue: Duration::ZERO,
                    compute: image_cost(model) * BATCH,
                },
                batch_images: 0,
            };
            sch.completed(warm, t0);
        }
        Self {
            t0,
            now: t0,
            t: Duration::ZERO,
            state: JobsState::default(),
            sch,
            workers: (0..workers).map(|_| Worker::default()).collect(),
            leases: HashMap::new(),
            account: BTreeMap::new(),
            weight: BTreeMap::new(),
            worked: BTreeMap::new(),
            completions: Vec::new(),
            log: Vec::new(),
            allowed: 0.0,
            unfair: Vec::new(),
            worst: 0.0,
            dispatches: 0,
        }
    }

    /// Jobs with images not yet leased (the ones a lease can go to).
    fn backlogged(&self) -> Vec<JobId> {
        self.account
            .keys()
            .copied()
            .filter(|id| {
                let j = &self.state.jobs[id];
                let in_flight: usize = self
                    .workers
                    .iter()
                    .flat_map(|w| &w.held)
                    .filter(|h| h.job == *id)
                    .map(|h| h.images.len())
                    .sum();
                j.state == JobState::Running && (j.done as usize + in_flight) < j.count as usize
            })
            .collect()
    }

    /// (min V, max V, q) over the backlogged jobs, in seconds.
    fn spread(&self) -> Option<(f64, f64, f64)> {
        let jobs = self.backlogged();
        if jobs.len() < 2 {
            return None;
        }
        let v = |id: &JobId| self.account[id].as_secs_f64() / f64::from(self.weight[id]);
        let min = jobs.iter().map(v).fold(f64::INFINITY, f64::min);
        let max = jobs.iter().map(v).fold(f64::NEG_INFINITY, f64::max);
        let q = jobs
            .iter()
            .map(|id| {
                let c = image_cost(&self.state.jobs[id].model) * BATCH;
                c.as_secs_f64() / f64::from(self.weight[id])
            })
            .fold(0.0, f64::max);
        Some((min, max, q))
    }

    /// Checks the spread after an event; `reset`: an admission or a release
    /// just happened, so the spread may be wider, but not grow after.
    fn check(&mut self, reset: bool) {
        let Some((min, max, q)) = self.spread() else {
            self.allowed = 0.0;
            return;
        };
        let spread = max - min;
        let eps = 1e-9;
        if reset {
            self.allowed = spread.max(q);
            return;
        }
        assert!(
            spread <= self.allowed.max(q) + eps,
            "at {:?} the spread of weighted virtual times grew to {spread} (allowed {}, one query {q}): {:?}",
            self.now - self.t0,
            self.allowed,
            self.account
        );
        self.allowed = spread.max(q).min(self.allowed.max(q));
        if spread <= q + eps {
            self.worst = self.worst.max(spread / q);
        }
    }

    fn admit(&mut self, a: &Arrival) {
        let images = (0..a.images).map(|i| format!("img{i}")).collect();
        let id = self
            .state
            .submit_weighted(a.model, "d/", images, a.images, a.weight, 0);
        assert_eq!(self.sch.sync(&self.state, self.now), 1);
        // Every account restarts from its work in flight.
        for v in self.account.values_mut() {
            *v = Duration::ZERO;
        }
        for (job, _, cost) in self.leases.values() {
            if let Some(v) = self.account.get_mut(job) {
                *v += *cost;
            }
        }
        self.account.insert(id, Duration::ZERO);
        self.weight.insert(id, a.weight);
        self.check(true);
    }

    /// The running query of worker `w` ends now.
    fn finish(&mut self, w: usize) {
        let h = self.workers[w].held.pop_front().expect("a running query");
        let started = self.workers[w].started.take().expect("started");
        let (_, _, cost) = self.leases.remove(&h.query).expect("a known lease");
        let results: Vec<_> = h
            .images
            .iter()
            .map(|i| dml_shared::infer::ImageResult {
                index: *i,
                image: String::new(),
                outcome: dml_shared::infer::Outcome::Error("sim".into()),
            })
            .collect();
        let accepted = self.state.complete(h.job, &results, 0);
        // The leader may sync (the job ended) before it hears of the completion.
        self.sch.sync(&self.state, self.now);
        let done = Completion {
            query: h.query,
            job: h.job,
            model: &h.model,
            worker: addr(w as u16 + 1),
            images: &h.images,
            new: accepted.new,
            time: QueryTime {
                queue: started - h.leased,
                compute: cost,
            },
            batch_images: 0,
        };
        self.sch.completed(done, self.now);
        *self.worked.entry(h.job).or_default() += cost;
        self.completions.push((self.now - self.t0, h.job, cost));
        self.check(false);
    }

    fn detect(&mut self, w: usize) {
        let released = self.sch.worker_gone(addr(w as u16 + 1));
        let gone: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, (_, lw, _))| *lw == w)
            .map(|(q, _)| *q)
            .collect();
        assert_eq!(released, gone.len());
        for q in gone {
            let (job, _, cost) = self.leases.remove(&q).unwrap();
            if let Some(v) = self.account.get_mut(&job) {
                *v = v.saturating_sub(cost);
            }
        }
        self.workers[w].held.clear();
        self.workers[w].started = None;
        self.check(true);
    }

    /// Worker `w` asks for a lease for a free slot.
    fn lease(&mut self, w: usize) -> bool {
        self.sch.sync(&self.state, self.now);
        let before = self.spread();
        let Some(d) = self.sch.dispatch(addr(w as u16 + 1), |_| BATCH, self.now) else {
            return false;
        };
        // Every job here has a multiple of BATCH images: no batch has room
        // for another job's (dynamic batching is tested in scheduler.rs).
        assert!(d.with.is_empty(), "{d:?}");
        self.dispatches += 1;
        self.log.push((self.now - self.t0, d.job));
        if let Some((min, _, q)) = before {
            let v = self.account[&d.job].as_secs_f64() / f64::from(self.weight[&d.job]);
            if v >= min + q - 1e-9 {
                self.unfair.push(format!(
                    "at {:?} job {} got a lease at V {v} with the furthest behind at {min} (one query {q})",
                    self.now - self.t0,
                    d.job
                ));
            }
        }
        let cost = image_cost(&d.model) * d.images.len() as u32;
        *self.account.get_mut(&d.job).expect("admitted") += cost;
        self.leases.insert(d.query, (d.job, w, cost));
        self.workers[w].held.push_back(Held {
            query: d.query,
            job: d.job,
            model: d.model,
            images: d.images,
            leased: self.now,
        });
        self.check(false);
        true
    }

    /// Runs from where it stopped until `end` (1 ms steps): arrivals,
    /// completions, and workers that die at a time (noticed [`DETECT`] later).
    fn run(&mut self, arrivals: &[Arrival], deaths: &[(usize, Duration)], end: Duration) {
        let step = Duration::from_millis(1);
        while self.t <= end {
            let t = self.t;
            self.now = self.t0 + t;
            for a in arrivals.iter().filter(|a| a.at == t) {
                self.admit(a);
            }
            for &(w, at) in deaths {
                if at == t {
                    self.workers[w].dead = true;
                }
                if at + DETECT == t {
                    self.detect(w);
                }
            }
            for w in 0..self.workers.len() {
                let worker = &self.workers[w];
                let due = match (worker.held.front(), worker.started) {
                    (Some(h), Some(s)) => {
                        s + image_cost(&h.model) * h.images.len() as u32 <= self.now
                    }
                    _ => false,
                };
                if due && !worker.dead {
                    self.finish(w);
                }
            }
            for w in 0..self.workers.len() {
                while !self.workers[w].dead && self.workers[w].held.len() < SLOTS && self.lease(w) {
                }
                let worker = &mut self.workers[w];
                if !worker.dead && worker.started.is_none() && !worker.held.is_empty() {
                    worker.started = Some(self.now);
                }
            }
            self.t += step;
        }
    }

    fn run_more(&mut self, end: Duration) {
        self.run(&[], &[], end);
    }

    fn assert_fair(&self) {
        assert!(self.unfair.is_empty(), "{:#?}", self.unfair);
        assert!(self.worst <= 1.0 + 1e-9, "{}", self.worst);
        assert!(self.dispatches > 100, "{}", self.dispatches);
    }
}

fn level(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    max / min
}

/// Worker time of the queries each job completed from `from` on, over its weight.
fn work_since(sim: &Sim, from: Duration) -> BTreeMap<JobId, f64> {
    let mut m = BTreeMap::new();
    for (at, job, cost) in &sim.completions {
        if *at >= from {
            *m.entry(*job).or_default() += cost.as_secs_f64() / f64::from(sim.weight[job]);
        }
    }
    m
}

#[test]
fn two_jobs_submitted_a_second_apart_share_worker_time_from_the_first_query() {
    let mut sim = Sim::new(4);
    let arrivals = [
        Arrival {
            at: Duration::ZERO,
            model: "resnet50",
            images: 4000,
            weight: 1,
        },
        Arrival {
            at: Duration::from_secs(1),
            model: "inceptionv3",
            images: 4000,
            weight: 1,
        },
    ];
    sim.run(&arrivals, &[], Duration::from_secs(60));
    sim.assert_fair();
    // Job 1's eight queries in flight at 1 s (1.28 s of worker time) go on
    // after job 2 came: job 2 takes the next free slots (three of its 0.4 s
    // queries) until one of job 1's would leave job 1 no further ahead than
    // one of job 2's, then the two alternate.
    let after: Vec<JobId> = sim
        .log
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(1))
        .map(|(_, j)| *j)
        .collect();
    assert_eq!(after[..3], [2, 2, 2], "{:?}", &after[..12]);
    assert!(after[3..12].contains(&1), "{:?}", &after[..12]);
    // Worker time of the queries they completed since job 2 came (job 1's
    // in-flight ones included): level within 3 %.
    let work = work_since(&sim, Duration::from_secs(1));
    let level = level(&work.values().copied().collect::<Vec<_>>());
    assert!(level < 1.03, "{work:?}");
    // So the cheaper model completed more queries: 2.5x the images.
    let images = |id| f64::from(sim.state.jobs[&id].done);
    let r = images(1) / images(2);
    assert!((r - 2.5).abs() < 0.2, "{} {}", images(1), images(2));
}

#[test]
fn five_jobs_weighted_1_1_2_4_8_share_worker_time_by_weight() {
    let mut sim = Sim::new(4);
    let models = ["tiny", "resnet50", "inceptionv3", "resnet50", "tiny"];
    let arrivals: Vec<Arrival> = [1, 1, 2, 4, 8]
        .iter()
        .zip(models)
        .enumerate()
        .map(|(i, (&weight, model))| Arrival {
            at: Duration::from_millis(200 * i as u64),
            model,
            images: 40_000,
            weight,
        })
        .collect();
    sim.run(&arrivals, &[], Duration::from_secs(60));
    sim.assert_fair();
    // Over the last 50 s, worker time over weight is level within 5 %.
    let work = work_since(&sim, Duration::from_secs(10));
    assert_eq!(work.len(), 5);
    let l = level(&work.values().copied().collect::<Vec<_>>());
    assert!(l < 1.05, "{work:?}");
}

#[test]
fn a_worker_dying_mid_batch_costs_no_job_its_share() {
    let mut sim = Sim::new(4);
    let arrivals = [
        Arrival {
            at: Duration::ZERO,
            model: "inceptionv3",
            images: 2000,
            weight: 1,
        },
        Arrival {
            at: Duration::from_millis(500),
            model: "resnet50",
            images: 6000,
            weight: 2,
        },
    ];
    // Worker 2 dies 5.15 s in, in the middle of a query, holding another.
    sim.run(
        &arrivals,
        &[(1, Duration::from_millis(5150))],
        Duration::from_secs(60),
    );
    sim.assert_fair();
    let work = work_since(&sim, Duration::from_secs(10));
    let l = level(&work.values().copied().collect::<Vec<_>>());
    assert!(l < 1.05, "{work:?}");
    // The dead worker's queries ran elsewhere: every image of the smaller
    // job has exactly one result once it is done.
    sim.run_more(Duration::from_secs(200));
    let j = &sim.state.jobs[&1];
    assert_eq!((j.state, j.done), (JobState::Done, 2000));
    assert_eq!(sim.sch.latency("inceptionv3").unwrap().count, 500);
}

/// How the simulated host runs queries.
#[derive(Clone, Copy)]
struct Host {
    /// A free compute slot goes to the query leased first (else to a
    /// waiting worker at random, as `flock` waiters race for it).
    fifo: bool,
    /// A worker leases only while fewer queries than the host has slots
    /// wait for one (its places on deck, `infer/slots.rs`); else each
    /// worker holds two leases.
    decks: bool,
    /// Share of queries slowed 3 to 10 times by other load (the rest take
    /// their cost within 30 %).
    outliers: f64,
    /// Compute times of A's and B's queries: the bench's quiet run's (125
    /// and 170 ms, two queries running at a time on two cores), else
    /// [`image_cost`]'s (40 and 100 ms).
    bench_costs: bool,
}

impl Host {
    fn cost(&self, model: &str) -> Duration {
        match (self.bench_costs, model) {
            (true, "resnet50") => Duration::from_millis(125),
            (true, "inceptionv3") => Duration::from_millis(170),
            _ => image_cost(model),
        }
    }
}

/// A small deterministic generator (xorshift64*), for noisy compute times.
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A query's compute time: within 30 % of `base`, or with probability
    /// `outliers` 3 to 10 times it.
    fn noisy(&mut self, base: Duration, outliers: f64) -> Duration {
        let f = if self.next() >= outliers {
            0.7 + 0.6 * self.next()
        } else {
            3.0 + 7.0 * self.next()
        };
        base.mul_f64(f)
    }
}

/// One agent of [`host_windows`]: its leases, the first running until `end`.
#[derive(Default)]
struct HostWorker {
    held: VecDeque<Held>,
    running: Option<(Instant, Instant, Duration)>,
}

/// What [`host_windows`] measured.
struct HostRun {
    /// Worker time of each job's completions in every 10 s window from 2 s
    /// after B came (one starting every second), as the bench's row 3.
    windows: Vec<(f64, f64)>,
    /// The worker time each job's queries ran inside the same windows (a
    /// query across an end counts for its part inside).
    spent: Vec<(f64, f64)>,
    /// As `windows`, over 30 s.
    long: Vec<(f64, f64)>,
    /// From B's submit to its first completion, and to the end of the
    /// first window of the last 1 s, from B's submit on, in which B's
    /// completions took at least 90% of A's worker time (the bench's row 4).
    first: Option<Duration>,
    share: Option<Duration>,
    /// Likewise with windows of a whole second, which may start before B
    /// came (A alone then): at best about 0.95 s whatever the scheduler.
    share_trailing: Option<Duration>,
}

/// The bench's 10-agent cluster on a virtual clock: ten workers share two
/// host compute slots (as [`Host`] says), queries of batch 1 take noisy
/// times, job A (resnet50) runs alone for 6 s, then job B (inceptionv3)
/// joins.
fn host_windows(seed: u64, secs: u64, host: Host) -> HostRun {
    const WORKERS: usize = 10;
    const HOST_SLOTS: usize = 2;
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut sch = Scheduler::new(1, Duration::from_secs(60));
    let mut state = JobsState::default();
    let mut workers: Vec<HostWorker> = (0..WORKERS).map(|_| HostWorker::default()).collect();
    let mut done: Vec<(Duration, JobId, Duration)> = Vec::new();
    let b_at = Duration::from_secs(6);
    let step = Duration::from_millis(1);
    let mut t = Duration::ZERO;
    state.submit("resnet50", "d/", vec!["x".into(); 100_000], 100_000, 0);
    sch.sync(&state, t0);
    while t <= Duration::from_secs(secs) {
        let now = t0 + t;
        if t == b_at {
            state.submit("inceptionv3", "d/", vec!["x".into(); 100_000], 100_000, 0);
            sch.sync(&state, now);
        }
        for (w, worker) in workers.iter_mut().enumerate() {
            let Some((end, started, cost)) = worker.running else {
                continue;
            };
            if end > now {
                continue;
            }
            worker.running = None;
            let h = worker.held.pop_front().expect("a running query");
            let results: Vec<_> = h
                .images
                .iter()
                .map(|i| dml_shared::infer::ImageResult {
                    index: *i,
                    image: String::new(),
                    outcome: dml_shared::infer::Outcome::Error("sim".into()),
                })
                .collect();
            let accepted = state.complete(h.job, &results, 0);
            let c = Completion {
                query: h.query,
                job: h.job,
                model: &h.model,
                worker: addr(w as u16 + 1),
                images: &h.images,
                new: accepted.new,
                time: QueryTime {
                    queue: started - h.leased,
                    compute: cost,
                },
                batch_images: 0,
            };
            sch.completed(c, now);
            done.push((t, h.job, cost));
        }
        // Which worker asks first: the kernel's choice.
        let first = (rng.next() * WORKERS as f64) as usize;
        for k in 0..WORKERS {
            let w = (first + k) % WORKERS;
            let mut on_deck = workers
                .iter()
                .map(|w| w.held.len() - usize::from(w.running.is_some()))
                .sum::<usize>();
            let worker = &mut workers[w];
            while worker.held.len() < SLOTS && !(host.decks && on_deck >= HOST_SLOTS) {
                let Some(d) = sch.dispatch(addr(w as u16 + 1), |_| 1, now) else {
                    break;
                };
                worker.held.push_back(Held {
                    query: d.query,
                    job: d.job,
                    model: d.model,
                    images: d.images,
                    leased: now,
                });
                on_deck += 1;
            }
        }
        let mut free = HOST_SLOTS - workers.iter().filter(|w| w.running.is_some()).count();
        while free > 0 {
            let waiting: Vec<usize> = (0..WORKERS)
                .filter(|&w| workers[w].running.is_none() && !workers[w].held.is_empty())
                .collect();
            if waiting.is_empty() {
                break;
            }
            let w = if host.fifo {
                *waiting
                    .iter()
                    .min_by_key(|&&w| workers[w].held[0].leased)
                    .unwrap()
            } else {
                waiting[(rng.next() * waiting.len() as f64) as usize]
            };
            let base = host.cost(&workers[w].held[0].model);
            let cost = rng.noisy(base, host.outliers);
            workers[w].running = Some((now + cost, now, cost));
            free -= 1;
        }
        t += step;
    }
    let work = |job: JobId, from: Duration, to: Duration| -> f64 {
        done.iter()
            .filter(|(at, j, _)| *j == job && *at >= from && *at < to)
            .map(|(_, _, c)| c.as_secs_f64())
            .sum()
    };
    let spent = |job: JobId, from: Duration, to: Duration| -> f64 {
        done.iter()
            .filter(|(_, j, _)| *j == job)
            .map(|(at, _, c)| {
                let start = at.saturating_sub(*c).max(from);
                (*at).min(to).saturating_sub(start).as_secs_f64()
            })
            .sum()
    };
    let first = done
        .iter()
        .find(|(_, j, _)| *j == 2)
        .map(|(at, _, _)| *at - b_at);
    let share = |clip: Duration| {
        (1..=800)
            .map(|k| b_at + Duration::from_millis(10 * k))
            .find(|&t| {
                let from = t.saturating_sub(Duration::from_secs(1)).max(clip);
                let a = work(1, from, t);
                a > 0.0 && work(2, from, t) >= 0.9 * a
            })
            .map(|t| t - b_at)
    };
    let (mut windows, mut spent_in) = (Vec::new(), Vec::new());
    let mut from = b_at + Duration::from_secs(2);
    while from + Duration::from_secs(10) <= Duration::from_secs(secs) {
        let to = from + Duration::from_secs(10);
        windows.push((work(1, from, to), work(2, from, to)));
        spent_in.push((spent(1, from, to), spent(2, from, to)));
        from += Duration::from_secs(1);
    }
    let mut long = Vec::new();
    let mut from = b_at + Duration::from_secs(2);
    while from + Duration::from_secs(30) <= Duration::from_secs(secs) {
        let to = from + Duration::from_secs(30);
        long.push((work(1, from, to), work(2, from, to)));
        from += Duration::from_secs(1);
    }
    HostRun {
        windows,
        spent: spent_in,
        long,
        first,
        share: share(b_at),
        share_trailing: share(Duration::ZERO),
    }
}

/// Worst and median max/min over the windows of [`host_windows`], and the
/// run (for its times to B's share).
fn window_ratios(seed: u64, host: Host) -> ((f64, f64), HostRun) {
    let run = host_windows(seed, 70, host);
    (worst_median(&run.windows), run)
}

/// Worst and median max/min of (A, B) windows.
fn worst_median(windows: &[(f64, f64)]) -> (f64, f64) {
    let mut r: Vec<f64> = windows.iter().map(|(a, b)| a.max(*b) / a.min(*b)).collect();
    assert!(r.len() > 30, "{}", r.len());
    r.sort_by(f64::total_cmp);
    (r[r.len() - 1], r[r.len() / 2])
}

/// The scheduler keeps the accounts (completed work plus the charges of the
/// work in flight) level, so completed work in a window is level when the
/// host runs queries in the order they were leased and holds few leased
/// ahead: with places on deck (a worker leases only while fewer queries
/// than the host has slots wait for one), every 10 s window is within 3 %
/// with compute times spread by 30 %, and a new job reaches its share
/// within 1 s. With ten workers holding two leases each and slots going to
/// waiters at random (`flock` alone, as before the places on deck), the
/// work in flight of each job drifts, and so does each window's completed
/// work; compute outliers, charged only when they complete, widen both.
#[test]
fn ten_workers_on_two_host_slots_share_every_10s_window_within_3_percent() {
    let mut seen = Vec::new();
    for seed in [1, 7, 42] {
        let host = |fifo, decks, outliers| Host {
            fifo,
            decks,
            outliers,
            bench_costs: false,
        };
        let (decks, run) = window_ratios(seed, host(true, true, 0.0));
        assert!(decks.0 <= 1.03, "seed {seed}: worst window {decks:?}");
        let share = run.share.expect("B reached its share");
        assert!(
            share <= Duration::from_millis(500),
            "seed {seed}: {share:?}"
        );
        let first = run.first.expect("a completion of B");
        let times = (first, share, run.share_trailing);
        let (raced, old) = window_ratios(seed, host(false, false, 0.0));
        let old = (old.first, old.share, old.share_trailing);
        let slowed = window_ratios(seed, host(true, true, 0.1)).0;
        let raced_slowed = window_ratios(seed, host(false, false, 0.1)).0;
        seen.push(((decks, times), (raced, old), slowed, raced_slowed));
    }
    eprintln!(
        "((worst, median), (first, share, share over whole seconds)) places on deck / raced \
         slots, two leases each; (worst, median) of both with 10 % outliers: {seen:?}"
    );
}

/// The windows of [`host_windows`] (from 8 s to `secs`) for an exact share
/// with no scheduler: each of the two host slots runs one job's queries
/// back to back, so each job holds half the worker time at every instant.
/// (worst, median) by completions, and by worker time run in the window.
fn pinned_windows(seed: u64, secs: u64, host: Host) -> ((f64, f64), (f64, f64)) {
    let mut rng = Rng(seed);
    let mut done: Vec<(Duration, usize, Duration)> = Vec::new();
    for (job, model) in ["resnet50", "inceptionv3"].iter().enumerate() {
        let mut t = Duration::ZERO;
        while t <= Duration::from_secs(secs) {
            let c = rng.noisy(host.cost(model), host.outliers);
            t += c;
            done.push((t, job, c));
        }
    }
    let (mut windows, mut spent) = (Vec::new(), Vec::new());
    let mut from = Duration::from_secs(8);
    while from + Duration::from_secs(10) <= Duration::from_secs(secs) {
        let to = from + Duration::from_secs(10);
        let sum = |job: usize, f: &dyn Fn(Duration, Duration) -> f64| -> f64 {
            done.iter()
                .filter(|(_, j, _)| *j == job)
                .map(|(at, _, c)| f(*at, *c))
                .sum()
        };
        let by_done = |at: Duration, c: Duration| {
            if at >= from && at < to {
                c.as_secs_f64()
            } else {
                0.0
            }
        };
        let by_run = |at: Duration, c: Duration| {
            let start = at.saturating_sub(c).max(from);
            at.min(to).saturating_sub(start).as_secs_f64()
        };
        windows.push((sum(0, &by_done), sum(1, &by_done)));
        spent.push((sum(0, &by_run), sum(1, &by_run)));
        from += Duration::from_secs(1);
    }
    (worst_median(&windows), worst_median(&spent))
}

/// The bench's row 3 at its quiet run's compute times (125 and 170 ms a
/// query, two running at a time: a 10 s window holds about 80 of A's
/// queries and 60 of B's). Counted by completions, as the bench counts
/// them, a window takes each query whole at the instant it completes: an
/// exact share (each slot running one job's queries back to back) already
/// scores 1.02–1.025 at worst, as a query of each job running across
/// either end falls on one side of it. Lease by lease, the accounts'
/// difference moves by +A's cost or -B's, so it keeps within a band of one
/// query of each (0.3 s, 3 % of a 10 s share), and the worker time each
/// job ran inside a window differs by at most about a query at each end.
/// By completions that gives 1.04–1.05 at worst over 10 s windows (the
/// bench's quiet runs: 1.038 and 1.047), medians near 1.01; over 30 s
/// windows, where a query at each end is 1 %, within 1.02.
#[test]
fn bench_costs_10s_windows_are_within_a_query_at_each_end() {
    let host = Host {
        fifo: true,
        decks: true,
        outliers: 0.0,
        bench_costs: true,
    };
    // The longest query: B's cost plus its 30 % spread.
    let q = host.cost("inceptionv3").as_secs_f64() * 1.3;
    let mut seen = Vec::new();
    for seed in [1, 7, 42] {
        let run = host_windows(seed, 100, host);
        for (i, (a, b)) in run.spent.iter().enumerate() {
            assert!(
                (a - b).abs() <= 2.0 * q,
                "seed {seed}, window {i}: worker time run {a:.3} s vs {b:.3} s"
            );
        }
        let long = worst_median(&run.long);
        assert!(long.0 <= 1.02, "seed {seed}: 30 s windows {long:?}");
        let (exact_done, exact_run) = pinned_windows(seed, 70, host);
        assert!(exact_run.0 < 1.0 + 1e-9, "{exact_run:?}");
        assert!(exact_done.0 > 1.015, "{exact_done:?}");
        seen.push((
            worst_median(&run.windows),
            worst_median(&run.spent),
            exact_done,
            long,
            run.share,
        ));
    }
    eprintln!(
        "(worst, median) by completions, by worker time run; an exact share by completions; \
         30 s windows by completions; B to its share: {seen:?}"
    );
}
