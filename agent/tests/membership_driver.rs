//! The membership driver, whole: sealing, flushing, events and commands.
//!
//! Real drivers ([`driver::spawn_on`]) with real cluster keys, driven only
//! through their [`MembershipHandle`]s. Most tests run them over the in-memory
//! [`MemNetwork`] on tokio's paused clock, so protocol timeouts cost no real
//! time; the conformance scenario runs over it and over UDP on 127.0.0.1.
//!
//! Each driver counts the datagrams it drops in its own
//! [`dml_shared::auth::AuthContext`], so tests assert exact counts.

use dml_agent::membership::Event;
use dml_agent::membership::Membership;
use dml_agent::membership::driver::{self, MembershipHandle, MembershipTask, TimedEvent};
use dml_agent::membership::msg::Message;
use dml_agent::membership::transport::{Datagram, MemNetwork, Transport, UdpTransport};
use dml_shared::NodeId;
use dml_shared::api::{MemberState, Stats};
use dml_shared::auth::{AuthContext, ClusterKey, Drop, KEY_LEN, Session, UDP_OVERHEAD, unseal};
use dml_shared::config::{MembershipConfig, Preset};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(20);
/// Far more than a join, a leave or a re-join needs to reach every member
/// with the `local` preset (join retries start at 0.5 s).
const SPREAD: Duration = Duration::from_secs(10);
/// Slack on top of the protocol's own timers for a failure to be declared.
const DETECTION_SLACK: Duration = Duration::from_secs(1);

fn cluster_key() -> ClusterKey {
    ClusterKey::from_bytes([7; KEY_LEN])
}

fn other_key() -> ClusterKey {
    ClusterKey::from_bytes([8; KEY_LEN])
}

fn config() -> MembershipConfig {
    MembershipConfig::preset(Preset::Local)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

/// Longest a member may take to declare a silent one failed: the next probe
/// round, a direct and an indirect probe timing out, then an unconfirmed
/// suspicion running out.
fn detection_bound() -> Duration {
    let c = config();
    c.ping_interval + 2 * c.ping_timeout + c.suspicion_timeout + DETECTION_SLACK
}

/// Waits until `check` holds, failing the test after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// A running driver and the address it receives at.
struct Node {
    addr: SocketAddr,
    task: MembershipTask,
}

impl Node {
    /// Starts a driver on `transport` that joins through `introducers`.
    fn start(transport: impl Transport, introducers: &[SocketAddr], key: ClusterKey) -> Self {
        let addr = transport.local_addr().expect("a bound transport");
        let id = driver::identity_now(addr);
        let core = Membership::new(
            id,
            config(),
            introducers.to_vec(),
            id.ring_hash(),
            Instant::now().into_std(),
        );
        Node {
            addr,
            task: driver::spawn_on(transport, core, true, AuthContext::new(key)),
        }
    }

    fn handle(&self) -> &MembershipHandle {
        &self.task.handle
    }

    async fn id(&self) -> NodeId {
        self.handle().id().await.expect("the driver answers Id").id
    }

    async fn stats(&self) -> Stats {
        self.handle()
            .stats()
            .await
            .expect("the driver answers Stats")
    }

    /// Addresses this node holds alive or suspect, itself included, sorted.
    async fn live(&self) -> Vec<SocketAddr> {
        let members = self
            .handle()
            .members()
            .await
            .expect("the driver answers Members");
        let mut live: Vec<SocketAddr> = members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.id.addr)
            .collect();
        live.sort();
        live
    }

    async fn state_of(&self, id: NodeId) -> Option<MemberState> {
        let members = self
            .handle()
            .members()
            .await
            .expect("the driver answers Members");
        members.iter().find(|m| m.id == id).map(|m| m.state)
    }
}

fn sorted(nodes: &[&Node]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    v.sort();
    v
}

/// Waits until every node of `nodes` lists exactly `nodes` as live.
async fn converged(nodes: &[&Node]) {
    let all = sorted(nodes);
    for n in nodes {
        let what = format!("{} sees {all:?} live", n.addr);
        eventually(&what, SPREAD, async || n.live().await == all).await;
    }
}

/// The events received so far.
fn drain(events: &mut broadcast::Receiver<TimedEvent>) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv().ok().map(|e| e.event)).collect()
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

/// What the driver needs of any transport, run against each of them: join
/// through an introducer, events and commands, a member with another key
/// kept out, leave and re-join, shutdown.
async fn conformance<T: Transport>(mut bind: impl FnMut() -> T) {
    let a = Node::start(bind(), &[], cluster_key());
    let mut a_events = a.handle().subscribe();
    let b = Node::start(bind(), &[a.addr], cluster_key());
    let c = Node::start(bind(), &[a.addr], cluster_key());
    converged(&[&a, &b, &c]).await;

    // Commands answer, and the events were flushed to subscribers.
    let a_info = a.handle().id().await.expect("Id");
    assert_eq!(a_info.id.addr, a.addr);
    assert!(a_info.joined);
    let stats = a.stats().await;
    assert_eq!(stats.members_live, 3, "{stats:?}");
    assert!(
        stats.packets_sent > 0 && stats.packets_recv > 0,
        "{stats:?}"
    );
    assert!(
        stats.bytes_sent > stats.packets_sent * UDP_OVERHEAD as u64,
        "sent bytes count the seal of every datagram: {stats:?}"
    );
    let (b_id, c_id) = (b.id().await, c.id().await);
    let seen = drain(&mut a_events);
    assert!(
        seen.contains(&Event::Joined(b_id)) && seen.contains(&Event::Joined(c_id)),
        "{seen:?}"
    );

    // A member with another key gets nothing in and hears nothing back.
    let unauthenticated = a.stats().await.udp_unauthenticated;
    let x = Node::start(bind(), &[a.addr], other_key());
    eventually("the intruder retries its join", SPREAD, async || {
        x.stats().await.packets_sent >= 2
    })
    .await;
    eventually(
        "the introducer counts the intruder's joins",
        SPREAD,
        async || a.stats().await.udp_unauthenticated > unauthenticated,
    )
    .await;
    let x_info = x.handle().id().await.expect("Id");
    assert!(!x_info.joined, "{x_info:?}");
    assert_eq!(x.live().await, vec![x.addr]);
    assert_eq!(x.stats().await.packets_recv, 0);
    assert_eq!(a.live().await, sorted(&[&a, &b, &c]));
    x.task.shutdown().await;

    // A leave reaches the others at once; a join after it is a new identity.
    c.handle().leave().await.expect("Leave");
    assert!(!c.handle().id().await.expect("Id").joined);
    for n in [&a, &b] {
        eventually("the leave is seen", SPREAD, async || {
            n.state_of(c_id).await == Some(MemberState::Left)
        })
        .await;
    }
    c.handle().join().await.expect("Join");
    converged(&[&a, &b, &c]).await;
    let c_again = c.id().await;
    assert!(c_again.started > c_id.started, "{c_again} after {c_id}");
    assert_eq!(a.state_of(c_again).await, Some(MemberState::Alive));

    // Shutdown announces a leave; the handle then gets no answers.
    let a_id = a.id().await;
    let a_handle = a.handle().clone();
    a.task.shutdown().await;
    assert!(a_handle.id().await.is_none());
    assert!(a_handle.members().await.is_none());
    for n in [&b, &c] {
        eventually("the shutdown's leave is seen", SPREAD, async || {
            n.state_of(a_id).await == Some(MemberState::Left)
        })
        .await;
    }
    b.task.shutdown().await;
    c.task.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn conformance_over_the_in_memory_network() {
    let net = MemNetwork::new(1);
    conformance(|| net.bind(any_port()).expect("a free port")).await;
    let s = net.stats();
    assert_eq!(s.sent, s.delivered + s.unreachable, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn conformance_over_a_network_with_latency() {
    let net = MemNetwork::new(2);
    net.set_delay(Duration::from_millis(2));
    conformance(|| net.bind(any_port()).expect("a free port")).await;
}

#[tokio::test]
async fn conformance_over_udp_on_loopback() {
    conformance(|| {
        let socket = driver::bind_udp(any_port(), config().udp_buffer).expect("a UDP port");
        UdpTransport::new(socket)
    })
    .await;
}

/// `n` drivers on `net`, joined through the first and converged.
async fn cluster(net: &MemNetwork, n: usize) -> Vec<Node> {
    let first = Node::start(net.bind(any_port()).expect("a port"), &[], cluster_key());
    let intro = [first.addr];
    let mut nodes = vec![first];
    for _ in 1..n {
        let t = net.bind(any_port()).expect("a port");
        nodes.push(Node::start(t, &intro, cluster_key()));
    }
    converged(&nodes.iter().collect::<Vec<_>>()).await;
    nodes
}

#[tokio::test(start_paused = true)]
async fn an_isolated_driver_is_declared_failed_and_is_reinstated_once_reconnected() {
    let net = MemNetwork::new(3);
    let nodes = cluster(&net, 3).await;
    let (survivors, victim) = (&nodes[..2], &nodes[2]);
    let victim_id = victim.id().await;
    let mut subs: Vec<_> = survivors.iter().map(|n| n.handle().subscribe()).collect();

    net.isolate(victim.addr);
    for n in survivors {
        eventually(
            "the isolated member is declared failed",
            detection_bound(),
            async || n.state_of(victim_id).await == Some(MemberState::Failed),
        )
        .await;
    }
    for sub in &mut subs {
        assert!(drain(sub).contains(&Event::Failed(victim_id)));
    }
    eventually(
        "the isolated member drops the others",
        detection_bound(),
        async || victim.live().await == vec![victim.addr],
    )
    .await;
    assert!(net.stats().blocked > 0);

    // Push-pull with a failed member finds it again; it refutes its failure and is
    // reinstated under the same identity.
    net.reconnect(victim.addr);
    let heal = config().push_pull_interval * 2 + SPREAD;
    for n in &nodes {
        let what = format!("{} sees all three again", n.addr);
        eventually(&what, heal, async || n.live().await.len() == 3).await;
    }
    assert_eq!(victim.id().await, victim_id);
    for sub in &mut subs {
        assert!(drain(sub).contains(&Event::Reinstated(victim_id)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_link_alone_fails_nobody() {
    let net = MemNetwork::new(4);
    let nodes = cluster(&net, 3).await;
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    net.cut(a, b);
    net.cut(b, a);
    let blocked = net.stats().blocked;
    // Indirect probes through the third member must keep both alive for many
    // suspicion timeouts of virtual time.
    tokio::time::sleep(detection_bound() * 5).await;
    assert!(
        net.stats().blocked > blocked,
        "the cut was never in the way"
    );
    let all = sorted(&nodes.iter().collect::<Vec<_>>());
    for n in &nodes {
        assert_eq!(n.live().await, all);
        assert_eq!(n.stats().await.declared_failed, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn drivers_converge_and_stay_up_through_lossy_links() {
    let net = MemNetwork::new(5);
    net.set_loss(0.05);
    let nodes = cluster(&net, 4).await;
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(n.id().await);
    }
    tokio::time::sleep(detection_bound() * 5).await;
    assert!(net.stats().lost > 0);
    for (n, id) in nodes.iter().zip(ids) {
        assert_eq!(n.live().await.len(), 4, "{} lost someone", n.addr);
        assert_eq!(
            n.id().await,
            id,
            "{} was declared failed and re-joined",
            n.addr
        );
    }
}

/// Waits for the next datagram on `tap` sent from `from` to `to`.
async fn next_between(
    tap: &mut mpsc::UnboundedReceiver<Datagram>,
    from: SocketAddr,
    to: SocketAddr,
) -> Datagram {
    let found = tokio::time::timeout(SPREAD, async {
        loop {
            let d = tap.recv().await.expect("the network lives");
            if d.from == from && d.to == to {
                return d;
            }
        }
    });
    found.await.expect("a datagram between two members")
}

#[tokio::test(start_paused = true)]
async fn every_datagram_on_the_wire_is_sealed_with_the_cluster_key() {
    let net = MemNetwork::new(6);
    let mut tap = net.tap();
    let nodes = cluster(&net, 3).await;
    nodes[2].handle().leave().await.expect("Leave");
    let mut seen = 0;
    while let Ok(d) = tap.try_recv() {
        let (_, payload) =
            unseal(&cluster_key(), d.to, &d.bytes).unwrap_or_else(|why| panic!("{d:?}: {why}"));
        // Hellos and notices carry nothing; every other payload is a message.
        if !payload.is_empty() {
            Message::decode(&payload).unwrap_or_else(|e| panic!("{d:?}: {e}"));
            seen += 1;
        }
        assert_eq!(
            unseal(&other_key(), d.to, &d.bytes).map(drop),
            Err(Drop::Forged)
        );
        // Bound to its receiver: at another address it does not open.
        assert_eq!(
            unseal(&cluster_key(), d.from, &d.bytes).map(drop),
            Err(Drop::Forged)
        );
    }
    assert!(seen > 0);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_datagram_is_dropped_and_counted() {
    let net = MemNetwork::new(7);
    let nodes = cluster(&net, 3).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut tap = net.tap();
    let captured = next_between(&mut tap, a.addr, b.addr).await;
    let replayed = b.stats().await.udp_replayed;
    let attacker = net.bind(any_port()).expect("a port");
    attacker
        .send_to(&captured.bytes, b.addr)
        .await
        .expect("sent");
    eventually("the replay is counted", SPREAD, async || {
        b.stats().await.udp_replayed > replayed
    })
    .await;
    // Counted once, by the driver that dropped it only.
    assert_eq!(b.stats().await.udp_replayed, replayed + 1);
    assert_eq!(a.stats().await.udp_replayed, 0);
    assert_eq!(b.live().await.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_datagram_sealed_with_another_key_never_reaches_the_core() {
    let net = MemNetwork::new(8);
    let nodes = cluster(&net, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut tap = net.tap();
    let captured = next_between(&mut tap, a.addr, b.addr).await;
    let (header, payload) = unseal(&cluster_key(), b.addr, &captured.bytes).expect("authentic");
    // The same message from an attacker holding another key, and garbage.
    let attacker = net.bind(any_port()).expect("a port");
    let forged = Session::new(
        &AuthContext::new(other_key()),
        attacker.local_addr().expect("bound"),
    )
    .seal_for(b.addr, header.receiver, &payload, wall_micros());
    let before = b.stats().await;
    attacker.send_to(&forged, b.addr).await.expect("sent");
    attacker
        .send_to(b"not a datagram", b.addr)
        .await
        .expect("sent");
    eventually("both drops are counted", SPREAD, async || {
        b.stats().await.udp_unauthenticated >= before.udp_unauthenticated + 2
    })
    .await;
    let after = b.stats().await;
    assert_eq!(
        after.udp_unauthenticated,
        before.udp_unauthenticated + 2,
        "each drop counted once"
    );
    assert_eq!(a.stats().await.udp_unauthenticated, 0, "counted by b only");
    assert_eq!(after.bad_packets, before.bad_packets, "reached the decoder");
    assert!(
        !b.handle()
            .members()
            .await
            .expect("Members")
            .iter()
            .any(|m| m.id.addr == attacker.local_addr().expect("bound"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_driver_started_without_join_stays_idle_until_told() {
    let net = MemNetwork::new(9);
    let a = Node::start(net.bind(any_port()).expect("a port"), &[], cluster_key());
    let t = net.bind(any_port()).expect("a port");
    let addr = t.local_addr().expect("bound");
    let id = driver::identity_now(addr);
    let core = Membership::new(id, config(), vec![a.addr], 1, Instant::now().into_std());
    let b = Node {
        addr,
        task: driver::spawn_on(t, core, false, AuthContext::new(cluster_key())),
    };
    tokio::time::sleep(SPREAD).await;
    assert!(!b.handle().id().await.expect("Id").joined);
    // The driver's clock is tokio's: the paused time passed for it too.
    assert!(b.stats().await.uptime_ms >= SPREAD.as_millis() as u64);
    assert_eq!(a.live().await, vec![a.addr]);
    assert_eq!(net.stats().sent, 0, "an idle member sends nothing");
    b.handle().join().await.expect("Join");
    converged(&[&a, &b]).await;
}
