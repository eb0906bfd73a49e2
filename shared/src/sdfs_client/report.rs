//! Progress reports, and what each flow returns.

use crate::error::Result;
use crate::sdfs::Checksum;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a transfer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Streaming a put to the replica chain.
    Sending,
    /// Receiving a get.
    Receiving,
    /// Waiting for the chain to store and the leader to commit.
    Committing,
    /// The leader appended the commit but could not confirm it: asking what
    /// became of it.
    Settling,
    /// `load`/`get_all`: `done` and `total` count files.
    Files,
}

/// A progress report: `done` of `total` bytes (or files, for [`Phase::Files`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// Completion in [0, 1]; an empty transfer is complete.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }
}

/// Receives progress reports; called from the task doing the transfer.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress callback that ignores every report.
pub fn no_progress(_: Progress) {}

/// Bytes per second over `elapsed` (0 for an instant transfer of nothing).
pub fn throughput(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { bytes as f64 / s } else { 0.0 }
}

/// The outcome of a committed put.
#[derive(Clone, Debug, PartialEq)]
pub struct PutReport {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    /// Agents that stored it durably, the chain's head first.
    pub holders: Vec<SocketAddr>,
    /// Replicas of the chain that did not store it, with the reason each
    /// gave (or "unreachable"/"timed out"); empty when every replica did.
    pub failed: Vec<(SocketAddr, String)>,
    /// From the first byte hashed to the commit.
    pub elapsed: Duration,
    /// Where `elapsed` went.
    pub phases: PutPhases,
}

/// The stages of a put, one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PutPhases {
    /// The leader's plan (a Raft write), while the file is hashed.
    pub plan: Duration,
    /// Streaming down the replica chain until the replicas report durable copies.
    pub store: Duration,
    /// The leader's commit (a Raft write).
    pub commit: Duration,
}

/// The outcome of a get: a verified copy at `path`.
#[derive(Clone, Debug, PartialEq)]
pub struct GetReport {
    pub name: String,
    pub version: u64,
    pub size: u64,
    /// The replica that served it.
    pub from: SocketAddr,
    pub path: PathBuf,
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent asking the leader for the version's replicas.
    pub lookup: Duration,
    /// Where the rest of `elapsed` went, for the replica that served it.
    pub phases: GetPhases,
}

/// The stages of a get from one replica, one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GetPhases {
    /// From asking the replica (`Data(Read)`) until it answered `ReadStart`
    /// and the local temp file was open.
    pub start: Duration,
    /// Receiving the bytes, until the end frame.
    pub receive: Duration,
    /// The last bytes hashed and written, the copy renamed into place.
    pub finish: Duration,
}

/// The versions `get_versions` fetched, newest first, and where they went.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionsReport {
    pub name: String,
    /// One per version, newest first; with `merge` every `path` is the merged file.
    pub versions: Vec<GetReport>,
    pub merged: bool,
    pub elapsed: Duration,
}

/// One local file of a `load`.
#[derive(Debug)]
pub struct LoadItem {
    pub local: PathBuf,
    pub name: String,
    pub result: Result<PutReport>,
}

/// The outcome of a `load`: every file, in path order.
#[derive(Debug)]
pub struct LoadReport {
    pub items: Vec<LoadItem>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Bytes of the puts that committed.
    pub fn bytes(&self) -> u64 {
        self.items
            .iter()
            .filter_map(|i| i.result.as_ref().ok())
            .map(|r| r.size)
            .sum()
    }

    pub fn failed(&self) -> usize {
        self.items.iter().filter(|i| i.result.is_err()).count()
    }
}

/// The outcome of a `get_all`: every matching file, in name order.
#[derive(Debug)]
pub struct GetAllReport {
    pub items: Vec<(String, Result<GetReport>)>,
    pub elapsed: Duration,
}

/// Totals over the whole store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub files: u64,
    pub versions: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_fraction_is_clamped_and_empty_is_complete() {
        let p = |done, total| Progress {
            phase: Phase::Sending,
            done,
            total,
        };
        assert_eq!(p(0, 0).fraction(), 1.0);
        assert_eq!(p(1, 4).fraction(), 0.25);
        assert_eq!(p(9, 4).fraction(), 1.0);
        assert_eq!(throughput(3 << 20, Duration::from_secs(2)), 1.5 * 1048576.0);
        assert_eq!(throughput(10, Duration::ZERO), 0.0);
    }
}
