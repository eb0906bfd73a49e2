//! Inference vocabulary shared by agents and `dml`: jobs, queries, their
//! results, and the C1–C5 figures.
//!
//! Every request here travels as `ControlRequest::Infer` and is served by the
//! leader (other agents relay it). Operators submit jobs and read figures;
//! workers (every agent) take query leases with [`InferRequest::Lease`] and
//! hand results back with [`InferRequest::Complete`].

use crate::version::VersionInfo;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A job number, handed out in order by the leader.
pub type JobId = u64;

/// Largest batch size any model accepts.
pub const MAX_BATCH: u32 = 256;

/// Number of top predictions returned per image.
pub const TOP_K: usize = 5;

/// One of the top-5 predictions for an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Class index in the model's output.
    pub class: u32,
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// What became of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Top-5, best first.
    Top(Vec<Prediction>),
    /// The image could not be read, decoded or run; the reason.
    Error(String),
}

/// The result for one image of a job, keyed by its index in the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    pub index: u32,
    /// The image's SDFS name.
    pub image: String,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    /// Every image has a result.
    Done,
    /// The job cannot go on (e.g. its model cannot be loaded anywhere).
    Failed,
    /// Stopped by `dml cancel`; the results it had stay readable.
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One row of `dml jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub model: String,
    /// SDFS prefix the images were taken from.
    pub dataset: String,
    pub images: u32,
    /// Images with a result (including per-image errors).
    pub done: u32,
    /// Images whose result is an error.
    pub errors: u32,
    /// Queries whose results were accepted.
    pub queries: u64,
    pub state: JobState,
    /// Why the job failed, if it did.
    pub reason: Option<String>,
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    /// SDFS name of the stored output once the job is done.
    pub output: Option<String>,
    /// Why a running job makes no progress, when the leader knows (no worker can run it).
    pub stalled: Option<String>,
}

/// A model as the cluster knows it: its registry entry's name and the
/// batch size in force (C3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// C3: the largest batch a query of this model takes.
    pub batch_size: u32,
    pub max_batch: u32,
    /// SDFS name of its ONNX file and the version there, if uploaded.
    pub file: String,
    pub version: Option<u64>,
    /// Longest a partial batch waits for more images before it is leased (ms).
    pub max_queue_delay_ms: u64,
    /// The p99 query time the leader keeps this model's batch size to (ms).
    pub p99_target_ms: Option<u64>,
    /// The batch size the leader dispatches now: `batch_size`, or below it
    /// as the p99 target chose.
    pub effective_batch: u32,
}

/// C1 for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateInfo {
    pub model: String,
    /// Queries completed per second over the last 10 s.
    pub queries_per_s: f64,
    /// Images completed per second over the last 10 s.
    pub images_per_s: f64,
    /// Queries completed since the model's first job (this leader's term on).
    pub queries_total: u64,
    pub images_total: u64,
    /// Images per model run over the last 10 s (dynamic batching runs queries
    /// of several jobs as one batch); 0 with no run.
    pub mean_batch: f64,
}

/// C2 for one model: query time in milliseconds, from the lease's arrival
/// at the worker to its results (queue plus compute).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyInfo {
    pub model: String,
    pub count: u64,
    pub mean_ms: f64,
    pub stddev_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Waiting on the worker: behind its other query, or for a host compute slot.
    pub queue: Spread,
    /// Working: fetching and preprocessing the images and running the model.
    pub compute: Spread,
}

/// The spread of one part of the query time, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A worker's own C2 histograms in microseconds, as sparse (value, count)
/// pairs: sent with its lease requests so that a new leader rebuilds C2
/// instead of starting from nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerFigures {
    pub models: Vec<ModelFigures>,
}

/// One model's histograms in [`WorkerFigures`]: every query of the model
/// this worker completed and the leader accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelFigures {
    pub model: String,
    pub total: Vec<(u64, u64)>,
    pub queue: Vec<(u64, u64)>,
    pub compute: Vec<(u64, u64)>,
}

/// C5: the workers running a job's queries right now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub job: JobId,
    pub model: String,
    /// Each worker and the queries it holds a lease on.
    pub workers: Vec<(SocketAddr, u32)>,
    /// Its weight in fair sharing (`submit-job --weight`).
    pub weight: u32,
    /// Its share of the queries the running jobs completed in the last 10 s (0 to 1).
    pub query_share: f64,
    /// Its share of the worker time (compute) those queries took (0 to 1):
    /// fair sharing keeps it near `weight` over the running jobs' weights.
    pub time_share: f64,
}

/// A query handed to a worker: some images of one job, to run as one batch.
/// It names the exact committed versions and their replicas, so the worker
/// reads them (its own copy first) without asking the leader again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique per leader term: results are keyed by (job, image index), so a
    /// late or repeated completion is never counted twice.
    pub query: u64,
    pub job: JobId,
    pub model: String,
    /// SDFS name of the model's ONNX file and the version to load.
    pub model_file: String,
    pub model_version: VersionInfo,
    /// (index in the job, SDFS name, committed version) of each image.
    pub images: Vec<(u32, String, VersionInfo)>,
    /// The leader re-dispatches the query if no result arrives within this.
    pub lease_ms: u64,
    /// Queries of other jobs of the same model, formed by dynamic batching:
    /// the worker runs their images in one batch with this one's and hands
    /// each back on its own.
    pub with: Vec<Lease>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InferRequest {
    /// C4: run `model` over the images under `dataset` (all of them, or the
    /// first `count` in name order, cycling if there are fewer).
    Submit {
        model: String,
        count: Option<u32>,
        dataset: String,
        /// Weight in fair sharing of worker time, at least 1.
        weight: u32,
    },
    Jobs,
    /// C4: a job's per-image results, by index.
    Output {
        job: JobId,
    },
    /// C3: batch size of queries not yet dispatched.
    SetBatchSize {
        model: String,
        size: u32,
    },
    /// Dynamic batching of `model`: the longest a partial batch waits for
    /// more images (ms), and a p99 query time target (ms; 0 clears it) the
    /// leader keeps to by choosing the batch size up to C3. `None` keeps a
    /// setting as it is.
    SetBatchPolicy {
        model: String,
        max_queue_delay_ms: Option<u64>,
        p99_target_ms: Option<u64>,
    },
    Models,
    /// C1.
    Rates,
    /// C2.
    Latency,
    /// C5.
    Placement,
    /// Worker: the next query for `worker`, waiting up to `wait_ms` for one;
    /// now and then with the worker's C2 histograms (rebuilt by a new leader).
    Lease {
        worker: SocketAddr,
        wait_ms: u32,
        figures: Option<WorkerFigures>,
    },
    /// Worker: results of a leased query. `failed` set: the worker could not
    /// run the model at all (e.g. a bad ONNX file): the reason.
    Complete {
        worker: SocketAddr,
        query: u64,
        job: JobId,
        results: Vec<ImageResult>,
        /// Time the query waited on the worker (µs), behind its other query,
        /// for its model to load or for a host compute slot.
        queue_us: u64,
        /// Time it worked (µs): fetching, preprocessing and running the model.
        compute_us: u64,
        /// Images of the batch it ran in (its own and those of the lease's
        /// `with` queries); the leader charges each job its share.
        batch_images: u32,
        failed: Option<String>,
    },
    /// Worker: it cannot run queries (ONNX Runtime did not load), because of `reason`;
    /// repeated while that lasts, so running jobs can say why they stall.
    Unready {
        worker: SocketAddr,
        reason: String,
    },
    /// Stop a running job for good (committed in Raft): its pending images
    /// are dropped, its leases released, its results so far kept.
    Cancel {
        job: JobId,
    },
    /// One job in detail: progress per worker, errors, queue and compute time.
    Job {
        job: JobId,
    },
    /// The times of a job's completed queries, one by one (`dml bench-model`):
    /// the last [`MAX_QUERY_TIMES`] this leader accepted.
    QueryTimes {
        job: JobId,
    },
}

impl InferRequest {
    /// Whether repeating the request after an unknown outcome is harmless.
    /// A repeated `Lease` only leaves a lease to expire; a repeated
    /// `Complete` is ignored image by image.
    /// A repeated `Cancel` would fail as the job has ended: it is not repeated either.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            InferRequest::Submit { .. } | InferRequest::Cancel { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InferResponse {
    Submitted {
        job: JobId,
        images: u32,
    },
    Jobs(Vec<JobInfo>),
    Output {
        job: JobInfo,
        results: Vec<ImageResult>,
    },
    Models(Vec<ModelInfo>),
    Rates(Vec<RateInfo>),
    Latency(Vec<LatencyInfo>),
    Placement(Vec<Placement>),
    /// The next query, or none within the wait.
    Lease(Option<Lease>),
    /// How many of the completed images were new (the rest were duplicates).
    Accepted {
        new: u32,
    },
    Done,
    /// The job is cancelled; `released` leases were taken back from workers.
    Cancelled {
        job: JobId,
        released: u32,
    },
    Job(Box<JobDetail>),
    QueryTimes {
        job: JobId,
        queries: Vec<QueryTiming>,
    },
}

/// Most query times the leader keeps per job for [`InferRequest::QueryTimes`].
pub const MAX_QUERY_TIMES: usize = 10_000;

/// One completed query of a job as the leader accepted it, in the order of
/// acceptance: C2's sample of it (queue and compute, as its worker reported)
/// and the leader's own view (lease to accepted results).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTiming {
    /// Images of the query new to the job.
    pub images: u32,
    /// Waiting on the worker (µs): behind its other query, or for a compute slot.
    pub queue_us: u64,
    /// Working on the worker (µs): fetching, preprocessing, running the model.
    pub compute_us: u64,
    /// From the leader's lease to its acceptance of the results (µs): queue and
    /// compute plus the trips between leader and worker and the Raft commit.
    pub held_us: u64,
}

impl QueryTiming {
    /// C2's query time: queue plus compute on the worker (µs).
    pub fn total_us(&self) -> u64 {
        self.queue_us + self.compute_us
    }
}

/// `dml job JOB`: one job with its progress per worker, its per-image
/// errors and its queue and compute time. The per-worker figures are the
/// current leader's, since it took over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub info: JobInfo,
    /// Every worker that ran or holds a query of the job, by address.
    pub workers: Vec<WorkerProgress>,
    /// The first per-image errors still in the leader's state (a finished
    /// job's results are in its output file instead).
    pub errors: Vec<ImageResult>,
}

/// One worker's share of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerProgress {
    pub worker: SocketAddr,
    /// Queries it completed.
    pub queries: u64,
    /// Images of those queries that were new to the job.
    pub images: u64,
    /// Of those, images whose result is an error.
    pub errors: u64,
    /// Queries it holds a lease on now.
    pub in_flight: u32,
    /// Time its queries waited between the lease and the start of their
    /// work (their lease time less the time the worker reported), total ms.
    pub queue_ms: u64,
    /// Time the worker reported working on its queries, total ms.
    pub compute_ms: u64,
}

impl WorkerProgress {
    /// A worker with nothing counted yet.
    pub fn new(worker: SocketAddr) -> Self {
        Self {
            worker,
            queries: 0,
            images: 0,
            errors: 0,
            in_flight: 0,
            queue_ms: 0,
            compute_ms: 0,
        }
    }
}

/// One line of a job's JSONL output (no newline): `{"index", "image",
/// "predictions": [{"class", "label", "score"}]}` or `{"index", "image", "error"}`.
pub fn jsonl_line(r: &ImageResult) -> String {
    let v = match &r.outcome {
        Outcome::Top(preds) => serde_json::json!({
            "index": r.index,
            "image": r.image,
            "predictions": preds
                .iter()
                .map(|p| serde_json::json!({"class": p.class, "label": p.label, "score": p.score}))
                .collect::<Vec<_>>(),
        }),
        Outcome::Error(e) => serde_json::json!({
            "index": r.index,
            "image": r.image,
            "error": e,
        }),
    };
    v.to_string()
}

/// Why a line is not one written by [`jsonl_line`].
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("prediction {prediction} of image {image}: score {score} is not a finite number")]
    NotFinite {
        prediction: usize,
        image: u32,
        score: f32,
    },
    #[error("a line has either predictions or an error")]
    Neither,
}

/// Parses one line written by [`jsonl_line`].
pub fn parse_jsonl_line(line: &str) -> Result<ImageResult, JsonlError> {
    #[derive(Deserialize)]
    struct Line {
        index: u32,
        image: String,
        predictions: Option<Vec<Prediction>>,
        error: Option<String>,
    }
    let l: Line = serde_json::from_str(line)?;
    let outcome = match (l.predictions, l.error) {
        (Some(p), None) => {
            // A score too large for an f32 parses as infinity, which would be
            // written back as `null`; a probability is finite.
            if let Some((i, bad)) = p.iter().enumerate().find(|(_, p)| !p.score.is_finite()) {
                return Err(JsonlError::NotFinite {
                    prediction: i,
                    image: l.index,
                    score: bad.score,
                });
            }
            Outcome::Top(p)
        }
        (None, Some(e)) => Outcome::Error(e),
        _ => return Err(JsonlError::Neither),
    };
    Ok(ImageResult {
        index: l.index,
        image: l.image,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_escape_labels_and_carry_errors() {
        let ok = ImageResult {
            index: 3,
            image: "d/a \"b\".png".into(),
            outcome: Outcome::Top(vec![Prediction {
                class: 7,
                label: "cock, rooster".into(),
                score: 0.25,
            }]),
        };
        let v: serde_json::Value = serde_json::from_str(&jsonl_line(&ok)).unwrap();
        assert_eq!(v["image"], "d/a \"b\".png");
        assert_eq!(v["predictions"][0]["label"], "cock, rooster");
        assert_eq!(v["predictions"][0]["score"], 0.25);
        let err = ImageResult {
            index: 4,
            image: "x".into(),
            outcome: Outcome::Error("not an image".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&jsonl_line(&err)).unwrap();
        assert_eq!(
            (v["index"].as_u64(), v["error"].as_str()),
            (Some(4), Some("not an image"))
        );
    }

    #[test]
    fn parsed_lines_write_back_the_same_and_scores_must_be_finite() {
        let line = r#"{"index":3,"image":"a","predictions":[{"class":7,"label":"c","score":0.5}]}"#;
        let r = parse_jsonl_line(line).unwrap();
        assert_eq!(parse_jsonl_line(&jsonl_line(&r)).unwrap(), r);
        // Found by the infer_jsonl fuzz target: 4e67 overflows an f32 to infinity.
        let err = parse_jsonl_line(&line.replace("0.5", "4e67"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("score inf is not a finite number"), "{err}");
        let err = parse_jsonl_line(r#"{"index":1,"image":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("either predictions or an error"), "{err}");
    }
}
