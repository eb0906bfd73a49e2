//! The worker: every agent takes query leases from the leader, reads the
//! images (own replica first), preprocesses them off the async runtime,
//! runs them through one ONNX Runtime session per model and hands the
//! top-5 back. Two stages overlap: while one query runs, the next is
//! leased, fetched and preprocessed. With host compute slots, a worker
//! leases only once it holds a place on deck (see `slots.rs`), so the
//! host's queries run in the order the leader leased them. A lease may
//! carry queries of other jobs of the same model (dynamic batching, the
//! lease's `with`): their images run in the same batch, and each query's
//! results are handed back on their own.

use super::compute::{Compute, ComputeError};
use super::error::InferError;
use super::fetch::{FetchError, read_version};
use super::figures::InferMetrics;
use super::preprocess::{preprocess, stack};
use super::runtime::{self, Session};
use super::slots::{HostSlots, Slot};
use crate::control::ControlHandle;
use crate::latency::{QueryTime, WorkerHists};
use crate::sdfs::SdfsHandle;
use crate::timing::RUNTIME_RETRY;
use crate::timing::WORKER_FIGURES_EVERY as FIGURES_EVERY;
use crate::timing::WORKER_RETRY_PAUSE as RETRY_PAUSE;
use dml_shared::api::Response;
use dml_shared::control::ControlResponse;
use dml_shared::infer::{ImageResult, InferRequest, InferResponse, Lease, Outcome, WorkerFigures};
use dml_shared::models::{ModelSpec, Registry};
use ndarray::Array3;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Queries a worker holds at once: one running, one being prepared.
const SLOTS: usize = 2;
/// How long one lease request waits at the leader for work.
const LEASE_WAIT_MS: u32 = 2000;
/// Between two tries at telling the leader this worker is unready.
const REPORT_RETRY: Duration = Duration::from_secs(2);
/// Images of one query read at the same time.
const FETCH_PARALLEL: usize = 4;

#[derive(Clone)]
pub struct WorkerOptions {
    pub me: SocketAddr,
    pub data_dir: PathBuf,
    pub intra_threads: usize,
    pub ort_dylib: Option<PathBuf>,
    pub registry: Arc<Registry>,
    /// Turns at ONNX Runtime shared with the other agents of this host.
    pub slots: Option<Arc<HostSlots>>,
    /// Time allowed to read one image or model from a replica (`inference.fetch_timeout`).
    pub fetch_timeout: Duration,
}

/// Figures of this worker, for stats and telemetry.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Queries leased and not yet handed back.
    pub running: usize,
    pub completed: u64,
}

type Sessions = Arc<Mutex<HashMap<String, (u64, Arc<Mutex<Session>>)>>>;

struct Ctx {
    o: WorkerOptions,
    /// Decoding and preprocessing of the next query.
    prep: Compute,
    /// ONNX Runtime: loading and running sessions.
    infer: Compute,
    control: ControlHandle,
    sdfs: SdfsHandle,
    sessions: Sessions,
    stats: Arc<Mutex<WorkerStats>>,
    /// C1/C2 of the queries completed here.
    metrics: InferMetrics,
    /// C2 of the queries completed here whose results the leader accepted
    /// as new, sent with lease requests.
    hists: Mutex<Figures>,
}

/// This worker's C2 histograms and when they were last sent.
#[derive(Default)]
struct Figures {
    hists: WorkerHists,
    /// When they were last sent.
    sent: Option<Instant>,
}

impl Figures {
    /// The histograms, every [`FIGURES_EVERY`] once there are any (the
    /// leader records each completion itself; these are for a new leader).
    fn due(&mut self, now: Instant) -> Option<WorkerFigures> {
        let due = self
            .sent
            .is_none_or(|at| now.duration_since(at) >= FIGURES_EVERY);
        if !due || self.hists.count() == 0 {
            return None;
        }
        self.sent = Some(now);
        Some(self.hists.to_wire())
    }
}

/// Why an image of a query, or the whole query, could not be run here.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    UnknownModel(#[from] dml_shared::models::UnknownModel),
    #[error("{}: {source}", dir.display())]
    ModelDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fetch {file} v{version}: {source}")]
    FetchModel {
        file: String,
        version: u64,
        source: dml_shared::Error,
    },
}

/// An image ready to run: its query's place in the batch's queries, its
/// index in the job, its name and its tensor.
type Tensor = (usize, (u32, String, Array3<f32>));

/// A leased batch, fetched and preprocessed: its queries (the lease and its
/// `with`), and each image's tensor or error tagged with its query's place.
struct Prepared {
    parts: Vec<Lease>,
    tensors: Vec<Tensor>,
    errors: Vec<(usize, ImageResult)>,
    /// When the lease arrived.
    received: Instant,
    /// Fetching and preprocessing.
    prep: Duration,
    /// Its place on deck of the host's compute slots, freed when it runs.
    deck: Option<Slot>,
    _slot: OwnedSemaphorePermit,
}

pub struct Worker {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<WorkerStats>>,
    metrics: InferMetrics,
}

impl Worker {
    pub fn spawn(
        o: WorkerOptions,
        control: ControlHandle,
        sdfs: SdfsHandle,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Mutex::new(WorkerStats::default()));
        let metrics = InferMetrics::default();
        let ctx = Arc::new(Ctx {
            o,
            prep: Compute::spawn("dml-prep")?,
            infer: Compute::spawn("dml-infer")?,
            control,
            sdfs,
            sessions: Arc::default(),
            stats: stats.clone(),
            metrics: metrics.clone(),
            hists: Mutex::default(),
        });
        let (tx, rx) = mpsc::channel::<Prepared>(SLOTS);
        let tasks = vec![
            tokio::spawn(prepare_loop(ctx.clone(), tx, stop_rx.clone())),
            tokio::spawn(run_loop(ctx, rx, stop_rx)),
        ];
        Ok(Self {
            stop,
            tasks,
            stats,
            metrics,
        })
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The per-model query counters and latency histogram of this worker.
    pub fn infer_metrics(&self) -> &InferMetrics {
        &self.metrics
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Loads ONNX Runtime, waiting and retrying while it is missing: a worker
/// without it takes no queries (and says how to fix it). Each failure is also
/// reported to the leader, so stalled jobs say why; that report is retried every
/// [`REPORT_RETRY`] until the leader takes it.
async fn wait_for_runtime(ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        let configured = ctx.o.ort_dylib.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let path = runtime::find_dylib(configured.as_deref())?;
            runtime::init(&path).map(|()| path)
        })
        .await;
        let reason = match loaded {
            Ok(Ok(path)) => {
                tracing::info!(library = %path.display(), "ONNX Runtime loaded; taking inference queries");
                return true;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "this agent takes no inference queries until ONNX Runtime loads");
                e.to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "loading ONNX Runtime crashed");
                e.to_string()
            }
        };
        let next_try = tokio::time::Instant::now() + RUNTIME_RETRY;
        let mut told = false;
        while tokio::time::Instant::now() < next_try {
            if !told {
                let req = InferRequest::Unready {
                    worker: ctx.o.me,
                    reason: reason.clone(),
                };
                told = infer_call(ctx, req).await.is_ok();
            }
            let wake = match told {
                true => next_try,
                false => (tokio::time::Instant::now() + REPORT_RETRY).min(next_try),
            };
            tokio::select! {
                _ = stop.changed() => return false,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

async fn infer_call(
    ctx: &Ctx,
    req: InferRequest,
) -> Result<InferResponse, dml_shared::RemoteError> {
    match ctx.control.infer(req).await {
        Response::Control(ControlResponse::Infer(r)) => Ok(r),
        Response::Error(e) => Err(e),
        other => Err(dml_shared::RemoteError::internal(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn prepare_loop(ctx: Arc<Ctx>, tx: mpsc::Sender<Prepared>, mut stop: watch::Receiver<bool>) {
    if !wait_for_runtime(&ctx, &mut stop).await {
        return;
    }
    let slots = Arc::new(Semaphore::new(SLOTS));
    loop {
        let slot = tokio::select! {
            _ = stop.changed() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        // A place on deck before the lease: the host's queries run in the
        // order the leader leased them. A place is not held while waiting
        // for work (the idle workers of this cluster, or of another one on
        // this host, would hold them all): with one, the leader is asked for
        // work at once; when it has none, the worker waits for work without
        // a place and takes one for the query it gets.
        let Some(deck) = take_deck(&ctx, &mut stop).await else {
            return;
        };
        let wait = if deck.is_some() { 0 } else { LEASE_WAIT_MS };
        let (lease, deck) = match ask(&ctx, wait, &mut stop).await {
            Asked::Stop => return,
            Asked::Lease(l) => (l, deck),
            Asked::Nothing if deck.is_some() => {
                drop(deck);
                match ask(&ctx, LEASE_WAIT_MS, &mut stop).await {
                    Asked::Stop => return,
                    Asked::Lease(l) if !has_session(&ctx, &l) => (l, None),
                    Asked::Lease(l) => match take_deck(&ctx, &mut stop).await {
                        Some(deck) => (l, deck),
                        None => return,
                    },
                    Asked::Nothing => continue,
                    Asked::Failed => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
            Asked::Nothing => continue,
            Asked::Failed => {
                drop(deck);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        // A model not loaded here yet takes seconds to load: the place on
        // deck goes to another worker meanwhile.
        let deck = deck.filter(|_| has_session(&ctx, &lease));
        bump(&ctx, |s| s.running += 1);
        let prepared = prepare(&ctx, lease, slot, deck).await;
        if tx.send(prepared).await.is_err() {
            return;
        }
    }
}

/// A place on deck of the host's compute slots (`Some(None)` without
/// slots, or when none came in time); `None` once the worker stops. Waited
/// for on the prep thread, idle until a lease comes.
async fn take_deck(ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Option<Option<Slot>> {
    let Some(h) = ctx.o.slots.clone() else {
        return Some(None);
    };
    tokio::select! {
        _ = stop.changed() => None,
        d = ctx.prep.run(move || h.deck()) => Some(d.ok().flatten()),
    }
}

/// What a lease request brought.
enum Asked {
    Lease(Lease),
    /// No work within the wait.
    Nothing,
    /// No answer (no leader, for instance); logged.
    Failed,
    Stop,
}

/// Asks the leader for a query, waiting up to `wait_ms` for one.
async fn ask(ctx: &Ctx, wait_ms: u32, stop: &mut watch::Receiver<bool>) -> Asked {
    let figures = ctx
        .hists
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .due(Instant::now());
    let req = InferRequest::Lease {
        worker: ctx.o.me,
        wait_ms,
        figures,
    };
    let answer = tokio::select! {
        _ = stop.changed() => return Asked::Stop,
        r = infer_call(ctx, req) => r,
    };
    match answer {
        Ok(InferResponse::Lease(Some(l))) => Asked::Lease(l),
        Ok(InferResponse::Lease(None)) => Asked::Nothing,
        Ok(other) => {
            tracing::warn!(answer = ?other, "unexpected answer to a lease request");
            Asked::Failed
        }
        Err(e) => {
            tracing::debug!(error = %e, "no lease");
            Asked::Failed
        }
    }
}

fn bump(ctx: &Ctx, f: impl FnOnce(&mut WorkerStats)) {
    f(&mut ctx.stats.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Whether the lease's model version is loaded here.
fn has_session(ctx: &Ctx, lease: &Lease) -> bool {
    ctx.sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&lease.model)
        .is_some_and(|(v, _)| *v == lease.model_version.version)
}

async fn prepare(
    ctx: &Ctx,
    mut lease: Lease,
    slot: OwnedSemaphorePermit,
    deck: Option<Slot>,
) -> Prepared {
    let start = Instant::now();
    let with = std::mem::take(&mut lease.with);
    let parts: Vec<Lease> = std::iter::once(lease).chain(with).collect();
    let spec = ctx.o.registry.get(&parts[0].model).cloned();
    let mut tensors = Vec::new();
    let mut errors = Vec::new();
    let error = |index: u32, image: &str, e: String| ImageResult {
        index,
        image: image.to_string(),
        outcome: Outcome::Error(e),
    };
    let images: Vec<(usize, &(u32, String, _))> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, l)| l.images.iter().map(move |i| (p, i)))
        .collect();
    let Some(spec) = spec else {
        for (p, (i, name, _)) in &images {
            let e = format!(
                "model \"{}\" is not in this agent's registry",
                parts[0].model
            );
            errors.push((*p, error(*i, name, e)));
        }
        return Prepared {
            parts,
            tensors,
            errors,
            received: start,
            prep: start.elapsed(),
            deck,
            _slot: slot,
        };
    };
    let spec = Arc::new(spec);
    for group in images.chunks(FETCH_PARALLEL) {
        let reads = group.iter().map(|(_, (i, name, v))| {
            let spec = spec.clone();
            async move {
                let bytes = read_version(&ctx.sdfs, ctx.o.me, name, v, ctx.o.fetch_timeout).await?;
                let t = ctx.prep.run(move || preprocess(&bytes, &spec)).await??;
                Ok::<_, QueryError>((*i, name.clone(), t))
            }
        });
        for (r, (p, (i, name, _))) in futures::future::join_all(reads)
            .await
            .into_iter()
            .zip(group)
        {
            match r {
                Ok(t) => tensors.push((*p, t)),
                Err(e) => errors.push((*p, error(*i, name, e.to_string()))),
            }
        }
    }
    drop(images);
    Prepared {
        parts,
        tensors,
        errors,
        received: start,
        prep: start.elapsed(),
        deck,
        _slot: slot,
    }
}

async fn run_loop(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<Prepared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let p = tokio::select! {
            _ = stop.changed() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let Prepared {
            parts,
            tensors,
            errors,
            received,
            prep,
            deck,
            _slot,
        } = p;
        let batch_images: usize = parts.iter().map(|l| l.images.len()).sum();
        let outcome = run_query(&ctx, &parts[0], tensors, deck).await;
        let (results, ran, failed) = match outcome {
            Ok((r, ran)) => (r, ran, None),
            Err(e) => (Vec::new(), Duration::ZERO, Some(e.to_string())),
        };
        // Each query's results, its images' errors too if the model ran.
        let mut per_part: Vec<Vec<ImageResult>> = vec![Vec::new(); parts.len()];
        let ran_model = failed.is_none();
        for (p, r) in results
            .into_iter()
            .chain(errors.into_iter().filter(|_| ran_model))
        {
            per_part[p].push(r);
        }
        // Work is the preprocessing and the model's run; the rest of the
        // time since the lease arrived it waited: behind the other query,
        // for the model to load, or for a host compute slot.
        let compute = prep + ran;
        let time = QueryTime {
            queue: received.elapsed().saturating_sub(compute),
            compute,
        };
        // Hand the results back while the next query runs; the slot is
        // freed (and the next lease taken) once the leader has them.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let ran = failed.is_none();
            let batch = batch_images as u32;
            let reports = parts.iter().zip(per_part).map(|(lease, results)| {
                let (ctx, failed) = (&ctx, failed.clone());
                async move {
                    let new = report(ctx, lease, results, time, batch, failed).await;
                    if ran && let Some(new) = new {
                        ctx.metrics
                            .record(&lease.model, lease.images.len(), time.total());
                        if new > 0 {
                            ctx.hists
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .hists
                                .record(&lease.model, time);
                        }
                    }
                }
            });
            futures::future::join_all(reports).await;
            bump(&ctx, |s| {
                s.running = s.running.saturating_sub(1);
                s.completed += 1;
            });
            drop(_slot);
        });
    }
}

/// Runs the query's images, and says how long the model ran (not counting
/// the wait for a host compute slot, which frees its place on `deck`);
/// `Err` means the model itself cannot run here.
async fn run_query(
    ctx: &Ctx,
    lease: &Lease,
    tensors: Vec<Tensor>,
    deck: Option<Slot>,
) -> Result<(Vec<(usize, ImageResult)>, Duration), QueryError> {
    if tensors.is_empty() {
        return Ok((Vec::new(), Duration::ZERO));
    }
    let session = session_for(ctx, lease).await?;
    type Meta = (usize, u32, String);
    let (meta, arrays): (Vec<Meta>, Vec<Array3<f32>>) = tensors
        .into_iter()
        .map(|(p, (i, n, t))| ((p, i, n), t))
        .unzip();
    let slots = ctx.o.slots.clone();
    let (preds, ran) = ctx
        .infer
        .run(move || {
            let batch = stack(&arrays);
            let mut s = session.lock().unwrap_or_else(PoisonError::into_inner);
            let _turn = slots.as_ref().and_then(|h| h.acquire_from(deck));
            let start = Instant::now();
            (s.run(batch.view()), start.elapsed())
        })
        .await?;
    let results = match preds {
        Ok(preds) => meta
            .into_iter()
            .zip(preds)
            .map(|((p, index, image), top)| {
                let outcome = Outcome::Top(top);
                (
                    p,
                    ImageResult {
                        index,
                        image,
                        outcome,
                    },
                )
            })
            .collect(),
        Err(e) => meta
            .into_iter()
            .map(|(p, index, image)| {
                let outcome = Outcome::Error(format!("inference failed: {e}"));
                (
                    p,
                    ImageResult {
                        index,
                        image,
                        outcome,
                    },
                )
            })
            .collect(),
    };
    Ok((results, ran))
}

/// The session of the lease's model version, fetching and loading it once.
async fn session_for(ctx: &Ctx, lease: &Lease) -> Result<Arc<Mutex<Session>>, QueryError> {
    let version = lease.model_version.version;
    if let Some((v, s)) = ctx
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&lease.model)
        && *v == version
    {
        return Ok(s.clone());
    }
    let spec: ModelSpec = ctx.o.registry.require(&lease.model)?.clone();
    let dir = ctx.o.data_dir.join("models");
    if let Err(source) = std::fs::create_dir_all(&dir) {
        return Err(QueryError::ModelDir { dir, source });
    }
    let path = dir.join(format!("{}.v{version}.onnx", lease.model));
    if !path.exists() {
        let sdfs = dml_shared::sdfs_client::Sdfs::new(ctx.o.me);
        sdfs.get_version(
            &lease.model_file,
            version,
            &path,
            &dml_shared::sdfs_client::no_progress,
        )
        .await
        .map_err(|source| QueryError::FetchModel {
            file: lease.model_file.clone(),
            version,
            source,
        })?;
    }
    let threads = ctx.o.intra_threads;
    let p = path.clone();
    let session = ctx
        .infer
        .run(move || Session::load(&p, &spec, threads))
        .await??;
    tracing::info!(model = %lease.model, version, "model loaded");
    let session = Arc::new(Mutex::new(session));
    let old = ctx
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(lease.model.clone(), (version, session.clone()));
    // An older version's file is not needed any more.
    if let Some((v, _)) = old
        && v != version
    {
        let _ = std::fs::remove_file(dir.join(format!("{}.v{v}.onnx", lease.model)));
    }
    Ok(session)
}

/// Hands the results back, retrying through leader changes until the lease
/// would have expired anyway; once the leader took them, how many images
/// were new to it. `batch_images`: images of the batch the query ran in.
async fn report(
    ctx: &Ctx,
    lease: &Lease,
    results: Vec<ImageResult>,
    time: QueryTime,
    batch_images: u32,
    failed: Option<String>,
) -> Option<u32> {
    let deadline =
        Instant::now() + Duration::from_millis(lease.lease_ms).max(Duration::from_secs(5));
    let req = InferRequest::Complete {
        worker: ctx.o.me,
        query: lease.query,
        job: lease.job,
        results,
        queue_us: us(time.queue),
        compute_us: us(time.compute),
        batch_images,
        failed,
    };
    loop {
        match infer_call(ctx, req.clone()).await {
            Ok(InferResponse::Accepted { new }) => return Some(new),
            Ok(_) => return Some(0),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(query = lease.query, error = %e, "handing back results again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => {
                tracing::warn!(query = lease.query, error = %e, "results not handed back; the leader will lease the query again");
                return None;
            }
        }
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}
