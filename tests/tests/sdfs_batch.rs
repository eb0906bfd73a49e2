//! Batched small-file puts (group commit) against real agents: `dml put DIR PREFIX`
//! and `dml put` of several files round-trip; a bad name in a batch fails that file
//! alone, named, and the leader refuses a batch naming it; and with the leader killed
//! while batches stream, every acknowledged file reads back with its bytes and no
//! failed one is visible.
//!
//! What is committed is checked over the agent API, not through the command under
//! test. Build the binaries first: `cargo build --workspace --bins`.

use dml_shared::sdfs::MetaRequest;
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::sdfs::content::{pattern, write_file};
use dml_tests::sdfs::{READY, SDFS_POLL, SdfsCluster, api, cluster_slot};
use dml_tests::{log_failures, wait_count, wait_until};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A non-voter (agents 7..9 are not among the first 2m + 1 = 7).
const NON_VOTER: usize = 9;

fn said(out: &dml_tests::DmlOutput) -> String {
    format!(
        "`{}` exited {:?}; stdout: {}; stderr: {}",
        out.command,
        out.code(),
        out.stdout.trim(),
        out.stderr.trim()
    )
}

#[tokio::test]
async fn put_of_a_directory_and_of_several_files_round_trips_and_a_bad_name_fails_alone() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("sdfs-batch-put", 5).await.unwrap();
    c.wait_ready(READY).await.unwrap();

    // A directory of small files (one empty, one in a subdirectory) and one
    // larger than a batch takes, which goes on its own.
    let dir = c.local_path("tree");
    let mut files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|k| {
            (
                format!("img{k:02}.jpg"),
                pattern(k, 4096 + 997 * k as usize),
            )
        })
        .collect();
    files.push(("sub/deep.bin".into(), pattern(99, 70_000)));
    files.push(("empty".into(), Vec::new()));
    files.push(("large.bin".into(), pattern(98, (1 << 20) + 5)));
    for (rel, bytes) in &files {
        write_file(&dir.join(rel), bytes).unwrap();
    }
    let d = dir.to_string_lossy();
    let out = c.dml(4, &["put", &d, "data/set"]).await.unwrap();
    out.ensure_success().unwrap();
    assert!(
        out.stdout
            .contains(&format!("loaded {} of {} files", files.len(), files.len())),
        "{}",
        said(&out)
    );
    for (rel, bytes) in &files {
        let name = format!("data/set/{rel}");
        let f = api::file(c.addrs[0], &name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} is not committed"));
        let v = f.versions.last().unwrap();
        assert_eq!(v.checksum, *blake3::hash(bytes).as_bytes(), "{name}");
        assert!(v.replicas.len() >= 3, "{name} on {:?}", v.replicas);
    }
    for (rel, bytes) in files.iter().step_by(7) {
        c.must_get(2, &format!("data/set/{rel}"), bytes)
            .await
            .unwrap();
    }

    // Again: every file gets version 2, each its own.
    let out = c.dml(1, &["put", &d, "data/set", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let f = api::file(c.addrs[0], "data/set/img07.jpg")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        f.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2]
    );

    // Several files: each under the prefix by its file name; one name is bad
    // (a line feed in the local file name), and only that file fails, named.
    let loose = c.local_path("loose");
    let (x, y) = (pattern(7, 5000), pattern(8, 6000));
    write_file(&loose.join("x.txt"), &x).unwrap();
    write_file(&loose.join("y.txt"), &y).unwrap();
    write_file(&loose.join("bad\nname"), b"never stored").unwrap();
    let px = loose.join("x.txt");
    let py = loose.join("y.txt");
    let pbad = loose.join("bad\nname");
    let out = c
        .dml(
            0,
            &[
                "put",
                &px.to_string_lossy(),
                &pbad.to_string_lossy(),
                &py.to_string_lossy(),
                "many",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stdout.contains("many/bad\\u{a}name") && out.stdout.contains("line feed"),
        "the bad name is named with why: {}",
        said(&out)
    );
    assert!(out.stderr.contains("1 of 3 files failed"), "{}", said(&out));
    c.must_get(3, "many/x.txt", &x).await.unwrap();
    c.must_get(4, "many/y.txt", &y).await.unwrap();
    let listed = api::list(c.addrs[0], "many/*").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");

    // The leader refuses a batch with a bad name, naming the file.
    let req = MetaRequest::BeginPutBatch {
        files: vec![("ok/a".into(), 1), ("ok/../b".into(), 1)],
    };
    let e = format!("{:#}", api::meta(c.addrs[0], req).await.unwrap_err());
    assert!(
        e.contains("file 2 of the batch") && e.contains("\"ok/../b\""),
        "{e}"
    );
}

/// What the client was told about one file.
struct Told {
    name: String,
    bytes: Vec<u8>,
    outcome: Result<u64, String>,
}

#[tokio::test]
async fn group_committed_puts_under_a_leader_kill_keep_every_acknowledged_file_and_show_no_failed_one()
 {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("sdfs-batch-leader-kill", 10)
        .await
        .unwrap();
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await.unwrap();
    let via = NON_VOTER;
    assert_ne!(via, leader);

    // Rounds of 24 small files, put in batches of 8, one round after another.
    let client = Sdfs::with_options(
        c.addrs[via],
        Options {
            batch_files: 8,
            concurrency: 2,
            ..Options::default()
        },
    );
    let scratch = c.local_path("rounds");
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let rounds_ok = Arc::new(AtomicUsize::new(0));
    let rounds_ok_after = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (stop, killed) = (stop.clone(), killed.clone());
        let (rounds_ok, rounds_ok_after) = (rounds_ok.clone(), rounds_ok_after.clone());
        tokio::spawn(async move {
            let mut told = Vec::new();
            for round in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let after_kill = killed.load(Ordering::SeqCst);
                let mut batch: Vec<(PathBuf, String)> = Vec::new();
                let mut contents = Vec::new();
                for k in 0..24u64 {
                    let seed = round * 100 + k;
                    let bytes = pattern(seed, 4096 + (seed as usize * 131) % 12_000);
                    let local = scratch.join(format!("{round}-{k}"));
                    write_file(&local, &bytes).unwrap();
                    let name = format!("rounds/{round}/f{k}");
                    batch.push((local, name.clone()));
                    contents.push((name, bytes));
                }
                let results = client.put_many(batch, &no_progress).await;
                let mut all_ok = true;
                for ((name, bytes), r) in contents.into_iter().zip(results) {
                    all_ok &= r.is_ok();
                    told.push(Told {
                        name,
                        bytes,
                        outcome: r.map(|p| p.version).map_err(|e| e.to_string()),
                    });
                }
                if all_ok {
                    rounds_ok.fetch_add(1, Ordering::SeqCst);
                    if after_kill {
                        rounds_ok_after.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            told
        })
    };
    wait_until("3 rounds before the kill", READY, SDFS_POLL, async || {
        anyhow::ensure!(rounds_ok.load(Ordering::SeqCst) >= 3, "not yet");
        Ok(())
    })
    .await
    .unwrap();
    killed.store(true, Ordering::SeqCst);
    c.kill_leader(leader, &all).await.unwrap();
    wait_count(
        "3 whole rounds acknowledged after the kill",
        &rounds_ok_after,
        3,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let told = stream.await.unwrap();
    log_failures("files", told.iter().map(|t| &t.outcome));

    let reader = c.client(via);
    for t in &told {
        let f = c.file(via, &t.name).await.unwrap();
        match &t.outcome {
            Ok(version) => {
                let f = f.unwrap_or_else(|| panic!("acknowledged {} is not committed", t.name));
                assert_eq!(
                    f.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
                    vec![*version],
                    "{}",
                    t.name
                );
                assert_eq!(
                    f.versions[0].checksum,
                    *blake3::hash(&t.bytes).as_bytes(),
                    "{} holds other bytes than acknowledged",
                    t.name
                );
                let out = c.local_path(&format!("got-{}", t.name));
                reader
                    .get(&t.name, &out, &no_progress)
                    .await
                    .unwrap_or_else(|e| panic!("get {}: {e}", t.name));
                assert!(std::fs::read(&out).unwrap() == t.bytes, "{} bytes", t.name);
            }
            // A put that reported failure left nothing visible. (A commit that
            // reached a majority just before the leader died is visible, and the
            // client must then learn of it instead of reporting a failure.)
            Err(e) => assert!(
                f.is_none(),
                "{} reported failure ({e}) but is visible",
                t.name
            ),
        }
    }
}
