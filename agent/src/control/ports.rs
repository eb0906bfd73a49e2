//! What the leader task reaches outside itself, as one trait: the applied
//! state, Raft (hand over an entry, confirm leadership), membership, and
//! the transfers it starts (repair copies, job outputs). [`Live`] is the
//! agent's; the simulation (`sim.rs`) has its own, on a virtual clock.

use super::Inner;
use super::core::{ScanJob, Scanned};
use super::error::{ControlError, Refusal};
use super::repair::Copy;
use super::serve::LiveView;
use super::state::MetaState;
use super::store::read_sm;
use super::types::{Applied, Command, Op};
use dml_shared::api::{MemberState, Request as ApiRequest, Response};
use dml_shared::client::Client;
use dml_shared::infer::{ImageResult, JobId};
use dml_shared::sdfs::DataRequest;
use dml_shared::telemetry::RepairProgress;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An entry handed to Raft; resolves when it applies: its result and the
/// term it was appended in.
pub(crate) type Pending = BoxFuture<'static, Result<(Applied, u64), Refusal>>;

/// Where this voter stands, from Raft's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// This voter leads in `term`.
    pub leading: bool,
    pub term: u64,
    /// (term, index) of the last applied entry.
    pub applied: Option<(u64, u64)>,
}

pub(crate) trait Ports: Send + Sync + 'static {
    /// Reads the applied state (its lock is held only for `f`).
    fn read<T>(&self, f: impl FnOnce(&MetaState) -> T) -> T;
    /// Hands `cmd` to Raft, in call order, without waiting for it to commit.
    fn submit(&self, cmd: Command) -> BoxFuture<'_, Result<Pending, Refusal>>;
    /// One quorum round confirming this leader; done once reads see every
    /// committed entry.
    fn confirm(&self) -> BoxFuture<'static, Result<(), Refusal>>;
    /// The membership view.
    fn view(&self) -> BoxFuture<'static, LiveView>;
    /// Runs a repair copy; the entry recording it, if the target stored it.
    fn copy(&self, copy: Copy) -> BoxFuture<'static, Option<Op>>;
    /// Runs a repair and balance scan over `files` (an O(1) copy) on a
    /// blocking thread, timed; `None` if it failed.
    fn scan(&self, job: ScanJob, files: MetaState) -> BoxFuture<'static, Option<Scanned>> {
        Box::pin(async move {
            let run = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mut done = job.run(&files);
                done.took = started.elapsed();
                // The copy's last reference: let it go here, not on the leader task.
                drop(files);
                done
            });
            run.await.ok()
        })
    }
    /// Publishes re-replication's progress (telemetry).
    fn repair_progress(&self, _: RepairProgress) {}
    /// Publishes balance's moves (metrics).
    fn balance_progress(&self, _: super::balance::BalanceProgress) {}
    /// Tells `holders` that a delete of `name` (versions up to `through`)
    /// committed, so they drop their copies; nobody waits for the answers.
    fn drop_deleted(&self, _name: &str, _through: u64, _holders: &[SocketAddr]) {}
    /// Stores a finished job's results in SDFS; the file's name if stored.
    fn store_output(
        &self,
        job: JobId,
        results: Vec<ImageResult>,
    ) -> BoxFuture<'static, Option<String>>;
    /// Reads a finished job's stored results back.
    fn read_output(
        &self,
        name: String,
    ) -> BoxFuture<'static, Result<Vec<ImageResult>, ControlError>>;
}

/// The agent's ports: its Raft node, state machine, membership and SDFS.
pub(crate) struct Live(pub Arc<Inner>);

/// Numbers the scratch files of output reads.
static OUTPUT_READS: AtomicU64 = AtomicU64::new(0);

fn leader_addr(node: Option<openraft::BasicNode>) -> Option<std::net::SocketAddr> {
    node.and_then(|n| n.addr.parse().ok())
}

impl Ports for Live {
    fn read<T>(&self, f: impl FnOnce(&MetaState) -> T) -> T {
        let sm = self.0.sm.as_ref().expect("the leader is a voter");
        read_sm(sm, |d| f(&d.state))
    }

    fn submit(&self, cmd: Command) -> BoxFuture<'_, Result<Pending, Refusal>> {
        Box::pin(async move {
            let raft = self.0.raft.get().ok_or(Refusal::NotLeader(None))?;
            let rx = raft
                .client_write_ff(cmd)
                .await
                .map_err(|e| ControlError::Raft(e.to_string()))?;
            let pending: Pending = Box::pin(async move {
                match rx.await {
                    Err(_) => Err(ControlError::Raft("the Raft core stopped".into()).into()),
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                        Err(Refusal::NotLeader(leader_addr(f.leader_node)))
                    }
                    Ok(Err(e)) => Err(ControlError::Raft(e.to_string()).into()),
                    Ok(Ok(r)) => Ok((r.data, r.log_id.leader_id.term)),
                }
            });
            Ok(pending)
        })
    }

    fn confirm(&self) -> BoxFuture<'static, Result<(), Refusal>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let raft = inner.raft.get().ok_or(Refusal::NotLeader(None))?;
            let wait = inner.s.leader_wait();
            let sent = std::time::Instant::now();
            let deadline = sent + wait;
            // openraft gives each heartbeat of a check one heartbeat interval (100 ms), so
            // a busy host's late acks fail a round though the leader still leads: rounds
            // are tried again until `leader_wait` is spent.
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match tokio::time::timeout(left, raft.ensure_linearizable()).await {
                    Err(_) => return Err(ControlError::NoQuorum { waited: wait }.into()),
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                        return Err(Refusal::NotLeader(leader_addr(f.leader_node)));
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))))
                        if std::time::Instant::now() < deadline =>
                    {
                        // Not a hot loop when the voters fail at once (down, refusing).
                        tokio::time::sleep(inner.s.control.heartbeat_interval / 4).await;
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                        let waited = Duration::from_millis(sent.elapsed().as_millis() as u64);
                        return Err(ControlError::NoQuorum { waited }.into());
                    }
                    Ok(Err(e)) => return Err(ControlError::Raft(e.to_string()).into()),
                }
            }
        })
    }

    fn view(&self) -> BoxFuture<'static, LiveView> {
        let inner = self.0.clone();
        Box::pin(async move { live_view(&inner).await })
    }

    fn copy(&self, copy: Copy) -> BoxFuture<'static, Option<Op>> {
        let inner = self.0.clone();
        Box::pin(async move { run_copy(&inner, copy).await })
    }

    fn repair_progress(&self, p: RepairProgress) {
        self.0.repair.send_replace(p);
    }

    fn balance_progress(&self, p: super::balance::BalanceProgress) {
        self.0.balance.send_replace(p);
    }

    fn drop_deleted(&self, name: &str, through: u64, holders: &[SocketAddr]) {
        for &holder in holders {
            let req = ApiRequest::Data(DataRequest::Drop {
                name: name.to_string(),
                through,
            });
            let wait = self.0.s.sdfs.put_timeout;
            tokio::spawn(async move {
                let mut client = Client::new(holder).with_timeout(wait);
                match client.call(&req).await {
                    Ok(Response::Ok) => {}
                    // Its next reconcile drops them.
                    other => {
                        tracing::info!(%holder, answer = ?other, "a holder did not drop a deleted file's copies yet")
                    }
                }
            });
        }
    }

    fn store_output(
        &self,
        job: JobId,
        results: Vec<ImageResult>,
    ) -> BoxFuture<'static, Option<String>> {
        let inner = self.0.clone();
        Box::pin(async move {
            match store_output(&inner, job, &results).await {
                Ok(name) => Some(name),
                Err(e) => {
                    tracing::warn!(job, error = %e, "cannot store the job's output yet");
                    None
                }
            }
        })
    }

    fn read_output(
        &self,
        name: String,
    ) -> BoxFuture<'static, Result<Vec<ImageResult>, ControlError>> {
        let inner = self.0.clone();
        Box::pin(async move { read_output(&inner, &name).await })
    }
}

/// (live: alive or suspect, alive) agent addresses from membership.
pub(crate) async fn live_view(inner: &Inner) -> LiveView {
    let members = inner.membership.members().await.unwrap_or_default();
    let pick = |ok: fn(MemberState) -> bool| {
        let mut v: Vec<_> = members
            .iter()
            .filter(|m| ok(m.state))
            .map(|m| m.id.addr)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    LiveView {
        live: pick(MemberState::is_live),
        alive: pick(|s| s == MemberState::Alive),
    }
}

/// Asks the target to copy the version; the entry recording it as a holder.
async fn run_copy(inner: &Inner, copy: Copy) -> Option<Op> {
    let sdfs = &inner.s.sdfs;
    let transfer = Duration::from_secs_f64(copy.size as f64 / sdfs.repair_bytes_per_sec as f64);
    let mut client = Client::new(copy.target).with_timeout(transfer + sdfs.put_timeout);
    let req = ApiRequest::Data(DataRequest::Replicate {
        name: copy.name.clone(),
        version: copy.version,
        size: copy.size,
        checksum: copy.checksum,
        sources: copy.sources.clone(),
    });
    tracing::info!(name = %copy.name, version = copy.version, target = %copy.target, "repair: copying");
    match client.call(&req).await {
        Ok(Response::Stored { holders, .. }) if holders.contains(&copy.target) => {
            Some(Op::SetReplicas {
                name: copy.name,
                version: copy.version,
                add: vec![copy.target],
                drop: copy.dead,
            })
        }
        Ok(other) => {
            tracing::warn!(name = %copy.name, target = %copy.target, answer = ?other, "repair: copy refused");
            None
        }
        Err(e) => {
            tracing::warn!(name = %copy.name, target = %copy.target, error = %e, "repair: copy failed");
            None
        }
    }
}

/// Why a job's output could not be stored or read back.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sdfs(#[from] dml_shared::Error),
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a finished job's output back from SDFS.
async fn read_output(inner: &Inner, name: &str) -> Result<Vec<ImageResult>, ControlError> {
    read_output_file(inner, name)
        .await
        .map_err(|e| ControlError::Raft(format!("the job output {name}: {e}")))
}

async fn read_output_file(inner: &Inner, name: &str) -> Result<Vec<ImageResult>, OutputError> {
    let dir = inner.s.data_dir.join("tmp");
    std::fs::create_dir_all(&dir).map_err(file_error(&dir))?;
    let path = dir.join(format!(
        "read-{}-{}",
        std::process::id(),
        OUTPUT_READS.fetch_add(1, Ordering::Relaxed)
    ));
    let sdfs = dml_shared::sdfs_client::Sdfs::new(inner.s.me);
    let got = sdfs
        .get(name, &path, &dml_shared::sdfs_client::no_progress)
        .await;
    let text = match got {
        Ok(_) => std::fs::read_to_string(&path).map_err(file_error(&path)),
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(&path);
    text?
        .lines()
        .enumerate()
        .map(|(n, l)| {
            dml_shared::infer::parse_jsonl_line(l).map_err(|e| OutputError::Line {
                line: n + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Writes a finished job's results to SDFS as `jobs/<id>/output.jsonl`.
async fn store_output(
    inner: &Inner,
    job: JobId,
    results: &[ImageResult],
) -> Result<String, OutputError> {
    let mut text = String::new();
    for r in results {
        text.push_str(&dml_shared::infer::jsonl_line(r));
        text.push('\n');
    }
    let name = format!("jobs/{job}/output.jsonl");
    let dir = inner.s.data_dir.join("tmp");
    std::fs::create_dir_all(&dir).map_err(file_error(&dir))?;
    let path = dir.join(format!("job-{job}-output.jsonl"));
    std::fs::write(&path, text).map_err(file_error(&path))?;
    let sdfs = dml_shared::sdfs_client::Sdfs::new(inner.s.me);
    let put = sdfs
        .put(&path, &name, &dml_shared::sdfs_client::no_progress)
        .await;
    let _ = std::fs::remove_file(&path);
    put?;
    Ok(name)
}
