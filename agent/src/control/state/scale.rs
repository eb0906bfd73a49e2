//! The state machine at scale: many versions built through batched puts,
//! snapshotted, restored and listed by a prefix glob.

use super::*;
use std::net::SocketAddr;

/// Versions in the CI-sized run (the bench commits 1,000,000 through a real leader).
const VERSIONS: u64 = 200_000;

/// A name per version: 1,000 per directory, so `data/00042/00421*` matches 100.
fn name(i: u64) -> String {
    format!("data/{:05}/{i:07}.jpg", i / 1000)
}

/// Resident memory of this process in bytes (Linux), for the printed figure only.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `VERSIONS` small files committed as a batched put commits them (PutAt,
/// 1,024 to an entry), on four of ten agents.
pub(super) fn filled(versions: u64) -> MetaState {
    let agents: Vec<SocketAddr> = (0..10)
        .map(|p| SocketAddr::from(([10, 0, 0, 1 + p], 8001)))
        .collect();
    let mut s = MetaState::default();
    let mut i = 0;
    while i < versions {
        let ops: Vec<Op> = (i..versions.min(i + 1024))
            .map(|j| Op::PutAt {
                name: name(j),
                version: 1,
                size: j % 65_536,
                checksum: *blake3::hash(&j.to_le_bytes()).as_bytes(),
                holders: (0..4).map(|k| agents[((j + k) % 10) as usize]).collect(),
                quorum: 3,
            })
            .collect();
        let n = ops.len();
        match s.apply(&Command {
            now_ms: 1_000 + i,
            op: Op::Batch { ops },
        }) {
            Applied::Batch(r) => assert!(
                r.iter().all(|a| matches!(a, Applied::Version(1))),
                "a put was refused"
            ),
            other => panic!("batch: {other:?}"),
        }
        i += n as u64;
    }
    s
}

#[test]
fn a_state_machine_of_many_versions_snapshots_restores_and_lists_a_prefix() {
    let before = rss();
    let s = filled(VERSIONS);
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{VERSIONS} versions: {} MiB resident, ~{} bytes per version",
        grown >> 20,
        grown / VERSIONS
    );
    assert_eq!(s.count().1, VERSIONS);

    let bytes = postcard::to_allocvec(&s).expect("encode");
    eprintln!("snapshot body: {} bytes", bytes.len());
    let back: MetaState = postcard::from_bytes(&bytes).expect("decode");
    assert!(back == s, "the restored state differs");

    let want: Vec<String> = (42_100..42_200).map(name).collect();
    assert_eq!(s.names_under("data/00042/00421"), want);
}
