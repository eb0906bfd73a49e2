//! The leader task on a virtual clock: a paused tokio runtime drives the
//! real task (`task.rs`, `serve.rs`, the core) through simulated ports, in
//! which Raft applies each entry to an in-memory state after a delay, or
//! never while it is cut off from its quorum.

use super::core::{CoreConfig, ScanJob, Scanned};
use super::error::{ControlError, Refusal};
use super::ports::{BoxFuture, Pending, Ports, Status};
use super::repair::Copy;
use super::serve::{LiveView, ServeConfig};
use super::state::MetaState;
use super::task::{self, LeaderHandle, TaskConfig};
use super::types::{Applied, Command, Op};
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::infer::{
    ImageResult, InferRequest, InferResponse, JobId, JobState, Lease, Outcome,
};
use dml_shared::models::Registry;
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const TERM: u64 = 3;
/// Time for an entry to commit and apply.
const COMMIT: Duration = Duration::from_millis(5);
const LEADER_WAIT: Duration = Duration::from_secs(2);
const MIN_LEASE: Duration = Duration::from_secs(3);
const MODEL: &str = "tiny";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Raft, the state and membership, simulated.
struct Sim {
    state: Mutex<MetaState>,
    status: watch::Sender<Status>,
    /// Cut off from the quorum: entries never apply, quorum rounds fail.
    cut_off: AtomicBool,
    /// Deposed after each append: Raft answers "not leader", and a later
    /// leader commits the entry all the same.
    deposed: AtomicBool,
    /// Entries committed before the task started but not applied yet: Raft applies them
    /// before the next entry.
    backlog: Mutex<Vec<Command>>,
    workers: Vec<SocketAddr>,
    /// Holds the next repair and balance scan on its blocking thread: it
    /// says it started, then waits to be let go before it scans.
    scan_hold: Mutex<Option<(oneshot::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl Sim {
    fn apply(&self, cmd: &Command) -> Applied {
        for earlier in std::mem::take(&mut *self.backlog.lock().unwrap()) {
            self.state.lock().unwrap().apply(&earlier);
        }
        let applied = self.state.lock().unwrap().apply(cmd);
        self.status.send_modify(|s| {
            let index = s.applied.map_or(1, |(_, i)| i + 1);
            s.applied = Some((TERM, index));
        });
        applied
    }
}

impl Ports for Arc<Sim> {
    fn read<T>(&self, f: impl FnOnce(&MetaState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    fn submit(&self, cmd: Command) -> BoxFuture<'_, Result<Pending, Refusal>> {
        let me = self.clone();
        Box::pin(async move {
            let pending: Pending = if me.cut_off.load(Ordering::SeqCst) {
                Box::pin(std::future::pending())
            } else if me.deposed.load(Ordering::SeqCst) {
                Box::pin(async move {
                    tokio::time::sleep(COMMIT).await;
                    me.apply(&cmd);
                    Err(Refusal::NotLeader(Some(addr(9))))
                })
            } else {
                Box::pin(async move {
                    tokio::time::sleep(COMMIT).await;
                    Ok((me.apply(&cmd), TERM))
                })
            };
            Ok(pending)
        })
    }

    fn confirm(&self) -> BoxFuture<'static, Result<(), Refusal>> {
        let cut_off = self.cut_off.load(Ordering::SeqCst);
        Box::pin(async move {
            if cut_off {
                tokio::time::sleep(LEADER_WAIT).await;
                return Err(ControlError::NoQuorum {
                    waited: LEADER_WAIT,
                }
                .into());
            }
            tokio::time::sleep(COMMIT).await;
            Ok(())
        })
    }

    fn view(&self) -> BoxFuture<'static, LiveView> {
        let w = self.workers.clone();
        Box::pin(async move {
            LiveView {
                live: w.clone(),
                alive: w,
            }
        })
    }

    fn copy(&self, _: Copy) -> BoxFuture<'static, Option<Op>> {
        Box::pin(async { None })
    }

    fn scan(&self, job: ScanJob, files: MetaState) -> BoxFuture<'static, Option<Scanned>> {
        let hold = self.scan_hold.lock().unwrap().take();
        let run = tokio::task::spawn_blocking(move || {
            if let Some((started, go)) = hold {
                let _ = started.send(());
                let _ = go.recv();
            }
            job.run(&files)
        });
        Box::pin(async move { run.await.ok() })
    }

    fn store_output(&self, job: JobId, _: Vec<ImageResult>) -> BoxFuture<'static, Option<String>> {
        Box::pin(async move { Some(format!("jobs/{job}/output.jsonl")) })
    }

    fn read_output(&self, _: String) -> BoxFuture<'static, Result<Vec<ImageResult>, ControlError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A leader task of term [`TERM`] over a simulated cluster of `workers`.
fn start(workers: usize) -> (Arc<Sim>, LeaderHandle) {
    let sim = sim(workers, MetaState::default());
    let handle = spawn_task(&sim, 1);
    (sim, handle)
}

/// A simulated cluster of `workers` with `state` applied.
fn sim(workers: usize, state: MetaState) -> Arc<Sim> {
    let status = Status {
        leading: true,
        term: TERM,
        applied: None,
    };
    let (tx, _) = watch::channel(status);
    Arc::new(Sim {
        state: Mutex::new(state),
        status: tx,
        cut_off: AtomicBool::new(false),
        deposed: AtomicBool::new(false),
        backlog: Mutex::new(Vec::new()),
        workers: (1..=workers as u16).map(addr).collect(),
        scan_hold: Mutex::new(None),
    })
}

/// A new leader task of term [`TERM`] over `sim` (as after a restart that
/// kept the term), keeping `replicas` copies of each version.
fn spawn_task(sim: &Arc<Sim>, replicas: usize) -> LeaderHandle {
    let cfg = TaskConfig {
        core: CoreConfig {
            min_lease: MIN_LEASE,
            forget_plans: Duration::from_secs(60),
            put_timeout: Duration::from_secs(30),
            read_lease: Duration::from_millis(500),
            repair_bounds: super::repair::Bounds {
                per_source: 2,
                per_target: 2,
            },
            replicas,
            balance_threshold: Some(0.1),
            registry: Arc::new(Registry::builtin()),
        },
        serve: ServeConfig {
            replicas,
            write_quorum: 1,
            put_timeout: Duration::from_secs(30),
            max_lease_wait: Duration::from_secs(5),
            keyring_seed: None,
            keyring_encrypted: true,
        },
        leader_wait: LEADER_WAIT,
        maintenance_period: Duration::from_millis(500),
    };
    let (handle, _task) = task::spawn(sim.clone(), cfg, TERM, sim.status.subscribe(), None);
    handle
}

async fn sdfs(h: &LeaderHandle, req: MetaRequest) -> Result<MetaResponse, ControlError> {
    match h.serve(ControlRequest::Sdfs(req)).await {
        Ok(ControlResponse::Sdfs(r)) => Ok(r),
        Ok(other) => panic!("not an SDFS answer: {other:?}"),
        Err(Refusal::Failed(e)) => Err(e),
        Err(Refusal::NotLeader(_)) => panic!("the simulated leader always leads"),
    }
}

async fn infer(h: &LeaderHandle, req: InferRequest) -> InferResponse {
    match h.serve(ControlRequest::Infer(req)).await {
        Ok(ControlResponse::Infer(r)) => r,
        Ok(other) => panic!("not an inference answer: {other:?}"),
        Err(Refusal::Failed(e)) => panic!("refused: {e}"),
        Err(Refusal::NotLeader(_)) => panic!("not leader"),
    }
}

/// Puts `name` (`size` bytes) through the task: plan, then commit.
async fn put(h: &LeaderHandle, name: &str, size: u64) -> Result<u64, ControlError> {
    let MetaResponse::PutPlan {
        version,
        chain,
        plan,
        ..
    } = sdfs(
        h,
        MetaRequest::BeginPut {
            name: name.into(),
            size,
        },
    )
    .await?
    else {
        panic!("BeginPut answers a plan");
    };
    let commit = MetaRequest::CommitPut {
        name: name.into(),
        version,
        checksum: [7; 32],
        holders: chain,
        plan,
    };
    match sdfs(h, commit).await? {
        MetaResponse::Committed { version } => Ok(version),
        other => panic!("CommitPut answered {other:?}"),
    }
}

fn results(lease: &Lease) -> Vec<ImageResult> {
    lease
        .images
        .iter()
        .map(|(index, image, _)| ImageResult {
            index: *index,
            image: image.clone(),
            outcome: Outcome::Error("simulated".into()),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_job_over_four_workers_survives_a_lease_that_expires() {
    let (sim, h) = start(4);
    let model = Registry::builtin().get(MODEL).unwrap().sdfs_name();
    put(&h, &model, 100).await.unwrap();
    for i in 0..24 {
        put(&h, &format!("data/img{i:02}"), 100).await.unwrap();
    }
    let submit = InferRequest::Submit {
        model: MODEL.into(),
        count: None,
        dataset: "data".into(),
        weight: 1,
    };
    let InferResponse::Submitted { job, images } = infer(&h, submit).await else {
        panic!("submit answers the job");
    };
    assert_eq!(images, 24);

    // Worker 4 takes one query and is never heard from again; the others
    // run theirs at once, one after another, each 100 ms.
    let lease = |w: SocketAddr| InferRequest::Lease {
        worker: w,
        wait_ms: 1000,
        figures: None,
    };
    let InferResponse::Lease(Some(stalled)) = infer(&h, lease(sim.workers[3])).await else {
        panic!("work for worker 4");
    };
    let start = tokio::time::Instant::now();
    let mut leased: BTreeMap<u32, Vec<SocketAddr>> = BTreeMap::new();
    let mut accepted = 0;
    let mut workers = tokio::task::JoinSet::new();
    for &w in &sim.workers[..3] {
        let (h, sim) = (h.clone(), sim.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            let mut new = 0;
            loop {
                match infer(&h, lease(w)).await {
                    InferResponse::Lease(Some(l)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        seen.push((l.images.iter().map(|i| i.0).collect::<Vec<_>>(), w));
                        let done = InferRequest::Complete {
                            worker: w,
                            query: l.query,
                            job: l.job,
                            results: results(&l),
                            queue_us: 0,
                            compute_us: 100_000,
                            batch_images: 0,
                            failed: None,
                        };
                        let InferResponse::Accepted { new: n } = infer(&h, done).await else {
                            panic!("a completion is accepted");
                        };
                        new += n;
                    }
                    // No work within the wait: done, or ask again.
                    InferResponse::Lease(None) => {
                        let state = sim.state.lock().unwrap();
                        if state.jobs.jobs[&job].state == JobState::Done {
                            return (seen, new);
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        let (seen, new) = r.unwrap();
        accepted += new;
        for (images, w) in seen {
            for i in images {
                leased.entry(i).or_default().push(w);
            }
        }
    }
    let state = sim.state.lock().unwrap();
    let j = &state.jobs.jobs[&job];
    assert_eq!(j.state, JobState::Done);
    assert_eq!(j.info(job).done, 24, "every image has one result");
    assert_eq!(accepted, 24, "each image counted once");
    // The stalled worker's images ran elsewhere, after its lease ran out.
    for (i, _, _) in &stalled.images {
        assert!(
            leased.get(i).is_some_and(|w| !w.contains(&sim.workers[3])),
            "image {i} was leased again to a live worker"
        );
    }
    assert!(
        start.elapsed() >= MIN_LEASE,
        "the job waited for the stalled lease to expire ({:?})",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_put_plan_that_times_out_fails_its_commit_and_a_later_put_proceeds() {
    let (sim, h) = start(2);
    let big = super::plans::DEFER_MAX + 1;
    put(&h, "f", big).await.unwrap();

    // Cut off (the read lease still runs): the plan is answered at once,
    // appended but never applied...
    sim.cut_off.store(true, Ordering::SeqCst);
    let MetaResponse::PutPlan {
        version,
        plan,
        chain,
        ..
    } = sdfs(
        &h,
        MetaRequest::BeginPut {
            name: "f".into(),
            size: big,
        },
    )
    .await
    .unwrap()
    else {
        panic!("BeginPut answers a plan");
    };
    let asked = tokio::time::Instant::now();
    let commit = MetaRequest::CommitPut {
        name: "f".into(),
        version,
        checksum: [7; 32],
        holders: chain,
        plan,
    };
    // ...but its commit waits for the plan's entry, which times out.
    let e = sdfs(&h, commit).await.unwrap_err();
    assert!(matches!(e, ControlError::NoQuorum { .. }), "{e}");
    assert!(asked.elapsed() <= LEADER_WAIT * 2, "{:?}", asked.elapsed());

    // Back in touch: the next put of the same name commits.
    sim.cut_off.store(false, Ordering::SeqCst);
    let v = put(&h, "f", big).await.unwrap();
    let state = sim.state.lock().unwrap();
    let versions: Vec<u64> = state
        .stat("f")
        .unwrap()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions.last(), Some(&v));
    assert!(!versions.contains(&version) || version == v, "{versions:?}");
}

#[tokio::test(start_paused = true)]
async fn a_delete_whose_leader_stepped_down_is_settled_not_sent_again() {
    let (sim, h) = start(2);
    put(&h, "f", 100).await.unwrap();
    sim.deposed.store(true, Ordering::SeqCst);
    let answer = h
        .serve(ControlRequest::Sdfs(MetaRequest::Delete {
            name: "f".into(),
        }))
        .await;
    // A redirect would have the client send it to the next leader, which has
    // committed it: "no such file" for a delete that took effect.
    let Ok(ControlResponse::Sdfs(MetaResponse::DeleteUnconfirmed { term, .. })) = answer else {
        panic!("a delete appended before the step-down is unconfirmed: {answer:?}");
    };
    assert_eq!(term, TERM);
    assert!(
        sim.state.lock().unwrap().stat("f").is_none(),
        "a later leader committed it"
    );

    // A request that may run twice is redirected as before.
    let submit = InferRequest::SetBatchSize {
        model: MODEL.into(),
        size: 2,
    };
    let answer = h.serve(ControlRequest::Infer(submit)).await;
    assert!(
        matches!(answer, Err(Refusal::NotLeader(Some(a))) if a == addr(9)),
        "{answer:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_back_in_its_own_term_reads_nothing_before_its_barrier_applies() {
    let (sim, h) = start(2);
    put(&h, "f", 100).await.unwrap();
    drop(h);
    // Restarted in the same term: a delete of "f" was committed before the restart and is
    // not applied yet (the committed index on disk lagged).
    sim.backlog.lock().unwrap().push(Command {
        now_ms: 1,
        op: Op::Delete { name: "f".into() },
    });
    let h = spawn_task(&sim, 1);
    let e = sdfs(&h, MetaRequest::Stat { name: "f".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ControlError::NoSuchFile(_)),
        "a stale read: {e}"
    );
}

/// The repair and balance scan of every version runs off the leader task:
/// while one over a large state is in progress (held on its thread), a put
/// and a read are served; once it ends, its trim is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_serves_while_a_scan_of_every_version_is_in_progress() {
    const VERSIONS: u64 = 100_000;
    const WAIT: Duration = Duration::from_secs(120);
    let workers: Vec<SocketAddr> = (1..=4).map(addr).collect();
    let gone = addr(99);
    // Every version on its placement over the 4 workers (nothing to repair
    // or move), and one whose replica set still names an agent gone.
    let placer = super::placement::Placer::new(&workers);
    let mut state = MetaState::default();
    let ops: Vec<Op> = (0..VERSIONS)
        .map(|i| Op::PutAt {
            name: super::state::scale::name(i),
            version: 1,
            size: 100,
            checksum: [1; 32],
            holders: placer.place(&super::state::scale::name(i), 2),
            quorum: 1,
        })
        .chain(std::iter::once(Op::PutAt {
            name: "trim-me".into(),
            version: 1,
            size: 100,
            checksum: [1; 32],
            holders: placer
                .place("trim-me", 2)
                .into_iter()
                .chain([gone])
                .collect(),
            quorum: 1,
        }))
        .collect();
    state.apply(&Command {
        now_ms: 1,
        op: Op::Batch { ops },
    });
    let sim = sim(4, state);
    let (started_tx, started) = oneshot::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    *sim.scan_hold.lock().unwrap() = Some((started_tx, go_rx));
    let h = spawn_task(&sim, 2);

    tokio::time::timeout(WAIT, started)
        .await
        .expect("the first maintenance pass starts a scan")
        .unwrap();
    // The scan is in progress: the leader still plans, commits and reads.
    let served = async {
        let v = put(&h, "during-the-scan", 10).await.unwrap();
        let MetaResponse::File(f) = sdfs(
            &h,
            MetaRequest::Stat {
                name: "during-the-scan".into(),
            },
        )
        .await
        .unwrap() else {
            panic!("Stat answers the file");
        };
        assert_eq!(f.versions.last().map(|x| x.version), Some(v));
    };
    tokio::time::timeout(WAIT, served)
        .await
        .expect("the leader answers while the scan is in progress");
    assert!(
        has_holder(&sim, "trim-me", gone),
        "the scan has not ended yet"
    );

    // Let it go: it scans every version, and the trim it found is appended.
    go.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while has_holder(&sim, "trim-me", gone) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scan's trim was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_holder(sim: &Sim, name: &str, holder: SocketAddr) -> bool {
    let state = sim.state.lock().unwrap();
    state.version(name, 1).unwrap().replicas.contains(&holder)
}
