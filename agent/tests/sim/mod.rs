//! A deterministic simulator for clusters of membership cores.
//!
//! Every [`Membership`] core runs on one virtual clock: a fixed base
//! [`Instant`] plus a virtual offset. Nothing sleeps. The simulator keeps one
//! event queue of packet deliveries and core wake-ups (each core's
//! [`Membership::poll_at`]) and jumps straight to the earliest one, so an hour
//! of cluster time costs only the work the cores do in it.
//!
//! The in-memory network delivers each datagram after `delay` plus a uniform
//! jitter, and can drop at random, cut single links (`a -> b`), isolate a node
//! or split the cluster into partitions. Nodes can crash (stop processing and
//! sending), pause like `SIGSTOP` (datagrams that arrive meanwhile are lost),
//! resume, leave gracefully, or restart as a new identity at the same address.
//!
//! Everything random (network and cores) comes from one seed, and the event
//! queue breaks ties by insertion order, so a scenario replays identically.
//!
//! Scenarios are written either by calling [`Sim`] methods directly or as a
//! list of [`Step`]s handed to [`Sim::play`].

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use dml_agent::membership::{Event, Membership, Status};
use dml_shared::NodeId;
use dml_shared::config::{MembershipConfig, Preset};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Virtual wall-clock time (ms since the Unix epoch) at simulation start; node
/// identities take their `started` from it.
const EPOCH_MS: u64 = 1_764_000_000_000;
/// First port; node `i` listens on `127.0.0.1:(FIRST_PORT + i)` as in the original.
const FIRST_PORT: u16 = 8001;

/// Where a simulated process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Stopped for good: processes and sends nothing.
    Crashed,
    /// Stopped like `SIGSTOP`: no timers run and arriving datagrams are lost.
    Paused,
}

/// One event a core emitted, with when and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Virtual time since the simulation started.
    pub at: Duration,
    /// Index of the node whose core emitted it.
    pub node: usize,
    pub event: Event,
}

/// Traffic totals of the simulated network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    /// Dropped by the random-loss model.
    pub lost: u64,
    /// Dropped by a cut link, an isolation or a partition.
    pub blocked: u64,
    /// Arrived at a crashed or paused node, or at an address nobody holds.
    pub unreachable: u64,
}

/// The in-memory network's behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way latency of every datagram.
    pub delay: Duration,
    /// Extra latency drawn uniformly from `0..=jitter` per datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_micros(500),
            jitter: Duration::from_micros(1000),
            loss: 0.0,
        }
    }
}

struct Node {
    addr: SocketAddr,
    core: Membership,
    health: Health,
    introducers: Vec<SocketAddr>,
    /// The wake-up currently queued for this node, if any.
    wake: Option<Instant>,
    /// Cores created at this address so far (restarts + 1).
    generation: u64,
}

enum Job {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Wake {
        node: usize,
    },
}

struct Item {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    /// Reversed, so that [`BinaryHeap`] pops the earliest (then oldest) item.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A simulated cluster: cores, network and virtual clock.
pub struct Sim {
    cfg: MembershipConfig,
    net: NetConfig,
    seed: u64,
    base: Instant,
    now: Instant,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Item>,
    seq: u64,
    rng: SmallRng,
    cut: BTreeSet<(usize, usize)>,
    isolated: BTreeSet<usize>,
    /// Partition group of each node; `None` when the network is whole.
    groups: Option<Vec<usize>>,
    log: Vec<Record>,
    stats: NetStats,
    /// How often [`Sim::run_until`] evaluates its condition, in virtual time.
    pub check_every: Duration,
    /// The cluster's configured nodes, given to every core created from now
    /// on as re-join seeds (like the agent's `nodes` config).
    configured: Vec<SocketAddr>,
}

impl Sim {
    /// An empty cluster using `cfg` for every core, and the default network.
    pub fn new(seed: u64, cfg: MembershipConfig) -> Self {
        let base = Instant::now();
        Self {
            cfg,
            net: NetConfig::default(),
            seed,
            base,
            now: base,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed),
            cut: BTreeSet::new(),
            isolated: BTreeSet::new(),
            groups: None,
            log: Vec::new(),
            stats: NetStats::default(),
            check_every: Duration::from_millis(10),
            configured: Vec::new(),
        }
    }

    /// Nodes `0..n` become the configured node list of every core created
    /// from now on (restarted ones included).
    pub fn configure_nodes(&mut self, n: usize) {
        self.configured = (0..n).map(Self::addr_of).collect();
    }

    /// An empty cluster with the `lan` preset.
    pub fn lan(seed: u64) -> Self {
        Self::new(seed, MembershipConfig::preset(Preset::Lan))
    }

    /// Replaces the network model (affects datagrams sent from now on).
    pub fn with_net(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    /// The detection bound used by the scenarios: one probe interval until the
    /// next probe, the direct and the indirect timeouts, the undamped suspicion
    /// timeout, and `slack` for the failure broadcast and timer alignment.
    pub fn detection_bound(&self, slack: Duration) -> Duration {
        self.cfg.ping_interval + 2 * self.cfg.ping_timeout + self.cfg.suspicion_timeout + slack
    }

    // ----- building the cluster -------------------------------------------

    /// The address node `i` listens on.
    pub fn addr_of(i: usize) -> SocketAddr {
        let port = FIRST_PORT + u16::try_from(i).expect("fewer than 57,000 nodes");
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Adds a node that will join through `introducers` (node indices). It
    /// does nothing until [`Sim::join`].
    pub fn add_node(&mut self, introducers: &[usize]) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr_of(i);
        let introducers: Vec<SocketAddr> = introducers.iter().map(|&n| Self::addr_of(n)).collect();
        let core = self.new_core(addr, introducers.clone(), 0);
        self.by_addr.insert(addr, i);
        self.nodes.push(Node {
            addr,
            core,
            health: Health::Up,
            introducers,
            wake: None,
            generation: 1,
        });
        self.flush(i, false);
        i
    }

    /// Adds `n` nodes that all join through node `introducer` (which may be
    /// among them), and starts their joins.
    pub fn add_joined(&mut self, n: usize, introducer: usize) -> Vec<usize> {
        let ids: Vec<usize> = (0..n).map(|_| self.add_node(&[introducer])).collect();
        for &i in &ids {
            self.join(i);
        }
        ids
    }

    /// Builds an already-converged cluster of `n` nodes without any traffic
    /// (every core is seeded with the full member list), for experiments on
    /// clusters too large to build by joining one by one.
    pub fn add_converged(&mut self, n: usize) -> Vec<usize> {
        let first = self.nodes.len();
        let idx: Vec<usize> = (first..first + n)
            .map(|_| self.add_node(&[first]))
            .collect();
        let ids: Vec<NodeId> = idx.iter().map(|&i| self.nodes[i].core.id()).collect();
        for &i in &idx {
            self.nodes[i].core.bootstrap(&ids, self.now);
            self.flush(i, false);
        }
        idx
    }

    fn new_core(
        &mut self,
        addr: SocketAddr,
        introducers: Vec<SocketAddr>,
        gen_: u64,
    ) -> Membership {
        let started = EPOCH_MS + self.elapsed().as_millis() as u64 + gen_;
        let id = NodeId::new(addr, started);
        let seed = self.seed ^ (u64::from(addr.port()) << 32) ^ gen_.wrapping_mul(0x9e37_79b9);
        Membership::new(id, self.cfg.clone(), introducers, seed, self.now)
            .with_seeds(self.configured.iter().copied())
    }

    // ----- node lifecycle ---------------------------------------------------

    pub fn join(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].core.join(now);
        self.flush(i, false);
    }

    /// Graceful leave.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].core.leave(now);
        self.flush(i, false);
    }

    /// Stops node `i` for good (until [`Sim::restart`]).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].health = Health::Crashed;
        self.nodes[i].wake = None;
    }

    /// Stops node `i` like `SIGSTOP`: datagrams that arrive meanwhile are lost.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].health = Health::Paused;
        self.nodes[i].wake = None;
    }

    /// Continues a paused node like `SIGCONT`: its overdue timers run at once.
    pub fn resume(&mut self, i: usize) {
        assert_eq!(
            self.nodes[i].health,
            Health::Paused,
            "node {i} is not paused"
        );
        self.nodes[i].health = Health::Up;
        let now = self.now;
        self.nodes[i].core.handle_tick(now);
        self.flush(i, true);
    }

    /// Starts a new process at node `i`'s address: a new core whose identity
    /// has a later start time, which then joins through the same introducers.
    pub fn restart(&mut self, i: usize) {
        let generation = self.nodes[i].generation;
        let (addr, intro) = (self.nodes[i].addr, self.nodes[i].introducers.clone());
        let core = self.new_core(addr, intro, generation);
        let node = &mut self.nodes[i];
        assert!(core.id().started > node.core.id().started);
        node.core = core;
        node.health = Health::Up;
        node.wake = None;
        node.generation += 1;
        self.join(i);
    }

    // ----- network faults ---------------------------------------------------

    /// Random loss probability for datagrams sent from now on.
    pub fn set_loss(&mut self, p: f64) {
        self.net.loss = p;
    }

    /// Drops every datagram from `a` to `b` (one direction).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a, b));
    }

    /// Drops every datagram to and from node `i`.
    pub fn isolate(&mut self, i: usize) {
        self.isolated.insert(i);
    }

    /// Splits the network: datagrams only flow within a group. Nodes in no
    /// group form one more group together.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let mut g = vec![groups.len(); self.nodes.len()];
        for (k, members) in groups.iter().enumerate() {
            for &i in *members {
                g[i] = k;
            }
        }
        self.groups = Some(g);
    }

    /// Removes every cut, isolation and partition (not the random loss).
    pub fn heal(&mut self) {
        self.cut.clear();
        self.isolated.clear();
        self.groups = None;
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from, to))
            || self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self
                .groups
                .as_ref()
                .is_some_and(|g| g.get(from) != g.get(to))
    }

    // ----- running --------------------------------------------------------

    /// The current virtual instant, to pass to core methods taking `now`.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Runs every delivery and timer up to `d` from now.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_to(until);
    }

    /// Runs until `cond` holds (checked every [`Sim::check_every`]) or `limit`
    /// has passed; returns how long it took, or `None` on timeout.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        loop {
            if cond(self) {
                return Some(self.now - start);
            }
            if self.now >= end {
                return None;
            }
            let next = (self.now + self.check_every).min(end);
            self.run_to(next);
        }
    }

    fn run_to(&mut self, until: Instant) {
        while self.queue.peek().is_some_and(|it| it.at <= until) {
            let item = self.queue.pop().expect("peeked");
            self.now = item.at;
            match item.job {
                Job::Deliver { to, from, bytes } => self.deliver(from, to, &bytes),
                Job::Wake { node } => self.wake(node, item.at),
            }
        }
        self.now = until;
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        if self.blocked(from, to) {
            self.stats.blocked += 1;
            return;
        }
        if self.nodes[to].health != Health::Up {
            self.stats.unreachable += 1;
            return;
        }
        self.stats.delivered += 1;
        let (now, addr) = (self.now, self.nodes[from].addr);
        // Undecodable datagrams are the core's to count; the simulator sends none.
        let _ = self.nodes[to].core.handle_datagram(addr, bytes, now);
        self.flush(to, false);
    }

    fn wake(&mut self, i: usize, at: Instant) {
        let node = &mut self.nodes[i];
        if node.health != Health::Up || node.wake != Some(at) {
            return; // superseded, or the node is down
        }
        node.wake = None;
        node.core.handle_tick(at);
        self.flush(i, true);
    }

    /// Routes node `i`'s outbox, records its events and queues its next wake-up.
    fn flush(&mut self, i: usize, after_tick: bool) {
        let now = self.now;
        let out = self.nodes[i].core.drain_outbox();
        let events = self.nodes[i].core.drain_events();
        let at = self.elapsed();
        self.log.extend(
            events
                .into_iter()
                .map(|event| Record { at, node: i, event }),
        );
        if self.nodes[i].health != Health::Up {
            return;
        }
        for (to, bytes) in out {
            self.send(i, to, bytes);
        }
        let t = self.nodes[i].core.poll_at();
        assert!(
            !after_tick || t > now,
            "node {i} asked to be woken at {:?} right after handling its timers at {:?}: \
             a driver would spin",
            t.saturating_duration_since(self.base),
            now - self.base,
        );
        let t = t.max(now);
        if self.nodes[i].wake != Some(t) {
            self.nodes[i].wake = Some(t);
            self.push(t, Job::Wake { node: i });
        }
    }

    fn send(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.sent += 1;
        let Some(&to) = self.by_addr.get(&to) else {
            self.stats.unreachable += 1;
            return;
        };
        if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss) {
            self.stats.lost += 1;
            return;
        }
        let jitter = self.net.jitter.mul_f64(self.rng.random_range(0.0..=1.0));
        let at = self.now + self.net.delay + jitter;
        self.push(at, Job::Deliver { to, from, bytes });
    }

    fn push(&mut self, at: Instant, job: Job) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            job,
        });
    }

    // ----- observing ------------------------------------------------------

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn core(&self, i: usize) -> &Membership {
        &self.nodes[i].core
    }

    /// Node `i`'s current identity.
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].core.id()
    }

    pub fn health(&self, i: usize) -> Health {
        self.nodes[i].health
    }

    /// Nodes that are up and in the group or trying to be (not left).
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].health == Health::Up)
            .filter(|&i| self.nodes[i].core.status() != Status::Idle)
            .collect()
    }

    /// The current identities of the nodes in `nodes`, sorted.
    pub fn ids(&self, nodes: &[usize]) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = nodes.iter().map(|&i| self.id(i)).collect();
        v.sort();
        v
    }

    /// Whether every node in `nodes` lists exactly the current identities of `nodes` as live.
    pub fn agree(&self, nodes: &[usize]) -> bool {
        let want = self.ids(nodes);
        nodes
            .iter()
            .all(|&i| self.nodes[i].core.live_members() == want)
    }

    /// Whether every [`Sim::up`] node has joined and lists exactly the up nodes as live.
    pub fn converged(&self) -> bool {
        let up = self.up();
        !up.is_empty()
            && up
                .iter()
                .all(|&i| self.nodes[i].core.status() == Status::Joined)
            && self.agree(&up)
    }

    /// A readable account of every node's view, for assertion messages.
    pub fn views(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let live: Vec<String> = n
                .core
                .live_members()
                .iter()
                .map(|id| format!("{}#{}", id.addr.port(), id.started - EPOCH_MS))
                .collect();
            s += &format!(
                "  node {i} ({:?}, {:?}, id {}#{}): {}\n",
                n.health,
                n.core.status(),
                n.addr.port(),
                n.core.id().started - EPOCH_MS,
                live.join(" ")
            );
        }
        s
    }

    /// Every event emitted so far, in order.
    pub fn log(&self) -> &[Record] {
        &self.log
    }

    /// When node `observer` first emitted an event matching `pred` at or after `since`.
    pub fn first_event(
        &self,
        observer: usize,
        since: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Duration> {
        self.log
            .iter()
            .find(|r| r.node == observer && r.at >= since && pred(&r.event))
            .map(|r| r.at)
    }

    /// Number of `Event::Failed` in the log (any observer, any subject).
    pub fn failed_events(&self) -> usize {
        self.log
            .iter()
            .filter(|r| matches!(r.event, Event::Failed(_)))
            .count()
    }

    /// Sum of a counter over every node's current core.
    pub fn total(&self, f: impl Fn(&dml_agent::membership::stats::Counters) -> u64) -> u64 {
        self.nodes.iter().map(|n| f(&n.core.counters())).sum()
    }

    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    /// Runs a scenario written as steps; panics at the first failed assertion.
    pub fn play(&mut self, steps: impl IntoIterator<Item = Step>) {
        for step in steps {
            self.apply(step);
        }
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::AddJoined(n, via) => {
                self.add_joined(n, via);
            }
            Step::Join(i) => self.join(i),
            Step::Leave(i) => self.leave(i),
            Step::Advance(d) => self.advance(d),
            Step::Crash(i) => self.crash(i),
            Step::Pause(i) => self.pause(i),
            Step::Resume(i) => self.resume(i),
            Step::Restart(i) => self.restart(i),
            Step::Loss(p) => self.set_loss(p),
            Step::Cut(a, b) => self.cut(a, b),
            Step::Isolate(i) => self.isolate(i),
            Step::Partition(groups) => {
                let g: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
                self.partition(&g);
            }
            Step::Heal => self.heal(),
            Step::Assert(what, check) => {
                assert!(
                    check(self),
                    "at {:?}: expected {what}\n{}",
                    self.elapsed(),
                    self.views()
                );
            }
            Step::Within(limit, what, check) => {
                let took = self.run_until(limit, |s| check(s));
                assert!(
                    took.is_some(),
                    "at {:?}: expected {what} within {limit:?}\n{}",
                    self.elapsed(),
                    self.views()
                );
            }
        }
    }
}

/// A condition on the whole simulation.
pub type Check = Box<dyn Fn(&Sim) -> bool>;

/// One step of a scenario; see [`Sim::play`].
pub enum Step {
    /// Add this many nodes joining through the given node, and start their joins.
    AddJoined(usize, usize),
    Join(usize),
    Leave(usize),
    /// Let virtual time pass.
    Advance(Duration),
    Crash(usize),
    Pause(usize),
    Resume(usize),
    Restart(usize),
    /// Set the random loss probability.
    Loss(f64),
    /// Cut the link from the first node to the second.
    Cut(usize, usize),
    Isolate(usize),
    Partition(Vec<Vec<usize>>),
    Heal,
    /// The condition must hold now.
    Assert(&'static str, Check),
    /// The condition must come to hold within the duration.
    Within(Duration, &'static str, Check),
}

impl Step {
    pub fn assert(what: &'static str, check: impl Fn(&Sim) -> bool + 'static) -> Self {
        Step::Assert(what, Box::new(check))
    }

    pub fn within(
        limit: Duration,
        what: &'static str,
        check: impl Fn(&Sim) -> bool + 'static,
    ) -> Self {
        Step::Within(limit, what, Box::new(check))
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sim at {:?}\n{}", self.elapsed(), self.views())
    }
}

/// Median and maximum of a set of durations.
pub fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    assert!(!v.is_empty());
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}
