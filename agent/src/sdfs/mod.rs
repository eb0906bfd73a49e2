//! SDFS on one agent: the on-disk store, the data path and the background
//! upkeep of the local copies.
//!
//! - [`store`]: `<data_dir>/sdfs/`: temp file, fsync, BLAKE3 check, rename.
//! - [`encode`]: SDFS names to safe file names.
//! - [`local`]: async writer over a store temp file (blocking thread).
//! - [`write`]: `Data(Write)`: pipelined chain write (store and forward).
//! - [`write_batch`]: `Data(WriteBatch)`: a batched put's files in one chain
//!   stream, made durable with one sync per replica.
//! - [`read`]: `Data(Read)`: stream a stored version (sendfile); `Data(BadCopy)`:
//!   re-check a copy a reader found corrupt.
//! - [`replicate`]: `Data(Replicate)`: copy a version from another holder,
//!   throttled; also used by scrub to re-fetch a corrupt copy.
//! - [`scrub`], [`reconcile`]: periodic re-hashing, and comparison of the
//!   disk with the committed metadata; `Data(Drop)`: a committed delete's
//!   copies dropped at once.
//! - [`meta`]: metadata requests to the control plane ([`MetaPath`]).
//! - [`peer`], [`throttle`], [`stats`], [`error`]: plumbing.

pub mod encode;
pub mod error;
pub mod local;
pub mod meta;
pub mod peer;
pub mod read;
pub mod reconcile;
pub mod replicate;
pub mod scrub;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod write;
pub mod write_batch;

#[cfg(test)]
mod tests;

pub use error::SdfsError;
pub use stats::SdfsStats;
pub use store::Store;

use crate::control::ControlHandle;
use dml_shared::api::Response;
use dml_shared::config::{Config, SdfsConfig};
use dml_shared::conn::{Conn, FrameWrite, IdleConns};
use dml_shared::framing::DEFAULT_MAX_FRAME;
use dml_shared::sdfs::{DataRequest, Holding};
use stats::Counters;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use throttle::Throttle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Chunks queued between the network and the disk (or the next replica):
/// memory per stream stays around this many `sdfs.chunk_size` buffers.
pub const STREAM_QUEUE: usize = 4;

/// What the SDFS service needs from the agent.
#[derive(Clone, Debug)]
pub struct SdfsOptions {
    pub data_dir: PathBuf,
    /// This agent's address, as the others reach it.
    pub agent: SocketAddr,
    pub cfg: SdfsConfig,
    pub max_frame: usize,
}

impl SdfsOptions {
    pub fn from_config(cfg: &Config, agent: SocketAddr) -> Self {
        Self {
            data_dir: cfg.data_dir.clone(),
            agent,
            cfg: cfg.sdfs.clone(),
            max_frame: cfg.api.max_frame,
        }
    }
}

/// Idle connections an agent keeps to others (all together).
const PEER_CONNS: usize = 32;

/// Shared by every request and background task of the service.
pub struct Ctx {
    pub store: Store,
    pub cfg: SdfsConfig,
    pub agent: SocketAddr,
    /// Where metadata requests go; set when the upkeep starts.
    pub meta: OnceLock<meta::MetaRoute>,
    pub max_frame: usize,
    pub counters: Counters,
    /// Repair and scrub bandwidth.
    pub throttle: Throttle,
    /// Idle connections to other agents, reused down put chains.
    pub peers: IdleConns,
}

impl Ctx {
    /// How long a stream may make no progress towards another agent; a
    /// quarter of `put_timeout`, so a stalled replica is dropped from a
    /// chain while the put can still complete.
    pub fn stall_timeout(&self) -> Duration {
        self.cfg.put_timeout / 4
    }
}

/// Cheap to clone; reaches the SDFS store. The default handle is a store
/// that is not running and says so.
#[derive(Clone, Default)]
pub struct SdfsHandle {
    ctx: Option<Arc<Ctx>>,
}

impl SdfsHandle {
    /// Serves one data-path request; it owns the stream until it returns.
    pub async fn serve_data(&self, req: DataRequest, stream: &mut Conn) -> dml_shared::Result<()> {
        let Some(ctx) = &self.ctx else {
            let msg = Response::Error(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::Unavailable,
                "SDFS is not running on this agent",
            ));
            return stream
                .write_frame(&peer::response(&msg), DEFAULT_MAX_FRAME)
                .await;
        };
        match req {
            DataRequest::Write {
                name,
                version,
                size,
                checksum,
                downstream,
                plan,
                seal,
            } => {
                let w = write::WriteArgs {
                    name,
                    version,
                    size,
                    checksum,
                    downstream,
                    plan,
                    seal,
                };
                write::serve_write(ctx, w, stream).await
            }
            DataRequest::WriteBatch {
                files,
                downstream,
                plan,
            } => {
                let b = write_batch::BatchArgs {
                    files,
                    downstream,
                    plan,
                };
                write_batch::serve_write_batch(ctx, b, stream).await
            }
            DataRequest::Read { name, version } => {
                read::serve_read(ctx, &name, version, stream).await
            }
            DataRequest::Replicate {
                name,
                version,
                size,
                checksum,
                sources,
            } => {
                let r = replicate::Wanted {
                    name,
                    version,
                    size,
                    checksum,
                };
                replicate::serve_replicate(ctx, r, &sources, stream).await
            }
            DataRequest::BadCopy { name, version } => {
                read::serve_bad_copy(ctx, name, version, stream).await
            }
            DataRequest::Drop { name, through } => {
                reconcile::serve_drop(ctx, &name, through, stream).await
            }
            DataRequest::Store => {
                let msg = Response::Holdings(ctx.store.holdings());
                stream
                    .write_frame(&peer::response(&msg), ctx.max_frame)
                    .await
            }
        }
    }

    /// Counters and totals, for telemetry. `None` when SDFS is not running.
    pub fn stats(&self) -> Option<SdfsStats> {
        let ctx = self.ctx.as_ref()?;
        let (files, bytes) = ctx.store.totals();
        Some(SdfsStats::from_counters(&ctx.counters, files, bytes))
    }

    /// What this agent stores.
    pub fn holdings(&self) -> Vec<Holding> {
        self.ctx
            .as_ref()
            .map(|c| c.store.holdings())
            .unwrap_or_default()
    }

    /// The store itself, when running (tests, telemetry).
    pub fn store(&self) -> Option<&Store> {
        self.ctx.as_ref().map(|c| &c.store)
    }

    /// Runs one scrub pass now.
    pub async fn scrub_now(&self) -> Option<scrub::ScrubReport> {
        Some(scrub::run(self.ctx.as_ref()?).await)
    }

    /// Runs one reconcile pass now.
    pub async fn reconcile_now(
        &self,
    ) -> Option<Result<reconcile::ReconcileReport, reconcile::ReconcileError>> {
        Some(reconcile::run(self.ctx.as_ref()?).await)
    }
}

/// Where the data side's metadata requests (scrub, reconcile) go.
#[derive(Clone)]
pub enum MetaPath {
    /// This agent's own control plane, in process; it forwards them to the
    /// leader. Over the API they would take connection slots from clients.
    Local(ControlHandle),
    /// An agent's API (tests stand a fake control plane behind one).
    Agent(SocketAddr),
}

/// The running service: the store, and the scrub and reconcile tasks.
pub struct SdfsService {
    ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SdfsService {
    /// Opens the store, clearing leftover temp files. The data path serves at
    /// once; scrub and reconcile wait for [`SdfsService::start_upkeep`].
    pub async fn start(opts: SdfsOptions) -> Result<Self, SdfsError> {
        let (dir, agent) = (opts.data_dir.clone(), opts.agent);
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, agent))
            .await
            .map_err(|_| SdfsError::ShuttingDown { agent })??;
        store.set_reserve(opts.cfg.disk_reserve);
        let ctx = Arc::new(Ctx {
            store,
            throttle: Throttle::new(opts.cfg.repair_bytes_per_sec),
            cfg: opts.cfg,
            agent,
            meta: OnceLock::new(),
            max_frame: opts.max_frame,
            counters: Counters::default(),
            peers: IdleConns::new(PEER_CONNS),
        });
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            ctx,
            shutdown,
            tasks: Vec::new(),
        })
    }

    /// Starts scrub and reconcile (a first reconcile runs at once), asking
    /// `meta` for the committed metadata. Only the first call counts.
    pub fn start_upkeep(&mut self, meta: MetaPath) {
        let route = meta::MetaRoute::new(meta, self.ctx.stall_timeout());
        if self.ctx.meta.set(route).is_err() {
            return;
        }
        let rx = self.shutdown.subscribe();
        self.tasks
            .push(tokio::spawn(scrub::task(self.ctx.clone(), rx.clone())));
        self.tasks
            .push(tokio::spawn(reconcile::task(self.ctx.clone(), rx)));
    }

    pub fn handle(&self) -> SdfsHandle {
        SdfsHandle {
            ctx: Some(self.ctx.clone()),
        }
    }

    /// Stops the background tasks; requests in flight finish on their own.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
