//! The figures of one setting of a sweep, from what the leader reports: the
//! jobs' own submit and finish times (throughput) and each query's times
//! ([`InferRequest::QueryTimes`], latency). Pure: no IO, no clock.
//!
//! A query's latency is C2's query time, as `dml latency` shows it: from the
//! lease's arrival at the worker to its results, the queue part (behind the
//! worker's other query, a compute slot, the model's load) plus the compute
//! part. The leader's own view of each query (lease to accepted results, so
//! also the trips to the worker and the Raft commit) is reported beside it.
//!
//! [`InferRequest::QueryTimes`]: dml_shared::infer::InferRequest::QueryTimes

use dml_shared::infer::{JobInfo, QueryTiming};
use serde::Serialize;

/// One point of the sweep: a batch size and a number of concurrent jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub batch: u32,
    pub concurrency: u32,
}

/// Mean and percentiles of one time, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pcts {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Pcts {
    /// Nearest-rank percentiles of `us` (microseconds), so p50 ≤ p95 ≤ p99
    /// always holds; all zero for no values.
    pub fn of(mut us: Vec<u64>) -> Self {
        if us.is_empty() {
            return Self::default();
        }
        us.sort_unstable();
        let ms = |v: u64| v as f64 / 1000.0;
        let rank = |q: f64| {
            let i = (q * us.len() as f64).ceil() as usize;
            ms(us[i.clamp(1, us.len()) - 1])
        };
        Self {
            mean_ms: us.iter().map(|v| *v as f64).sum::<f64>() / us.len() as f64 / 1000.0,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: ms(us[us.len() - 1]),
        }
    }
}

/// The measured figures of one setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub setting: Setting,
    pub jobs: usize,
    /// Images with a result.
    pub images: u64,
    /// Queries the leader reported times for.
    pub queries: usize,
    /// From the first job's submission to the last one's end, by the leader's clock.
    pub seconds: f64,
    pub images_per_s: f64,
    /// C2's query time: queue plus compute on the worker.
    pub latency: Pcts,
    pub queue: Pcts,
    pub compute: Pcts,
    /// The leader's view: from the lease to the accepted results.
    pub held: Pcts,
}

impl Row {
    /// The figures of `setting` from its finished `jobs` and their queries' times.
    pub fn measure(setting: Setting, jobs: &[JobInfo], times: &[QueryTiming]) -> Self {
        let images: u64 = jobs.iter().map(|j| u64::from(j.done)).sum();
        let start = jobs.iter().map(|j| j.submitted_ms).min().unwrap_or(0);
        let end = jobs
            .iter()
            .map(|j| j.finished_ms.unwrap_or(j.submitted_ms))
            .max()
            .unwrap_or(0);
        // A span under a millisecond counts as one, so the rate stays finite.
        let seconds = end.saturating_sub(start).max(1) as f64 / 1000.0;
        let part = |f: fn(&QueryTiming) -> u64| Pcts::of(times.iter().map(f).collect());
        Self {
            setting,
            jobs: jobs.len(),
            images,
            queries: times.len(),
            seconds,
            images_per_s: images as f64 / seconds,
            latency: part(QueryTiming::total_us),
            queue: part(|q| q.queue_us),
            compute: part(|q| q.compute_us),
            held: part(|q| q.held_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::JobState;

    fn job(done: u32, submitted_ms: u64, finished_ms: u64) -> JobInfo {
        JobInfo {
            id: 1,
            model: "tiny".into(),
            dataset: "d/".into(),
            images: done,
            done,
            errors: 0,
            queries: 0,
            state: JobState::Done,
            reason: None,
            submitted_ms,
            finished_ms: Some(finished_ms),
            output: None,
            stalled: None,
        }
    }

    fn q(queue_ms: u64, compute_ms: u64) -> QueryTiming {
        QueryTiming {
            images: 2,
            queue_us: queue_ms * 1000,
            compute_us: compute_ms * 1000,
            held_us: (queue_ms + compute_ms + 5) * 1000,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_and_ordered() {
        let p = Pcts::of((1..=100).map(|v| v * 1000).collect());
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(p.mean_ms, 50.5);
        let one = Pcts::of(vec![7000]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Pcts::of(vec![]), Pcts::default());
    }

    #[test]
    fn a_row_spans_the_leaders_submit_to_finish_times() {
        let s = Setting {
            batch: 2,
            concurrency: 2,
        };
        let jobs = [job(6, 1_000, 3_000), job(4, 1_500, 3_500)];
        let r = Row::measure(s, &jobs, &[q(10, 20), q(0, 40), q(30, 30)]);
        assert_eq!((r.images, r.jobs, r.queries), (10, 2, 3));
        assert_eq!(r.seconds, 2.5);
        assert_eq!(r.images_per_s, 4.0);
        assert_eq!((r.latency.p50_ms, r.latency.max_ms), (40.0, 60.0));
        assert_eq!((r.queue.p50_ms, r.compute.p50_ms), (10.0, 30.0));
        assert_eq!(r.held.p99_ms, 65.0);
    }
}
