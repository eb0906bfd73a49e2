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

/// Why a metadata request from the data side got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("the control plane is not reachable yet")]
    NotReachable,
    #[error("metadata request failed: {0}")]
    Failed(#[source] dml_shared::Error),
    #[error("unexpected answer to {request}: {answer}")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
}

impl MetaError {
    /// `answer` was not what `request` expects.
    pub fn unexpected(request: &'static str, answer: &MetaResponse) -> Self {
        MetaError::Unexpected {
            request,
            answer: format!("{answer:?}"),
        }
    }
}

/// Sends one metadata request.
pub async fn call(ctx: &Ctx, req: MetaRequest) -> Result<MetaResponse, MetaError> {
    let answer = match ctx.meta.get() {
        Some(MetaRoute::Local(control)) => into_meta(ctx.agent, control.meta(req).await),
        Some(MetaRoute::Remote(router)) => router.meta(req).await,
        None => return Err(MetaError::NotReachable),
    };
    answer.map_err(MetaError::Failed)
}

/// A file's committed versions.
pub async fn stat(ctx: &Ctx, name: &str) -> Result<FileInfo, MetaError> {
    match call(ctx, MetaRequest::Stat { name: name.into() }).await? {
        MetaResponse::File(f) => Ok(f),
        other => Err(MetaError::unexpected("Stat", &other)),
    }
}
