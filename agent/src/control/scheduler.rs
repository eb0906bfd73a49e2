//! The leader's inference scheduler, in memory (rebuilt from the Raft state
//! by each new leader): query leases, fair-time dispatch, and the C1/C2/C5
//! figures. Pure: every call takes `now`.
//!
//! Fair time: each running job has a virtual time that grows by one per
//! dispatched query, and the job with the smallest one goes next, so jobs
//! running together get the same query rate whatever a query costs (a
//! slower model simply keeps more workers busy). A new job starts below the
//! smallest virtual time of the running jobs by its share of the queries in
//! flight: it is dispatched alone until it holds that share, then the jobs
//! alternate. The others keep their share, so none is starved.

use super::jobs::JobsState;
pub use crate::timing::SCHEDULER_RATE_WINDOW as RATE_WINDOW;
use dml_shared::infer::{JobId, LatencyInfo, Placement};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A query handed out and not yet completed.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRec {
    pub job: JobId,
    pub worker: SocketAddr,
    pub images: Vec<u32>,
    pub deadline: Instant,
}

#[derive(Debug, Default)]
struct JobSched {
    model: String,
    /// Virtual time: queries dispatched, offset at admission.
    pass: u64,
    /// Images with no result and no lease, lowest index first.
    pending: BTreeSet<u32>,
    /// Workers that could not run this job's model; not asked again.
    refused: BTreeSet<SocketAddr>,
}

/// Per-model figures kept by the leader.
#[derive(Debug)]
struct ModelFigures {
    /// (when, images) of each completed query in the last [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u32)>,
    /// Query processing time in microseconds.
    latency: Histogram<u64>,
    /// Longest query seen, to stretch leases of slow models.
    slowest: Duration,
}

impl Default for ModelFigures {
    fn default() -> Self {
        Self {
            recent: VecDeque::new(),
            // 1 µs to 1 h, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            slowest: Duration::ZERO,
        }
    }
}

/// A query to hand out: its id, job and image indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub query: u64,
    pub job: JobId,
    pub model: String,
    pub images: Vec<u32>,
    pub lease: Duration,
}

#[derive(Debug)]
pub struct Scheduler {
    /// Query ids are `prefix | counter`, unique across leader terms.
    prefix: u64,
    next_query: u64,
    min_lease: Duration,
    jobs: BTreeMap<JobId, JobSched>,
    leases: HashMap<u64, LeaseRec>,
    figures: HashMap<String, ModelFigures>,
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
            figures: HashMap::new(),
        }
    }

    /// Brings the job list in line with the replicated state: admits new
    /// running jobs (below the smallest virtual time by their share of the
    /// queries in flight, with every image still missing pending) and
    /// forgets ended ones and their leases. Cheap when
    /// nothing changed: it walks the jobs, not their images. Returns how many
    /// jobs it admitted.
    pub fn sync(&mut self, state: &JobsState) -> usize {
        let running = |id: &JobId| {
            state
                .jobs
                .get(id)
                .is_some_and(|j| j.state == dml_shared::infer::JobState::Running)
        };
        self.jobs.retain(|id, _| running(id));
        self.leases.retain(|_, l| running(&l.job));
        let start = self.jobs.values().map(|j| j.pass).min().unwrap_or(0);
        let newcomers = state
            .jobs
            .iter()
            .filter(|(id, j)| {
                j.state == dml_shared::infer::JobState::Running && !self.jobs.contains_key(id)
            })
            .count();
        // A newcomer's rate follows its queries in flight: it starts that
        // many dispatches early, so it catches up to its share of what is
        // in flight in one burst and the jobs alternate from there.
        let share = self.leases.len() / (self.jobs.len() + newcomers).max(1);
        let start = start.saturating_sub(share as u64);
        let mut admitted = 0;
        for (id, job) in &state.jobs {
            if job.state != dml_shared::infer::JobState::Running || self.jobs.contains_key(id) {
                continue;
            }
            self.jobs.insert(
                *id,
                JobSched {
                    model: job.model.clone(),
                    pass: start,
                    pending: job.missing().collect(),
                    refused: BTreeSet::new(),
                },
            );
            admitted += 1;
        }
        admitted
    }

    /// Puts the images of expired leases back to pending; returns how many
    /// leases expired.
    pub fn expire(&mut self, now: Instant) -> usize {
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

    fn release(&mut self, query: u64) {
        if let Some(l) = self.leases.remove(&query)
            && let Some(j) = self.jobs.get_mut(&l.job)
        {
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

    /// The next query for `worker`, from the job with the smallest virtual
    /// time that has pending images; `batch` gives each model's batch size.
    pub fn dispatch(
        &mut self,
        worker: SocketAddr,
        batch: impl Fn(&str) -> u32,
        now: Instant,
    ) -> Option<Dispatch> {
        let (&id, job) = self
            .jobs
            .iter_mut()
            .filter(|(_, j)| !j.pending.is_empty() && !j.refused.contains(&worker))
            .min_by_key(|(id, j)| (j.pass, **id))?;
        let n = batch(&job.model).max(1) as usize;
        let images: Vec<u32> = job.pending.iter().take(n).copied().collect();
        for i in &images {
            job.pending.remove(i);
        }
        job.pass += 1;
        let model = job.model.clone();
        let lease = self.lease_for(&model);
        let query = self.prefix | self.next_query;
        self.next_query += 1;
        self.leases.insert(
            query,
            LeaseRec {
                job: id,
                worker,
                images: images.clone(),
                deadline: now + lease,
            },
        );
        Some(Dispatch {
            query,
            job: id,
            model,
            images,
            lease,
        })
    }

    /// A lease long enough for this model: at least the configured minimum,
    /// and four times the slowest query seen.
    fn lease_for(&self, model: &str) -> Duration {
        let slowest = self
            .figures
            .get(model)
            .map_or(Duration::ZERO, |f| f.slowest);
        self.min_lease.max(slowest * 4)
    }

    /// Records a completion the state machine accepted (`new` of `images`
    /// were new): ends the lease, takes the images off pending (a late result
    /// from an earlier lease or leader counts too), and feeds C1 and C2.
    pub fn completed(
        &mut self,
        query: u64,
        job: JobId,
        images: &[u32],
        new: u32,
        elapsed: Duration,
        now: Instant,
    ) {
        self.leases.remove(&query);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        for i in images {
            j.pending.remove(i);
        }
        let model = j.model.clone();
        let model = model.as_str();
        let f = self.figures.entry(model.to_string()).or_default();
        f.slowest = f.slowest.max(elapsed);
        if new > 0 {
            f.recent.push_back((now, new));
            let us = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
            let _ = f.latency.record(us);
        }
        Self::trim(f, now);
    }

    fn trim(f: &mut ModelFigures, now: Instant) {
        while f
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            f.recent.pop_front();
        }
    }

    /// C1 over the last [`RATE_WINDOW`]: (queries/s, images/s) of `model`.
    pub fn rate(&mut self, model: &str, now: Instant) -> (f64, f64) {
        let Some(f) = self.figures.get_mut(model) else {
            return (0.0, 0.0);
        };
        Self::trim(f, now);
        let secs = RATE_WINDOW.as_secs_f64();
        let images: u64 = f.recent.iter().map(|(_, n)| u64::from(*n)).sum();
        (f.recent.len() as f64 / secs, images as f64 / secs)
    }

    /// C2 for `model`, if it completed any query under this leader.
    pub fn latency(&self, model: &str) -> Option<LatencyInfo> {
        let h = &self.figures.get(model)?.latency;
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencyInfo {
            model: model.to_string(),
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            stddev_ms: h.stdev() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
    }

    /// C5: the workers holding leases of each running job.
    pub fn placement(&self) -> Vec<Placement> {
        self.jobs
            .iter()
            .map(|(id, j)| {
                let mut per: BTreeMap<SocketAddr, u32> = BTreeMap::new();
                for l in self.leases.values().filter(|l| l.job == *id) {
                    *per.entry(l.worker).or_default() += 1;
                }
                Placement {
                    job: *id,
                    model: j.model.clone(),
                    workers: per.into_iter().collect(),
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

    #[test]
    fn two_jobs_alternate_whatever_their_cost() {
        let mut s = state_with(&[("resnet50", 1000), ("inceptionv3", 1000)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s);
        let t = Instant::now();
        let mut counts: HashMap<JobId, u32> = HashMap::new();
        // Inception queries take 3 ticks, ResNet ones 1: workers pull when free.
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
                    sch.completed(q, job, &imgs, n, Duration::from_millis(5), t);
                    *counts.entry(job).or_default() += 1;
                }
                if let Some(d) = sch.dispatch(addr(w as u16), |_| 1, t) {
                    let cost = if d.model == "inceptionv3" { 3 } else { 1 };
                    *slot = (tick + cost, Some((d.query, d.job, d.images)));
                }
            }
        }
        let (a, b) = (counts[&1], counts[&2]);
        assert!(a > 100 && b > 100, "{counts:?}");
        assert!(
            a.abs_diff(b) <= 6,
            "query counts {a} vs {b} must stay level"
        );
    }

    #[test]
    fn a_new_job_catches_up_to_its_share_in_flight_then_alternates() {
        let mut s = state_with(&[("tiny", 1000)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s);
        let t = Instant::now();
        for _ in 0..50 {
            sch.dispatch(addr(1), |_| 2, t).unwrap();
        }
        s.submit("tiny", "d/", vec!["a".into()], 100, 0);
        sch.sync(&s);
        // Job 1 has 50 queries in flight: job 2 goes alone until it holds
        // its share of them (25), then the two alternate; no burst of 50.
        let next: Vec<JobId> = (0..35)
            .map(|_| sch.dispatch(addr(1), |_| 2, t).unwrap().job)
            .collect();
        assert!(next[..25].iter().all(|j| *j == 2), "{next:?}");
        assert_eq!(
            next[25..].iter().filter(|j| **j == 2).count(),
            5,
            "{next:?}"
        );
    }

    #[test]
    fn expired_and_orphaned_leases_are_dispatched_again() {
        let s = state_with(&[("tiny", 4)]);
        let mut sch = Scheduler::new(7, Duration::from_secs(10));
        sch.sync(&s);
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
        sch.sync(&s);
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
        sch.sync(&s);
        let t = Instant::now();
        let q = sch.dispatch(addr(1), |_| 1, t).unwrap();
        assert_eq!(q.images, vec![0]);
        // A late result of an earlier leader's lease for image 2.
        s.complete(1, &results(&[2]), 0);
        sch.completed(999, 1, &[2], 1, Duration::from_millis(1), t);
        assert_eq!(sch.dispatch(addr(1), |_| 8, t).unwrap().images, vec![1]);
        s.complete(1, &results(&[0, 1]), 0);
        sch.sync(&s);
        assert_eq!(sch.in_flight(), 0);
        assert!(sch.placement().is_empty());
    }

    #[test]
    fn a_dropped_job_releases_its_leases_and_the_others_go_on() {
        let s = state_with(&[("tiny", 6), ("tiny", 6)]);
        let mut sch = Scheduler::new(1, Duration::from_secs(10));
        sch.sync(&s);
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

    #[test]
    fn rates_and_latency_cover_the_window() {
        let mut sch = Scheduler::new(1, Duration::from_millis(10));
        let t = Instant::now();
        sch.sync(&state_with(&[("tiny", 100)]));
        for i in 0..20u64 {
            let at = t + Duration::from_millis(500 * i);
            sch.completed(i, 1, &[], 4, Duration::from_millis(10 + i), at);
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
