//! `bench inference [--quick]`: the full-size built models (`.dml/models/built`, built first
//! when missing) through the whole system against bare ONNX Runtime loops in the same run.
//!
//! 1. One agent, 1 intra-op thread: images/s of a job (images in SDFS, counted from the job's
//!    progress between completions after a warm-up) per model and batch, over a bare loop
//!    (same file, 1 thread, same batch, pre-made tensors).
//! 2. N agents (default 10), 1 thread each: cluster images/s of a resnet50 job over one bare
//!    loop with 2 threads.
//! 3. Two concurrent jobs (resnet50, inceptionv3, batch 1): max/min of their worker time over
//!    10 s windows (the leader's time shares, which cover the last 10 s), worst and median,
//!    and over 30 s windows (three 10 s ones end to end); before them, max/min of
//!    the images two resnet50 jobs submitted 0.5 s apart completed in the first 10 s.
//! 4. Time for a second job to reach its fair share (definition printed with the figure).
//! 5. Longest interval without a completed image around a SIGKILL of a worker, then of the
//!    leader (polled every 50 ms through a surviving non-voter).
//! 6. Numerics: the agent's preprocessing + resnet50 against `scripts/models/reference.py`.
//! 7. Dynamic batching: p99 query time at the batch size a p99 target chose against the fixed
//!    batch of the same throughput (`inference_batching.rs`; run after phase 2, before 3).
//!
//! Bare loops run on a thread at the agent's compute priority (nice
//! [`dml_agent::infer::compute::COMPUTE_NICE`]) so that other load on the machine weighs on
//! both sides alike. Table on stdout, progress on stderr, JSON in `target/bench/inference.json`
//! (`inference-quick.json` with `--quick`).

use crate::inference_batching::{BatchPlan, Batching};
use anyhow::{Context, Result, bail, ensure};
use dml_agent::infer::compute::COMPUTE_NICE;
use dml_agent::infer::preprocess::{preprocess, stack};
use dml_agent::infer::runtime::{self, Session, find_dylib, top_k};
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::infer::{InferRequest, InferResponse, JobId, JobState, LatencyInfo};
use dml_shared::models::{ModelSpec, Registry};
use dml_tests::infer::{infer, job, jobs, set_batch, submit};
use dml_tests::netbed::Bed;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use ndarray::Array4;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) const DATASET: &str = "datasets/bench/";
const MODELS: [&str; 2] = ["resnet50", "inceptionv3"];
/// Time for a cluster to converge and elect a leader.
const READY: Duration = Duration::from_secs(90);
/// Job progress polling in the warm-up.
const POLL: Duration = Duration::from_millis(100);
/// Job progress polling while a throughput job is timed: each poll is a new connection (a
/// Noise handshake) to an agent, forwarded to the leader, which confirms its leadership with
/// the voters: about 9 ms of the cluster's CPU a poll (an idle 10-agent cluster polled by `dml
/// jobs` 7.6 times a second used 0.067 of a core more), so polls every 100 ms took about 4 % of
/// two cores from the system side, and nothing from the bare loop. A rate from (poll time,
/// images done then) pairs needs no finer polls: it is off by at most a query at each end.
const RATE_POLL: Duration = Duration::from_millis(500);
/// Polling in the fairness and kill phases.
const FINE_POLL: Duration = Duration::from_millis(50);
/// Longest a sized throughput job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);
/// Sliding window of the fair-share time, and the share that counts as reached.
const SHARE_WINDOW: Duration = Duration::from_secs(1);
const SHARE: f64 = 0.9;
const FAIR_WINDOW: Duration = Duration::from_secs(10);
/// Longer steady windows, of this many 10 s ones end to end: a query of each job at each end
/// is about 1 % of one at this machine's query times, where it is 3 % of a 10 s window (see
/// docs/INFERENCE.md).
const LONG_SEGMENTS: u32 = 3;
/// Most warm-up rounds (jobs of both models) until every worker ran both.
const WARM_ROUNDS: u32 = 4;

#[derive(clap::Args)]
pub struct InferenceArgs {
    /// Agents in the multi-agent phases.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Smoke run: short windows, batches 1 and 8 only; JSON to `inference-quick.json`.
    #[arg(long)]
    quick: bool,
    /// Keep the agents' directories after the run.
    #[arg(long)]
    keep: bool,
    /// Do not run `cargo build` for dml-agent and dml first.
    #[arg(long)]
    no_build: bool,
    /// Only the cluster's warm-up, fairness, fair-share and kill phases (about 3 minutes), for
    /// runs of two builds taken in turns; JSON to `inference-fair.json`.
    #[arg(long)]
    fair_only: bool,
    /// Only the multi-agent phases, on the namespace test bed (root): each agent on its own
    /// host, the bench on one more; JSON to `inference-bed.json`.
    #[arg(long)]
    bed: bool,
    /// Only the cluster's warm-up and the dynamic batching row (7); JSON to
    /// `inference-batching.json`.
    #[arg(long, conflicts_with = "fair_only")]
    batching_only: bool,
    /// Only the cluster's warm-up and row 2 (N agents against a two-thread bare loop), with
    /// the agents' CPU time by thread kind over the job; JSON to `inference-cluster.json`.
    #[arg(long, conflicts_with_all = ["fair_only", "batching_only"])]
    cluster_only: bool,
}

struct Plan {
    batches: Vec<u32>,
    /// Bare-loop measuring time.
    raw_secs: f64,
    /// Steady window of a throughput job, after `warm_secs` from its first completion.
    window_secs: f64,
    warm_secs: f64,
    /// Both jobs together, for the 10 s windows.
    fair_secs: f64,
    /// Observation after each kill.
    kill_obs_secs: f64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                batches: vec![1, 8],
                raw_secs: 5.0,
                window_secs: 8.0,
                warm_secs: 2.0,
                fair_secs: 20.0,
                kill_obs_secs: 12.0,
            }
        } else {
            Self {
                batches: vec![1, 8, 32],
                raw_secs: 15.0,
                window_secs: 25.0,
                warm_secs: 4.0,
                fair_secs: 60.0,
                kill_obs_secs: 20.0,
            }
        }
    }
}

#[derive(Serialize, Default, Clone)]
struct Throughput {
    model: String,
    batch: u32,
    agents: usize,
    raw_threads: usize,
    system_images_per_s: Option<f64>,
    /// The mean of the bare loop's runs just before and just after the job.
    raw_images_per_s: Option<f64>,
    raw_before: Option<f64>,
    raw_after: Option<f64>,
    ratio: Option<f64>,
    /// Steady window the system rate was taken over, and images completed in it.
    window_s: Option<f64>,
    window_images: Option<u32>,
    /// The agents' CPU time over the job (row 2 only).
    cpu: Option<CpuSplit>,
    error: Option<String>,
}

/// The agents' CPU seconds by thread name over a span, and the whole machine's busy seconds.
#[derive(Serialize, Default, Clone)]
struct CpuSplit {
    wall_s: f64,
    machine_busy_s: f64,
    agents_s: f64,
    by_thread: BTreeMap<String, f64>,
}

/// CPU seconds so far of the threads of `pids` by thread name, and the machine's busy seconds
/// (all CPUs; `/proc/stat` less idle and iowait).
fn cpu_now(pids: &[u32]) -> (BTreeMap<String, f64>, f64) {
    let tick = procfs::ticks_per_second() as f64;
    let mut by: BTreeMap<String, f64> = Default::default();
    for pid in pids {
        let Ok(tasks) = procfs::process::Process::new(*pid as i32).and_then(|p| p.tasks()) else {
            continue;
        };
        for st in tasks.flatten().filter_map(|t| t.stat().ok()) {
            *by.entry(st.comm.clone()).or_default() += (st.utime + st.stime) as f64 / tick;
        }
    }
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: f64 = f.iter().sum();
            Some((total - f.get(3)? - f.get(4).copied().unwrap_or(0.0)) / tick)
        })
        .unwrap_or(0.0);
    (by, busy)
}

impl CpuSplit {
    fn between(
        from: &(BTreeMap<String, f64>, f64),
        to: &(BTreeMap<String, f64>, f64),
        wall: Duration,
    ) -> Self {
        let by_thread: BTreeMap<String, f64> =
            to.0.iter()
                .map(|(k, v)| (k.clone(), v - from.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
        Self {
            wall_s: wall.as_secs_f64(),
            machine_busy_s: to.1 - from.1,
            agents_s: by_thread.values().sum(),
            by_thread,
        }
    }
}

impl Throughput {
    /// Records the system rate `sys` (img/s over `span` s, `n` images) against the
    /// mean of the bare loop's rates just `before` and `after` it, so that a machine
    /// whose speed drifts during the run favours neither side.
    fn set_system(&mut self, before: f64, after: f64, (sys, span, n): (f64, f64, u32)) {
        let raw = (before + after) / 2.0;
        self.raw_before = Some(before);
        self.raw_after = Some(after);
        self.raw_images_per_s = Some(raw);
        self.system_images_per_s = Some(sys);
        self.ratio = Some(sys / raw);
        self.window_s = Some(span);
        self.window_images = Some(n);
    }
}

#[derive(Serialize, Default)]
struct Fairness {
    batch: u32,
    /// Mean compute time per query of resnet50 and inceptionv3 (C2), ms: a query's worker time.
    costs_ms: Option<(f64, f64)>,
    /// Two resnet50 jobs submitted 0.5 s apart: images each completed 10 s after the first
    /// submit, and max/min.
    first_10s_images: Option<(u32, u32)>,
    first_10s_ratio: Option<f64>,
    windows: usize,
    worst: Option<f64>,
    median: Option<f64>,
    /// Each window's max/min, in order.
    ratios: Vec<f64>,
    /// Over windows of [`LONG_SEGMENTS`] 10 s windows end to end (one starting every second):
    /// each 10 s one's worker time from query counts and C2's mean compute per query, split
    /// as the leader's time shares at its end say. How many, worst, median.
    long_windows: usize,
    long_worst: Option<f64>,
    long_median: Option<f64>,
    /// The widest window's difference of worker time between the jobs, in queries of the
    /// costlier model (C2's mean): a scheduler that keeps each job within one query of its
    /// share at every instant leaves up to about 3 counted by completions (the simulation at
    /// the quiet run's costs: 2.3-2.7, see `fair_sim.rs`).
    worst_gap_queries: Option<f64>,
    /// Queries of each job (resnet50, inceptionv3) over the whole shared period.
    queries: (u64, u64),
    shared_s: f64,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct FairShare {
    definition: String,
    /// Windows from B's submit on (of at most the last second).
    seconds: Option<f64>,
    /// Whole 1 s windows, which may start before B's submit (A alone then): even a scheduler
    /// fair from B's first query needs about 0.95 s here.
    whole_window_s: Option<f64>,
    first_completion_s: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct Gap {
    what: String,
    /// Longest interval with no completed image from 2 s before the kill to the end of the
    /// observation.
    gap_s: Option<f64>,
    /// The same over the 5 s before the kill, for comparison.
    baseline_gap_s: Option<f64>,
    killed: Option<String>,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct Numerics {
    model: String,
    images: usize,
    max_input_diff: Option<f64>,
    max_logit_diff: Option<f64>,
    max_prob_diff: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Document {
    bench: &'static str,
    unix_ms: u64,
    command: String,
    quick: bool,
    models_built_now: bool,
    load_before: String,
    load_after: String,
    one_agent: Vec<Throughput>,
    cluster: Option<Throughput>,
    fairness: Fairness,
    fair_share: FairShare,
    gaps: Vec<Gap>,
    latency: Vec<LatencyInfo>,
    numerics: Numerics,
    batching: Option<Batching>,
    /// `--batching-only`: phases 1 to 6 did not run.
    batching_only: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Builds the full-size models when missing; true if it did.
fn ensure_models(dir: &Path) -> Result<bool> {
    let missing: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| !dir.join(format!("{m}.onnx")).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let python = repo().join(".venv/bin/python");
    ensure!(
        python.is_file(),
        "{} is missing: run `bash scripts/setup.sh` to make the virtualenv",
        python.display()
    );
    eprintln!(
        "building the models {missing:?} into {} (random weights)",
        dir.display()
    );
    let status = std::process::Command::new(&python)
        .current_dir(repo())
        .arg("scripts/models/build_models.py")
        .arg("--out")
        .arg(dir)
        .args(["--models", &missing.join(",")])
        .status()
        .context("cannot run build_models.py")?;
    ensure!(status.success(), "build_models.py failed ({status})");
    Ok(true)
}

fn spec(name: &str) -> Result<ModelSpec> {
    Registry::builtin()
        .get(name)
        .cloned()
        .with_context(|| format!("model {name} is not in the built-in registry"))
}

/// `n` preprocessed images from `files`, cycling, stacked into one batch.
fn batch_of(files: &[PathBuf], spec: &ModelSpec, n: usize) -> Result<Array4<f32>> {
    ensure!(!files.is_empty(), "no images to make a batch from");
    let mut out = Vec::with_capacity(n);
    for f in files.iter().cycle().take(n) {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        out.push(preprocess(&bytes, spec).with_context(|| f.display().to_string())?);
    }
    Ok(stack(&out))
}

/// Lowers the calling thread's priority to the agent's compute threads'.
fn compute_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = nix::libc::syscall(nix::libc::SYS_gettid) as nix::libc::id_t;
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, COMPUTE_NICE);
    }
}

/// Images/s of a bare ORT loop over a pre-made batch, on its own thread.
async fn raw_rate(
    model: PathBuf,
    spec: ModelSpec,
    threads: usize,
    batch: Array4<f32>,
    secs: f64,
) -> Result<f64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| -> Result<f64> {
            compute_priority();
            let mut s = Session::load(&model, &spec, threads)?;
            for _ in 0..2 {
                s.logits(batch.view())?;
            }
            let n = batch.dim().0;
            let t = Instant::now();
            let mut runs = 0usize;
            while runs < 3 || t.elapsed().as_secs_f64() < secs {
                s.logits(batch.view())?;
                runs += 1;
            }
            Ok((runs * n) as f64 / t.elapsed().as_secs_f64())
        })();
        let _ = tx.send(r);
    });
    rx.await.context("the bare loop thread died")?
}

/// Submits a job of `images` and measures its steady images/s from completion events:
/// from the first one at least `warm` after the first completion to the last.
async fn system_rate(
    at: SocketAddr,
    model: &str,
    batch: u32,
    images: u32,
    warm: f64,
    tail: u32,
) -> Result<(f64, f64, u32)> {
    set_batch(at, model, batch).await?;
    let id = submit(at, model, images, DATASET).await?;
    let t0 = Instant::now();
    let mut events: Vec<(f64, u32)> = Vec::new();
    let mut last = 0;
    loop {
        ensure!(
            t0.elapsed() < JOB_TIMEOUT,
            "job {id} not done after {JOB_TIMEOUT:?} ({last}/{images})"
        );
        if let Ok(j) = job(at, id).await {
            if j.done > last {
                last = j.done;
                events.push((t0.elapsed().as_secs_f64(), j.done));
            }
            match j.state {
                JobState::Running => {}
                JobState::Done => break,
                JobState::Failed => bail!("job {id} failed: {}", j.reason.unwrap_or_default()),
                JobState::Cancelled => bail!("job {id} was cancelled"),
            }
        }
        tokio::time::sleep(RATE_POLL).await;
    }
    // Warm-up: at least `warm` and at least the time to the first completion (a query's
    // duration with the pipeline filling); the tail, when workers run out of queries, is cut.
    let first = events.first().context("no completion")?.0;
    let start = events
        .iter()
        .skip(1)
        .find(|(t, _)| *t >= first + warm.max(first))
        .copied()
        .context("the job ended within its warm-up")?;
    let end = events
        .iter()
        .rev()
        .find(|(_, d)| *d + tail <= images)
        .copied()
        .context("no completion before the tail")?;
    let span = end.0 - start.0;
    ensure!(
        span >= 1.0,
        "steady window of {span:.2} s only (job of {images} images too short)"
    );
    let n = end.1 - start.1;
    Ok((f64::from(n) / span, span, n))
}

/// Images for a job that lasts about `secs` at `rate`, whole batches plus two.
fn job_size(rate: f64, secs: f64, batch: u32) -> u32 {
    let n = (rate * secs).ceil().max(1.0) as u32;
    n.div_ceil(batch) * batch + 2 * batch
}

fn options(agents: usize, sdfs: SdfsConfig, base: &Path) -> SdfsOptions {
    SdfsOptions {
        agents,
        membership: MembershipConfig::preset(Preset::Local),
        control: ControlConfig::default(),
        sdfs,
        base_dir: Some(base.to_path_buf()),
        extra_config: "[inference]\nintra_threads = 1\n".into(),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    }
}

/// Uploads the built models and loads the dataset into SDFS through `via`.
async fn upload(c: &SdfsCluster, via: usize, models_dir: &Path, dataset: &Path) -> Result<()> {
    for m in MODELS {
        let p = models_dir.join(format!("{m}.onnx"));
        let p = p.to_str().context("model path")?;
        c.dml(via, &["put", p, &format!("models/{m}.onnx")])
            .await?
            .ensure_success()?;
    }
    let d = dataset.to_str().context("dataset path")?;
    c.dml(via, &["sdfs", "load", d, DATASET])
        .await?
        .ensure_success()?;
    Ok(())
}

pub async fn run(a: InferenceArgs, bin_dir: &Path, out_dir: &Path) -> Result<()> {
    ensure!(a.agents >= 4, "--agents must be at least 4");
    let plan = Plan::new(a.quick);
    if !a.no_build {
        crate::locate(bin_dir, "dml-agent", "dml-agent", true)?;
        crate::locate(bin_dir, "dml-tui", "dml", true)?;
    }
    let models_dir = repo().join(".dml/models/built");
    let models_built_now = ensure_models(&models_dir)?;
    let dylib = find_dylib(None)?;
    runtime::init(&dylib)?;
    let run_dir = out_dir.join("inference-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    let load_before = loadavg();
    eprintln!("load average: {load_before}");

    // The sample dataset, made once with `dml dataset make` and loaded into each cluster.
    let dataset = run_dir.join("dataset");
    let dml = dml_tests::bins::dml_bin()?;
    let st = std::process::Command::new(&dml)
        .args(["dataset", "make"])
        .arg(&dataset)
        .args(["--count", "64", "--seed", "7"])
        .stdout(std::io::stderr())
        .status()?;
    ensure!(st.success(), "dml dataset make failed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dataset)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();

    let numerics = if a.fair_only || a.bed || a.batching_only || a.cluster_only {
        Numerics::default()
    } else {
        eprintln!("[numerics] resnet50 against scripts/models/reference.py");
        numerics(&models_dir, &files).await
    };

    let mut one_agent = Vec::new();
    if !a.fair_only && !a.bed && !a.batching_only && !a.cluster_only {
        eprintln!("[one agent] starting");
        let sdfs = SdfsConfig {
            replicas: Some(1),
            write_quorum: 1,
            ..SdfsConfig::default()
        };
        let mut c = SdfsCluster::start_with("one", options(1, sdfs, &run_dir)).await?;
        if a.keep {
            c.cluster.keep_dir();
        }
        upload(&c, 0, &models_dir, &dataset).await?;
        let at = c.addrs[0];
        for m in MODELS {
            let spec = spec(m)?;
            let path = models_dir.join(&spec.file);
            for &b in &plan.batches {
                let mut row = Throughput {
                    model: m.into(),
                    batch: b,
                    agents: 1,
                    raw_threads: 1,
                    ..Throughput::default()
                };
                let r: Result<()> = async {
                    let batch = batch_of(&files, &spec, b as usize)?;
                    let bare =
                        || raw_rate(path.clone(), spec.clone(), 1, batch.clone(), plan.raw_secs);
                    let raw = bare().await?;
                    row.raw_images_per_s = Some(raw);
                    // The tail: the last two queries (the worker's two slots).
                    let tail = 2 * b;
                    let images = job_size(raw, 2.0 * plan.warm_secs + plan.window_secs, b) + tail;
                    let sys = system_rate(at, m, b, images, plan.warm_secs, tail).await?;
                    row.set_system(raw, bare().await?, sys);
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    row.error = Some(format!("{e:#}"));
                }
                eprintln!("[one agent] {}", row_text(&row));
                one_agent.push(row);
            }
        }
    }

    let mut out = ClusterOut::default();
    if a.bed {
        // Every agent on its own namespace host, this process on one more: every request
        // crosses the bed's network.
        let bed = Bed::create(a.agents + 1)?;
        let hosts = bed.hosts()[..a.agents].to_vec();
        tokio::task::block_in_place(|| {
            bed.block_on_in(a.agents, || {
                cluster_phases(
                    &a,
                    &plan,
                    &files,
                    &models_dir,
                    &dataset,
                    &run_dir,
                    hosts,
                    &mut out,
                )
            })
        })?;
    } else {
        cluster_phases(
            &a,
            &plan,
            &files,
            &models_dir,
            &dataset,
            &run_dir,
            Vec::new(),
            &mut out,
        )
        .await?;
    }
    let ClusterOut {
        cluster_row,
        fairness,
        fair_share,
        gaps,
        latency,
        batching,
    } = out;

    let doc = Document {
        bench: "inference",
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: a.quick,
        models_built_now,
        load_before,
        load_after: loadavg(),
        one_agent,
        cluster: cluster_row,
        fairness,
        fair_share,
        gaps,
        latency,
        numerics,
        batching,
        batching_only: a.batching_only,
    };
    print!("{}", table(&doc, a.agents));
    let json_path = out_dir.join(if a.bed {
        "inference-bed.json"
    } else if a.fair_only {
        "inference-fair.json"
    } else if a.batching_only {
        "inference-batching.json"
    } else if a.cluster_only {
        "inference-cluster.json"
    } else if a.quick {
        "inference-quick.json"
    } else {
        "inference.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("\nJSON: {}", json_path.display());
    if a.keep {
        println!("agent directories kept under {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

/// What the multi-agent phases measured.
#[derive(Default)]
struct ClusterOut {
    cluster_row: Option<Throughput>,
    fairness: Fairness,
    fair_share: FairShare,
    gaps: Vec<Gap>,
    latency: Vec<LatencyInfo>,
    batching: Option<Batching>,
}

/// The multi-agent phases: warm-up, throughput against a bare loop, fairness, fair share and
/// kill gaps, on 127.0.0.1 or (with `hosts`) on namespace hosts.
#[allow(clippy::too_many_arguments)]
async fn cluster_phases(
    a: &InferenceArgs,
    plan: &Plan,
    files: &[PathBuf],
    models_dir: &Path,
    dataset: &Path,
    run_dir: &Path,
    hosts: Vec<dml_tests::netbed::Host>,
    out: &mut ClusterOut,
) -> Result<()> {
    eprintln!("[cluster] starting {} agents", a.agents);
    let mut opts = options(a.agents, SdfsConfig::default(), run_dir);
    opts.hosts = hosts;
    let mut c = SdfsCluster::start_with("cluster", opts).await?;
    if a.keep {
        c.cluster.keep_dir();
    }
    // The last agent is a non-voter: never the leader, never killed.
    let via = c.len() - 1;
    let at = c.addrs[via];
    upload(&c, via, models_dir, dataset).await?;
    // Every worker loads both models before anything is timed: a worker's first query of a
    // model loads it (seconds), which row 4 would count as the new job's delay. Which worker
    // gets a query is the host's choice, so rounds of warm-up jobs run until every worker has
    // run a query of each model.
    eprintln!("[cluster] warm-up: both models on every worker");
    let n = 4 * a.agents as u32;
    let t = Instant::now();
    let mut ran: Vec<BTreeSet<SocketAddr>> = vec![Default::default(); 2];
    for round in 1..=WARM_ROUNDS {
        let mut warm = Vec::new();
        for m in MODELS {
            set_batch(at, m, 1).await?;
            warm.push(submit(at, m, n, DATASET).await?);
        }
        // A poll that fails (an answer slower than the client's timeout while ten agents
        // load two models on two cores) is retried; the last failure is kept for the error.
        let mut failed: Option<(f64, anyhow::Error)> = None;
        loop {
            match jobs(at).await {
                Ok(js) => {
                    if warm
                        .iter()
                        .all(|id| js.get(id).is_some_and(|j| j.state != JobState::Running))
                    {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!(
                        "[cluster] warm-up poll at {:.1} s: {e:#}",
                        t.elapsed().as_secs_f64()
                    );
                    failed = Some((t.elapsed().as_secs_f64(), e));
                }
            }
            if t.elapsed() >= JOB_TIMEOUT {
                match failed {
                    Some((at_s, e)) => bail!(
                        "warm-up jobs {warm:?} did not finish in {JOB_TIMEOUT:?}; the last failed \
                         poll ({at_s:.1} s in): {e:#}"
                    ),
                    None => bail!("warm-up jobs {warm:?} did not finish in {JOB_TIMEOUT:?}"),
                }
            }
            tokio::time::sleep(POLL).await;
        }
        for (i, id) in warm.iter().enumerate() {
            if let Ok(InferResponse::Job(d)) = infer(at, InferRequest::Job { job: *id }).await {
                ran[i].extend(d.workers.iter().filter(|w| w.queries > 0).map(|w| w.worker));
            }
        }
        let short: Vec<String> = MODELS
            .iter()
            .zip(&ran)
            .filter(|(_, r)| r.len() < a.agents)
            .map(|(m, r)| format!("{m} on {} of {}", r.len(), a.agents))
            .collect();
        if short.is_empty() {
            break;
        }
        eprintln!(
            "[cluster] warm-up round {round}: {} workers so far{}",
            short.join(", "),
            if round < WARM_ROUNDS {
                "; another round"
            } else {
                "; going on"
            }
        );
    }
    eprintln!("[cluster] warm in {:.1} s", t.elapsed().as_secs_f64());

    if !a.fair_only && !a.batching_only {
        let batch = 8;
        let mut row = Throughput {
            model: "resnet50".into(),
            batch,
            agents: a.agents,
            raw_threads: 2,
            ..Throughput::default()
        };
        let r: Result<()> = async {
            let spec = spec("resnet50")?;
            let b = batch_of(files, &spec, batch as usize)?;
            let path = models_dir.join(&spec.file);
            let bare = || raw_rate(path.clone(), spec.clone(), 2, b.clone(), plan.raw_secs);
            let raw = bare().await?;
            row.raw_images_per_s = Some(raw);
            // Two queries in flight per worker: the warm-up lasts about one round of them
            // and the tail is cut.
            let tail = 2 * a.agents as u32 * batch;
            let round = f64::from(tail) / raw;
            let images = job_size(
                raw,
                2.0 * (plan.warm_secs + round) + plan.window_secs,
                batch,
            ) + tail;
            let pids: Vec<u32> = c.cluster.agents.iter().map(|a| a.pid()).collect();
            let (cpu0, t0) = (cpu_now(&pids), Instant::now());
            let sys = system_rate(at, "resnet50", batch, images, plan.warm_secs, tail).await?;
            row.cpu = Some(CpuSplit::between(&cpu0, &cpu_now(&pids), t0.elapsed()));
            row.set_system(raw, bare().await?, sys);
            Ok(())
        }
        .await;
        if let Err(e) = r {
            row.error = Some(format!("{e:#}"));
        }
        eprintln!("[cluster] {}", row_text(&row));
        out.cluster_row = Some(row);
        if a.cluster_only {
            return Ok(());
        }
    }
    if !a.fair_only {
        eprintln!("[batching] dynamic batching row");
        out.batching =
            Some(crate::inference_batching::row(at, c.len(), &BatchPlan::new(a.quick)).await);
        if a.batching_only {
            return Ok(());
        }
    }

    if let Err(e) = shared_phases(
        &mut c,
        via,
        plan,
        &mut out.fairness,
        &mut out.fair_share,
        &mut out.gaps,
        &mut out.latency,
    )
    .await
    {
        eprintln!("[cluster] {e:#}");
        if out.fairness.error.is_none() && out.fairness.windows == 0 {
            out.fairness.error = Some(format!("{e:#}"));
        }
    }
    Ok(())
}

/// One poll of both jobs: (when, queries and done of each).
#[derive(Clone, Copy)]
struct Sample {
    t: Instant,
    qa: u64,
    qb: u64,
    done: u64,
    /// The leader's time shares of a and b: their parts of the worker time of the queries
    /// completed in the last 10 s (0 when unknown).
    ta: f64,
    tb: f64,
}

/// Polls `at` every [`FINE_POLL`] for jobs `a` and `b` (b may be 0: not yet submitted).
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    b: Arc<Mutex<JobId>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(at: SocketAddr, a: JobId) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let b = Arc::new(Mutex::new(0));
        let (s, bb) = (samples.clone(), b.clone());
        let task = tokio::spawn(async move {
            loop {
                let poll = tokio::time::timeout(Duration::from_secs(2), jobs(at)).await;
                if let Ok(Ok(js)) = poll {
                    let b = *bb.lock().unwrap_or_else(|p| p.into_inner());
                    let (qa, da) = js.get(&a).map_or((0, 0), |j| (j.queries, j.done));
                    let (qb, db) = js.get(&b).map_or((0, 0), |j| (j.queries, j.done));
                    let placement = tokio::time::timeout(
                        Duration::from_secs(2),
                        infer(at, InferRequest::Placement),
                    )
                    .await;
                    let (mut ta, mut tb) = (0.0, 0.0);
                    if let Ok(Ok(InferResponse::Placement(ps))) = placement {
                        for p in ps {
                            if p.job == a {
                                ta = p.time_share;
                            } else if p.job == b {
                                tb = p.time_share;
                            }
                        }
                    }
                    s.lock().unwrap_or_else(|p| p.into_inner()).push(Sample {
                        t: Instant::now(),
                        qa,
                        qb,
                        done: u64::from(da) + u64::from(db),
                        ta,
                        tb,
                    });
                }
                tokio::time::sleep(FINE_POLL).await;
            }
        });
        Self { samples, b, task }
    }

    fn set_b(&self, b: JobId) {
        *self.b.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// C2's queries and total compute time (ms) of resnet50 and inceptionv3 so far.
async fn compute_totals(at: SocketAddr) -> Option<[(u64, f64); 2]> {
    let Ok(InferResponse::Latency(l)) = infer(at, InferRequest::Latency).await else {
        return None;
    };
    let total = |m: &str| {
        l.iter()
            .find(|x| x.model == m)
            .map_or((0, 0.0), |x| (x.count, x.count as f64 * x.compute.mean_ms))
    };
    Some([total(MODELS[0]), total(MODELS[1])])
}

/// Mean compute time per query (ms) of resnet50 and inceptionv3 between two C2 snapshots:
/// the queries of this phase only (C2's all-run mean would count row 2's and row 7's
/// queries of 8 and 16 images as resnet50's cost per query).
fn query_costs(from: Option<[(u64, f64); 2]>, to: Option<[(u64, f64); 2]>) -> Option<(f64, f64)> {
    let (from, to) = (from?, to?);
    let cost = |i: usize| {
        let n = to[i].0.checked_sub(from[i].0).filter(|n| *n > 0)?;
        Some((to[i].1 - from[i].1) / n as f64).filter(|c| *c > 0.0)
    };
    Some((cost(0)?, cost(1)?))
}

/// Two resnet50 jobs submitted 0.5 s apart: images each completed 10 s after the first
/// submit; both are cancelled then.
async fn first_seconds(at: SocketAddr, big: u32) -> Result<(u32, u32)> {
    let a = submit(at, MODELS[0], big, DATASET).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = submit(at, MODELS[0], big, DATASET).await?;
    tokio::time::sleep_until((t0 + Duration::from_secs(10)).into()).await;
    let js = jobs(at).await?;
    let done = |id| {
        js.get(&id)
            .map_or(0, |j: &dml_shared::infer::JobInfo| j.done)
    };
    let counts = (done(a), done(b));
    for id in [a, b] {
        infer(at, InferRequest::Cancel { job: id }).await?;
    }
    Ok(counts)
}

/// Phases 3 to 5 on one pair of jobs: fair share, 10 s windows, worker kill, leader kill.
async fn shared_phases(
    c: &mut SdfsCluster,
    via: usize,
    plan: &Plan,
    fairness: &mut Fairness,
    fair_share: &mut FairShare,
    gaps: &mut Vec<Gap>,
    latency: &mut Vec<LatencyInfo>,
) -> Result<()> {
    let at = c.addrs[via];
    let batch = 1;
    fairness.batch = batch;
    for m in MODELS {
        set_batch(at, m, batch).await?;
    }
    // Long enough for every phase at the one-job rate; the cluster is dropped at the end.
    let total = 20.0 + plan.fair_secs + 2.0 * plan.kill_obs_secs + 60.0;
    let big = (40.0 * total) as u32;
    eprintln!("[fair] two resnet50 jobs 0.5 s apart, the first 10 s");
    match first_seconds(at, big).await {
        Ok((da, db)) => {
            fairness.first_10s_images = Some((da, db));
            fairness.first_10s_ratio =
                (da.min(db) > 0).then(|| f64::from(da.max(db)) / f64::from(da.min(db)));
            eprintln!("[fair] first 10 s: {da} vs {db} images");
        }
        Err(e) => eprintln!("[fair] first 10 s: {e:#}"),
    }
    eprintln!("[fair] job A (resnet50) alone");
    let a = submit(at, "resnet50", big, DATASET).await?;
    let sampler = Sampler::start(at, a);
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("[fair] job B (inceptionv3) joins");
    let c2_at_b = compute_totals(at).await;
    let tb = Instant::now();
    let b = submit(at, "inceptionv3", big, DATASET).await?;
    sampler.set_b(b);
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Worker time of a query of each job, from C2 over these 8 s (1 each if unknown: query
    // counts).
    let (ca, cb) = query_costs(c2_at_b, compute_totals(at).await).unwrap_or((1.0, 1.0));
    fair_share.definition = format!(
        "from B's submit to the end of the first window of the last {:.0} s from B's submit on \
         (sampled every {} ms) in which B's completed queries took at least {:.0}% of A's worker \
         time (queries x C2 mean compute of the queries since B's submit); both models already \
         loaded. 'whole windows': windows of a whole {:.0} s, which may start before B's submit",
        SHARE_WINDOW.as_secs_f64(),
        FINE_POLL.as_millis(),
        SHARE * 100.0,
        SHARE_WINDOW.as_secs_f64(),
    );
    let s = sampler.snapshot();
    fair_share.first_completion_s = s
        .iter()
        .find(|x| x.t > tb && x.qb > 0)
        .map(|x| x.t.duration_since(tb).as_secs_f64());
    // The first sample whose window (from the sample `SHARE_WINDOW` before it, or with
    // `clip` from the last sample before B's submit if that is later) shows B at its share.
    let reached = |clip: bool| {
        s.iter().enumerate().find_map(|(i, x)| {
            if x.t <= tb {
                return None;
            }
            let whole = s[..i]
                .iter()
                .rposition(|y| x.t.duration_since(y.t) >= SHARE_WINDOW);
            let submit = s[..i].iter().rposition(|y| y.t <= tb);
            let j = if clip { whole.max(submit) } else { whole }?;
            let (da, db) = ((x.qa - s[j].qa) as f64 * ca, (x.qb - s[j].qb) as f64 * cb);
            (da > 0.0 && db >= SHARE * da).then(|| x.t.duration_since(tb).as_secs_f64())
        })
    };
    fair_share.seconds = reached(true);
    fair_share.whole_window_s = reached(false);
    if fair_share.seconds.is_none() {
        fair_share.error = Some("B did not reach its share within 8 s".into());
    }
    eprintln!(
        "[fair] share after {:?} s (whole windows {:?} s; first completion {:?} s)",
        fair_share.seconds, fair_share.whole_window_s, fair_share.first_completion_s
    );

    // 10 s windows from 2 s after B's submit, one starting every second.
    let from = tb + Duration::from_secs(2);
    let until = from + Duration::from_secs_f64(plan.fair_secs);
    tokio::time::sleep_until(from.into()).await;
    let c2_from = compute_totals(at).await;
    tokio::time::sleep_until(until.into()).await;
    let s = sampler.snapshot();
    let shared: Vec<Sample> = s
        .iter()
        .copied()
        .filter(|x| x.t >= from && x.t <= until)
        .collect();
    fairness.costs_ms = query_costs(c2_from, compute_totals(at).await);
    let (ca, cb) = fairness.costs_ms.unwrap_or((1.0, 1.0));
    let mut ratios = Vec::new();
    let mut spreads = Vec::new();
    let mut next = from;
    for (i, x) in shared.iter().enumerate() {
        if x.t < next {
            continue;
        }
        let Some(y) = shared[i..]
            .iter()
            .find(|y| y.t.duration_since(x.t) >= FAIR_WINDOW)
        else {
            break;
        };
        // The leader's shares at the window's end cover the same 10 s; C2's mean costs
        // if it did not answer.
        let (da, db) = if y.ta > 0.0 && y.tb > 0.0 {
            (y.ta, y.tb)
        } else {
            ((y.qa - x.qa) as f64 * ca, (y.qb - x.qb) as f64 * cb)
        };
        ratios.push(if da.min(db) > 0.0 {
            da.max(db) / da.min(db)
        } else {
            f64::INFINITY
        });
        // The window's worker time from its query counts and C2's costs, split as the
        // shares say.
        if fairness.costs_ms.is_some() && da + db > 0.0 {
            let work = (y.qa - x.qa) as f64 * ca + (y.qb - x.qb) as f64 * cb;
            spreads.push((da - db).abs() / (da + db) * work / ca.max(cb));
        }
        next = x.t + Duration::from_secs(1);
    }
    if let (Some(f), Some(l)) = (shared.first(), shared.last()) {
        fairness.queries = (l.qa - f.qa, l.qb - f.qb);
        fairness.shared_s = l.t.duration_since(f.t).as_secs_f64();
    }
    fairness.windows = ratios.len();
    if ratios.is_empty() {
        fairness.error = Some("no complete 10 s window".into());
    } else {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        fairness.worst = sorted.last().copied();
        fairness.median = Some(sorted[sorted.len() / 2]);
        fairness.worst_gap_queries = spreads.iter().copied().reduce(f64::max);
        fairness.ratios = ratios;
    }
    if fairness.costs_ms.is_some() {
        // Each 30 s window is three 10 s ones end to end: each one's worker time from its
        // query counts and C2's costs, split between the jobs as the leader's shares at its
        // end say (they cover its 10 s), so a query's own compute time counts.
        let segment = |i: usize| -> Option<(usize, f64, f64)> {
            let x = shared[i];
            let j = i + shared[i..]
                .iter()
                .position(|y| y.t.duration_since(x.t) >= FAIR_WINDOW)?;
            let y = shared[j];
            let work = (y.qa - x.qa) as f64 * ca + (y.qb - x.qb) as f64 * cb;
            let (da, db) = if y.ta > 0.0 && y.tb > 0.0 {
                (y.ta * work, y.tb * work)
            } else {
                ((y.qa - x.qa) as f64 * ca, (y.qb - x.qb) as f64 * cb)
            };
            Some((j, da, db))
        };
        let mut long = Vec::new();
        let mut next = from;
        for (i, x) in shared.iter().enumerate() {
            if x.t < next {
                continue;
            }
            let mut whole = Some((i, 0.0, 0.0));
            for _ in 0..LONG_SEGMENTS {
                whole =
                    whole.and_then(|(at, da, db)| segment(at).map(|(j, a, b)| (j, da + a, db + b)));
            }
            let Some((_, da, db)) = whole else {
                break;
            };
            if da.min(db) > 0.0 {
                long.push(da.max(db) / da.min(db));
            }
            next = x.t + Duration::from_secs(1);
        }
        long.sort_by(f64::total_cmp);
        fairness.long_windows = long.len();
        fairness.long_worst = long.last().copied();
        fairness.long_median = long.get(long.len() / 2).copied();
    }
    eprintln!(
        "[fair] {} windows, worst {:?}, median {:?}, queries {:?} in {:.1} s",
        fairness.windows, fairness.worst, fairness.median, fairness.queries, fairness.shared_s
    );

    // C2 before the kills (a new leader rebuilds it from the workers, less a dead one's).
    if let Ok(InferResponse::Latency(l)) = infer(at, InferRequest::Latency).await {
        *latency = l;
    }
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await?;
    let victim = (0..c.len())
        .find(|&i| i != leader && i != via)
        .context("no worker to kill")?;
    gaps.push(kill_gap(c, &sampler, victim, "worker", plan.kill_obs_secs).await);
    let live: Vec<usize> = (0..c.len()).filter(|&i| i != victim).collect();
    let leader = c.leader_index(&live, READY).await?;
    gaps.push(kill_gap(c, &sampler, leader, "leader", plan.kill_obs_secs).await);
    Ok(())
}

/// SIGKILLs agent `i` and measures the longest interval without a completed image.
async fn kill_gap(c: &mut SdfsCluster, sampler: &Sampler, i: usize, what: &str, obs: f64) -> Gap {
    let mut g = Gap {
        what: what.into(),
        killed: Some(c.addrs[i].to_string()),
        ..Gap::default()
    };
    eprintln!("[kill] SIGKILL of the {what} {}", c.addrs[i]);
    let tk = Instant::now();
    if let Err(e) = c.agent(i).kill() {
        g.error = Some(format!("{e:#}"));
        return g;
    }
    tokio::time::sleep(Duration::from_secs_f64(obs)).await;
    let _ = c.kill(i).await;
    let s = sampler.snapshot();
    let longest = |from: Instant, to: Instant| -> Option<f64> {
        // Times at which the done count grew, within [from, to].
        let mut grew: Vec<Instant> = vec![from];
        for w in s.windows(2) {
            if w[1].t >= from && w[1].t <= to && w[1].done > w[0].done {
                grew.push(w[1].t);
            }
        }
        grew.push(to);
        grew.windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64())
            .reduce(f64::max)
    };
    let before = tk.checked_sub(Duration::from_secs(5)).unwrap_or(tk);
    g.baseline_gap_s = longest(before, tk);
    let end = s.last().map_or(tk, |x| x.t);
    let from = tk.checked_sub(Duration::from_secs(2)).unwrap_or(tk);
    g.gap_s = longest(from, end);
    eprintln!(
        "[kill] {what}: longest gap {:?} s (before the kill {:?} s)",
        g.gap_s, g.baseline_gap_s
    );
    g
}

/// The agent's preprocessing + inference against `reference.py` on the first PNGs.
async fn numerics(models_dir: &Path, files: &[PathBuf]) -> Numerics {
    let mut n = Numerics {
        model: "resnet50".into(),
        ..Numerics::default()
    };
    let r: Result<()> = async {
        let spec = spec("resnet50")?;
        let model = models_dir.join(&spec.file);
        // PNG only: JPEG decoders may differ by a unit in a pixel.
        let pngs: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "png"))
            .take(4)
            .cloned()
            .collect();
        ensure!(!pngs.is_empty(), "no PNG in the dataset");
        n.images = pngs.len();
        let python = repo().join(".venv/bin/python");
        let triple = |v: [f32; 3]| format!("{},{},{}", v[0], v[1], v[2]);
        let out = tokio::process::Command::new(&python)
            .arg(repo().join("scripts/models/reference.py"))
            .arg("--model")
            .arg(&model)
            .args(["--input-size", &spec.input_size.to_string()])
            .args(["--resize", &spec.resize.to_string()])
            .args(["--mean", &triple(spec.mean), "--std", &triple(spec.std)])
            .arg("--dump-input")
            .args(&pngs)
            .output()
            .await
            .with_context(|| format!("cannot run {}", python.display()))?;
        ensure!(
            out.status.success(),
            "reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let rows = |key: &str| -> Result<Vec<Vec<f64>>> {
            want[key]
                .as_array()
                .with_context(|| format!("no {key} in reference output"))?
                .iter()
                .map(|r| {
                    r.as_array()
                        .context("row")?
                        .iter()
                        .map(|x| x.as_f64().context("number"))
                        .collect()
                })
                .collect()
        };
        let (w_in, w_logits, w_probs) = (rows("inputs")?, rows("logits")?, rows("probs")?);
        let files = pngs.clone();
        let sp = spec.clone();
        let (inputs, logits) = tokio::task::spawn_blocking(move || -> Result<_> {
            let inputs: Vec<_> = files
                .iter()
                .map(|f| Ok(preprocess(&std::fs::read(f)?, &sp)?))
                .collect::<Result<_>>()?;
            let mut s = Session::load(&model, &sp, 1)?;
            let logits = s.logits(stack(&inputs).view())?;
            Ok((inputs, logits))
        })
        .await??;
        let diff = |a: &[f32], b: &[f64]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (f64::from(*x) - y).abs())
                .fold(
                    if a.len() == b.len() {
                        0.0
                    } else {
                        f64::INFINITY
                    },
                    f64::max,
                )
        };
        let (mut di, mut dl, mut dp) = (0f64, 0f64, 0f64);
        for i in 0..pngs.len() {
            let inp: Vec<f32> = inputs[i].iter().copied().collect();
            di = di.max(diff(&inp, &w_in[i]));
            let row: Vec<f32> = logits.row(i).to_vec();
            dl = dl.max(diff(&row, &w_logits[i]));
            let mut probs = vec![0f32; row.len()];
            for p in top_k(&row, &spec.labels, row.len()) {
                probs[p.class as usize] = p.score;
            }
            dp = dp.max(diff(&probs, &w_probs[i]));
        }
        n.max_input_diff = Some(di);
        n.max_logit_diff = Some(dl);
        n.max_prob_diff = Some(dp);
        Ok(())
    }
    .await;
    if let Err(e) = r {
        n.error = Some(format!("{e:#}"));
    }
    n
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

fn row_text(r: &Throughput) -> String {
    format!(
        "{:<12} {:>5} {:>13} {:>10} {:>7} {:>13}{}",
        r.model,
        r.batch,
        opt(r.system_images_per_s, 2),
        opt(r.raw_images_per_s, 2),
        opt(r.ratio, 3),
        match (r.window_s, r.window_images) {
            (Some(s), Some(n)) => format!("{n} in {s:.1} s"),
            _ => "-".into(),
        },
        r.error
            .as_ref()
            .map_or_else(String::new, |e| format!("  ERROR: {e}"))
    )
}

fn batching_heading() -> &'static str {
    "7. dynamic batching: p99 query time at the batch size a p99 target chose vs the fixed batch \
     of the same throughput (that size, target off)"
}

fn table(d: &Document, agents: usize) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "command: {}", d.command);
    let _ = writeln!(
        t,
        "load average before {} / after {}{}",
        d.load_before,
        d.load_after,
        if d.models_built_now {
            "; models built by this run"
        } else {
            ""
        }
    );
    if d.batching_only {
        if let Some(b) = &d.batching {
            let _ = writeln!(t, "\n{}", batching_heading());
            let _ = write!(t, "{}", crate::inference_batching::text(b));
        }
        return t;
    }
    let head = format!(
        "{:<12} {:>5} {:>13} {:>10} {:>7} {:>13}",
        "model", "batch", "system img/s", "raw img/s", "ratio", "window"
    );
    let _ = writeln!(
        t,
        "\n1. one agent, intra_threads 1 vs a bare ORT loop, 1 thread (target ratio >= 0.95)"
    );
    let _ = writeln!(t, "{head}");
    for r in &d.one_agent {
        let _ = writeln!(t, "{}", row_text(r));
    }
    let _ = writeln!(
        t,
        "\n2. {agents} agents, intra_threads 1 each, vs one bare ORT loop with 2 threads (target >= 0.95)"
    );
    let _ = writeln!(t, "{head}");
    if let Some(r) = &d.cluster {
        let _ = writeln!(t, "{}", row_text(r));
        if let Some(cpu) = &r.cpu {
            let mut threads: Vec<(&String, &f64)> = cpu.by_thread.iter().collect();
            threads.sort_by(|a, b| b.1.total_cmp(a.1));
            let threads: Vec<String> = threads
                .iter()
                .take(6)
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect();
            let _ = writeln!(
                t,
                "   CPU over the job's {:.1} s: the agents {:.1} s of the machine's {:.1} busy s \
                 (by thread: {})",
                cpu.wall_s,
                cpu.agents_s,
                cpu.machine_busy_s,
                threads.join(", ")
            );
        }
    }
    let f = &d.fairness;
    let _ = writeln!(
        t,
        "\n3. two resnet50 jobs submitted 0.5 s apart, max/min images completed in the first 10 s (target <= 1.2): {}{}\n   resnet50 + inceptionv3 jobs at batch {}, max/min worker time over 10 s windows (the leader's time shares; C2 mean compute per query {}) (target <= 1.03)\n   {} windows (one a second) over {:.1} s: worst {}, median {}; widest gap {} queries of the costlier model; queries {} vs {}{}\n   {} windows of {} s (three 10 s windows end to end, each one's worker time split by the leader's shares; a query of each job at each end is about 1 %): worst {}, median {}",
        opt(f.first_10s_ratio, 3),
        f.first_10s_images
            .map_or_else(String::new, |(a, b)| format!(" ({a} vs {b} images)")),
        f.batch,
        f.costs_ms.map_or_else(
            || "unknown, so query counts".into(),
            |(a, b)| format!("{a:.1} vs {b:.1} ms")
        ),
        f.windows,
        f.shared_s,
        opt(f.worst, 3),
        opt(f.median, 3),
        opt(f.worst_gap_queries, 2),
        f.queries.0,
        f.queries.1,
        f.error
            .as_ref()
            .map_or_else(String::new, |e| format!("  ERROR: {e}")),
        f.long_windows,
        LONG_SEGMENTS * 10,
        opt(f.long_worst, 3),
        opt(f.long_median, 3),
    );
    let s = &d.fair_share;
    let _ = writeln!(
        t,
        "\n4. new job to its fair share (target <= 1 s): {} s (first completion {} s; whole windows {} s){}\n   definition: {}",
        opt(s.seconds, 2),
        opt(s.first_completion_s, 2),
        opt(s.whole_window_s, 2),
        s.error
            .as_ref()
            .map_or_else(String::new, |e| format!("  ERROR: {e}")),
        s.definition
    );
    let _ = writeln!(
        t,
        "\n5. longest interval with no completed image, from 2 s before a SIGKILL (50 ms polls)"
    );
    for g in &d.gaps {
        let _ = writeln!(
            t,
            "   {:<7} {:>7} s   (5 s before the kill: {} s){}",
            g.what,
            opt(g.gap_s, 2),
            opt(g.baseline_gap_s, 2),
            g.error
                .as_ref()
                .map_or_else(String::new, |e| format!("  ERROR: {e}"))
        );
    }
    let n = &d.numerics;
    let _ = writeln!(
        t,
        "\n6. numerics, built {} on {} PNGs vs reference.py: max |diff| input {}, logits {}, probs {}{}",
        n.model,
        n.images,
        opt(n.max_input_diff, 8),
        opt(n.max_logit_diff, 8),
        opt(n.max_prob_diff, 8),
        n.error
            .as_ref()
            .map_or_else(String::new, |e| format!("  ERROR: {e}"))
    );
    if let Some(b) = &d.batching {
        let _ = writeln!(t, "\n{}", batching_heading());
        let _ = write!(t, "{}", crate::inference_batching::text(b));
    }
    if !d.latency.is_empty() {
        let _ = writeln!(
            t,
            "\nC2 query latency on the {agents}-agent cluster before the kills, all phases (ms)"
        );
        let _ = writeln!(
            t,
            "{:<12} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "model", "count", "mean", "p50", "p99", "max"
        );
        for l in &d.latency {
            let _ = writeln!(
                t,
                "{:<12} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                l.model, l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
    t
}
