//! Host compute slots and places on deck on real agents (one slot, in a
//! directory of the test's own): a job finishes while another process of
//! the host holds the slot and the place on deck (as a frozen agent would:
//! the workers stop waiting after half the lease timeout and run anyway),
//! and an idle cluster leaves the place on deck free (a worker holds one only
//! while it has work).
//!
//! Needs the binaries and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use dml_agent::infer::slots::HostSlots;
use dml_shared::infer::JobState;
use dml_tests::infer::{Images, prepare, set_batch, submit, wait_job};
use dml_tests::sdfs::{READY, SdfsCluster, SdfsOptions, cluster_slot};
use std::time::{Duration, Instant};

const JOB_BOUND: Duration = Duration::from_secs(180);
const DATASET: &str = "datasets/t/";

#[tokio::test]
async fn jobs_run_past_a_held_slot_and_an_idle_cluster_holds_no_place_on_deck() {
    let _slot = cluster_slot().await;
    let base = dml_tests::TestDir::new("infer-slots").unwrap();
    let dir = base.path().join("slots");
    // Another process of the host: it holds the one run slot and the one place.
    let other = HostSlots::open(&dir, 1, Duration::from_millis(100)).unwrap();
    let run = other.acquire().expect("the free run slot");
    let deck = other.deck().expect("the free place on deck");

    let mut opts = SdfsOptions::new(4);
    opts.extra_config = format!(
        "[inference]\nhost_slots = 1\nslot_dir = {:?}\nlease_timeout = \"2s\"\n",
        dir.display().to_string()
    );
    let c = SdfsCluster::start_with("infer-slots", opts).await.unwrap();
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await.unwrap();
    let at = c.addrs[leader];
    prepare(&c, leader, &["tiny"], DATASET, Images::Sample(8))
        .await
        .unwrap();
    set_batch(at, "tiny", 4).await.unwrap();

    let held = submit(at, "tiny", 16, DATASET).await.unwrap();
    let j = wait_job(&[at], held, JOB_BOUND, "the job to end", |j| {
        j.state != JobState::Running
    })
    .await
    .unwrap();
    assert_eq!((j.state, j.done), (JobState::Done, 16));
    drop((run, deck));

    let free = submit(at, "tiny", 16, DATASET).await.unwrap();
    let j = wait_job(&[at], free, JOB_BOUND, "the job to end", |j| {
        j.state != JobState::Running
    })
    .await
    .unwrap();
    assert_eq!((j.state, j.done), (JobState::Done, 16));

    // Idle now: the workers wait for work without a place, so this process
    // gets it (a worker takes it only for a moment, to ask for work).
    let deadline = Instant::now() + Duration::from_secs(20);
    let place = loop {
        match other.deck() {
            Some(p) => break Some(p),
            None if Instant::now() < deadline => continue,
            None => break None,
        }
    };
    assert!(place.is_some(), "an idle cluster kept the place on deck");
}
