//! Metadata requests from the data side (scrub, reconcile) to the control
//! plane, along the service's [`MetaPath`]: in process through this agent's
//! control plane, or over the API through the shared [`LeaderRouter`].

use super::{Ctx, MetaPath};
use crate::control::ControlHandle;
use dml_shared::router::{LeaderRouter, RouterOptions, into_meta};
use dml_shared::sdfs::{FileInfo, MetaRequest, MetaResponse};
use std::time::Duration;

/// A [`MetaPath`] ready for requests.
pub enum MetaRoute {
    /// This agent's control plane, which forwards to the leader itself.
    Local(ControlHandle),
    /// An agent's API, through a router that finds the leader.
    Remote(LeaderRouter),
}

impl MetaRoute {
    /// `stall` bounds each answer and the whole wait for a leader.
    pub fn new(path: MetaPath, stall: Duration) -> Self {
        match path {
            MetaPath::Local(c) => MetaRoute::Local(c),
            MetaPath::Agent(addr) => {
                let opts = RouterOptions {
                    call_timeout: stall,
                    leader_wait: stall,
                    local_socket: false,
                    ..RouterOptions::default()
                };
                MetaRoute::Remote(LeaderRouter::through(addr, opts))
            }
        }
    }
}

/// Sends one metadata request; errors are worded for a log line.
pub async fn call(ctx: &Ctx, req: MetaRequest) -> Result<MetaResponse, String> {
    let answer = match ctx.meta.get() {
        Some(MetaRoute::Local(control)) => into_meta(ctx.agent, control.meta(req).await),
        Some(MetaRoute::Remote(router)) => router.meta(req).await,
        None => return Err("the control plane is not reachable yet".into()),
    };
    answer.map_err(|e| format!("metadata request failed: {e}"))
}

/// A file's committed versions.
pub async fn stat(ctx: &Ctx, name: &str) -> Result<FileInfo, String> {
    match call(ctx, MetaRequest::Stat { name: name.into() }).await? {
        MetaResponse::File(f) => Ok(f),
        other => Err(format!("unexpected answer to Stat: {other:?}")),
    }
}
