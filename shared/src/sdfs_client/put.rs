//! The put pipeline: a blocking thread reads and hashes the file while the
//! leader plans; the bytes stream down the replica chain; the leader commits
//! (asked again through the holders if its answer is lost); an unconfirmed
//! commit is settled.

use super::local::{local_file_size, open_local};
use super::{Phase, Progress, ProgressFn, PutPhases, PutReport, Sdfs, agent_error_or, timed};
use crate::api::{Request, Response};
use crate::auth::put_seal::{self, PutKey, PutSeal};
use crate::client::{read_response, send_request, unexpected};
use crate::conn::{Conn, FrameWrite};
use crate::error::{Error, Result};
use crate::framing::{DEFAULT_MAX_FRAME, write_frame};
use crate::sdfs::{
    Checksum, DataRequest, MetaRequest, MetaResponse, note_unreached, validate_name,
};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;
use tokio::sync::mpsc;

/// A put's bytes are cut into at least this many frames (down to
/// [`MIN_FRAME`]), so that each replica of the chain forwards a small file
/// while it is still receiving it instead of after the whole of it.
const FRAMES_PER_PUT: u64 = 16;

/// Smallest data frame of a put.
const MIN_FRAME: usize = 64 << 10;

/// Bytes of a put's file asked from the disk at once when reading starts
/// (the rest follows by sequential readahead).
const PREFETCH: u64 = 8 << 20;

/// Chunks buffered between the disk thread and the network, per transfer.
const CHUNKS_IN_FLIGHT: usize = 2;

impl Sdfs {
    /// Stores `local` as the next version of `name`.
    pub async fn put(
        &self,
        local: &Path,
        name: &str,
        progress: ProgressFn<'_>,
    ) -> Result<PutReport> {
        validate_name(name)?;
        let start = Instant::now();
        let size = local_file_size(local)?;
        // Reading starts before the plan, so the file's first bytes come off
        // the disk while the leader plans (and before its Raft write).
        let chunks = spawn_reader(open_local(local)?, put_frame(size, self.opts.chunk_size));
        let begin = MetaRequest::BeginPut {
            name: name.into(),
            size,
        };
        let plan = self.meta(begin).await?;
        let mut phases = PutPhases {
            plan: start.elapsed(),
            ..PutPhases::default()
        };
        let MetaResponse::PutPlan {
            version,
            chain,
            quorum,
            plan,
        } = plan
        else {
            return Err(unexpected(Response::Control(plan.into())));
        };
        let put = PutTarget {
            local,
            chunks,
            name,
            version,
            plan,
            size,
        };
        match self
            .store_and_commit(put, chain, quorum, progress, &mut phases)
            .await
        {
            Ok((holders, failed, checksum)) => Ok(PutReport {
                name: name.into(),
                version,
                size,
                checksum,
                holders,
                failed,
                elapsed: start.elapsed(),
                phases,
            }),
            Err(e) => {
                let abort = MetaRequest::AbortPut {
                    name: name.into(),
                    version,
                    plan,
                };
                // Best effort: the leader also expires the pending put itself.
                let _ = self.meta(abort).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_and_commit(
        &self,
        put: PutTarget<'_>,
        chain: Vec<SocketAddr>,
        quorum: usize,
        progress: ProgressFn<'_>,
        phases: &mut PutPhases,
    ) -> Result<(Vec<SocketAddr>, Vec<(SocketAddr, String)>, Checksum)> {
        let (name, version, size, plan) = (put.name, put.version, put.size, put.plan);
        let start = Instant::now();
        if chain.is_empty() {
            return Err(Error::unexpected(format!(
                "the leader gave no replica for \"{name}\" v{version}"
            )));
        }
        // A head that cannot be reached is skipped while enough of the chain is left.
        let mut head = 0;
        let mut skipped = Vec::new();
        let mut stream = loop {
            match self.conn(chain[head], self.opts.io_timeout).await {
                Ok(s) => break s,
                // Enough of the chain is left after skipping this head.
                Err(_) if chain.len() - head > quorum.max(1) => {
                    skipped.push((chain[head], "unreachable".to_string()));
                    head += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // On an encrypted connection the data frames are sealed end to end
        // with a fresh key, so the chain forwards them without reopening.
        let seal = if stream.is_encrypted() {
            let key = PutKey::generate().map_err(|e| {
                Error::unexpected(format!("no random bytes for the put's key: {e}"))
            })?;
            Some(key)
        } else {
            None
        };
        let sealer = seal.as_ref().map(|k| PutSeal::new(k, plan, version));
        let write = DataRequest::Write {
            name: name.into(),
            version,
            size,
            checksum: None,
            downstream: chain[head + 1..].to_vec(),
            plan,
            seal,
        };
        let addr = chain[head];
        let (holders, chain_failed, checksum) = match self
            .stream_put(
                &mut stream,
                addr,
                write,
                sealer.as_ref(),
                put.local,
                put.chunks,
                size,
                progress,
            )
            .await
        {
            Ok(h) => h,
            Err(e) => return Err(agent_error_or(&mut stream, e).await),
        };
        self.keep(addr, stream);
        let mut failed = skipped;
        failed.extend(chain_failed);
        note_unreached(&chain, &holders, &mut failed, "not reached");
        if holders.len() < quorum {
            return Err(Error::QuorumNotReached {
                name: name.into(),
                stored: holders.len(),
                quorum,
                failed,
            });
        }
        progress(Progress {
            phase: Phase::Committing,
            done: size,
            total: size,
        });
        phases.store = start.elapsed();
        let start = Instant::now();
        let commit = MetaRequest::CommitPut {
            name: name.into(),
            version,
            checksum,
            holders: holders.clone(),
            plan,
        };
        let answer = match self.meta(commit.clone()).await {
            // Our agent went away with the answer (it may have led, too): the
            // commit is idempotent, so ask it again through the holders.
            Err(e) if e.is_transient() => match self.commit_through(commit, &holders).await? {
                Some(answer) => answer,
                None => {
                    return Err(Error::CommitUnknown {
                        name: name.into(),
                        version,
                        reason: e.to_string(),
                    });
                }
            },
            r => r?,
        };
        match answer {
            MetaResponse::Committed { .. } | MetaResponse::Done => {}
            MetaResponse::Unconfirmed { .. } => {
                progress(Progress {
                    phase: Phase::Settling,
                    done: size,
                    total: size,
                });
                let ask = MetaRequest::PutOutcome {
                    name: name.into(),
                    version,
                    checksum,
                    plan,
                };
                let lost = || Error::PutLost {
                    name: name.into(),
                    version,
                };
                let unsettled = |waited| Error::CommitUnsettled {
                    name: name.into(),
                    version,
                    waited,
                };
                self.settle(ask, lost, unsettled).await?;
            }
            other => return Err(unexpected(Response::Control(other.into()))),
        }
        phases.commit = start.elapsed();
        Ok((holders, failed, checksum))
    }

    /// Asks `commit` again through each holder other than our agent (after a
    /// lost answer or an unreachable agent): the first answer, a refusal as
    /// an error, or `None` if no holder answers.
    async fn commit_through(
        &self,
        commit: MetaRequest,
        holders: &[SocketAddr],
    ) -> Result<Option<MetaResponse>> {
        for &h in holders.iter().filter(|&&h| h != self.agent) {
            let other = Sdfs::with_options(h, self.opts.clone());
            match other.meta(commit.clone()).await {
                Ok(r) => return Ok(Some(r)),
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Sends `write`, the file's bytes from `chunks` (hashed as they were
    /// read), then their checksum; what the chain stored, and the checksum.
    #[allow(clippy::too_many_arguments)]
    async fn stream_put(
        &self,
        stream: &mut Conn,
        addr: SocketAddr,
        write: DataRequest,
        sealer: Option<&PutSeal>,
        local: &Path,
        mut chunks: mpsc::Receiver<std::io::Result<Chunk>>,
        size: u64,
        progress: ProgressFn<'_>,
    ) -> Result<(Vec<SocketAddr>, Vec<(SocketAddr, String)>, Checksum)> {
        let io = self.opts.io_timeout;
        timed(addr, io, send_request(stream, &Request::Data(write))).await?;
        let mut sent = 0u64;
        progress(Progress {
            phase: Phase::Sending,
            done: 0,
            total: size,
        });
        let local_err = |reason| Error::LocalFile {
            path: local.display().to_string(),
            reason,
        };
        let mut checksum = None;
        let mut frames = 0u64;
        while let Some(chunk) = chunks.recv().await {
            let mut bytes = match chunk.map_err(local_err)? {
                Chunk::Data(bytes) => bytes,
                Chunk::Checksum(c) => {
                    checksum = Some(c);
                    break;
                }
            };
            sent += bytes.len() as u64;
            if sent > size {
                break;
            }
            match sealer {
                Some(s) => {
                    s.seal(frames, false, &mut bytes);
                    let mut b = stream.raw().bypass();
                    timed(addr, io, write_frame(&mut b, &bytes, DEFAULT_MAX_FRAME)).await?;
                }
                None => {
                    let w = write_frame(stream.raw(), &bytes, DEFAULT_MAX_FRAME);
                    timed(addr, io, w).await?;
                }
            }
            frames += 1;
            progress(Progress {
                phase: Phase::Sending,
                done: sent,
                total: size,
            });
        }
        let checksum = match checksum {
            Some(c) if sent == size => c,
            _ => {
                return Err(local_err(std::io::Error::other(format!(
                    "changed while being stored: {size} bytes expected, {sent} read"
                ))));
            }
        };
        match sealer {
            Some(s) => {
                let end = s.end_frame(frames);
                let mut b = stream.raw().bypass();
                timed(addr, io, write_frame(&mut b, &end, DEFAULT_MAX_FRAME)).await?;
            }
            None => timed(addr, io, write_frame(stream.raw(), &[], DEFAULT_MAX_FRAME)).await?,
        }
        timed(addr, io, stream.write_frame(&checksum, DEFAULT_MAX_FRAME)).await?;
        progress(Progress {
            phase: Phase::Committing,
            done: size,
            total: size,
        });
        match timed(addr, self.opts.store_timeout, read_response(stream)).await? {
            Response::Stored { holders, failed } => Ok((holders, failed, checksum)),
            other => Err(unexpected(other)),
        }
    }
}

/// The file a put sends and what it becomes.
struct PutTarget<'a> {
    local: &'a Path,
    /// The file's bytes, then their checksum, from [`spawn_reader`].
    chunks: mpsc::Receiver<std::io::Result<Chunk>>,
    name: &'a str,
    version: u64,
    /// The plan's id, for the commit.
    plan: u64,
    size: u64,
}

/// What the reading thread sends.
enum Chunk {
    /// The next bytes.
    Data(Vec<u8>),
    /// The checksum of every byte sent, last.
    Checksum(Checksum),
}

/// Reads `file` on a blocking thread into chunks of `chunk` bytes (the last
/// may be shorter), at most [`CHUNKS_IN_FLIGHT`] ahead of the consumer,
/// hashing them as it goes; the checksum comes after the last chunk.
fn spawn_reader(mut file: std::fs::File, chunk: usize) -> mpsc::Receiver<std::io::Result<Chunk>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let chunk = chunk.max(1);
    tokio::task::spawn_blocking(move || {
        crate::disk::read_sequentially(&file, PREFETCH);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match fill(&mut file, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            // Room for a sealed frame's tag, so sealing it in place does not move it.
            let mut bytes = Vec::with_capacity(n + put_seal::TAG_LEN);
            bytes.extend_from_slice(&buf[..n]);
            if tx.blocking_send(Ok(Chunk::Data(bytes))).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(Chunk::Checksum(*hasher.finalize().as_bytes())));
    });
    rx
}

/// The data frame size of a put of `size` bytes: a sixteenth of the file,
/// at least [`MIN_FRAME`] and at most `chunk` (the agents' limit).
fn put_frame(size: u64, chunk: usize) -> usize {
    let chunk = chunk.max(1);
    usize::try_from(size / FRAMES_PER_PUT)
        .unwrap_or(usize::MAX)
        .clamp(MIN_FRAME.min(chunk), chunk)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_puts_go_in_small_frames_and_large_ones_in_whole_chunks() {
        let mib = 1 << 20;
        assert_eq!(put_frame(0, mib), 64 << 10);
        assert_eq!(put_frame(mib as u64, mib), 64 << 10);
        assert_eq!(put_frame(4 * mib as u64, mib), 256 << 10);
        assert_eq!(put_frame(64 * mib as u64, mib), mib);
        assert_eq!(put_frame(u64::MAX, mib), mib);
        // The agents' limit wins over the smallest frame.
        assert_eq!(put_frame(mib as u64, 4096), 4096);
    }
}
