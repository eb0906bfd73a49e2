//! `bench inference`, row 7 (issue 20): p99 query time of resnet50 at the batch size a p99
//! target made the leader choose, against a fixed batch size of the same throughput, on the
//! bench's cluster and in the same run.
//!
//! 1. Fixed batch 1: p99 of a job's queries (`InferRequest::QueryTimes`, C2's queue plus
//!    compute), to place the target.
//! 2. Largest batch N, p99 target `p99(1) x sqrt(N)`: a job runs until the leader's
//!    `effective_batch` has not changed for one round of queries (two per worker) and then for
//!    a window of queries more; images/s and p99 over that window.
//! 3. Target off, fixed batch = the size the target chose (the same dispatch, so the same
//!    throughput is expected; both are measured and shown): the same window after one round.
//!
//! Each phase's job is cancelled at its window's end.

use anyhow::{Context, Result, bail};
use dml_shared::infer::{InferRequest, InferResponse, JobId, JobState, QueryTiming};
use dml_tests::infer::{infer, job, set_batch, submit};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MODEL: &str = "resnet50";
const POLL: Duration = Duration::from_millis(250);
/// Longest the polls of a phase may keep failing before it gives up.
const POLL_FAILURES: Duration = Duration::from_secs(30);
/// Images of each phase's job: more than any phase runs (the dataset cycles); cancelled.
const JOB_IMAGES: u32 = 1_000_000;

/// The row's sizes and windows.
pub struct BatchPlan {
    /// Largest batch (C3) while the target chooses.
    pub max_batch: u32,
    /// Queries in the batch-1 window and in each compared window, and the shortest window
    /// (p99 of fewer than 100 queries is their maximum).
    pub probe_queries: usize,
    pub window_queries: usize,
    pub window_min: Duration,
    /// Longest a phase may take to settle and fill its window.
    pub timeout: Duration,
}

impl BatchPlan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                max_batch: 8,
                probe_queries: 60,
                window_queries: 100,
                window_min: Duration::from_secs(10),
                timeout: Duration::from_secs(180),
            }
        } else {
            Self {
                max_batch: 16,
                probe_queries: 100,
                window_queries: 300,
                window_min: Duration::from_secs(30),
                timeout: Duration::from_secs(480),
            }
        }
    }
}

/// One phase's window.
#[derive(Serialize, Default, Clone)]
pub struct Phase {
    /// The `effective_batch` the leader reported over the window.
    pub batch: u32,
    /// Changes of `effective_batch` seen during the phase.
    pub changes: u32,
    /// Each `effective_batch` seen, with the job's accepted queries when it was first seen.
    pub path: Vec<(usize, u32)>,
    /// Seconds from the submit to the window's start.
    pub settle_s: f64,
    pub images_per_s: f64,
    pub window_s: f64,
    /// Queries in the window (of `batch` images) and those of another size left out
    /// (in flight across a change).
    pub queries: usize,
    pub other_size_queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Default)]
pub struct Batching {
    pub model: String,
    pub max_batch: u32,
    pub batch1: Option<Phase>,
    pub p99_target_ms: Option<u64>,
    pub dynamic: Option<Phase>,
    pub fixed: Option<Phase>,
    /// Dynamic p99 over fixed p99, and dynamic images/s over fixed.
    pub p99_ratio: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub error: Option<String>,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (q * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn set_policy(at: SocketAddr, p99_target_ms: u64) -> Result<()> {
    match infer(
        at,
        InferRequest::SetBatchPolicy {
            model: MODEL.into(),
            max_queue_delay_ms: Some(0),
            p99_target_ms: Some(p99_target_ms),
        },
    )
    .await?
    {
        InferResponse::Done => Ok(()),
        other => bail!("set-batch-policy answered {other:?}"),
    }
}

async fn effective(at: SocketAddr) -> Result<u32> {
    match infer(at, InferRequest::Models).await? {
        InferResponse::Models(ms) => ms
            .iter()
            .find(|m| m.name == MODEL)
            .map(|m| m.effective_batch)
            .with_context(|| format!("{MODEL} is not among the models")),
        other => bail!("models answered {other:?}"),
    }
}

async fn query_times(at: SocketAddr, id: JobId) -> Result<Vec<QueryTiming>> {
    match infer(at, InferRequest::QueryTimes { job: id }).await? {
        InferResponse::QueryTimes { queries, .. } => Ok(queries),
        other => bail!("query-times answered {other:?}"),
    }
}

/// Runs a job of resnet50 until `effective_batch` has held for `round` queries and then for
/// `window` more; the figures of that window. The job is cancelled at the end.
async fn phase(
    at: SocketAddr,
    round: usize,
    (window, min): (usize, Duration),
    timeout: Duration,
    what: &str,
) -> Result<Phase> {
    let id = submit(at, MODEL, JOB_IMAGES, super::inference::DATASET).await?;
    let r = watch(at, id, round, (window, min), timeout, what).await;
    let _ = infer(at, InferRequest::Cancel { job: id }).await;
    r
}

async fn watch(
    at: SocketAddr,
    id: JobId,
    round: usize,
    (window, min): (usize, Duration),
    timeout: Duration,
    what: &str,
) -> Result<Phase> {
    let t0 = Instant::now();
    let mut cur: Option<u32> = None;
    let mut changes = 0;
    let mut path = Vec::new();
    // Queries accepted when `cur` began; the window's start (when, queries then).
    let mut since = 0;
    let mut start: Option<(Instant, usize)> = None;
    // Since when polls have been failing.
    let mut failing: Option<Instant> = None;
    loop {
        if t0.elapsed() > timeout {
            bail!(
                "{what}: no window of {window} queries at one batch size within {timeout:?} \
                 (batch {cur:?}, {changes} changes)"
            );
        }
        // A failed poll (on a loaded machine the leader's read check can miss its 100 ms) is
        // retried; only failures for longer than POLL_FAILURES end the phase.
        let polled = async {
            let j = job(at, id).await?;
            Ok::<_, anyhow::Error>((j, effective(at).await?, query_times(at, id).await?))
        }
        .await;
        let (j, eff, qs) = match polled {
            Ok(p) => {
                failing = None;
                p
            }
            Err(e) => {
                let first = *failing.get_or_insert_with(Instant::now);
                if first.elapsed() > POLL_FAILURES {
                    return Err(e.context(format!(
                        "{what}: polls failing for {:.1} s",
                        first.elapsed().as_secs_f64()
                    )));
                }
                eprintln!("[batching] {what}: poll failed, retrying: {e:#}");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        match j.state {
            JobState::Running => {}
            s => bail!(
                "{what}: job {id} is {s:?}: {}",
                j.reason.unwrap_or_default()
            ),
        }
        let now = Instant::now();
        if cur != Some(eff) {
            if cur.is_some() {
                changes += 1;
                eprintln!(
                    "[batching] {what}: effective batch {eff} after {} queries",
                    qs.len()
                );
            }
            cur = Some(eff);
            path.push((qs.len(), eff));
            since = qs.len();
            start = None;
        }
        // One round after the change (queries leased before it finish by then), and 20
        // queries at least (what the leader needs to judge a size).
        if start.is_none() && qs.len() >= since + round.max(20) {
            start = Some((now, qs.len()));
        }
        if let Some((ts, from)) = start
            && qs.len() >= from + window
            && now.duration_since(ts) >= min
        {
            let win = &qs[from..];
            let mut us: Vec<u64> = win
                .iter()
                .filter(|q| q.images == eff)
                .map(QueryTiming::total_us)
                .collect();
            us.sort_unstable();
            let span = now.duration_since(ts).as_secs_f64();
            let images: u64 = win.iter().map(|q| u64::from(q.images)).sum();
            return Ok(Phase {
                batch: eff,
                changes,
                path,
                settle_s: ts.duration_since(t0).as_secs_f64(),
                images_per_s: images as f64 / span,
                window_s: span,
                queries: us.len(),
                other_size_queries: win.len() - us.len(),
                p50_ms: pct(&us, 0.50),
                p99_ms: pct(&us, 0.99),
                max_ms: pct(&us, 1.0),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The row on a warm cluster reached through `at`, with `workers` workers. Leaves resnet50
/// at batch 1 with no target.
pub async fn row(at: SocketAddr, workers: usize, plan: &BatchPlan) -> Batching {
    let mut b = Batching {
        model: MODEL.into(),
        max_batch: plan.max_batch,
        ..Batching::default()
    };
    if let Err(e) = steps(at, workers, plan, &mut b).await {
        b.error = Some(format!("{e:#}"));
    }
    let _ = set_policy(at, 0).await;
    let _ = set_batch(at, MODEL, 1).await;
    eprintln!("[batching] {}", text(&b).replace('\n', " | "));
    b
}

async fn steps(at: SocketAddr, workers: usize, plan: &BatchPlan, b: &mut Batching) -> Result<()> {
    // Two queries in flight per worker: a round.
    let round = 2 * workers;
    set_policy(at, 0).await?;
    set_batch(at, MODEL, 1).await?;
    eprintln!("[batching] fixed batch 1, to place the target");
    let p1 = phase(
        at,
        round,
        (plan.probe_queries, plan.window_min / 2),
        plan.timeout,
        "batch 1",
    )
    .await?;
    // The hosts are CPU-bound, so a query's time grows about linearly with its batch
    // (p99(N) ~ N x p99(1)): the geometric middle leaves sizes on both sides of the target.
    let target = (p1.p99_ms * f64::from(plan.max_batch).sqrt()).round() as u64;
    b.batch1 = Some(p1);
    b.p99_target_ms = Some(target);

    set_batch(at, MODEL, plan.max_batch).await?;
    set_policy(at, target).await?;
    eprintln!(
        "[batching] up to {}, p99 target {target} ms",
        plan.max_batch
    );
    let d = phase(
        at,
        round,
        (plan.window_queries, plan.window_min),
        plan.timeout,
        "target",
    )
    .await?;
    let chosen = d.batch;
    b.dynamic = Some(d.clone());

    set_policy(at, 0).await?;
    set_batch(at, MODEL, chosen).await?;
    eprintln!("[batching] fixed batch {chosen}, no target");
    let f = phase(
        at,
        round,
        (plan.window_queries, plan.window_min),
        plan.timeout,
        "fixed",
    )
    .await?;
    b.p99_ratio = (f.p99_ms > 0.0).then(|| d.p99_ms / f.p99_ms);
    b.throughput_ratio = (f.images_per_s > 0.0).then(|| d.images_per_s / f.images_per_s);
    b.fixed = Some(f);
    Ok(())
}

fn phase_line(name: &str, p: &Phase) -> String {
    format!(
        "   {:<22} {:>5} {:>9.2} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>8.1}",
        name,
        p.batch,
        p.images_per_s,
        p.p50_ms,
        p.p99_ms,
        p.max_ms,
        format!("{} in {:.1} s", p.queries, p.window_s),
        p.settle_s
    )
}

/// The row's lines for the table.
pub fn text(b: &Batching) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} up to batch {}, p99 target {} ms (= p99 at batch 1 x sqrt({})); query time = C2 queue + compute",
        b.model,
        b.max_batch,
        b.p99_target_ms
            .map_or_else(|| "-".into(), |v| v.to_string()),
        b.max_batch
    );
    let _ = writeln!(
        t,
        "   {:<22} {:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "phase", "batch", "img/s", "p50 ms", "p99 ms", "max ms", "queries", "start s"
    );
    if let Some(p) = &b.batch1 {
        let _ = writeln!(t, "{}", phase_line("fixed 1 (for target)", p));
    }
    if let Some(p) = &b.dynamic {
        let _ = writeln!(
            t,
            "{}",
            phase_line(&format!("target chose ({} chg)", p.changes), p)
        );
    }
    if let Some(p) = b.dynamic.as_ref().filter(|p| p.path.len() > 1) {
        let seen: Vec<String> = p.path.iter().map(|(n, e)| format!("{e} ({n})")).collect();
        let _ = writeln!(
            t,
            "   effective batch seen under the target (after queries): {}",
            seen.join(", ")
        );
    }
    if let Some(p) = &b.fixed {
        let _ = writeln!(t, "{}", phase_line(&format!("fixed {}", p.batch), p));
    }
    if let (Some(r), Some(q)) = (b.p99_ratio, b.throughput_ratio) {
        let _ = writeln!(
            t,
            "   p99 target-chosen / fixed {r:.3}; img/s target-chosen / fixed {q:.3}"
        );
    }
    if let Some(e) = &b.error {
        let _ = writeln!(t, "   ERROR: {e}");
    }
    t
}
