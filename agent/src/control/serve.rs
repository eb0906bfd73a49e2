//! What the leader does with each control-plane request, decided without IO:
//! given the [`LeaderCore`], the applied state (current under the read
//! lease), the membership view when the request needs one, and `now`, each
//! request becomes one [`Step`] (answer now, append an entry, wait for the
//! view, a plan's outcome or work) that the leader task (`task.rs`) carries
//! out. When an appended entry applies, [`answer`] turns its result into the
//! reply.

mod batch;

use super::core::{LeaderCore, batch_size};
use super::error::ControlError;
use super::placement;
use super::plans::{Claim, Claimed, Failed, PlanRequest, check_holders};
use super::scheduler::Completion;
use super::state::{Listing, MetaState};
use super::types::{Applied, Op};
use crate::latency::QueryTime;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::infer::{
    InferRequest, InferResponse, JobDetail, JobId, JobInfo, JobState, Lease, ModelInfo, Outcome,
};
use dml_shared::sdfs::{ChangeOutcome, Checksum, Glob, MetaRequest, MetaResponse, validate_name};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Largest job, in images.
pub const MAX_JOB_IMAGES: u32 = 1_000_000;
/// Largest weight of a job in fair sharing.
pub const MAX_JOB_WEIGHT: u32 = 1_000;
/// Longest `max_queue_delay` of dynamic batching, in ms.
pub const MAX_QUEUE_DELAY_MS: u64 = 60_000;
/// Longest p99 target of dynamic batching, in ms.
pub const MAX_P99_TARGET_MS: u64 = 3_600_000;
/// Distinct workers that must fail to load a model before its job fails
/// (fewer if fewer workers are alive).
const REFUSALS_TO_FAIL: usize = 2;
/// Most per-image errors `dml job` lists.
const DETAIL_ERRORS: usize = 20;
/// Most versions one `Assigned` answer lists, so it stays far below the
/// frame limit even with 1 KiB names and many replicas.
const ASSIGNED_MAX: usize = 2000;

/// What serving needs from the settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Copies of each version.
    pub replicas: usize,
    /// Durable copies a put needs to commit.
    pub write_quorum: usize,
    /// How long a put may take (its plan's deadline).
    pub put_timeout: Duration,
    /// Longest a worker's lease request may wait for work.
    pub max_lease_wait: Duration,
    /// This leader's own keyring when its term began: what the first
    /// `dml keyring` change starts from (`keyring.rs`).
    pub keyring_seed: Option<std::sync::Arc<dml_shared::auth::Keyring>>,
    /// This agent's connections are encrypted (`security.encrypt_tcp`):
    /// without, the leader hands out no keyring secrets.
    pub keyring_encrypted: bool,
}

/// Membership as the leader last read it: (live: alive or suspect, alive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveView {
    pub live: Vec<SocketAddr>,
    pub alive: Vec<SocketAddr>,
}

/// What one request is served against.
pub struct Ctx<'a> {
    pub cfg: &'a ServeConfig,
    pub state: &'a MetaState,
    pub view: Option<&'a LiveView>,
    pub now: Instant,
    pub now_ms: u64,
}

/// What the leader task does next with a request.
#[derive(Debug)]
pub enum Step {
    Reply(Result<ControlResponse, ControlError>),
    /// Append `op`; once it applies (or fails), [`answer`] with `then`.
    Append(Op, Then),
    /// Serve the request again once the membership view is read.
    View,
    /// A put's commit or abort waits for its appended plan's outcome; then
    /// [`claimed`] serves it.
    AwaitPlan {
        name: String,
        version: u64,
    },
    /// A large put's plan: append `op`, and answer `reply` at once (the
    /// plan's outcome is the commit's to wait for).
    AppendPlan {
        op: Op,
        reply: MetaResponse,
    },
    /// No work for `worker` now: answer when some appears, or `None` at
    /// `deadline`; `ready`: a batch waiting to fill will be ready then.
    Park {
        worker: SocketAddr,
        deadline: Instant,
        ready: Option<Instant>,
    },
    /// Match names against the glob off the async workers, then answer.
    List(Glob),
    /// One page of a listing ([`MetaRequest::ListPage`]), matched as `List`.
    ListPage {
        glob: Glob,
        after: Option<String>,
        limit: u32,
    },
    /// Count the totals and the under-replicated versions off the async
    /// workers, then answer ([`MetaRequest::Health`]).
    Health {
        replicas: u32,
        sample: u32,
    },
    /// Answer from the listing's O(1) copy on a blocking thread: a read
    /// that looks at many files never holds the state-machine lock.
    Scan(Scan),
    /// Read a finished job's output back from SDFS, then answer.
    FetchOutput {
        name: String,
        job: JobInfo,
    },
}

/// A read of the files served off the state-machine lock ([`Step::Scan`]).
#[derive(Debug)]
pub enum Scan {
    /// [`MetaRequest::Count`].
    Count,
    /// [`MetaRequest::Nodes`], these live agents listed even if they hold nothing.
    Nodes(Vec<SocketAddr>),
    /// [`MetaRequest::Wanted`].
    Wanted {
        node: SocketAddr,
        items: Vec<(String, u64, Checksum)>,
    },
    /// [`MetaRequest::Assigned`], `limit` already bounded.
    Assigned {
        node: SocketAddr,
        after: Option<(String, u64)>,
        limit: usize,
    },
}

impl Scan {
    /// The answer, from a frozen copy of the files.
    pub fn answer(self, files: &Listing) -> MetaResponse {
        match self {
            Scan::Count => {
                let (files, versions, bytes) = files.count();
                MetaResponse::Count {
                    files,
                    versions,
                    bytes,
                }
            }
            Scan::Nodes(live) => MetaResponse::Nodes(files.nodes(&live)),
            Scan::Wanted { node, items } => MetaResponse::Wanted(
                items
                    .iter()
                    .map(|(name, v, sum)| files.wanted(node, name, *v, sum))
                    .collect(),
            ),
            Scan::Assigned { node, after, limit } => {
                let (items, more) = files.assigned(node, after.as_ref(), limit);
                MetaResponse::Assigned { items, more }
            }
        }
    }
}

/// How an appended entry's result becomes the reply.
#[derive(Debug)]
pub enum Then {
    /// A put's commit: `Committed`, or `Unconfirmed` if no quorum confirmed it.
    Commit,
    /// A batched put's commit: `CommittedBatch`, each file's answer from
    /// its slot.
    CommitBatch(Vec<batch::Slot>),
    /// An abort: `Done`.
    Aborted,
    /// A delete of versions up to `through`: `Done`, or `DeleteUnconfirmed`.
    /// Once it applies, the task tells `holders` to drop their copies.
    Delete {
        name: String,
        through: u64,
        holders: Vec<SocketAddr>,
    },
    Submit {
        count: u32,
    },
    BatchSize,
    /// A query's results: `Accepted`, and the scheduler hears of it.
    Complete {
        query: u64,
        job: JobId,
        model: String,
        worker: SocketAddr,
        images: Vec<u32>,
        time: QueryTime,
        /// Images of the batch it ran in.
        batch_images: u32,
    },
    /// A model the workers cannot run failed its job: `Accepted { new: 0 }`.
    FailJob,
    /// `dml cancel`: `Cancelled`, once the scheduler let go of the job;
    /// `held` of its queries were in flight when the cancel was served.
    Cancel {
        job: JobId,
        held: u32,
    },
    /// The results of images gone from SDFS, recorded before their lease is
    /// sent: `lease`, or `None` to look for work for `worker` again, until
    /// `deadline` (it had no images).
    Gone {
        lease: Option<Lease>,
        worker: SocketAddr,
        deadline: Instant,
    },
    /// A keyring change of the key `fingerprint`: `Changed`.
    Keyring {
        fingerprint: String,
    },
    /// The leader's own upkeep: nothing to answer.
    Upkeep(Upkeep),
}

impl Then {
    /// Whether the request must not run twice: once appended, its outcome is
    /// settled by the client (outcome queries) and never redirected, since a
    /// later leader may still commit the entry.
    pub fn once_only(&self) -> bool {
        matches!(
            self,
            Then::Commit | Then::CommitBatch(_) | Then::Delete { .. } | Then::Submit { .. }
        )
    }
}

/// The leader's own appends, and what the core hears when they end.
#[derive(Debug)]
pub enum Upkeep {
    /// The task's first entry: once it applies, the state holds everything
    /// committed before this task started.
    Barrier,
    Expired,
    Trimmed,
    CopyRecorded {
        name: String,
        version: u64,
        target: SocketAddr,
    },
    OutputRecorded(JobId),
}

/// What [`answer`] asks of the task.
#[derive(Debug)]
pub enum Answer {
    /// Boxed: a lease with its batched queries is large.
    Reply(Box<Result<ControlResponse, ControlError>>),
    /// Look for work for the worker again (same request, same deadline).
    LeaseAgain,
    /// Nothing to answer.
    None,
}

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::BadRequest(msg.into())
}

fn sdfs(r: MetaResponse) -> Step {
    Step::Reply(Ok(ControlResponse::Sdfs(r)))
}

fn infer(r: InferResponse) -> Step {
    Step::Reply(Ok(ControlResponse::Infer(r)))
}

fn fail(e: ControlError) -> Step {
    Step::Reply(Err(e))
}

/// What became of a put commit or a delete appended in term `appended`
/// (for a put, its plan's term), seen by a leader of term `term` whose
/// state is current: applied (`done`), or lost for good once a later leader
/// has applied an entry of its own term without it, or still pending in the
/// log of the leader that appended it.
pub fn outcome(done: bool, appended: u64, term: u64) -> ChangeOutcome {
    if done {
        ChangeOutcome::Committed
    } else if appended < term {
        ChangeOutcome::Failed
    } else {
        ChangeOutcome::Pending
    }
}

/// Serves `req` at the leader whose state is current (the read lease holds).
pub fn serve(core: &mut LeaderCore, cx: &Ctx, req: ControlRequest) -> Step {
    match req {
        ControlRequest::Sdfs(r) => serve_sdfs(core, cx, r),
        ControlRequest::Infer(r) => serve_infer(core, cx, r),
        ControlRequest::Keyring(c) => {
            if cx.cfg.keyring_encrypted {
                use super::keyring::{self, Step as K};
                match keyring::serve(cx.state.keyring.as_ref(), cx.cfg.keyring_seed.as_deref(), c) {
                    K::Reply(r) => Step::Reply(r.map(ControlResponse::Keyring)),
                    K::Append { op, fingerprint } => {
                        Step::Append(op, Then::Keyring { fingerprint })
                    }
                }
            } else {
                fail(ControlError::Rejected(
                    "the leader's connections are not encrypted (security.encrypt_tcp = false): \
                     it neither changes nor hands out the keyring"
                        .into(),
                ))
            }
        }
    }
}

fn serve_sdfs(core: &mut LeaderCore, cx: &Ctx, req: MetaRequest) -> Step {
    let s = cx.state;
    match req {
        MetaRequest::BeginPut { name, size } => {
            if let Err(e) = validate_name(&name) {
                return fail(bad(e.to_string()));
            }
            let Some(view) = cx.view else {
                return Step::View;
            };
            let quorum = cx.cfg.write_quorum;
            if view.alive.len() < quorum {
                return fail(ControlError::TooFewAlive {
                    alive: view.alive.len(),
                    quorum,
                });
            }
            let chain = placement::place(&name, &view.alive, cx.cfg.replicas);
            let req = PlanRequest {
                name,
                size,
                replicas: chain.clone(),
                deadline_ms: cx.now_ms + cx.cfg.put_timeout.as_millis() as u64,
            };
            let planned = core.plans().plan(req, |n| s.next_version(n), cx.now);
            let reply = MetaResponse::PutPlan {
                version: planned.version,
                chain,
                quorum,
                plan: core.term(),
            };
            match planned.append {
                Some(op) => Step::AppendPlan { op, reply },
                None => sdfs(reply),
            }
        }
        MetaRequest::BeginPutBatch { files } => batch::begin(core.plans(), cx, files),
        MetaRequest::CommitPutBatch { plan, files } => batch::commit(core.plans(), cx, plan, files),
        MetaRequest::CommitPut {
            ref name,
            version,
            plan,
            ..
        }
        | MetaRequest::AbortPut {
            ref name,
            version,
            plan,
        } => match core.plans().claim(name, version, plan) {
            Claim::Now(c) => claimed(cx, req, c),
            Claim::Wait => Step::AwaitPlan {
                name: name.clone(),
                version,
            },
        },
        MetaRequest::PutOutcome {
            name,
            version,
            checksum,
            plan,
        } => {
            let committed = s.is_committed_as(&name, version, &checksum);
            sdfs(MetaResponse::Outcome(outcome(committed, plan, core.term())))
        }
        MetaRequest::Delete { name } => match s.stat(&name) {
            Some(f) if !f.versions.is_empty() => {
                let through = f.versions.last().map_or(0, |v| v.version);
                let mut holders: Vec<SocketAddr> =
                    f.versions.iter().flat_map(|v| v.replicas.clone()).collect();
                holders.sort();
                holders.dedup();
                let then = Then::Delete {
                    name: name.clone(),
                    through,
                    holders,
                };
                Step::Append(Op::Delete { name }, then)
            }
            _ => fail(ControlError::NoSuchFile(name)),
        },
        MetaRequest::DeleteOutcome {
            name,
            term: appended,
            through,
        } => {
            let oldest = s
                .stat(&name)
                .and_then(|f| f.versions.first().map(|v| v.version));
            let gone = oldest.is_none_or(|v| v > through);
            sdfs(MetaResponse::Outcome(outcome(gone, appended, core.term())))
        }
        MetaRequest::Stat { name } => match s.stat(&name) {
            Some(f) => sdfs(MetaResponse::File(f)),
            None => fail(ControlError::NoSuchFile(name)),
        },
        MetaRequest::List { glob } => match Glob::new(&glob) {
            Ok(glob) => Step::List(glob),
            Err(e) => fail(bad(e.to_string())),
        },
        MetaRequest::ListPage { glob, after, limit } => match Glob::new(&glob) {
            Ok(glob) => Step::ListPage { glob, after, limit },
            Err(e) => fail(bad(e.to_string())),
        },
        MetaRequest::Health { replicas, sample } => Step::Health { replicas, sample },
        MetaRequest::Count => Step::Scan(Scan::Count),
        MetaRequest::Nodes => match cx.view {
            Some(view) => Step::Scan(Scan::Nodes(view.live.clone())),
            None => Step::View,
        },
        MetaRequest::Wanted { node, items } => Step::Scan(Scan::Wanted { node, items }),
        MetaRequest::Balance { dry_run } => match cx.view {
            Some(view) => sdfs(MetaResponse::Balance(core.balance_request(
                s,
                &view.alive,
                dry_run,
            ))),
            None => Step::View,
        },
        MetaRequest::Assigned { node, after, limit } => Step::Scan(Scan::Assigned {
            node,
            after,
            limit: (limit as usize).clamp(1, ASSIGNED_MAX),
        }),
    }
}

/// Serves a put's commit or abort (`req`) once its plan is claimed.
pub fn claimed(cx: &Ctx, req: MetaRequest, claim: Result<Claimed, Failed>) -> Step {
    match req {
        MetaRequest::CommitPut {
            name,
            version,
            checksum,
            holders,
            plan,
        } => {
            let quorum = cx.cfg.write_quorum;
            // Holders must come from the chain this leader planned.
            let planned = match &claim {
                Ok(Claimed::Deferred { replicas, .. }) => Some(replicas.as_slice()),
                Ok(Claimed::Logged) => cx.state.pending_replicas(&name, version),
                _ => None,
            };
            if let Some(planned) = planned
                && let Err(e) = check_holders(&name, version, &holders, planned)
            {
                return fail(bad(e.to_string()));
            }
            let op = match claim {
                Err(f) => return fail(f.into()),
                Ok(Claimed::Deferred { size, .. }) => Op::PutAt {
                    name,
                    version,
                    size,
                    checksum,
                    holders,
                    quorum,
                },
                Ok(Claimed::Logged) => Op::CommitPut {
                    name,
                    version,
                    checksum,
                    holders,
                    quorum,
                },
                // Only a retry of a commit that applied (its answer was lost
                // with the earlier leader) succeeds.
                Ok(Claimed::Foreign) => {
                    return if cx.state.is_committed_as(&name, version, &checksum) {
                        sdfs(MetaResponse::Committed { version })
                    } else {
                        fail(ControlError::Rejected(format!(
                            "the put of \"{name}\" v{version} was planned by an earlier leader (term {plan}) and did not commit; retry the put"
                        )))
                    };
                }
            };
            Step::Append(op, Then::Commit)
        }
        MetaRequest::AbortPut { name, version, .. } => match claim {
            Ok(Claimed::Logged) => Step::Append(Op::AbortPut { name, version }, Then::Aborted),
            // A plan that failed, never left memory or is an earlier
            // leader's (its deadline expires it) leaves nothing to abort.
            _ => sdfs(MetaResponse::Done),
        },
        other => fail(bad(format!("{other:?} is not a put's commit or abort"))),
    }
}

fn serve_infer(core: &mut LeaderCore, cx: &Ctx, req: InferRequest) -> Step {
    let s = cx.state;
    match req {
        InferRequest::Submit {
            model,
            count,
            dataset,
            weight,
        } => submit(core, cx, model, count, dataset, weight),
        InferRequest::Jobs => infer(InferResponse::Jobs(
            s.jobs
                .jobs
                .iter()
                .map(|(id, j)| {
                    let mut info = j.info(*id);
                    if info.state == JobState::Running {
                        info.stalled = core.workers().stall(&info.model, cx.now);
                    }
                    info
                })
                .collect(),
        )),
        InferRequest::Output { job } => {
            let Some(j) = s.jobs.jobs.get(&job) else {
                return fail(ControlError::NoSuchJob(job));
            };
            let (info, results) = (j.info(job), j.results());
            match &info.output {
                Some(name) if results.is_empty() && info.done > 0 => Step::FetchOutput {
                    name: name.clone(),
                    job: info,
                },
                _ => infer(InferResponse::Output { job: info, results }),
            }
        }
        InferRequest::SetBatchSize { model, size } => {
            let spec = match core.registry().require(&model) {
                Ok(s) => s,
                Err(e) => return fail(bad(e.to_string())),
            };
            if size == 0 || size > spec.max_batch {
                return fail(bad(format!(
                    "batch size {size} for \"{model}\" must be between 1 and {}",
                    spec.max_batch
                )));
            }
            Step::Append(Op::SetBatchSize { model, size }, Then::BatchSize)
        }
        InferRequest::SetBatchPolicy {
            model,
            max_queue_delay_ms,
            p99_target_ms,
        } => {
            if let Err(e) = core.registry().require(&model) {
                return fail(bad(e.to_string()));
            }
            if let Some(d) = max_queue_delay_ms.filter(|d| *d > MAX_QUEUE_DELAY_MS) {
                return fail(bad(format!(
                    "max queue delay {d} ms for \"{model}\" must be at most {MAX_QUEUE_DELAY_MS} ms"
                )));
            }
            if let Some(t) = p99_target_ms.filter(|t| *t > MAX_P99_TARGET_MS) {
                return fail(bad(format!(
                    "p99 target {t} ms for \"{model}\" must be at most {MAX_P99_TARGET_MS} ms"
                )));
            }
            let op = Op::SetBatchPolicy {
                model,
                max_queue_delay_ms,
                p99_target_ms,
            };
            Step::Append(op, Then::BatchSize)
        }
        InferRequest::Models => {
            let names: Vec<String> = core
                .registry()
                .models
                .iter()
                .map(|m| m.name.clone())
                .collect();
            let effective: Vec<u32> = names
                .iter()
                .map(|n| core.effective_batch(s, n, cx.now))
                .collect();
            let registry = core.registry();
            let models = registry
                .models
                .iter()
                .zip(effective)
                .map(|(m, effective_batch)| {
                    let policy = s.jobs.policy(&m.name);
                    ModelInfo {
                        name: m.name.clone(),
                        batch_size: batch_size(registry, s, &m.name),
                        max_batch: m.max_batch,
                        file: m.sdfs_name(),
                        version: s
                            .stat(&m.sdfs_name())
                            .and_then(|f| f.versions.last().map(|v| v.version)),
                        max_queue_delay_ms: policy.max_queue_delay_ms,
                        p99_target_ms: policy.p99_target_ms,
                        effective_batch,
                    }
                })
                .collect();
            infer(InferResponse::Models(models))
        }
        InferRequest::Rates => {
            core.sync(s, cx.now);
            infer(InferResponse::Rates(core.rates(s, cx.now)))
        }
        InferRequest::Latency => infer(InferResponse::Latency(core.latency())),
        InferRequest::Placement => {
            core.sync(s, cx.now);
            infer(InferResponse::Placement(core.placement()))
        }
        InferRequest::Unready { worker, reason } => {
            tracing::warn!(%worker, %reason, "a worker cannot run queries");
            core.workers().unready(worker, reason, cx.now);
            infer(InferResponse::Done)
        }
        InferRequest::Lease {
            worker,
            wait_ms,
            figures,
        } => {
            core.workers().asked(worker, cx.now);
            if let Some(f) = &figures {
                core.worker_report(worker, f);
            }
            let wait = Duration::from_millis(u64::from(wait_ms)).min(cx.cfg.max_lease_wait);
            lease(core, cx, worker, cx.now + wait)
        }
        InferRequest::Cancel { job } => match s.jobs.jobs.get(&job) {
            None => fail(ControlError::NoSuchJob(job)),
            Some(j) if j.state != JobState::Running => {
                let state = j.state;
                fail(super::jobs::NotRunning::Ended { job, state }.into())
            }
            Some(_) => {
                let held = core.job_in_flight(job);
                Step::Append(Op::CancelJob { job }, Then::Cancel { job, held })
            }
        },
        InferRequest::Job { job } => match s.jobs.jobs.get(&job) {
            None => fail(ControlError::NoSuchJob(job)),
            Some(j) => {
                core.sync(s, cx.now);
                let mut info = j.info(job);
                if info.state == JobState::Running {
                    info.stalled = core.workers().stall(&info.model, cx.now);
                }
                let errors = j
                    .results()
                    .into_iter()
                    .filter(|r| matches!(r.outcome, Outcome::Error(_)))
                    .take(DETAIL_ERRORS)
                    .collect();
                infer(InferResponse::Job(Box::new(JobDetail {
                    info,
                    workers: core.job_workers(job),
                    errors,
                })))
            }
        },
        InferRequest::QueryTimes { job } => match s.jobs.jobs.get(&job) {
            None => fail(ControlError::NoSuchJob(job)),
            Some(_) => infer(InferResponse::QueryTimes {
                job,
                queries: core.job_query_times(job),
            }),
        },
        InferRequest::Complete {
            worker,
            query,
            job,
            results,
            queue_us,
            compute_us,
            batch_images,
            failed,
        } => {
            // A worker busy with long queries asks seldom; it is alive all the same.
            core.workers().asked(worker, cx.now);
            if let Some(reason) = failed {
                let Some(view) = cx.view else {
                    return Step::View;
                };
                let refused = core.refuse(query, worker);
                tracing::warn!(job, %worker, %reason, "a worker cannot run the job's model");
                let needed = REFUSALS_TO_FAIL.min(view.alive.len().max(1));
                if refused.is_some_and(|(_, n)| n >= needed) {
                    let reason = format!("{worker}: {reason}");
                    return Step::Append(Op::FailJob { job, reason }, Then::FailJob);
                }
                return infer(InferResponse::Accepted { new: 0 });
            }
            let Some(model) = s.jobs.jobs.get(&job).map(|j| j.model.clone()) else {
                return fail(ControlError::NoSuchJob(job));
            };
            core.reported(query, &results);
            let images = results.iter().map(|r| r.index).collect();
            let time = QueryTime {
                queue: Duration::from_micros(queue_us),
                compute: Duration::from_micros(compute_us),
            };
            Step::Append(
                Op::CompleteQuery { job, results },
                Then::Complete {
                    query,
                    job,
                    model,
                    worker,
                    images,
                    time,
                    batch_images,
                },
            )
        }
    }
}

fn submit(
    core: &LeaderCore,
    cx: &Ctx,
    model: String,
    count: Option<u32>,
    dataset: String,
    weight: u32,
) -> Step {
    let s = cx.state;
    let spec = match core.registry().require(&model) {
        Ok(m) => m.sdfs_name(),
        Err(e) => return fail(bad(e.to_string())),
    };
    let trimmed = dataset.trim_end_matches('/');
    if let Err(e) = validate_name(trimmed) {
        return fail(bad(format!("dataset prefix: {e}")));
    }
    if count == Some(0) {
        return fail(bad("the number of images must be at least 1"));
    }
    if weight == 0 || weight > MAX_JOB_WEIGHT {
        return fail(bad(format!(
            "weight {weight} must be between 1 and {MAX_JOB_WEIGHT}"
        )));
    }
    if count.is_some_and(|c| c > MAX_JOB_IMAGES) {
        return fail(bad(format!("a job has at most {MAX_JOB_IMAGES} images")));
    }
    let prefix = format!("{trimmed}/");
    if s.stat(&spec).is_none() {
        return fail(bad(format!(
            "the model file {spec} is not in SDFS; upload it with `dml models upload --models {model}`"
        )));
    }
    let mut images = s.names_under(&prefix);
    if images.is_empty() {
        return fail(bad(format!(
            "there are no files under the SDFS prefix \"{prefix}\"; load images with `dml sdfs load <dir> {prefix}`"
        )));
    }
    images.truncate(MAX_JOB_IMAGES as usize);
    let count = count.unwrap_or(images.len() as u32);
    Step::Append(
        Op::SubmitJob {
            model,
            dataset: prefix,
            images,
            count,
            weight,
        },
        Then::Submit { count },
    )
}

/// The next query for `worker`, or a wait for one until `deadline`.
pub fn lease(core: &mut LeaderCore, cx: &Ctx, worker: SocketAddr, deadline: Instant) -> Step {
    loop {
        let Some(picked) = core.dispatch(worker, cx.state, cx.now) else {
            if cx.now >= deadline {
                return infer(InferResponse::Lease(None));
            }
            let ready = core.next_ready(cx.state, cx.now);
            return Step::Park {
                worker,
                deadline,
                ready,
            };
        };
        let lease = picked.lease;
        if lease.images.is_empty() {
            // Nothing left to run: end the lease now rather than let it
            // expire and put those images back to pending.
            let none = Completion {
                query: lease.query,
                job: lease.job,
                model: &lease.model,
                worker,
                images: &[],
                new: 0,
                time: QueryTime::default(),
                batch_images: 0,
            };
            core.completed(none, cx.now);
            if !picked.gone.is_empty() {
                let op = Op::CompleteQuery {
                    job: lease.job,
                    results: picked.gone,
                };
                let then = Then::Gone {
                    lease: None,
                    worker,
                    deadline,
                };
                return Step::Append(op, then);
            }
            continue;
        }
        if picked.gone.is_empty() {
            return infer(InferResponse::Lease(Some(lease)));
        }
        let op = Op::CompleteQuery {
            job: lease.job,
            results: picked.gone,
        };
        let then = Then::Gone {
            lease: Some(lease),
            worker,
            deadline,
        };
        return Step::Append(op, then);
    }
}

/// The reply to a request whose entry was appended, from its result
/// (`Unconfirmed` if no quorum confirmed it in time); `now` for the
/// scheduler.
pub fn answer(
    core: &mut LeaderCore,
    then: Then,
    result: Result<Applied, ControlError>,
    now: Instant,
) -> Answer {
    let applied = match result {
        Ok(Applied::Rejected(m)) => Err(ControlError::Rejected(m)),
        Ok(Applied::NoSuchFile(name)) => Err(ControlError::NoSuchFile(name)),
        other => other,
    };
    let reply = |r: Result<ControlResponse, ControlError>| Answer::Reply(Box::new(r));
    match then {
        Then::Upkeep(u) => {
            match (&u, &applied) {
                (Upkeep::Expired, Ok(_)) => tracing::info!("expired stale pending puts"),
                (
                    Upkeep::CopyRecorded {
                        name,
                        version,
                        target,
                    },
                    Ok(_),
                ) => {
                    tracing::info!(%name, version, %target, "repair: copy recorded")
                }
                (Upkeep::OutputRecorded(job), Ok(_)) => {
                    tracing::info!(job, "job output stored in SDFS")
                }
                (_, Err(e)) => {
                    tracing::warn!(upkeep = ?u, error = %e, "the leader's upkeep entry failed")
                }
                _ => {}
            }
            match u {
                Upkeep::Expired => core.expired(),
                Upkeep::Barrier | Upkeep::Trimmed => {}
                Upkeep::CopyRecorded {
                    name,
                    version,
                    target,
                } => core.copy_done(&name, version, target, applied.is_ok(), now),
                Upkeep::OutputRecorded(job) => core.output_stored(job),
            }
            Answer::None
        }
        Then::Commit => match applied {
            Ok(Applied::Version(version)) => reply(Ok(MetaResponse::Committed { version }.into())),
            // Appended, not confirmed: the client asks `PutOutcome` until
            // the answer is final.
            Err(e @ (ControlError::Unconfirmed { .. } | ControlError::SteppedDown { .. })) => {
                reply(Ok(MetaResponse::Unconfirmed {
                    reason: e.to_string(),
                }
                .into()))
            }
            Ok(other) => reply(Err(unexpected(other))),
            Err(e) => reply(Err(e)),
        },
        Then::CommitBatch(slots) => match applied {
            Ok(Applied::Batch(results)) => reply(Ok(MetaResponse::CommittedBatch(batch::answers(
                slots, &results, None,
            ))
            .into())),
            Err(e @ (ControlError::Unconfirmed { .. } | ControlError::SteppedDown { .. })) => {
                let why = e.to_string();
                reply(Ok(MetaResponse::CommittedBatch(batch::answers(
                    slots,
                    &[],
                    Some(&why),
                ))
                .into()))
            }
            Ok(other) => reply(Err(unexpected(other))),
            Err(e) => reply(Err(e)),
        },
        Then::Aborted => reply(applied.map(|_| MetaResponse::Done.into())),
        Then::Delete { through, .. } => match applied {
            Ok(_) => reply(Ok(MetaResponse::Done.into())),
            Err(
                e @ (ControlError::Unconfirmed { term, .. } | ControlError::SteppedDown { term }),
            ) => reply(Ok(MetaResponse::DeleteUnconfirmed {
                reason: e.to_string(),
                term,
                through,
            }
            .into())),
            Err(e) => reply(Err(e)),
        },
        Then::Submit { count } => match applied {
            Ok(Applied::Job(job)) => {
                tracing::info!(job, images = count, "job submitted");
                reply(Ok(InferResponse::Submitted { job, images: count }.into()))
            }
            Ok(other) => reply(Err(unexpected(other))),
            Err(e) => reply(Err(e)),
        },
        Then::BatchSize => reply(applied.map(|_| InferResponse::Done.into())),
        Then::Complete {
            query,
            job,
            model,
            worker,
            images,
            time,
            batch_images,
        } => match applied {
            Ok(Applied::Accepted { new, finished }) => {
                let done = Completion {
                    query,
                    job,
                    model: &model,
                    worker,
                    images: &images,
                    new,
                    time,
                    batch_images,
                };
                core.completed(done, now);
                if finished {
                    tracing::info!(job, "job finished");
                }
                reply(Ok(InferResponse::Accepted { new }.into()))
            }
            Ok(other) => reply(Err(unexpected(other))),
            Err(e) => reply(Err(e)),
        },
        Then::FailJob => reply(applied.map(|_| InferResponse::Accepted { new: 0 }.into())),
        Then::Cancel { job, held } => match applied {
            Ok(_) => {
                // The leader may have synced its scheduler with the
                // applied state (and so let go of the job) before this.
                let released = (core.cancelled(job) as u32).max(held);
                tracing::info!(job, released, "job cancelled");
                reply(Ok(InferResponse::Cancelled { job, released }.into()))
            }
            Err(e) => reply(Err(e)),
        },
        Then::Keyring { fingerprint } => match applied {
            Ok(Applied::Version(version)) => {
                tracing::info!(%fingerprint, version, "keyring changed");
                reply(Ok(ControlResponse::Keyring(
                    dml_shared::keyring::KeyringAnswer::Changed(dml_shared::keyring::Changed {
                        fingerprint,
                        version,
                        changed: true,
                    }),
                )))
            }
            Ok(other) => reply(Err(unexpected(other))),
            Err(e) => reply(Err(e)),
        },
        Then::Gone { lease, .. } => match (applied, lease) {
            (Err(e), _) => reply(Err(e)),
            (Ok(_), Some(lease)) => reply(Ok(InferResponse::Lease(Some(lease)).into())),
            (Ok(_), None) => Answer::LeaseAgain,
        },
    }
}

fn unexpected(a: Applied) -> ControlError {
    ControlError::Raft(format!("unexpected result {a:?} from the state machine"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::core::CoreConfig;
    use crate::control::plans::DEFER_MAX;
    use crate::control::types::Command;
    use dml_shared::sdfs::Keep;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The leader of term 3 and its serving settings.
    fn leader(now: Instant) -> (LeaderCore, ServeConfig) {
        let core = LeaderCore::new(
            3,
            CoreConfig {
                min_lease: Duration::from_secs(10),
                forget_plans: Duration::from_secs(60),
                put_timeout: Duration::from_secs(30),
                read_lease: Duration::from_millis(75),
                repair_bounds: super::super::repair::Bounds {
                    per_source: 1,
                    per_target: 1,
                },
                replicas: 4,
                balance_threshold: Some(0.1),
                registry: std::sync::Arc::new(dml_shared::models::Registry::builtin()),
            },
            now,
        );
        let cfg = ServeConfig {
            replicas: 4,
            write_quorum: 3,
            put_timeout: Duration::from_secs(30),
            max_lease_wait: Duration::from_secs(1),
            keyring_seed: None,
            keyring_encrypted: true,
        };
        (core, cfg)
    }

    #[test]
    fn count_nodes_wanted_and_assigned_are_answered_from_a_frozen_copy_of_the_files() {
        let now = Instant::now();
        let (mut core, cfg) = leader(now);
        let view = LiveView {
            live: vec![addr(1), addr(2), addr(3), addr(9)],
            alive: vec![addr(1), addr(2), addr(3)],
        };
        let mut state = MetaState::default();
        let put = |state: &mut MetaState, name: &str, holders: &[u16]| {
            let op = Op::PutAt {
                name: name.into(),
                version: 1,
                size: 10,
                checksum: [7; 32],
                holders: holders.iter().map(|p| addr(*p)).collect(),
                quorum: 1,
            };
            let applied = state.apply(&Command { now_ms: 1, op });
            assert_eq!(applied, Applied::Version(1));
        };
        put(&mut state, "a", &[1, 2]);
        put(&mut state, "b", &[2, 3]);
        put(&mut state, "c", &[1, 3]);
        let requests = [
            MetaRequest::Count,
            MetaRequest::Nodes,
            MetaRequest::Wanted {
                node: addr(1),
                items: vec![("a".into(), 1, [7; 32]), ("b".into(), 1, [7; 32])],
            },
            MetaRequest::Assigned {
                node: addr(1),
                after: Some(("a".into(), 1)),
                limit: 10,
            },
        ];
        let scans: Vec<Scan> = requests
            .into_iter()
            .map(|req| {
                let cx = Ctx {
                    cfg: &cfg,
                    state: &state,
                    view: Some(&view),
                    now,
                    now_ms: 2,
                };
                match serve(&mut core, &cx, ControlRequest::Sdfs(req)) {
                    Step::Scan(scan) => scan,
                    other => panic!("not served off the lock: {other:?}"),
                }
            })
            .collect();
        let files = state.listing();
        // Applied after the copy was taken: not in the answers.
        put(&mut state, "d", &[1, 2]);
        let answers: Vec<MetaResponse> = scans.into_iter().map(|s| s.answer(&files)).collect();
        assert_eq!(
            answers[0],
            MetaResponse::Count {
                files: 3,
                versions: 3,
                bytes: 30
            }
        );
        let MetaResponse::Nodes(nodes) = &answers[1] else {
            panic!("{:?}", answers[1]);
        };
        let held: Vec<(SocketAddr, usize)> = nodes.iter().map(|(a, h)| (*a, h.len())).collect();
        assert_eq!(
            held,
            [(addr(1), 2), (addr(2), 2), (addr(3), 2), (addr(9), 0)],
            "every live agent, even one holding nothing"
        );
        assert_eq!(answers[2], MetaResponse::Wanted(vec![Keep::Yes, Keep::No]));
        let MetaResponse::Assigned { items, more } = &answers[3] else {
            panic!("{:?}", answers[3]);
        };
        let names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!((names, *more), (vec!["c"], false));
    }

    fn plan_and_commit(size: u64, forge: bool) -> Step {
        let now = Instant::now();
        let (mut core, cfg) = leader(now);
        let alive: Vec<SocketAddr> = (1..=6).map(addr).collect();
        let view = LiveView {
            live: alive.clone(),
            alive,
        };
        let mut state = MetaState::default();
        let begin = MetaRequest::BeginPut {
            name: "f".into(),
            size,
        };
        let cx = Ctx {
            cfg: &cfg,
            state: &state,
            view: Some(&view),
            now,
            now_ms: 1,
        };
        let reply = match serve(&mut core, &cx, begin.into()) {
            Step::Reply(Ok(ControlResponse::Sdfs(r))) => r,
            Step::AppendPlan { op, reply } => {
                let MetaResponse::PutPlan { version, .. } = reply else {
                    panic!("{reply:?}");
                };
                assert_eq!(
                    state.apply(&Command { now_ms: 1, op }),
                    Applied::Version(version)
                );
                core.plans().appended("f", version, now);
                core.plans().settled("f", version, Ok(()));
                reply
            }
            other => panic!("{other:?}"),
        };
        let MetaResponse::PutPlan {
            version,
            chain,
            plan,
            ..
        } = reply
        else {
            panic!("{reply:?}");
        };
        assert_eq!(chain.len(), 4);
        let mut holders = chain[..3].to_vec();
        if forge {
            let outsider = (1..=6).map(addr).find(|a| !chain.contains(a)).unwrap();
            holders[1] = outsider;
        }
        let commit = MetaRequest::CommitPut {
            name: "f".into(),
            version,
            checksum: [7; 32],
            holders,
            plan,
        };
        let cx = Ctx {
            cfg: &cfg,
            state: &state,
            view: Some(&view),
            now,
            now_ms: 2,
        };
        serve(&mut core, &cx, commit.into())
    }

    #[test]
    fn the_leader_commits_only_on_holders_of_the_chain_it_planned() {
        for size in [3, DEFER_MAX + 1] {
            assert!(
                matches!(
                    plan_and_commit(size, false),
                    Step::Append(Op::PutAt { .. } | Op::CommitPut { .. }, Then::Commit)
                ),
                "{size} bytes"
            );
            match plan_and_commit(size, true) {
                Step::Reply(Err(e @ ControlError::BadRequest(_))) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("which is not in the chain the leader planned"),
                        "{msg}"
                    );
                }
                other => panic!("{size} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unconfirmed_put_is_final_once_a_later_leader_answers() {
        assert_eq!(outcome(true, 3, 3), ChangeOutcome::Committed);
        assert_eq!(outcome(true, 3, 5), ChangeOutcome::Committed);
        assert_eq!(outcome(false, 3, 4), ChangeOutcome::Failed);
        // Its own leader still holds it in the log.
        assert_eq!(outcome(false, 3, 3), ChangeOutcome::Pending);
    }
}
