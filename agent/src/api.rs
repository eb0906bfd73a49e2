//! The agent API: framed postcard requests over authenticated connections
//! ([`Conn`]): TCP on the same port number as the membership UDP socket, and
//! the agent's local Unix socket for clients on its host. A peer that fails
//! the handshake or sends a frame whose tag does not verify is dropped
//! without an answer (and counted); one over `api.max_connections` is told.

use crate::control::ControlHandle;
use crate::membership::driver::MembershipHandle;
use crate::sdfs::SdfsHandle;
use crate::telemetry::Telemetry;
use crate::timing::API_IDLE_TIMEOUT as IDLE_TIMEOUT;
use crate::timing::API_REFUSAL_TIMEOUT as REFUSAL_TIMEOUT;
use dml_shared::api::{Request, Response};
use dml_shared::auth::AuthContext;
use dml_shared::config::ApiConfig;
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::stream::Stream;
use dml_shared::wire::{self, Kind};
use dml_shared::{ErrorKind, RemoteError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Over-limit connections told why at once; more are closed without a word.
const REFUSALS: usize = 8;
/// Largest first frame read from a refused connection.
const REFUSAL_FRAME: usize = 64 * 1024;

pub struct ApiServer {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl ApiServer {
    /// Serves on already-bound listeners (TCP, and the agent's local socket
    /// if it has one) until [`ApiServer::shutdown`].
    pub fn spawn(
        listener: TcpListener,
        local: Option<UnixListener>,
        cfg: ApiConfig,
        services: Services,
    ) -> Self {
        let (shutdown, rx) = watch::channel(false);
        let join = tokio::spawn(accept_loop(listener, local, cfg, services, rx));
        Self { shutdown, join }
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.join.await;
    }
}

/// What the API dispatches to; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub membership: MembershipHandle,
    pub control: ControlHandle,
    pub sdfs: SdfsHandle,
    pub telemetry: Telemetry,
    /// This agent's key, and where refused handshakes and frames are counted.
    pub auth: AuthContext,
}

async fn accept_loop(
    listener: TcpListener,
    local: Option<UnixListener>,
    cfg: ApiConfig,
    services: Services,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let bad_frames = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a.map(|(s, peer)| (Stream::from(s), peer.to_string())),
            a = accept_local(local.as_ref()) => a.map(|s| (Stream::from(s), "a local client".to_string())),
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: transient.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing API connection: too many open");
            // Told why, when few are waiting for that answer; else just closed.
            if let Ok(r) = refusals.clone().try_acquire_owned() {
                let (max, shake) = (cfg.max_connections, cfg.handshake_timeout);
                let auth = services.auth.clone();
                tokio::spawn(async move {
                    let refusal = refuse(stream, max, &auth, shake);
                    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
                    drop(r);
                });
            }
            continue;
        };
        let services = services.clone();
        let bad_frames = bad_frames.clone();
        let (max_frame, shake) = (cfg.max_frame, cfg.handshake_timeout);
        tokio::spawn(async move {
            if let Err(e) = serve(stream, max_frame, shake, &services, &bad_frames).await {
                tracing::debug!(%peer, error = %e, "API connection closed");
            }
            drop(permit);
        });
    }
}

/// The next connection on the local socket; never, without one.
async fn accept_local(local: Option<&UnixListener>) -> std::io::Result<UnixStream> {
    match local {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Answers a connection over `api.max_connections` with an error naming the
/// limit, after reading its first request (closing with it unread would reset
/// the connection before the client read the answer).
async fn refuse(
    stream: Stream,
    max: usize,
    auth: &AuthContext,
    handshake: std::time::Duration,
) -> dml_shared::Result<()> {
    let mut stream = Conn::accept_within(stream, auth, handshake).await?;
    let _ = stream.read_frame(REFUSAL_FRAME).await;
    let msg = Response::Error(RemoteError::new(
        ErrorKind::Refused,
        format!(
            "all {max} API connections of this agent (api.max_connections) are in use; retry later"
        ),
    ));
    stream
        .write_frame(&wire::encode(Kind::Response, &msg), REFUSAL_FRAME)
        .await
}

async fn serve(
    stream: Stream,
    max_frame: usize,
    handshake: std::time::Duration,
    services: &Services,
    bad_frames: &AtomicU64,
) -> dml_shared::Result<()> {
    if let Stream::Tcp(s) = &stream {
        s.set_nodelay(true)?;
    }
    let mut stream = Conn::accept_within(stream, &services.auth, handshake).await?;
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.read_frame(max_frame)).await {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(f))) => f,
            // An unauthenticated peer gets no answer.
            Ok(Err(e @ dml_shared::Error::Auth { .. })) => return Err(e),
            Ok(Err(e)) => {
                bad_frames.fetch_add(1, Ordering::Relaxed);
                let msg = Response::Error(RemoteError::invalid(format!("bad frame: {e}")));
                let _ = stream
                    .write_frame(&wire::encode(Kind::Response, &msg), max_frame)
                    .await;
                return Err(e);
            }
        };
        let response = match wire::decode::<Request>(Kind::Request, &frame) {
            // The data path takes the stream over: its bytes follow as raw frames.
            Ok(Request::Data(req)) => {
                services.sdfs.serve_data(req, &mut stream).await?;
                continue;
            }
            // A subscription takes the stream over for good.
            Ok(Request::Subscribe) => {
                return services.telemetry.serve(&mut stream, max_frame).await;
            }
            Ok(req) => handle(req, services, bad_frames).await,
            Err(e) => {
                bad_frames.fetch_add(1, Ordering::Relaxed);
                let msg = Response::Error(RemoteError::invalid(format!("bad request: {e}")));
                stream
                    .write_frame(&wire::encode(Kind::Response, &msg), max_frame)
                    .await?;
                return Err(e);
            }
        };
        stream
            .write_frame(&wire::encode(Kind::Response, &response), max_frame)
            .await?;
    }
}

async fn handle(req: Request, services: &Services, bad_frames: &AtomicU64) -> Response {
    let gone = || {
        Response::Error(RemoteError::new(
            ErrorKind::Unavailable,
            "membership task is shutting down",
        ))
    };
    let m = &services.membership;
    match req {
        Request::Id => m.id().await.map_or_else(gone, Response::Id),
        Request::Members => m.members().await.map_or_else(gone, Response::Members),
        Request::Stats => m.stats().await.map_or_else(gone, |mut s| {
            s.bad_frames = bad_frames.load(Ordering::Relaxed);
            Response::Stats(s)
        }),
        Request::Join => m.join().await.map_or_else(gone, |()| Response::Ok),
        Request::Leave => m.leave().await.map_or_else(gone, |()| Response::Ok),
        Request::Leader => Response::Leader(services.control.leader_info().await),
        Request::Control { req, leader_only } => services.control.control(req, leader_only).await,
        Request::Raft(rpc) => services.control.raft_rpc(rpc).await,
        Request::NodeStats => Response::NodeStats(services.telemetry.node_stats()),
        Request::Data(_) | Request::Subscribe => unreachable!("served above"),
    }
}
