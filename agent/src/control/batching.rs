//! Dynamic batching's p99 controller (pure: every call takes `now`). For a
//! model with a p99 target (`dml set-batch-size --p99-target`), the leader
//! keeps the recent query times of each batch size it ran, and picks the
//! size whose p99 query time (queue plus compute, as in C2) meets the target
//! at the highest throughput (images per second of worker time). Batch sizes
//! tried are the powers of two up to the model's C3 batch size, and that size.
//!
//! Exploring: with nothing measured it starts at the C3 size; when no
//! measured size meets the target it tries the next size below the smallest
//! measured; when the best size meeting it has an untried size just above, it
//! tries that. Figures older than [`SAMPLE_AGE`] are forgotten, so a size
//! measured under a load that has passed is tried again.

pub use crate::timing::BATCH_TARGET_SAMPLE_AGE as SAMPLE_AGE;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Query times kept per batch size (the newest).
const SAMPLES: usize = 64;
/// Query times a batch size needs before its p99 counts.
const MIN_SAMPLES: usize = 8;

/// One completed query.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    /// Queue plus compute on the worker.
    total: Duration,
    /// Worker time of the whole batch.
    compute: Duration,
}

/// The figures of one batch size, as the controller weighs them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeFigures {
    pub batch: u32,
    pub samples: usize,
    pub p99: Duration,
    /// Images per second of worker time.
    pub throughput: f64,
}

/// Recent query times per model and batch size.
#[derive(Debug, Default)]
pub struct LatencyTargets {
    models: HashMap<String, BTreeMap<u32, VecDeque<Sample>>>,
}

impl LatencyTargets {
    /// A query of `model` ran in a batch of `batch` images: `total` on the
    /// worker, of which `compute` working.
    pub fn observe(
        &mut self,
        model: &str,
        batch: u32,
        total: Duration,
        compute: Duration,
        now: Instant,
    ) {
        if batch == 0 {
            return;
        }
        let q = self
            .models
            .entry(model.to_string())
            .or_default()
            .entry(batch)
            .or_default();
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(Sample {
            at: now,
            total,
            compute,
        });
    }

    /// The measured figures of `model` at each batch size up to `max`
    /// with enough recent samples, smallest size first.
    pub fn figures(&mut self, model: &str, max: u32, now: Instant) -> Vec<SizeFigures> {
        let Some(sizes) = self.models.get_mut(model) else {
            return Vec::new();
        };
        for q in sizes.values_mut() {
            while q
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > SAMPLE_AGE)
            {
                q.pop_front();
            }
        }
        sizes.retain(|_, q| !q.is_empty());
        sizes
            .iter()
            .filter(|(b, q)| **b <= max && q.len() >= MIN_SAMPLES)
            .map(|(b, q)| {
                let mut totals: Vec<Duration> = q.iter().map(|s| s.total).collect();
                totals.sort_unstable();
                // Nearest rank.
                let rank = (totals.len() * 99).div_ceil(100).max(1) - 1;
                let compute: f64 =
                    q.iter().map(|s| s.compute.as_secs_f64()).sum::<f64>() / q.len() as f64;
                SizeFigures {
                    batch: *b,
                    samples: q.len(),
                    p99: totals[rank],
                    throughput: if compute > 0.0 {
                        f64::from(*b) / compute
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }

    /// The batch size to run `model` at: the one meeting `target` at the
    /// highest throughput, at most `max` (see the module's notes).
    pub fn choose(&mut self, model: &str, max: u32, target: Duration, now: Instant) -> u32 {
        let max = max.max(1);
        let figures = self.figures(model, max, now);
        pick(&figures, max, target)
    }
}

/// The sizes tried up to `max`: powers of two, and `max`.
fn candidates(max: u32) -> Vec<u32> {
    let mut c: Vec<u32> = std::iter::successors(Some(1u32), |b| b.checked_mul(2))
        .take_while(|b| *b < max)
        .collect();
    c.push(max);
    c
}

/// The choice from measured `figures` (smallest size first).
pub fn pick(figures: &[SizeFigures], max: u32, target: Duration) -> u32 {
    let sizes = candidates(max);
    let measured = |b: u32| figures.iter().any(|f| f.batch == b);
    let best = figures
        .iter()
        .filter(|f| f.p99 <= target && sizes.contains(&f.batch))
        .max_by(|a, b| {
            a.throughput
                .total_cmp(&b.throughput)
                .then(b.batch.cmp(&a.batch))
        });
    match best {
        Some(best) => {
            // Try the next size up while it is unmeasured: it may be faster.
            match sizes.iter().find(|b| **b > best.batch) {
                Some(up) if !measured(*up) => *up,
                _ => best.batch,
            }
        }
        None => match figures.iter().map(|f| f.batch).min() {
            // Nothing meets the target: go below the smallest size tried.
            Some(low) => sizes.iter().rev().find(|b| **b < low).copied().unwrap_or(1),
            None => max,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` queries at batch `b`, each of `total` with `compute` of work.
    fn feed(t: &mut LatencyTargets, b: u32, total: Duration, compute: Duration, now: Instant) {
        for _ in 0..MIN_SAMPLES {
            t.observe("m", b, total, compute, now);
        }
    }

    #[test]
    fn the_target_picks_the_fastest_size_that_meets_it() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // Synthetic figures: compute 10 ms + 5 ms per image, and queries
        // wait as long again: p99 = 2 x compute.
        for b in [1u32, 2, 4, 8, 16] {
            let compute = ms(10 + 5 * u64::from(b));
            feed(&mut t, b, compute * 2, compute, now);
        }
        // p99: 1 -> 30, 2 -> 40, 4 -> 60, 8 -> 100, 16 -> 180 ms; throughput rises with b.
        assert_eq!(t.choose("m", 16, ms(200), now), 16);
        assert_eq!(t.choose("m", 16, ms(100), now), 8);
        assert_eq!(t.choose("m", 16, ms(99), now), 4);
        assert_eq!(t.choose("m", 16, ms(30), now), 1);
        // Nothing meets 20 ms: the smallest size.
        assert_eq!(t.choose("m", 16, ms(20), now), 1);
        // C3 caps the choice.
        assert_eq!(t.choose("m", 4, ms(200), now), 4);
        let f = t.figures("m", 16, now);
        assert_eq!(f.len(), 5);
        assert_eq!(f[3].p99, ms(100));
        assert!((f[3].throughput - 8.0 / 0.05).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn a_larger_size_that_is_slower_is_not_chosen() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // Batch 8 spills out of cache: slower per image than 4.
        feed(&mut t, 4, ms(40), ms(20), now); // 200 images/s
        feed(&mut t, 8, ms(90), ms(80), now); // 100 images/s
        assert_eq!(t.choose("m", 8, ms(100), now), 4);
    }

    #[test]
    fn it_explores_down_from_a_miss_and_up_from_a_hit() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // Nothing measured: start at C3.
        assert_eq!(t.choose("m", 32, ms(50), now), 32);
        feed(&mut t, 32, ms(400), ms(200), now);
        // 32 misses: try 16, then 8.
        assert_eq!(t.choose("m", 32, ms(50), now), 16);
        feed(&mut t, 16, ms(200), ms(100), now);
        assert_eq!(t.choose("m", 32, ms(50), now), 8);
        feed(&mut t, 8, ms(45), ms(40), now);
        assert_eq!(t.choose("m", 32, ms(50), now), 8);
        // A hit with an untried size above: try it.
        let mut t = LatencyTargets::default();
        feed(&mut t, 2, ms(10), ms(5), now);
        assert_eq!(t.choose("m", 6, ms(50), now), 4);
        feed(&mut t, 4, ms(20), ms(8), now);
        assert_eq!(t.choose("m", 6, ms(50), now), 6);
        // Too few samples do not count yet.
        t.observe("m", 6, ms(10), ms(5), now);
        assert_eq!(t.choose("m", 6, ms(50), now), 6);
    }

    #[test]
    fn old_figures_are_forgotten() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        feed(&mut t, 8, ms(400), ms(200), now);
        assert_eq!(t.choose("m", 8, ms(50), now), 4);
        let later = now + SAMPLE_AGE + ms(1);
        assert_eq!(t.choose("m", 8, ms(50), later), 8);
        assert!(t.figures("m", 8, later).is_empty());
    }
}
