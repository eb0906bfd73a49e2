//! The balance planner (sans-IO): which copies to move so that every
//! committed version sits where the alive agents' rendezvous placement puts
//! it (`placement.rs`), so an agent that joined after the data, or a disk
//! filled by a batch's chain, gets its share.
//!
//! [`plan`] is a pure function of the metadata and the alive agents. A
//! version moves only when every holder is alive and it has its full count
//! of copies: otherwise it is repair's (`repair.rs`), which always goes
//! first. A move copies the version to its new holder first (repair's
//! `Data(Replicate)`), then one entry swaps the holders
//! (`SetReplicas { add: [to], drop: [from] }`), then the old holder drops its
//! copy (`Data(Drop)`): the committed copies never fall below the count the
//! version had, so never below its write quorum.
//!
//! [`Balancer`] runs a plan for the leader task: at most one move per file
//! at a time, only while repair has nothing waiting, within repair's
//! per-source and per-target bounds (it takes its slots from [`Repairs`]).

use super::placement;
use super::repair::{Copy, Repairs};
use super::state::MetaState;
use dml_shared::sdfs::{BalanceFlow, BalancePlan, BalanceShare, Checksum};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

/// Backlog entries one [`Balancer::next`] looks at past those it cannot
/// start yet, so a long backlog costs little per finished copy.
const LOOK_AHEAD: usize = 4096;

/// Move one copy of a version from one agent to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl Move {
    /// The copy that runs it: read from `from` first (it is leaving), the
    /// other holders next; recorded with `from` dropped.
    pub fn copy(&self, holders: &[SocketAddr]) -> Copy {
        let mut sources = vec![self.from];
        sources.extend(holders.iter().copied().filter(|h| *h != self.from));
        Copy {
            name: self.name.clone(),
            version: self.version,
            size: self.size,
            checksum: self.checksum,
            sources,
            target: self.to,
            dead: vec![self.from],
        }
    }
}

/// A plan: the moves, and the versions left to repair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    pub moves: Vec<Move>,
    /// Versions with a holder not alive or copies missing.
    pub waiting_for_repair: u64,
}

/// Whether `holders` may move: all alive, at least `replicas` of them.
fn movable(holders: &[SocketAddr], alive: &[SocketAddr], replicas: usize) -> bool {
    holders.len() >= replicas && holders.iter().all(|h| alive.contains(h))
}

/// The moves that put every committed version on `place(name, alive,
/// replicas)`. A holder outside the placement hands its copy to a placed
/// agent that lacks one (first holder to first missing, in rank order);
/// versions that repair must see to first are counted, not moved.
pub fn plan(state: &MetaState, alive: &[SocketAddr], replicas: usize) -> Planned {
    let mut out = Planned::default();
    if alive.len() < replicas {
        return out;
    }
    let placer = placement::Placer::new(alive);
    for (name, version, meta) in state.committed_versions() {
        if !movable(&meta.replicas, alive, replicas) {
            out.waiting_for_repair += 1;
            continue;
        }
        let want = placer.place(name, replicas);
        let surplus = meta.replicas.iter().filter(|h| !want.contains(h));
        let missing = want.iter().filter(|a| !meta.replicas.contains(a));
        for (from, to) in surplus.zip(missing) {
            out.moves.push(Move {
                name: name.to_string(),
                version,
                size: meta.size,
                checksum: meta.checksum,
                from: *from,
                to: *to,
            });
        }
    }
    out
}

/// Each agent's committed bytes: `alive` ones (0 if they hold nothing)
/// and any other holder.
pub fn bytes_per_agent(state: &MetaState, alive: &[SocketAddr]) -> BTreeMap<SocketAddr, u64> {
    let mut per: BTreeMap<SocketAddr, u64> = alive.iter().map(|a| (*a, 0)).collect();
    for (_, _, meta) in state.committed_versions() {
        for h in &meta.replicas {
            *per.entry(*h).or_default() += meta.size;
        }
    }
    per
}

/// How far the alive agents' bytes are from an even spread: the largest
/// `|bytes / mean - 1|` over them (0 when nothing is stored).
pub fn spread(per: &BTreeMap<SocketAddr, u64>, alive: &[SocketAddr]) -> f64 {
    let bytes: Vec<u64> = alive
        .iter()
        .map(|a| per.get(a).copied().unwrap_or(0))
        .collect();
    let total: u64 = bytes.iter().sum();
    if total == 0 || bytes.is_empty() {
        return 0.0;
    }
    let mean = total as f64 / bytes.len() as f64;
    bytes
        .iter()
        .map(|b| (*b as f64 / mean - 1.0).abs())
        .fold(0.0, f64::max)
}

/// What `dml sdfs balance` shows of `planned`: totals, flows between
/// agents, and each alive agent's bytes now and after.
pub fn describe(state: &MetaState, alive: &[SocketAddr], planned: &Planned) -> BalancePlan {
    let now = bytes_per_agent(state, alive);
    let mut after = now.clone();
    let mut flows: HashMap<(SocketAddr, SocketAddr), (u64, u64)> = HashMap::new();
    for m in &planned.moves {
        let f = flows.entry((m.from, m.to)).or_default();
        f.0 += 1;
        f.1 += m.size;
        if let Some(b) = after.get_mut(&m.from) {
            *b = b.saturating_sub(m.size);
        }
        *after.entry(m.to).or_default() += m.size;
    }
    let mut flows: Vec<BalanceFlow> = flows
        .into_iter()
        .map(|((from, to), (moves, bytes))| BalanceFlow {
            from,
            to,
            moves,
            bytes,
        })
        .collect();
    flows.sort_by_key(|f| (std::cmp::Reverse(f.bytes), f.from, f.to));
    BalancePlan {
        moves: planned.moves.len() as u64,
        bytes: planned.moves.iter().map(|m| m.size).sum(),
        flows,
        agents: now
            .iter()
            .map(|(a, b)| BalanceShare {
                agent: *a,
                now: *b,
                after: after.get(a).copied().unwrap_or(0),
            })
            .collect(),
        started: false,
        waiting_for_repair: planned.waiting_for_repair,
    }
}

pub use dml_shared::telemetry::BalanceProgress;

/// Runs plans for one leader term.
#[derive(Debug)]
pub struct Balancer {
    replicas: usize,
    /// `sdfs.balance_threshold`: the spread past which a plan is made;
    /// `None`: plans only on request (`sdfs.auto_balance = false`).
    threshold: Option<f64>,
    backlog: VecDeque<Move>,
    /// Moves running, by file name (one per file at a time).
    running: HashMap<String, Move>,
    /// Targets whose copy failed since the last plan.
    failed: HashSet<SocketAddr>,
    alive: Vec<SocketAddr>,
    /// The alive agents the last plan was made for (`None`: none yet).
    planned_for: Option<Vec<SocketAddr>>,
    /// (versions, bytes) committed when the last plan was made: the
    /// spread is looked at again only once they change.
    planned_at: (u64, u64),
    /// The last plan found nothing to move.
    balanced: bool,
    /// Plans started this term: an [`Ask`] answered after another plan
    /// started is stale.
    plans: u64,
    progress: BalanceProgress,
}

/// What [`Balancer::view`] decides from, for a scan off the leader task.
#[derive(Clone, Debug)]
pub struct Ask {
    threshold: f64,
    replicas: usize,
    alive: Vec<SocketAddr>,
    /// The alive agents differ from the last plan's.
    changed: bool,
    /// No move waiting or running.
    idle: bool,
    balanced: bool,
    planned_at: (u64, u64),
    plans: u64,
}

/// What an [`Ask`] decided.
#[derive(Debug)]
enum Decided {
    /// Nothing to do.
    Keep,
    /// Still within the threshold at these totals.
    Even((u64, u64)),
    /// Start this plan, made at these totals.
    Plan((u64, u64), Planned),
}

/// An [`Ask`]'s answer, for [`Balancer::take`].
#[derive(Debug)]
pub struct Found {
    plans: u64,
    what: Decided,
}

impl Ask {
    /// Scans `state` as the decision needs (totals, the spread, the plan);
    /// `repair_waiting`: the repair scan with it found versions short of copies.
    pub fn run(&self, state: &MetaState, repair_waiting: bool) -> Found {
        let what = self.decide(state, repair_waiting);
        Found {
            plans: self.plans,
            what,
        }
    }

    fn decide(&self, state: &MetaState, repair_waiting: bool) -> Decided {
        let alive = &self.alive[..];
        if !self.changed && (!self.idle || repair_waiting) {
            return Decided::Keep;
        }
        let at = totals(state);
        if !self.changed && self.balanced {
            if at == self.planned_at {
                return Decided::Keep;
            }
            if spread(&bytes_per_agent(state, alive), alive) <= self.threshold {
                return Decided::Even(at);
            }
        }
        Decided::Plan(at, plan(state, alive, self.replicas))
    }
}

impl Balancer {
    pub fn new(replicas: usize, threshold: Option<f64>) -> Self {
        Self {
            replicas,
            threshold,
            backlog: VecDeque::new(),
            running: HashMap::new(),
            failed: HashSet::new(),
            alive: Vec::new(),
            planned_for: None,
            planned_at: (0, 0),
            balanced: false,
            plans: 0,
            progress: BalanceProgress::default(),
        }
    }

    /// A fresh membership view: plans again when the alive agents changed
    /// (a join, a departure, or this term just began); once the last plan
    /// is done, again until one finds nothing to move (a move failed, or
    /// repair put copies off their placement); and once balanced, when the
    /// data changed and the spread is past the threshold. A plan made while
    /// repair had versions waiting left them out, so it is made again once
    /// repair is done (`repair_waiting`: the last repair scan found some).
    /// ([`Balancer::ask`], [`Ask::run`] and [`Balancer::take`] in one go.)
    pub fn view(&mut self, state: &MetaState, alive: &[SocketAddr], repair_waiting: bool) {
        let ask = self.ask(alive);
        let found = ask.as_ref().map(|a| a.run(state, repair_waiting));
        self.take(alive, found);
    }

    /// What a scan of every version must find out for [`Balancer::view`]'s
    /// decision; `None` when balance plans only on request.
    pub fn ask(&self, alive: &[SocketAddr]) -> Option<Ask> {
        Some(Ask {
            threshold: self.threshold?,
            replicas: self.replicas,
            alive: alive.to_vec(),
            changed: self.planned_for.as_deref() != Some(alive),
            idle: self.backlog.is_empty() && self.running.is_empty(),
            balanced: self.balanced,
            planned_at: self.planned_at,
            plans: self.plans,
        })
    }

    /// An [`Ask`]'s answer ([`Ask::run`], off the leader task) for `alive`.
    /// Dropped if a plan was started since it was asked (`dml sdfs balance`).
    pub fn take(&mut self, alive: &[SocketAddr], found: Option<Found>) {
        self.alive = alive.to_vec();
        let Some(found) = found else {
            return;
        };
        if found.plans != self.plans {
            return;
        }
        match found.what {
            Decided::Keep => {}
            Decided::Even(at) => self.planned_at = at,
            Decided::Plan(at, planned) => self.start(alive, at, planned),
        }
    }

    /// `dml sdfs balance`: the plan for `alive` now; started unless `dry_run`.
    pub fn request(
        &mut self,
        state: &MetaState,
        alive: &[SocketAddr],
        dry_run: bool,
    ) -> BalancePlan {
        let planned = plan(state, alive, self.replicas);
        let mut shown = describe(state, alive, &planned);
        if !dry_run {
            self.alive = alive.to_vec();
            self.start(alive, totals(state), planned);
            shown.started = true;
        }
        shown
    }

    fn start(&mut self, alive: &[SocketAddr], at: (u64, u64), planned: Planned) {
        let moves = planned.moves;
        if !moves.is_empty() {
            tracing::info!(
                moves = moves.len(),
                bytes = moves.iter().map(|m| m.size).sum::<u64>(),
                "balance: planned"
            );
        }
        self.planned_for = Some(alive.to_vec());
        self.planned_at = at;
        self.plans += 1;
        self.balanced = moves.is_empty() && planned.waiting_for_repair == 0;
        self.failed.clear();
        self.backlog = moves.into();
        self.recount();
    }

    fn recount(&mut self) {
        let all = self.backlog.iter().chain(self.running.values());
        let (n, b) = all.fold((0, 0), |(n, b), m| (n + 1, b + m.size));
        self.progress.pending_moves = n;
        self.progress.pending_bytes = b;
        self.progress.in_flight = self.running.len() as u64;
    }

    /// Starts the moves there is room for, unless repair has versions
    /// waiting: each takes a source and a target slot from `repairs`. A
    /// move the state no longer calls for is dropped.
    pub fn next(&mut self, state: &MetaState, repairs: &mut Repairs) -> Vec<Copy> {
        let mut out = Vec::new();
        if repairs.waiting() {
            return out;
        }
        let mut keep = VecDeque::new();
        let mut skipped = 0;
        while let Some(m) = self.backlog.pop_front() {
            if skipped >= LOOK_AHEAD {
                keep.push_back(m);
                break;
            }
            let Some(meta) = state
                .version(&m.name, m.version)
                .filter(|v| v.is_committed())
            else {
                continue;
            };
            let holders = &meta.replicas;
            if !holders.contains(&m.from) || holders.contains(&m.to) {
                continue; // moved, repaired or trimmed since the plan
            }
            if self.failed.contains(&m.to) || !self.alive.contains(&m.to) {
                continue;
            }
            if !movable(holders, &self.alive, self.replicas)
                || self.running.contains_key(&m.name)
                || !repairs.reserve(m.from, m.to)
            {
                keep.push_back(m);
                skipped += 1;
                continue;
            }
            out.push(m.copy(holders));
            self.running.insert(m.name.clone(), m);
        }
        keep.append(&mut self.backlog);
        self.backlog = keep;
        self.recount();
        out
    }

    /// Whether the copy of `name` v`version` to `to` is a balance move;
    /// then the agent whose copy it replaces.
    pub fn source_of(&self, name: &str, version: u64, to: SocketAddr) -> Option<SocketAddr> {
        self.running
            .get(name)
            .filter(|m| m.version == version && m.to == to)
            .map(|m| m.from)
    }

    /// A move's copy ended: recorded (`ok`) or failed. `false` if it was
    /// not a balance move.
    pub fn done(
        &mut self,
        name: &str,
        version: u64,
        to: SocketAddr,
        ok: bool,
        repairs: &mut Repairs,
    ) -> bool {
        if self.source_of(name, version, to).is_none() {
            return false;
        }
        let Some(m) = self.running.remove(name) else {
            return false;
        };
        repairs.release(m.from, m.to);
        if ok {
            self.progress.moved += 1;
            self.progress.moved_bytes += m.size;
        } else {
            self.failed.insert(m.to);
        }
        self.recount();
        true
    }

    pub fn progress(&self) -> BalanceProgress {
        self.progress
    }
}

/// (committed versions, their bytes).
fn totals(state: &MetaState) -> (u64, u64) {
    state
        .committed_versions()
        .fold((0, 0), |(n, b), (_, _, m)| (n + 1, b + m.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::repair::tests::{WIDE, addr, addrs};
    use crate::control::repair::{Bounds, View};
    use crate::control::types::{Applied, Command, Op};

    /// `n` files of `size` bytes placed over `agents`, as puts place them.
    fn placed(n: usize, size: u64, agents: &[SocketAddr]) -> MetaState {
        let mut s = MetaState::default();
        for i in 0..n {
            let name = format!("f{i}");
            let holders = placement::place(&name, agents, 4);
            put(&mut s, &name, size, holders);
        }
        s
    }

    fn put(s: &mut MetaState, name: &str, size: u64, holders: Vec<SocketAddr>) {
        let op = Op::PutAt {
            name: name.into(),
            version: s.next_version(name),
            size,
            checksum: [1; 32],
            holders,
            quorum: 1,
        };
        assert!(matches!(
            s.apply(&Command { now_ms: 1, op }),
            Applied::Version(_)
        ));
    }

    /// Applies what the leader appends once a move's copy stored.
    fn record(s: &mut MetaState, c: &Copy) {
        let op = Op::SetReplicas {
            name: c.name.clone(),
            version: c.version,
            add: vec![c.target],
            drop: c.dead.clone(),
        };
        assert_eq!(s.apply(&Command { now_ms: 2, op }), Applied::Done);
    }

    #[test]
    fn data_at_its_placement_needs_no_move() {
        let agents = addrs(1..=7);
        let s = placed(100, 10, &agents);
        assert_eq!(plan(&s, &agents, 4), Planned::default());
    }

    #[test]
    fn agents_that_join_receive_moves_toward_an_even_spread() {
        let old = addrs(1..=7);
        let all = addrs(1..=10);
        let mut s = placed(1000, 10, &old);
        let before = bytes_per_agent(&s, &all);
        assert!(spread(&before, &all) >= 1.0, "the newcomers hold nothing");
        let planned = plan(&s, &all, 4);
        assert!(!planned.moves.is_empty());
        for m in &planned.moves {
            assert!(old.contains(&m.from), "{m:?}");
            assert!(addrs(8..=10).contains(&m.to), "{m:?}: only newcomers gain");
        }
        // About 3/10 of the copies move.
        let n = planned.moves.len();
        assert!((900..=1500).contains(&n), "{n} moves");
        let shown = describe(&s, &all, &planned);
        assert_eq!(shown.moves, n as u64);
        assert_eq!(shown.bytes, 10 * n as u64);
        for m in &planned.moves {
            let holders = s.version(&m.name, m.version).unwrap().replicas.clone();
            record(&mut s, &m.copy(&holders));
        }
        let after = bytes_per_agent(&s, &all);
        assert!(spread(&after, &all) < 0.2, "{after:?}");
        for a in &shown.agents {
            assert_eq!(a.after, after[&a.agent], "describe foresees the result");
        }
        assert!(plan(&s, &all, 4).moves.is_empty(), "nothing left after");
    }

    #[test]
    fn a_batch_on_one_chain_spreads_to_each_files_placement() {
        let agents = addrs(1..=8);
        let mut s = MetaState::default();
        let chain = addrs(1..=4);
        for i in 0..200 {
            put(&mut s, &format!("b{i}"), 10, chain.clone());
        }
        let planned = plan(&s, &agents, 4);
        assert!(planned.moves.iter().all(|m| chain.contains(&m.from)));
        assert!(planned.moves.len() > 300, "{}", planned.moves.len());
    }

    #[test]
    fn versions_short_of_copies_or_with_a_holder_down_are_left_to_repair() {
        let agents = addrs(1..=6);
        let mut s = MetaState::default();
        // Off placement on purpose, but short of a copy.
        put(&mut s, "short", 10, addrs([1, 2, 3]));
        // Off placement, one holder not alive.
        put(&mut s, "down", 10, addrs([1, 2, 3, 9]));
        let planned = plan(&s, &agents, 4);
        assert!(planned.moves.is_empty(), "{planned:?}");
        assert_eq!(planned.waiting_for_repair, 2);
    }

    #[test]
    fn no_move_takes_a_version_below_its_copies() {
        // Every step of every move keeps the full count: the copy is
        // recorded in the same entry that drops the old holder.
        let old = addrs(1..=5);
        let all = addrs(1..=8);
        let mut s = placed(300, 7, &old);
        let mut repairs = Repairs::new(4, WIDE);
        repairs.rescan(
            &s,
            View {
                live: &all,
                alive: &all,
            },
        );
        let mut b = Balancer::new(4, Some(0.1));
        b.view(&s, &all, false);
        let mut rounds = 0;
        loop {
            let copies = b.next(&s, &mut repairs);
            if copies.is_empty() {
                break;
            }
            let mut names = HashSet::new();
            for c in &copies {
                assert!(names.insert(c.name.clone()), "one move per file at a time");
                assert_eq!(c.dead.len(), 1);
                assert_eq!(
                    c.sources[0], c.dead[0],
                    "read from the leaving holder first"
                );
                record(&mut s, c);
                let n = s.version(&c.name, c.version).unwrap().replicas.len();
                assert_eq!(n, 4, "{c:?}");
                assert!(b.done(&c.name, c.version, c.target, true, &mut repairs));
            }
            rounds += 1;
            assert!(rounds < 100);
        }
        assert!(plan(&s, &all, 4).moves.is_empty());
        for (_, _, m) in s.committed_versions() {
            assert_eq!(m.replicas.len(), 4);
        }
        let p = b.progress();
        assert_eq!((p.pending_moves, p.in_flight), (0, 0));
        assert!(p.moved > 0 && p.moved_bytes == 7 * p.moved);
    }

    #[test]
    fn repair_goes_first() {
        let old = addrs(1..=5);
        let all = addrs(1..=8);
        let mut s = placed(50, 7, &old);
        // One version short of a copy: repair has work.
        put(&mut s, "short", 7, addrs([1, 2, 3]));
        let mut repairs = Repairs::new(4, WIDE);
        let view = View {
            live: &all,
            alive: &all,
        };
        repairs.rescan(&s, view);
        let mut b = Balancer::new(4, Some(0.1));
        b.view(&s, &all, false);
        assert!(b.progress().pending_moves > 0);
        assert!(b.next(&s, &mut repairs).is_empty(), "repair waits");
        let fix = repairs.next(&s);
        assert_eq!(fix.len(), 1);
        assert!(
            !b.next(&s, &mut repairs).is_empty(),
            "repair is running, none waits"
        );
    }

    #[test]
    fn moves_share_repairs_bounds() {
        let old = addrs(1..=4);
        let all = addrs(1..=5);
        let s = placed(200, 7, &old);
        let bounds = Bounds {
            per_source: 100,
            per_target: 2,
        };
        let mut repairs = Repairs::new(4, bounds);
        let view = View {
            live: &all,
            alive: &all,
        };
        repairs.rescan(&s, view);
        let mut b = Balancer::new(4, Some(0.1));
        b.view(&s, &all, false);
        let copies = b.next(&s, &mut repairs);
        assert_eq!(copies.len(), 2, "two slots on the one newcomer");
        assert!(b.next(&s, &mut repairs).is_empty(), "no room left");
        let c = &copies[0];
        assert!(b.done(&c.name, c.version, c.target, false, &mut repairs));
        assert!(
            b.next(&s, &mut repairs).is_empty(),
            "the failed target rests"
        );
        let c = &copies[1];
        assert!(b.done(&c.name, c.version, c.target, true, &mut repairs));
        assert!(!b.done(&c.name, c.version, c.target, true, &mut repairs));
    }

    #[test]
    fn a_plan_is_made_on_a_join_and_on_spread_once_the_data_changed() {
        let agents = addrs(1..=6);
        let batch = |s: &mut MetaState| {
            for i in 0..100 {
                put(s, &format!("b{i}"), 10, addrs(1..=4));
            }
        };
        let mut s = placed(100, 10, &agents);
        let mut b = Balancer::new(4, Some(0.1));
        b.view(&s, &agents, false);
        assert_eq!(b.progress().pending_moves, 0, "at placement already");
        // A batch lands on one chain: the spread grows past the threshold.
        batch(&mut s);
        b.view(&s, &agents, false);
        assert!(b.progress().pending_moves > 0);

        // Under a high threshold the same batch waits for a join.
        let mut s = placed(100, 10, &agents);
        let mut b = Balancer::new(4, Some(10.0));
        b.view(&s, &agents, false);
        batch(&mut s);
        b.view(&s, &agents, false);
        assert_eq!(b.progress().pending_moves, 0, "spread within the threshold");
        let mut joined = agents.clone();
        joined.push(addr(7));
        b.view(&s, &joined, false);
        assert!(b.progress().pending_moves > 0, "a join plans");
    }

    #[test]
    fn with_auto_balance_off_only_a_request_plans() {
        let agents = addrs(1..=6);
        let s = placed(100, 10, &agents[..4]);
        let mut b = Balancer::new(4, None);
        b.view(&s, &agents, false);
        assert_eq!(b.progress().pending_moves, 0, "a join plans nothing");
        let shown = b.request(&s, &agents, false);
        assert!(shown.started && !shown.flows.is_empty());
        assert!(b.progress().pending_moves > 0, "the request's plan runs");
    }

    #[test]
    fn moves_that_failed_are_planned_again_once_the_rest_is_done() {
        let old = addrs(1..=5);
        let all = addrs(1..=6);
        let mut s = placed(40, 7, &old);
        let mut repairs = Repairs::new(4, WIDE);
        let mut b = Balancer::new(4, Some(100.0));
        b.view(&s, &old, false);
        b.view(&s, &all, false);
        let copies = b.next(&s, &mut repairs);
        assert!(copies.len() > 1);
        // The first copy's record failed (no quorum, say); the others stored.
        let (lost, rest) = copies.split_first().unwrap();
        assert!(b.done(&lost.name, lost.version, lost.target, false, &mut repairs));
        for c in rest {
            record(&mut s, c);
            assert!(b.done(&c.name, c.version, c.target, true, &mut repairs));
        }
        assert!(b.next(&s, &mut repairs).is_empty(), "its target rests");
        assert_eq!(b.progress().pending_moves, 0);
        b.view(&s, &all, false);
        let again = b.next(&s, &mut repairs);
        assert_eq!(again.len(), 1, "planned again");
        assert_eq!((&again[0].name, again[0].target), (&lost.name, lost.target));
    }

    #[test]
    fn a_plan_that_left_versions_to_repair_is_made_again_once_repair_is_done() {
        let all = addrs(1..=6);
        let mut s = MetaState::default();
        // Off placement and short of a copy: repair's first.
        let want = placement::place("a", &all, 4);
        let off: Vec<SocketAddr> = all.iter().copied().filter(|a| !want.contains(a)).collect();
        put(&mut s, "a", 10, vec![off[0], off[1], want[0]]);
        let mut b = Balancer::new(4, Some(100.0));
        b.view(&s, &all, true);
        assert_eq!(b.progress().pending_moves, 0, "left to repair");
        b.view(&s, &all, true);
        assert_eq!(b.progress().pending_moves, 0, "repair still waits");
        // Repair adds the missing copy (by rank: the placement's next agent).
        let op = Op::SetReplicas {
            name: "a".into(),
            version: 1,
            add: vec![want[1]],
            drop: Vec::new(),
        };
        assert_eq!(s.apply(&Command { now_ms: 3, op }), Applied::Done);
        b.view(&s, &all, false);
        assert_eq!(
            b.progress().pending_moves,
            2,
            "its two holders off placement move"
        );
    }

    #[test]
    fn a_dry_run_starts_nothing() {
        let old = addrs(1..=5);
        let all = addrs(1..=6);
        let s = placed(50, 10, &old);
        let mut b = Balancer::new(4, Some(100.0));
        b.view(&s, &old, false);
        let shown = b.request(&s, &all, true);
        assert!(shown.moves > 0 && !shown.started);
        assert_eq!(b.progress().pending_moves, 0);
        assert!(shown.flows.iter().all(|f| f.to == addr(6)));
        let shown = b.request(&s, &all, false);
        assert!(shown.started);
        assert_eq!(b.progress().pending_moves, shown.moves);
    }
}
