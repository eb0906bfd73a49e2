//! `dml bench-model MODEL`: a throughput–latency sweep against the live
//! cluster, as Triton's `perf_analyzer` does. For each batch size and number
//! of concurrent jobs it sets the batch size (`set-batch-size`'s request),
//! submits real jobs (`submit-job`'s request), waits for them, and reads
//! their figures from the leader: throughput from the jobs' own submit and
//! finish times, latency from each query's C2 times
//! (`InferRequest::QueryTimes`, see [`stats`]). The model's batch size is
//! put back at the end, after an error, and on Ctrl-C (which also cancels
//! the sweep's running jobs).
//!
//! - [`stats`]: one setting's figures (pure).
//! - [`table`]: the table and JSON.
//! - [`chart`]: the SVG chart.

pub mod chart;
pub mod stats;
pub mod table;

use super::{ask, check_batch_size, models, unexpected};
use anyhow::{Context, Result, bail};
use dml_shared::infer::{InferRequest, InferResponse, JobId, JobInfo, JobState, QueryTiming};
use dml_shared::models::validate_model_name;
use dml_shared::sdfs_client::Sdfs;
use dml_tui::error::ClientError;
use stats::{Row, Setting};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often running jobs are asked about.
const POLL: Duration = Duration::from_millis(200);
/// Images per setting when neither `--images` nor `--duration` is given.
pub const DEFAULT_IMAGES: u32 = 64;
/// How long a job of the sweep may stay stalled (no worker can run it, as the
/// leader says) before the sweep gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Under `--duration`, each job of a setting is this many batches.
const JOB_BATCHES: u32 = 8;

/// How much work each setting does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// This many images, split evenly over the setting's concurrent jobs.
    Images(u32),
    /// Each of the concurrent jobs is followed by another until this has
    /// passed (jobs of [`JOB_BATCHES`] batches); the last ones run to their end.
    Duration(Duration),
}

/// A sweep as the command line asked for it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub model: String,
    pub dataset: String,
    pub batch_sizes: Vec<u32>,
    pub concurrency: Vec<u32>,
    pub amount: Amount,
    /// Images of an unmeasured first job, so workers load the model first.
    pub warmup: u32,
    pub chart: PathBuf,
    /// Tells where and on what the sweep ran, for the chart's title.
    pub title: Option<String>,
}

impl Plan {
    /// The settings in sweep order: each batch size at each concurrency.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        for &concurrency in &self.concurrency {
            for &batch in &self.batch_sizes {
                out.push(Setting { batch, concurrency });
            }
        }
        out
    }

    /// Checks what the cluster need not be asked about.
    pub fn validate(&self) -> Result<(), ClientError> {
        validate_model_name(&self.model)
            .map_err(|e| ClientError::bad_value("model", &self.model, e.to_string()))?;
        if self.batch_sizes.is_empty() || self.concurrency.is_empty() {
            return Err(ClientError::bad_value(
                "--batch-sizes/--concurrency",
                "",
                "each needs at least one value",
            ));
        }
        if let Some(c) = self.concurrency.iter().find(|c| **c == 0) {
            return Err(ClientError::bad_value("--concurrency", c, "at least 1 job"));
        }
        match self.amount {
            Amount::Images(n) => {
                let most = self.concurrency.iter().max().copied().unwrap_or(1);
                if n < most {
                    return Err(ClientError::bad_value(
                        "--images",
                        n,
                        format!("at least one image for each of {most} concurrent jobs"),
                    ));
                }
            }
            Amount::Duration(d) if d.is_zero() => {
                return Err(ClientError::bad_value(
                    "--duration",
                    "0s",
                    "must be positive",
                ));
            }
            Amount::Duration(_) => {}
        }
        Ok(())
    }
}

/// The chart's default place: `target/bench/bench-model-MODEL.svg` under the
/// current directory.
pub fn default_chart(model: &str) -> PathBuf {
    Path::new("target")
        .join("bench")
        .join(format!("bench-model-{model}.svg"))
}

/// Why the sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
    #[error("job {job} of the sweep made no progress for {}s: {reason}", STALL_LIMIT.as_secs())]
    Stalled { job: JobId, reason: String },
    #[error("job {job} of the sweep ended {state}: {reason}")]
    JobEnded {
        job: JobId,
        state: &'static str,
        reason: String,
    },
}

/// Runs `plan` through `sdfs`, prints the table (or JSON) and writes the chart.
pub async fn run(sdfs: &Sdfs, plan: &Plan, json: bool) -> Result<()> {
    plan.validate()?;
    let known = models(sdfs).await?;
    for b in &plan.batch_sizes {
        check_batch_size(&plan.model, *b, &known)?;
    }
    let original = known
        .iter()
        .find(|m| m.name == plan.model)
        .map(|m| m.batch_size)
        .context("the model vanished from the cluster's list")?;
    let mut running = Running::default();
    let swept = tokio::select! {
        r = sweep(sdfs, plan, &mut running) => r,
        _ = tokio::signal::ctrl_c() => Err(Stopped::Interrupted.into()),
    };
    // Put things back whatever happened: the sweep's jobs, then the batch size.
    for job in running.ids {
        if let Err(e) = ask(sdfs, InferRequest::Cancel { job }).await {
            eprintln!("warning: could not cancel job {job} of the sweep: {e:#}");
        }
    }
    let restored = set_batch(sdfs, &plan.model, original)
        .await
        .with_context(|| format!("restore the batch size of \"{}\" to {original}", plan.model));
    let rows = swept?;
    restored?;
    let title = plan.title.clone().unwrap_or_else(|| {
        format!(
            "{}: query time against throughput by batch size",
            plan.model
        )
    });
    let svg = chart::svg(&plan.model, &title, &rows)?;
    if let Some(dir) = plan.chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
    }
    super::write_file(&plan.chart, svg.as_bytes())
        .map_err(|e| ClientError::io("write", &plan.chart, e))?;
    if json {
        println!(
            "{}",
            table::json(&plan.model, &rows, original, Some(&plan.chart))
        );
    } else {
        print!("{}", table::text(&plan.model, &rows));
        println!(
            "batch size of {} restored to {original}; chart written to {}",
            plan.model,
            plan.chart.display()
        );
    }
    Ok(())
}

async fn set_batch(sdfs: &Sdfs, model: &str, size: u32) -> Result<()> {
    let req = InferRequest::SetBatchSize {
        model: model.to_string(),
        size,
    };
    match ask(sdfs, req).await? {
        InferResponse::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The sweep's jobs not yet seen to end, and since when each has been stalled.
#[derive(Debug, Default)]
struct Running {
    ids: Vec<JobId>,
    stalled: HashMap<JobId, Instant>,
}

impl Running {
    fn push(&mut self, job: JobId) {
        self.ids.push(job);
    }

    fn contains(&self, job: &JobId) -> bool {
        self.ids.contains(job)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn remove(&mut self, job: JobId) {
        self.ids.retain(|id| *id != job);
        self.stalled.remove(&job);
    }

    /// Notes whether `j` is stalled; an error once it has been for [`STALL_LIMIT`].
    fn stalled(&mut self, j: &JobInfo, now: Instant) -> Result<(), Stopped> {
        let Some(reason) = &j.stalled else {
            self.stalled.remove(&j.id);
            return Ok(());
        };
        let since = *self.stalled.entry(j.id).or_insert(now);
        if now.duration_since(since) >= STALL_LIMIT {
            return Err(Stopped::Stalled {
                job: j.id,
                reason: reason.clone(),
            });
        }
        Ok(())
    }
}

/// The whole sweep; `running` holds the jobs not yet seen to end.
async fn sweep(sdfs: &Sdfs, plan: &Plan, running: &mut Running) -> Result<Vec<Row>> {
    let settings = plan.settings();
    if plan.warmup > 0 {
        let batch = settings[0].batch;
        note(format!("warm-up: {} images at batch {batch}", plan.warmup));
        set_batch(sdfs, &plan.model, batch).await?;
        let job = submit(sdfs, plan, plan.warmup, running).await?;
        wait_ended(sdfs, &[job], running).await?;
    }
    let mut rows = Vec::new();
    for s in settings {
        set_batch(sdfs, &plan.model, s.batch).await?;
        let (jobs, times) = one_setting(sdfs, plan, s, running).await?;
        let row = Row::measure(s, &jobs, &times);
        note(format!(
            "batch {} x {} job(s): {} images in {:.1}s, {:.2} images/s, p99 {:.0} ms",
            s.batch, s.concurrency, row.images, row.seconds, row.images_per_s, row.latency.p99_ms
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Progress goes to stderr, so stdout holds the table or the JSON alone.
fn note(line: String) {
    eprintln!("{line}");
}

/// Runs one setting to its end: its finished jobs and their queries' times.
async fn one_setting(
    sdfs: &Sdfs,
    plan: &Plan,
    s: Setting,
    running: &mut Running,
) -> Result<(Vec<JobInfo>, Vec<QueryTiming>)> {
    let mut ids = Vec::new();
    match plan.amount {
        Amount::Images(n) => {
            for k in 0..s.concurrency {
                let share = n / s.concurrency + u32::from(k < n % s.concurrency);
                ids.push(submit(sdfs, plan, share, running).await?);
            }
            wait_ended(sdfs, &ids, running).await?;
        }
        Amount::Duration(d) => {
            let until = Instant::now() + d;
            let size = s.batch * JOB_BATCHES;
            for _ in 0..s.concurrency {
                ids.push(submit(sdfs, plan, size, running).await?);
            }
            // Each job that ends is followed by another until the time is up.
            while Instant::now() < until {
                let before = running.len();
                poll_ended(sdfs, running).await?;
                for _ in running.len()..before {
                    if Instant::now() < until {
                        ids.push(submit(sdfs, plan, size, running).await?);
                    }
                }
                tokio::time::sleep(POLL).await;
            }
            let last = running.ids.clone();
            wait_ended(sdfs, &last, running).await?;
        }
    }
    let infos = jobs(sdfs).await?;
    let mut done = Vec::new();
    let mut times = Vec::new();
    for id in ids {
        let info = infos
            .iter()
            .find(|j| j.id == id)
            .with_context(|| format!("job {id} is no longer listed"))?;
        done.push(info.clone());
        times.extend(query_times(sdfs, id).await?);
    }
    Ok((done, times))
}

async fn submit(sdfs: &Sdfs, plan: &Plan, count: u32, running: &mut Running) -> Result<JobId> {
    let req = InferRequest::Submit {
        model: plan.model.clone(),
        count: Some(count),
        dataset: plan.dataset.clone(),
        weight: 1,
    };
    match ask(sdfs, req)
        .await
        .with_context(|| format!("submit {} over \"{}\"", plan.model, plan.dataset))?
    {
        InferResponse::Submitted { job, .. } => {
            running.push(job);
            Ok(job)
        }
        other => Err(unexpected(other)),
    }
}

async fn jobs(sdfs: &Sdfs) -> Result<Vec<JobInfo>> {
    match ask(sdfs, InferRequest::Jobs).await? {
        InferResponse::Jobs(j) => Ok(j),
        other => Err(unexpected(other)),
    }
}

async fn query_times(sdfs: &Sdfs, job: JobId) -> Result<Vec<QueryTiming>> {
    match ask(sdfs, InferRequest::QueryTimes { job }).await? {
        InferResponse::QueryTimes { queries, .. } => Ok(queries),
        other => Err(unexpected(other)),
    }
}

/// Drops the jobs of `running` that have ended; an end other than done stops the sweep.
async fn poll_ended(sdfs: &Sdfs, running: &mut Running) -> Result<()> {
    let infos = jobs(sdfs).await?;
    for j in &infos {
        if running.contains(&j.id) {
            running.stalled(j, Instant::now())?;
        }
    }
    let ended: Vec<&JobInfo> = infos
        .iter()
        .filter(|j| j.state != JobState::Running && running.contains(&j.id))
        .collect();
    for j in ended {
        running.remove(j.id);
        if j.state != JobState::Done {
            bail!(Stopped::JobEnded {
                job: j.id,
                state: j.state.as_str(),
                reason: j.reason.clone().unwrap_or_else(|| "no reason given".into()),
            });
        }
    }
    Ok(())
}

/// Waits until none of `ids` is running.
async fn wait_ended(sdfs: &Sdfs, ids: &[JobId], running: &mut Running) -> Result<()> {
    loop {
        poll_ended(sdfs, running).await?;
        if !ids.iter().any(|id| running.contains(id)) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(amount: Amount, concurrency: Vec<u32>) -> Plan {
        Plan {
            model: "tiny".into(),
            dataset: "datasets/sample/".into(),
            batch_sizes: vec![1, 4],
            concurrency,
            amount,
            warmup: 0,
            chart: default_chart("tiny"),
            title: None,
        }
    }

    #[test]
    fn settings_sweep_batch_sizes_at_each_concurrency() {
        let p = plan(Amount::Images(8), vec![1, 2]);
        let s: Vec<(u32, u32)> = p
            .settings()
            .iter()
            .map(|s| (s.batch, s.concurrency))
            .collect();
        assert_eq!(s, [(1, 1), (4, 1), (1, 2), (4, 2)]);
        assert_eq!(p.chart, Path::new("target/bench/bench-model-tiny.svg"));
        assert!(p.validate().is_ok());
    }

    #[test]
    fn a_job_stalled_past_the_limit_stops_the_sweep() {
        let mut r = Running::default();
        r.push(3);
        let t = Instant::now();
        let mut j = JobInfo {
            id: 3,
            model: "tiny".into(),
            dataset: "d/".into(),
            images: 4,
            done: 0,
            errors: 0,
            queries: 0,
            state: JobState::Running,
            reason: None,
            submitted_ms: 0,
            finished_ms: None,
            output: None,
            stalled: Some("ONNX Runtime is not loaded on 3 of 3 workers".into()),
        };
        assert!(r.stalled(&j, t).is_ok());
        assert!(r.stalled(&j, t + STALL_LIMIT / 2).is_ok());
        let e = r.stalled(&j, t + STALL_LIMIT).unwrap_err().to_string();
        assert!(e.contains("job 3") && e.contains("ONNX Runtime"), "{e}");
        // Progress again starts the clock afresh.
        j.stalled = None;
        assert!(r.stalled(&j, t + STALL_LIMIT).is_ok());
        j.stalled = Some("x".into());
        assert!(r.stalled(&j, t + STALL_LIMIT * 2 - STALL_LIMIT / 4).is_ok());
        r.remove(3);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn bad_sweeps_are_refused_naming_the_option() {
        let e = plan(Amount::Images(3), vec![1, 4]).validate().unwrap_err();
        assert!(
            e.to_string().contains("--images \"3\"") && e.to_string().contains("4 concurrent"),
            "{e}"
        );
        let e = plan(Amount::Images(8), vec![0]).validate().unwrap_err();
        assert!(e.to_string().contains("--concurrency"), "{e}");
        let e = plan(Amount::Duration(Duration::ZERO), vec![1])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--duration"), "{e}");
        assert_eq!(e.kind(), dml_shared::ErrorKind::Invalid);
    }
}
