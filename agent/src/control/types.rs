//! The Raft type configuration, the commands the log carries and what
//! applying them returns, and the voter id derived from an address.

use dml_shared::infer::{ImageResult, JobId};
use dml_shared::keyring::KeyringState;
use dml_shared::sdfs::Checksum;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::net::SocketAddr;

openraft::declare_raft_types!(
    /// openraft types of the control plane: node ids are [`voter_id`]s,
    /// nodes carry the agent address.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft node id of a voter: FNV-1a (64 bit) over the text form of its
/// agent address, e.g. `"10.0.0.5:8001"`. Stable across restarts, builds and
/// platforms, so every voter derives the same ids from the same voter list.
pub fn voter_id(addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One log entry's payload: an operation stamped with the leader's wall
/// clock, so every replica applies it to the same result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's Unix time in ms when it proposed the command.
    pub now_ms: u64,
    pub op: Op,
}

/// Operations on the replicated state: SDFS metadata, inference jobs and
/// model settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Reserve the next version of `name` as pending on `replicas` (what
    /// leaders before `BeginPutAt` appended; still applied from old logs).
    BeginPut {
        name: String,
        size: u64,
        replicas: Vec<SocketAddr>,
        deadline_ms: u64,
    },
    /// Make a pending version visible if `holders` reach `quorum`; otherwise abort it.
    CommitPut {
        name: String,
        version: u64,
        checksum: Checksum,
        holders: Vec<SocketAddr>,
        quorum: usize,
    },
    /// Drop a pending version.
    AbortPut { name: String, version: u64 },
    /// Drop every pending version whose deadline is at or before `now_ms`.
    ExpirePending,
    /// Remove every version of `name`; the version counter is kept (tombstone).
    Delete { name: String },
    /// Repair result: add `add` to a committed version's replicas, remove `drop`.
    SetReplicas {
        name: String,
        version: u64,
        add: Vec<SocketAddr>,
        drop: Vec<SocketAddr>,
    },
    /// Start a job of `count` images over the dataset `images` (SDFS
    /// names, in order, cycled if `count` is larger).
    SubmitJob {
        model: String,
        dataset: String,
        images: Vec<String>,
        count: u32,
        /// Weight in fair sharing (`submit-job --weight`).
        weight: u32,
    },
    /// C3: batch size of `model` for queries not yet dispatched.
    SetBatchSize { model: String, size: u32 },
    /// Dynamic batching of `model`: each `Some` replaces the setting (a
    /// target of 0 clears it).
    SetBatchPolicy {
        model: String,
        max_queue_delay_ms: Option<u64>,
        p99_target_ms: Option<u64>,
    },
    /// Results of one query; images already done are ignored.
    CompleteQuery {
        job: JobId,
        results: Vec<ImageResult>,
    },
    /// Stop a running job for good.
    FailJob { job: JobId, reason: String },
    /// A finished job's output was stored in SDFS as `name`.
    SetJobOutput { job: JobId, name: String },
    /// Reserve `version` of `name` as pending on `replicas`: the leader chose
    /// the number (see `plans.rs`); refused unless it is at least the next one.
    BeginPutAt {
        name: String,
        version: u64,
        size: u64,
        replicas: Vec<SocketAddr>,
        deadline_ms: u64,
    },
    /// Plan and commit in one entry: a small put whose plan stayed in the
    /// leader's memory (see `plans.rs`). Makes `version` visible if it is at
    /// least the next one and `holders` reach `quorum`.
    PutAt {
        name: String,
        version: u64,
        size: u64,
        checksum: Checksum,
        holders: Vec<SocketAddr>,
        quorum: usize,
    },
    /// Replace the cluster's keyring (`dml keyring`) with `ring` as version
    /// `base + 1`, if its version is still `base` (0: never set).
    SetKeyring { base: u64, ring: KeyringState },
    /// `dml cancel`: stop a running job for good, keeping its results.
    CancelJob { job: JobId },
    /// Several operations in one entry (a batched put's commits: `PutAt`
    /// and `CommitPut`), each applied on its own: one refused leaves the
    /// others as they apply. Applies to [`Applied::Batch`], one per op.
    Batch { ops: Vec<Op> },
}

/// The result of applying one entry (the same on every replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The entry changed nothing the caller asked about (membership, blank, expiry).
    Done,
    /// A version was reserved or committed.
    Version(u64),
    /// A job was submitted.
    Job(JobId),
    /// A query's results: images new to the job, and whether it finished it.
    Accepted { new: u32, finished: bool },
    /// The operation was refused; the text says why, for the operator.
    Rejected(String),
    /// A delete found no such file (none, or deleted since the leader looked).
    NoSuchFile(String),
    /// An [`Op::Batch`]: each op's result, in order.
    Batch(Vec<Applied>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voter_ids_are_stable_and_distinct() {
        let a: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        assert_eq!(voter_id(a), voter_id(a));
        assert_ne!(voter_id(a), voter_id(b));
    }
}
