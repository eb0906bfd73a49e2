//! Reading the agents' membership views over the API and comparing them.

use crate::agent::Agent;
use crate::wait::wait_for;
use anyhow::{Context, Result, bail};
use dml_shared::NodeId;
use dml_shared::api::{MemberInfo, MemberState};
use dml_shared::client::Client;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Time allowed for one API answer; short, so a stopped agent cannot hang a test.
pub const API_TIMEOUT: Duration = Duration::from_secs(2);
/// How often views are polled while waiting for a condition.
pub const VIEW_POLL: Duration = Duration::from_millis(200);

/// The agent's whole membership list, tombstones included.
pub async fn members(addr: SocketAddr) -> Result<Vec<MemberInfo>> {
    Client::new(addr)
        .with_timeout(API_TIMEOUT)
        .members()
        .await
        .with_context(|| format!("members of {addr}"))
}

/// The members the agent lists as alive or suspect (itself included).
pub async fn live_members(addr: SocketAddr) -> Result<BTreeSet<NodeId>> {
    Ok(members(addr)
        .await?
        .into_iter()
        .filter(|m| m.state.is_live())
        .map(|m| m.id)
        .collect())
}

/// The state `addr` lists `id` in, or `None` if it does not list it.
pub async fn state_of(addr: SocketAddr, id: NodeId) -> Result<Option<MemberState>> {
    Ok(members(addr)
        .await?
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.state))
}

/// One check that no observer lists any of `ids` as failed (e.g. after a refuted failure).
pub async fn check_not_failed(observers: &[&Agent], ids: &[NodeId]) -> Result<()> {
    for o in observers {
        let failed: Vec<NodeId> = members(o.addr())
            .await?
            .into_iter()
            .filter(|m| m.state == MemberState::Failed && ids.contains(&m.id))
            .map(|m| m.id)
            .collect();
        if !failed.is_empty() {
            bail!(
                "agent {} ({}) lists {} as failed",
                o.name(),
                o.addr(),
                fmt_ids(&failed)
            );
        }
    }
    Ok(())
}

/// `{a#1, b#2}` for messages.
pub fn fmt_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    let v: Vec<String> = ids.into_iter().map(ToString::to_string).collect();
    format!("{{{}}}", v.join(", "))
}

/// One check that every agent in `agents` lists exactly the agents' current identities as
/// live; returns that set.
pub async fn check_converged(agents: &[&Agent]) -> Result<BTreeSet<NodeId>> {
    let mut expected = BTreeSet::new();
    for a in agents {
        expected.insert(a.current_id().await?);
    }
    for a in agents {
        let live = live_members(a.addr()).await?;
        if live != expected {
            let missing: Vec<_> = expected.difference(&live).collect();
            let extra: Vec<_> = live.difference(&expected).collect();
            bail!(
                "agent {} ({}) lists {} live members, expected {}: missing {}, extra {}",
                a.name(),
                a.addr(),
                live.len(),
                expected.len(),
                fmt_ids(missing),
                fmt_ids(extra)
            );
        }
    }
    Ok(expected)
}

/// Waits until [`check_converged`] holds.
pub async fn wait_converged(agents: &[&Agent], timeout: Duration) -> Result<BTreeSet<NodeId>> {
    let what = format!("{} agents to converge", agents.len());
    wait_for(&what, timeout, VIEW_POLL, async || {
        check_converged(agents).await
    })
    .await
}

/// One check that no observer lists any of `ids` as alive or suspect.
pub async fn check_not_live(observers: &[&Agent], ids: &[NodeId]) -> Result<()> {
    for o in observers {
        let live = live_members(o.addr()).await?;
        let still: Vec<_> = ids.iter().filter(|id| live.contains(id)).collect();
        if !still.is_empty() {
            bail!(
                "agent {} ({}) still lists {} as live",
                o.name(),
                o.addr(),
                fmt_ids(still)
            );
        }
    }
    Ok(())
}

/// Waits until [`check_not_live`] holds.
pub async fn wait_not_live(observers: &[&Agent], ids: &[NodeId], timeout: Duration) -> Result<()> {
    let what = format!(
        "{} to be removed by {} agents",
        fmt_ids(ids),
        observers.len()
    );
    wait_for(&what, timeout, VIEW_POLL, async || {
        check_not_live(observers, ids).await
    })
    .await
}
