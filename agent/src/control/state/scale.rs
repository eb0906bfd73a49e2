//! Many versions at once, named and committed as a batched put commits
//! small files: the state-machine test at scale (`store/scale.rs`) and
//! `bench sdfs`'s metadata-at-scale rows (in process, and through a real
//! leader) build the same names, sizes and entries from here.

use super::MetaState;
use crate::control::types::{Applied, Command, Op};
use dml_shared::sdfs::Checksum;
use std::net::SocketAddr;

/// Names per directory: [`PREFIX_GLOB`] matches [`PREFIX_MATCHES`] of them.
pub const DIR_FILES: u64 = 1000;
/// A glob whose literal prefix matches 100 names once 42,200 versions exist.
pub const PREFIX_GLOB: &str = "data/00042/00421*";
/// Names [`PREFIX_GLOB`] matches.
pub const PREFIX_MATCHES: usize = 100;
/// Files per `Op::Batch`, as a full batched put commits them.
pub const BATCH: u64 = 1024;

/// Version `i`'s file name: `data/<i / 1000>/<i>.jpg`, zero-padded.
pub fn name(i: u64) -> String {
    format!("data/{:05}/{i:07}.jpg", i / DIR_FILES)
}

/// Version `i`'s recorded size: under 4 KiB, so [`BATCH`] files fit one
/// batched put ([`dml_shared::sdfs::MAX_BATCH_BYTES`]).
pub fn size(i: u64) -> u64 {
    i % 4096
}

const _: () = assert!(BATCH * 4096 <= dml_shared::sdfs::MAX_BATCH_BYTES);

/// Version `i`'s recorded checksum (made up: no bytes exist).
pub fn checksum(i: u64) -> Checksum {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

/// A batched put's commit refused one of its files.
#[derive(Debug, thiserror::Error)]
#[error("a batched put's file was refused: {0:?}")]
pub struct Refused(pub Applied);

/// `versions` small files committed as batched puts commit them (`PutAt`,
/// [`BATCH`] to an `Op::Batch` entry), each on four of ten made-up agents.
pub fn filled(versions: u64) -> Result<MetaState, Refused> {
    let agents: Vec<SocketAddr> = (0..10)
        .map(|p| SocketAddr::from(([10, 0, 0, 1 + p], 8001)))
        .collect();
    let mut s = MetaState::default();
    let mut i = 0;
    while i < versions {
        let ops: Vec<Op> = (i..versions.min(i + BATCH))
            .map(|j| Op::PutAt {
                name: name(j),
                version: 1,
                size: size(j),
                checksum: checksum(j),
                holders: (0..4).map(|k| agents[((j + k) % 10) as usize]).collect(),
                quorum: 3,
            })
            .collect();
        let n = ops.len() as u64;
        let cmd = Command {
            now_ms: 1_000 + i,
            op: Op::Batch { ops },
        };
        match s.apply(&cmd) {
            Applied::Batch(r) => {
                if let Some(bad) = r.into_iter().find(|a| *a != Applied::Version(1)) {
                    return Err(Refused(bad));
                }
            }
            other => return Err(Refused(other)),
        }
        i += n;
    }
    Ok(s)
}

/// Resident memory of this process in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
