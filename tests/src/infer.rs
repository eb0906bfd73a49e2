//! Inference on a real cluster: uploading the tiny model, loading a sample
//! dataset, and asking the leader about jobs over the agent API (the tests'
//! ground truth; the `dml` commands are tested on their own).

use crate::sdfs::SdfsCluster;
use crate::wait::wait_for;
use anyhow::{Context, Result, bail};
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::infer::{ImageResult, InferRequest, InferResponse, JobId, JobInfo, JobState};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How often job progress is polled.
pub const JOB_POLL: Duration = Duration::from_millis(200);

/// The committed tiny model (input 64x64, 1000 classes).
pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models/tiny.onnx")
}

/// One inference request through `addr` (followers forward to the leader).
pub async fn infer(addr: SocketAddr, req: InferRequest) -> Result<InferResponse> {
    match crate::sdfs::api::control(addr, ControlRequest::Infer(req.clone())).await? {
        ControlResponse::Infer(r) => Ok(r),
        other => bail!("{addr} answered {req:?} with {other:?}"),
    }
}

/// The sample images of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Images {
    /// `dml dataset make`: JPEG and PNG, 96 to 640 pixels a side.
    Sample(usize),
    /// Small PNGs (80x72), cheap to decode: for tests that need many queries a second.
    Small(usize),
}

/// Writes `n` small seeded PNGs into `dir`.
pub fn small_images(dir: &std::path::Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for k in 0..n {
        let img = image::RgbImage::from_fn(80, 72, |x, y| {
            let v = (x * 3 + y * 5 + k as u32 * 37) % 256;
            image::Rgb([v as u8, (255 - v) as u8, ((x ^ y) * 4 % 256) as u8])
        });
        img.save(dir.join(format!("s{k:04}.png")))?;
    }
    Ok(())
}

/// Uploads the tiny model as `models/<name>.onnx` and a seeded dataset under
/// `prefix`, through agent `via`.
pub async fn prepare(
    c: &SdfsCluster,
    via: usize,
    models: &[&str],
    prefix: &str,
    images: Images,
) -> Result<()> {
    let model = tiny_model();
    let model = model.to_str().context("model path")?;
    for m in models {
        let name = format!("models/{m}.onnx");
        c.dml(via, &["put", model, &name]).await?.ensure_success()?;
    }
    let dir = c.local_path("dataset");
    let dir_s = dir.to_str().context("dataset path")?;
    match images {
        Images::Sample(n) => {
            let n = n.to_string();
            c.dml(
                via,
                &["dataset", "make", dir_s, "--count", &n, "--seed", "7"],
            )
            .await?
            .ensure_success()?;
        }
        Images::Small(n) => small_images(&dir, n)?,
    }
    c.dml(via, &["sdfs", "load", dir_s, prefix])
        .await?
        .ensure_success()?;
    Ok(())
}

pub async fn submit(addr: SocketAddr, model: &str, count: u32, dataset: &str) -> Result<JobId> {
    match infer(
        addr,
        InferRequest::Submit {
            model: model.into(),
            count: Some(count),
            dataset: dataset.into(),
            weight: 1,
        },
    )
    .await?
    {
        InferResponse::Submitted { job, .. } => Ok(job),
        other => bail!("submit answered {other:?}"),
    }
}

pub async fn set_batch(addr: SocketAddr, model: &str, size: u32) -> Result<()> {
    match infer(
        addr,
        InferRequest::SetBatchSize {
            model: model.into(),
            size,
        },
    )
    .await?
    {
        InferResponse::Done => Ok(()),
        other => bail!("set-batch-size answered {other:?}"),
    }
}

pub async fn jobs(addr: SocketAddr) -> Result<BTreeMap<JobId, JobInfo>> {
    match infer(addr, InferRequest::Jobs).await? {
        InferResponse::Jobs(j) => Ok(j.into_iter().map(|j| (j.id, j)).collect()),
        other => bail!("jobs answered {other:?}"),
    }
}

pub async fn job(addr: SocketAddr, id: JobId) -> Result<JobInfo> {
    jobs(addr)
        .await?
        .remove(&id)
        .with_context(|| format!("job {id} is not listed"))
}

/// Polls through each of `via` in turn (one may be dead) until `f` holds
/// for the job, or `timeout` passes.
pub async fn wait_job(
    via: &[SocketAddr],
    id: JobId,
    timeout: Duration,
    what: &str,
    f: impl Fn(&JobInfo) -> bool,
) -> Result<JobInfo> {
    wait_for(what, timeout, JOB_POLL, async || {
        let mut last = None;
        for a in via {
            match job(*a, id).await {
                Ok(j) if f(&j) => return Ok(j),
                Ok(j) => {
                    last = Some(format!("job {id}: {}/{} {:?}", j.done, j.images, j.state));
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        bail!("{}", last.unwrap_or_default())
    })
    .await
}

pub async fn output(addr: SocketAddr, id: JobId) -> Result<(JobInfo, Vec<ImageResult>)> {
    match infer(addr, InferRequest::Output { job: id }).await? {
        InferResponse::Output { job, results } => Ok((job, results)),
        other => bail!("get-output answered {other:?}"),
    }
}

/// Checks that a finished job has exactly one result per image index.
pub fn exactly_once(job: &JobInfo, results: &[ImageResult]) -> Result<()> {
    if job.state != JobState::Done {
        bail!("job {} is {:?}, not done", job.id, job.state);
    }
    let mut seen = vec![0u32; job.images as usize];
    for r in results {
        let slot = seen
            .get_mut(r.index as usize)
            .with_context(|| format!("result for index {} of {}", r.index, job.images))?;
        *slot += 1;
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] == 0).collect();
    let twice: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] > 1).collect();
    if !missing.is_empty() || !twice.is_empty() {
        bail!(
            "job {}: missing {missing:?}, more than once {twice:?}",
            job.id
        );
    }
    if job.done != job.images {
        bail!("job {}: {} of {} done", job.id, job.done, job.images);
    }
    Ok(())
}
