//! `Data(Replicate)`: copy a version from the first source that has it,
//! throttled to `sdfs.repair_bytes_per_sec`, verified and stored durably; a
//! source whose bytes do not match is told so (`Data(BadCopy)`).
//! Scrub uses [`fetch`] too, to replace a corrupt copy.

use super::error::SdfsError;
use super::local::LocalWriter;
use super::stats::Counters;
use super::store::ObjectMeta;
use super::{Ctx, STREAM_QUEUE, peer};
use dml_shared::api::{Request, Response};
use dml_shared::conn::{Conn, FrameWrite};
use dml_shared::sdfs::{Checksum, DataRequest, validate_name};
use dml_shared::wire::{self, Kind};
use std::net::SocketAddr;
use std::sync::Arc;

/// The version to copy, as the metadata describes it.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
}

pub async fn serve_replicate(
    ctx: &Arc<Ctx>,
    want: Wanted,
    sources: &[SocketAddr],
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    let resp = match fetch(ctx, &want, sources).await {
        Ok(_) => Response::Stored {
            holders: vec![ctx.agent],
            failed: Vec::new(),
        },
        Err(e) => Response::Error((&e).into()),
    };
    stream
        .write_frame(&peer::response(&resp), ctx.max_frame)
        .await
}

/// Makes sure this agent holds `want`, copying it from the first working
/// source (this agent itself is skipped). Already holding it is success.
pub async fn fetch(
    ctx: &Ctx,
    want: &Wanted,
    sources: &[SocketAddr],
) -> Result<ObjectMeta, SdfsError> {
    validate_name(&want.name)?;
    if let Some(m) = ctx.store.get(&want.name, want.version)
        && m.checksum == want.checksum
        && m.size == want.size
    {
        return Ok(m);
    }
    let mut tried = Vec::new();
    for src in sources.iter().filter(|s| **s != ctx.agent) {
        match fetch_from(ctx, want, *src).await {
            Ok(m) => {
                Counters::bump(&ctx.counters.repairs);
                tracing::info!(name = %want.name, version = want.version, source = %src, "SDFS: copy replicated");
                return Ok(m);
            }
            // No other source will make room on this disk.
            Err(e @ SdfsError::DiskFull { .. }) => {
                Counters::bump(&ctx.counters.repair_errors);
                Counters::bump(&ctx.counters.disk_full);
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(name = %want.name, version = want.version, source = %src, error = %e, "SDFS: replica source failed");
                tried.push(format!("{src}: {e}"));
            }
        }
    }
    Counters::bump(&ctx.counters.repair_errors);
    Err(SdfsError::NoSource {
        name: want.name.clone(),
        version: want.version,
        tried: if tried.is_empty() {
            "no other holder".into()
        } else {
            tried.join("; ")
        },
    })
}

async fn fetch_from(ctx: &Ctx, want: &Wanted, src: SocketAddr) -> Result<ObjectMeta, SdfsError> {
    let stall = ctx.stall_timeout();
    let req = Request::Data(DataRequest::Read {
        name: want.name.clone(),
        version: want.version,
    });
    let mut s = peer::open(src, &req, ctx.max_frame, stall).await?;
    match peer::recv_response(&mut s, src, ctx.max_frame, stall).await? {
        Response::ReadStart { size, checksum }
            if size == want.size && checksum == want.checksum => {}
        other => {
            return Err(SdfsError::Stream {
                peer: src.to_string(),
                reason: format!("holds a different copy or answered {other:?}"),
            });
        }
    }
    let writer = LocalWriter::begin(
        &ctx.store,
        &want.name,
        want.version,
        want.size,
        Some(want.checksum),
        None,
        None,
        STREAM_QUEUE,
    );
    loop {
        let frame = peer::recv_data(&mut s, src, ctx.max_frame, ctx.cfg.chunk_size, stall).await?;
        if frame.is_empty() {
            break;
        }
        ctx.throttle.take(frame.len()).await;
        Counters::add(&ctx.counters.bytes_written, frame.len() as u64);
        if !writer.send(std::sync::Arc::new(frame)).await {
            break; // finish() reports the writer's error
        }
    }
    let stored = writer.finish(None).await;
    if let Err(SdfsError::ChecksumMismatch { .. }) = &stored {
        // The source sent bytes that do not match: let it re-check its copy.
        let bad = Request::Data(DataRequest::BadCopy {
            name: want.name.clone(),
            version: want.version,
        });
        let report = async {
            peer::send(
                &mut s,
                src,
                &wire::encode(Kind::Request, &bad),
                ctx.max_frame,
                stall,
            )
            .await?;
            peer::recv_response(&mut s, src, ctx.max_frame, stall).await
        };
        if let Err(e) = report.await {
            tracing::warn!(source = %src, error = %e, "SDFS: cannot report a bad copy");
        }
    }
    stored
}
