//! The inference commands of `dml` (C1–C5): `submit-job`, `get-output`,
//! `set-batch-size`, `rates`, `latency`, `placement`, `jobs`, and job
//! control: `cancel`, `job`, `submit-job --wait`. Each is one
//! `ControlRequest::Infer` (or a series) through [`dml_shared::sdfs_client`]
//! (any agent forwards it to the leader).
//!
//! - [`report`]: their tables and JSON.
//! - [`bench`]: `dml bench-model`, a throughput–latency sweep.
//! - [`detail`]: `dml job` and `dml cancel`.
//! - [`wait`]: following a job for `submit-job --wait`.
//! - [`output`]: the JSONL and CSV of `get-output`.

pub mod bench;
pub mod detail;
pub mod output;
pub mod report;
pub mod wait;

use crate::cli::Command;
use crate::sdfs::PartialFailure;
use anyhow::{Context, Result, anyhow, bail};
use dml_shared::ErrorKind;
use dml_shared::infer::{InferRequest, InferResponse, JobState, ModelInfo};
use dml_shared::models::{UnknownModel, validate_model_name};
use dml_shared::sdfs_client::Sdfs;
use dml_tui::error::ClientError;
use std::io::Write;
use std::net::SocketAddr;

/// Whether `command` is one of the commands this module runs.
pub fn handles(command: &Command) -> bool {
    matches!(
        command,
        Command::SubmitJob { .. }
            | Command::GetOutput { .. }
            | Command::SetBatchSize { .. }
            | Command::Rates
            | Command::Latency
            | Command::Placement
            | Command::Jobs
            | Command::Cancel { .. }
            | Command::Job { .. }
            | Command::BenchModel { .. }
    )
}

/// Sends one inference request and returns the leader's answer.
pub async fn ask(sdfs: &Sdfs, req: InferRequest) -> Result<InferResponse> {
    let deadline = std::time::Instant::now() + READ_WAIT;
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match sdfs.infer(req.clone()).await {
            // A read during an election waits for the next leader, up to a bound.
            Err(e)
                if is_read(&req)
                    && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NotLeader)
                    && std::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            r => return Ok(r?),
        }
    }
}

/// Longest a read waits for a control-plane leader (an election takes seconds).
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Requests that change nothing, and so can be retried freely.
fn is_read(req: &InferRequest) -> bool {
    use InferRequest as R;
    match req {
        R::Jobs
        | R::Job { .. }
        | R::Output { .. }
        | R::Models
        | R::Rates
        | R::Latency
        | R::Placement
        | R::QueryTimes { .. } => true,
        R::Submit { .. }
        | R::SetBatchSize { .. }
        | R::SetBatchPolicy { .. }
        | R::Cancel { .. }
        | R::Lease { .. }
        | R::Complete { .. }
        | R::Unready { .. } => false,
    }
}

fn unexpected(r: InferResponse) -> anyhow::Error {
    anyhow!("unexpected answer from the agent: {r:?}")
}

/// The models as the cluster knows them.
pub async fn models(sdfs: &Sdfs) -> Result<Vec<ModelInfo>> {
    match ask(sdfs, InferRequest::Models).await? {
        InferResponse::Models(m) => Ok(m),
        other => Err(unexpected(other)),
    }
}

/// Sets `model`'s largest batch and its dynamic batching (each if given),
/// and reads back what is in force.
async fn set_batch(
    sdfs: &Sdfs,
    model: &str,
    n: Option<u32>,
    delay: Option<std::time::Duration>,
    target: Option<std::time::Duration>,
) -> Result<ModelInfo> {
    if n == Some(0) {
        check_batch_size(model, 0, &[])?;
    }
    let known = models(sdfs).await?;
    if let Some(n) = n {
        check_batch_size(model, n, &known)?;
        let req = InferRequest::SetBatchSize {
            model: model.to_string(),
            size: n,
        };
        done(ask(sdfs, req).await).with_context(|| format!("set the batch size of \"{model}\""))?;
    } else {
        check_batch_size(model, 1, &known)?;
    }
    if delay.is_some() || target.is_some() {
        let ms = |d: std::time::Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let req = InferRequest::SetBatchPolicy {
            model: model.to_string(),
            max_queue_delay_ms: delay.map(ms),
            // A target under a millisecond is none (`off` is zero).
            p99_target_ms: target.map(ms),
        };
        done(ask(sdfs, req).await)
            .with_context(|| format!("set the dynamic batching of \"{model}\""))?;
    }
    models(sdfs)
        .await?
        .into_iter()
        .find(|m| m.name == model)
        .ok_or_else(|| anyhow!("the cluster no longer lists \"{model}\""))
}

/// `Done`, or the error.
fn done(r: Result<InferResponse>) -> Result<()> {
    match r? {
        InferResponse::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Checks a batch size against the model's limit; the error names both.
pub fn check_batch_size(model: &str, n: u32, known: &[ModelInfo]) -> Result<()> {
    let bad = |reason: String| ClientError::BadBatchSize {
        model: model.to_string(),
        size: n,
        reason,
    };
    if n == 0 {
        return Err(bad("a batch size is at least 1".into()).into());
    }
    let Some(m) = known.iter().find(|m| m.name == model) else {
        let unknown = UnknownModel {
            name: model.to_string(),
            known: known.iter().map(|m| m.name.clone()).collect(),
        };
        return Err(dml_shared::Error::from(unknown).into());
    };
    if n > m.max_batch {
        let reason = format!("must be between 1 and {} (its max_batch)", m.max_batch);
        return Err(bad(reason).into());
    }
    Ok(())
}

/// Runs one inference command through `agent` and prints its answer.
pub async fn run(command: &Command, agent: SocketAddr, json: bool) -> Result<()> {
    let sdfs = Sdfs::new(agent);
    let pick = |v: serde_json::Value, text: String| {
        if json { v.to_string() + "\n" } else { text }
    };
    let out = match command {
        Command::SubmitJob {
            model,
            num_images,
            dataset,
            weight,
            wait,
        } => {
            validate_model_name(model)?;
            let req = InferRequest::Submit {
                model: model.clone(),
                count: Some(*num_images),
                dataset: dataset.clone(),
                weight: *weight,
            };
            let (job, images) = match ask(&sdfs, req)
                .await
                .with_context(|| format!("submit {model} over \"{dataset}\""))?
            {
                InferResponse::Submitted { job, images } => (job, images),
                other => return Err(unexpected(other)),
            };
            if *wait {
                if !json {
                    print!("{}", report::submitted_text(job, model, images, dataset));
                }
                return wait::follow(&sdfs, job, images, json).await;
            }
            pick(
                report::submitted_json(job, model, images, dataset),
                report::submitted_text(job, model, images, dataset),
            )
        }
        Command::GetOutput { job, file, format } => {
            return get_output(&sdfs, *job, file.as_deref(), *format, json).await;
        }
        Command::SetBatchSize {
            model,
            n,
            max_queue_delay,
            p99_target,
        } => {
            let m = set_batch(&sdfs, model, *n, *max_queue_delay, *p99_target).await?;
            pick(report::batching_json(&m), report::batching_text(&m))
        }
        Command::Rates => match ask(&sdfs, InferRequest::Rates).await? {
            InferResponse::Rates(r) => pick(report::rates_json(&r), report::rates_table(&r)),
            other => return Err(unexpected(other)),
        },
        Command::Latency => match ask(&sdfs, InferRequest::Latency).await? {
            InferResponse::Latency(l) => pick(report::latency_json(&l), report::latency_table(&l)),
            other => return Err(unexpected(other)),
        },
        Command::Placement => match ask(&sdfs, InferRequest::Placement).await? {
            InferResponse::Placement(p) => {
                pick(report::placement_json(&p), report::placement_table(&p))
            }
            other => return Err(unexpected(other)),
        },
        Command::Jobs => match ask(&sdfs, InferRequest::Jobs).await? {
            InferResponse::Jobs(j) => pick(report::jobs_json(&j), report::jobs_table(&j)),
            other => return Err(unexpected(other)),
        },
        Command::Cancel { job } => {
            let released = match ask(&sdfs, InferRequest::Cancel { job: *job })
                .await
                .with_context(|| format!("cancel job {job}"))?
            {
                InferResponse::Cancelled { released, .. } => released,
                other => return Err(unexpected(other)),
            };
            // The job as it now stands, for the report; the cancel stands without it.
            let info = match ask(&sdfs, InferRequest::Job { job: *job }).await {
                Ok(InferResponse::Job(d)) => Some(d.info),
                _ => None,
            };
            pick(
                detail::cancelled_json(*job, released, info.as_ref()),
                detail::cancelled_text(*job, released, info.as_ref()),
            )
        }
        Command::Job { job } => match ask(&sdfs, InferRequest::Job { job: *job })
            .await
            .with_context(|| format!("job {job}"))?
        {
            InferResponse::Job(d) => pick(detail::detail_json(&d), detail::detail_text(&d)),
            other => return Err(unexpected(other)),
        },
        Command::BenchModel {
            model,
            batch_sizes,
            concurrency,
            images,
            duration,
            dataset,
            warmup,
            chart,
            title,
        } => {
            let plan = bench::Plan {
                model: model.clone(),
                dataset: dataset.clone(),
                batch_sizes: batch_sizes.clone(),
                concurrency: concurrency.clone(),
                amount: match (images, duration) {
                    (_, Some(d)) => bench::Amount::Duration(*d),
                    (n, None) => bench::Amount::Images(n.unwrap_or(bench::DEFAULT_IMAGES)),
                },
                warmup: *warmup,
                chart: chart.clone().unwrap_or_else(|| bench::default_chart(model)),
                title: title.clone(),
            };
            return bench::run(&sdfs, &plan, json).await;
        }
        other => bail!("{other:?} is not an inference command"),
    };
    print!("{out}");
    Ok(())
}

/// `dml get-output`: the results to FILE (or stdout), a note on stderr while
/// the job runs, and a failure exit if the job failed.
async fn get_output(
    sdfs: &Sdfs,
    job: u64,
    file: Option<&std::path::Path>,
    format: Option<crate::cli::OutputFormat>,
    json: bool,
) -> Result<()> {
    let (info, mut results) = match ask(sdfs, InferRequest::Output { job })
        .await
        .with_context(|| format!("output of job {job}"))?
    {
        InferResponse::Output { job, results } => (job, results),
        other => return Err(unexpected(other)),
    };
    results.sort_by_key(|r| r.index);
    let format = output::pick_format(format, file);
    let text = output::render(format, &results);
    match file {
        Some(path) => {
            write_file(path, text.as_bytes())
                .map_err(|e| ClientError::io("write", path, e))
                .with_context(|| format!("output of job {job}"))?;
            let errors = results
                .iter()
                .filter(|r| matches!(r.outcome, dml_shared::infer::Outcome::Error(_)))
                .count();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "job": job,
                        "path": path,
                        "results": results.len(),
                        "errors": errors,
                        "images": info.images,
                        "state": info.state.as_str(),
                    })
                );
            } else {
                println!(
                    "wrote {} results of job {job} ({errors} errors) to {}",
                    results.len(),
                    path.display()
                );
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("write to stdout")?;
        }
    }
    match info.state {
        JobState::Done => Ok(()),
        JobState::Running => {
            eprintln!(
                "job {job} is still running: {} of {} images done; these are the results so far",
                info.done, info.images
            );
            Ok(())
        }
        JobState::Failed | JobState::Cancelled => {
            Err(PartialFailure(wait::ended(&info).unwrap_or_default()).into())
        }
    }
}

/// Writes `bytes` to a temp file next to `path`, then renames it into place.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, max: u32) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            batch_size: 4,
            max_batch: max,
            file: format!("models/{name}.onnx"),
            version: None,
            max_queue_delay_ms: 0,
            p99_target_ms: None,
            effective_batch: 4,
        }
    }

    #[test]
    fn batch_size_is_checked_against_the_models_limit() {
        let known = [info("tiny", 64), info("resnet50", 32)];
        assert!(check_batch_size("tiny", 64, &known).is_ok());
        let e = check_batch_size("resnet50", 33, &known)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("33") && e.contains("32") && e.contains("max_batch"),
            "{e}"
        );
        let e = check_batch_size("tiny", 0, &known).unwrap_err();
        let kind = e.downcast_ref::<ClientError>().map(ClientError::kind);
        assert_eq!(kind, Some(dml_shared::ErrorKind::Invalid), "{e}");
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = check_batch_size("vgg", 2, &known).unwrap_err();
        let kind = e.downcast_ref::<dml_shared::Error>().map(|e| e.kind());
        assert_eq!(kind, Some(dml_shared::ErrorKind::NotFound), "{e}");
        let e = e.to_string();
        assert!(e.contains("\"vgg\"") && e.contains("tiny, resnet50"), "{e}");
    }

    #[test]
    fn output_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("dml-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("o.jsonl");
        std::fs::write(&p, "old old old old\n").unwrap();
        write_file(&p, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
