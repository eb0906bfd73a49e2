//! Inference requests served by the leader: job submission, C1–C5 and the
//! worker protocol (leases and completions), on the request path. Job
//! progress goes through Raft (`jobs.rs`); leases and figures live in the
//! scheduler the leader task owns (`task.rs`, `core.rs`).

use super::Inner;
use super::core::batch_size;
use super::error::{ControlError, Refusal};
use super::task::{LeaderHandle, Request};
use super::types::{Applied, Op};
use crate::timing::MAX_LEASE_WAIT;
use dml_shared::infer::{ImageResult, InferRequest, InferResponse, JobId, Lease, ModelInfo};
use dml_shared::sdfs::{MetaResponse, validate_name};
use std::net::SocketAddr;
use std::time::Duration;

/// Numbers the scratch files of output reads.
static OUTPUT_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest job, in images.
pub const MAX_JOB_IMAGES: u32 = 1_000_000;
/// Distinct workers that must fail to load a model before its job fails
/// (fewer if fewer workers are alive).
const REFUSALS_TO_FAIL: usize = 2;

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal::Failed(ControlError::BadRequest(msg.into()))
}

fn rejected(a: Applied) -> Result<Applied, Refusal> {
    match a {
        Applied::Rejected(m) => Err(Refusal::Failed(ControlError::Rejected(m))),
        other => Ok(other),
    }
}

impl Inner {
    pub(crate) async fn serve_infer(
        &self,
        task: &LeaderHandle,
        req: InferRequest,
    ) -> Result<MetaResponse, Refusal> {
        let r = match req {
            InferRequest::Submit {
                model,
                count,
                dataset,
            } => self.submit(task, model, count, dataset).await?,
            InferRequest::Jobs => {
                self.linearize().await?;
                InferResponse::Jobs(
                    self.read(|s| s.jobs.jobs.iter().map(|(id, j)| j.info(*id)).collect())?,
                )
            }
            InferRequest::Output { job } => {
                self.linearize().await?;
                let found =
                    self.read(|s| s.jobs.jobs.get(&job).map(|j| (j.info(job), j.results())))?;
                let (info, results) = found.ok_or(Refusal::Failed(ControlError::NoSuchJob(job)))?;
                let results = match &info.output {
                    Some(name) if results.is_empty() && info.done > 0 => {
                        self.stored_output(name).await.map_err(|e| {
                            Refusal::Failed(ControlError::Raft(format!(
                                "job {job}'s output {name}: {e}"
                            )))
                        })?
                    }
                    _ => results,
                };
                InferResponse::Output { job: info, results }
            }
            InferRequest::SetBatchSize { model, size } => {
                let spec = self.s.registry.require(&model).map_err(bad)?;
                if size == 0 || size > spec.max_batch {
                    return Err(bad(format!(
                        "batch size {size} for \"{model}\" must be between 1 and {}",
                        spec.max_batch
                    )));
                }
                rejected(self.propose(Op::SetBatchSize { model, size }).await?)?;
                InferResponse::Done
            }
            InferRequest::Models => {
                self.linearize().await?;
                let models = self.read(|s| {
                    self.s
                        .registry
                        .models
                        .iter()
                        .map(|m| ModelInfo {
                            name: m.name.clone(),
                            batch_size: batch_size(&self.s.registry, s, &m.name),
                            max_batch: m.max_batch,
                            file: m.sdfs_name(),
                            version: s
                                .stat(&m.sdfs_name())
                                .and_then(|f| f.versions.last().map(|v| v.version)),
                        })
                        .collect()
                })?;
                InferResponse::Models(models)
            }
            InferRequest::Rates => {
                self.linearize().await?;
                InferResponse::Rates(task.ask(Request::Rates).await?)
            }
            InferRequest::Latency => {
                self.linearize().await?;
                InferResponse::Latency(task.ask(Request::Latency).await?)
            }
            InferRequest::Placement => {
                self.linearize().await?;
                InferResponse::Placement(task.ask(Request::Placement).await?)
            }
            InferRequest::Lease { worker, wait_ms } => {
                let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_LEASE_WAIT);
                InferResponse::Lease(self.lease(task, worker, wait).await?)
            }
            InferRequest::Complete {
                worker,
                query,
                job,
                results,
                elapsed_ms,
                failed,
            } => {
                let elapsed = Duration::from_millis(u64::from(elapsed_ms));
                self.complete(task, worker, query, job, results, elapsed, failed)
                    .await?
            }
        };
        Ok(MetaResponse::Infer(r))
    }

    async fn submit(
        &self,
        task: &LeaderHandle,
        model: String,
        count: Option<u32>,
        dataset: String,
    ) -> Result<InferResponse, Refusal> {
        let spec = self.s.registry.require(&model).map_err(bad)?;
        let trimmed = dataset.trim_end_matches('/');
        validate_name(trimmed).map_err(|e| bad(format!("dataset prefix: {e}")))?;
        if count == Some(0) {
            return Err(bad("the number of images must be at least 1"));
        }
        if count.is_some_and(|c| c > MAX_JOB_IMAGES) {
            return Err(bad(format!("a job has at most {MAX_JOB_IMAGES} images")));
        }
        self.linearize().await?;
        let prefix = format!("{trimmed}/");
        let model_file = spec.sdfs_name();
        let (names, has_model) = self.read(|s| {
            let names: Vec<String> = s
                .list(&format!("{prefix}*"))
                .into_iter()
                .map(|f| f.name)
                .filter(|n| n.starts_with(&prefix))
                .collect();
            (names, s.stat(&model_file).is_some())
        })?;
        if !has_model {
            return Err(bad(format!(
                "the model file {model_file} is not in SDFS; upload it with `dml models upload --models {model}`"
            )));
        }
        if names.is_empty() {
            return Err(bad(format!(
                "there are no files under the SDFS prefix \"{prefix}\"; load images with `dml sdfs load <dir> {prefix}`"
            )));
        }
        let mut images = names;
        images.truncate(MAX_JOB_IMAGES as usize);
        let n = count.unwrap_or(images.len() as u32);
        let applied = self
            .propose(Op::SubmitJob {
                model: model.clone(),
                dataset: prefix,
                images,
                count: n,
            })
            .await?;
        match rejected(applied)? {
            Applied::Job(job) => {
                tracing::info!(job, %model, images = n, "job submitted");
                task.tell(Request::JobsChanged).await?;
                Ok(InferResponse::Submitted { job, images: n })
            }
            other => Err(Refusal::Failed(ControlError::Raft(format!(
                "unexpected result {other:?} from the state machine"
            )))),
        }
    }

    /// The next query for `worker`, waiting up to `wait` for one.
    async fn lease(
        &self,
        task: &LeaderHandle,
        worker: SocketAddr,
        wait: Duration,
    ) -> Result<Option<Lease>, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut work = task.work();
        loop {
            // Mark the signal seen before looking, so work that appears in
            // between wakes us.
            work.borrow_and_update();
            let picked = task
                .ask(|reply| Request::Dispatch { worker, reply })
                .await?;
            if let Some(picked) = picked {
                let lease = picked.lease;
                if !picked.gone.is_empty() {
                    let op = Op::CompleteQuery {
                        job: lease.job,
                        results: picked.gone,
                    };
                    rejected(self.propose(op).await?)?;
                }
                if lease.images.is_empty() {
                    // Nothing left to run: end the lease now rather than
                    // let it expire and put those images back to pending.
                    task.tell(Request::Completed {
                        query: lease.query,
                        job: lease.job,
                        images: Vec::new(),
                        new: 0,
                        elapsed: Duration::ZERO,
                    })
                    .await?;
                    continue;
                }
                return Ok(Some(lease));
            }
            match tokio::time::timeout_at(deadline, work.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the task ended (the next ask says so).
                Err(_) => return Ok(None),
                Ok(Err(_)) => {
                    let hint = self.raft_leader().filter(|l| *l != self.s.me);
                    return Err(Refusal::NotLeader(hint));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        task: &LeaderHandle,
        worker: SocketAddr,
        query: u64,
        job: JobId,
        results: Vec<ImageResult>,
        elapsed: Duration,
        failed: Option<String>,
    ) -> Result<InferResponse, Refusal> {
        if let Some(reason) = failed {
            let refused = task
                .ask(|reply| Request::Refuse {
                    query,
                    worker,
                    reply,
                })
                .await?;
            tracing::warn!(job, %worker, %reason, "a worker cannot run the job's model");
            let (_, alive) = self.live_view().await;
            let needed = REFUSALS_TO_FAIL.min(alive.len().max(1));
            if refused.is_some_and(|(_, n)| n >= needed) {
                let reason = format!("{worker}: {reason}");
                rejected(self.propose(Op::FailJob { job, reason }).await?)?;
            }
            return Ok(InferResponse::Accepted { new: 0 });
        }
        let indices: Vec<u32> = results.iter().map(|r| r.index).collect();
        let model = self
            .read(|s| s.jobs.jobs.get(&job).map(|j| j.model.clone()))?
            .ok_or(Refusal::Failed(ControlError::NoSuchJob(job)))?;
        let applied = self.propose(Op::CompleteQuery { job, results }).await?;
        let (new, finished) = match rejected(applied)? {
            Applied::Accepted { new, finished } => (new, finished),
            other => {
                return Err(Refusal::Failed(ControlError::Raft(format!(
                    "unexpected result {other:?} from the state machine"
                ))));
            }
        };
        // A task that ended takes its scheduler along: nothing to update.
        let _ = task
            .tell(Request::Completed {
                query,
                job,
                images: indices,
                new,
                elapsed,
            })
            .await;
        if finished {
            tracing::info!(job, %model, "job finished");
        }
        Ok(InferResponse::Accepted { new })
    }

    /// Reads a finished job's output back from SDFS.
    async fn stored_output(&self, name: &str) -> Result<Vec<ImageResult>, String> {
        let dir = self.s.data_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!(
            "read-{}-{}",
            std::process::id(),
            OUTPUT_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let sdfs = dml_shared::sdfs_client::Sdfs::new(self.s.me);
        let got = sdfs
            .get(name, &path, &dml_shared::sdfs_client::no_progress)
            .await
            .map_err(|e| e.to_string());
        let text = got.and_then(|_| std::fs::read_to_string(&path).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        text?
            .lines()
            .enumerate()
            .map(|(n, l)| {
                dml_shared::infer::parse_jsonl_line(l).map_err(|e| format!("line {}: {e}", n + 1))
            })
            .collect()
    }

    /// Writes a finished job's results to SDFS as `jobs/<id>/output.jsonl`
    /// and records the name in the job.
    pub(crate) async fn store_output(&self, job: JobId) -> Result<(), String> {
        let results = self
            .read(|s| s.jobs.jobs.get(&job).map(|j| j.results()))
            .map_err(|_| "not a voter".to_string())?
            .ok_or_else(|| format!("there is no job {job}"))?;
        let mut text = String::new();
        for r in &results {
            text.push_str(&dml_shared::infer::jsonl_line(r));
            text.push('\n');
        }
        let name = format!("jobs/{job}/output.jsonl");
        let dir = self.s.data_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("job-{job}-output.jsonl"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let sdfs = dml_shared::sdfs_client::Sdfs::new(self.s.me);
        let put = sdfs
            .put(&path, &name, &dml_shared::sdfs_client::no_progress)
            .await;
        let _ = std::fs::remove_file(&path);
        put.map_err(|e| e.to_string())?;
        match self
            .propose(Op::SetJobOutput {
                job,
                name: name.clone(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Refusal::NotLeader(_)) => Err("no longer the leader".into()),
            Err(Refusal::Failed(e)) => Err(e.to_string()),
        }
    }
}
