//! The membership state machine. It never reads a clock or a socket: datagrams
//! and the current time come in through `handle_*`, datagrams to send and
//! events come out through [`Membership::drain_outbox`] and
//! [`Membership::drain_events`], and [`Membership::poll_at`] says when to call
//! [`Membership::handle_tick`] next.

use super::broadcast::Broadcasts;
use super::msg::{Message, Tag, Update, UpdateKind, probe_tag, tag};
use super::ring::Ring;
use super::stats::{Counters, Rates, Traffic};
use super::suspicion;
use dml_shared::NodeId;
use dml_shared::api::{MemberInfo, MemberState};
use dml_shared::config::MembershipConfig;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes reserved in every datagram for the envelope and message fields.
const HEADER_BUDGET: usize = 48;
/// Largest datagram a full-state exchange may use.
const MAX_SYNC_BYTES: usize = 65_000;
/// Addresses remembered to re-join through after losing everyone.
const MAX_SEEDS: usize = 16;
/// Known members a re-join is sent to, besides the introducers.
const REJOIN_FANOUT: usize = 3;

/// What changed, for logs, the event log and telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member was added (or this agent completed its join).
    Joined(NodeId),
    /// A suspect refuted its suspicion.
    Alive(NodeId),
    Suspect(NodeId),
    /// A member was removed as failed.
    Failed(NodeId),
    Left(NodeId),
    /// A member this agent held as failed refuted it with a higher incarnation: it is alive
    /// again under the same identity (SWIM/memberlist refutation; a restart is a new identity
    /// and comes as `Joined`).
    Reinstated(NodeId),
    /// This agent learned it had been declared failed and refuted the claim with a higher
    /// incarnation, keeping its identity.
    Refuted(NodeId),
}

/// Where this agent stands in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Out of the group (left, or started with `--no-join`).
    Idle,
    /// Asking introducers to let it in.
    Joining,
    Joined,
}

/// The first of `t`, `t + every`, `t + 2 * every`, ... that is after `now`.
fn skip_past(t: Instant, now: Instant, every: Duration) -> Instant {
    if t > now {
        return t;
    }
    let every_ns = every.as_nanos().max(1);
    let missed = now.duration_since(t).as_nanos() / every_ns + 1;
    t + Duration::from_nanos(u64::try_from(missed * every_ns).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct Suspicion {
    started: Instant,
    confirmers: BTreeSet<Tag>,
    deadline: Instant,
}

#[derive(Debug)]
struct Member {
    id: NodeId,
    incarnation: u32,
    state: MemberState,
    /// When `state` last changed.
    changed: Instant,
    last_heard: Option<Instant>,
    suspicion: Option<Suspicion>,
}

impl Member {
    fn update(&self) -> Update {
        let kind = match self.state {
            MemberState::Alive => UpdateKind::Alive,
            MemberState::Suspect => UpdateKind::Suspect {
                by: self
                    .suspicion
                    .as_ref()
                    .and_then(|s| s.confirmers.first().copied())
                    .unwrap_or(0),
            },
            MemberState::Failed => UpdateKind::Failed,
            MemberState::Left => UpdateKind::Left,
        };
        Update {
            id: self.id,
            incarnation: self.incarnation,
            kind,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Direct,
    Indirect,
}

#[derive(Debug)]
struct Probe {
    target: NodeId,
    phase: Phase,
    deadline: Instant,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    seq: u16,
    target: SocketAddr,
    deadline: Instant,
}

pub struct Membership {
    cfg: MembershipConfig,
    me: NodeId,
    incarnation: u32,
    status: Status,
    /// Whether this agent was ever in the group: a later join takes a new identity.
    ever_joined: bool,
    last_tick: Option<Instant>,
    stalls: u64,
    introducers: Vec<SocketAddr>,
    /// Time origin for new identities: `me.started` at creation.
    created: Instant,
    first_started: u64,
    /// When this agent last learned it had been cut off (declared failed while it held most
    /// of the group failed) and dropped the failures it had declared.
    refreshed: Option<Instant>,
    /// The highest incarnation this identity was declared failed at, once it heard of it.
    failure_heard: Option<u32>,
    /// Ordered, like `probes`, so that iteration order (and with it every
    /// choice drawn from `rng`) depends only on the seed and the inputs.
    members: BTreeMap<NodeId, Member>,
    /// Newest identity seen at each address.
    by_addr: HashMap<SocketAddr, NodeId>,
    seeds: Vec<SocketAddr>,
    ring: Ring,
    broadcasts: Broadcasts,
    rng: SmallRng,
    seq: u16,
    probes: BTreeMap<u16, Probe>,
    relays: HashMap<u16, Relay>,
    next_round: Instant,
    next_sync: Instant,
    next_join: Option<Instant>,
    join_backoff: Duration,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<Event>,
    traffic: Traffic,
}

impl Membership {
    /// A member with identity `me`. It joins through `introducers` (its own
    /// address among them is skipped); with none to ask it starts the group alone.
    pub fn new(
        me: NodeId,
        cfg: MembershipConfig,
        introducers: Vec<SocketAddr>,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let jitter = |rng: &mut SmallRng, d: Duration| d.mul_f64(rng.random_range(0.0..1.0));
        let next_round = now + jitter(&mut rng, cfg.ping_interval);
        let next_sync =
            now + cfg.push_pull_interval / 2 + jitter(&mut rng, cfg.push_pull_interval / 2);
        let introducers: Vec<_> = introducers.into_iter().filter(|a| *a != me.addr).collect();
        Self {
            join_backoff: cfg.ping_interval,
            cfg,
            me,
            incarnation: 0,
            status: Status::Idle,
            ever_joined: false,
            last_tick: None,
            stalls: 0,
            introducers,
            created: now,
            first_started: me.started,
            refreshed: None,
            failure_heard: None,
            members: BTreeMap::new(),
            by_addr: HashMap::new(),
            seeds: Vec::new(),
            ring: Ring::new(vec![me]),
            broadcasts: Broadcasts::default(),
            rng,
            seq: 0,
            probes: BTreeMap::new(),
            relays: HashMap::new(),
            next_round,
            next_sync,
            next_join: None,
            outbox: Vec::new(),
            events: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    /// Addresses to re-join through, besides the introducers, once this
    /// agent has lost every member (e.g. the cluster's configured nodes, so
    /// that a restarted introducer finds the others again).
    pub fn with_seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.remember_seeds(seeds);
        self
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn counters(&self) -> Counters {
        self.traffic.counters
    }

    pub fn rates(&self, now: Instant) -> Rates {
        self.traffic.rates(now)
    }

    /// Adds the bytes that sealing added to datagrams sent and received, so
    /// the traffic figures are what went over the wire.
    pub fn count_seal_bytes(&mut self, sent: usize, received: usize) {
        self.traffic.counters.bytes_sent += sent as u64;
        self.traffic.counters.bytes_recv += received as u64;
    }

    /// Counts a datagram that never reached the core (e.g. oversized).
    pub fn count_bad_packet(&mut self, len: usize) {
        self.traffic.received(len);
        self.traffic.counters.bad_packets += 1;
    }

    /// Live members (alive or suspect), self included.
    pub fn live_members(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.state.is_live())
            .map(|m| m.id)
            .collect();
        if self.status != Status::Idle {
            v.push(self.me);
        }
        v.sort();
        v
    }

    /// Every member this agent knows, self and tombstones included.
    pub fn member_infos(&self, now: Instant) -> Vec<MemberInfo> {
        let m = self.cfg.m;
        let mut out: Vec<MemberInfo> = self
            .members
            .values()
            .map(|mem| MemberInfo {
                id: mem.id,
                state: mem.state,
                incarnation: mem.incarnation,
                last_heard_ms: mem
                    .last_heard
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                monitors: self.ring.monitors(&mem.id, m),
            })
            .collect();
        out.push(MemberInfo {
            id: self.me,
            state: if self.status == Status::Idle {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: self.incarnation,
            last_heard_ms: None,
            monitors: self.ring.monitors(&self.me, m),
        });
        out.sort_by_key(|i| i.id);
        out
    }

    pub fn drain_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Starts (or restarts after a leave) the join. The first join keeps the
    /// identity given to `new`; later ones take a fresh one.
    pub fn join(&mut self, now: Instant) {
        if self.status != Status::Idle {
            return;
        }
        if self.ever_joined {
            self.fresh_identity(now);
        }
        // Seeds (configured nodes, members seen before) serve re-joins only:
        // a first start with no introducer to ask founds the group.
        if self.introducers.is_empty() && (!self.ever_joined || self.seeds.is_empty()) {
            self.become_joined();
            return;
        }
        self.status = Status::Joining;
        self.join_backoff = self.cfg.ping_interval;
        self.next_join = Some(now);
        self.handle_tick(now);
    }

    /// Announces a graceful leave to every live member and stops probing.
    pub fn leave(&mut self, _now: Instant) {
        if self.status == Status::Idle {
            return;
        }
        let left = Update {
            id: self.me,
            incarnation: self.incarnation,
            kind: UpdateKind::Left,
        };
        let to: Vec<SocketAddr> = self.live_others().map(|m| m.id.addr).collect();
        self.remember_seeds(to.iter().copied());
        let bytes = Message::Gossip {
            updates: vec![left],
        }
        .encode();
        for addr in to {
            self.send_bytes(addr, bytes.clone());
        }
        self.status = Status::Idle;
        self.members.clear();
        self.by_addr.clear();
        self.probes.clear();
        self.relays.clear();
        self.broadcasts = Broadcasts::default();
        self.rebuild_ring();
        self.events.push(Event::Left(self.me));
    }

    /// Test support: makes this agent a joined member of a group of `members`
    /// (itself among them or not), all alive at incarnation 0, without any
    /// message. Lets a simulation start from a converged cluster of thousands.
    #[doc(hidden)]
    pub fn bootstrap(&mut self, members: &[NodeId], now: Instant) {
        self.status = Status::Joined;
        self.next_join = None;
        for &id in members.iter().filter(|id| id.addr != self.me.addr) {
            self.by_addr.insert(id.addr, id);
            self.members.insert(
                id,
                Member {
                    id,
                    incarnation: 0,
                    state: MemberState::Alive,
                    changed: now,
                    last_heard: None,
                    suspicion: None,
                },
            );
        }
        self.remember_seeds(members.iter().map(|id| id.addr));
        self.rebuild_ring();
    }

    /// When [`Membership::handle_tick`] must next run.
    pub fn poll_at(&self) -> Instant {
        let mut t = self.next_round.min(self.next_sync);
        let mut fold = |x: Instant| t = t.min(x);
        if let Some(j) = self.next_join {
            fold(j);
        }
        if let Some(s) = self.traffic.next_sample() {
            fold(s);
        }
        for p in self.probes.values() {
            fold(p.deadline);
        }
        for r in self.relays.values() {
            fold(r.deadline);
        }
        for m in self.members.values() {
            if let Some(s) = &m.suspicion {
                fold(s.deadline);
            }
        }
        t
    }

    /// Runs every timer due at `now`.
    pub fn handle_tick(&mut self, now: Instant) {
        self.traffic.sample(now);
        self.check_stall(now);
        if self.next_join.is_some_and(|t| t <= now) {
            self.send_joins(now);
        }
        if self.status != Status::Joined {
            // Skip the rounds missed while out of the group, keeping their
            // random phase (members must not probe in lockstep). They must
            // stay in the future: `poll_at` reports them, and a timer left
            // at `now` would have the driver call again at once, forever.
            self.next_round = skip_past(self.next_round, now, self.cfg.ping_interval);
            self.next_sync = skip_past(self.next_sync, now, self.cfg.push_pull_interval);
            return;
        }
        self.expire_probes(now);
        self.relays.retain(|_, r| r.deadline > now);
        self.expire_suspicions(now);
        if self.next_round <= now {
            self.probe_round(now);
            self.gossip_round();
            self.collect_tombstones(now);
            self.next_round += self.cfg.ping_interval;
            if self.next_round <= now {
                self.next_round = now + self.cfg.ping_interval;
            }
        }
        if self.next_sync <= now {
            self.push_pull();
            let jitter = self.rng.random_range(0.9..1.1);
            self.next_sync = now + self.cfg.push_pull_interval.mul_f64(jitter);
        }
        if self.next_join.is_none()
            && self.live_others().next().is_none()
            && self.has_join_targets()
        {
            // Lost everyone: re-join by itself.
            self.join_backoff = self.cfg.ping_interval;
            self.next_join = Some(now + self.cfg.ping_interval);
        }
    }

    /// Handles one datagram from `from`. Undecodable ones are counted and dropped.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> dml_shared::Result<()> {
        self.traffic.received(bytes.len());
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.traffic.counters.bad_packets += 1;
                return Err(e);
            }
        };
        self.handle_message(from, msg, now);
        Ok(())
    }

    fn handle_message(&mut self, from: SocketAddr, msg: Message, now: Instant) {
        match self.status {
            Status::Idle => {}
            // A joiner already answers pings: members that heard of it
            // before its join reply arrived must not suspect it.
            Status::Joining | Status::Joined => self.handle_joined(from, msg, now),
        }
    }

    fn handle_joined(&mut self, from: SocketAddr, msg: Message, now: Instant) {
        match msg {
            Message::Ping {
                seq,
                target,
                updates,
            } => {
                if target != probe_tag(&self.me) {
                    return; // meant for an earlier identity at this address
                }
                if let Some(stale) = self.tombstone_of(from) {
                    // The sender was declared failed or left: tell it so it
                    // re-joins. Still ack: it may be a newer identity.
                    self.send(
                        from,
                        &Message::Gossip {
                            updates: vec![stale],
                        },
                    );
                }
                let sender = self.heard_from(from, now);
                self.apply_all(&updates, from, now);
                let budget = self.cfg.max_packet_size - HEADER_BUDGET;
                let updates = self.piggyback(budget, sender.as_ref());
                self.send(from, &Message::Ack { seq, updates });
            }
            Message::Ack { seq, updates } => {
                self.apply_all(&updates, from, now);
                if let Some(relay) = self.relays.get(&seq) {
                    if relay.target == from {
                        let relay = self.relays.remove(&seq).expect("present");
                        self.send(
                            relay.requester,
                            &Message::Ack {
                                seq: relay.seq,
                                updates: Vec::new(),
                            },
                        );
                    }
                    return;
                }
                let matches = self
                    .probes
                    .get(&seq)
                    .is_some_and(|p| p.target.addr == from || p.phase == Phase::Indirect);
                if matches {
                    let probe = self.probes.remove(&seq).expect("present");
                    if let Some(m) = self.members.get_mut(&probe.target) {
                        m.last_heard = Some(now);
                    }
                }
            }
            Message::PingReq { seq, target } => {
                let my_seq = self.next_seq();
                self.relays.insert(
                    my_seq,
                    Relay {
                        requester: from,
                        seq,
                        target: target.addr,
                        deadline: now + self.cfg.ping_timeout,
                    },
                );
                let budget = self.cfg.max_packet_size - HEADER_BUDGET;
                let updates = self.piggyback(budget, Some(&target));
                self.send(
                    target.addr,
                    &Message::Ping {
                        seq: my_seq,
                        target: probe_tag(&target),
                        updates,
                    },
                );
            }
            Message::Join { id } => {
                if id.addr == self.me.addr {
                    return;
                }
                self.apply(
                    Update {
                        id,
                        incarnation: 0,
                        kind: UpdateKind::Alive,
                    },
                    from,
                    now,
                );
                if let Some(m) = self.members.get_mut(&id) {
                    m.last_heard = Some(now);
                }
                let members = self.full_state(MAX_SYNC_BYTES);
                self.send(from, &Message::JoinReply { members });
            }
            Message::JoinReply { members } => {
                self.next_join = None;
                if self.status == Status::Joining {
                    self.become_joined();
                    self.announce_self();
                }
                self.apply_all(&members, from, now);
            }
            Message::Sync { members, reply } => {
                self.apply_all(&members, from, now);
                if reply {
                    let members = self.full_state(MAX_SYNC_BYTES);
                    self.send(
                        from,
                        &Message::Sync {
                            members,
                            reply: false,
                        },
                    );
                }
            }
            Message::Gossip { updates } => self.apply_all(&updates, from, now),
        }
    }

    /// Applies the updates of one datagram. A sender whose identity here is a tombstone sees
    /// the group as it was before it was cut off: of its updates only those about this agent
    /// (to refute) and about the sender itself (its refutation, or a newer identity) count.
    /// If the datagram told this agent that it was the one cut off, it drops its own stale
    /// view and takes the sender's.
    fn apply_all(&mut self, updates: &[Update], from: SocketAddr, now: Instant) {
        let stale = self.tombstone_of(from).map(|t| t.id);
        let cut_off_before = self.refreshed;
        for u in updates {
            let counts = match stale {
                None => true,
                Some(old) => u.id == self.me || (u.id.addr == from && u.id.started >= old.started),
            };
            if counts {
                self.apply(*u, from, now);
            }
        }
        if stale.is_some() && self.refreshed != cut_off_before {
            let me = self.me;
            for u in updates.iter().filter(|u| u.id != me) {
                self.apply(*u, from, now);
            }
        }
    }

    /// Merges one update by the SWIM precedence rules (as memberlist has them): left is final
    /// for an identity; a higher incarnation wins, and at equal incarnation failed beats
    /// suspect beats alive. A failed member comes back only through its own alive at a higher
    /// incarnation than the one it was declared failed at (it refuted the failure).
    fn apply(&mut self, u: Update, from: SocketAddr, now: Instant) {
        if u.id == self.me {
            self.apply_about_me(u, from, now);
            return;
        }
        if u.id.addr == self.me.addr {
            // A predecessor at this address that is newer than this process (it ran with the
            // clock ahead, and its data directory is gone): members order one address's
            // identities by start time and would ignore this one, so take one past it.
            if u.id.started > self.me.started && self.status != Status::Idle {
                self.supersede(u.id.started);
            }
            return;
        }
        // Just back from the minority side of a partition, this agent has not heard from the
        // majority yet, and the failures its partition-mates still pass on are the stale view
        // it just dropped: not taken for a suspicion's length.
        if u.kind == UpdateKind::Failed
            && self
                .refreshed
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.suspicion_timeout)
        {
            return;
        }
        if let Some(newest) = self.by_addr.get(&u.id.addr)
            && newest.started > u.id.started
        {
            // Superseded by a restart at that address; if that identity is
            // still live here, it is gone all the same.
            self.mark_down(u.id, MemberState::Failed, now);
            return;
        }
        let Some(m) = self.members.get_mut(&u.id) else {
            self.insert(u, now);
            return;
        };
        if !m.state.is_live() {
            if m.state == MemberState::Failed
                && u.kind == UpdateKind::Alive
                && u.incarnation > m.incarnation
            {
                self.reinstate(u, now);
            }
            return;
        }
        match u.kind {
            UpdateKind::Alive => {
                if u.incarnation > m.incarnation {
                    m.incarnation = u.incarnation;
                    if m.state == MemberState::Suspect {
                        m.state = MemberState::Alive;
                        m.suspicion = None;
                        m.changed = now;
                        self.events.push(Event::Alive(u.id));
                    }
                    self.broadcasts.push(u);
                }
            }
            UpdateKind::Suspect { by } => {
                let fresh = u.incarnation > m.incarnation
                    || (u.incarnation == m.incarnation && m.state == MemberState::Alive);
                if fresh {
                    m.incarnation = u.incarnation;
                    m.state = MemberState::Suspect;
                    m.changed = now;
                    m.suspicion = Some(Suspicion {
                        started: now,
                        confirmers: BTreeSet::from([by]),
                        deadline: now,
                    });
                    self.events.push(Event::Suspect(u.id));
                    self.rearm_suspicion(&u.id);
                    self.broadcasts.push(u);
                } else if u.incarnation == m.incarnation
                    && let Some(s) = m.suspicion.as_mut()
                    && s.confirmers.insert(by)
                {
                    self.rearm_suspicion(&u.id);
                    self.broadcasts.push(u);
                }
            }
            // A claim older than the member's refutation of it is stale.
            UpdateKind::Failed if u.incarnation < m.incarnation => {}
            UpdateKind::Failed => {
                m.incarnation = u.incarnation;
                self.mark_down(u.id, MemberState::Failed, now);
            }
            UpdateKind::Left => self.mark_down(u.id, MemberState::Left, now),
        }
    }

    /// A member held as failed refuted it (alive at a higher incarnation): alive again, same
    /// identity.
    fn reinstate(&mut self, u: Update, now: Instant) {
        let Some(m) = self.members.get_mut(&u.id) else {
            return;
        };
        m.incarnation = u.incarnation;
        m.state = MemberState::Alive;
        m.changed = now;
        m.suspicion = None;
        self.traffic.counters.reinstated += 1;
        self.events.push(Event::Reinstated(u.id));
        self.remember_seeds([u.id.addr]);
        self.broadcasts.push(u);
        self.rebuild_ring();
    }

    fn apply_about_me(&mut self, u: Update, from: SocketAddr, now: Instant) {
        match u.kind {
            UpdateKind::Alive | UpdateKind::Left => {}
            UpdateKind::Suspect { .. } => {
                if u.incarnation >= self.incarnation {
                    self.refute(u.incarnation, from);
                }
            }
            // Declared failed while alive: refuted like a suspicion, keeping this identity
            // (memberlist's refutation of a dead claim), so a healed partition's majority
            // keeps its identities and the minority is reinstated as it was.
            UpdateKind::Failed => {
                let news = self.failure_heard.is_none_or(|i| u.incarnation > i);
                if news {
                    self.failure_heard = Some(u.incarnation);
                    self.traffic.counters.false_failures += 1;
                    self.events.push(Event::Refuted(self.me));
                }
                // Holding most of the group as failed, this agent was the one cut off (a
                // healed partition's minority): the failures it declared are stale.
                let cut_off = news && !self.in_majority();
                if u.incarnation >= self.incarnation {
                    self.refute(u.incarnation, from);
                } else {
                    // Already refuted (e.g. the suspicion before it): the claimant has not
                    // heard yet. Tell it, at no new incarnation.
                    let alive = self.alive_update();
                    self.send(
                        from,
                        &Message::Gossip {
                            updates: vec![alive],
                        },
                    );
                }
                if cut_off {
                    self.forget_failures(now);
                    self.resync(from);
                }
            }
        }
    }

    /// Drops the failures this agent declared or heard of: they were judged from the view of
    /// a partition's minority. For a suspicion's length, failure claims about others are not
    /// taken either: they come from its partition-mates' stale view and, passed on under this
    /// live identity, would make the majority refute them.
    fn forget_failures(&mut self, now: Instant) {
        self.refreshed = Some(now);
        self.members.retain(|_, m| m.state != MemberState::Failed);
        let (members, addr) = (&self.members, self.me.addr);
        self.by_addr
            .retain(|_, id| members.contains_key(id) || id.addr == addr);
        self.broadcasts.retain(|u| u.kind != UpdateKind::Failed);
        self.probes.clear();
        self.rebuild_ring();
    }

    /// Full-state exchange with `from`, a few known members and the introducers, so that an
    /// agent that just learned it was cut off relearns the group (and the group its refutation).
    fn resync(&mut self, from: SocketAddr) {
        let mut to: Vec<SocketAddr> = self.live_others().map(|m| m.id.addr).collect();
        to.extend(self.seeds.iter().copied());
        to.sort();
        to.dedup();
        to.shuffle(&mut self.rng);
        to.truncate(REJOIN_FANOUT);
        to.push(from);
        to.extend(self.introducers.iter().copied());
        to.sort();
        to.dedup();
        to.retain(|a| *a != self.me.addr);
        let bytes = Message::Sync {
            members: self.full_state(MAX_SYNC_BYTES),
            reply: true,
        }
        .encode();
        for a in to {
            self.send_bytes(a, bytes.clone());
        }
    }

    fn alive_update(&self) -> Update {
        Update {
            id: self.me,
            incarnation: self.incarnation,
            kind: UpdateKind::Alive,
        }
    }

    /// Answers a claim about this agent at incarnation `claimed` with alive at a higher one,
    /// sent to the claimant and this agent's monitors at once and queued for piggybacking.
    fn refute(&mut self, claimed: u32, from: SocketAddr) {
        self.incarnation = claimed + 1;
        self.traffic.counters.refuted += 1;
        let alive = Update {
            id: self.me,
            incarnation: self.incarnation,
            kind: UpdateKind::Alive,
        };
        self.broadcasts.push(alive);
        let mut to = self.ring.monitors(&self.me, self.cfg.m);
        to.retain(|m| m.addr != from);
        let bytes = Message::Gossip {
            updates: vec![alive],
        }
        .encode();
        self.send_bytes(from, bytes.clone());
        for m in to {
            self.send_bytes(m.addr, bytes.clone());
        }
    }

    /// Whether more of the members this agent knows (itself included) are live than failed.
    fn in_majority(&self) -> bool {
        let failed = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Failed)
            .count();
        self.live_others().count() + 1 > failed
    }

    /// Adds a member heard of for the first time.
    fn insert(&mut self, u: Update, now: Instant) {
        let state = match u.kind {
            UpdateKind::Alive => MemberState::Alive,
            UpdateKind::Suspect { .. } => MemberState::Suspect,
            UpdateKind::Failed => MemberState::Failed,
            UpdateKind::Left => MemberState::Left,
        };
        // A newer identity at a known address replaces the old one: it
        // restarted. Even when the newer one is first heard of as failed or
        // left, the older one is gone.
        if let Some(old) = self.by_addr.insert(u.id.addr, u.id)
            && old != u.id
        {
            self.mark_down(old, MemberState::Failed, now);
        }
        let suspicion = match u.kind {
            UpdateKind::Suspect { by } => Some(Suspicion {
                started: now,
                confirmers: BTreeSet::from([by]),
                deadline: now,
            }),
            _ => None,
        };
        self.members.insert(
            u.id,
            Member {
                id: u.id,
                incarnation: u.incarnation,
                state,
                changed: now,
                last_heard: None,
                suspicion,
            },
        );
        if state.is_live() {
            self.remember_seeds([u.id.addr]);
            self.events.push(Event::Joined(u.id));
            if state == MemberState::Suspect {
                self.events.push(Event::Suspect(u.id));
            }
            self.rebuild_ring();
            if state == MemberState::Suspect {
                self.rearm_suspicion(&u.id);
            }
        }
        self.broadcasts.push(u);
    }

    fn mark_down(&mut self, id: NodeId, state: MemberState, now: Instant) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if !m.state.is_live() {
            return;
        }
        m.state = state;
        m.changed = now;
        m.suspicion = None;
        let update = m.update();
        self.probes.retain(|_, p| p.target != id);
        self.broadcasts.push(update);
        if state == MemberState::Failed {
            self.traffic.counters.declared_failed += 1;
            self.events.push(Event::Failed(id));
        } else {
            self.events.push(Event::Left(id));
        }
        self.rebuild_ring();
    }

    fn rearm_suspicion(&mut self, id: &NodeId) {
        let expected = self.ring.monitors(id, self.cfg.m).len().saturating_sub(1);
        let (min, max) = (self.cfg.suspicion_min, self.cfg.suspicion_timeout);
        if let Some(s) = self.members.get_mut(id).and_then(|m| m.suspicion.as_mut()) {
            let confirmations = s.confirmers.len().saturating_sub(1);
            s.deadline = s.started + suspicion::timeout(min, max, confirmations, expected);
        }
    }

    /// Raises a suspicion about a member that missed its probes, and tells the
    /// suspect (so it can refute) and its other monitors (so they can confirm).
    /// A member already suspected by others gets this agent's confirmation,
    /// which shortens the suspicion (Lifeguard).
    fn suspect(&mut self, id: NodeId, now: Instant) {
        let me = tag(&self.me);
        let Some(m) = self.members.get(&id) else {
            return;
        };
        let already = match (&m.state, &m.suspicion) {
            (MemberState::Alive, _) => false,
            (MemberState::Suspect, Some(s)) if !s.confirmers.contains(&me) => true,
            _ => return,
        };
        let u = Update {
            id,
            incarnation: m.incarnation,
            kind: UpdateKind::Suspect { by: me },
        };
        if !already {
            self.traffic.counters.suspicions += 1;
        }
        self.apply(u, self.me.addr, now);
        let bytes = Message::Gossip { updates: vec![u] }.encode();
        let mut to = self.ring.monitors(&id, self.cfg.m);
        to.retain(|n| *n != self.me);
        to.push(id);
        for n in to {
            self.send_bytes(n.addr, bytes.clone());
        }
    }

    fn expire_suspicions(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.suspicion.as_ref().is_some_and(|s| s.deadline <= now))
            .map(|m| m.id)
            .collect();
        for id in due {
            self.mark_down(id, MemberState::Failed, now);
            // Failures are told to everyone at once, not left to gossip alone.
            let update = self.members[&id].update();
            let bytes = Message::Gossip {
                updates: vec![update],
            }
            .encode();
            let to: Vec<SocketAddr> = self.live_others().map(|m| m.id.addr).collect();
            for addr in to {
                self.send_bytes(addr, bytes.clone());
            }
        }
    }

    fn expire_probes(&mut self, now: Instant) {
        let due: Vec<u16> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let probe = self.probes.get_mut(&seq).expect("listed above");
            match probe.phase {
                Phase::Direct => {
                    probe.phase = Phase::Indirect;
                    probe.deadline = now + self.cfg.ping_timeout;
                    let target = probe.target;
                    let mut helpers: Vec<NodeId> = self
                        .live_others()
                        .filter(|m| m.id != target && m.state == MemberState::Alive)
                        .map(|m| m.id)
                        .collect();
                    helpers.sort();
                    let helpers: Vec<NodeId> = helpers
                        .choose_multiple(&mut self.rng, self.cfg.indirect_checks)
                        .copied()
                        .collect();
                    let bytes = Message::PingReq { seq, target }.encode();
                    for h in helpers {
                        self.send_bytes(h.addr, bytes.clone());
                    }
                }
                Phase::Indirect => {
                    let target = probe.target;
                    self.probes.remove(&seq);
                    self.suspect(target, now);
                }
            }
        }
    }

    fn probe_round(&mut self, now: Instant) {
        let targets = self.ring.successors(&self.me, self.cfg.m);
        for target in targets {
            if self.probes.values().any(|p| p.target == target) {
                continue;
            }
            let seq = self.next_seq();
            self.probes.insert(
                seq,
                Probe {
                    target,
                    phase: Phase::Direct,
                    deadline: now + self.cfg.ping_timeout,
                },
            );
            let budget = self.cfg.max_packet_size - HEADER_BUDGET;
            let updates = self.piggyback(budget, Some(&target));
            self.traffic.counters.probes_sent += 1;
            self.send(
                target.addr,
                &Message::Ping {
                    seq,
                    target: probe_tag(&target),
                    updates,
                },
            );
        }
    }

    /// Sends pending updates to `gossip_fanout` random live members, if there
    /// are any. Probes only reach ring neighbours, so piggybacking alone would
    /// spread an update linearly around the ring (memberlist's `GossipNodes`
    /// plays the same role).
    fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        let live: Vec<NodeId> = self.live_others().map(|m| m.id).collect();
        let to: Vec<NodeId> = live
            .choose_multiple(&mut self.rng, self.cfg.gossip_fanout)
            .copied()
            .collect();
        let budget = self.cfg.max_packet_size - HEADER_BUDGET;
        for target in to {
            let updates = self.piggyback(budget, Some(&target));
            if updates.is_empty() {
                break;
            }
            self.send(target.addr, &Message::Gossip { updates });
        }
    }

    /// Full-state exchange with one random live member, and with one recently
    /// failed member so that the two sides of a healed partition find each other.
    fn push_pull(&mut self) {
        let live: Vec<SocketAddr> = self.live_others().map(|m| m.id.addr).collect();
        let mut failed: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Failed)
            .map(|m| m.id.addr)
            .filter(|a| !live.contains(a))
            .collect();
        failed.sort();
        failed.dedup();
        let mut to = Vec::new();
        if let Some(a) = live.choose(&mut self.rng) {
            to.push(*a);
        }
        if let Some(a) = failed.choose(&mut self.rng) {
            to.push(*a);
        }
        if to.is_empty() {
            return;
        }
        let members = self.full_state(MAX_SYNC_BYTES);
        let bytes = Message::Sync {
            members,
            reply: true,
        }
        .encode();
        for a in to {
            self.send_bytes(a, bytes.clone());
        }
    }

    fn collect_tombstones(&mut self, now: Instant) {
        let keep = self.cfg.dead_retention;
        self.members
            .retain(|_, m| m.state.is_live() || now.duration_since(m.changed) < keep);
        let members = &self.members;
        let me = self.me;
        self.by_addr
            .retain(|_, id| members.contains_key(id) || *id == me);
    }

    fn send_joins(&mut self, now: Instant) {
        if self.status == Status::Joined && self.live_others().next().is_some() {
            // Someone else brought us back into the group meanwhile.
            self.next_join = None;
            return;
        }
        let mut to: Vec<SocketAddr> = self.introducers.clone();
        let mut seeds = self.seeds.clone();
        seeds.shuffle(&mut self.rng);
        to.extend(seeds.into_iter().take(REJOIN_FANOUT));
        to.sort();
        to.dedup();
        to.retain(|a| *a != self.me.addr);
        if to.is_empty() {
            self.next_join = None;
            if self.status == Status::Joining {
                self.become_joined();
            }
            return;
        }
        let bytes = Message::Join { id: self.me }.encode();
        for a in to {
            self.send_bytes(a, bytes.clone());
        }
        self.next_join = Some(now + self.join_backoff);
        self.join_backoff = (self.join_backoff * 2).min(self.cfg.join_backoff_max);
    }

    fn become_joined(&mut self) {
        self.status = Status::Joined;
        self.ever_joined = true;
        self.events.push(Event::Joined(self.me));
    }

    /// After this agent itself was stalled (SIGSTOP, a swapped-out VM) for
    /// more than two intervals, its pending probes timed out through no fault
    /// of their targets: drop them and restart running suspicions from now.
    fn check_stall(&mut self, now: Instant) {
        let last = self.last_tick.replace(now);
        let Some(last) = last else { return };
        if now.saturating_duration_since(last) <= self.cfg.ping_interval * 2 {
            return;
        }
        self.stalls += 1;
        self.probes.clear();
        self.relays.clear();
        let ids: Vec<NodeId> = self
            .members
            .values_mut()
            .filter_map(|m| {
                let s = m.suspicion.as_mut()?;
                s.started = now;
                Some(m.id)
            })
            .collect();
        for id in ids {
            self.rearm_suspicion(&id);
        }
        self.next_round = now;
    }

    /// Times this agent found itself stalled for more than two intervals.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    fn has_join_targets(&self) -> bool {
        self.introducers
            .iter()
            .chain(&self.seeds)
            .any(|a| *a != self.me.addr)
    }

    /// A new identity at the same address (a re-join after a leave): a later start time and
    /// incarnation 0.
    fn fresh_identity(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.created).as_millis() as u64;
        let started = (self.first_started + elapsed).max(self.me.started + 1);
        self.me = NodeId::new(self.me.addr, started);
        self.incarnation = 0;
        self.failure_heard = None;
        self.probes.clear();
    }

    /// Takes the identity just after `predecessor`'s start time and announces it.
    fn supersede(&mut self, predecessor: u64) {
        self.me = NodeId::new(self.me.addr, predecessor + 1);
        self.incarnation = 0;
        self.failure_heard = None;
        self.probes.clear();
        self.events.push(Event::Joined(self.me));
        self.announce_self();
    }

    fn announce_self(&mut self) {
        self.broadcasts.push(self.alive_update());
    }

    /// Marks the member at `from` as heard, if it is the live one there.
    fn heard_from(&mut self, from: SocketAddr, now: Instant) -> Option<NodeId> {
        let id = *self.by_addr.get(&from)?;
        let m = self.members.get_mut(&id)?;
        if !m.state.is_live() {
            return None;
        }
        m.last_heard = Some(now);
        Some(id)
    }

    /// The update to send back to a sender whose newest identity here is a
    /// tombstone: it was declared failed (or left) and must re-join. A sender
    /// that is a newer identity ignores it, since it is about an older one.
    fn tombstone_of(&self, from: SocketAddr) -> Option<Update> {
        let id = self.by_addr.get(&from)?;
        let m = self.members.get(id)?;
        (!m.state.is_live()).then(|| m.update())
    }

    fn live_others(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.state.is_live())
    }

    fn full_state(&self, max_bytes: usize) -> Vec<Update> {
        let mut out = vec![Update {
            id: self.me,
            incarnation: self.incarnation,
            kind: UpdateKind::Alive,
        }];
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| (!m.state.is_live(), m.id));
        let mut used = HEADER_BUDGET;
        for m in members {
            let u = m.update();
            used += super::msg::update_len(&u);
            if used > max_bytes {
                break;
            }
            out.push(u);
        }
        out
    }

    fn piggyback(&mut self, budget: usize, first: Option<&NodeId>) -> Vec<Update> {
        let n = self.ring.len() + 1;
        let limit = self.cfg.retransmit_mult * (usize::BITS - n.leading_zeros()) as usize;
        self.broadcasts.take(budget, limit.max(1), first)
    }

    fn remember_seeds(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for a in addrs {
            if a == self.me.addr || self.seeds.contains(&a) {
                continue;
            }
            if self.seeds.len() == MAX_SEEDS {
                self.seeds.remove(0);
            }
            self.seeds.push(a);
        }
    }

    fn rebuild_ring(&mut self) {
        self.ring = Ring::new(self.live_members());
    }

    fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, to: SocketAddr, msg: &Message) {
        self.send_bytes(to, msg.encode());
    }

    fn send_bytes(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.traffic.sent(bytes.len());
        self.outbox.push((to, bytes));
    }
}

#[cfg(test)]
mod tests;
