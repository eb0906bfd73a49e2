//! The leader core (`control::core::LeaderCore`, the state the leader task
//! owns) driven by hand with a virtual clock: the applied state is a
//! `MetaState` the test applies entries to, as Raft would, and time is the
//! `now` each call takes. No Raft, no sockets, no sleeps.

use dml_agent::control::core::{CoreConfig, LeaderCore};
use dml_agent::control::plans::{Claim, Claimed, DEFER_MAX, PlanRequest};
use dml_agent::control::scheduler::Completion;
use dml_agent::control::state::MetaState;
use dml_agent::control::types::{Applied, Command, Op};
use dml_agent::latency::QueryTime;
use dml_shared::infer::{ImageResult, JobId, JobState, Outcome};
use dml_shared::models::Registry;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(10);
const PUT_TIMEOUT: Duration = Duration::from_secs(30);
const MODEL: &str = "tiny";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn core(now: Instant) -> LeaderCore {
    LeaderCore::new(
        1,
        CoreConfig {
            min_lease: LEASE,
            forget_plans: PUT_TIMEOUT * 2,
            put_timeout: PUT_TIMEOUT,
            read_lease: Duration::from_millis(75),
            repair_bounds: dml_agent::control::repair::Bounds {
                per_source: 4,
                per_target: 4,
            },
            replicas: 4,
            balance_threshold: Some(0.1),
            registry: Arc::new(Registry::builtin()),
        },
        now,
    )
}

/// The applied state and its clock: `apply` stamps entries with the
/// virtual time, as the leader stamps `Command::now_ms`.
struct World {
    state: MetaState,
    start: Instant,
    now: Instant,
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: MetaState::default(),
            start: now,
            now,
        }
    }

    fn now_ms(&self) -> u64 {
        1_000_000 + self.now.duration_since(self.start).as_millis() as u64
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn apply(&mut self, op: Op) -> Applied {
        let now_ms = self.now_ms();
        self.state.apply(&Command { now_ms, op })
    }

    /// A committed small file, planned and committed through `core`.
    fn put(&mut self, core: &mut LeaderCore, name: &str) -> Applied {
        let version = self.plan(core, name, 10).version;
        let Claim::Now(Ok(Claimed::Deferred { size, .. })) = core.plans().claim(name, version, 1)
        else {
            panic!("a small plan is claimed at once");
        };
        self.apply(Op::PutAt {
            name: name.into(),
            version,
            size,
            checksum: [7; 32],
            holders: vec![addr(1)],
            quorum: 1,
        })
    }

    fn plan(
        &mut self,
        core: &mut LeaderCore,
        name: &str,
        size: u64,
    ) -> dml_agent::control::plans::Planned {
        let req = PlanRequest {
            name: name.into(),
            size,
            replicas: vec![addr(1)],
            deadline_ms: self.now_ms() + PUT_TIMEOUT.as_millis() as u64,
        };
        let state = &self.state;
        core.plans().plan(req, |n| state.next_version(n), self.now)
    }
}

fn results(images: &[u32]) -> Vec<ImageResult> {
    images
        .iter()
        .map(|i| ImageResult {
            index: *i,
            image: format!("data/img{i}"),
            outcome: Outcome::Error("simulated".into()),
        })
        .collect()
}

/// A query a worker holds: (query, job, images, when it finishes).
type Running = (u64, JobId, Vec<u32>, Instant);

#[test]
fn a_stalled_workers_query_is_dispatched_again_and_every_result_counts_once() {
    let mut w = World::new();
    let mut core = core(w.now);
    let spec = Registry::builtin().get(MODEL).unwrap().clone();
    assert!(matches!(
        w.put(&mut core, &spec.sdfs_name()),
        Applied::Version(1)
    ));
    let n = 32u32;
    let names: Vec<String> = (0..n).map(|i| format!("data/img{i}")).collect();
    for name in &names {
        assert!(matches!(w.put(&mut core, name), Applied::Version(1)));
    }
    let Applied::Job(job) = w.apply(Op::SubmitJob {
        model: MODEL.into(),
        dataset: "data/".into(),
        images: names,
        count: n,
        weight: 1,
    }) else {
        panic!("submitted");
    };
    assert!(core.sync(&w.state, w.now), "a new job is new work");

    let workers: Vec<SocketAddr> = (1..=4).map(addr).collect();
    let stalled = workers[3];
    let mut running: HashMap<SocketAddr, Running> = HashMap::new();
    let mut stalled_query: Option<(u64, Vec<u32>)> = None;
    let mut done_by: BTreeMap<u32, SocketAddr> = BTreeMap::new();
    let mut counted = 0u32;
    let step = Duration::from_millis(500);
    for _ in 0..200 {
        // Workers ask for work when idle; the stalled one only once.
        for &worker in &workers {
            let stuck = worker == stalled && stalled_query.is_some();
            if running.contains_key(&worker) || stuck {
                continue;
            }
            if let Some(p) = core.dispatch(worker, &w.state, w.now) {
                assert!(p.gone.is_empty(), "every image is in SDFS");
                assert_eq!(p.lease.model_file, spec.sdfs_name());
                assert_eq!(p.lease.lease_ms, LEASE.as_millis() as u64);
                let images: Vec<u32> = p.lease.images.iter().map(|(i, _, _)| *i).collect();
                if worker == stalled {
                    stalled_query = Some((p.lease.query, images));
                    continue;
                }
                let ends = w.now + Duration::from_secs(1);
                running.insert(worker, (p.lease.query, p.lease.job, images, ends));
            }
        }
        w.advance(step);
        // Completions due now go through the state machine, then the core.
        let due: Vec<SocketAddr> = running
            .iter()
            .filter(|(_, r)| r.3 <= w.now)
            .map(|(a, _)| *a)
            .collect();
        for worker in due {
            let (query, job, images, _) = running.remove(&worker).unwrap();
            let Applied::Accepted { new, .. } = w.apply(Op::CompleteQuery {
                job,
                results: results(&images),
            }) else {
                panic!("accepted");
            };
            counted += new;
            for i in &images {
                assert!(done_by.insert(*i, worker).is_none(), "image {i} ran twice");
            }
            let now = w.now;
            // The leader may sync with the applied state (and so let a
            // finished job go) before it hears of the completion.
            core.sync(&w.state, now);
            core.completed(done(query, job, worker, &images, new), now);
        }
        let now_ms = w.now_ms();
        core.maintain(&w.state, w.now, now_ms);
        if w.state.jobs.jobs[&job].state == JobState::Done {
            break;
        }
    }

    let j = &w.state.jobs.jobs[&job];
    assert_eq!(
        j.state,
        JobState::Done,
        "the job finishes without the stalled worker"
    );
    assert_eq!((j.done, counted), (n, n), "every result counted once");
    let (query, images) = stalled_query.expect("the stalled worker got a query");
    assert_eq!(images.len(), spec.batch as usize);
    for i in &images {
        let by = done_by[i];
        assert!(
            by != stalled,
            "image {i} was re-dispatched to another worker"
        );
    }
    // Its late answer changes nothing: the state machine counts it as old.
    let late = w.apply(Op::CompleteQuery {
        job,
        results: results(&images),
    });
    assert_eq!(
        late,
        Applied::Accepted {
            new: 0,
            finished: false
        }
    );
    core.completed(done(query, job, stalled, &images, 0), w.now);
    assert_eq!(core.in_flight(), 0);
    assert_eq!(w.state.jobs.jobs[&job].done, n);
    // C1 and C2 count every query that brought new images, the one that
    // ended the job too, and the late duplicate in neither.
    let queries = w.state.jobs.jobs[&job].queries;
    let c2 = core.latency();
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].count, queries, "{c2:?}");
    let per_worker: u64 = core.job_workers(job).iter().map(|w| w.queries).sum();
    assert_eq!(per_worker, queries, "dml job counts the last query too");
    let rate = core.rates(&w.state, w.now);
    let c1 = rate.iter().find(|r| r.model == MODEL).unwrap();
    assert_eq!(c1.queries_total, queries);
    // Three significant digits.
    let (queue, compute) = (c2[0].queue.max_ms, c2[0].compute.p50_ms);
    assert!(
        (queue - 250.0).abs() < 0.5 && (compute - 750.0).abs() < 1.0,
        "{c2:?}"
    );
}

fn done(query: u64, job: JobId, worker: SocketAddr, images: &[u32], new: u32) -> Completion<'_> {
    Completion {
        query,
        job,
        model: MODEL,
        worker,
        images,
        new,
        time: QueryTime {
            queue: Duration::from_millis(250),
            compute: Duration::from_millis(750),
        },
        batch_images: 0,
    }
}

#[test]
fn a_plan_that_times_out_is_forgotten_and_a_later_put_proceeds() {
    let mut w = World::new();
    let mut core = core(w.now);

    // A small put plans v1, then its client vanishes.
    let lost = w.plan(&mut core, "f", 10);
    assert_eq!((lost.version, lost.append), (1, None));
    assert_eq!(core.plans().open(), 1);
    w.advance(PUT_TIMEOUT * 2 + Duration::from_secs(1));
    let now_ms = w.now_ms();
    let look = core.maintain(&w.state, w.now, now_ms).expire_puts;
    assert_eq!(core.plans().open(), 0, "the stale plan is forgotten");
    // The look for expired puts (a scan, off the lock) finds none.
    assert_eq!(look, Some(now_ms));
    assert!(!w.state.listing().has_expired_pending(now_ms));
    core.expired();
    // A commit arriving that late finds no plan and nothing in the log.
    let claim = core.plans().claim("f", 1, 1);
    assert_eq!(claim, Claim::Now(Ok(Claimed::Logged)));
    let late = w.apply(Op::CommitPut {
        name: "f".into(),
        version: 1,
        checksum: [7; 32],
        holders: vec![addr(1)],
        quorum: 1,
    });
    assert!(matches!(late, Applied::Rejected(_)), "{late:?}");
    // The next put proceeds.
    assert_eq!(w.put(&mut core, "f"), Applied::Version(2));

    // A large put's plan is appended (the state takes the version), and
    // its put never commits: past its deadline the leader expires it.
    let big = w.plan(&mut core, "g", DEFER_MAX + 1);
    let op = big.append.expect("a large plan is appended");
    assert!(matches!(w.apply(op), Applied::Version(1)));
    core.plans().appended("g", 1, w.now);
    assert_eq!(core.plans().settled("g", 1, Ok(())), None);
    let now_ms = w.now_ms();
    assert_eq!(
        core.maintain(&w.state, w.now, now_ms).expire_puts,
        Some(now_ms)
    );
    assert!(
        !w.state.listing().has_expired_pending(now_ms),
        "not due yet"
    );
    core.expired();
    w.advance(PUT_TIMEOUT + Duration::from_secs(1));
    let now_ms = w.now_ms();
    assert_eq!(
        core.maintain(&w.state, w.now, now_ms).expire_puts,
        Some(now_ms)
    );
    assert!(w.state.listing().has_expired_pending(now_ms), "due now");
    assert_eq!(
        core.maintain(&w.state, w.now, now_ms).expire_puts,
        None,
        "one expiry in flight at a time"
    );
    assert_eq!(w.apply(Op::ExpirePending), Applied::Done);
    core.expired();
    assert!(w.state.version("g", 1).is_none(), "the version is freed");
    let now_ms = w.now_ms();
    assert_eq!(
        core.maintain(&w.state, w.now, now_ms).expire_puts,
        Some(now_ms)
    );
    assert!(!w.state.listing().has_expired_pending(now_ms));
    core.expired();
    // Its late commit fails; a later put of the name commits.
    let claim = core.plans().claim("g", 1, 1);
    assert_eq!(claim, Claim::Now(Ok(Claimed::Logged)));
    let late = w.apply(Op::CommitPut {
        name: "g".into(),
        version: 1,
        checksum: [7; 32],
        holders: vec![addr(1)],
        quorum: 1,
    });
    assert!(matches!(late, Applied::Rejected(_)), "{late:?}");
    assert_eq!(w.put(&mut core, "g"), Applied::Version(2));
    let versions: Vec<u64> = w
        .state
        .stat("g")
        .unwrap()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![2]);
}
