//! `Data(Read)`: `ReadStart`, the bytes as raw frames, an empty end frame.
//! The copy is re-hashed as it is sent; the last chunk is held back until the
//! hash is known, so a corrupt copy ends without the end frame (the reader
//! sees a broken stream and moves to another replica) and is then deleted and
//! re-fetched like scrub does.

use super::error::SdfsError;
use super::stats::Counters;
use super::{Ctx, STREAM_QUEUE, peer, scrub};
use dml_shared::api::Response;
use dml_shared::framing::write_frame;
use std::io::{self, Read};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

enum Out {
    Chunk(Vec<u8>),
    /// The copy matched its checksum; the end frame may go.
    Intact,
    Corrupt,
    Failed(SdfsError),
}

pub async fn serve_read(
    ctx: &Arc<Ctx>,
    name: &str,
    version: u64,
    stream: &mut TcpStream,
) -> dml_shared::Result<()> {
    let store = ctx.store.clone();
    let n = name.to_string();
    let opened = tokio::task::spawn_blocking(move || store.open_read(&n, version))
        .await
        .map_err(io::Error::other)?;
    let (meta, file) = match opened {
        Ok(o) => o,
        Err(e) => {
            Counters::bump(&ctx.counters.read_errors);
            let msg = Response::Error(e.to_string());
            return write_frame(stream, &peer::response(&msg), ctx.max_frame).await;
        }
    };
    let start = Response::ReadStart {
        size: meta.size,
        checksum: meta.checksum,
    };
    write_frame(stream, &peer::response(&start), ctx.max_frame).await?;

    // Disk reads and hashing run on two threads so they overlap.
    let (disk_tx, disk_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(STREAM_QUEUE);
    let chunk = ctx.cfg.chunk_size;
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; chunk];
            let r = read_full(&mut file, &mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            let end = r.as_ref().map_or(true, Vec::is_empty);
            if disk_tx.send(r).is_err() || end {
                return;
            }
        }
    });
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    let (agent, path) = (ctx.agent, ctx.store.path_of(name, version));
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut held: Option<Vec<u8>> = None;
        let mut total = 0u64;
        loop {
            let buf = match disk_rx.recv() {
                Ok(Ok(buf)) if buf.is_empty() => break,
                Ok(Ok(buf)) => buf,
                Ok(Err(source)) => {
                    let e = SdfsError::Io {
                        agent,
                        action: "read",
                        path: path.display().to_string(),
                        source,
                    };
                    let _ = tx.blocking_send(Out::Failed(e));
                    return;
                }
                Err(_) => return,
            };
            hasher.update(&buf);
            total += buf.len() as u64;
            if let Some(prev) = held.replace(buf)
                && tx.blocking_send(Out::Chunk(prev)).is_err()
            {
                return; // the reader went away
            }
        }
        let intact = total == meta.size && *hasher.finalize().as_bytes() == meta.checksum;
        if intact {
            if let Some(last) = held {
                let _ = tx.blocking_send(Out::Chunk(last));
            }
            let _ = tx.blocking_send(Out::Intact);
        } else {
            let _ = tx.blocking_send(Out::Corrupt);
        }
    });

    let mut sent = 0u64;
    while let Some(out) = rx.recv().await {
        match out {
            Out::Chunk(c) => {
                write_frame(stream, &c, ctx.max_frame).await?;
                sent += c.len() as u64;
            }
            Out::Intact => {
                write_frame(stream, &[], ctx.max_frame).await?;
                Counters::bump(&ctx.counters.reads);
                Counters::add(&ctx.counters.bytes_read, sent);
                return Ok(());
            }
            Out::Corrupt => {
                Counters::bump(&ctx.counters.read_errors);
                scrub::handle_corrupt(ctx.clone(), name.to_string(), version);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the copy of \"{name}\" v{version} on {agent} is corrupt"),
                )
                .into());
            }
            Out::Failed(e) => {
                Counters::bump(&ctx.counters.read_errors);
                tracing::warn!(error = %e, "SDFS: read failed");
                return Err(io::Error::other(e.to_string()).into());
            }
        }
    }
    Err(io::Error::other("the disk reader stopped").into())
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
