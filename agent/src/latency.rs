//! C2's histograms: the time of each completed query, split into queue
//! (waiting on the worker) and compute (working), per model. Each worker
//! keeps its own and sends them with its lease requests; the leader keeps a
//! set per worker and shows their merge, so a new leader rebuilds C2 from
//! the workers' reports instead of starting from nothing.

use dml_shared::infer::{LatencyInfo, ModelFigures, Spread, WorkerFigures};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest query time a histogram holds (longer ones count as this).
const MAX_US: u64 = 3_600_000_000;

/// Where a query's time on its worker went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryTime {
    /// From the lease's arrival to the start of its work that was spent
    /// waiting: behind the worker's other query, or for a host compute slot.
    pub queue: Duration,
    /// Fetching and preprocessing the images and running the model.
    pub compute: Duration,
}

impl QueryTime {
    pub fn total(&self) -> Duration {
        self.queue + self.compute
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros().min(u128::from(MAX_US)) as u64).max(1)
}

/// One model's C2 histograms (microseconds).
#[derive(Clone, Debug)]
pub struct Hists {
    total: Histogram<u64>,
    queue: Histogram<u64>,
    compute: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Self {
        Self {
            total: histogram(),
            queue: histogram(),
            compute: histogram(),
        }
    }
}

impl Hists {
    pub fn record(&mut self, t: QueryTime) {
        let _ = self.total.record(micros(t.total()));
        let _ = self.queue.record(micros(t.queue));
        let _ = self.compute.record(micros(t.compute));
    }

    /// Queries recorded.
    pub fn count(&self) -> u64 {
        self.total.len()
    }

    pub fn add(&mut self, other: &Hists) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.total.add(&other.total);
        let _ = self.queue.add(&other.queue);
        let _ = self.compute.add(&other.compute);
    }

    fn to_wire(&self, model: &str) -> ModelFigures {
        let sparse = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        ModelFigures {
            model: model.to_string(),
            total: sparse(&self.total),
            queue: sparse(&self.queue),
            compute: sparse(&self.compute),
        }
    }

    /// The histograms a worker sent; values out of range are clamped.
    pub fn from_wire(f: &ModelFigures) -> Self {
        let dense = |pairs: &[(u64, u64)]| {
            let mut h = histogram();
            for (v, n) in pairs {
                let _ = h.record_n((*v).clamp(1, MAX_US), *n);
            }
            h
        };
        Self {
            total: dense(&f.total),
            queue: dense(&f.queue),
            compute: dense(&f.compute),
        }
    }

    /// C2 for `model`, if any query was recorded.
    pub fn info(&self, model: &str) -> Option<LatencyInfo> {
        let h = &self.total;
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let spread = |h: &Histogram<u64>| Spread {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        };
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
            queue: spread(&self.queue),
            compute: spread(&self.compute),
        })
    }
}

/// The C2 histograms of one worker, by model.
#[derive(Clone, Debug, Default)]
pub struct WorkerHists {
    models: BTreeMap<String, Hists>,
}

impl WorkerHists {
    pub fn record(&mut self, model: &str, t: QueryTime) {
        self.models.entry(model.to_string()).or_default().record(t);
    }

    /// Queries recorded, all models.
    pub fn count(&self) -> u64 {
        self.models.values().map(Hists::count).sum()
    }

    pub fn to_wire(&self) -> WorkerFigures {
        WorkerFigures {
            models: self.models.iter().map(|(m, h)| h.to_wire(m)).collect(),
        }
    }

    /// Takes a model's histograms from the worker's own report where it
    /// holds more queries than this copy: the worker saw every query the
    /// leader accepted from it, this leader only those since it took over
    /// (and a report may be older than the last completion). Usually it
    /// holds no more, and nothing is decoded.
    pub fn merge_report(&mut self, report: &WorkerFigures) {
        for f in &report.models {
            let theirs: u64 = f.total.iter().map(|(_, n)| *n).sum();
            let ours = self.models.entry(f.model.clone()).or_default();
            if theirs > ours.count() {
                *ours = Hists::from_wire(f);
            }
        }
    }

    pub fn get(&self, model: &str) -> Option<&Hists> {
        self.models.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(queue_ms: u64, compute_ms: u64) -> QueryTime {
        QueryTime {
            queue: Duration::from_millis(queue_ms),
            compute: Duration::from_millis(compute_ms),
        }
    }

    #[test]
    fn a_report_round_trips_and_keeps_queue_and_compute_apart() {
        let mut w = WorkerHists::default();
        for i in 0..10 {
            w.record("tiny", t(100 + i, 20));
        }
        w.record("resnet50", t(0, 500));
        let mut leader = WorkerHists::default();
        leader.merge_report(&w.to_wire());
        assert_eq!(leader.count(), 11);
        let l = leader.get("tiny").unwrap().info("tiny").unwrap();
        assert_eq!(l.count, 10);
        assert!((l.queue.p50_ms - 104.0).abs() < 0.2, "{l:?}");
        assert!((l.compute.max_ms - 20.0).abs() < 0.1, "{l:?}");
        assert!((l.mean_ms - 124.5).abs() < 0.2, "{l:?}");
    }

    #[test]
    fn an_older_report_does_not_undo_newer_completions() {
        let mut worker = WorkerHists::default();
        worker.record("tiny", t(1, 1));
        let old = worker.to_wire();
        worker.record("tiny", t(1, 1));
        let mut leader = WorkerHists::default();
        leader.merge_report(&worker.to_wire());
        leader.record("tiny", t(1, 1));
        leader.merge_report(&old);
        assert_eq!(leader.count(), 3, "the stale report is ignored");
        worker.record("tiny", t(1, 1));
        worker.record("tiny", t(1, 1));
        leader.merge_report(&worker.to_wire());
        assert_eq!(leader.count(), 4);
    }
}
