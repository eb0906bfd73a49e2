//! Batched puts (group commit) of many small files: one plan from the
//! leader for the whole batch, its files' bytes down one replica chain in
//! one stream (each replica makes them all durable with one sync), one
//! commit (one Raft entry) for all of them. Each file is still its own
//! version, checked by its own checksum, and committed or refused on its
//! own: a file is reported stored only once a write quorum holds its bytes
//! durably and its version is committed, as with a single put.
//!
//! [`Sdfs::put_many`] sorts files into batches (by [`Options::batch_files`]
//! and [`Options::batch_bytes`]); files larger than
//! [`Options::batch_file_max`] go one at a time.
//!
//! [`Options::batch_files`]: super::Options::batch_files
//! [`Options::batch_bytes`]: super::Options::batch_bytes
//! [`Options::batch_file_max`]: super::Options::batch_file_max

use super::local::local_file_size;
use super::{Phase, Progress, ProgressFn, PutPhases, PutReport, Sdfs, agent_error_or, timed};
use crate::api::{Request, Response};
use crate::client::{read_response, send_request, unexpected};
use crate::conn::Conn;
use crate::error::{Error, RemoteError, Result};
use crate::framing::{DEFAULT_MAX_FRAME, write_frame};
use crate::sdfs::{
    BatchCommit, BatchFile, Checksum, DataRequest, FileCommit, MAX_BATCH_BYTES, MAX_BATCH_FILES,
    MetaRequest, MetaResponse, StoredFile, note_unreached, validate_name,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// First and longest pause before asking the leader again ([`Sdfs::meta_again`]).
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(800);

/// One file of a batch, read and hashed.
struct Loaded {
    /// Index in the caller's list.
    index: usize,
    name: String,
    bytes: Vec<u8>,
    checksum: Checksum,
}

/// What `put_many` runs: one file alone, or a batch.
enum Job {
    One(usize, PathBuf, String),
    Batch(Vec<(usize, PathBuf, String)>),
}

impl Sdfs {
    /// Puts every (local file, SDFS name), small files in batches, a few
    /// batches (or large files) at a time ([`super::Options::concurrency`]).
    /// One result per file, in order; a failed file does not stop the
    /// others. `progress` counts files.
    pub async fn put_many(
        &self,
        files: Vec<(PathBuf, String)>,
        progress: ProgressFn<'_>,
    ) -> Vec<Result<PutReport>> {
        let total = files.len() as u64;
        let mut results: Vec<Option<Result<PutReport>>> = (0..files.len()).map(|_| None).collect();
        let jobs = self.sort_into_jobs(files, &mut results);
        let mut done = results.iter().filter(|r| r.is_some()).count() as u64;
        progress(Progress {
            phase: Phase::Files,
            done,
            total,
        });
        let mut jobs = jobs.into_iter();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < self.opts.concurrency.max(1) {
                let Some(job) = jobs.next() else { break };
                let me = self.clone();
                set.spawn(async move {
                    match job {
                        Job::One(i, path, name) => {
                            let r = me.put(&path, &name, &super::no_progress).await;
                            vec![(i, r)]
                        }
                        Job::Batch(files) => me.put_batch(files).await,
                    }
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            for (i, r) in joined.unwrap_or_default() {
                results[i] = Some(r);
                done += 1;
            }
            progress(Progress {
                phase: Phase::Files,
                done,
                total,
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Io(std::io::Error::other("task panicked")))))
            .collect()
    }

    /// Files with a bad name or that cannot be read get their error in
    /// `results` at once; the rest become jobs, small files batched in order.
    fn sort_into_jobs(
        &self,
        files: Vec<(PathBuf, String)>,
        results: &mut [Option<Result<PutReport>>],
    ) -> Vec<Job> {
        let max_files = self.opts.batch_files.clamp(1, MAX_BATCH_FILES);
        let max_bytes = self.opts.batch_bytes.min(MAX_BATCH_BYTES);
        let mut jobs = Vec::new();
        let mut batch: Vec<(usize, PathBuf, String)> = Vec::new();
        let mut bytes = 0u64;
        for (i, (path, name)) in files.into_iter().enumerate() {
            if let Err(e) = validate_name(&name) {
                results[i] = Some(Err(e));
                continue;
            }
            let size = match local_file_size(&path) {
                Ok(s) => s,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if size > self.opts.batch_file_max.min(max_bytes) {
                jobs.push(Job::One(i, path, name));
                continue;
            }
            if !batch.is_empty() && (batch.len() == max_files || bytes + size > max_bytes) {
                jobs.push(Job::Batch(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += size;
            batch.push((i, path, name));
        }
        if !batch.is_empty() {
            jobs.push(Job::Batch(batch));
        }
        jobs
    }

    /// Puts one batch; a result per file, with its index.
    async fn put_batch(
        &self,
        files: Vec<(usize, PathBuf, String)>,
    ) -> Vec<(usize, Result<PutReport>)> {
        let start = Instant::now();
        let read = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(index, path, name)| {
                    let read = std::fs::read(&path).map_err(|reason| Error::LocalFile {
                        path: path.display().to_string(),
                        reason,
                    });
                    (index, name, read)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut out = Vec::new();
        let mut loaded = Vec::new();
        for (index, name, r) in read {
            match r {
                Ok(bytes) => loaded.push(Loaded {
                    index,
                    checksum: *blake3::hash(&bytes).as_bytes(),
                    name,
                    bytes,
                }),
                Err(e) => out.push((index, Err(e))),
            }
        }
        if loaded.is_empty() {
            return out;
        }
        let n = loaded.len();
        let whole = |e: &Error, l: &Loaded| Error::BatchFailed {
            name: l.name.clone(),
            files: n,
            kind: e.kind(),
            reason: e.to_string(),
        };
        match self.store_batch(&loaded, start).await {
            Ok(reports) => out.extend(loaded.iter().map(|l| l.index).zip(reports)),
            Err(e) => out.extend(loaded.iter().map(|l| (l.index, Err(whole(&e, l))))),
        }
        out
    }

    /// Plan, stream and commit: per file (in order) its report or error;
    /// `Err` when the batch failed as a whole.
    async fn store_batch(
        &self,
        files: &[Loaded],
        start: Instant,
    ) -> Result<Vec<Result<PutReport>>> {
        let begin = MetaRequest::BeginPutBatch {
            files: files
                .iter()
                .map(|f| (f.name.clone(), f.bytes.len() as u64))
                .collect(),
        };
        let (versions, chain, quorum, plan) = match self.meta_again(begin).await? {
            MetaResponse::PutBatchPlan {
                versions,
                chain,
                quorum,
                plan,
            } if versions.len() == files.len() => (versions, chain, quorum, plan),
            other => return Err(unexpected(Response::Control(other.into()))),
        };
        let planned = start.elapsed();
        let store_start = Instant::now();
        if chain.is_empty() {
            return Err(Error::unexpected("the leader gave no replica for a batch"));
        }
        let mut head = 0;
        let mut skipped = Vec::new();
        let mut stream = loop {
            match self.conn(chain[head], self.opts.io_timeout).await {
                Ok(s) => break s,
                Err(_) if chain.len() - head > quorum.max(1) => {
                    skipped.push((chain[head], "unreachable".to_string()));
                    head += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let write = DataRequest::WriteBatch {
            files: files
                .iter()
                .zip(&versions)
                .map(|(f, v)| BatchFile {
                    name: f.name.clone(),
                    version: *v,
                    size: f.bytes.len() as u64,
                    checksum: f.checksum,
                })
                .collect(),
            downstream: chain[head + 1..].to_vec(),
            plan,
        };
        let addr = chain[head];
        let stored = match self.stream_batch(&mut stream, addr, write, files).await {
            Ok(s) => s,
            Err(e) => return Err(agent_error_or(&mut stream, e).await),
        };
        self.keep(addr, stream);
        let store_time = store_start.elapsed();
        let commit_start = Instant::now();
        // Per file: its error, or who stored it (to commit).
        let mut outcome: Vec<Result<StoredFile>> = Vec::new();
        let mut commits = Vec::new();
        for ((f, v), s) in files.iter().zip(&versions).zip(stored) {
            let StoredFile {
                holders,
                failed: chain_failed,
            } = s;
            let mut failed = skipped.clone();
            failed.extend(chain_failed);
            note_unreached(&chain, &holders, &mut failed, "not reached");
            if holders.len() < quorum {
                outcome.push(Err(Error::QuorumNotReached {
                    name: f.name.clone(),
                    stored: holders.len(),
                    quorum,
                    failed,
                }));
                continue;
            }
            commits.push(BatchCommit {
                name: f.name.clone(),
                version: *v,
                checksum: f.checksum,
                holders: holders.clone(),
            });
            outcome.push(Ok(StoredFile { holders, failed }));
        }
        let answers = if commits.is_empty() {
            Vec::new()
        } else {
            self.commit_batch(plan, commits.clone(), &chain).await?
        };
        if answers.len() != commits.len() {
            return Err(Error::unexpected(format!(
                "the leader answered {} of a batch's {} commits",
                answers.len(),
                commits.len()
            )));
        }
        let mut answers = commits.into_iter().zip(answers);
        let mut reports = Vec::with_capacity(files.len());
        for ((f, v), o) in files.iter().zip(&versions).zip(outcome) {
            let StoredFile { holders, failed } = match o {
                Ok(h) => h,
                Err(e) => {
                    reports.push(Err(e));
                    continue;
                }
            };
            let Some((commit, answer)) = answers.next() else {
                reports.push(Err(Error::unexpected("a batch's commit lost a file")));
                continue;
            };
            let committed = match answer {
                FileCommit::Committed { .. } => Ok(()),
                FileCommit::Refused(r) => Err(Error::Remote(r)),
                FileCommit::Unconfirmed { .. } => self.settle_file(plan, &commit).await,
            };
            reports.push(committed.map(|()| PutReport {
                name: f.name.clone(),
                version: *v,
                size: f.bytes.len() as u64,
                checksum: f.checksum,
                holders,
                failed,
                elapsed: start.elapsed(),
                phases: PutPhases {
                    plan: planned,
                    store: store_time,
                    commit: commit_start.elapsed(),
                },
            }));
        }
        Ok(reports)
    }

    /// Sends the batch's request and bytes (files back to back, in frames
    /// of at most `chunk_size`), then the end frame; what the chain stored.
    async fn stream_batch(
        &self,
        stream: &mut Conn,
        addr: SocketAddr,
        write: DataRequest,
        files: &[Loaded],
    ) -> Result<Vec<StoredFile>> {
        let io = self.opts.io_timeout;
        timed(addr, io, send_request(stream, &Request::Data(write))).await?;
        let total: usize = files.iter().map(|f| f.bytes.len()).sum();
        let frame = batch_frame(total, self.opts.chunk_size);
        let mut buf = Vec::with_capacity(frame);
        for f in files {
            let mut rest: &[u8] = &f.bytes;
            while !rest.is_empty() {
                let take = (frame - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == frame {
                    timed(addr, io, write_frame(stream.raw(), &buf, DEFAULT_MAX_FRAME)).await?;
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            timed(addr, io, write_frame(stream.raw(), &buf, DEFAULT_MAX_FRAME)).await?;
        }
        timed(addr, io, write_frame(stream.raw(), &[], DEFAULT_MAX_FRAME)).await?;
        match timed(addr, self.opts.store_timeout, read_response(stream)).await? {
            Response::StoredBatch(s) if s.len() == files.len() => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Commits the batch's files; if our agent went away with the answer,
    /// asks again through the chain's other agents (the commit is idempotent).
    async fn commit_batch(
        &self,
        plan: u64,
        files: Vec<BatchCommit>,
        chain: &[SocketAddr],
    ) -> Result<Vec<FileCommit>> {
        let commit = MetaRequest::CommitPutBatch { plan, files };
        let answer = match self.meta_again(commit.clone()).await {
            Err(e) if e.is_transient() => {
                let mut answer = None;
                for &h in chain.iter().filter(|&&h| h != self.agent) {
                    let other = Sdfs::with_options(h, self.opts.clone());
                    match other.meta(commit.clone()).await {
                        Ok(r) => {
                            answer = Some(r);
                            break;
                        }
                        Err(e) if e.is_transient() => continue,
                        Err(e) => return Err(e),
                    }
                }
                match answer {
                    Some(a) => a,
                    None => {
                        return Err(Error::Remote(RemoteError::new(
                            crate::ErrorKind::Unavailable,
                            format!(
                                "the batch's commit was sent, but no agent answered; it may still take effect: check with `dml ls` before retrying ({e})"
                            ),
                        )));
                    }
                }
            }
            r => r?,
        };
        match answer {
            MetaResponse::CommittedBatch(v) => Ok(v),
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// Sends `req` to the leader, again while the leader refuses it for want
    /// of a majority or of live agents (it changed nothing then), for up to
    /// `leader_wait`: under load a read-lease round can miss its deadline.
    /// Safe for a batch's plan (a plan whose answer is lost is forgotten; its
    /// version numbers are skipped) and its commit (idempotent).
    async fn meta_again(&self, req: MetaRequest) -> Result<MetaResponse> {
        let start = Instant::now();
        let mut pause = RETRY_FIRST;
        loop {
            match self.meta(req.clone()).await {
                Err(e @ Error::Remote(_))
                    if e.kind() == crate::ErrorKind::Unavailable
                        && start.elapsed() + pause < self.opts.leader_wait =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                r => return r,
            }
        }
    }

    /// What became of one file whose commit was appended but not confirmed.
    async fn settle_file(&self, plan: u64, c: &BatchCommit) -> Result<()> {
        let ask = MetaRequest::PutOutcome {
            name: c.name.clone(),
            version: c.version,
            checksum: c.checksum,
            plan,
        };
        let lost = || Error::PutLost {
            name: c.name.clone(),
            version: c.version,
        };
        let unsettled = |waited: Duration| Error::CommitUnsettled {
            name: c.name.clone(),
            version: c.version,
            waited,
        };
        self.settle(ask, lost, unsettled).await
    }
}

/// The data frame size of a batch of `total` bytes: a sixteenth of it, at
/// least 64 KiB and at most `chunk` (the agents' limit), so each replica
/// forwards the batch while still receiving it.
fn batch_frame(total: usize, chunk: usize) -> usize {
    (total / 16).clamp((64 << 10).min(chunk.max(1)), chunk.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_frames_pipeline_the_chain_within_the_agents_limit() {
        assert_eq!(batch_frame(0, 1 << 20), 64 << 10);
        assert_eq!(batch_frame(4 << 20, 1 << 20), 256 << 10);
        assert_eq!(batch_frame(64 << 20, 1 << 20), 1 << 20);
        assert_eq!(batch_frame(4 << 20, 4096), 4096);
    }
}
