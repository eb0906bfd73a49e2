//! `Data(Write)`: the pipelined chain write. Each data frame read from
//! upstream goes at once to the local writer and to the next live replica
//! (the forwarder); after the empty end frame (and the checksum, when it
//! comes after the bytes) the agent answers `Stored` with itself first, then
//! whatever the rest of the chain stored.
//!
//! Failures: a replica down at connect time is skipped (the chain continues
//! with the one after it); one that fails mid-stream only shortens the holder
//! list. Either way `Stored.failed` names it with its reason (its own `Error`
//! answer, or "unreachable"/"timed out" as seen from here), after the failures
//! reported further down. A full disk here says nothing about the bytes, so
//! the agent keeps relaying them: it answers `Stored` with what the rest of the
//! chain stored and itself first in `failed`, and the put commits without it
//! if a write quorum remains (otherwise the leader aborts the version and
//! reconcile removes the copies; no reader ever sees it). Any other local
//! failure (a bad checksum, a broken stream) abandons the downstream stream,
//! drains the upstream one and answers `Error` with the reason.

use super::error::SdfsError;
use super::local::{Chunk, LocalWriter, Piece};
use super::stats::Counters;
use super::{Ctx, STREAM_QUEUE, peer};
use dml_shared::api::{Request, Response};
use dml_shared::auth::put_seal::{self, Opener, PutKey, PutSeal};
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::sdfs::{Checksum, DataRequest, note_unreached, validate_name};
use dml_shared::wire::{self, Kind};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The fields of a `DataRequest::Write`.
#[derive(Clone, Debug)]
pub struct WriteArgs {
    pub name: String,
    pub version: u64,
    pub size: u64,
    /// `None`: it follows the bytes in a sealed frame.
    pub checksum: Option<Checksum>,
    pub downstream: Vec<SocketAddr>,
    /// The put's plan id.
    pub plan: u64,
    /// The put's key: its frames are sealed end to end (see
    /// `dml_shared::auth::put_seal`).
    pub seal: Option<PutKey>,
}

pub async fn serve_write(
    ctx: &Arc<Ctx>,
    w: WriteArgs,
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    let mut failure: Option<SdfsError> = validate_name(&w.name).err().map(Into::into);
    let mut local = failure.is_none().then(|| {
        LocalWriter::begin(
            &ctx.store,
            &w.name,
            w.version,
            w.size,
            w.checksum,
            Some(w.plan),
            w.seal.as_ref().map(|k| PutSeal::new(k, w.plan, w.version)),
            STREAM_QUEUE,
        )
    });
    let mut fwd =
        (failure.is_none() && !w.downstream.is_empty()).then(|| Forwarder::start(ctx, &w));
    let mut received = 0u64;
    let sealed = w.seal.is_some();
    // A sealed put's end frame: opened by the local writer at once, sent down
    // the chain only once every byte here is written (as the plain empty one).
    let mut end_frame: Option<Chunk> = None;
    loop {
        // Upstream gone or silent: dropping the writer and forwarder abandons both.
        let frame = upload_frame(ctx, stream, sealed).await?;
        if sealed && Opener::is_end(frame.len()) {
            let end: Chunk = Arc::new(frame);
            if let Some(writer) = &local
                && !writer.send(end.clone()).await
            {
                let writer = local.take().expect("checked above");
                failure = writer.finish(None).await.err();
            }
            end_frame = Some(end);
            break;
        }
        if frame.is_empty() {
            break;
        }
        let chunk: Chunk = Arc::new(frame);
        // Downstream first: a local failure below must not lose it a chunk.
        if let Some(f) = &mut fwd {
            f.send(chunk.clone()).await;
        }
        let Some(writer) = &local else {
            continue; // relaying or draining after a failure
        };
        received += (chunk.len() - if sealed { put_seal::TAG_LEN } else { 0 }) as u64;
        if !writer.send(chunk).await {
            let writer = local.take().expect("checked above");
            failure = writer.finish(None).await.err();
            if !relays_after(&failure) {
                fwd = None;
            }
        }
    }
    // The checksum after the bytes, read even after a failure to stay in step.
    let trailer = match w.checksum {
        Some(_) => None,
        None => match read_trailer(ctx, stream).await? {
            Ok(c) => Some(c),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        },
    };
    Counters::add(&ctx.counters.bytes_written, received);
    let aborted = || SdfsError::Aborted {
        agent: ctx.agent,
        name: w.name.clone(),
        version: w.version,
    };
    // A local write error not seen yet: any but a full disk must not let the
    // end frame go down the chain, or the replicas after this one would keep
    // a copy of bytes this one found wrong.
    if failure.is_none()
        && let Some(writer) = &local
        && !writer.written().await
    {
        let writer = local.take().expect("checked above");
        failure = Some(writer.finish(trailer).await.err().unwrap_or_else(aborted));
    }
    if !relays_after(&failure) {
        fwd = None;
    }
    // Err: this agent's failure, with what the rest of the chain stored if it
    // relayed the bytes past its full disk.
    let result: Result<Downstream, (SdfsError, Option<Downstream>)> = match (failure, local, fwd) {
        (None, Some(writer), fwd) => {
            let down = async {
                match fwd {
                    Some(f) => f.finish(end_frame, trailer).await,
                    None => Downstream::default(),
                }
            };
            let (stored, down) = tokio::join!(writer.finish(trailer), down);
            stored.map(|_| down).map_err(|e| (e, None))
        }
        (Some(e), _, Some(f)) => Err((e, Some(f.finish(end_frame, trailer).await))),
        (failure, ..) => Err((failure.unwrap_or_else(aborted), None)),
    };
    let resp = match result {
        Ok(down) => {
            Counters::bump(&ctx.counters.writes);
            let mut holders = vec![ctx.agent];
            holders.extend(down.holders.into_iter().filter(|h| *h != ctx.agent));
            let failed = down.failed;
            if failed.is_empty() {
                tracing::debug!(name = %w.name, version = w.version, ?holders, "SDFS: stored");
            } else {
                tracing::warn!(name = %w.name, version = w.version, ?holders, ?failed, "SDFS: stored on fewer replicas");
            }
            Response::Stored { holders, failed }
        }
        Err((e, down)) => {
            Counters::bump(&ctx.counters.write_errors);
            if matches!(e, SdfsError::DiskFull { .. }) {
                Counters::bump(&ctx.counters.disk_full);
            }
            tracing::warn!(name = %w.name, version = w.version, error = %e, "SDFS: write failed");
            match down {
                Some(down) => {
                    let mut failed = vec![(ctx.agent, e.to_string())];
                    failed.extend(down.failed);
                    Response::Stored {
                        holders: down.holders,
                        failed,
                    }
                }
                None => Response::Error((&e).into()),
            }
        }
    };
    stream
        .write_frame(&peer::response(&resp), ctx.max_frame)
        .await
}

/// Whether the bytes still go down the chain after this local failure: only
/// after a full disk, which says nothing about them.
fn relays_after(failure: &Option<SdfsError>) -> bool {
    matches!(failure, None | Some(SdfsError::DiskFull { .. }))
}

/// What the rest of the chain stored, and which of its replicas did not (why).
#[derive(Debug, Default)]
struct Downstream {
    holders: Vec<SocketAddr>,
    failed: Vec<(SocketAddr, String)>,
}

/// Streams the chunks to the next live replica on its own task.
struct Forwarder {
    tx: Option<mpsc::Sender<Piece>>,
    join: JoinHandle<Downstream>,
    downstream: Vec<SocketAddr>,
}

impl Forwarder {
    fn start(ctx: &Arc<Ctx>, w: &WriteArgs) -> Self {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let join = tokio::spawn(forward(ctx.clone(), w.clone(), rx));
        Self {
            tx: Some(tx),
            join,
            downstream: w.downstream.clone(),
        }
    }

    /// Queues a chunk; after a downstream failure chunks are dropped.
    async fn send(&mut self, chunk: Chunk) {
        if let Some(tx) = &self.tx
            && tx.send(Piece::Chunk(chunk)).await.is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the stream (with a sealed put's end frame, and the checksum if
    /// it came after the bytes); what the rest of the chain stored and which
    /// of its replicas did not.
    async fn finish(mut self, end_frame: Option<Chunk>, trailer: Option<Checksum>) -> Downstream {
        if let Some(end) = end_frame {
            self.send(end).await;
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End(trailer)).await;
        }
        match self.join.await {
            Ok(down) => down,
            Err(e) => {
                tracing::warn!(error = %e, "SDFS: forwarder task failed");
                let mut down = Downstream::default();
                let why = format!("not reached: the forwarder failed ({e})");
                note_unreached(&self.downstream, &[], &mut down.failed, &why);
                down
            }
        }
    }
}

/// Connects to the first reachable replica of the downstream chain (skipping
/// those that refuse), then relays pieces and returns what it stored: its
/// `Stored` holders and failures, plus this hop's view of any replica that
/// was unreachable, stalled or refused. Every downstream replica that is not
/// a holder ends up in `failed`.
/// The next data frame of an upload (empty at its end), within
/// `put_timeout`; an upstream that closes or stays silent is an error.
/// A sealed put's frames come outside the connection's Noise messages.
pub(super) async fn upload_frame(
    ctx: &Ctx,
    stream: &mut Conn,
    sealed: bool,
) -> dml_shared::Result<Vec<u8>> {
    let chunk = ctx.cfg.chunk_size;
    let read = async {
        if sealed {
            let mut r = stream.raw().bypass();
            peer::read_data_frame(&mut r, ctx.max_frame, chunk + put_seal::TAG_LEN).await
        } else {
            peer::read_data_frame(stream.raw(), ctx.max_frame, chunk).await
        }
    };
    match tokio::time::timeout(ctx.cfg.put_timeout, read).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut).into()),
    }
}

async fn forward(ctx: Arc<Ctx>, w: WriteArgs, rx: mpsc::Receiver<Piece>) -> Downstream {
    let stall = ctx.stall_timeout();
    let mut down = Downstream::default();
    let req_for = |rest: &[SocketAddr]| {
        Request::Data(DataRequest::Write {
            name: w.name.clone(),
            version: w.version,
            size: w.size,
            checksum: w.checksum,
            downstream: rest.to_vec(),
            plan: w.plan,
            seal: w.seal.clone(),
        })
    };
    let conn = peer::open_next_hop(
        &ctx.peers,
        &w.downstream,
        req_for,
        ctx.max_frame,
        stall,
        &mut down.failed,
    )
    .await;
    if let Some((next, mut s, remaining)) = conn {
        // Each hop waits longer than the one after it, so a replica stalled at
        // the end of the chain times out first and the holders before it are
        // still reported: stall, 1.5 stall, 2 stall, ... from the tail up.
        let reply_timeout = stall + stall / 2 * (remaining as u32 - 1);
        match relay(&ctx, &w, next, &mut s, rx, reply_timeout).await {
            Ok(Response::Stored { holders, failed }) => {
                down.holders = holders;
                down.failed.extend(failed);
                ctx.peers.put(next, s);
            }
            Ok(Response::Error(e)) => down.failed.push((next, e.message)),
            Ok(other) => down
                .failed
                .push((next, format!("unexpected answer {other:?}"))),
            // This replica gave up; nobody reads the outcome.
            Err(SdfsError::Aborted { .. }) => return down,
            Err(e) => {
                tracing::warn!(replica = %next, error = %e, "SDFS: the rest of the chain failed; fewer holders");
                // A replica that refuses mid-stream may have said why before closing.
                let why = match e {
                    SdfsError::Stalled { .. } => "timed out".to_string(),
                    e => match peer::recv(&mut s, next, ctx.max_frame, stall / 4).await {
                        Ok(f) => match wire::decode::<Response>(Kind::Response, &f) {
                            Ok(Response::Error(e)) => e.message,
                            _ => e.to_string(),
                        },
                        Err(_) => e.to_string(),
                    },
                };
                down.failed.push((next, why));
            }
        }
    }
    let why = "not reached: the chain broke before it";
    note_unreached(&w.downstream, &down.holders, &mut down.failed, why);
    down
}

/// Sends the pieces to `next` and reads its answer (an `Error` included).
async fn relay(
    ctx: &Ctx,
    w: &WriteArgs,
    next: SocketAddr,
    s: &mut Conn,
    mut rx: mpsc::Receiver<Piece>,
    reply_timeout: std::time::Duration,
) -> Result<Response, SdfsError> {
    let stall = ctx.stall_timeout();
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Chunk(c) if w.seal.is_some() => {
                peer::send_sealed_data(s, next, &c, ctx.max_frame, stall).await?
            }
            Piece::Chunk(c) => peer::send_data(s, next, &c, ctx.max_frame, stall).await?,
            Piece::Written(_) => {}
            Piece::End(trailer) => {
                // A sealed put's end frame went as its last chunk.
                if w.seal.is_none() {
                    peer::send_data(s, next, &[], ctx.max_frame, stall).await?;
                }
                if let Some(c) = trailer {
                    peer::send(s, next, &c, ctx.max_frame, stall).await?;
                }
                let f = peer::recv(s, next, ctx.max_frame, reply_timeout).await?;
                return wire::decode::<Response>(Kind::Response, &f).map_err(|e| {
                    SdfsError::Stream {
                        peer: next.to_string(),
                        reason: e.to_string(),
                    }
                });
            }
        }
    }
    Err(SdfsError::Aborted {
        agent: ctx.agent,
        name: w.name.clone(),
        version: w.version,
    })
}

/// Reads the checksum that follows the bytes: the outer error breaks the
/// connection, the inner one fails the write.
async fn read_trailer(
    ctx: &Ctx,
    stream: &mut Conn,
) -> dml_shared::Result<Result<Checksum, SdfsError>> {
    let frame =
        match tokio::time::timeout(ctx.cfg.put_timeout, stream.read_frame(ctx.max_frame)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::from(io::ErrorKind::TimedOut).into()),
        };
    Ok(
        Checksum::try_from(frame.as_slice()).map_err(|_| SdfsError::Stream {
            peer: "upstream".into(),
            reason: format!(
                "the checksum after the bytes is {} bytes, not 32",
                frame.len()
            ),
        }),
    )
}
