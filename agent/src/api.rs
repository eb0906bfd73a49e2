//! The agent API: framed postcard requests over authenticated connections
//! ([`Conn`]): TCP on the same port number as the membership UDP socket, and
//! the agent's local Unix socket for clients on its host. A peer that fails
//! the handshake or sends a frame whose tag does not verify is dropped
//! without an answer (and counted).
//!
//! Nothing unauthenticated holds a connection slot. A new connection first
//! needs a handshake place: at most [`HANDSHAKES`] at once, at most
//! [`HANDSHAKES_PER_SOURCE`] from one address, each for `api.handshake_timeout`
//! (2 s); without one it is closed at once. Only once authenticated does it
//! take one of `api.max_connections` slots, of which a quarter is kept for
//! connections with a peer key from members' addresses (Raft, SDFS chains,
//! relays), so a flood of clients cannot stall them; one over the limit is
//! told why.
//!
//! Each request needs a role ([`access`]): a read-only credential may only
//! view, an admin one may also write, and only an agent's cluster key may
//! send agent-to-agent traffic. A refused request is answered with an error
//! naming what it wanted and the role it needs.

use crate::control::ControlHandle;
use crate::membership::driver::MembershipHandle;
use crate::sdfs::SdfsHandle;
use crate::telemetry::Telemetry;
use crate::timing::API_IDLE_TIMEOUT as IDLE_TIMEOUT;
use crate::timing::API_REFUSAL_TIMEOUT as REFUSAL_TIMEOUT;
use crate::timing::VIEW_TTL;
use dml_shared::access;
use dml_shared::api::{Request, Response};
use dml_shared::auth::{AuthContext, Role};
use dml_shared::config::ApiConfig;
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::stream::Stream;
use dml_shared::wire::{self, Kind};
use dml_shared::{ErrorKind, RemoteError};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

/// Handshakes in progress at once, from all sources.
pub const HANDSHAKES: usize = 128;
/// Handshakes in progress at once from one address (the local socket is one).
pub const HANDSHAKES_PER_SOURCE: usize = 16;
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
    /// `dml keyring`.
    pub keyring: crate::keyring::KeyringHandle,
}

/// Where a connection comes from: an address, or the local socket.
type Source = Option<IpAddr>;

/// Admission of new connections (see the module's doc).
struct Gate {
    handshakes: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
    /// Every authenticated connection takes one.
    slots: Arc<Semaphore>,
    /// A client's connection (not from a member's address) also takes one:
    /// fewer than `slots`, so members always find a slot.
    client_slots: Arc<Semaphore>,
    /// Members' addresses, read at most every [`VIEW_TTL`].
    members: Mutex<Option<(Instant, Arc<HashSet<IpAddr>>)>>,
    /// Connections closed unauthenticated for want of a handshake place.
    shed: AtomicU64,
}

/// A handshake place from one source; given back on drop.
struct SourcePlace {
    map: Arc<Mutex<HashMap<Source, usize>>>,
    source: Source,
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// An authenticated connection's slot(s).
type Slot = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl Gate {
    fn new(max_connections: usize) -> Self {
        let reserve = max_connections / 4;
        Self {
            handshakes: Arc::new(Semaphore::new(HANDSHAKES)),
            per_source: Arc::default(),
            slots: Arc::new(Semaphore::new(max_connections)),
            client_slots: Arc::new(Semaphore::new(max_connections - reserve)),
            members: Mutex::new(None),
            shed: AtomicU64::new(0),
        }
    }

    /// A handshake place for a connection from `source`, if one is free.
    fn handshake(&self, source: Source) -> Option<(SourcePlace, OwnedSemaphorePermit)> {
        {
            let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(source).or_insert(0);
            if *n >= HANDSHAKES_PER_SOURCE {
                return None;
            }
            *n += 1;
        }
        let place = SourcePlace {
            map: self.per_source.clone(),
            source,
        };
        let permit = self.handshakes.clone().try_acquire_owned().ok()?;
        Some((place, permit))
    }

    /// A slot for an authenticated connection from `source`. Only a peer
    /// key from a member's address takes a reserved one: a client
    /// credential is a client wherever it connects from.
    async fn slot(
        &self,
        source: Source,
        role: Role,
        membership: &MembershipHandle,
    ) -> Option<Slot> {
        let member = match source {
            Some(ip) if role == Role::Peer => self.member_ips(membership).await.contains(&ip),
            _ => false,
        };
        if member {
            return Some((self.slots.clone().try_acquire_owned().ok()?, None));
        }
        let client = self.client_slots.clone().try_acquire_owned().ok()?;
        Some((self.slots.clone().try_acquire_owned().ok()?, Some(client)))
    }

    async fn member_ips(&self, membership: &MembershipHandle) -> Arc<HashSet<IpAddr>> {
        let cached = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VIEW_TTL)
            .map(|(_, ips)| ips.clone());
        if let Some(ips) = cached {
            return ips;
        }
        let ips: Arc<HashSet<IpAddr>> = Arc::new(
            membership
                .members()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|m| m.state.is_live())
                .map(|m| m.id.addr.ip())
                .collect(),
        );
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), ips.clone()));
        ips
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: Option<UnixListener>,
    cfg: ApiConfig,
    services: Services,
    mut shutdown: watch::Receiver<bool>,
) {
    let gate = Arc::new(Gate::new(cfg.max_connections));
    let bad_frames = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a.map(|(s, peer)| (Stream::from(s), Some(peer.ip()), peer.to_string())),
            a = accept_local(local.as_ref()) => a.map(|s| (Stream::from(s), None, "a local client".to_string())),
            _ = shutdown.changed() => return,
        };
        let (stream, source, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: transient.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((place, shaking)) = gate.handshake(source) else {
            let shed = gate.shed.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, shed, "closing an unauthenticated connection: no handshake place free (a flood?)");
            continue;
        };
        let services = services.clone();
        let bad_frames = bad_frames.clone();
        let gate = gate.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            if let Stream::Tcp(s) = &stream {
                let _ = s.set_nodelay(true);
            }
            let conn = Conn::accept_within(stream, &services.auth, cfg.handshake_timeout).await;
            drop((place, shaking));
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "API handshake failed");
                    return;
                }
            };
            let Some(slot) = gate.slot(source, conn.role(), &services.membership).await else {
                tracing::warn!(%peer, "refusing API connection: too many open");
                let refusal = refuse(conn, cfg.max_connections);
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
                return;
            };
            if let Err(e) = serve(conn, source, cfg.max_frame, &services, &bad_frames).await {
                tracing::debug!(%peer, error = %e, "API connection closed");
            }
            drop(slot);
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

/// Answers an authenticated connection over `api.max_connections` with an
/// error naming the limit, after reading its first request (closing with it
/// unread would reset the connection before the client read the answer).
async fn refuse(mut conn: Conn, max: usize) -> dml_shared::Result<()> {
    let _ = conn.read_frame(REFUSAL_FRAME).await;
    let msg = Response::Error(RemoteError::new(
        ErrorKind::Refused,
        format!(
            "all {max} API connections of this agent (api.max_connections) are in use; retry later"
        ),
    ));
    conn.write_frame(&wire::encode(Kind::Response, &msg), REFUSAL_FRAME)
        .await
}

async fn serve(
    mut stream: Conn,
    source: Source,
    max_frame: usize,
    services: &Services,
    bad_frames: &AtomicU64,
) -> dml_shared::Result<()> {
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
        let request = wire::decode::<Request>(Kind::Request, &frame);
        if let Ok(req) = &request
            && let Err(refusal) = access::check(stream.role(), req)
        {
            tracing::info!(peer = %stream.peer(), role = %stream.role(), reason = %refusal.message, "refused a request");
            let msg = Response::Error(refusal);
            stream
                .write_frame(&wire::encode(Kind::Response, &msg), max_frame)
                .await?;
            if matches!(req, Request::Data(_) | Request::Subscribe) {
                // Its raw frames may follow: read them away so the answer is
                // not lost to a reset, then close.
                drain(&mut stream).await;
                return Ok(());
            }
            continue;
        }
        let response = match request {
            // The data path takes the stream over: its bytes follow as raw frames.
            Ok(Request::Data(req)) => {
                services.sdfs.serve_data(req, &mut stream).await?;
                continue;
            }
            // A subscription takes the stream over for good.
            Ok(Request::Subscribe) => {
                return services.telemetry.serve(&mut stream, max_frame).await;
            }
            Ok(req) => handle(req, source, services, bad_frames).await,
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

/// Reads and drops what a refused connection still sends, for at most
/// [`REFUSAL_TIMEOUT`].
async fn drain(stream: &mut Conn) {
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, tokio::io::copy(stream.raw(), &mut sink)).await;
}

async fn handle(
    req: Request,
    source: Source,
    services: &Services,
    bad_frames: &AtomicU64,
) -> Response {
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
        Request::Raft(rpc) => services.control.raft_rpc(rpc, source).await,
        Request::NodeStats => Response::NodeStats(services.telemetry.node_stats()),
        Request::Keyring(r) => services.keyring.handle(r).await,
        Request::Logs { lines } => Response::Logs(crate::log_line::tail(lines as usize)),
        Request::Data(_) | Request::Subscribe => unreachable!("served above"),
    }
}
