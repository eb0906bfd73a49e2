//! Talking to another agent's data path: connect, send a request, read
//! answers (sealed frames) and a file's bytes (raw data frames, checked by the
//! file's checksum), each bounded by a timeout.

use super::error::SdfsError;
use dml_shared::Error;
use dml_shared::api::{Request, Response};
use dml_shared::conn::{Conn, FrameRead, FrameWrite, IdleConns};
use dml_shared::framing::write_frame;
use dml_shared::wire::{self, Kind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

fn broke(peer: SocketAddr, reason: impl ToString) -> SdfsError {
    SdfsError::Stream {
        peer: peer.to_string(),
        reason: reason.to_string(),
    }
}

fn stalled(peer: SocketAddr, reason: String) -> SdfsError {
    SdfsError::Stalled {
        peer: peer.to_string(),
        reason,
    }
}

/// Connects and sends `req` as the first frame.
pub async fn open(
    peer: SocketAddr,
    req: &Request,
    max_frame: usize,
    timeout: Duration,
) -> Result<Conn, SdfsError> {
    let go = async {
        let mut s = Conn::connect(peer).await.map_err(|e| broke(peer, e))?;
        s.write_frame(&wire::encode(Kind::Request, req), max_frame)
            .await
            .map_err(|e| broke(peer, e))?;
        Ok(s)
    };
    tokio::time::timeout(timeout, go)
        .await
        .map_err(|_| stalled(peer, format!("no connection within {timeout:?}")))?
}

/// Sends `req` on an idle connection from `pool` if one is open, else on a
/// new one.
/// The first of `downstream` that takes the request `req_for(rest)` (`rest`:
/// the replicas after it), and how many of the chain remain from it; the
/// ones skipped, with why, go to `failed`.
pub async fn open_next_hop(
    pool: &IdleConns,
    downstream: &[SocketAddr],
    req_for: impl Fn(&[SocketAddr]) -> Request,
    max_frame: usize,
    timeout: Duration,
    failed: &mut Vec<(SocketAddr, String)>,
) -> Option<(SocketAddr, Conn, usize)> {
    for (i, next) in downstream.iter().enumerate() {
        let req = req_for(&downstream[i + 1..]);
        match open_pooled(pool, *next, &req, max_frame, timeout).await {
            Ok(s) => return Some((*next, s, downstream.len() - i)),
            Err(e) => {
                tracing::warn!(replica = %next, error = %e, "SDFS: skipping an unreachable replica");
                let why = match e {
                    SdfsError::Stalled { .. } => "unreachable (timed out)",
                    _ => "unreachable",
                };
                failed.push((*next, why.into()));
            }
        }
    }
    None
}

pub async fn open_pooled(
    pool: &IdleConns,
    peer: SocketAddr,
    req: &Request,
    max_frame: usize,
    timeout: Duration,
) -> Result<Conn, SdfsError> {
    if let Some(mut s) = pool.take(peer) {
        let body = wire::encode(Kind::Request, req);
        if send(&mut s, peer, &body, max_frame, timeout).await.is_ok() {
            return Ok(s);
        }
    }
    open(peer, req, max_frame, timeout).await
}

/// Writes one raw data frame within `timeout`.
pub async fn send_data(
    s: &mut Conn,
    peer: SocketAddr,
    bytes: &[u8],
    max_frame: usize,
    timeout: Duration,
) -> Result<(), SdfsError> {
    written(peer, timeout, write_frame(s.raw(), bytes, max_frame)).await
}

/// Writes one data frame of a sealed put (see
/// `dml_shared::auth::put_seal`) as it was received: outside the
/// connection's Noise messages, within `timeout`.
pub async fn send_sealed_data(
    s: &mut Conn,
    peer: SocketAddr,
    bytes: &[u8],
    max_frame: usize,
    timeout: Duration,
) -> Result<(), SdfsError> {
    let mut w = s.raw().bypass();
    written(peer, timeout, write_frame(&mut w, bytes, max_frame)).await
}

/// Writes one sealed frame within `timeout`.
pub async fn send(
    s: &mut Conn,
    peer: SocketAddr,
    bytes: &[u8],
    max_frame: usize,
    timeout: Duration,
) -> Result<(), SdfsError> {
    written(peer, timeout, s.write_frame(bytes, max_frame)).await
}

/// A write bounded by `timeout`, its error naming the peer.
async fn written(
    peer: SocketAddr,
    timeout: Duration,
    write: impl Future<Output = dml_shared::Result<()>>,
) -> Result<(), SdfsError> {
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r.map_err(|e| broke(peer, e)),
        Err(_) => Err(stalled(peer, format!("stalled for {timeout:?}"))),
    }
}

/// Reads one sealed frame within `timeout`; a close is an error.
pub async fn recv(
    s: &mut Conn,
    peer: SocketAddr,
    max_frame: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SdfsError> {
    match tokio::time::timeout(timeout, s.read_frame(max_frame)).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(broke(peer, "connection closed")),
        Ok(Err(e)) => Err(broke(peer, e)),
        Err(_) => Err(stalled(peer, format!("nothing received for {timeout:?}"))),
    }
}

/// Reads one raw data frame of about `chunk` bytes within `timeout`.
pub async fn recv_data(
    s: &mut Conn,
    peer: SocketAddr,
    max_frame: usize,
    chunk: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SdfsError> {
    let read = read_data_frame(s.raw(), max_frame, chunk);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(broke(peer, "connection closed")),
        Ok(Err(e)) => Err(broke(peer, e)),
        Err(_) => Err(stalled(peer, format!("nothing received for {timeout:?}"))),
    }
}

/// Reads one raw data frame like `framing::read_frame`, but sizes the buffer
/// for a whole chunk at once (no regrowth per frame); a frame announced larger
/// than `chunk` still grows only as its bytes arrive. `Ok(None)`: the peer
/// closed before a whole length prefix (callers treat both as a broken stream).
/// On an encrypted connection the channel opens whole messages straight into
/// the spare capacity ([`dml_shared::channel::MAX_PLAIN`]), so the buffer
/// needs no zeroing.
pub async fn read_data_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
    chunk: usize,
) -> dml_shared::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(Error::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    let mut buf = Vec::with_capacity(len.min(chunk));
    let got = r.take(len as u64).read_to_end(&mut buf).await?;
    if got < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(buf))
}

/// Reads one answer; `Response::Error` becomes an error naming the peer.
pub async fn recv_response(
    r: &mut Conn,
    peer: SocketAddr,
    max_frame: usize,
    timeout: Duration,
) -> Result<Response, SdfsError> {
    let frame = recv(r, peer, max_frame, timeout).await?;
    match wire::decode::<Response>(Kind::Response, &frame) {
        Ok(Response::Error(e)) => Err(broke(peer, e.message)),
        Ok(resp) => Ok(resp),
        Err(e) => Err(broke(peer, e)),
    }
}

/// Encodes an answer.
pub fn response(resp: &Response) -> Vec<u8> {
    wire::encode(Kind::Response, resp)
}
