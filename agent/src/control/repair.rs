//! The repair planner (sans-IO): from the metadata and who is alive, which
//! committed versions need more copies, on which agents, copied from whom;
//! and which replica sets still name agents that are gone. The leader task
//! (`task.rs`) executes what it plans and reports every copy's end, which
//! plans the next at once.
//!
//! A scan ([`scan`], on a blocking thread, on maintenance passes and
//! membership changes; its result goes to [`Repairs::take`]) orders the
//! versions short of copies by risk: fewest live copies first, then oldest
//! commit first. [`Repairs::next`] walks that order and
//! starts copies while the bounds allow: at most `per_source` copies read
//! from one agent and `per_target` written to one agent at a time. Nothing
//! else limits the pace but the targets' byte throttle.

use super::placement;
use super::state::MetaState;
use dml_shared::sdfs::Checksum;
use dml_shared::telemetry::RepairProgress;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How far back finished copies count towards the repair rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Copy one version to one more agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    /// Live holders to copy from, the one counted against its bound first.
    pub sources: Vec<SocketAddr>,
    /// The new holder.
    pub target: SocketAddr,
    /// Holders that are not live; removed from the replica set with the copy.
    pub dead: Vec<SocketAddr>,
}

/// A version with enough live holders whose replica set still names dead ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trim {
    pub name: String,
    pub version: u64,
    pub dead: Vec<SocketAddr>,
}

/// What one scan found besides the versions to copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub trims: Vec<Trim>,
    /// Versions under-replicated with no live holder at all (data lost until one returns).
    pub unavailable: Vec<(String, u64)>,
}

/// Who counts for repair.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// Alive or suspect: still counted as holders.
    pub live: &'a [SocketAddr],
    /// Alive: eligible as new holders.
    pub alive: &'a [SocketAddr],
}

/// Copies in flight at once per agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Copies read from one agent (`sdfs.repair_per_source`).
    pub per_source: usize,
    /// Copies written to one agent (`sdfs.repair_per_target`).
    pub per_target: usize,
}

/// A copy running: where from, where to, how big.
#[derive(Clone, Copy, Debug)]
struct Running {
    source: SocketAddr,
    target: SocketAddr,
    size: u64,
}

/// The planner's state for one leader term: the ordered backlog, the copies
/// in flight, and what recently finished (for the rate).
#[derive(Debug)]
pub struct Repairs {
    replicas: usize,
    bounds: Bounds,
    /// Versions short of copies, riskiest first, as of the last scan.
    backlog: VecDeque<(String, u64)>,
    running: HashMap<(String, u64), Vec<Running>>,
    sources: HashMap<SocketAddr, usize>,
    targets: HashMap<SocketAddr, usize>,
    /// Targets whose copy failed since the last scan: not chosen again until
    /// the next one, so a dead target does not spin.
    failed: HashSet<SocketAddr>,
    live: Vec<SocketAddr>,
    alive: Vec<SocketAddr>,
    /// Copies (and their bytes) still missing, as of the last scan less what finished since.
    pending: (u64, u64),
    /// Finished copies: when, and their bytes.
    done: VecDeque<(Instant, u64)>,
}

/// What a scan of every version found ([`scan`]), for [`Repairs::take`].
#[derive(Debug, Default)]
pub struct Found {
    scan: Scan,
    /// Versions short of copies, riskiest first.
    backlog: VecDeque<(String, u64)>,
    /// Copies (and their bytes) missing.
    pending: (u64, u64),
}

impl Found {
    /// Whether versions short of copies were found (balance waits then).
    pub fn waiting(&self) -> bool {
        !self.backlog.is_empty()
    }
}

/// Scans every committed version of `state` for copies missing on `live`
/// agents, and replica sets naming agents not live. A pure function of its
/// arguments, so it runs on a blocking thread over an O(1) copy of the files.
pub fn scan(state: &MetaState, replicas: usize, live: &[SocketAddr]) -> Found {
    let is_live = |a: &SocketAddr| live.contains(a);
    let mut out = Scan::default();
    // (live copies, commit time, name, version)
    let mut short: Vec<(usize, u64, &str, u64)> = Vec::new();
    let mut pending = (0u64, 0u64);
    for (name, version, meta) in state.committed_versions() {
        let n = meta.replicas.iter().filter(|r| is_live(r)).count();
        if n >= replicas {
            let dead: Vec<SocketAddr> = meta
                .replicas
                .iter()
                .copied()
                .filter(|r| !is_live(r))
                .collect();
            if !dead.is_empty() {
                out.trims.push(Trim {
                    name: name.to_string(),
                    version,
                    dead,
                });
            }
        } else if n == 0 {
            out.unavailable.push((name.to_string(), version));
        } else {
            let missing = (replicas - n) as u64;
            pending.0 += missing;
            pending.1 += missing * meta.size;
            short.push((n, meta.committed_ms, name, version));
        }
    }
    short.sort_unstable();
    Found {
        scan: out,
        backlog: short
            .into_iter()
            .map(|(_, _, name, version)| (name.to_string(), version))
            .collect(),
        pending,
    }
}

impl Repairs {
    pub fn new(replicas: usize, bounds: Bounds) -> Self {
        Self {
            replicas,
            bounds,
            backlog: VecDeque::new(),
            running: HashMap::new(),
            sources: HashMap::new(),
            targets: HashMap::new(),
            failed: HashSet::new(),
            live: Vec::new(),
            alive: Vec::new(),
            pending: (0, 0),
            done: VecDeque::new(),
        }
    }

    /// Rebuilds the backlog from the state and a fresh membership view
    /// ([`scan`] then [`Repairs::take`], in one go).
    pub fn rescan(&mut self, state: &MetaState, view: View<'_>) -> Scan {
        let found = scan(state, self.replicas, view.live);
        self.take(view, found)
    }

    /// A scan's result ([`scan`], run off the leader task over a copy of the
    /// state) becomes the backlog; `view` is the one it scanned with. A
    /// replica set is not trimmed while one of its copies runs.
    pub fn take(&mut self, view: View<'_>, found: Found) -> Scan {
        self.live = view.live.to_vec();
        self.alive = view.alive.to_vec();
        self.failed.clear();
        self.backlog = found.backlog;
        self.pending = found.pending;
        let mut out = found.scan;
        out.trims
            .retain(|t| !self.running.contains_key(&(t.name.clone(), t.version)));
        out
    }

    fn is_live(&self, a: &SocketAddr) -> bool {
        self.live.contains(a)
    }

    fn load(map: &HashMap<SocketAddr, usize>, a: &SocketAddr) -> usize {
        map.get(a).copied().unwrap_or(0)
    }

    /// Starts every copy the bounds allow, riskiest versions first, and
    /// counts them as running until [`Repairs::done`].
    pub fn next(&mut self, state: &MetaState) -> Vec<Copy> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.backlog.len());
        while let Some(key) = self.backlog.pop_front() {
            if !self.room() {
                keep.push_back(key);
                break;
            }
            let Some(meta) = state.version(&key.0, key.1).filter(|m| m.is_committed()) else {
                continue; // deleted since the scan
            };
            let mut live: Vec<SocketAddr> = meta
                .replicas
                .iter()
                .copied()
                .filter(|r| self.is_live(r))
                .collect();
            if live.is_empty() {
                continue;
            }
            let dead: Vec<SocketAddr> = meta
                .replicas
                .iter()
                .copied()
                .filter(|r| !self.is_live(r))
                .collect();
            let running: Vec<SocketAddr> = self
                .running
                .get(&key)
                .map(|r| r.iter().map(|c| c.target).collect())
                .unwrap_or_default();
            let mut missing = self.replicas.saturating_sub(live.len() + running.len());
            let mut taken = running;
            while missing > 0 {
                let target = placement::rank(&key.0, &self.alive).into_iter().find(|a| {
                    !meta.replicas.contains(a)
                        && !taken.contains(a)
                        && !self.failed.contains(a)
                        && Self::load(&self.targets, a) < self.bounds.per_target
                });
                // Alive before suspect, then the least busy.
                live.sort_by_key(|s| (!self.alive.contains(s), Self::load(&self.sources, s)));
                let source = live
                    .first()
                    .copied()
                    .filter(|s| Self::load(&self.sources, s) < self.bounds.per_source);
                let (Some(target), Some(source)) = (target, source) else {
                    break;
                };
                *self.targets.entry(target).or_default() += 1;
                *self.sources.entry(source).or_default() += 1;
                self.running.entry(key.clone()).or_default().push(Running {
                    source,
                    target,
                    size: meta.size,
                });
                taken.push(target);
                out.push(Copy {
                    name: key.0.clone(),
                    version: key.1,
                    size: meta.size,
                    checksum: meta.checksum,
                    sources: live.clone(),
                    target,
                    dead: dead.clone(),
                });
                missing -= 1;
            }
            // Still short: wait for room. Every copy planned: drop it (a
            // failed copy puts it back).
            if missing > 0 {
                keep.push_back(key);
            }
        }
        keep.append(&mut self.backlog);
        self.backlog = keep;
        out
    }

    /// Whether versions short of copies wait for a slot (balance waits then).
    pub fn waiting(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Takes a slot on `source` and on `target` for a balance move, if
    /// both have room under the same bounds as repair's copies.
    pub fn reserve(&mut self, source: SocketAddr, target: SocketAddr) -> bool {
        if Self::load(&self.sources, &source) >= self.bounds.per_source
            || Self::load(&self.targets, &target) >= self.bounds.per_target
        {
            return false;
        }
        *self.sources.entry(source).or_default() += 1;
        *self.targets.entry(target).or_default() += 1;
        true
    }

    /// Gives back the slots of a balance move that ended.
    pub fn release(&mut self, source: SocketAddr, target: SocketAddr) {
        for (map, a) in [(&mut self.sources, source), (&mut self.targets, target)] {
            if let Some(n) = map.get_mut(&a) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&a);
                }
            }
        }
    }

    /// Whether some alive agent can take a copy and some live one give one.
    fn room(&self) -> bool {
        let target = self.alive.iter().any(|a| {
            !self.failed.contains(a) && Self::load(&self.targets, a) < self.bounds.per_target
        });
        let source = self
            .live
            .iter()
            .any(|a| Self::load(&self.sources, a) < self.bounds.per_source);
        target && source
    }

    /// The copy of `name` v`version` to `target` ended: recorded (`ok`) or
    /// failed (its version goes back to the front of the backlog).
    pub fn done(&mut self, name: &str, version: u64, target: SocketAddr, ok: bool, now: Instant) {
        let key = (name.to_string(), version);
        let Some(list) = self.running.get_mut(&key) else {
            return;
        };
        let Some(i) = list.iter().position(|r| r.target == target) else {
            return;
        };
        let r = list.swap_remove(i);
        if list.is_empty() {
            self.running.remove(&key);
        }
        for (map, a) in [(&mut self.sources, r.source), (&mut self.targets, r.target)] {
            if let Some(n) = map.get_mut(&a) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&a);
                }
            }
        }
        if ok {
            self.pending.0 = self.pending.0.saturating_sub(1);
            self.pending.1 = self.pending.1.saturating_sub(r.size);
            self.done.push_back((now, r.size));
        } else {
            self.failed.insert(target);
            if !self.backlog.contains(&key) {
                self.backlog.push_front(key);
            }
        }
        self.forget_old(now);
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.done.front() {
            if now.saturating_duration_since(*at) <= RATE_WINDOW {
                break;
            }
            self.done.pop_front();
        }
    }

    /// Copies running.
    pub fn in_flight(&self) -> usize {
        self.running.values().map(Vec::len).sum()
    }

    /// What is left and how fast it goes, for the console.
    pub fn progress(&mut self, now: Instant) -> RepairProgress {
        self.forget_old(now);
        let (copies, bytes) = self
            .done
            .iter()
            .fold((0u64, 0u64), |(c, b), (_, s)| (c + 1, b + s));
        // Over the window, or since the first copy in it if repair began later.
        let span = self
            .done
            .front()
            .map_or(RATE_WINDOW, |(at, _)| now.saturating_duration_since(*at))
            .clamp(Duration::from_secs(1), RATE_WINDOW)
            .as_secs_f64();
        RepairProgress {
            pending_copies: self.pending.0,
            pending_bytes: self.pending.1,
            in_flight: self.in_flight() as u64,
            copies_per_sec: (copies as f64 / span).round() as u64,
            bytes_per_sec: (bytes as f64 / span).round() as u64,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::types::{Applied, Command, Op};

    /// 127.0.0.1:`port` (also for the balance planner's tests).
    pub(crate) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub(crate) fn addrs(ports: impl IntoIterator<Item = u16>) -> Vec<SocketAddr> {
        ports.into_iter().map(addr).collect()
    }

    /// Bounds that never hold a copy back.
    pub(crate) const WIDE: Bounds = Bounds {
        per_source: 100,
        per_target: 100,
    };

    /// Commits each file at time `i` (its index) on the holders given.
    fn state_with(files: &[(&str, &[u16])]) -> MetaState {
        let mut s = MetaState::default();
        for (i, (name, holders)) in files.iter().enumerate() {
            let holders = addrs(holders.iter().copied());
            let Applied::Version(v) = s.apply(&Command {
                now_ms: i as u64,
                op: Op::BeginPut {
                    name: name.to_string(),
                    size: 5,
                    replicas: holders.clone(),
                    deadline_ms: 1_000_000,
                },
            }) else {
                panic!()
            };
            s.apply(&Command {
                now_ms: 10 + i as u64,
                op: Op::CommitPut {
                    name: name.to_string(),
                    version: v,
                    checksum: [1; 32],
                    holders,
                    quorum: 1,
                },
            });
        }
        s
    }

    /// Applies the entry the leader appends once a copy stored.
    fn record(s: &mut MetaState, c: &Copy) {
        let op = Op::SetReplicas {
            name: c.name.clone(),
            version: c.version,
            add: vec![c.target],
            drop: c.dead.clone(),
        };
        assert_eq!(s.apply(&Command { now_ms: 99, op }), Applied::Done);
    }

    fn planned(s: &MetaState, live: &[SocketAddr], bounds: Bounds) -> (Repairs, Scan, Vec<Copy>) {
        let mut r = Repairs::new(4, bounds);
        let scan = r.rescan(s, View { live, alive: live });
        let copies = r.next(s);
        (r, scan, copies)
    }

    #[test]
    fn fully_replicated_versions_need_nothing() {
        let s = state_with(&[("a", &[1, 2, 3, 4])]);
        let (_, scan, copies) = planned(&s, &addrs(1..=5), WIDE);
        assert_eq!(scan, Scan::default());
        assert!(copies.is_empty());
    }

    #[test]
    fn a_failed_holder_gets_replaced_from_the_survivors() {
        let s = state_with(&[("a", &[1, 2, 3, 4])]);
        let live = addrs([1, 2, 3, 5, 6]);
        let (_, _, copies) = planned(&s, &live, WIDE);
        assert_eq!(copies.len(), 1);
        let c = &copies[0];
        let mut sources = c.sources.clone();
        sources.sort();
        assert_eq!(sources, addrs([1, 2, 3]));
        assert_eq!(c.dead, vec![addr(4)]);
        assert_eq!(c.target, placement::rank("a", &addrs([5, 6]))[0]);
    }

    #[test]
    fn every_missing_copy_starts_at_once_on_distinct_targets() {
        let s = state_with(&[("a", &[1, 2])]);
        let (r, _, copies) = planned(&s, &addrs([1, 2, 5, 6, 7]), WIDE);
        let targets: HashSet<SocketAddr> = copies.iter().map(|c| c.target).collect();
        assert_eq!(copies.len(), 2);
        assert_eq!(targets.len(), 2);
        assert!(targets.iter().all(|t| addrs([5, 6, 7]).contains(t)));
        assert_eq!(r.in_flight(), 2);
    }

    #[test]
    fn fewest_live_copies_first_then_oldest() {
        // "new1" is younger than "old1"; "two" has 2 live copies, the others 3.
        let s = state_with(&[
            ("old1", &[1, 2, 3, 9]),
            ("two", &[1, 2, 8, 9]),
            ("new1", &[1, 2, 3, 9]),
        ]);
        let live = addrs(1..=7);
        // One target slot on one agent: the order shows one copy at a time.
        let mut r = Repairs::new(
            4,
            Bounds {
                per_source: 100,
                per_target: 1,
            },
        );
        r.rescan(
            &s,
            View {
                live: &live,
                alive: &addrs([4]),
            },
        );
        let mut s = s;
        let mut order = Vec::new();
        for _ in 0..3 {
            let c = r.next(&s);
            assert_eq!(c.len(), 1, "one slot");
            order.push(c[0].name.clone());
            record(&mut s, &c[0]);
            r.done(&c[0].name, c[0].version, c[0].target, true, Instant::now());
        }
        assert_eq!(order, vec!["two", "old1", "new1"]);
        assert!(r.next(&s).is_empty(), "\"two\" has no other target");
    }

    #[test]
    fn copies_per_target_stay_within_the_bound() {
        let files: Vec<(String, Vec<u16>)> =
            (0..20).map(|i| (format!("f{i}"), vec![1, 2, 3])).collect();
        let refs: Vec<(&str, &[u16])> = files.iter().map(|(n, h)| (n.as_str(), &h[..])).collect();
        let s = state_with(&refs);
        let bounds = Bounds {
            per_source: 100,
            per_target: 3,
        };
        let (mut r, _, copies) = planned(&s, &addrs([1, 2, 3, 4, 5]), bounds);
        assert_eq!(copies.len(), 6, "3 each on agents 4 and 5");
        let mut per: HashMap<SocketAddr, usize> = HashMap::new();
        for c in &copies {
            *per.entry(c.target).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![3, 3]);
        assert!(r.next(&s).is_empty(), "no room until one ends");
        let c = &copies[0];
        r.done(&c.name, c.version, c.target, true, Instant::now());
        let more = r.next(&s);
        assert_eq!(more.len(), 1, "the freed slot is used at once");
        assert_eq!(more[0].target, c.target);
    }

    #[test]
    fn copies_per_source_stay_within_the_bound_and_spread_over_holders() {
        let files: Vec<(String, Vec<u16>)> =
            (0..20).map(|i| (format!("f{i}"), vec![1, 2, 3])).collect();
        let refs: Vec<(&str, &[u16])> = files.iter().map(|(n, h)| (n.as_str(), &h[..])).collect();
        let s = state_with(&refs);
        let bounds = Bounds {
            per_source: 2,
            per_target: 100,
        };
        let (_, _, copies) = planned(&s, &addrs([1, 2, 3, 4, 5, 6]), bounds);
        assert_eq!(copies.len(), 6, "2 from each of agents 1, 2 and 3");
        let mut per: HashMap<SocketAddr, usize> = HashMap::new();
        for c in &copies {
            *per.entry(c.sources[0]).or_default() += 1;
        }
        assert!(per.values().all(|n| *n == 2), "{per:?}");
    }

    #[test]
    fn a_failed_copy_is_retried_elsewhere_and_its_target_rests_until_the_next_scan() {
        let s = state_with(&[("a", &[1, 2, 3])]);
        let live = addrs([1, 2, 3, 5, 6]);
        let (mut r, _, copies) = planned(&s, &live, WIDE);
        let first = copies[0].target;
        r.done("a", 1, first, false, Instant::now());
        let again = r.next(&s);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].target, first);
        r.done("a", 1, again[0].target, false, Instant::now());
        assert!(r.next(&s).is_empty(), "both targets failed");
        r.rescan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
        );
        assert_eq!(r.next(&s).len(), 1, "a new scan tries them again");
    }

    #[test]
    fn versions_with_no_live_holder_are_reported_not_copied() {
        let s = state_with(&[("a", &[1, 2])]);
        let (_, scan, copies) = planned(&s, &addrs([3, 4]), WIDE);
        assert!(copies.is_empty());
        assert_eq!(scan.unavailable, vec![("a".to_string(), 1)]);
    }

    #[test]
    fn suspects_count_as_holders_but_are_not_targets() {
        let s = state_with(&[("a", &[1, 2, 3])]);
        let live = addrs([1, 2, 3, 4, 5]);
        let alive = addrs([1, 2, 3, 5]);
        let mut r = Repairs::new(4, WIDE);
        r.rescan(
            &s,
            View {
                live: &live,
                alive: &alive,
            },
        );
        let copies = r.next(&s);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].target, addr(5));
    }

    #[test]
    fn dead_holders_of_full_versions_are_trimmed() {
        let s = state_with(&[("a", &[1, 2, 3, 4, 5])]);
        let (_, scan, copies) = planned(&s, &addrs(1..=4), WIDE);
        assert!(copies.is_empty());
        assert_eq!(
            scan.trims,
            vec![Trim {
                name: "a".into(),
                version: 1,
                dead: vec![addr(5)]
            }]
        );
    }

    #[test]
    fn progress_counts_what_is_left_and_the_recent_rate() {
        let s = state_with(&[("a", &[1, 2]), ("b", &[1, 2, 3])]);
        let (mut r, _, copies) = planned(&s, &addrs(1..=6), WIDE);
        let t0 = Instant::now();
        let p = r.progress(t0);
        assert_eq!((p.pending_copies, p.pending_bytes, p.in_flight), (3, 15, 3));
        assert_eq!(p.copies_per_sec, 0);
        r.done(
            &copies[0].name,
            copies[0].version,
            copies[0].target,
            true,
            t0,
        );
        r.done(
            &copies[1].name,
            copies[1].version,
            copies[1].target,
            true,
            t0,
        );
        let p = r.progress(t0 + Duration::from_secs(2));
        assert_eq!((p.pending_copies, p.pending_bytes, p.in_flight), (1, 5, 1));
        assert_eq!((p.copies_per_sec, p.bytes_per_sec), (1, 5));
        let p = r.progress(t0 + RATE_WINDOW * 2);
        assert_eq!(p.copies_per_sec, 0, "old copies leave the window");
    }
}
