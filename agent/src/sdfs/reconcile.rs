//! Reconcile: at start and every `sdfs.reconcile_interval`, remove temp files
//! older than `sdfs.put_timeout`, then ask the metadata which stored versions
//! this agent should keep, delete the others, and fetch again those that
//! hold other bytes than the committed version. When the control plane
//! cannot be asked, nothing is deleted. A copy younger than `put_timeout` is
//! kept whatever the answer: its put or repair may not have committed yet.

use super::error::SdfsError;
use super::meta::MetaError;
use super::replicate::{self, Wanted};
use super::scrub;
use super::stats::Counters;
use super::{Ctx, meta, peer};
use dml_shared::api::Response;
use dml_shared::conn::{Conn, FrameWrite};
use dml_shared::sdfs::{Keep, MetaRequest, MetaResponse};
use dml_shared::{ErrorKind, RemoteError};
use std::sync::Arc;
use tokio::sync::watch;

/// Versions asked about per `Wanted` request, so a request stays far below
/// the frame limit even with 1 KiB names.
const WANTED_BATCH: usize = 1000;
/// Versions asked for per `Assigned` request.
const ASSIGNED_BATCH: u32 = 1000;

/// Why a reconcile pass stopped (nothing more is deleted).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot rescan the store: {0}")]
    Rescan(#[from] SdfsError),
    #[error("the rescan task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: u64,
    pub deleted: u64,
    /// Copies with other bytes than the committed version, fetched again.
    pub refetched: u64,
    /// Copies the metadata assigns here that the disk had lost, fetched again.
    pub restored: u64,
    pub tmp_swept: u64,
}

/// Runs a pass at start, then every `reconcile_interval`, until shutdown.
pub async fn task(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let pass = tokio::select! {
            r = run(&ctx) => r,
            _ = shutdown.changed() => return,
        };
        match pass {
            Ok(r) if r.deleted > 0 || r.refetched > 0 || r.restored > 0 || r.tmp_swept > 0 => {
                tracing::info!(report = ?r, "SDFS: reconciled")
            }
            Ok(_) => {}
            Err(e) => tracing::info!(error = %e, "SDFS: reconcile skipped; nothing deleted"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.cfg.reconcile_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

use dml_shared::clock::unix_ms as now_ms;

/// One pass. An error means the metadata could not be asked (nothing deleted).
pub async fn run(ctx: &Arc<Ctx>) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    let store = ctx.store.clone();
    let put_timeout = ctx.cfg.put_timeout;
    let swept = tokio::task::spawn_blocking(move || {
        let n = store.sweep_tmp(put_timeout);
        store.rescan(false).map(|()| n)
    })
    .await??;
    report.tmp_swept = swept as u64;
    Counters::add(&ctx.counters.tmp_swept, swept as u64);

    let young = now_ms().saturating_sub(put_timeout.as_millis() as u64);
    let objects: Vec<_> = ctx
        .store
        .objects()
        .into_iter()
        .filter(|m| m.stored_ms <= young)
        .collect();
    for batch in objects.chunks(WANTED_BATCH) {
        let items: Vec<_> = batch
            .iter()
            .map(|m| (m.name.clone(), m.version, m.checksum))
            .collect();
        let req = MetaRequest::Wanted {
            node: ctx.agent,
            items,
        };
        let keep = match meta::call(ctx, req).await? {
            MetaResponse::Wanted(keep) if keep.len() == batch.len() => keep,
            other => return Err(MetaError::unexpected("Wanted", &other).into()),
        };
        report.checked += batch.len() as u64;
        for (m, keep) in batch.iter().zip(keep) {
            match keep {
                Keep::Yes => continue,
                Keep::Refetch => {
                    let why = "it holds other bytes than the committed version";
                    Counters::bump(&ctx.counters.reconcile_refetched);
                    if scrub::refetch(ctx, &m.name, m.version, why).await {
                        report.refetched += 1;
                    }
                    continue;
                }
                Keep::No => {}
            }
            if remove(ctx, &m.name, m.version).await {
                report.deleted += 1;
            }
        }
    }
    restore_assigned(ctx, &mut report).await?;
    Ok(report)
}

/// Deletes a copy the metadata no longer wants here; whether it did.
async fn remove(ctx: &Arc<Ctx>, name: &str, version: u64) -> bool {
    let store = ctx.store.clone();
    let owned = name.to_string();
    match tokio::task::spawn_blocking(move || store.remove(&owned, version)).await {
        Ok(Ok(_)) => {
            Counters::bump(&ctx.counters.reconcile_deleted);
            tracing::info!(%name, version, "SDFS: deleted a copy the metadata no longer wants here");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "SDFS: cannot delete a copy");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "SDFS: delete task failed");
            false
        }
    }
}

/// A committed delete's notice (`Data(Drop)`, from the leader): drops at
/// once the copies of `name` numbered up to `through` that the metadata no
/// longer wants here; returns how many. Version numbers are never handed
/// out again, so none of these can be wanted later; asking first still
/// keeps a wrong notice from deleting anything.
pub async fn drop_deleted(ctx: &Arc<Ctx>, name: &str, through: u64) -> Result<u64, MetaError> {
    let held = ctx.store.versions_of(name, through);
    let mut dropped = 0;
    for batch in held.chunks(WANTED_BATCH) {
        let items: Vec<_> = batch
            .iter()
            .map(|m| (m.name.clone(), m.version, m.checksum))
            .collect();
        let req = MetaRequest::Wanted {
            node: ctx.agent,
            items,
        };
        let keep = match meta::call(ctx, req).await? {
            MetaResponse::Wanted(keep) if keep.len() == batch.len() => keep,
            other => return Err(MetaError::unexpected("Wanted", &other)),
        };
        for (m, keep) in batch.iter().zip(keep) {
            if matches!(keep, Keep::No) && remove(ctx, &m.name, m.version).await {
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

/// Serves `Data(Drop)`: [`drop_deleted`], then `Ok` (an error if the
/// metadata could not be asked; the next reconcile pass drops them then).
pub async fn serve_drop(
    ctx: &Arc<Ctx>,
    name: &str,
    through: u64,
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    let resp = match drop_deleted(ctx, name, through).await {
        Ok(n) => {
            tracing::debug!(%name, through, dropped = n, "SDFS: a delete's copies dropped");
            Response::Ok
        }
        Err(e) => Response::Error(RemoteError::new(ErrorKind::Unavailable, e.to_string())),
    };
    stream
        .write_frame(&peer::response(&resp), ctx.max_frame)
        .await
}

/// Fetches again, from the other replicas, every committed version the
/// metadata names this agent a holder of but its disk lacks (a lost or
/// replaced disk, or a bad copy whose re-fetch failed): nothing else would
/// notice, since repair follows membership.
async fn restore_assigned(ctx: &Arc<Ctx>, report: &mut ReconcileReport) -> Result<(), MetaError> {
    let mut after = None;
    loop {
        let req = MetaRequest::Assigned {
            node: ctx.agent,
            after: after.take(),
            limit: ASSIGNED_BATCH,
        };
        let (items, more) = match meta::call(ctx, req).await? {
            MetaResponse::Assigned { items, more } => (items, more),
            other => return Err(MetaError::unexpected("Assigned", &other)),
        };
        for (name, v) in &items {
            if ctx.store.get(name, v.version).is_some() {
                continue;
            }
            let want = Wanted {
                name: name.clone(),
                version: v.version,
                size: v.size,
                checksum: v.checksum,
            };
            tracing::warn!(%name, version = v.version, "SDFS: a copy assigned here is missing; fetching it again");
            match replicate::fetch(ctx, &want, &v.replicas).await {
                Ok(_) => {
                    report.restored += 1;
                    Counters::bump(&ctx.counters.reconcile_restored);
                }
                Err(e) => tracing::warn!(error = %e, "SDFS: missing copy not restored"),
            }
        }
        match items.last() {
            Some((name, v)) if more => after = Some((name.clone(), v.version)),
            _ => return Ok(()),
        }
    }
}
