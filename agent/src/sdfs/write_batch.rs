//! `Data(WriteBatch)`: the files of a batched put down the chain in one
//! stream. Each data frame goes at once to the next replica (the forwarder)
//! and to a blocking writer that cuts the stream into the files by their
//! sizes, writes each to its temp pair and checks it against its checksum.
//! After the end frame one `syncfs` makes every temp pair durable and the
//! files are renamed into place ([`Store::finish_batch`]); the agent answers
//! `StoredBatch` with, per file, itself first if it stored it, then whatever
//! the rest of the chain stored.
//!
//! Every file's checksum is known before its bytes, so each replica checks
//! each file on its own and the bytes always go on down the chain: a file
//! this agent could not store (a full disk, other bytes in place) fails here
//! only. A broken or over-long stream abandons the whole batch.
//!
//! [`Store::finish_batch`]: super::store::Store::finish_batch

use super::error::SdfsError;
use super::local::{Chunk, Piece};
use super::stats::Counters;
use super::store::{ObjectMeta, Store, TempObject};
use super::{Ctx, STREAM_QUEUE, peer};
use dml_shared::RemoteError;
use dml_shared::api::{Request, Response};
use dml_shared::conn::{Conn, FrameWrite};
use dml_shared::sdfs::{
    BatchFile, DataRequest, MAX_BATCH_BYTES, MAX_BATCH_FILES, StoredFile, note_unreached,
    validate_name,
};
use dml_shared::wire::{self, Kind};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The fields of a `DataRequest::WriteBatch`.
#[derive(Clone, Debug)]
pub struct BatchArgs {
    pub files: Vec<BatchFile>,
    pub downstream: Vec<SocketAddr>,
    pub plan: u64,
}

/// Why a batch request is refused before any byte is read.
fn check(b: &BatchArgs) -> Result<u64, RemoteError> {
    if b.files.is_empty() || b.files.len() > MAX_BATCH_FILES {
        return Err(RemoteError::invalid(format!(
            "a batched write holds 1 to {MAX_BATCH_FILES} files, not {}",
            b.files.len()
        )));
    }
    let total = b
        .files
        .iter()
        .map(|f| f.size)
        .fold(0u64, u64::saturating_add);
    if total > MAX_BATCH_BYTES {
        return Err(RemoteError::invalid(format!(
            "a batched write holds at most {MAX_BATCH_BYTES} bytes, not {total}"
        )));
    }
    for (i, f) in b.files.iter().enumerate() {
        validate_name(&f.name)
            .map_err(|e| RemoteError::invalid(format!("file {} of the batch: {e}", i + 1)))?;
    }
    Ok(total)
}

pub async fn serve_write_batch(
    ctx: &Arc<Ctx>,
    b: BatchArgs,
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    let total = match check(&b) {
        Ok(t) => t,
        Err(why) => {
            let msg = Response::Error(why);
            stream
                .write_frame(&peer::response(&msg), ctx.max_frame)
                .await?;
            // The bytes that follow cannot be read as requests: close.
            return Err(io::Error::from(io::ErrorKind::InvalidInput).into());
        }
    };
    let local = BatchWriter::begin(&ctx.store, &b);
    let mut fwd = (!b.downstream.is_empty()).then(|| BatchForwarder::start(ctx, &b));
    let mut received = 0u64;
    loop {
        // Upstream gone or silent: dropping the writer and forwarder abandons both.
        let frame = super::write::upload_frame(ctx, stream, false).await?;
        if frame.is_empty() {
            break;
        }
        received += frame.len() as u64;
        if received > total {
            let msg = Response::Error(RemoteError::invalid(format!(
                "the batch's stream is longer than its {total} bytes"
            )));
            stream
                .write_frame(&peer::response(&msg), ctx.max_frame)
                .await?;
            return Err(io::Error::from(io::ErrorKind::InvalidData).into());
        }
        let chunk: Chunk = Arc::new(frame);
        if let Some(f) = &mut fwd {
            f.send(chunk.clone()).await;
        }
        // A writer that stopped reports why at the end.
        local.send(chunk).await;
    }
    Counters::add(&ctx.counters.bytes_written, received);
    let down = async {
        match fwd {
            Some(f) => f.finish().await,
            None => Vec::new(),
        }
    };
    let (stored, down) = tokio::join!(local.finish(), down);
    let n = b.files.len();
    let mut answer = Vec::with_capacity(n);
    for (i, f) in b.files.iter().enumerate() {
        let mut d = down.get(i).cloned().unwrap_or_default();
        let mut holders = Vec::new();
        let mut failed = Vec::new();
        match stored.get(i) {
            Some(Ok(_)) => {
                Counters::bump(&ctx.counters.writes);
                holders.push(ctx.agent);
            }
            Some(Err(e)) => {
                Counters::bump(&ctx.counters.write_errors);
                if matches!(e, SdfsError::DiskFull { .. }) {
                    Counters::bump(&ctx.counters.disk_full);
                }
                tracing::warn!(name = %f.name, version = f.version, error = %e, "SDFS: batched write of a file failed");
                failed.push((ctx.agent, e.to_string()));
            }
            None => failed.push((ctx.agent, "no result from the local writer".into())),
        }
        holders.extend(d.holders.drain(..).filter(|h| *h != ctx.agent));
        failed.append(&mut d.failed);
        answer.push(StoredFile { holders, failed });
    }
    tracing::debug!(files = n, bytes = received, "SDFS: stored a batch");
    stream
        .write_frame(
            &peer::response(&Response::StoredBatch(answer)),
            ctx.max_frame,
        )
        .await
}

/// The batch's files being written on this agent, on a blocking thread.
struct BatchWriter {
    tx: mpsc::Sender<Piece>,
    join: JoinHandle<Vec<Result<ObjectMeta, SdfsError>>>,
    files: usize,
}

impl BatchWriter {
    fn begin(store: &Store, b: &BatchArgs) -> Self {
        let (tx, rx) = mpsc::channel::<Piece>(STREAM_QUEUE);
        let (store, files, plan) = (store.clone(), b.files.clone(), b.plan);
        let n = files.len();
        let join = tokio::task::spawn_blocking(move || write_files(&store, &files, plan, rx));
        Self { tx, join, files: n }
    }

    async fn send(&self, chunk: Chunk) {
        let _ = self.tx.send(Piece::Chunk(chunk)).await;
    }

    /// Ends the stream: one result per file.
    async fn finish(self) -> Vec<Result<ObjectMeta, SdfsError>> {
        let _ = self.tx.send(Piece::End(None)).await;
        match self.join.await {
            Ok(r) => r,
            Err(e) => (0..self.files)
                .map(|_| {
                    Err(SdfsError::Stream {
                        peer: "local writer".into(),
                        reason: e.to_string(),
                    })
                })
                .collect(),
        }
    }
}

/// Cuts the stream into `files` by their sizes and writes each to its temp
/// pair; at the end, syncs and places them all. A channel closed without
/// `End` abandons every file (dropping a temp object removes it).
fn write_files(
    store: &Store,
    files: &[BatchFile],
    plan: u64,
    mut rx: mpsc::Receiver<Piece>,
) -> Vec<Result<ObjectMeta, SdfsError>> {
    let begin = |f: &BatchFile| -> Result<TempObject, SdfsError> {
        let mut o = store.begin(&f.name, f.version, f.size, f.checksum)?;
        o.set_plan(Some(plan));
        Ok(o)
    };
    let mut objs: Vec<Result<TempObject, SdfsError>> = Vec::with_capacity(files.len());
    // Bytes still due to the last file begun.
    let mut left = 0u64;
    let mut ended = false;
    while let Some(piece) = rx.blocking_recv() {
        match piece {
            Piece::Chunk(c) => {
                let mut rest: &[u8] = &c;
                while !rest.is_empty() {
                    while left == 0 && objs.len() < files.len() {
                        let f = &files[objs.len()];
                        objs.push(begin(f));
                        left = f.size;
                    }
                    // More bytes than the files hold: the network loop
                    // refuses the stream before this, so just stop.
                    if left == 0 {
                        break;
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    if let Some(slot) = objs.last_mut()
                        && let Ok(o) = slot
                        && let Err(e) = o.write(&rest[..take])
                    {
                        *slot = Err(e);
                    }
                    rest = &rest[take..];
                    left -= take as u64;
                }
            }
            Piece::Written(ack) => {
                let _ = ack.send(());
            }
            Piece::End(_) => {
                ended = true;
                break;
            }
        }
    }
    if !ended {
        return files
            .iter()
            .map(|f| {
                Err(SdfsError::Aborted {
                    agent: store.agent(),
                    name: f.name.clone(),
                    version: f.version,
                })
            })
            .collect();
    }
    // Files the stream never reached (empty ones, or a short stream: their
    // size check fails).
    while objs.len() < files.len() {
        objs.push(begin(&files[objs.len()]));
    }
    let mut ok = Vec::new();
    let mut at = Vec::new();
    let mut results: Vec<Option<Result<ObjectMeta, SdfsError>>> = Vec::new();
    for (i, o) in objs.into_iter().enumerate() {
        match o {
            Ok(o) => {
                ok.push(o);
                at.push(i);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    for (i, r) in at.into_iter().zip(store.finish_batch(ok)) {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .zip(files)
        .map(|(r, f)| {
            r.unwrap_or_else(|| {
                Err(SdfsError::Aborted {
                    agent: store.agent(),
                    name: f.name.clone(),
                    version: f.version,
                })
            })
        })
        .collect()
}

/// Streams the batch to the next live replica on its own task.
struct BatchForwarder {
    tx: Option<mpsc::Sender<Piece>>,
    join: JoinHandle<Vec<StoredFile>>,
}

impl BatchForwarder {
    fn start(ctx: &Arc<Ctx>, b: &BatchArgs) -> Self {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let join = tokio::spawn(forward(ctx.clone(), b.clone(), rx));
        Self { tx: Some(tx), join }
    }

    async fn send(&mut self, chunk: Chunk) {
        if let Some(tx) = &self.tx
            && tx.send(Piece::Chunk(chunk)).await.is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the stream; per file, what the rest of the chain stored.
    async fn finish(mut self) -> Vec<StoredFile> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End(None)).await;
        }
        self.join.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "SDFS: batch forwarder task failed");
            Vec::new()
        })
    }
}

/// Connects to the first reachable replica downstream, relays the pieces
/// and returns, per file, what the rest of the chain stored; every
/// downstream replica that is not a holder of a file is in its `failed`.
async fn forward(ctx: Arc<Ctx>, b: BatchArgs, rx: mpsc::Receiver<Piece>) -> Vec<StoredFile> {
    let stall = ctx.stall_timeout();
    let n = b.files.len();
    // Failures this hop saw, the same for every file.
    let mut hop_failed: Vec<(SocketAddr, String)> = Vec::new();
    let req_for = |rest: &[SocketAddr]| {
        Request::Data(DataRequest::WriteBatch {
            files: b.files.clone(),
            downstream: rest.to_vec(),
            plan: b.plan,
        })
    };
    let conn = peer::open_next_hop(
        &ctx.peers,
        &b.downstream,
        req_for,
        ctx.max_frame,
        stall,
        &mut hop_failed,
    )
    .await;
    let mut per_file: Vec<StoredFile> = vec![StoredFile::default(); n];
    if let Some((next, mut s, remaining)) = conn {
        // As in `write.rs`: each hop waits longer than the one after it.
        let reply_timeout = stall + stall / 2 * (remaining as u32 - 1);
        match relay(&ctx, next, &mut s, rx, reply_timeout).await {
            Ok(Response::StoredBatch(files)) if files.len() == n => {
                per_file = files;
                ctx.peers.put(next, s);
            }
            Ok(Response::Error(e)) => hop_failed.push((next, e.message)),
            Ok(other) => hop_failed.push((next, format!("unexpected answer {other:?}"))),
            Err(SdfsError::Aborted { .. }) => return per_file,
            Err(e) => {
                tracing::warn!(replica = %next, error = %e, "SDFS: the rest of the chain failed a batch");
                let why = match e {
                    SdfsError::Stalled { .. } => "timed out".to_string(),
                    e => e.to_string(),
                };
                hop_failed.push((next, why));
            }
        }
    }
    let why = "not reached: the chain broke before it";
    for f in &mut per_file {
        let mut failed = hop_failed.clone();
        failed.append(&mut f.failed);
        note_unreached(&b.downstream, &f.holders, &mut failed, why);
        f.failed = failed;
    }
    per_file
}

/// Sends the pieces to `next` and reads its answer (an `Error` included).
async fn relay(
    ctx: &Ctx,
    next: SocketAddr,
    s: &mut Conn,
    mut rx: mpsc::Receiver<Piece>,
    reply_timeout: std::time::Duration,
) -> Result<Response, SdfsError> {
    let stall = ctx.stall_timeout();
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Chunk(c) => peer::send_data(s, next, &c, ctx.max_frame, stall).await?,
            Piece::Written(_) => {}
            Piece::End(_) => {
                peer::send_data(s, next, &[], ctx.max_frame, stall).await?;
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
        name: "(batch)".into(),
        version: 0,
    })
}
