//! SDFS counters of one agent, for telemetry and tests.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, bumped by the data path, scrub and reconcile.
#[derive(Default)]
pub struct Counters {
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    pub disk_full: AtomicU64,
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub repairs: AtomicU64,
    pub repair_errors: AtomicU64,
    pub scrubbed: AtomicU64,
    pub scrub_corruptions: AtomicU64,
    pub reconcile_deleted: AtomicU64,
    pub reconcile_refetched: AtomicU64,
    pub reconcile_restored: AtomicU64,
    pub tmp_swept: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of one agent's SDFS counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdfsStats {
    /// Versions stored on this agent.
    pub files: u64,
    /// Their total size.
    pub bytes_stored: u64,
    /// Chain writes stored here.
    pub writes: u64,
    /// Chain writes that failed here (any reason).
    pub write_errors: u64,
    /// Writes refused because the disk was full.
    pub disk_full: u64,
    pub reads: u64,
    pub read_errors: u64,
    /// Bytes received into stored copies (writes and repairs).
    pub bytes_written: u64,
    /// Bytes served to readers.
    pub bytes_read: u64,
    /// Copies fetched from another replica (repair and scrub).
    pub repairs: u64,
    pub repair_errors: u64,
    /// Copies re-hashed by scrub.
    pub scrubbed: u64,
    /// Copies found corrupt (by scrub or while serving a read).
    pub scrub_corruptions: u64,
    /// Copies deleted because the metadata no longer wants them here.
    pub reconcile_deleted: u64,
    /// Copies fetched again because they held other bytes than the
    /// committed version (a late stream of an earlier plan).
    pub reconcile_refetched: u64,
    /// Copies fetched again because the metadata names this agent as a
    /// holder and its disk had lost them.
    pub reconcile_restored: u64,
    /// Stale temp files removed.
    pub tmp_swept: u64,
}

impl SdfsStats {
    pub fn from_counters(c: &Counters, files: u64, bytes_stored: u64) -> Self {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            files,
            bytes_stored,
            writes: g(&c.writes),
            write_errors: g(&c.write_errors),
            disk_full: g(&c.disk_full),
            reads: g(&c.reads),
            read_errors: g(&c.read_errors),
            bytes_written: g(&c.bytes_written),
            bytes_read: g(&c.bytes_read),
            repairs: g(&c.repairs),
            repair_errors: g(&c.repair_errors),
            scrubbed: g(&c.scrubbed),
            scrub_corruptions: g(&c.scrub_corruptions),
            reconcile_deleted: g(&c.reconcile_deleted),
            reconcile_refetched: g(&c.reconcile_refetched),
            reconcile_restored: g(&c.reconcile_restored),
            tmp_swept: g(&c.tmp_swept),
        }
    }
}
