//! Put plans answered before their log entry commits. Under its lease (so its
//! state holds everything earlier leaders committed) the leader picks the
//! version itself and answers the client at once.
//! - A small put's plan (at most [`DEFER_MAX`] bytes) stays in the leader's
//!   memory, and its commit appends plan and commit as one `Op::PutAt`: one
//!   Raft write per put, not two. A leader that changes before the commit
//!   forgets the plan, so the commit is refused and the put fails.
//! - A larger put's plan is appended as `Op::BeginPutAt` at once, so it
//!   overlaps the replica chain's store and a new leader sees the version
//!   taken. Its commit or abort first waits for the plan's outcome (`claim`).
//!   A plan whose entry never commits fails that commit.
//!
//! A plan is named by the term of the leader that made it (`PutPlan.plan`),
//! and commits and aborts name it back: a later leader never takes another
//! leader's plan for one of its own (a plan of the same number it made
//! since). It commits an earlier leader's plan only as a retry of a commit
//! that already applied.
//!
//! A commit claims the holders that stored the bytes; the leader refuses
//! one that names an agent outside the chain it planned ([`check_holders`]),
//! so a client cannot point a version at agents that never had its bytes.
//!
//! The copies of a failed put are orphans that reconcile drops after
//! `sdfs.put_timeout`, as with any failed put.
//!
//! [`Plans`] is pure (every call takes `now`); the leader task (`task.rs`)
//! owns it, appends the entries it asks for and feeds back their outcome.

use super::error::ControlError;
use super::types::Op;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a plan's entry did not apply (a clonable [`ControlError`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failed {
    NoQuorum(Duration),
    Rejected(String),
    Raft(String),
}

impl From<Failed> for ControlError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::NoQuorum(waited) => ControlError::NoQuorum { waited },
            Failed::Rejected(m) => ControlError::Rejected(m),
            Failed::Raft(m) => ControlError::Raft(m),
        }
    }
}

/// The largest put whose plan is not appended before its commit. Its store
/// takes milliseconds, far less than an election (`control.election_timeout_min`).
pub const DEFER_MAX: u64 = 4 << 20;

/// A plan the leader made.
#[derive(Debug)]
enum Plan {
    /// In memory only; the commit carries it (`Op::PutAt`). `replicas`:
    /// the chain planned.
    Deferred {
        size: u64,
        replicas: Vec<SocketAddr>,
    },
    /// Appended; its outcome once known.
    Appended(Option<Result<(), Failed>>),
}

/// What a claimed plan asks of the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Append plan and commit together: `Op::PutAt` with this size, once
    /// the holders are found among the planned `replicas`.
    Deferred {
        size: u64,
        replicas: Vec<SocketAddr>,
    },
    /// This leader's plan is in the log (or was claimed before, by a commit
    /// this one retries): `Op::CommitPut`.
    Logged,
    /// An earlier leader made the plan.
    Foreign,
}

/// The answer to a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Final now (an appended plan that failed fails its commit).
    Now(Result<Claimed, Failed>),
    /// The plan's entry has no outcome yet: [`Plans::settled`] gives it.
    Wait,
}

/// What a put asked of the leader.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    pub name: String,
    pub size: u64,
    pub replicas: Vec<SocketAddr>,
    pub deadline_ms: u64,
}

/// A new plan: its version, and for a large put the entry to append (then
/// [`Plans::appended`] once it is handed to Raft).
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub version: u64,
    pub append: Option<Op>,
}

/// The put plans of one leader term.
#[derive(Debug)]
pub struct Plans {
    term: u64,
    /// How long an unclaimed plan is kept.
    forget_after: Duration,
    /// Next version to hand out, for names with plans ahead of the state.
    next: HashMap<String, u64>,
    /// Plans not yet claimed, with when they were made.
    open: HashMap<(String, u64), (Instant, Plan)>,
    /// Appended plans claimed before their outcome was known.
    awaited: HashSet<(String, u64)>,
}

impl Plans {
    /// The plans of the leader of `term`; an unclaimed plan is forgotten
    /// after `forget_after` (twice `sdfs.put_timeout`).
    pub fn new(term: u64, forget_after: Duration) -> Self {
        Self {
            term,
            forget_after,
            next: HashMap::new(),
            open: HashMap::new(),
            awaited: HashSet::new(),
        }
    }

    /// The plans' id: the term of the leader that makes them.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Reserves the next version of `req.name`; `next_version` is the
    /// current state's (read under the lease). A small put's plan stays
    /// here; a large one's entry is returned for the caller to append.
    ///
    /// Looks up `req.name` alone: a batch plans up to 1,024 files at once
    /// while thousands more are open, and going over every open plan per
    /// file held the leader task for seconds (`docs/SDFS.md`). Stale plans
    /// and counters go in [`Plans::forget_stale`], once per maintenance pass.
    pub fn plan(
        &mut self,
        req: PlanRequest,
        next_version: impl Fn(&str) -> u64,
        now: Instant,
    ) -> Planned {
        let version = self
            .next
            .get(&req.name)
            .copied()
            .unwrap_or(0)
            .max(next_version(&req.name));
        if req.size <= DEFER_MAX {
            self.next.insert(req.name.clone(), version + 1);
            let plan = Plan::Deferred {
                size: req.size,
                replicas: req.replicas,
            };
            self.open.insert((req.name, version), (now, plan));
            return Planned {
                version,
                append: None,
            };
        }
        Planned {
            version,
            append: Some(Op::BeginPutAt {
                name: req.name,
                version,
                size: req.size,
                replicas: req.replicas,
                deadline_ms: req.deadline_ms,
            }),
        }
    }

    /// The entry of a large plan went to Raft: the version is taken.
    pub fn appended(&mut self, name: &str, version: u64, now: Instant) {
        self.next.insert(name.to_string(), version + 1);
        self.open
            .insert((name.to_string(), version), (now, Plan::Appended(None)));
    }

    /// An appended plan's entry applied (or failed to). Returns the answer
    /// of the commit waiting for it, if one is.
    pub fn settled(
        &mut self,
        name: &str,
        version: u64,
        outcome: Result<(), Failed>,
    ) -> Option<Result<Claimed, Failed>> {
        let key = (name.to_string(), version);
        if self.awaited.remove(&key) {
            return Some(outcome.map(|()| Claimed::Logged));
        }
        if let Some((_, Plan::Appended(o))) = self.open.get_mut(&key) {
            *o = Some(outcome);
        }
        None
    }

    /// Takes the plan of (`name`, `version`) if this leader (`plan_id` is
    /// its term) made it and nobody claimed it yet.
    pub fn claim(&mut self, name: &str, version: u64, plan_id: u64) -> Claim {
        if plan_id != self.term {
            return Claim::Now(Ok(Claimed::Foreign));
        }
        let key = (name.to_string(), version);
        let Some((_, plan)) = self.open.remove(&key) else {
            return Claim::Now(Ok(Claimed::Logged));
        };
        match plan {
            Plan::Deferred { size, replicas } => {
                Claim::Now(Ok(Claimed::Deferred { size, replicas }))
            }
            Plan::Appended(Some(outcome)) => Claim::Now(outcome.map(|()| Claimed::Logged)),
            Plan::Appended(None) => {
                self.awaited.insert(key);
                Claim::Wait
            }
        }
    }

    /// Drops plans nobody claimed within `forget_after`, and the counters
    /// of names whose state caught up (`next_version`: the state's).
    pub fn forget_stale(&mut self, now: Instant, next_version: impl Fn(&str) -> u64) {
        let keep = self.forget_after;
        self.open
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < keep);
        self.next.retain(|n, v| *v > next_version(n));
    }

    /// Names with versions planned ahead of the state.
    pub fn ahead(&self) -> usize {
        self.next.len()
    }

    /// Plans made and not claimed.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// A commit naming a holder outside the chain the leader planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the commit of \"{name}\" v{version} names holder {holder}, which is not in the chain the leader planned ({}); refused",
    planned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
)]
pub struct UnplannedHolder {
    pub name: String,
    pub version: u64,
    pub holder: SocketAddr,
    pub planned: Vec<SocketAddr>,
}

/// Refuses a commit of `name` v`version` whose `holders` name an agent
/// outside the `planned` chain, naming the first such holder.
pub fn check_holders(
    name: &str,
    version: u64,
    holders: &[SocketAddr],
    planned: &[SocketAddr],
) -> Result<(), UnplannedHolder> {
    match holders.iter().find(|h| !planned.contains(h)) {
        None => Ok(()),
        Some(h) => Err(UnplannedHolder {
            name: name.to_string(),
            version,
            holder: *h,
            planned: planned.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, size: u64) -> PlanRequest {
        PlanRequest {
            name: name.into(),
            size,
            replicas: Vec::new(),
            deadline_ms: 0,
        }
    }

    #[test]
    fn small_plans_stay_in_memory_and_take_consecutive_versions() {
        let mut p = Plans::new(4, Duration::from_secs(60));
        let t = Instant::now();
        let a = p.plan(req("f", 3), |_| 1, t);
        let b = p.plan(req("f", 3), |_| 1, t);
        assert_eq!((a.version, b.version), (1, 2));
        assert!(a.append.is_none() && b.append.is_none());
        assert_eq!(
            p.claim("f", 2, 4),
            Claim::Now(Ok(Claimed::Deferred {
                size: 3,
                replicas: vec![]
            }))
        );
        // Claimed once: a retry of that commit finds it logged.
        assert_eq!(p.claim("f", 2, 4), Claim::Now(Ok(Claimed::Logged)));
        assert_eq!(p.claim("f", 1, 3), Claim::Now(Ok(Claimed::Foreign)));
    }

    #[test]
    fn a_commit_of_an_appended_plan_waits_for_its_outcome() {
        let mut p = Plans::new(2, Duration::from_secs(60));
        let t = Instant::now();
        let big = p.plan(req("f", DEFER_MAX + 1), |_| 5, t);
        assert_eq!(big.version, 5);
        assert!(matches!(
            big.append,
            Some(Op::BeginPutAt { version: 5, .. })
        ));
        p.appended("f", 5, t);
        assert_eq!(p.plan(req("f", 1), |_| 5, t).version, 6);
        assert_eq!(p.claim("f", 5, 2), Claim::Wait);
        let failed = Failed::Rejected("no".into());
        assert_eq!(p.settled("f", 5, Err(failed.clone())), Some(Err(failed)));
        // Settled before the claim: the claim answers at once.
        p.plan(req("g", DEFER_MAX + 1), |_| 1, t);
        p.appended("g", 1, t);
        assert_eq!(p.settled("g", 1, Ok(())), None);
        assert_eq!(p.claim("g", 1, 2), Claim::Now(Ok(Claimed::Logged)));
    }

    /// A batch plans up to 1,024 files while thousands more are open:
    /// looking up every open plan's name for each file held a leader of a
    /// million versions for seconds per batch, and Raft's heartbeats behind it.
    #[test]
    fn planning_a_file_looks_up_only_its_own_name_however_many_plans_are_open() {
        let mut p = Plans::new(1, Duration::from_secs(60));
        let t = Instant::now();
        let lookups = std::cell::Cell::new(0u64);
        let state = |_: &str| {
            lookups.set(lookups.get() + 1);
            1
        };
        for i in 0..4096 {
            assert_eq!(p.plan(req(&format!("f{i}"), 3), state, t).version, 1);
        }
        assert_eq!(lookups.get(), 4096, "one state lookup per plan");
        assert_eq!(p.plan(req("f7", 3), state, t).version, 2);
        assert_eq!((p.open(), p.ahead()), (4097, 4096));
        // The maintenance pass drops the counters the state caught up with
        // (f7 committed through v2) and, later, the plans nobody claimed.
        p.forget_stale(t, |n| if n == "f7" { 3 } else { 1 });
        assert_eq!((p.open(), p.ahead()), (4097, 4095));
        assert_eq!(p.plan(req("f7", 3), |_| 3, t).version, 3);
        p.forget_stale(t + Duration::from_secs(61), |_| 1);
        assert_eq!(p.open(), 0);
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_deferred_plan_hands_its_chain_to_the_commit() {
        let mut p = Plans::new(1, Duration::from_secs(60));
        let mut r = req("f", 3);
        r.replicas = vec![addr(1), addr(2), addr(3)];
        let v = p.plan(r, |_| 1, Instant::now()).version;
        assert_eq!(
            p.claim("f", v, 1),
            Claim::Now(Ok(Claimed::Deferred {
                size: 3,
                replicas: vec![addr(1), addr(2), addr(3)]
            }))
        );
    }

    #[test]
    fn a_commit_may_name_only_holders_of_the_planned_chain() {
        let chain = [addr(1), addr(2), addr(3), addr(4)];
        check_holders("f", 1, &[addr(2), addr(1), addr(4)], &chain).unwrap();
        // A skipped head or a failed tail leaves fewer holders: fine.
        check_holders("f", 1, &[addr(3)], &chain).unwrap();
        let e = check_holders("f", 7, &[addr(1), addr(9), addr(2)], &chain)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the commit of \"f\" v7 names holder 127.0.0.1:9, which is not in the chain the leader planned (127.0.0.1:1, 127.0.0.1:2"),
            "{e}"
        );
        assert!(check_holders("f", 1, &[addr(1)], &[]).is_err());
    }
}
