//! `Data(Read)`: `ReadStart`, the bytes as raw frames, an empty end frame;
//! and `Data(BadCopy)`, a reader's report that those bytes were corrupt.
//!
//! On a connection that is not encrypted (the local socket, or TCP with
//! `security.encrypt_tcp = false`) the bytes go from the page cache to the
//! socket with `sendfile(2)` on a blocking thread; on an encrypted one a
//! blocking thread reads the file ahead in chunks and this task writes them
//! through the connection's encryption. Either way they are not re-hashed: the reader
//! checks the end-to-end checksum, moves to another replica on a mismatch and
//! reports it with `BadCopy`, which re-hashes this copy and, if it is
//! corrupt, deletes and re-fetches it like scrub does. Scrub still checks
//! every copy at rest. A copy shorter than its recorded size ends without the
//! end frame (a broken stream to the reader) and is handled the same way.

use super::error::SdfsError;
use super::stats::Counters;
use super::store::Verdict;
use super::{Ctx, peer, scrub};
use dml_shared::api::Response;
use dml_shared::channel::Sealable;
use dml_shared::conn::{Conn, FrameWrite};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

/// How a send ended, besides an IO error.
enum Sent {
    Whole(u64),
    /// The file ended this many bytes into its recorded size.
    Short(u64),
}

/// Bytes of a copy asked of the disk as soon as it is opened: one
/// readahead window, so the first read overlaps the `ReadStart` answer and
/// the hand-over to the sending thread (100-250 µs here) and the kernel's
/// own readahead takes over from there. In a standalone test of a cold 1 MiB
/// file sent with `sendfile` 250 µs after its open, 128 KiB ahead took
/// 0.12-0.26 ms less than none; asking for the whole file was slower than
/// none (one large read instead of readahead's pipelined ones).
const HEAD_START: u64 = 128 << 10;

pub async fn serve_read(
    ctx: &Arc<Ctx>,
    name: &str,
    version: u64,
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    let store = ctx.store.clone();
    let n = name.to_string();
    // The first bytes start coming off the disk while `ReadStart` goes out.
    let opened = tokio::task::spawn_blocking(move || {
        let opened = store.open_read(&n, version);
        if let Ok((_, file)) = &opened {
            dml_shared::disk::read_sequentially(file, HEAD_START);
        }
        opened
    })
    .await
    .map_err(io::Error::other)?;
    let (meta, file) = match opened {
        Ok(o) => o,
        Err(e) => {
            Counters::bump(&ctx.counters.read_errors);
            let msg = Response::Error((&e).into());
            return stream
                .write_frame(&peer::response(&msg), ctx.max_frame)
                .await;
        }
    };
    let start = Response::ReadStart {
        size: meta.size,
        checksum: meta.checksum,
    };
    stream
        .write_frame(&peer::response(&start), ctx.max_frame)
        .await?;

    let (chunk, stall, size) = (
        ctx.cfg.chunk_size.max(1) as u64,
        ctx.stall_timeout(),
        meta.size,
    );
    let sent = if stream.is_encrypted() {
        send_encrypted(file, stream, size, chunk, stall).await
    } else {
        // A duplicate of the socket, switched to blocking mode with a send
        // timeout, lets a blocking thread use sendfile while this task waits;
        // the socket goes back to non-blocking before the connection is used
        // again. Only where the bytes need no encryption (see the module docs).
        stream.raw().widen_send_buffer();
        let sock = socket2::Socket::from(stream.raw().socket().as_fd().try_clone_to_owned()?);
        tokio::task::spawn_blocking(move || {
            let r = send_frames(file, &sock, size, chunk, stall);
            let restored = sock
                .set_write_timeout(None)
                .and_then(|()| sock.set_nonblocking(true));
            r.and_then(|s| restored.map(|()| s))
        })
        .await
        .map_err(io::Error::other)?
    };
    match sent {
        Ok(Sent::Whole(n)) => {
            Counters::bump(&ctx.counters.reads);
            Counters::add(&ctx.counters.bytes_read, n);
            Ok(())
        }
        Ok(Sent::Short(n)) => {
            Counters::bump(&ctx.counters.read_errors);
            scrub::handle_corrupt(ctx.clone(), name.to_string(), version);
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the copy of \"{name}\" v{version} on {} ends after {n} of {size} bytes",
                    ctx.agent
                ),
            )
            .into())
        }
        Err(source) => {
            Counters::bump(&ctx.counters.read_errors);
            let e = SdfsError::Io {
                agent: ctx.agent,
                action: "send",
                path: ctx.store.path_of(name, version).display().to_string(),
                source,
            };
            tracing::debug!(error = %e, "SDFS: read ended early");
            Err(io::Error::other(e.to_string()).into())
        }
    }
}

/// Chunks read ahead of the encryption: one being sent, these waiting.
const READ_AHEAD_CHUNKS: usize = 2;

/// Like [`send_frames`], through the connection's encryption: a blocking
/// thread reads the chunks ahead while this task encrypts and sends them.
/// Each chunk is read behind room for its frame's length into a
/// [`Sealable`], laid out as whole transport messages, so frame and length
/// are sealed in place and written from there (no copy after the read), and
/// the buffers go back to the reader: a fresh megabyte per chunk cost a page
/// fault every 4 KiB and an munmap, which `sendfile` never pays.
async fn send_encrypted(
    file: std::fs::File,
    stream: &mut Conn,
    size: u64,
    chunk: u64,
    stall: Duration,
) -> io::Result<Sent> {
    use tokio::io::AsyncWriteExt;
    const LEN: usize = 4;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Sealable>>(READ_AHEAD_CHUNKS);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Sealable>();
    let reader = tokio::task::spawn_blocking(move || {
        dml_shared::disk::read_sequentially(&file, 0);
        let mut left = size;
        let mut f = &file;
        while left > 0 {
            let want = chunk.min(left) as usize;
            let mut buf = back_rx
                .try_recv()
                .unwrap_or_else(|_| Sealable::with_capacity(LEN + chunk as usize));
            buf.clear();
            buf.extend_from_slice(&[0; LEN]);
            let r = buf.read_from(&mut f, want).map(|_| buf);
            let end = !matches!(&r, Ok(b) if b.len() == LEN + want);
            left -= r.as_ref().map_or(0, |b| (b.len() - LEN) as u64);
            if tx.blocking_send(r).is_err() || end {
                return;
            }
        }
    });
    let mut sent = 0u64;
    let out = stream.raw();
    let stall = stall.max(Duration::from_millis(1));
    while sent < size {
        let want = chunk.min(size - sent);
        let mut framed = match rx.recv().await {
            Some(r) => r?,
            None => break,
        };
        let n = framed.len() - LEN;
        if n > 0 {
            framed.patch(0, &(n as u32).to_be_bytes());
            within(stall, out.write_sealed(&mut framed)).await?;
        }
        sent += n as u64;
        let _ = back_tx.send(framed);
        if (n as u64) < want {
            break;
        }
    }
    drop(rx);
    let _ = reader.await;
    if sent < size {
        // Flush what went, so the reader sees where the copy ended.
        let _ = out.flush().await;
        return Ok(Sent::Short(sent));
    }
    within(stall, out.write_all(&0u32.to_be_bytes())).await?;
    match tokio::time::timeout(stall, out.flush()).await {
        Ok(r) => r?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    }
    Ok(Sent::Whole(sent))
}

/// `write`, failed with `TimedOut` if it takes longer than `stall`.
async fn within(stall: Duration, write: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    match tokio::time::timeout(stall, write).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Sends `size` bytes of `file` as frames of at most `chunk` bytes, then the
/// empty end frame, over a blocking socket; a frame that cannot move for
/// `stall` fails.
fn send_frames(
    file: std::fs::File,
    sock: &socket2::Socket,
    size: u64,
    chunk: u64,
    stall: Duration,
) -> io::Result<Sent> {
    dml_shared::disk::read_sequentially(&file, 0);
    sock.set_nonblocking(false)?;
    sock.set_write_timeout(Some(stall.max(Duration::from_millis(1))))?;
    let mut out = sock;
    let mut sent = 0u64;
    while sent < size {
        let n = chunk.min(size - sent);
        out.write_all(&(n as u32).to_be_bytes())?;
        let copied = send_file_range(&file, sock, sent, n)?;
        sent += copied;
        if copied < n {
            return Ok(Sent::Short(sent));
        }
    }
    out.write_all(&0u32.to_be_bytes())?;
    Ok(Sent::Whole(sent))
}

/// Sends up to `n` bytes of `file` from `offset` to `sock`; fewer only where
/// the file ends. Linux: `sendfile(2)`, page cache to socket without a copy
/// through user space (`std::io::copy` does not use it for a `Take<&File>`
/// and moved 8 KiB per read and send).
#[cfg(target_os = "linux")]
fn send_file_range(
    file: &std::fs::File,
    sock: &socket2::Socket,
    offset: u64,
    n: u64,
) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let mut done = 0u64;
    while done < n {
        let want = usize::try_from(n - done).unwrap_or(usize::MAX);
        // SAFETY: two open descriptors and a valid offset pointer; the kernel
        // copies at most `want` bytes and advances `off`.
        let r = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        match r {
            0 => break, // the file ended
            r if r > 0 => done += r as u64,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    // The send timeout of a blocking socket.
                    io::ErrorKind::WouldBlock => return Err(io::ErrorKind::TimedOut.into()),
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(done)
}

#[cfg(not(target_os = "linux"))]
fn send_file_range(
    file: &std::fs::File,
    mut sock: &socket2::Socket,
    offset: u64,
    n: u64,
) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    io::copy(&mut f.take(n), &mut sock)
}

/// `Data(BadCopy)`: answers at once, then re-hashes the copy (paced by the
/// repair throttle, counted as scrubbed) and repairs it if it is corrupt or
/// missing.
pub async fn serve_bad_copy(
    ctx: &Arc<Ctx>,
    name: String,
    version: u64,
    stream: &mut Conn,
) -> dml_shared::Result<()> {
    if let Some(m) = ctx.store.get(&name, version) {
        let c = ctx.clone();
        tokio::spawn(async move {
            let c2 = c.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                c2.store
                    .verify(&m, c2.cfg.chunk_size, |n| c2.throttle.take_blocking(n))
            })
            .await;
            Counters::bump(&c.counters.scrubbed);
            match verdict {
                Ok(Ok(Verdict::Intact)) => {
                    tracing::info!(%name, version, "SDFS: a reader's bad-copy report: the copy here is intact");
                }
                Ok(Ok(Verdict::Corrupt | Verdict::Missing)) => {
                    scrub::handle_corrupt(c, name, version);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "SDFS: cannot re-check a reported copy"),
                Err(e) => tracing::warn!(error = %e, "SDFS: re-check task failed"),
            }
        });
    }
    stream
        .write_frame(&peer::response(&Response::Ok), ctx.max_frame)
        .await
}
