//! Telemetry: the frames this agent streams to console subscribers.
//!
//! - [`proc`]: the agent's own CPU and memory from `/proc/self`.
//! - [`events`]: the event log ring and how membership and leader changes
//!   become lines in it.
//! - [`derive`]: job and re-replication events read off successive figures.
//! - [`figures`]: the leader's figures (C1–C5, SDFS health) through the
//!   control plane.
//! - this file: [`TelemetryService`] (its tasks) and [`Telemetry`] (the handle
//!   the API and other services use).
//!
//! Background tasks keep caches fresh: the own stats every second, the other
//! members' stats round-robin and the leader figures every second (both only
//! while someone subscribes). The publisher builds one frame from the caches
//! at most every [`MIN_INTERVAL_MS`] and offers it to each subscriber's
//! bounded queue; a full queue drops the frame and counts it, and the
//! subscriber's next frame is a resync. Nothing an agent does waits on a
//! subscriber.

pub mod derive;
pub mod events;
pub mod figures;
pub mod proc;

use crate::control::ControlHandle;
use crate::membership::driver::{MembershipHandle, unix_ms};
use crate::sdfs::SdfsHandle;
use crate::timing::LEADER_EVERY;
use crate::timing::NODE_TIMEOUT;
use crate::timing::TELEMETRY_SAMPLE_EVERY as SAMPLE_EVERY;
use crate::timing::TELEMETRY_WRITE_TIMEOUT as WRITE_TIMEOUT;
use dml_shared::NodeId;
use dml_shared::api::{LeaderInfo, MemberInfo, Request, Response};
use dml_shared::client::Client;
use dml_shared::conn::{Conn, FrameWrite};
use dml_shared::telemetry::{ClusterFigures, EventKind, Frame, MIN_INTERVAL_MS, NodeStats};
use dml_shared::wire::{self, Kind};
use events::EventRing;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Frames queued per subscriber; more are dropped.
const QUEUE: usize = 2;
/// Members asked for their stats per round (round-robin over the view).
const NODE_BATCH: usize = 16;

/// A subscriber's queue and its drop count.
struct Sub {
    tx: mpsc::Sender<Arc<Frame>>,
    dropped: Arc<AtomicU64>,
}

struct Inner {
    me: SocketAddr,
    id: Mutex<Option<NodeId>>,
    events: Mutex<EventRing>,
    subs: Mutex<Vec<Sub>>,
    own: Mutex<NodeStats>,
    others: Mutex<HashMap<SocketAddr, (NodeStats, Instant)>>,
    leader: Mutex<Option<LeaderInfo>>,
    figures: Mutex<Option<ClusterFigures>>,
    frames: AtomicU64,
    sdfs: SdfsHandle,
}

/// Cheap to clone. The default handle belongs to no running service: it
/// records nothing and refuses subscriptions.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

impl Telemetry {
    /// Adds a line to the event log (job start and finish, repairs, ...).
    pub fn event(&self, kind: EventKind, text: impl Into<String>) {
        if let Some(i) = &self.inner {
            i.push_event(kind, text.into());
        }
    }

    /// Current subscriptions.
    pub fn subscribers(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.subs_len())
    }

    /// This agent's own figures.
    pub fn node_stats(&self) -> NodeStats {
        self.inner
            .as_ref()
            .map_or_else(NodeStats::default, |i| i.own_stats())
    }

    /// Serves a subscription: writes frames on `stream` until it closes, the
    /// subscriber stops reading, or the service stops.
    pub async fn serve(&self, stream: &mut Conn, max_frame: usize) -> dml_shared::Result<()> {
        let Some(inner) = &self.inner else {
            let msg = Response::Error(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::Unavailable,
                "telemetry is not running on this agent",
            ));
            return stream
                .write_frame(&wire::encode(Kind::Response, &msg), max_frame)
                .await;
        };
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        inner.subs.lock().expect("subs lock").push(Sub {
            tx,
            dropped: dropped.clone(),
        });
        let (mut read, mut write) = stream.split();
        let mut last_event: Option<u64> = None;
        let mut seen_dropped = 0;
        let mut scratch = [0u8; 64];
        loop {
            let frame = tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => return Ok(()),
                },
                // The subscriber sends nothing; EOF or an error means it is gone.
                r = read.raw().read(&mut scratch) => match r {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => continue,
                },
            };
            let d = dropped.load(Ordering::Relaxed);
            let resync = last_event.is_none() || d != seen_dropped;
            seen_dropped = d;
            let mut out = (*frame).clone();
            {
                let ring = inner.events.lock().expect("events lock");
                out.events = match last_event {
                    Some(s) if !resync => ring.since(s),
                    _ => ring.tail(),
                };
                last_event = Some(ring.last_seq());
            }
            out.dropped = d;
            out.resync = resync;
            let bytes = wire::encode(Kind::Response, &Response::Telemetry(Box::new(out)));
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_frame(&bytes, max_frame)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            }
        }
    }
}

impl Inner {
    fn push_event(&self, kind: EventKind, text: String) {
        self.events
            .lock()
            .expect("events lock")
            .push(unix_ms(), kind, text);
    }

    fn subs_len(&self) -> usize {
        let mut subs = self.subs.lock().expect("subs lock");
        subs.retain(|s| !s.tx.is_closed());
        subs.len()
    }

    fn own_stats(&self) -> NodeStats {
        let mut s = self.own.lock().expect("own lock").clone();
        if let Some(st) = self.sdfs.stats() {
            s.sdfs_bytes = st.bytes_stored;
            s.sdfs_versions = st.files;
        }
        s.addr = Some(self.me);
        s
    }

    /// Offers `frame` to every subscriber, counting drops.
    fn publish(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut subs = self.subs.lock().expect("subs lock");
        subs.retain(|s| match s.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The frame from the caches, with `members` just read.
    fn build(&self, members: Vec<MemberInfo>) -> Frame {
        let now = Instant::now();
        let mut nodes = vec![self.own_stats()];
        {
            let others = self.others.lock().expect("others lock");
            for m in &members {
                if m.id.addr == self.me || !m.state.is_live() {
                    continue;
                }
                if let Some((s, at)) = others.get(&m.id.addr) {
                    let mut s = s.clone();
                    s.age_ms = now.duration_since(*at).as_millis() as u64;
                    nodes.push(s);
                }
            }
        }
        nodes.sort_by_key(|n| n.addr);
        let cluster = self.figures.lock().expect("figures lock").clone();
        if let Some(Ok(p)) = cluster.as_ref().map(|c| &c.placement) {
            figures::queries_running(&mut nodes, p);
        }
        Frame {
            seq: self.frames.fetch_add(1, Ordering::Relaxed) + 1,
            unix_ms: unix_ms(),
            agent: *self.id.lock().expect("id lock"),
            dropped: 0,
            resync: false,
            leader: self.leader.lock().expect("leader lock").clone(),
            members,
            nodes,
            cluster,
            events: Vec::new(),
        }
    }
}

/// The running telemetry tasks.
pub struct TelemetryService {
    handle: Telemetry,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the publisher reads from.
#[derive(Clone)]
pub struct Sources {
    pub me: SocketAddr,
    pub membership: MembershipHandle,
    pub control: ControlHandle,
    pub sdfs: SdfsHandle,
    /// Copies each SDFS version should have (`Config::replicas`).
    pub replicas: u32,
}

impl Telemetry {
    /// A handle that records events at once; [`TelemetryService::start_with`]
    /// later starts its tasks. Services started before telemetry (the
    /// control plane) can be given a clone to report job and repair events.
    pub fn new(me: SocketAddr, sdfs: SdfsHandle) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                me,
                id: Mutex::new(None),
                events: Mutex::new(EventRing::default()),
                subs: Mutex::new(Vec::new()),
                own: Mutex::new(NodeStats::default()),
                others: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                figures: Mutex::new(None),
                frames: AtomicU64::new(0),
                sdfs,
            })),
        }
    }
}

impl TelemetryService {
    /// Creates the handle and starts the tasks.
    pub fn start(src: Sources) -> Self {
        Self::start_with(Telemetry::new(src.me, src.sdfs.clone()), src)
    }

    /// Starts the tasks of a handle made with [`Telemetry::new`].
    pub fn start_with(handle: Telemetry, src: Sources) -> Self {
        let inner = handle
            .inner
            .clone()
            .expect("Telemetry::new makes a running handle");
        let (shutdown, rx) = watch::channel(false);
        let membership_events = src.membership.subscribe();
        let tasks = vec![
            tokio::spawn(stopping(rx.clone(), sample_own(inner.clone()))),
            tokio::spawn(stopping(
                rx.clone(),
                feed_membership(inner.clone(), membership_events),
            )),
            tokio::spawn(stopping(
                rx.clone(),
                watch_leader(inner.clone(), src.control.clone()),
            )),
            tokio::spawn(stopping(
                rx.clone(),
                fetch_figures(inner.clone(), src.clone()),
            )),
            tokio::spawn(stopping(
                rx.clone(),
                poll_nodes(inner.clone(), src.membership.clone()),
            )),
            tokio::spawn(stopping(rx, publish(inner.clone(), src.membership))),
        ];
        Self {
            handle,
            shutdown,
            tasks,
        }
    }

    pub fn handle(&self) -> Telemetry {
        self.handle.clone()
    }

    /// Stops the tasks; open subscriptions end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(i) = &self.handle.inner {
            i.subs.lock().expect("subs lock").clear();
        }
    }
}

/// Runs `f` until the shutdown flag is set.
async fn stopping(mut stop: watch::Receiver<bool>, f: impl Future<Output = ()>) {
    tokio::select! {
        () = f => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn sample_own(inner: Arc<Inner>) {
    let mut cpu = proc::CpuSampler::default();
    let mut tick = every(SAMPLE_EVERY);
    let mut repairs = None;
    loop {
        tick.tick().await;
        let now = inner.sdfs.stats().map_or(0, |s| s.repairs);
        if let Some(text) = repaired(inner.me, repairs, now) {
            inner.push_event(EventKind::Repair, text);
        }
        repairs = Some(now);
        let pct = cpu.sample(Instant::now());
        let mut own = inner.own.lock().expect("own lock");
        own.cpu_percent = pct.unwrap_or(own.cpu_percent);
        own.rss_bytes = proc::own_rss();
    }
}

async fn feed_membership(
    inner: Arc<Inner>,
    mut rx: broadcast::Receiver<crate::membership::driver::TimedEvent>,
) {
    loop {
        match rx.recv().await {
            Ok(e) => {
                let (kind, text) = events::from_membership(&e);
                if let crate::membership::Event::Joined(id) = e.event
                    && id.addr == inner.me
                {
                    *inner.id.lock().expect("id lock") = Some(id);
                }
                inner
                    .events
                    .lock()
                    .expect("events lock")
                    .push(e.unix_ms, kind, text);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                inner.push_event(EventKind::Info, format!("{n} membership events lost"));
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn watch_leader(inner: Arc<Inner>, control: ControlHandle) {
    let mut tick = every(LEADER_EVERY);
    loop {
        tick.tick().await;
        let now = control.leader_status().await;
        let change = {
            let before = inner.leader.lock().expect("leader lock");
            // The first answer is only news if it names a leader.
            if before.is_none() && now.leader.is_none() {
                None
            } else {
                events::leader_change(before.as_ref(), &now)
            }
        };
        if let Some(text) = change {
            inner.push_event(EventKind::LeaderChange, text);
        }
        *inner.leader.lock().expect("leader lock") = Some(now);
    }
}

async fn fetch_figures(inner: Arc<Inner>, src: Sources) {
    let mut tick = every(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        if inner.subs_len() == 0 {
            continue;
        }
        let repair = src.control.repair_progress();
        let balance = src.control.balance_progress();
        let f = figures::fetch(&src.control, src.replicas, repair, balance).await;
        let mut cache = inner.figures.lock().expect("figures lock");
        for (kind, text) in derive::changes(cache.as_ref(), &f) {
            inner.push_event(kind, text);
        }
        *cache = Some(f);
    }
}

/// Asks the other live members for their stats, [`NODE_BATCH`] per second,
/// round-robin, while someone subscribes.
async fn poll_nodes(inner: Arc<Inner>, membership: MembershipHandle) {
    let mut tick = every(SAMPLE_EVERY);
    let mut cursor = 0usize;
    loop {
        tick.tick().await;
        if inner.subs_len() == 0 {
            continue;
        }
        let Some(members) = membership.members().await else {
            return;
        };
        let mut addrs: Vec<SocketAddr> = members
            .iter()
            .filter(|m| m.state.is_live() && m.id.addr != inner.me)
            .map(|m| m.id.addr)
            .collect();
        addrs.sort();
        addrs.dedup();
        inner
            .others
            .lock()
            .expect("others lock")
            .retain(|a, _| addrs.contains(a));
        if addrs.is_empty() {
            continue;
        }
        let mut set = JoinSet::new();
        for k in 0..NODE_BATCH.min(addrs.len()) {
            let addr = addrs[(cursor + k) % addrs.len()];
            set.spawn(async move {
                let mut c = Client::new(addr).with_timeout(NODE_TIMEOUT);
                match c.call(&Request::NodeStats).await {
                    Ok(Response::NodeStats(s)) => Some((addr, s)),
                    _ => None,
                }
            });
        }
        cursor = (cursor + NODE_BATCH) % addrs.len();
        while let Some(r) = set.join_next().await {
            if let Ok(Some((addr, s))) = r {
                inner
                    .others
                    .lock()
                    .expect("others lock")
                    .insert(addr, (s, Instant::now()));
            }
        }
    }
}

/// The event line when this agent's SDFS repair counter grew (copies it
/// fetched from other replicas); nothing on the first reading.
fn repaired(node: SocketAddr, before: Option<u64>, now: u64) -> Option<String> {
    let n = now.checked_sub(before?).filter(|n| *n > 0)?;
    Some(format!(
        "{node} re-replicated {n} cop{} from other replicas",
        if n == 1 { "y" } else { "ies" }
    ))
}

async fn publish(inner: Arc<Inner>, membership: MembershipHandle) {
    let mut tick = every(Duration::from_millis(MIN_INTERVAL_MS));
    loop {
        tick.tick().await;
        if inner.subs_len() == 0 {
            continue;
        }
        let Some(members) = membership.members().await else {
            return;
        };
        if inner.id.lock().expect("id lock").is_none()
            && let Some(id) = membership.id().await
        {
            *inner.id.lock().expect("id lock") = Some(id.id);
        }
        let frame = inner.build(members);
        inner.publish(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::client::{read_response, send_request};
    use tokio::net::TcpListener;

    fn inner() -> Arc<Inner> {
        let t = Telemetry::new("127.0.0.1:1".parse().unwrap(), SdfsHandle::default());
        t.inner.unwrap()
    }

    fn frame(i: &Inner) -> Frame {
        i.build(Vec::new())
    }

    #[test]
    fn a_full_queue_drops_frames_and_counts_them() {
        let i = inner();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        i.subs.lock().unwrap().push(Sub {
            tx,
            dropped: dropped.clone(),
        });
        for _ in 0..5 {
            i.publish(frame(&i));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), (5 - QUEUE) as u64);
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().map(|f| f.seq)).collect();
        assert_eq!(seqs, vec![1, 2], "the oldest frames stay queued");
        drop(rx);
        i.publish(frame(&i));
        assert_eq!(i.subs_len(), 0, "a closed subscriber is forgotten");
    }

    #[test]
    fn a_growing_repair_counter_is_an_event() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(repaired(a, None, 5), None);
        assert_eq!(repaired(a, Some(5), 5), None);
        assert_eq!(
            repaired(a, Some(5), 7).unwrap(),
            "127.0.0.1:9 re-replicated 2 copies from other replicas"
        );
        // A restarted agent's counter starts again from zero.
        assert_eq!(repaired(a, Some(5), 1), None);
    }

    /// A subscription over a real socket: the first frame carries the event
    /// tail, the next only new events, and after drops a resync.
    #[tokio::test]
    async fn a_subscriber_gets_new_events_and_resyncs_after_drops() {
        let i = inner();
        let t = Telemetry {
            inner: Some(i.clone()),
        };
        i.push_event(EventKind::Info, "before".into());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = Conn::accept(s, crate::test_key()).await.unwrap();
            t.serve(&mut s, 1 << 20).await
        });
        crate::test_key();
        let mut c = dml_shared::client::connect(addr).await.unwrap();
        send_request(&mut c, &Request::Subscribe).await.unwrap();
        // Wait until the server has registered the subscription.
        while i.subs_len() == 0 {
            tokio::task::yield_now().await;
        }
        let next = async |c: &mut Conn| match read_response(c).await.unwrap() {
            Response::Telemetry(f) => *f,
            other => panic!("{other:?}"),
        };
        i.publish(frame(&i));
        let f = next(&mut c).await;
        assert!(f.resync);
        assert_eq!(f.events.len(), 1);
        i.push_event(EventKind::JobStart, "job 1".into());
        i.publish(frame(&i));
        let f = next(&mut c).await;
        assert!(!f.resync);
        assert_eq!(
            f.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            vec!["job 1"]
        );
        // Without yielding, the subscriber's task cannot drain its queue.
        for _ in 0..5 {
            i.publish(frame(&i));
        }
        let f = next(&mut c).await;
        assert_eq!(f.dropped, (5 - QUEUE) as u64);
        assert!(f.resync);
        assert_eq!(f.events.len(), 2, "a resync carries the tail again");
        drop(c);
        server.await.unwrap().unwrap();
    }
}
