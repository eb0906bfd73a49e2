//! Every get: resolve which versions are wanted from the metadata, then fetch
//! each from its nearest replica into a verified local copy.

use super::load::bounded;
use super::local::PIECE;
use super::local::{Sink, check_target, path_under, shown, sync_parent, temp_path, write_merged};
use super::{
    GetAllReport, GetPhases, GetReport, Phase, Progress, ProgressFn, Sdfs, VersionsReport,
    no_progress, timed,
};
use crate::api::{Request, Response};
use crate::client::{read_response, send_request, unexpected};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::sdfs::{DataRequest, VersionInfo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Which committed versions of a file a get wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The newest.
    Latest,
    /// This version.
    Version(u64),
    /// The last `n`, newest first.
    Last(usize),
}

impl Sdfs {
    /// The committed versions of `name` that `wanted` picks, newest first
    /// (one for `Latest` and `Version`).
    pub async fn resolve(&self, name: &str, wanted: Wanted) -> Result<Vec<VersionInfo>> {
        let file = self.ls(name).await?;
        let picked = match wanted {
            Wanted::Latest => last_versions(&file.versions, 1),
            Wanted::Last(n) => last_versions(&file.versions, n),
            Wanted::Version(version) => {
                let v = file.versions.iter().find(|v| v.version == version);
                vec![v.cloned().ok_or_else(|| Error::NoSuchVersion {
                    name: name.into(),
                    version,
                })?]
            }
        };
        Ok(picked)
    }

    /// Resolves one version (`Latest` or `Version`), then fetches it into `local`.
    async fn get_one(
        &self,
        name: &str,
        wanted: Wanted,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        let start = Instant::now();
        let picked = self.resolve(name, wanted).await?;
        let lookup = start.elapsed();
        let v = picked
            .first()
            .ok_or_else(|| Error::NotFound { name: name.into() })?;
        with_lookup(self.fetch(name, v, local, progress).await, lookup)
    }

    /// Fetches the newest committed version of `name` into `local`.
    pub async fn get(
        &self,
        name: &str,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        self.get_one(name, Wanted::Latest, local, progress).await
    }

    /// Fetches one committed version of `name` into `local`.
    pub async fn get_version(
        &self,
        name: &str,
        version: u64,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        self.get_one(name, Wanted::Version(version), local, progress)
            .await
    }

    /// The last `n` versions of `name`, newest first. Without `merge`, `out` is
    /// a directory (created if missing) that receives one file per version,
    /// named by [`version_file_name`]. With `merge`, `out` is one file: each
    /// version preceded by its [`merge_header`] line and followed by a newline.
    pub async fn get_versions(
        &self,
        name: &str,
        n: usize,
        out: &Path,
        merge: bool,
        progress: ProgressFn<'_>,
    ) -> Result<VersionsReport> {
        let start = Instant::now();
        let wanted = self.resolve(name, Wanted::Last(n)).await?;
        let mut reports = Vec::with_capacity(wanted.len());
        if !merge {
            std::fs::create_dir_all(out).map_err(|reason| Error::LocalFile {
                path: out.display().to_string(),
                reason,
            })?;
            for v in wanted {
                let path = out.join(version_file_name(name, v.version));
                reports.push(self.fetch(name, &v, &path, progress).await?);
            }
        } else {
            // Each version lands in a verified part file beside `out`; the parts
            // are then concatenated into a temp file renamed over `out`.
            let mut parts = Vec::new();
            let result = async {
                for v in &wanted {
                    let part = temp_path(out)?;
                    parts.push(part.clone());
                    reports.push(self.fetch(name, v, &part, progress).await?);
                }
                let sections: Vec<(String, PathBuf)> = wanted
                    .iter()
                    .zip(&parts)
                    .map(|(v, p)| (merge_header(name, v.version, v.size), p.clone()))
                    .collect();
                let out = out.to_path_buf();
                tokio::task::spawn_blocking(move || write_merged(&out, &sections))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?
            }
            .await;
            for p in &parts {
                let _ = std::fs::remove_file(p);
            }
            result?;
            for r in &mut reports {
                r.path = out.to_path_buf();
            }
        }
        Ok(VersionsReport {
            name: name.into(),
            versions: reports,
            merged: merge,
            elapsed: start.elapsed(),
        })
    }

    /// Fetches the newest version of every file matching `glob` into `dir`,
    /// each at `dir/<sdfs name>` (subdirectories created as needed). A failed
    /// file does not stop the others.
    pub async fn get_all(
        &self,
        glob: &str,
        dir: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetAllReport> {
        let start = Instant::now();
        let files = self.ls_all(glob).await?;
        std::fs::create_dir_all(dir).map_err(|reason| Error::LocalFile {
            path: dir.display().to_string(),
            reason,
        })?;
        // A name that would escape `dir` fails alone, before anything is written.
        let jobs: Vec<(String, VersionInfo, Result<PathBuf>)> = files
            .into_iter()
            .filter_map(|f| {
                let v = f.versions.last()?.clone();
                let path = path_under(dir, &f.name);
                Some((f.name, v, path))
            })
            .collect();
        let names: Vec<String> = jobs.iter().map(|(n, _, _)| n.clone()).collect();
        let results = bounded(
            jobs,
            self.opts.concurrency,
            |(name, v, path)| {
                let me = self.clone();
                async move {
                    let path = path?;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|reason| Error::LocalFile {
                            path: parent.display().to_string(),
                            reason,
                        })?;
                    }
                    me.fetch(&name, &v, &path, &no_progress).await
                }
            },
            progress,
        )
        .await;
        Ok(GetAllReport {
            items: names.into_iter().zip(results).collect(),
            elapsed: start.elapsed(),
        })
    }

    /// Fetches `v` from its replicas, nearest first, into `local`.
    async fn fetch(
        &self,
        name: &str,
        v: &VersionInfo,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetReport> {
        let start = Instant::now();
        check_target(local)?;
        let mut tried = Vec::new();
        for addr in nearest_first(&v.replicas, self.agent) {
            match self.fetch_from(addr, name, v, local, progress).await {
                Ok(phases) => {
                    return Ok(GetReport {
                        name: name.into(),
                        version: v.version,
                        size: v.size,
                        from: addr,
                        path: local.to_path_buf(),
                        elapsed: start.elapsed(),
                        lookup: Duration::ZERO,
                        phases,
                    });
                }
                // A local problem would repeat on every replica.
                Err(e @ Error::LocalFile { .. }) => return Err(e),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        if tried.is_empty() {
            tried.push("no replica is recorded".into());
        }
        Err(Error::ReplicasFailed {
            name: name.into(),
            version: v.version,
            tried: tried.join("; "),
        })
    }

    /// Asks `addr` for `v` of `name` (`Data(Read)`); the connection once its
    /// `ReadStart` matches the committed size and checksum.
    async fn start_read(&self, addr: SocketAddr, name: &str, v: &VersionInfo) -> Result<Conn> {
        let io = self.opts.io_timeout;
        let read = DataRequest::Read {
            name: name.into(),
            version: v.version,
        };
        let mut stream = self.conn(addr, io).await?;
        timed(addr, io, send_request(&mut stream, &Request::Data(read))).await?;
        match timed(addr, io, read_response(&mut stream)).await? {
            Response::ReadStart { size, checksum } if size == v.size && checksum == v.checksum => {
                Ok(stream)
            }
            Response::ReadStart { size, .. } => Err(Error::Transfer {
                addr: addr.to_string(),
                reason: format!(
                    "it holds {size} bytes with another checksum than the committed {} bytes",
                    v.size
                ),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn fetch_from(
        &self,
        addr: SocketAddr,
        name: &str,
        v: &VersionInfo,
        local: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<GetPhases> {
        let io = self.opts.io_timeout;
        let began = Instant::now();
        let mut stream = self.start_read(addr, name, v).await?;
        let (size, checksum) = (v.size, v.checksum);
        let tmp = temp_path(local)?;
        let sink = Sink::start(&tmp, self.opts.sync_local)?;
        let mut phases = GetPhases {
            start: began.elapsed(),
            ..GetPhases::default()
        };
        let received = receive_frames(&mut stream, addr, io, size, &sink, progress).await;
        phases.receive = began.elapsed() - phases.start;
        let written = sink.finish().await;
        let outcome = async {
            let got = received?;
            let (hash, bytes) = written.map_err(|reason| Error::LocalFile {
                path: shown(&tmp),
                reason,
            })?;
            if got != size || bytes != size {
                return Err(Error::Transfer {
                    addr: addr.to_string(),
                    reason: format!("sent {got} bytes of {size}"),
                });
            }
            if hash != checksum {
                // The stream ended cleanly: tell the agent on it, so it
                // re-checks its copy and repairs it.
                let bad = Request::Data(DataRequest::BadCopy {
                    name: name.into(),
                    version: v.version,
                });
                let _ = timed(addr, io, async {
                    send_request(&mut stream, &bad).await?;
                    read_response(&mut stream).await
                })
                .await;
                return Err(Error::ChecksumMismatch {
                    name: name.into(),
                    version: v.version,
                    from: addr,
                });
            }
            std::fs::rename(&tmp, local).map_err(|reason| Error::LocalFile {
                path: local.display().to_string(),
                reason,
            })?;
            if self.opts.sync_local {
                sync_parent(local);
            }
            Ok(())
        }
        .await;
        match &outcome {
            Ok(()) => self.keep(addr, stream),
            Err(_) => {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        phases.finish = began.elapsed() - phases.start - phases.receive;
        outcome.map(|()| phases)
    }
}

/// A fetch's report with the lookup before it counted in.
fn with_lookup(r: Result<GetReport>, lookup: Duration) -> Result<GetReport> {
    r.map(|mut g| {
        g.lookup = lookup;
        g.elapsed += lookup;
        g
    })
}

/// Reads a `Data(Read)` stream's frames up to the end frame into recycled
/// buffers of at most [`PIECE`] bytes (a frame may span several) and hands
/// them to `sink`; returns the bytes received. A writer that stopped ends the
/// reading early (its error comes from [`Sink::finish`]).
async fn receive_frames(
    stream: &mut Conn,
    addr: SocketAddr,
    io: Duration,
    size: u64,
    sink: &Sink,
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let broke = |reason: String| Error::Transfer {
        addr: addr.to_string(),
        reason,
    };
    // Fills `buf` within `io`; a close mid-file is a transfer error.
    let read_exact = async |stream: &mut Conn, buf: &mut [u8]| {
        timed(addr, io, async {
            stream.raw().read_exact(buf).await.map_err(Error::from)
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            Error::Timeout { .. } => e,
            _ => broke("connection closed in the middle of the file".into()),
        })
    };
    let mut got = 0u64;
    progress(Progress {
        phase: Phase::Receiving,
        done: 0,
        total: size,
    });
    loop {
        let mut len = [0u8; 4];
        read_exact(stream, &mut len).await?;
        let mut left = u32::from_be_bytes(len) as u64;
        if left == 0 {
            return Ok(got);
        }
        if got + left > size {
            return Err(broke(format!("sent more than the announced {size} bytes")));
        }
        while left > 0 {
            let mut buf = sink.buffer();
            let n = left.min(PIECE as u64) as usize;
            buf.resize(n, 0);
            read_exact(stream, &mut buf).await?;
            left -= n as u64;
            got += n as u64;
            if !sink.send(buf).await {
                return Ok(got);
            }
            progress(Progress {
                phase: Phase::Receiving,
                done: got,
                total: size,
            });
        }
    }
}

/// `name`'s last path component plus `.v<version>`: the file `get-versions`
/// writes for one version (`photos/cat.jpg` v3 -> `cat.jpg.v3`).
pub fn version_file_name(name: &str, version: u64) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{base}.v{version}")
}

/// The line that precedes each version in a merged `get-versions` file; the
/// version's exact bytes follow it, then one `\n`.
pub fn merge_header(name: &str, version: u64, size: u64) -> String {
    format!("===== {name} version {version} ({size} bytes) =====\n")
}

/// The last `n` of `versions` (given oldest first), newest first.
pub fn last_versions(versions: &[VersionInfo], n: usize) -> Vec<VersionInfo> {
    versions.iter().rev().take(n).cloned().collect()
}

/// `replicas` with `agent` first, then those on the agent's host, then the rest,
/// each group in the recorded order.
pub fn nearest_first(replicas: &[SocketAddr], agent: SocketAddr) -> Vec<SocketAddr> {
    let mut v = replicas.to_vec();
    v.sort_by_key(|r| {
        if *r == agent {
            0
        } else if r.ip() == agent.ip() {
            1
        } else {
            2
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn version(v: u64) -> VersionInfo {
        VersionInfo {
            version: v,
            size: v,
            checksum: [0; 32],
            replicas: Vec::new(),
            committed_ms: 0,
        }
    }

    #[test]
    fn the_agent_itself_then_its_host_then_others_serve_reads() {
        let agent = addr("10.0.0.1:8003");
        let replicas = [
            addr("10.0.0.2:8001"),
            addr("10.0.0.1:8002"),
            addr("10.0.0.3:8001"),
            addr("10.0.0.1:8003"),
        ];
        assert_eq!(
            nearest_first(&replicas, agent),
            [replicas[3], replicas[1], replicas[0], replicas[2]]
        );
    }

    #[test]
    fn last_versions_are_newest_first() {
        let vs: Vec<VersionInfo> = (1..=5).map(version).collect();
        let got: Vec<u64> = last_versions(&vs, 3).iter().map(|v| v.version).collect();
        assert_eq!(got, [5, 4, 3]);
        assert_eq!(last_versions(&vs, 0).len(), 0);
        assert_eq!(last_versions(&vs, 99).len(), 5);
    }

    #[test]
    fn merge_header_names_the_version_and_its_size() {
        assert_eq!(
            merge_header("a/b", 7, 12),
            "===== a/b version 7 (12 bytes) =====\n"
        );
    }
}
