//! Asking agents about SDFS over the agent API (not through `dml`): who leads, what is
//! committed, what an agent stores. These are the tests' ground truth.

use crate::view::API_TIMEOUT;
use anyhow::{Context, Result, anyhow, bail};
use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::client::Client;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::sdfs::{DataRequest, FileInfo, Holding, MetaRequest, MetaResponse};
use std::net::SocketAddr;
use std::time::Duration;

/// Time for one control-plane answer used as ground truth. Longer than
/// [`API_TIMEOUT`] (meant for polls that retry): on a loaded 2-core machine
/// a leader elected a moment ago can take more than 2 s to answer a listing.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// `Request::Leader` to `addr`.
pub async fn leader_info(addr: SocketAddr) -> Result<LeaderInfo> {
    match Client::new(addr)
        .with_timeout(API_TIMEOUT)
        .call(&Request::Leader)
        .await
        .with_context(|| format!("leader of {addr}"))?
    {
        Response::Leader(l) => Ok(l),
        other => bail!("{addr} answered Leader with {other:?}"),
    }
}

/// One metadata request to `addr`, following one `NotLeader` redirect.
pub async fn meta(addr: SocketAddr, req: MetaRequest) -> Result<MetaResponse> {
    match control(addr, ControlRequest::Sdfs(req.clone())).await? {
        ControlResponse::Sdfs(m) => Ok(m),
        other => bail!("{addr} answered {req:?} with {other:?}"),
    }
}

/// One control-plane request to `addr`, following one `NotLeader` redirect.
pub async fn control(addr: SocketAddr, req: ControlRequest) -> Result<ControlResponse> {
    let mut to = addr;
    for _ in 0..2 {
        let resp = Client::new(to)
            .with_timeout(CONTROL_TIMEOUT)
            .call(&Request::Control {
                req: req.clone(),
                leader_only: false,
            })
            .await
            .map_err(|e| anyhow!("{req:?} to {to} (asked through {addr}) failed: {e}"))?;
        match resp {
            Response::Control(m) => return Ok(m),
            Response::NotLeader { leader: Some(l) } if l != to => to = l,
            other => bail!("{to} answered {req:?} with {other:?}"),
        }
    }
    bail!("{req:?}: redirected more than once from {addr}")
}

/// The committed files whose names match `glob`, as `addr` (or the leader) says.
pub async fn list(addr: SocketAddr, glob: &str) -> Result<Vec<FileInfo>> {
    match meta(
        addr,
        MetaRequest::List {
            glob: glob.to_string(),
        },
    )
    .await?
    {
        MetaResponse::Files(f) => Ok(f),
        other => bail!("List answered with {other:?}"),
    }
}

/// The committed versions of `name` (empty when there are none), found by listing it:
/// an exact name is a glob matching only itself when it holds no `*` or `?`.
pub async fn file(addr: SocketAddr, name: &str) -> Result<Option<FileInfo>> {
    if name.contains(['*', '?']) {
        bail!("test file names must not hold glob characters: \"{name}\"");
    }
    let files = list(addr, name).await?;
    Ok(files
        .into_iter()
        .find(|f| f.name == name)
        .filter(|f| !f.versions.is_empty()))
}

/// The versions `addr` says it stores (`Data(Store)`).
pub async fn store(addr: SocketAddr) -> Result<Vec<Holding>> {
    match Client::new(addr)
        .with_timeout(API_TIMEOUT)
        .call(&Request::Data(DataRequest::Store))
        .await
        .with_context(|| format!("store of {addr}"))?
    {
        Response::Holdings(h) => Ok(h),
        other => Err(anyhow!("{addr} answered Store with {other:?}")),
    }
}
