//! `/healthz` and `/readyz`, read from the services' handles like a scrape.
//!
//! - healthy: the membership loop answers within [`SOURCE_TIMEOUT`] (as
//!   the systemd watchdog checks), so the runtime and that loop tick;
//! - ready: joined to the membership, the SDFS store open, and a
//!   control-plane leader known (and, if this agent leads, its majority
//!   answering).

use super::Sources;
use super::http::Probe;
use super::scrape::{SOURCE_TIMEOUT, bounded};

/// Liveness.
pub async fn health(s: &Sources) -> Probe {
    match bounded(s.membership.id()).await {
        Some(Some(_)) => Ok(()),
        Some(None) => Err("the membership loop has stopped".into()),
        None => Err(format!("the membership loop did not answer within {SOURCE_TIMEOUT:?}").into()),
    }
}

/// Readiness; the first reason found is given.
pub async fn ready(s: &Sources) -> Probe {
    match bounded(s.membership.id()).await {
        Some(Some(id)) if id.joined => {}
        Some(Some(_)) => return Err("not joined to the membership".into()),
        _ => return Err("the membership loop does not answer".into()),
    }
    if s.sdfs.store().is_none() {
        return Err("the SDFS store is not open".into());
    }
    let Some(info) = bounded(s.control.leader_status()).await else {
        return Err("the control plane does not answer".into());
    };
    match (info.leader, info.unacked_ms) {
        (None, _) => Err("no control-plane leader known".into()),
        (Some(l), Some(ms)) if l == s.me => {
            Err(format!("this agent leads but its majority has not answered for {ms} ms").into())
        }
        _ => Ok(()),
    }
}
