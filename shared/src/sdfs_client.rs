//! The client side of every SDFS flow (put, get, get-versions, delete, ls,
//! store, load, ...), used by `dml`, the cluster tests and the bench.
//!
//! Metadata goes through the agent given to [`Sdfs::new`], which forwards it to
//! the Raft leader (a `NotLeader` redirect is followed); once the client knows
//! the leader (asked in the background) it sends metadata straight there as
//! `AtLeader`, and back through its agent whenever that fails. Bytes travel
//! straight between this process and the replicas: a `Request::Data` frame,
//! then raw frames of at most [`Options::chunk_size`] bytes, then an empty
//! frame (a put then sends the checksum it computed while reading the file).
//! Memory stays bounded: a few chunks in flight, whatever the file size.
//! Connections are kept open and reused while the agent keeps them open.
//!
//! Files written locally appear atomically: bytes go to a hidden temp file next
//! to the target, are BLAKE3-checked (hashing and writing on two threads), then
//! renamed into place; fsynced only with [`Options::sync_local`]. A copy whose
//! checksum does not match is reported to the agent that sent it
//! (`Data(BadCopy)`) and the next replica is tried.

use crate::api::{Request, Response};
use crate::client::{Client, read_response, send_request, unexpected};
use crate::conn::{Conn, FrameWrite, IdleConns};
use crate::error::{Error, Result};
use crate::framing::{DEFAULT_MAX_FRAME, write_frame};
use crate::sdfs::{
    ChangeOutcome, Checksum, DataRequest, FileInfo, Holding, MetaRequest, MetaResponse,
    VersionInfo, glob_match, note_unreached, validate_name,
};
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A put's bytes are cut into at least this many frames (down to
/// [`MIN_FRAME`]), so that each replica of the chain forwards a small file
/// while it is still receiving it instead of after the whole of it.
const FRAMES_PER_PUT: u64 = 16;
/// Smallest data frame of a put.
const MIN_FRAME: usize = 64 << 10;
/// Bytes of a put's file asked from the disk at once when reading starts
/// (the rest follows by sequential readahead).
const PREFETCH: u64 = 8 << 20;
/// Chunks buffered between the disk thread and the network, per transfer.
const CHUNKS_IN_FLIGHT: usize = 2;
/// Pause between two attempts while no leader is known.
const LEADER_RETRY: Duration = Duration::from_millis(200);
/// Redirects followed for one metadata request before giving up.
const MAX_REDIRECTS: usize = 8;
/// Time allowed to read an agent's error after it broke off a transfer.
const ERROR_GRACE: Duration = Duration::from_secs(2);

/// Idle connections kept per client (all agents together).
const MAX_IDLE: usize = 16;

/// Idle connections to agents, reused while they stay open (an agent's API
/// serves one request after another on a connection, data-path ones
/// included), and the leader last seen.
#[derive(Debug)]
struct Conns {
    idle: IdleConns,
    inner: Mutex<ConnsInner>,
}

impl Default for Conns {
    fn default() -> Self {
        Self {
            idle: IdleConns::new(MAX_IDLE),
            inner: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct ConnsInner {
    leader: Option<SocketAddr>,
    learning: bool,
}

impl Conns {
    fn lock(&self) -> MutexGuard<'_, ConnsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        self.idle.take(addr)
    }

    fn put(&self, addr: SocketAddr, s: Conn) {
        self.idle.put(addr, s)
    }

    fn leader(&self) -> Option<SocketAddr> {
        self.lock().leader
    }

    fn forget_leader(&self) {
        self.lock().leader = None;
    }

    /// Whether the caller should ask who leads (nobody else is asking).
    fn start_learning(&self) -> bool {
        let mut g = self.lock();
        !std::mem::replace(&mut g.learning, true)
    }

    fn learned(&self, leader: Option<SocketAddr>) {
        let mut g = self.lock();
        g.leader = leader;
        g.learning = false;
    }
}

/// Timeouts, sizes and limits of the client.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes per data frame on a put.
    pub chunk_size: usize,
    /// Time allowed for one metadata answer.
    pub call_timeout: Duration,
    /// Time allowed to connect and for each data frame to move.
    pub io_timeout: Duration,
    /// Time allowed, after the last frame of a put, for the chain to answer `Stored`.
    pub store_timeout: Duration,
    /// How long to keep asking while the cluster has no leader (an election).
    pub leader_wait: Duration,
    /// Files moved at the same time by `load` and `get_all`.
    pub concurrency: usize,
    /// fsync a fetched copy (and its directory) before a get returns. Off by
    /// default, like `cp`: the copy appears atomically (temp file, verified,
    /// renamed) but a machine crash right after the get may lose it; the
    /// durable copies are the replicas.
    pub sync_local: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            chunk_size: crate::config::SdfsConfig::default().chunk_size,
            call_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            store_timeout: Duration::from_secs(120),
            leader_wait: Duration::from_secs(10),
            concurrency: 4,
            sync_local: false,
        }
    }
}

/// What a transfer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Streaming a put to the replica chain.
    Sending,
    /// Receiving a get.
    Receiving,
    /// Waiting for the chain to store and the leader to commit.
    Committing,
    /// The leader appended the commit but could not confirm it: asking what
    /// became of it.
    Settling,
    /// `load`/`get_all`: `done` and `total` count files.
    Files,
}

/// A progress report: `done` of `total` bytes (or files, for [`Phase::Files`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// Completion in [0, 1]; an empty transfer is complete.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }
}

/// Receives progress reports; called from the task doing the transfer.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress callback that ignores every report.
pub fn no_progress(_: Progress) {}

/// Bytes per second over `elapsed` (0 for an instant transfer of nothing).
pub fn throughput(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { bytes as f64 / s } else { 0.0 }
}

/// The outcome of a committed put.
#[derive(Clone, Debug, PartialEq)]
pub struct PutReport {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    /// Agents that stored it durably, the chain's head first.
    pub holders: Vec<SocketAddr>,
    /// Replicas of the chain that did not store it, with the reason each
    /// gave (or "unreachable"/"timed out"); empty when every replica did.
    pub failed: Vec<(SocketAddr, String)>,
    /// From the first byte hashed to the commit.
    pub elapsed: Duration,
    /// Where `elapsed` went.
    pub phases: PutPhases,
}

/// The stages of a put, one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PutPhases {
    /// The leader's plan (a Raft write), while the file is hashed.
    pub plan: Duration,
    /// Streaming down the replica chain until the replicas report durable copies.
    pub store: Duration,
    /// The leader's commit (a Raft write).
    pub commit: Duration,
}

/// The outcome of a get: a verified copy at `path`.
#[derive(Clone, Debug, PartialEq)]
pub struct GetReport {
    pub name: String,
    pub version: u64,
    pub size: u64,
    /// The replica that served it.
    pub from: SocketAddr,
    pub path: PathBuf,
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent asking the leader for the version's replicas.
    pub lookup: Duration,
}

/// The versions `get_versions` fetched, newest first, and where they went.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionsReport {
    pub name: String,
    /// One per version, newest first; with `merge` every `path` is the merged file.
    pub versions: Vec<GetReport>,
    pub merged: bool,
    pub elapsed: Duration,
}

/// One local file of a `load`.
#[derive(Debug)]
pub struct LoadItem {
    pub local: PathBuf,
    pub name: String,
    pub result: Result<PutReport>,
}

/// The outcome of a `load`: every file, in path order.
#[derive(Debug)]
pub struct LoadReport {
    pub items: Vec<LoadItem>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Bytes of the puts that committed.
    pub fn bytes(&self) -> u64 {
        self.items
            .iter()
            .filter_map(|i| i.result.as_ref().ok())
            .map(|r| r.size)
            .sum()
    }

    pub fn failed(&self) -> usize {
        self.items.iter().filter(|i| i.result.is_err()).count()
    }
}

/// The outcome of a `get_all`: every matching file, in name order.
#[derive(Debug)]
pub struct GetAllReport {
    pub items: Vec<(String, Result<GetReport>)>,
    pub elapsed: Duration,
}

/// Totals over the whole store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub files: u64,
    pub versions: u64,
    pub bytes: u64,
}

/// An SDFS client talking to the cluster through one agent. Cheap to clone;
/// clones share the idle connections and the leader last seen.
#[derive(Clone, Debug)]
pub struct Sdfs {
    agent: SocketAddr,
    opts: Options,
    conns: Arc<Conns>,
}

impl Sdfs {
    pub fn new(agent: SocketAddr) -> Self {
        Self::with_options(agent, Options::default())
    }

    pub fn with_options(agent: SocketAddr, opts: Options) -> Self {
        Self {
            agent,
            opts,
            conns: Arc::default(),
        }
    }

    pub fn agent(&self) -> SocketAddr {
        self.agent
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Sends a metadata request through the agent, following `NotLeader`
    /// redirects and waiting up to `leader_wait` while no leader is known.
    /// Only read-only requests are retried after a transport error.
    pub async fn meta(&self, req: MetaRequest) -> Result<MetaResponse> {
        let repeatable = req.is_idempotent();
        if let Some(leader) = self.conns.leader() {
            match self.meta_at_leader(leader, &req).await {
                Ok(r) => return Ok(r),
                // Not delivered, or not the leader any more: through the agent.
                Err(Error::Connect { .. } | Error::NotLeader { .. }) => self.conns.forget_leader(),
                Err(e) if e.is_transient() && repeatable => self.conns.forget_leader(),
                Err(e) => return Err(e),
            }
        }
        self.learn_leader();
        let deadline = Instant::now() + self.opts.leader_wait;
        let mut target = self.agent;
        let mut redirects = 0;
        loop {
            let err = match self.call_meta(target, Request::Meta(req.clone())).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let retry_at = match &err {
                Error::NotLeader {
                    leader: Some(l), ..
                } if *l != target && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    Some((*l, false))
                }
                Error::NotLeader { .. } => Some((self.agent, true)),
                // Our own agent is not there: say so at once.
                Error::Connect { .. } if target == self.agent => None,
                // The answer was lost (a leader we were sent to, or our
                // agent mid-call, went away): ask our agent again if that is
                // harmless.
                e if e.is_transient() && repeatable => Some((self.agent, true)),
                _ => None,
            };
            match retry_at {
                Some((next, wait)) if Instant::now() < deadline => {
                    if wait {
                        tokio::time::sleep(LEADER_RETRY).await;
                        redirects = 0;
                    }
                    target = next;
                }
                _ => return Err(err),
            }
        }
    }

    /// `req` straight to the leader last seen, as the agents forward it.
    async fn meta_at_leader(&self, leader: SocketAddr, req: &MetaRequest) -> Result<MetaResponse> {
        let fwd = Request::Meta(MetaRequest::AtLeader(Box::new(req.clone())));
        self.call_meta(leader, fwd).await
    }

    /// One metadata call on a pooled connection to `addr`.
    async fn call_meta(&self, addr: SocketAddr, req: Request) -> Result<MetaResponse> {
        let limit = self.opts.call_timeout;
        let mut stream = self.conn(addr, limit).await?;
        // Not through `timed`: a connection that breaks mid-call must stay an
        // i/o error (transient), so an idempotent request such as a commit is
        // asked again instead of being reported failed when its answer is lost.
        let call = async {
            send_request(&mut stream, &req).await?;
            read_response(&mut stream).await
        };
        let answer = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| Error::Timeout {
                addr: addr.to_string(),
                timeout: limit,
            })??;
        self.conns.put(addr, stream);
        match answer {
            Response::Meta(m) => Ok(m),
            Response::NotLeader { leader } => Err(Error::NotLeader {
                addr: addr.to_string(),
                leader,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the agent who leads, in the background; later metadata calls go
    /// straight there.
    fn learn_leader(&self) {
        if !self.conns.start_learning() {
            return;
        }
        let (me, agent) = (self.clone(), self.agent);
        tokio::spawn(async move {
            let mut c = Client::new(agent).with_timeout(me.opts.call_timeout);
            let leader = c.leader().await.ok().and_then(|l| l.leader);
            me.conns.learned(leader);
        });
    }

    /// An idle pooled connection to `addr` that is still open, or a new one
    /// (through the agent's local socket when it runs on this host).
    async fn conn(&self, addr: SocketAddr, limit: Duration) -> Result<Conn> {
        match self.conns.take(addr) {
            Some(s) => Ok(s),
            None => timed(addr, limit, Conn::connect_near(addr)).await,
        }
    }

    /// Stores `local` as the next version of `name`.
    pub async fn put(
        &self,
        local: &Path,
        name: &str,
        progress: ProgressFn<'_>,
    ) -> Result<PutReport> {
        validate_name(name)?;
        let start = Instant::now();
        let size = local_file_size(local)?;
        // Reading starts before the plan, so the file's first bytes come off
        // the disk while the leader plans (and before its Raft write).
        let chunks = spawn_reader(open_local(local)?, put_frame(size, self.opts.chunk_size));
        let begin = MetaRequest::BeginPut {
            name: name.into(),
            size,
        };
        let plan = self.meta(begin).await?;
        let mut phases = PutPhases {
            plan: start.elapsed(),
            ..PutPhases::default()
        };
        let MetaResponse::PutPlan {
            version,
            chain,
            quorum,
            plan,
        } = plan
        else {
            return Err(unexpected(Response::Meta(plan)));
        };
        let put = PutTarget {
            local,
            chunks,
            name,
            version,
            plan,
            size,
        };
        match self
            .store_and_commit(put, chain, quorum, progress, &mut phases)
            .await
        {
            Ok((holders, failed, checksum)) => Ok(PutReport {
                name: name.into(),
                version,
                size,
                checksum,
                holders,
                failed,
                elapsed: start.elapsed(),
                phases,
            }),
            Err(e) => {
                let abort = MetaRequest::AbortPut {
                    name: name.into(),
                    version,
                    plan,
                };
                // Best effort: the leader also expires the pending put itself.
                let _ = self.meta(abort).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_and_commit(
        &self,
        put: PutTarget<'_>,
        chain: Vec<SocketAddr>,
        quorum: usize,
        progress: ProgressFn<'_>,
        phases: &mut PutPhases,
    ) -> Result<(Vec<SocketAddr>, Vec<(SocketAddr, String)>, Checksum)> {
        let (name, version, size, plan) = (put.name, put.version, put.size, put.plan);
        let start = Instant::now();
        if chain.is_empty() {
            return Err(Error::unexpected(format!(
                "the leader gave no replica for \"{name}\" v{version}"
            )));
        }
        // A head that cannot be reached is skipped while enough of the chain is left.
        let mut head = 0;
        let mut skipped = Vec::new();
        let mut stream = loop {
            match self.conn(chain[head], self.opts.io_timeout).await {
                Ok(s) => break s,
                // Enough of the chain is left after skipping this head.
                Err(_) if chain.len() - head > quorum.max(1) => {
                    skipped.push((chain[head], "unreachable".to_string()));
                    head += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let write = DataRequest::Write {
            name: name.into(),
            version,
            size,
            checksum: None,
            downstream: chain[head + 1..].to_vec(),
            plan,
        };
        let addr = chain[head];
        let (holders, chain_failed, checksum) = match self
            .stream_put(
                &mut stream,
                addr,
                write,
                put.local,
                put.chunks,
                size,
                progress,
            )
            .await
        {
            Ok(h) => h,
            Err(e) => return Err(agent_error_or(&mut stream, e).await),
        };
        self.conns.put(addr, stream);
        let mut failed = skipped;
        failed.extend(chain_failed);
        note_unreached(&chain, &holders, &mut failed, "not reached");
        if holders.len() < quorum {
            return Err(Error::QuorumNotReached {
                name: name.into(),
                stored: holders.len(),
                quorum,
                failed,
            });
        }
        progress(Progress {
            phase: Phase::Committing,
            done: size,
            total: size,
        });
        phases.store = start.elapsed();
        let start = Instant::now();
        let commit = MetaRequest::CommitPut {
            name: name.into(),
            version,
            checksum,
            holders: holders.clone(),
            plan,
        };
        let answer = match self.meta(commit.clone()).await {
            // Our agent went away with the answer (it may have led, too): the
            // commit is idempotent, so ask it again through the holders.
            Err(e) if e.is_transient() => match self.commit_through(commit, &holders).await? {
                Some(answer) => answer,
                None => {
                    return Err(Error::CommitUnknown {
                        name: name.into(),
                        version,
                        reason: e.to_string(),
                    });
                }
            },
            r => r?,
        };
        match answer {
            MetaResponse::Committed { .. } | MetaResponse::Done => {}
            MetaResponse::Unconfirmed { .. } => {
                progress(Progress {
                    phase: Phase::Settling,
                    done: size,
                    total: size,
                });
                let ask = MetaRequest::PutOutcome {
                    name: name.into(),
                    version,
                    checksum,
                    plan,
                };
                let lost = || Error::PutLost {
                    name: name.into(),
                    version,
                };
                let unsettled = |waited| Error::CommitUnsettled {
                    name: name.into(),
                    version,
                    waited,
                };
                self.settle(ask, lost, unsettled).await?;
            }
            other => return Err(unexpected(Response::Meta(other))),
        }
        phases.commit = start.elapsed();
        Ok((holders, failed, checksum))
    }

    /// Asks `ask` what became of a commit or delete the leader appended but
    /// no majority confirmed, until the answer is final (`lost` if it never
    /// takes effect) or `leader_wait` has passed (`unsettled`): a change
    /// reported failed never takes effect later.
    async fn settle(
        &self,
        ask: MetaRequest,
        lost: impl Fn() -> Error,
        unsettled: impl Fn(Duration) -> Error,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            tokio::time::sleep(LEADER_RETRY).await;
            match self.meta(ask.clone()).await {
                Ok(MetaResponse::Outcome(ChangeOutcome::Committed)) => return Ok(()),
                Ok(MetaResponse::Outcome(ChangeOutcome::Failed)) => return Err(lost()),
                // Still pending, or no leader can answer yet.
                Ok(MetaResponse::Outcome(ChangeOutcome::Pending)) | Err(_) => {}
                Ok(other) => return Err(unexpected(Response::Meta(other))),
            }
            if start.elapsed() >= self.opts.leader_wait {
                let waited = Duration::from_millis(start.elapsed().as_millis() as u64);
                return Err(unsettled(waited));
            }
        }
    }

    /// Asks `commit` again through each holder other than our agent (after a
    /// lost answer or an unreachable agent): the first answer, a refusal as
    /// an error, or `None` if no holder answers.
    async fn commit_through(
        &self,
        commit: MetaRequest,
        holders: &[SocketAddr],
    ) -> Result<Option<MetaResponse>> {
        for &h in holders.iter().filter(|&&h| h != self.agent) {
            let other = Sdfs::with_options(h, self.opts.clone());
            match other.meta(commit.clone()).await {
                Ok(r) => return Ok(Some(r)),
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Sends `write`, the file's bytes from `chunks` (hashed as they were
    /// read), then their checksum; what the chain stored, and the checksum.
    #[allow(clippy::too_many_arguments)]
    async fn stream_put(
        &self,
        stream: &mut Conn,
        addr: SocketAddr,
        write: DataRequest,
        local: &Path,
        mut chunks: mpsc::Receiver<std::io::Result<Chunk>>,
        size: u64,
        progress: ProgressFn<'_>,
    ) -> Result<(Vec<SocketAddr>, Vec<(SocketAddr, String)>, Checksum)> {
        let io = self.opts.io_timeout;
        timed(addr, io, send_request(stream, &Request::Data(write))).await?;
        let mut sent = 0u64;
        progress(Progress {
            phase: Phase::Sending,
            done: 0,
            total: size,
        });
        let local_err = |reason| Error::LocalFile {
            path: local.display().to_string(),
            reason,
        };
        let mut checksum = None;
        while let Some(chunk) = chunks.recv().await {
            let bytes = match chunk.map_err(local_err)? {
                Chunk::Data(bytes) => bytes,
                Chunk::Checksum(c) => {
                    checksum = Some(c);
                    break;
                }
            };
            sent += bytes.len() as u64;
            if sent > size {
                break;
            }
            timed(
                addr,
                io,
                write_frame(stream.raw(), &bytes, DEFAULT_MAX_FRAME),
            )
            .await?;
            progress(Progress {
                phase: Phase::Sending,
                done: sent,
                total: size,
            });
        }
        let checksum = match checksum {
            Some(c) if sent == size => c,
            _ => {
                return Err(local_err(std::io::Error::other(format!(
                    "changed while being stored: {size} bytes expected, {sent} read"
                ))));
            }
        };
        timed(addr, io, write_frame(stream.raw(), &[], DEFAULT_MAX_FRAME)).await?;
        timed(addr, io, stream.write_frame(&checksum, DEFAULT_MAX_FRAME)).await?;
        progress(Progress {
            phase: Phase::Committing,
            done: size,
            total: size,
        });
        match timed(addr, self.opts.store_timeout, read_response(stream)).await? {
            Response::Stored { holders, failed } => Ok((holders, failed, checksum)),
            other => Err(unexpected(other)),
        }
    }

    /// A file's committed versions (oldest first) and their replicas.
    pub async fn ls(&self, name: &str) -> Result<FileInfo> {
        validate_name(name)?;
        match self.meta(MetaRequest::Stat { name: name.into() }).await? {
            MetaResponse::File(f) if f.versions.is_empty() => {
                Err(Error::NotFound { name: name.into() })
            }
            MetaResponse::File(f) => Ok(f),
            other => Err(unexpected(Response::Meta(other))),
        }
    }

    /// Files whose names match `glob`, in name order.
    pub async fn ls_all(&self, glob: &str) -> Result<Vec<FileInfo>> {
        match self.meta(MetaRequest::List { glob: glob.into() }).await? {
            MetaResponse::Files(mut f) => {
                f.retain(|f| !f.versions.is_empty() && glob_match(glob, &f.name));
                f.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(f)
            }
            other => Err(unexpected(Response::Meta(other))),
        }
    }

    /// Every file in the store.
    pub async fn files(&self) -> Result<Vec<FileInfo>> {
        self.ls_all("*").await
    }

    /// The versions each agent holds, by agent address.
    pub async fn nodes(&self) -> Result<Vec<(SocketAddr, Vec<Holding>)>> {
        match self.meta(MetaRequest::Nodes).await? {
            MetaResponse::Nodes(mut n) => {
                n.sort_by_key(|(a, _)| *a);
                Ok(n)
            }
            other => Err(unexpected(Response::Meta(other))),
        }
    }

    /// Files, versions and bytes in the store.
    pub async fn count(&self) -> Result<Count> {
        match self.meta(MetaRequest::Count).await? {
            MetaResponse::Count {
                files,
                versions,
                bytes,
            } => Ok(Count {
                files,
                versions,
                bytes,
            }),
            other => Err(unexpected(Response::Meta(other))),
        }
    }

    /// Deletes every version of `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.delete_with(name, &no_progress).await
    }

    /// [`Sdfs::delete`], telling `progress` ([`Phase::Settling`]) when the
    /// leader could not confirm the delete and its outcome is awaited.
    pub async fn delete_with(&self, name: &str, progress: ProgressFn<'_>) -> Result<()> {
        validate_name(name)?;
        match self.meta(MetaRequest::Delete { name: name.into() }).await? {
            MetaResponse::Done => Ok(()),
            MetaResponse::DeleteUnconfirmed { term, through, .. } => {
                progress(Progress {
                    phase: Phase::Settling,
                    done: 0,
                    total: 0,
                });
                let ask = MetaRequest::DeleteOutcome {
                    name: name.into(),
                    term,
                    through,
                };
                self.settle(
                    ask,
                    || Error::DeleteLost { name: name.into() },
                    |waited| Error::DeleteUnsettled {
                        name: name.into(),
                        waited,
                    },
                )
                .await
            }
            other => Err(unexpected(Response::Meta(other))),
        }
    }

    /// What `node` (default: this client's agent) stores on its disk.
    pub async fn store(&self, node: Option<SocketAddr>) -> Result<Vec<Holding>> {
        let mut c = Client::new(node.unwrap_or(self.agent)).with_timeout(self.opts.call_timeout);
        let mut h = c.holdings().await?;
        h.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(h)
    }

    /// Fetches the newest committed version of `name` into `local`.
    pub async fn get(
        &self,
        name: &str,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        let start = Instant::now();
        let file = self.ls(name).await?;
        let lookup = start.elapsed();
        let v = file
            .versions
            .last()
            .expect("ls returns files with versions");
        with_lookup(self.fetch(name, v, local, progress).await, lookup)
    }

    /// Fetches one committed version of `name` into `local`.
    pub async fn get_version(
        &self,
        name: &str,
        version: u64,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        let start = Instant::now();
        let file = self.ls(name).await?;
        let lookup = start.elapsed();
        let v = file
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| Error::NoSuchVersion {
                name: name.into(),
                version,
            })?;
        with_lookup(self.fetch(name, v, local, progress).await, lookup)
    }

    /// The last `n` versions of `name`, newest first. Without `merge`, `out` is
    /// a directory (created if missing) that receives one file per version,
    /// named by [`version_file_name`]. With `merge`, `out` is one file: each
    /// version preceded by its [`merge_header`] line and followed by a newline.
    pub async fn get_versions(
        &self,
        name: &str,
        n: usize,
        out: &Path,
        merge: bool,
        progress: ProgressFn<'_>,
    ) -> Result<VersionsReport> {
        let start = Instant::now();
        let file = self.ls(name).await?;
        let wanted = last_versions(&file.versions, n);
        let mut reports = Vec::with_capacity(wanted.len());
        if !merge {
            std::fs::create_dir_all(out).map_err(|reason| Error::LocalFile {
                path: out.display().to_string(),
                reason,
            })?;
            for v in wanted {
                let path = out.join(version_file_name(name, v.version));
                reports.push(self.fetch(name, &v, &path, progress).await?);
            }
        } else {
            // Each version lands in a verified part file beside `out`; the parts
            // are then concatenated into a temp file renamed over `out`.
            let mut parts = Vec::new();
            let result = async {
                for v in &wanted {
                    let part = temp_path(out)?;
                    parts.push(part.clone());
                    reports.push(self.fetch(name, v, &part, progress).await?);
                }
                let sections: Vec<(String, PathBuf)> = wanted
                    .iter()
                    .zip(&parts)
                    .map(|(v, p)| (merge_header(name, v.version, v.size), p.clone()))
                    .collect();
                let out = out.to_path_buf();
                tokio::task::spawn_blocking(move || write_merged(&out, &sections))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?
            }
            .await;
            for p in &parts {
                let _ = std::fs::remove_file(p);
            }
            result?;
            for r in &mut reports {
                r.path = out.to_path_buf();
            }
        }
        Ok(VersionsReport {
            name: name.into(),
            versions: reports,
            merged: merge,
            elapsed: start.elapsed(),
        })
    }

    /// Fetches the newest version of every file matching `glob` into `dir`,
    /// each at `dir/<sdfs name>` (subdirectories created as needed). A failed
    /// file does not stop the others.
    pub async fn get_all(
        &self,
        glob: &str,
        dir: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetAllReport> {
        let start = Instant::now();
        let files = self.ls_all(glob).await?;
        std::fs::create_dir_all(dir).map_err(|reason| Error::LocalFile {
            path: dir.display().to_string(),
            reason,
        })?;
        let jobs: Vec<(String, VersionInfo, PathBuf)> = files
            .into_iter()
            .filter_map(|f| {
                let v = f.versions.last()?.clone();
                let path = dir.join(&f.name);
                Some((f.name, v, path))
            })
            .collect();
        let names: Vec<String> = jobs.iter().map(|(n, _, _)| n.clone()).collect();
        let results = bounded(
            jobs,
            self.opts.concurrency,
            |(name, v, path)| {
                let me = self.clone();
                async move {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|reason| Error::LocalFile {
                            path: parent.display().to_string(),
                            reason,
                        })?;
                    }
                    me.fetch(&name, &v, &path, &no_progress).await
                }
            },
            progress,
        )
        .await;
        Ok(GetAllReport {
            items: names.into_iter().zip(results).collect(),
            elapsed: start.elapsed(),
        })
    }

    /// Puts every regular file under `dir` (recursively, in path order) as
    /// `prefix/<relative path>` (just the relative path when `prefix` is
    /// empty), `concurrency` at a time. A failed file does not stop the others.
    pub async fn load(
        &self,
        dir: &Path,
        prefix: &str,
        progress: ProgressFn<'_>,
    ) -> Result<LoadReport> {
        let start = Instant::now();
        let files = walk_files(dir)?;
        let jobs: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|(path, rel)| {
                let name = load_name(prefix, &rel);
                (path, name)
            })
            .collect();
        let keys = jobs.clone();
        let results = bounded(
            jobs,
            self.opts.concurrency,
            |(path, name)| {
                let me = self.clone();
                async move { me.put(&path, &name, &no_progress).await }
            },
            progress,
        )
        .await;
        Ok(LoadReport {
            items: keys
                .into_iter()
                .zip(results)
                .map(|((local, name), result)| LoadItem {
                    local,
                    name,
                    result,
                })
                .collect(),
            elapsed: start.elapsed(),
        })
    }

    /// Fetches `v` from its replicas, nearest first, into `local`.
    async fn fetch(
        &self,
        name: &str,
        v: &VersionInfo,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        let start = Instant::now();
        check_target(local)?;
        let mut tried = Vec::new();
        for addr in nearest_first(&v.replicas, self.agent) {
            match self.fetch_from(addr, name, v, local, progress).await {
                Ok(()) => {
                    return Ok(GetReport {
                        name: name.into(),
                        version: v.version,
                        size: v.size,
                        from: addr,
                        path: local.to_path_buf(),
                        elapsed: start.elapsed(),
                        lookup: Duration::ZERO,
                    });
                }
                // A local problem would repeat on every replica.
                Err(e @ Error::LocalFile { .. }) => return Err(e),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        if tried.is_empty() {
            tried.push("no replica is recorded".into());
        }
        Err(Error::ReplicasFailed {
            name: name.into(),
            version: v.version,
            tried: tried.join("; "),
        })
    }

    /// Asks `addr` for `v` of `name` (`Data(Read)`); the connection once its
    /// `ReadStart` matches the committed size and checksum.
    async fn start_read(&self, addr: SocketAddr, name: &str, v: &VersionInfo) -> Result<Conn> {
        let io = self.opts.io_timeout;
        let read = DataRequest::Read {
            name: name.into(),
            version: v.version,
        };
        let mut stream = self.conn(addr, io).await?;
        timed(addr, io, send_request(&mut stream, &Request::Data(read))).await?;
        match timed(addr, io, read_response(&mut stream)).await? {
            Response::ReadStart { size, checksum } if size == v.size && checksum == v.checksum => {
                Ok(stream)
            }
            Response::ReadStart { size, .. } => Err(Error::Transfer {
                addr: addr.to_string(),
                reason: format!(
                    "it holds {size} bytes with another checksum than the committed {} bytes",
                    v.size
                ),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn fetch_from(
        &self,
        addr: SocketAddr,
        name: &str,
        v: &VersionInfo,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        let io = self.opts.io_timeout;
        let mut stream = self.start_read(addr, name, v).await?;
        let (size, checksum) = (v.size, v.checksum);
        let tmp = temp_path(local)?;
        let sink = Sink::start(&tmp, self.opts.sync_local)?;
        let received = receive_frames(&mut stream, addr, io, size, &sink, progress).await;
        let written = sink.finish().await;
        let outcome = async {
            let got = received?;
            let (hash, bytes) = written.map_err(|reason| Error::LocalFile {
                path: tmp.display().to_string(),
                reason,
            })?;
            if got != size || bytes != size {
                return Err(Error::Transfer {
                    addr: addr.to_string(),
                    reason: format!("sent {got} bytes of {size}"),
                });
            }
            if hash != checksum {
                // The stream ended cleanly: tell the agent on it, so it
                // re-checks its copy and repairs it.
                let bad = Request::Data(DataRequest::BadCopy {
                    name: name.into(),
                    version: v.version,
                });
                let _ = timed(addr, io, async {
                    send_request(&mut stream, &bad).await?;
                    read_response(&mut stream).await
                })
                .await;
                return Err(Error::ChecksumMismatch {
                    name: name.into(),
                    version: v.version,
                    from: addr,
                });
            }
            std::fs::rename(&tmp, local).map_err(|reason| Error::LocalFile {
                path: local.display().to_string(),
                reason,
            })?;
            if self.opts.sync_local {
                sync_parent(local);
            }
            Ok(())
        }
        .await;
        match &outcome {
            Ok(()) => self.conns.put(addr, stream),
            Err(_) => {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        outcome
    }
}

/// A fetch's report with the lookup before it counted in.
fn with_lookup(r: Result<GetReport>, lookup: Duration) -> Result<GetReport> {
    r.map(|mut g| {
        g.lookup = lookup;
        g.elapsed += lookup;
        g
    })
}

/// Reads a `Data(Read)` stream's frames up to the end frame into recycled
/// buffers of at most [`PIECE`] bytes (a frame may span several) and hands
/// them to `sink`; returns the bytes received. A writer that stopped ends the
/// reading early (its error comes from [`Sink::finish`]).
async fn receive_frames(
    stream: &mut Conn,
    addr: SocketAddr,
    io: Duration,
    size: u64,
    sink: &Sink,
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let broke = |reason: String| Error::Transfer {
        addr: addr.to_string(),
        reason,
    };
    // Fills `buf` within `io`; a close mid-file is a transfer error.
    let read_exact = async |stream: &mut Conn, buf: &mut [u8]| {
        timed(addr, io, async {
            stream.raw().read_exact(buf).await.map_err(Error::from)
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            Error::Timeout { .. } => e,
            _ => broke("connection closed in the middle of the file".into()),
        })
    };
    let mut got = 0u64;
    progress(Progress {
        phase: Phase::Receiving,
        done: 0,
        total: size,
    });
    loop {
        let mut len = [0u8; 4];
        read_exact(stream, &mut len).await?;
        let mut left = u32::from_be_bytes(len) as u64;
        if left == 0 {
            return Ok(got);
        }
        if got + left > size {
            return Err(broke(format!("sent more than the announced {size} bytes")));
        }
        while left > 0 {
            let mut buf = sink.buffer();
            let n = left.min(PIECE as u64) as usize;
            buf.resize(n, 0);
            read_exact(stream, &mut buf).await?;
            left -= n as u64;
            got += n as u64;
            if !sink.send(buf).await {
                return Ok(got);
            }
            progress(Progress {
                phase: Phase::Receiving,
                done: got,
                total: size,
            });
        }
    }
}

/// Bytes per piece handed from the network to the hashing and writing threads.
const PIECE: usize = 256 << 10;
/// Pieces queued towards each of those threads.
const PIECES_IN_FLIGHT: usize = 8;

/// A fetched copy on its way to disk: one blocking thread hashes the pieces
/// while another writes them (and fsyncs at the end when asked); buffers come
/// back for reuse once both are done with them.
struct Sink {
    hash_tx: mpsc::Sender<Arc<Vec<u8>>>,
    write_tx: mpsc::Sender<Arc<Vec<u8>>>,
    spare: std::sync::Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
    hasher: tokio::task::JoinHandle<Checksum>,
    writer: tokio::task::JoinHandle<std::io::Result<u64>>,
}

impl Sink {
    fn start(path: &Path, sync: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|reason| Error::LocalFile {
                path: path.display().to_string(),
                reason,
            })?;
        let (hash_tx, mut hash_rx) = mpsc::channel::<Arc<Vec<u8>>>(PIECES_IN_FLIGHT);
        let (write_tx, mut write_rx) = mpsc::channel::<Arc<Vec<u8>>>(PIECES_IN_FLIGHT);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let give_back = |piece: Arc<Vec<u8>>, to: &std::sync::mpsc::Sender<Vec<u8>>| {
            // The second of the two threads to let go gets the buffer back.
            if let Ok(buf) = Arc::try_unwrap(piece) {
                let _ = to.send(buf);
            }
        };
        let spare_h = spare_tx.clone();
        let hasher = tokio::task::spawn_blocking(move || {
            let mut h = blake3::Hasher::new();
            while let Some(piece) = hash_rx.blocking_recv() {
                h.update(&piece);
                give_back(piece, &spare_h);
            }
            *h.finalize().as_bytes()
        });
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let (mut n, mut flushed) = (0u64, 0u64);
            while let Some(piece) = write_rx.blocking_recv() {
                file.write_all(&piece)?;
                n += piece.len() as u64;
                give_back(piece, &spare_tx);
                if sync && n - flushed >= WRITEBACK_EVERY {
                    crate::disk::start_writeback(&file, flushed, n - flushed);
                    flushed = n;
                }
            }
            if sync {
                file.sync_all()?;
            }
            Ok(n)
        });
        Ok(Self {
            hash_tx,
            write_tx,
            spare: std::sync::Mutex::new(spare_rx),
            hasher,
            writer,
        })
    }

    /// A recycled buffer, or a new one.
    fn buffer(&self) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE))
    }

    /// Hands a piece to both threads; false once the writer has stopped.
    async fn send(&self, piece: Vec<u8>) -> bool {
        let piece = Arc::new(piece);
        let hashed = self.hash_tx.send(piece.clone()).await.is_ok();
        self.write_tx.send(piece).await.is_ok() && hashed
    }

    /// The checksum of what was received and the bytes written (fsynced when asked).
    async fn finish(self) -> std::io::Result<(Checksum, u64)> {
        drop((self.hash_tx, self.write_tx));
        let written = self.writer.await.map_err(std::io::Error::other)??;
        let hash = self.hasher.await.map_err(std::io::Error::other)?;
        Ok((hash, written))
    }
}

/// `name`'s last path component plus `.v<version>`: the file `get-versions`
/// writes for one version (`photos/cat.jpg` v3 -> `cat.jpg.v3`).
pub fn version_file_name(name: &str, version: u64) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{base}.v{version}")
}

/// The line that precedes each version in a merged `get-versions` file; the
/// version's exact bytes follow it, then one `\n`.
pub fn merge_header(name: &str, version: u64, size: u64) -> String {
    format!("===== {name} version {version} ({size} bytes) =====\n")
}

/// The last `n` of `versions` (given oldest first), newest first.
pub fn last_versions(versions: &[VersionInfo], n: usize) -> Vec<VersionInfo> {
    versions.iter().rev().take(n).cloned().collect()
}

/// The SDFS name `load` gives a file at `rel` under its directory.
pub fn load_name(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// `replicas` with `agent` first, then those on the agent's host, then the rest,
/// each group in the recorded order.
pub fn nearest_first(replicas: &[SocketAddr], agent: SocketAddr) -> Vec<SocketAddr> {
    let mut v = replicas.to_vec();
    v.sort_by_key(|r| {
        if *r == agent {
            0
        } else if r.ip() == agent.ip() {
            1
        } else {
            2
        }
    });
    v
}

/// Concatenates `(header, part file)` sections into `out`, atomically.
fn write_merged(out: &Path, sections: &[(String, PathBuf)]) -> Result<()> {
    let tmp = temp_path(out)?;
    let local = |path: &Path| {
        let path = path.display().to_string();
        move |reason| Error::LocalFile { path, reason }
    };
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(local(&tmp))?;
        let mut w = std::io::BufWriter::new(file);
        for (header, part) in sections {
            w.write_all(header.as_bytes()).map_err(local(&tmp))?;
            let mut src = std::fs::File::open(part).map_err(local(part))?;
            std::io::copy(&mut src, &mut w).map_err(local(&tmp))?;
            w.write_all(b"\n").map_err(local(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| local(&tmp)(e.into_error()))?;
        file.sync_all().map_err(local(&tmp))?;
        std::fs::rename(&tmp, out).map_err(local(out))?;
        sync_parent(out);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A local file can be written at `path`: its directory exists and it is not
/// itself a directory.
fn check_target(path: &Path) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::LocalFile {
            path: path.display().to_string(),
            reason: std::io::Error::other(reason.to_string()),
        })
    };
    if path.is_dir() {
        return bad("is a directory");
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return bad("its directory does not exist");
    }
    Ok(())
}

/// Size of a local regular file, or a clear error naming it.
fn local_file_size(path: &Path) -> Result<u64> {
    let bad = |reason: std::io::Error| Error::LocalFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(bad)?;
    if !meta.is_file() {
        return Err(bad(std::io::Error::other("not a regular file")));
    }
    Ok(meta.len())
}

fn open_local(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|reason| Error::LocalFile {
        path: path.display().to_string(),
        reason,
    })
}

/// The file a put sends and what it becomes.
struct PutTarget<'a> {
    local: &'a Path,
    /// The file's bytes, then their checksum, from [`spawn_reader`].
    chunks: mpsc::Receiver<std::io::Result<Chunk>>,
    name: &'a str,
    version: u64,
    /// The plan's id, for the commit.
    plan: u64,
    size: u64,
}

/// What the reading thread sends.
enum Chunk {
    /// The next bytes.
    Data(Vec<u8>),
    /// The checksum of every byte sent, last.
    Checksum(Checksum),
}

/// Reads `file` on a blocking thread into chunks of `chunk` bytes (the last
/// may be shorter), at most [`CHUNKS_IN_FLIGHT`] ahead of the consumer,
/// hashing them as it goes; the checksum comes after the last chunk.
fn spawn_reader(mut file: std::fs::File, chunk: usize) -> mpsc::Receiver<std::io::Result<Chunk>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let chunk = chunk.max(1);
    tokio::task::spawn_blocking(move || {
        crate::disk::read_sequentially(&file, PREFETCH);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match fill(&mut file, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if tx
                .blocking_send(Ok(Chunk::Data(buf[..n].to_vec())))
                .is_err()
            {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(Chunk::Checksum(*hasher.finalize().as_bytes())));
    });
    rx
}

/// The data frame size of a put of `size` bytes: a sixteenth of the file,
/// at least [`MIN_FRAME`] and at most `chunk` (the agents' limit).
fn put_frame(size: u64, chunk: usize) -> usize {
    let chunk = chunk.max(1);
    usize::try_from(size / FRAMES_PER_PUT)
        .unwrap_or(usize::MAX)
        .clamp(MIN_FRAME.min(chunk), chunk)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Bytes written before their writeback is started, so the final fsync of a
/// large download does not have to write the whole file at once.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A hidden, unique temp file name beside `target`.
fn temp_path(target: &Path) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file = target.file_name().ok_or_else(|| Error::LocalFile {
        path: target.display().to_string(),
        reason: std::io::Error::other("names no file"),
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        ".{}.{}-{n}.dml-part",
        file.to_string_lossy(),
        std::process::id()
    );
    Ok(target.with_file_name(name))
}

/// Makes a rename durable (best effort: some filesystems refuse to sync a directory).
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Regular files under `dir`, recursively, with their `/`-separated relative
/// paths, sorted by that path. Symlinks to files are followed, to directories not.
fn walk_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let bad = |p: &Path| {
        let path = p.display().to_string();
        move |reason| Error::LocalFile { path, reason }
    };
    if !std::fs::metadata(dir).map_err(bad(dir))?.is_dir() {
        return Err(bad(dir)(std::io::Error::other("not a directory")));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(bad(&d))? {
            let entry = entry.map_err(bad(&d))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = entry.file_type().map_err(bad(&path))?;
            if ty.is_dir() {
                stack.push((path, rel));
            } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Runs `f` on every item, `limit` at a time, reporting files done; results
/// come back in the items' order.
async fn bounded<T, R, F, Fut>(
    items: Vec<T>,
    limit: usize,
    f: F,
    progress: ProgressFn<'_>,
) -> Vec<Result<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Send + 'static,
{
    let total = items.len() as u64;
    let mut results: Vec<Option<Result<R>>> = (0..items.len()).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut items = items.into_iter().enumerate();
    let mut done = 0;
    progress(Progress {
        phase: Phase::Files,
        done,
        total,
    });
    loop {
        while set.len() < limit.max(1) {
            let Some((i, item)) = items.next() else { break };
            let fut = f(item);
            set.spawn(async move { (i, fut.await) });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
        done += 1;
        progress(Progress {
            phase: Phase::Files,
            done,
            total,
        });
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Io(std::io::Error::other("task panicked")))))
        .collect()
}

/// Runs an IO step with a deadline; errors become [`Error::Transfer`] naming `addr`.
async fn timed<T>(
    addr: SocketAddr,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        // Errors that already say what went wrong, and where, pass as they are.
        Ok(Err(
            e @ (Error::Remote(_)
            | Error::Connect { .. }
            | Error::Transfer { .. }
            | Error::Auth { .. }
            | Error::NoKey
            | Error::KeyFile { .. }),
        )) => Err(e),
        Ok(Err(e)) => Err(Error::Transfer {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Timeout {
            addr: addr.to_string(),
            timeout: limit,
        }),
    }
}

/// After a transfer broke: the agent's own error if it sent one before
/// closing (a full disk, a refused name), else `e`.
async fn agent_error_or(stream: &mut Conn, e: Error) -> Error {
    if matches!(e, Error::Remote(_) | Error::LocalFile { .. }) {
        return e;
    }
    match tokio::time::timeout(ERROR_GRACE, read_response(stream)).await {
        Ok(Err(remote @ Error::Remote(_))) => remote,
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn version(v: u64) -> VersionInfo {
        VersionInfo {
            version: v,
            size: v,
            checksum: [0; 32],
            replicas: Vec::new(),
            committed_ms: 0,
        }
    }

    #[test]
    fn small_puts_go_in_small_frames_and_large_ones_in_whole_chunks() {
        let mib = 1 << 20;
        assert_eq!(put_frame(0, mib), 64 << 10);
        assert_eq!(put_frame(mib as u64, mib), 64 << 10);
        assert_eq!(put_frame(4 * mib as u64, mib), 256 << 10);
        assert_eq!(put_frame(64 * mib as u64, mib), mib);
        assert_eq!(put_frame(u64::MAX, mib), mib);
        // The agents' limit wins over the smallest frame.
        assert_eq!(put_frame(mib as u64, 4096), 4096);
    }

    #[test]
    fn progress_fraction_is_clamped_and_empty_is_complete() {
        let p = |done, total| Progress {
            phase: Phase::Sending,
            done,
            total,
        };
        assert_eq!(p(0, 0).fraction(), 1.0);
        assert_eq!(p(1, 4).fraction(), 0.25);
        assert_eq!(p(9, 4).fraction(), 1.0);
        assert_eq!(throughput(3 << 20, Duration::from_secs(2)), 1.5 * 1048576.0);
        assert_eq!(throughput(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn the_agent_itself_then_its_host_then_others_serve_reads() {
        let agent = addr("10.0.0.1:8003");
        let replicas = [
            addr("10.0.0.2:8001"),
            addr("10.0.0.1:8002"),
            addr("10.0.0.3:8001"),
            addr("10.0.0.1:8003"),
        ];
        assert_eq!(
            nearest_first(&replicas, agent),
            [replicas[3], replicas[1], replicas[0], replicas[2]]
        );
    }

    #[test]
    fn last_versions_are_newest_first() {
        let vs: Vec<VersionInfo> = (1..=5).map(version).collect();
        let got: Vec<u64> = last_versions(&vs, 3).iter().map(|v| v.version).collect();
        assert_eq!(got, [5, 4, 3]);
        assert_eq!(last_versions(&vs, 0).len(), 0);
        assert_eq!(last_versions(&vs, 99).len(), 5);
    }

    #[test]
    fn load_names_join_prefix_and_relative_path() {
        assert_eq!(load_name("", "a/b.jpg"), "a/b.jpg");
        assert_eq!(load_name("imgs", "a.jpg"), "imgs/a.jpg");
        assert_eq!(load_name("imgs//", "a.jpg"), "imgs/a.jpg");
    }

    #[test]
    fn merge_header_names_the_version_and_its_size() {
        assert_eq!(
            merge_header("a/b", 7, 12),
            "===== a/b version 7 (12 bytes) =====\n"
        );
    }

    #[test]
    fn a_target_needs_an_existing_directory() {
        let dir = std::env::temp_dir();
        check_target(&dir.join("new-file")).unwrap();
        let e = check_target(&dir).unwrap_err().to_string();
        assert!(e.ends_with("is a directory"), "{e}");
        let e = check_target(&dir.join("no-such-dir-xyz/f")).unwrap_err();
        assert!(e.to_string().contains("no-such-dir-xyz/f"), "{e}");
        check_target(Path::new("relative-file")).unwrap();
    }

    #[test]
    fn temp_files_are_hidden_unique_and_beside_the_target() {
        let a = temp_path(Path::new("/x/y/out.bin")).unwrap();
        let b = temp_path(Path::new("/x/y/out.bin")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x/y")));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".out.bin.")
        );
        assert!(temp_path(Path::new("/")).is_err());
    }
}
