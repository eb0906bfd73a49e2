//! Which Raft node id a voter runs under, and getting a voter that lost its
//! state back into the configuration.
//!
//! Raft's safety rests on a voter's vote and log being durable. A voter
//! restarted on a blank store (its data directory lost or wiped) must not
//! reuse its id: it could vote twice in one term, and count towards a
//! quorum for entries it no longer holds. So a voter keeps its id in its
//! store, and one with a blank store first asks the other voters
//! ([`RaftRpc::Probe`]):
//! - a majority (itself included) answer "blank": a new cluster, so it takes
//!   the bootstrap id [`voter_id`]`(addr)`. The first voter, which creates
//!   the cluster, waits until every other voter has so decided (or, past a
//!   patience, a majority), so voters starting together do not find the
//!   cluster already made and rejoin;
//! - any answers that the cluster exists: it takes a fresh random id, starts
//!   as a stranger, and asks the leader ([`RaftRpc::Rejoin`]) to add it as a
//!   learner and, once caught up, to replace its old id by a joint-consensus
//!   membership change, as `etcdctl member remove` and `add` do by hand.
//!
//! [`decide`] is the pure decision; the rest is its I/O.

use super::Inner;
use super::network::{self, ProbeAnswer, RaftMessage, RaftReply, RaftRpc};
use super::types::voter_id;
use dml_shared::api::{Request, Response};
use dml_shared::client::Client;
use openraft::BasicNode;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long the first voter waits for every voter to answer "blank" once a
/// majority has, before it creates the cluster anyway: a voter that comes
/// up later finds it existing and joins under a new id.
const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(5);

/// The longest a learner may take to catch up before its replacement is
/// given up (the voter asks again).
const CATCH_UP: Duration = Duration::from_secs(60);

/// What a voter with a blank store does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new cluster: run under the bootstrap id.
    Bootstrap,
    /// The cluster exists: run under a new id and ask to replace the old.
    Rejoin,
    /// Ask again.
    Wait,
}

/// Decides from the answers heard so far (`None`: no answer) of the other
/// voters, `voters` in all. `first`: this voter creates the cluster;
/// `patience_over`: it has waited [`BOOTSTRAP_PATIENCE`] since a majority
/// had decided.
pub fn decide(
    answers: &[Option<ProbeAnswer>],
    voters: usize,
    first: bool,
    patience_over: bool,
) -> Decision {
    if answers.iter().flatten().any(|a| a.exists) {
        return Decision::Rejoin;
    }
    let majority = voters / 2 + 1;
    if !first {
        let blank = 1 + answers.iter().flatten().count();
        return match blank >= majority {
            true => Decision::Bootstrap,
            false => Decision::Wait,
        };
    }
    let ready = 1 + answers.iter().flatten().filter(|a| a.decided).count();
    if ready == voters || (ready >= majority && patience_over) {
        Decision::Bootstrap
    } else {
        Decision::Wait
    }
}

/// A fresh random id, distinct from every bootstrap id.
fn fresh_id(voters: &[SocketAddr]) -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 && !voters.iter().any(|v| voter_id(*v) == id) {
            return id;
        }
    }
}

/// One RPC outside openraft to the voter at `addr`.
async fn call(addr: SocketAddr, rpc: RaftRpc, timeout: Duration) -> Option<RaftReply> {
    let bytes = postcard::to_allocvec(&RaftMessage { to: 0, rpc }).ok()?;
    let mut c = Client::new(addr).with_timeout(timeout);
    match tokio::time::timeout(timeout, c.call(&Request::Raft(bytes))).await {
        Ok(Ok(Response::Raft(b))) => postcard::from_bytes(&b).ok(),
        _ => None,
    }
}

/// Asks every other voter at once; one answer (or none) per voter.
async fn probe_all(others: &[SocketAddr], timeout: Duration) -> Vec<Option<ProbeAnswer>> {
    let asks = others.iter().map(|a| async move {
        match call(*a, RaftRpc::Probe, timeout).await {
            Some(RaftReply::Probe(p)) => Some(p),
            _ => None,
        }
    });
    futures::future::join_all(asks).await
}

/// Probes until [`decide`] settles (`None` if stopped first).
pub(crate) async fn choose(inner: &Inner, stop: &mut watch::Receiver<bool>) -> Option<Decision> {
    let s = &inner.s;
    let others: Vec<SocketAddr> = s.voters.iter().copied().filter(|v| *v != s.me).collect();
    let first = s.voters.first() == Some(&s.me);
    let mut latest: HashMap<SocketAddr, ProbeAnswer> = HashMap::new();
    let mut majority_since: Option<Instant> = None;
    loop {
        for (a, p) in others
            .iter()
            .zip(probe_all(&others, s.control.rpc_timeout).await)
        {
            if let Some(p) = p {
                latest.insert(*a, p);
            }
        }
        let answers: Vec<Option<ProbeAnswer>> =
            others.iter().map(|a| latest.get(a).copied()).collect();
        if 1 + latest.values().filter(|a| a.decided).count() > s.voters.len() / 2 {
            majority_since.get_or_insert_with(Instant::now);
        }
        let patience_over = majority_since.is_some_and(|t| t.elapsed() >= BOOTSTRAP_PATIENCE);
        match decide(&answers, s.voters.len(), first, patience_over) {
            Decision::Wait => {}
            d => return Some(d),
        }
        tokio::select! {
            _ = tokio::time::sleep(s.control.heartbeat_interval) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// The id a voter with a blank store runs under, and whether it must rejoin.
pub(crate) fn id_for(inner: &Inner, d: Decision) -> (u64, bool) {
    match d {
        Decision::Rejoin => (fresh_id(&inner.s.voters), true),
        _ => (voter_id(inner.s.me), false),
    }
}

/// This voter's answer to a [`RaftRpc::Probe`].
pub(crate) fn answer(inner: &Inner) -> ProbeAnswer {
    let exists = inner.knows_cluster.load(Ordering::Relaxed)
        || inner.raft.get().is_some_and(|r| {
            let m = r.metrics().borrow().clone();
            m.current_term > 0
                || m.last_log_index.is_some()
                || m.membership_config.membership().nodes().next().is_some()
        });
    ProbeAnswer {
        exists,
        decided: inner.id.get().is_some(),
        leader: inner.raft_leader(),
    }
}

/// Whether `id` is a voter in this node's membership config.
fn is_voter(inner: &Inner, id: u64) -> bool {
    inner.raft.get().is_some_and(|r| {
        r.metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
    })
}

/// On a voter running under a new id: asks the leader to replace its old id
/// until its own membership config lists it as a voter.
pub(crate) async fn rejoin(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let s = &inner.s;
    let id = inner.id();
    let others: Vec<SocketAddr> = s.voters.iter().copied().filter(|v| *v != s.me).collect();
    let mut asked = 0u64;
    while !is_voter(&inner, id) {
        let leader = match inner.raft_leader() {
            Some(l) => Some(l),
            None => probe_all(&others, s.control.rpc_timeout)
                .await
                .into_iter()
                .flatten()
                .find_map(|p| p.leader),
        };
        if let Some(l) = leader.filter(|l| *l != s.me) {
            let reply = call(l, RaftRpc::Rejoin { addr: s.me, id }, s.control.rpc_timeout).await;
            if asked.is_multiple_of(20) {
                tracing::info!(leader = %l, id, ?reply, "asked the leader to make this agent's new Raft id a voter");
            }
            asked += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(s.control.election_timeout_max) => {}
            _ = stop.changed() => return,
        }
    }
    tracing::info!(
        id,
        "this agent is a control-plane voter again, under its new Raft id"
    );
}

/// The leader's side of [`RaftRpc::Rejoin`]: starts replacing the voter at
/// `addr` by `id` (one replacement at a time) and answers at once; the
/// voter asks again until it sees itself a voter.
pub(crate) fn serve_rejoin(inner: &Arc<Inner>, addr: SocketAddr, id: u64) -> RaftReply {
    let Some(raft) = inner.raft.get().cloned() else {
        return RaftReply::Failed("this voter's Raft node is starting".into());
    };
    let m = raft.metrics().borrow().clone();
    if m.state != openraft::ServerState::Leader {
        return RaftReply::Failed("not the leader".into());
    }
    if !inner.s.voters.contains(&addr) {
        return RaftReply::Failed(format!("{addr} is not a configured voter"));
    }
    if id == 0
        || inner
            .s
            .voters
            .iter()
            .any(|v| voter_id(*v) == id && *v != addr)
    {
        return RaftReply::Failed(format!("{id} is not a new id for {addr}"));
    }
    if m.membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id)
    {
        return RaftReply::Rejoining;
    }
    if inner.replacing.swap(true, Ordering::AcqRel) {
        return RaftReply::Rejoining;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let node = BasicNode {
            addr: addr.to_string(),
        };
        let replaced = async {
            tokio::time::timeout(CATCH_UP, raft.add_learner(id, node, true))
                .await
                .map_err(|_| format!("the learner did not catch up in {CATCH_UP:?}"))?
                .map_err(|e| e.to_string())?;
            let m = raft.metrics().borrow().clone();
            let config = m.membership_config.membership();
            let old: Vec<u64> = config
                .voter_ids()
                .filter(|v| {
                    *v != id
                        && config
                            .get_node(v)
                            .is_some_and(|n| n.addr == addr.to_string())
                })
                .collect();
            let mut voters: BTreeSet<u64> = config.voter_ids().collect();
            voters.retain(|v| !old.contains(v));
            voters.insert(id);
            raft.change_membership(voters, false)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(old)
        };
        match replaced.await {
            Ok(old) => tracing::info!(%addr, id, ?old, "replaced a voter that lost its state"),
            Err(e) => {
                tracing::warn!(%addr, id, error = %e, "could not replace a voter that lost its state")
            }
        }
        inner.replacing.store(false, Ordering::Release);
    });
    RaftReply::Rejoining
}

/// Serves an RPC outside openraft; `None` for openraft's own.
pub(crate) fn serve_own(inner: &Arc<Inner>, msg: &RaftMessage) -> Option<Response> {
    let r = match msg.rpc {
        RaftRpc::Probe => RaftReply::Probe(answer(inner)),
        RaftRpc::Rejoin { addr, id } => serve_rejoin(inner, addr, id),
        _ => return None,
    };
    Some(network::reply(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDECIDED: Option<ProbeAnswer> = Some(ProbeAnswer {
        exists: false,
        decided: false,
        leader: None,
    });
    const BLANK: Option<ProbeAnswer> = Some(ProbeAnswer {
        exists: false,
        decided: true,
        leader: None,
    });
    const EXISTS: Option<ProbeAnswer> = Some(ProbeAnswer {
        exists: true,
        decided: true,
        leader: None,
    });

    #[test]
    fn one_voter_that_knows_the_cluster_makes_a_blank_voter_rejoin() {
        assert_eq!(
            decide(&[None, EXISTS, None, None], 5, false, false),
            Decision::Rejoin
        );
        assert_eq!(
            decide(&[BLANK, BLANK, BLANK, EXISTS], 5, true, true),
            Decision::Rejoin
        );
    }

    #[test]
    fn a_blank_majority_bootstraps_and_the_first_voter_waits_for_all_or_patience() {
        // Itself and two others of five: a majority, decided or not.
        assert_eq!(
            decide(&[BLANK, BLANK, None, None], 5, false, false),
            Decision::Bootstrap
        );
        assert_eq!(
            decide(&[UNDECIDED, UNDECIDED, None, None], 5, false, false),
            Decision::Bootstrap
        );
        // The first voter counts only those that chose the bootstrap id.
        assert_eq!(decide(&[UNDECIDED; 4], 5, true, true), Decision::Wait);
        assert_eq!(
            decide(&[BLANK, BLANK, BLANK, UNDECIDED], 5, true, false),
            Decision::Wait
        );
        assert_eq!(
            decide(&[BLANK, BLANK, None, None], 5, true, false),
            Decision::Wait
        );
        assert_eq!(
            decide(&[BLANK, BLANK, None, None], 5, true, true),
            Decision::Bootstrap
        );
        assert_eq!(decide(&[BLANK; 4], 5, true, false), Decision::Bootstrap);
    }

    #[test]
    fn without_a_majority_of_answers_a_blank_voter_waits() {
        assert_eq!(
            decide(&[BLANK, None, None, None], 5, false, true),
            Decision::Wait
        );
        assert_eq!(decide(&[None, None], 3, true, true), Decision::Wait);
        // A lone voter is its own majority.
        assert_eq!(decide(&[], 1, true, false), Decision::Bootstrap);
    }

    #[test]
    fn fresh_ids_never_collide_with_bootstrap_ids() {
        let voters: Vec<SocketAddr> = (1..=5)
            .map(|i| format!("127.0.0.1:{}", 8000 + i).parse().unwrap())
            .collect();
        let ids: BTreeSet<u64> = (0..100).map(|_| fresh_id(&voters)).collect();
        assert_eq!(ids.len(), 100);
        assert!(voters.iter().all(|v| !ids.contains(&voter_id(*v))));
    }
}
