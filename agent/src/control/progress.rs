//! Each job's progress per worker as the leader sees it (`dml job`): the
//! queries and images each worker completed, its per-image errors, and the
//! time its queries waited (queue) and ran (compute); and the times of its
//! last queries one by one (`dml bench-model`). In the leader's memory like
//! the scheduler's leases: a new leader starts from nothing. Pure: every call
//! takes `now`.

use crate::latency::QueryTime;
use dml_shared::infer::{JobId, MAX_QUERY_TIMES, QueryTiming, WorkerProgress};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A query handed out and not yet completed.
#[derive(Debug)]
struct Open {
    job: JobId,
    worker: SocketAddr,
    since: Instant,
    /// Per-image errors in the worker's report, once it arrived.
    errors: u32,
}

#[derive(Debug, Default)]
pub struct Progress {
    open: HashMap<u64, Open>,
    jobs: BTreeMap<JobId, BTreeMap<SocketAddr, WorkerProgress>>,
    /// The last query times of the newest [`TIMED_JOBS`] jobs.
    times: BTreeMap<JobId, VecDeque<QueryTiming>>,
}

/// Jobs whose query times are kept (the newest by id).
const TIMED_JOBS: usize = 64;

impl Progress {
    /// `query` of `job` was leased to `worker` at `now`.
    pub fn dispatched(&mut self, query: u64, job: JobId, worker: SocketAddr, now: Instant) {
        let open = Open {
            job,
            worker,
            since: now,
            errors: 0,
        };
        self.open.insert(query, open);
    }

    /// The worker's report of `query` carries `errors` per-image errors.
    pub fn reported(&mut self, query: u64, errors: u32) {
        if let Some(o) = self.open.get_mut(&query) {
            o.errors = errors;
        }
    }

    /// `query` completed with `new` images new to its job, after `time` on
    /// the worker. A query of an earlier leader is not counted.
    pub fn completed(&mut self, query: u64, new: u32, time: QueryTime, now: Instant) {
        let elapsed = time.compute;
        let Some(o) = self.open.remove(&query) else {
            return;
        };
        if new == 0 {
            return;
        }
        let w = self
            .jobs
            .entry(o.job)
            .or_default()
            .entry(o.worker)
            .or_insert_with(|| WorkerProgress::new(o.worker));
        let held = now.saturating_duration_since(o.since);
        w.queries += 1;
        w.images += u64::from(new);
        w.errors += u64::from(o.errors.min(new));
        w.compute_ms += elapsed.as_millis() as u64;
        w.queue_ms += held.saturating_sub(elapsed).as_millis() as u64;
        let us = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        let times = self.times.entry(o.job).or_default();
        if times.len() == MAX_QUERY_TIMES {
            times.pop_front();
        }
        times.push_back(QueryTiming {
            images: new,
            queue_us: us(time.queue),
            compute_us: us(time.compute),
            held_us: us(held),
        });
        while self.times.len() > TIMED_JOBS {
            self.times.pop_first();
        }
    }

    /// The times of `job`'s last queries, in the order they completed.
    pub fn query_times(&self, job: JobId) -> Vec<QueryTiming> {
        self.times
            .get(&job)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets the open queries `keep` (given the query and its job) says
    /// are no longer leased (expired, released, or of a cancelled job);
    /// their late results are not counted here.
    pub fn retain_open(&mut self, keep: impl Fn(u64, JobId) -> bool) {
        self.open.retain(|q, o| keep(*q, o.job));
    }

    /// The workers of `job`, with `in_flight` queries held now by each.
    pub fn workers(&self, job: JobId, in_flight: &[(SocketAddr, u32)]) -> Vec<WorkerProgress> {
        let mut out = self.jobs.get(&job).cloned().unwrap_or_default();
        for (worker, n) in in_flight {
            out.entry(*worker)
                .or_insert_with(|| WorkerProgress::new(*worker))
                .in_flight = *n;
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn work(queue: Duration, compute: Duration) -> QueryTime {
        QueryTime { queue, compute }
    }

    #[test]
    fn each_worker_gets_its_queries_images_errors_and_times() {
        let mut p = Progress::default();
        let t = Instant::now();
        let ms = Duration::from_millis;
        p.dispatched(1, 7, addr(1), t);
        p.dispatched(2, 7, addr(2), t);
        p.dispatched(3, 7, addr(1), t);
        p.dispatched(4, 8, addr(1), t);
        p.reported(1, 1);
        // Held 500 ms, worked 200: 300 ms queued.
        p.completed(1, 4, work(ms(250), ms(200)), t + ms(500));
        p.completed(3, 2, work(ms(0), ms(100)), t + ms(100));
        // A duplicate brings nothing new; a repeat is not counted twice.
        p.completed(2, 0, work(ms(0), ms(50)), t + ms(60));
        p.completed(1, 4, work(ms(250), ms(200)), t + ms(900));
        let w = p.workers(7, &[(addr(3), 2)]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            (w[0].worker, w[0].queries, w[0].images, w[0].errors),
            (addr(1), 2, 6, 1)
        );
        assert_eq!((w[0].compute_ms, w[0].queue_ms), (300, 300));
        assert_eq!((w[1].worker, w[1].in_flight, w[1].queries), (addr(3), 2, 0));
        // Each counted query's times, in the order they completed.
        let q = p.query_times(7);
        let row = |q: &QueryTiming| (q.images, q.queue_us, q.compute_us, q.held_us);
        assert_eq!(
            q.iter().map(row).collect::<Vec<_>>(),
            [(4, 250_000, 200_000, 500_000), (2, 0, 100_000, 100_000)]
        );
        assert_eq!(q[0].total_us(), 450_000);
        // Leases gone from the scheduler are forgotten.
        p.retain_open(|q, _| q != 4);
        p.completed(4, 1, work(ms(0), ms(1)), t + ms(2));
        assert!(p.workers(8, &[]).is_empty());
        assert!(p.query_times(8).is_empty());
    }

    #[test]
    fn query_times_are_bounded_per_job_and_in_jobs() {
        let mut p = Progress::default();
        let t = Instant::now();
        let n = MAX_QUERY_TIMES as u64 + 5;
        for q in 0..n {
            p.dispatched(q, 1, addr(1), t);
            p.completed(q, 1, work(Duration::ZERO, Duration::from_micros(q)), t);
        }
        let q = p.query_times(1);
        assert_eq!(q.len(), MAX_QUERY_TIMES);
        assert_eq!((q[0].compute_us, q[q.len() - 1].compute_us), (5, n - 1));
        for job in 2..=TIMED_JOBS as u64 + 1 {
            p.dispatched(n + job, job, addr(1), t);
            p.completed(n + job, 1, work(Duration::ZERO, Duration::ZERO), t);
        }
        // The oldest job's times went first.
        assert!(p.query_times(1).is_empty());
        assert_eq!(p.query_times(2).len(), 1);
    }
}
