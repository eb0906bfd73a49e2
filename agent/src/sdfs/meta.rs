//! Metadata requests from the data side (scrub, reconcile) to the control
//! plane, along the service's [`MetaPath`]. One redirect is followed when an
//! agent answers `NotLeader`.

use super::{Ctx, MetaPath};
use dml_shared::api::{Request, Response};
use dml_shared::client::Client;
use dml_shared::sdfs::{FileInfo, MetaRequest, MetaResponse};

/// Sends one metadata request; errors are worded for a log line.
pub async fn call(ctx: &Ctx, req: MetaRequest) -> Result<MetaResponse, String> {
    let (local, mut addr) = match ctx.meta.get() {
        Some(MetaPath::Local(c)) => (Some(c), ctx.agent),
        Some(MetaPath::Agent(a)) => (None, *a),
        None => return Err("the control plane is not reachable yet".into()),
    };
    for hop in 0..2 {
        let answer = match local {
            Some(control) if hop == 0 => match control.meta(req.clone()).await {
                Response::Error(e) => Err(dml_shared::Error::Remote(e)),
                r => Ok(r),
            },
            _ => {
                let mut client = Client::new(addr).with_timeout(ctx.stall_timeout());
                client.call(&Request::Meta(req.clone())).await
            }
        };
        match answer {
            Ok(Response::Meta(m)) => return Ok(m),
            Ok(Response::NotLeader { leader: Some(l) }) if l != addr => addr = l,
            Ok(Response::NotLeader { .. }) => return Err("no leader is known".into()),
            Ok(other) => return Err(format!("unexpected answer from {addr}: {other:?}")),
            Err(e) => return Err(format!("metadata request through {addr} failed: {e}")),
        }
    }
    Err("metadata requests keep being redirected".into())
}

/// A file's committed versions.
pub async fn stat(ctx: &Ctx, name: &str) -> Result<FileInfo, String> {
    match call(ctx, MetaRequest::Stat { name: name.into() }).await? {
        MetaResponse::File(f) => Ok(f),
        other => Err(format!("unexpected answer to Stat: {other:?}")),
    }
}
