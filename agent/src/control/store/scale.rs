//! The state machine at scale: many versions built through batched puts,
//! snapshotted, restored and listed by a prefix glob.

use crate::control::state::LIST_SCAN_MAX;
use crate::control::state::scale::{PREFIX_GLOB, filled, name, resident_bytes};
use dml_shared::sdfs::Glob;

/// Versions in the CI-sized run (`bench sdfs` applies 1,000,000).
const VERSIONS: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_of_many_versions_snapshots_restores_and_lists_a_prefix() {
    use crate::control::store;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, LogId, RaftSnapshotBuilder};

    let before = resident_bytes();
    let state = filled(VERSIONS).expect("every put commits");
    let grown = resident_bytes().saturating_sub(before);
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
    let glob = Glob::new(PREFIX_GLOB).unwrap();
    let page = state.listing().page(&glob, None, 2000, LIST_SCAN_MAX);
    let want: Vec<String> = (42_100..42_200).map(name).collect();
    let got: Vec<String> = page.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(page.next, None);
    assert_eq!(page.scanned, 100);
    assert_eq!(page.files[0].versions[0].replicas.len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
