//! The client side of every SDFS flow (put, get, get-versions, delete, ls,
//! store, load, ...), used by `dml`, the cluster tests and the bench.
//!
//! Metadata goes to the leader through a [`LeaderRouter`] entering at the
//! agent given to [`Sdfs::new`]. Bytes travel straight between this process
//! and the replicas, on connections from the router's pool: a
//! `Request::Data` frame, then raw frames of at most [`Options::chunk_size`]
//! bytes, then an empty frame (a put then sends the checksum it computed while
//! reading the file). Memory stays bounded: a few chunks in flight, whatever
//! the file size.
//!
//! Files written locally appear atomically: bytes go to a hidden temp file next
//! to the target, are BLAKE3-checked (hashing and writing on two threads), then
//! renamed into place; fsynced only with [`Options::sync_local`]. A copy whose
//! checksum does not match is reported to the agent that sent it
//! (`Data(BadCopy)`) and the next replica is tried.
//!
//! - this file: [`Options`], [`Sdfs`] and its way to the leader and the agents.
//! - [`report`]: progress reports and what each flow returns.
//! - `catalog`: ls, count, nodes, store, delete (and settling an unconfirmed change).
//! - `put`: the put pipeline: file reader, chain stream, commit.
//! - `get`: resolve versions from metadata, then fetch each from the nearest replica.
//! - `batch`: many small files put in batches (group commit).
//! - `load`: a directory's files put a few at a time.
//! - `local`: local files: temp-file sinks, target checks, the directory walk.

mod batch;
mod catalog;
mod get;
mod load;
mod local;
mod put;
pub mod report;

pub use get::{Wanted, last_versions, merge_header, nearest_first, version_file_name};
pub use load::load_name;
pub use report::{
    Count, GetAllReport, GetPhases, GetReport, LoadItem, LoadReport, Phase, Progress, ProgressFn,
    PutPhases, PutReport, VersionsReport, no_progress, throughput,
};

use crate::client::read_response;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::router::{LeaderRouter, RouterOptions, is_refusal};
use crate::sdfs::{MetaRequest, MetaResponse};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Idle connections kept per client (all agents together).
const MAX_IDLE: usize = 16;

/// Time allowed to read an agent's error after it broke off a transfer.
const ERROR_GRACE: Duration = Duration::from_secs(2);

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
    /// Files (or batches of files) moved at the same time by `load`,
    /// `put_many` and `get_all`.
    pub concurrency: usize,
    /// Most files in one batched put (`load`, `put_many`); at most
    /// [`crate::sdfs::MAX_BATCH_FILES`].
    pub batch_files: usize,
    /// Most bytes in one batched put; at most [`crate::sdfs::MAX_BATCH_BYTES`].
    pub batch_bytes: u64,
    /// Files larger than this are put one at a time, not batched.
    pub batch_file_max: u64,
    /// fsync a fetched copy (and its directory) before a get returns. Off by
    /// default, like `cp`: the copy appears atomically (temp file, verified,
    /// renamed) but a machine crash right after the get may lose it; the
    /// durable copies are the replicas.
    pub sync_local: bool,
    /// Reach an agent on this host through its local socket (peer
    /// credentials checked; not encrypted, the fast path). `false`: always
    /// TCP, as a client on another host would (tests and the bench).
    pub local_socket: bool,
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
            batch_files: 256,
            batch_bytes: crate::sdfs::MAX_BATCH_BYTES,
            batch_file_max: 1 << 20,
            sync_local: false,
            local_socket: true,
        }
    }
}

/// An SDFS client talking to the cluster through one agent. Cheap to clone;
/// clones share the router: the idle connections and the leader last seen.
#[derive(Clone, Debug)]
pub struct Sdfs {
    agent: SocketAddr,
    opts: Options,
    router: LeaderRouter,
}

impl Sdfs {
    pub fn new(agent: SocketAddr) -> Self {
        Self::with_options(agent, Options::default())
    }

    pub fn with_options(agent: SocketAddr, opts: Options) -> Self {
        let router = LeaderRouter::through(
            agent,
            RouterOptions {
                call_timeout: opts.call_timeout,
                leader_wait: opts.leader_wait,
                pool_size: MAX_IDLE,
                local_socket: opts.local_socket,
                ..RouterOptions::default()
            },
        );
        Self {
            agent,
            opts,
            router,
        }
    }

    pub fn agent(&self) -> SocketAddr {
        self.agent
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Sends a metadata request to the leader (see [`LeaderRouter::meta`]).
    pub async fn meta(&self, req: MetaRequest) -> Result<MetaResponse> {
        self.router.meta(req).await
    }

    /// Sends an inference request to the leader (see [`LeaderRouter::infer`]).
    pub async fn infer(
        &self,
        req: crate::infer::InferRequest,
    ) -> Result<crate::infer::InferResponse> {
        self.router.infer(req).await
    }

    /// An idle pooled connection to `addr` that is still open, or a new one
    /// (through the agent's local socket when it runs on this host).
    async fn conn(&self, addr: SocketAddr, limit: Duration) -> Result<Conn> {
        match self.router.take_idle(addr) {
            Some(s) => Ok(s),
            None => timed(addr, limit, self.router.connect(addr)).await,
        }
    }

    /// Returns a connection whose exchange ended cleanly to the pool.
    fn keep(&self, addr: SocketAddr, conn: Conn) {
        self.router.keep(addr, conn)
    }
}

/// Runs an IO step with a deadline; errors become [`Error::Transfer`] naming `addr`.
pub(crate) async fn timed<T>(
    addr: SocketAddr,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        // Errors that already say what went wrong, and where, pass as they are.
        Ok(Err(e)) if is_refusal(&e) => Err(e),
        Ok(Err(
            e @ (Error::Connect { .. }
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
pub(crate) async fn agent_error_or(stream: &mut Conn, e: Error) -> Error {
    if is_refusal(&e) || matches!(e, Error::LocalFile { .. }) {
        return e;
    }
    match tokio::time::timeout(ERROR_GRACE, read_response(stream)).await {
        Ok(Err(remote)) if is_refusal(&remote) => remote,
        _ => e,
    }
}
