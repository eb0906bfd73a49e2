//! The state machine at scale: many versions built through batched puts,
//! snapshotted, restored and listed by a prefix glob.

use crate::control::state::{LIST_SCAN_MAX, MetaState};
use crate::control::types::{Applied, Command, Op};
use dml_shared::sdfs::Glob;
use std::net::SocketAddr;

/// Versions in the CI-sized run (`bench sdfs` applies 1,000,000).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_of_many_versions_snapshots_restores_and_lists_a_prefix() {
    use crate::control::store;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, LogId, RaftSnapshotBuilder};

    let before = rss();
    let state = filled(VERSIONS);
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{VERSIONS} versions: {} MiB resident, ~{} bytes per version",
        grown >> 20,
        grown / VERSIONS
    );
    assert_eq!(state.count().1, VERSIONS);

    // A snapshot built by the store, installed into a fresh one.
    let dir = std::env::temp_dir().join(format!("dml-sm-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_log, mut sm, shared) = store::open(&dir.join("a")).expect("open");
    let applied = LogId::new(CommittedLeaderId::new(3, 1), 1_000);
    {
        let mut d = shared.write().unwrap();
        d.state = state.clone();
        d.last_applied = Some(applied);
    }
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    eprintln!("snapshot: {} bytes", snap.snapshot.get_ref().len());
    assert_eq!(snap.meta.last_log_id, Some(applied));
    let (_log2, mut fresh, restored) = store::open(&dir.join("b")).expect("open");
    fresh
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    let same = |s: &store::SharedSm| {
        let d = s.read().unwrap();
        d.last_applied == Some(applied) && d.state == state
    };
    assert!(same(&restored), "the installed state differs");
    drop((_log2, fresh, restored));
    // A restart reads the saved snapshot back.
    let (_log3, _sm3, reopened) = store::open(&dir.join("b")).expect("reopen");
    assert!(same(&reopened), "the state read back on restart differs");

    // A prefix glob matching 100 names looks only at their range.
    let glob = Glob::new("data/00042/00421*").unwrap();
    let page = state.listing().page(&glob, None, 2000, LIST_SCAN_MAX);
    let want: Vec<String> = (42_100..42_200).map(name).collect();
    let got: Vec<String> = page.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(page.next, None);
    assert_eq!(page.scanned, 100);
    assert_eq!(page.files[0].versions[0].replicas.len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
