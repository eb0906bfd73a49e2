//! Dynamic batching's p99 controller (pure: every call takes `now`). For a
//! model with a p99 target (`dml set-batch-size --p99-target`), the leader
//! keeps the recent query times of each batch size it ran, and picks the
//! size whose p99 query time (queue plus compute, as in C2) meets the target
//! at the highest throughput (images per second of worker time). Batch sizes
//! tried are the powers of two up to the model's C3 batch size, and that size.
//!
//! Exploring: with nothing measured it starts at the C3 size; a size that
//! misses the target is left for the best measured size that meets it, else
//! for the next size below; from a size that meets it, an untried size just
//! above is tried. Figures older than [`SAMPLE_AGE`] are forgotten, so a size
//! measured under a load that has passed is tried again.
//!
//! Hysteresis, so that noise does not make it flap:
//! - a size is judged only on [`MIN_SAMPLES`] queries of its own, counted
//!   from its switch once the queries leased before the switch (which its
//!   first ones wait behind) have completed;
//! - it meets the target when at most [`ALLOWED_OVER`] of its recent queries
//!   took longer: one slow query among fewer than 100 is not a p99 miss;
//! - a size that meets the target is kept unless another measured size that
//!   meets it has [`CLEARLY_BETTER`] times its throughput;
//! - a size that missed is not tried again for [`REJECT_HOLD`].

pub use crate::timing::BATCH_TARGET_SAMPLE_AGE as SAMPLE_AGE;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Query times kept per batch size (the newest).
const SAMPLES: usize = 64;
/// Query times a batch size needs before it is judged.
const MIN_SAMPLES: usize = 20;
/// Queries over the target a size may have and still meet it.
const ALLOWED_OVER: usize = 1;
/// Throughput another size needs, over the current one's, to replace a
/// current size that meets the target.
const CLEARLY_BETTER: f64 = 1.15;
/// How long a size that missed the target is not tried again.
const REJECT_HOLD: Duration = Duration::from_secs(300);

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
    /// Queries that took longer than the target.
    pub over: usize,
    /// Images per second of worker time.
    pub throughput: f64,
}

impl SizeFigures {
    fn meets(&self) -> bool {
        self.over <= ALLOWED_OVER
    }
}

/// One model's controller: the query times of each batch size and its choice.
#[derive(Debug, Default)]
struct Model {
    sizes: BTreeMap<u32, VecDeque<Sample>>,
    /// The size chosen last.
    current: Option<u32>,
    /// Completions still to come of queries leased before the last switch:
    /// the new size's queries among them are not recorded.
    settle: usize,
    /// Sizes that missed the target, not tried again until then.
    held: BTreeMap<u32, Instant>,
}

/// Recent query times per model and batch size, and each model's choice.
#[derive(Debug, Default)]
pub struct LatencyTargets {
    models: HashMap<String, Model>,
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
        let m = self.models.entry(model.to_string()).or_default();
        if m.settle > 0 {
            m.settle -= 1;
            if m.current == Some(batch) {
                return;
            }
        }
        let q = m.sizes.entry(batch).or_default();
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
    /// with enough recent samples, smallest size first; `over` counts the
    /// queries longer than `target`.
    pub fn figures(
        &mut self,
        model: &str,
        max: u32,
        target: Duration,
        now: Instant,
    ) -> Vec<SizeFigures> {
        let Some(m) = self.models.get_mut(model) else {
            return Vec::new();
        };
        for q in m.sizes.values_mut() {
            while q
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > SAMPLE_AGE)
            {
                q.pop_front();
            }
        }
        m.sizes.retain(|_, q| !q.is_empty());
        m.sizes
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
                    over: totals.iter().filter(|t| **t > target).count(),
                    throughput: if compute > 0.0 {
                        f64::from(*b) / compute
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }

    /// The batch size to run `model` at, at most `max` (see the module's
    /// notes); `in_flight`: queries leased now, which a new size's first
    /// queries wait behind.
    pub fn choose(
        &mut self,
        model: &str,
        max: u32,
        target: Duration,
        in_flight: usize,
        now: Instant,
    ) -> u32 {
        let max = max.max(1);
        let figures = self.figures(model, max, target, now);
        let m = self.models.entry(model.to_string()).or_default();
        m.held.retain(|_, until| *until > now);
        let held = |b: u32| m.held.contains_key(&b);
        let step = decide(&figures, m.current, max, &held);
        if let (true, Some(c)) = (step.reject, m.current) {
            m.held.insert(c, now + REJECT_HOLD);
        }
        if m.current != Some(step.next) {
            if m.current.is_some() {
                // Judged afresh, once the queries leased before have run.
                m.settle = in_flight;
                m.sizes.remove(&step.next);
            }
            m.current = Some(step.next);
        }
        step.next
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

/// The controller's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The size to run.
    pub next: u32,
    /// The current size missed the target: hold it off.
    pub reject: bool,
}

/// The next size from measured `figures` (smallest size first), the size
/// running now, and the sizes held off after a miss.
pub fn decide(
    figures: &[SizeFigures],
    current: Option<u32>,
    max: u32,
    held: &dyn Fn(u32) -> bool,
) -> Step {
    let sizes = candidates(max);
    let find = |b: u32| figures.iter().find(|f| f.batch == b);
    let best = figures
        .iter()
        .filter(|f| f.meets() && sizes.contains(&f.batch) && !held(f.batch))
        .max_by(|a, b| {
            a.throughput
                .total_cmp(&b.throughput)
                .then(b.batch.cmp(&a.batch))
        });
    let stay = |next| Step {
        next,
        reject: false,
    };
    let Some(c) = current.filter(|c| sizes.contains(c)) else {
        // Nothing running (or C3 changed): the best measured size, else
        // below the smallest measured, else C3.
        return stay(match best {
            Some(b) => b.batch,
            None => match figures.iter().map(|f| f.batch).min() {
                Some(low) => sizes.iter().rev().find(|b| **b < low).copied().unwrap_or(1),
                None => max,
            },
        });
    };
    let Some(now) = find(c) else {
        // Not judged yet.
        return stay(c);
    };
    if now.meets() {
        if let Some(b) = best
            && b.batch != c
            && b.throughput >= CLEARLY_BETTER * now.throughput
        {
            return stay(b.batch);
        }
        // An untried size just above may be faster.
        return match sizes.iter().find(|b| **b > c) {
            Some(up) if find(*up).is_none() && !held(*up) => stay(*up),
            _ => stay(c),
        };
    }
    let next = match best.filter(|b| b.batch != c) {
        Some(b) => b.batch,
        None => sizes.iter().rev().find(|b| **b < c).copied().unwrap_or(c),
    };
    Step { next, reject: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` queries at batch `b`, each of `total` with `compute` of work.
    fn feed_n(
        t: &mut LatencyTargets,
        n: usize,
        b: u32,
        total: Duration,
        compute: Duration,
        now: Instant,
    ) {
        for _ in 0..n {
            t.observe("m", b, total, compute, now);
        }
    }

    /// Feeds enough queries at batch `b` for it to be judged.
    fn feed(t: &mut LatencyTargets, b: u32, total: Duration, compute: Duration, now: Instant) {
        feed_n(t, MIN_SAMPLES, b, total, compute, now);
    }

    /// A controller with nothing chosen yet and `sizes` measured: compute
    /// 10 ms + 5 ms per image, and queries wait as long again (p99 = 2 x
    /// compute: 1 -> 30, 2 -> 40, 4 -> 60, 8 -> 100, 16 -> 180 ms);
    /// throughput rises with the size.
    fn measured(sizes: &[u32], now: Instant) -> LatencyTargets {
        let mut t = LatencyTargets::default();
        for &b in sizes {
            let compute = ms(10 + 5 * u64::from(b));
            feed(&mut t, b, compute * 2, compute, now);
        }
        t
    }

    #[test]
    fn the_target_picks_the_fastest_size_that_meets_it() {
        let now = Instant::now();
        let all = [1u32, 2, 4, 8, 16];
        let pick = |max, target| measured(&all, now).choose("m", max, ms(target), 0, now);
        assert_eq!(pick(16, 200), 16);
        assert_eq!(pick(16, 100), 8);
        assert_eq!(pick(16, 99), 4);
        assert_eq!(pick(16, 30), 1);
        // Nothing meets 20 ms: the smallest size.
        assert_eq!(pick(16, 20), 1);
        // C3 caps the choice.
        assert_eq!(pick(4, 200), 4);
        let f = measured(&all, now).figures("m", 16, ms(99), now);
        assert_eq!(f.len(), 5);
        assert_eq!((f[3].p99, f[3].over), (ms(100), MIN_SAMPLES));
        assert!((f[3].throughput - 8.0 / 0.05).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn a_larger_size_that_is_slower_is_not_chosen() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // Batch 8 spills out of cache: slower per image than 4.
        feed(&mut t, 4, ms(40), ms(20), now); // 200 images/s
        feed(&mut t, 8, ms(90), ms(80), now); // 100 images/s
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
    }

    #[test]
    fn it_explores_down_from_a_miss_and_up_from_a_hit() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // Nothing measured: start at C3.
        assert_eq!(t.choose("m", 32, ms(50), 0, now), 32);
        feed(&mut t, 32, ms(400), ms(200), now);
        // 32 misses: try 16, then 8.
        assert_eq!(t.choose("m", 32, ms(50), 0, now), 16);
        feed(&mut t, 16, ms(200), ms(100), now);
        assert_eq!(t.choose("m", 32, ms(50), 0, now), 8);
        feed(&mut t, 8, ms(45), ms(40), now);
        assert_eq!(t.choose("m", 32, ms(50), 0, now), 8);
        // A hit with an untried size above: try it.
        let mut t = LatencyTargets::default();
        feed(&mut t, 2, ms(10), ms(5), now);
        assert_eq!(t.choose("m", 6, ms(50), 0, now), 2);
        assert_eq!(t.choose("m", 6, ms(50), 0, now), 4);
        feed(&mut t, 4, ms(20), ms(8), now);
        assert_eq!(t.choose("m", 6, ms(50), 0, now), 6);
        // Too few samples: not judged yet.
        feed_n(&mut t, MIN_SAMPLES - 1, 6, ms(400), ms(5), now);
        assert_eq!(t.choose("m", 6, ms(50), 0, now), 6);
        t.observe("m", 6, ms(400), ms(5), now);
        assert_eq!(t.choose("m", 6, ms(50), 0, now), 4);
    }

    #[test]
    fn one_slow_query_is_not_a_miss_but_two_are() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 8);
        feed(&mut t, 8, ms(60), ms(40), now);
        t.observe("m", 8, ms(900), ms(40), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 8);
        t.observe("m", 8, ms(700), ms(40), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
    }

    #[test]
    fn a_size_that_meets_the_target_stays_unless_another_is_clearly_better() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        // 8 misses; 4 meets at 100 images/s.
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 8);
        feed(&mut t, 8, ms(300), ms(80), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
        feed(&mut t, 4, ms(60), ms(40), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
        // 2 measured meeting it at 105 images/s: not clearly better.
        feed(&mut t, 2, ms(30), Duration::from_micros(19_048), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
        // At 125 images/s it is.
        feed_n(&mut t, SAMPLES, 2, ms(30), ms(16), now);
        let f = t.figures("m", 8, ms(100), now);
        assert!(f[0].batch == 2 && f[0].throughput > 1.15 * 100.0, "{f:?}");
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 2);
    }

    #[test]
    fn a_size_that_missed_is_not_tried_again_for_a_while() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 8);
        feed(&mut t, 8, ms(300), ms(40), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
        // 8's figures are forgotten, 4 keeps meeting the target: 8 stays
        // held off until the hold ends, then it is tried again.
        let later = now + SAMPLE_AGE + ms(1);
        feed(&mut t, 4, ms(60), ms(40), later);
        assert!(
            t.figures("m", 8, ms(100), later)
                .iter()
                .all(|f| f.batch == 4)
        );
        assert_eq!(t.choose("m", 8, ms(100), 0, later), 4);
        let after = now + REJECT_HOLD + ms(1);
        feed(&mut t, 4, ms(60), ms(40), after);
        assert_eq!(t.choose("m", 8, ms(100), 0, after), 8);
    }

    #[test]
    fn queries_leased_before_a_switch_do_not_count_for_the_new_size() {
        let now = Instant::now();
        let mut t = LatencyTargets::default();
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 8);
        feed(&mut t, 8, ms(300), ms(80), now);
        // 12 queries in flight at the switch to 4.
        assert_eq!(t.choose("m", 8, ms(100), 12, now), 4);
        // The first of 4 wait behind them: slow, but not counted.
        feed_n(&mut t, 4, 8, ms(300), ms(80), now);
        feed_n(&mut t, 8, 4, ms(250), ms(40), now);
        feed(&mut t, 4, ms(60), ms(40), now);
        assert_eq!(t.choose("m", 8, ms(100), 0, now), 4);
        let f = t.figures("m", 8, ms(100), now);
        assert_eq!(f[0].samples, MIN_SAMPLES, "{f:?}");
    }
}
