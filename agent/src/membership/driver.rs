//! The tokio task that owns a [`Membership`] core and runs it over a
//! [`Transport`] (UDP in the agent, [`super::transport::MemNetwork`] in
//! tests), sealing and opening every datagram. Everything else reaches the
//! core through [`MembershipHandle`].
//!
//! Its clock is tokio's, so under `tokio::time::pause` a cluster of drivers
//! runs on virtual time.

use super::core::{Event, Membership, Status};
use super::transport::{Transport, UdpTransport};
use dml_shared::NodeId;
use dml_shared::api::{IdInfo, MemberInfo, Stats};
use dml_shared::auth::{AuthContext, Session};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest datagram accepted; anything longer is truncated by the transport
/// and then fails to decode.
const RECV_BUFFER: usize = 65_536;
/// Membership events kept for slow subscribers before they lag.
const EVENT_BACKLOG: usize = 1024;

/// A membership event with its wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct TimedEvent {
    pub unix_ms: u64,
    pub event: Event,
}

enum Command {
    Id(oneshot::Sender<IdInfo>),
    Members(oneshot::Sender<Vec<MemberInfo>>),
    Stats(oneshot::Sender<Stats>),
    Join(oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Binds a UDP socket with the configured kernel buffer sizes.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

pub use dml_shared::clock::unix_ms;

#[derive(Clone)]
pub struct MembershipHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<TimedEvent>,
}

/// The running task; [`MembershipTask::shutdown`] leaves the group and stops it.
pub struct MembershipTask {
    pub handle: MembershipHandle,
    join: Running,
}

/// Where the task runs.
enum Running {
    /// On the caller's runtime (the in-memory network of the tests).
    Task(JoinHandle<()>),
    /// On its own thread and runtime; answered when it ends.
    Thread(oneshot::Receiver<()>),
}

impl MembershipTask {
    /// Announces a leave to the group, then stops the task.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        match self.join {
            Running::Task(t) => {
                let _ = t.await;
            }
            Running::Thread(done) => {
                let _ = done.await;
            }
        }
    }
}

impl MembershipHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn id(&self) -> Option<IdInfo> {
        self.ask(Command::Id).await
    }

    pub async fn members(&self) -> Option<Vec<MemberInfo>> {
        self.ask(Command::Members).await
    }

    pub async fn stats(&self) -> Option<Stats> {
        self.ask(Command::Stats).await
    }

    pub async fn join(&self) -> Option<()> {
        self.ask(Command::Join).await
    }

    pub async fn leave(&self) -> Option<()> {
        self.ask(Command::Leave).await
    }

    /// Every membership event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TimedEvent> {
        self.events.subscribe()
    }
}

/// Starts the task on a UDP socket, on a thread and runtime of its own:
/// request handling, hashing, image decoding and ONNX Runtime on the agent's
/// runtime cannot delay a probe or an ack, so a busy agent never looks dead.
pub fn spawn(
    socket: UdpSocket,
    core: Membership,
    join: bool,
    auth: AuthContext,
) -> std::io::Result<MembershipTask> {
    // Moved to the new runtime's reactor below.
    let socket = socket.into_std()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (handle, start) = prepare(core, join, auth);
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("dml-membership".into())
        .spawn(move || {
            rt.block_on(async move {
                match UdpSocket::from_std(socket) {
                    Ok(socket) => start.run(UdpTransport::new(socket)).await,
                    Err(e) => tracing::error!(error = %e, "membership cannot use its socket"),
                }
            });
            let _ = done_tx.send(());
        })?;
    Ok(MembershipTask {
        handle,
        join: Running::Thread(done),
    })
}

/// Starts the task on `transport`, on the caller's runtime. `join` says
/// whether to join the group right away. Datagrams are sealed and opened
/// with `auth`'s key ([`dml_shared::auth`]), and those refused are counted
/// in its counters.
pub fn spawn_on<T: Transport>(
    transport: T,
    core: Membership,
    join: bool,
    auth: AuthContext,
) -> MembershipTask {
    let (handle, start) = prepare(core, join, auth);
    let join = tokio::spawn(start.run(transport));
    MembershipTask {
        handle,
        join: Running::Task(join),
    }
}

/// Everything the task starts with, apart from its transport.
struct Start {
    core: Membership,
    seal: Seal,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<TimedEvent>,
    started: Instant,
}

impl Start {
    async fn run<T: Transport>(self, transport: T) {
        run(
            transport,
            self.core,
            self.seal,
            self.rx,
            self.events,
            self.started,
        )
        .await
    }
}

fn prepare(mut core: Membership, join: bool, auth: AuthContext) -> (MembershipHandle, Start) {
    let (tx, rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(EVENT_BACKLOG);
    let handle = MembershipHandle {
        tx,
        events: events.clone(),
    };
    let started = now();
    if join {
        core.join(started);
    }
    let seal = Seal {
        session: Session::new(&auth, core.id().addr),
        auth,
    };
    let start = Start {
        core,
        seal,
        rx,
        events,
        started,
    };
    (handle, start)
}

/// This agent's datagram session (sealing, opening, the peers' epochs).
struct Seal {
    session: Session,
    auth: AuthContext,
}

/// The core's clock: tokio's, which is the system's monotonic clock unless
/// time is paused.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn run<T: Transport>(
    mut transport: T,
    mut core: Membership,
    mut seal: Seal,
    mut rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<TimedEvent>,
    started: Instant,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        flush(&transport, &mut core, &mut seal, &events).await;
        let wake = tokio::time::Instant::from_std(core.poll_at());
        tokio::select! {
            // Packets first: after a stall, acks already queued must count
            // before the probe timers that they answer run out.
            biased;
            recv = transport.recv_from(&mut buf) => match recv {
                Ok((len, from)) => {
                    let opened = seal.session.open(from, &buf[..len], dml_shared::clock::unix_micros());
                    // The core counts the payload; the seal's bytes, and the
                    // session's own replies, are counted here.
                    let inner = opened.payload.as_ref().map_or(0, Vec::len);
                    let replies: usize = opened.replies.iter().map(Vec::len).sum();
                    core.count_seal_bytes(replies, len - inner);
                    send_all(&transport, from, opened.replies).await;
                    match (opened.payload, opened.dropped) {
                        (Some(payload), _) => {
                            if let Err(e) = core.handle_datagram(from, &payload, now()) {
                                tracing::debug!(%from, len, error = %e, "dropped bad datagram");
                            }
                        }
                        (None, Some(why)) => tracing::debug!(%from, len, %why, "dropped unauthenticated datagram"),
                        // A hello or a notice: the session's own.
                        (None, None) => {}
                    }
                }
                // ICMP port-unreachable and the like: transient, keep serving.
                Err(e) => tracing::debug!(error = %e, "datagram receive error"),
            },
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let now = now();
                match cmd {
                    Command::Id(reply) => {
                        let _ = reply.send(IdInfo {
                            id: core.id(),
                            incarnation: core.incarnation(),
                            joined: core.status() == Status::Joined,
                        });
                    }
                    Command::Members(reply) => {
                        let _ = reply.send(core.member_infos(now));
                    }
                    Command::Stats(reply) => {
                        let _ = reply.send(stats(&core, now, started, &seal.auth));
                    }
                    Command::Join(reply) => {
                        core.join(now);
                        let _ = reply.send(());
                    }
                    Command::Leave(reply) => {
                        core.leave(now);
                        let _ = reply.send(());
                    }
                    Command::Shutdown(reply) => {
                        core.leave(now);
                        flush(&transport, &mut core, &mut seal, &events).await;
                        let _ = reply.send(());
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => core.handle_tick(now()),
        }
    }
}

async fn flush<T: Transport>(
    transport: &T,
    core: &mut Membership,
    seal: &mut Seal,
    events: &broadcast::Sender<TimedEvent>,
) {
    let out = core.drain_outbox();
    let now = dml_shared::clock::unix_micros();
    for (to, bytes) in out {
        let sealed = seal.session.seal(to, &bytes, now);
        // The core counted the payload (held or sent); the rest is the seal's.
        let total: usize = sealed.iter().map(Vec::len).sum();
        core.count_seal_bytes(total.saturating_sub(bytes.len()), 0);
        send_all(transport, to, sealed).await;
    }
    for event in core.drain_events() {
        log_event(&event);
        let _ = events.send(TimedEvent {
            unix_ms: unix_ms(),
            event,
        });
    }
}

async fn send_all<T: Transport>(transport: &T, to: std::net::SocketAddr, datagrams: Vec<Vec<u8>>) {
    for d in datagrams {
        if let Err(e) = transport.send_to(&d, to).await {
            tracing::debug!(%to, error = %e, "datagram send failed");
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Joined(id) => tracing::info!(member = %id, "member joined"),
        Event::Alive(id) => tracing::info!(member = %id, "suspicion refuted"),
        Event::Suspect(id) => tracing::info!(member = %id, "member suspected"),
        Event::Failed(id) => tracing::warn!(member = %id, "member failed"),
        Event::Left(id) => tracing::info!(member = %id, "member left"),
        Event::Reinstated(id) => {
            tracing::info!(member = %id, "member refuted its failure; reinstated")
        }
        Event::Refuted(id) => {
            tracing::warn!(member = %id, "declared failed while alive; refuted, same identity")
        }
    }
}

fn stats(core: &Membership, now: Instant, started: Instant, auth: &AuthContext) -> Stats {
    let c = core.counters();
    let r = core.rates(now);
    let auth = auth.counters().snapshot();
    Stats {
        uptime_ms: now.duration_since(started).as_millis() as u64,
        bytes_sent_per_s: r.bytes_sent,
        bytes_recv_per_s: r.bytes_recv,
        packets_sent_per_s: r.packets_sent,
        packets_recv_per_s: r.packets_recv,
        bytes_sent: c.bytes_sent,
        bytes_recv: c.bytes_recv,
        packets_sent: c.packets_sent,
        packets_recv: c.packets_recv,
        probes_sent: c.probes_sent,
        suspicions: c.suspicions,
        refuted: c.refuted,
        declared_failed: c.declared_failed,
        false_failures: c.false_failures,
        bad_packets: c.bad_packets,
        bad_frames: 0,
        members_live: core.live_members().len() as u64,
        udp_unauthenticated: auth.udp_forged + auth.udp_malformed,
        udp_replayed: auth.udp_replayed + auth.udp_stale,
        tcp_unauthenticated: auth.tcp_handshake_failed + auth.tcp_forged,
        reinstated: c.reinstated,
    }
}

/// Identity for a process starting now at `addr`.
pub fn identity_now(addr: SocketAddr) -> NodeId {
    NodeId::new(addr, unix_ms())
}
