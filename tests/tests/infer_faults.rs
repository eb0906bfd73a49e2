//! Inference jobs on real agents with the tiny model: a worker or the
//! leader SIGKILLed mid-job (every image exactly once), a batch-size change
//! mid-job (C3), two concurrent jobs of different cost sharing worker time
//! equally (fair-time), models that cannot run, and a job no worker can run (or no
//! worker at all) saying why.
//!
//! Needs the binaries and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use dml_shared::infer::{InferRequest, InferResponse, JobState, Outcome, Placement};
use dml_tests::dml::run_dml;
use dml_tests::infer::{
    Images, exactly_once, infer, job, jobs, output, prepare, set_batch, submit, wait_job,
};
use dml_tests::sdfs::{READY, SdfsCluster, SdfsOptions, cluster_alone, cluster_slot};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A job of a few hundred tiny-model images takes seconds; this is slack for a
/// loaded two-core machine and a failover.
const JOB_BOUND: Duration = Duration::from_secs(180);
const DATASET: &str = "datasets/t/";

fn all(c: &SdfsCluster) -> Vec<usize> {
    (0..c.len()).collect()
}

fn addrs(c: &SdfsCluster, idx: &[usize]) -> Vec<SocketAddr> {
    idx.iter().map(|i| c.addrs[*i]).collect()
}

/// Six agents with the tiny model and a 24-image sample dataset; returns the
/// cluster, the leader and another agent to talk through.
async fn six_agents_with_tiny(name: &str) -> (SdfsCluster, usize, usize) {
    let c = SdfsCluster::start(name, 6).await.unwrap();
    let leader = c.leader_index(&all(&c), READY).await.unwrap();
    let via = (0..c.len()).find(|i| *i != leader).unwrap();
    prepare(&c, via, &["tiny"], DATASET, Images::Sample(24))
        .await
        .unwrap();
    (c, leader, via)
}

#[tokio::test]
async fn worker_killed_mid_job_and_batch_size_changed_every_image_once() {
    let _slot = cluster_slot().await;
    let (mut c, leader, via) = six_agents_with_tiny("infer-worker-kill").await;
    let at = c.addrs[via];
    // A model whose file was never uploaded is refused at submit.
    let e = submit(at, "resnet50", 4, DATASET)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
        .unwrap_err();
    assert!(e.contains("models/resnet50.onnx is not in SDFS"), "{e}");
    set_batch(at, "tiny", 1).await.unwrap();
    let images = 300;
    let id = submit(at, "tiny", images, DATASET).await.unwrap();

    // C3 mid-job: later queries carry 4 images.
    let switch = wait_job(&[at], id, JOB_BOUND, "a tenth of the job", |j| j.done >= 30)
        .await
        .unwrap();
    set_batch(at, "tiny", 4).await.unwrap();

    // Kill a worker that holds a lease right now (not the leader, not `via`).
    let victim = dml_tests::wait_for(
        "a worker holding a lease",
        JOB_BOUND,
        Duration::from_millis(50),
        async || {
            let placement =
                match dml_tests::infer::infer(at, dml_shared::infer::InferRequest::Placement)
                    .await?
                {
                    dml_shared::infer::InferResponse::Placement(p) => p,
                    other => anyhow::bail!("{other:?}"),
                };
            placement
                .iter()
                .flat_map(|p| p.workers.iter().map(|(w, _)| *w))
                .filter_map(|w| c.index_of(w).ok())
                .find(|i| *i != leader && *i != via)
                .ok_or_else(|| {
                    anyhow::anyhow!("no lease outside the leader and {via}: {placement:?}")
                })
        },
    )
    .await
    .unwrap();
    c.kill(victim).await.unwrap();

    let survivors: Vec<usize> = (0..c.len()).filter(|i| *i != victim).collect();
    let done = wait_job(
        &addrs(&c, &survivors),
        id,
        JOB_BOUND,
        "the job to finish",
        |j| j.state != JobState::Running,
    )
    .await
    .unwrap();
    let (info, results) = output(at, id).await.unwrap();
    exactly_once(&info, &results).unwrap();
    assert_eq!(
        done.errors, 0,
        "every image of the dataset is valid: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(&r.outcome, Outcome::Top(p) if p.len() == 5))
    );
    // Batch 1 up to the switch (plus the queries already leased then, two per
    // worker), batch 4 after it (plus the victim's queries dispatched again).
    let slack = 2 * c.len() as u64 * 2;
    let remaining = u64::from(images - switch.done);
    let bound = u64::from(switch.done) + slack + remaining.div_ceil(4);
    assert!(
        info.queries <= bound && info.queries < u64::from(images),
        "{} queries for {images} images: the new batch size was not applied (bound {bound})",
        info.queries
    );
    // The output is also stored in SDFS.
    let stored = wait_job(&[at], id, JOB_BOUND, "the output in SDFS", |j| {
        j.output.is_some()
    })
    .await
    .unwrap();
    let name = stored.output.unwrap();
    let (out, bytes) = c.get_bytes(via, &name).await.unwrap();
    out.ensure_success().unwrap();
    let text = String::from_utf8(bytes.unwrap()).unwrap();
    assert_eq!(text.lines().count(), images as usize);
    // Its results left the Raft state; get-output now reads them from SDFS.
    let (info, again) = output(at, id).await.unwrap();
    exactly_once(&info, &again).unwrap();
    assert_eq!(again, results);
}

#[tokio::test]
async fn leader_killed_mid_job_the_job_finishes_with_every_image_once() {
    let _slot = cluster_slot().await;
    let (mut c, leader, via) = six_agents_with_tiny("infer-leader-kill").await;
    let at = c.addrs[via];
    set_batch(at, "tiny", 2).await.unwrap();
    let images = 400;
    let id = submit(at, "tiny", images, DATASET).await.unwrap();
    let before = wait_job(&[at], id, JOB_BOUND, "a tenth of the job", |j| j.done >= 40)
        .await
        .unwrap();
    c.kill(leader).await.unwrap();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..c.len()).filter(|i| *i != leader).collect();
    // Reads through the election (one after another from the kill until a new
    // leader answers) wait for the next leader instead of failing.
    let mut reads = 0;
    loop {
        let jobs = run_dml(&["--agent", &at.to_string(), "--json", "jobs"], JOB_BOUND)
            .await
            .unwrap();
        jobs.ensure_success().unwrap();
        let listed = jobs.json().unwrap();
        assert!(
            listed
                .as_array()
                .is_some_and(|js| js.iter().any(|j| j["id"] == id)),
            "{listed}"
        );
        reads += 1;
        let l = c.agent(via).client().leader().await;
        if l.is_ok_and(|l| l.leader.is_some_and(|a| a != c.addrs[leader])) {
            break;
        }
    }
    eprintln!("{reads} reads of the jobs during the election, all answered");
    let new_leader = c.leader_index(&survivors, READY).await.unwrap();
    assert_ne!(new_leader, leader);
    // Progress is in Raft: the new leader resumes, it does not start over.
    let after = job(at, id).await.unwrap();
    assert!(
        after.done >= before.done,
        "{} < {}",
        after.done,
        before.done
    );
    wait_job(
        &addrs(&c, &survivors),
        id,
        JOB_BOUND,
        "the job to finish",
        |j| j.state != JobState::Running,
    )
    .await
    .unwrap();
    eprintln!(
        "job finished {:.1} s after the leader was killed",
        killed.elapsed().as_secs_f64()
    );
    let (info, results) = output(at, id).await.unwrap();
    exactly_once(&info, &results).unwrap();
    assert_eq!(info.errors, 0);
    // The new leader stores the output.
    wait_job(&[at], id, JOB_BOUND, "the output in SDFS", |j| {
        j.output.is_some()
    })
    .await
    .unwrap();
}

/// Two models over the same tiny network: `tiny` runs 1 image per query,
/// `tiny8` 8, so a `tiny8` query costs several times more. A model `tiny32`
/// whose registry entry says 32x32 does not match the file (64x64).
fn test_registry(dir: &std::path::Path) -> std::path::PathBuf {
    let labels =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/imagenet_labels.txt");
    std::fs::copy(labels, dir.join("labels.txt")).unwrap();
    let entry = |name: &str, size: u32, resize: u32, batch: u32| {
        format!(
            "[[model]]\nname = \"{name}\"\nfile = \"tiny.onnx\"\ninput_size = {size}\nresize = {resize}\n\
             mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\nlabels = \"labels.txt\"\n\
             batch = {batch}\nmax_batch = 64\n\n"
        )
    };
    let text = entry("tiny", 64, 72, 1) + &entry("tiny8", 64, 72, 8) + &entry("tiny32", 32, 36, 2);
    let path = dir.join("models.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn concurrent_jobs_of_different_cost_share_worker_time() {
    // Shares of worker time: no other test's cluster may run on these cores meanwhile
    // (one ran beside it in CI and took time shares 0.17-0.5 off half; alone, 0.01).
    let _slot = cluster_alone().await;
    let base = dml_tests::TestDir::new("infer-fair-registry").unwrap();
    let registry = test_registry(base.path());
    let mut opts = SdfsOptions::new(4);
    opts.extra_config = format!(
        "[inference]\nregistry = {:?}\n",
        registry.display().to_string()
    );
    let c = SdfsCluster::start_with("infer-fair", opts).await.unwrap();
    let leader = c.leader_index(&all(&c), READY).await.unwrap();
    let at = c.addrs[leader];
    prepare(
        &c,
        leader,
        &["tiny", "tiny8", "tiny32"],
        DATASET,
        Images::Small(16),
    )
    .await
    .unwrap();

    let a = submit(at, "tiny", 4000, DATASET).await.unwrap();
    let b = submit(at, "tiny8", 32000, DATASET).await.unwrap();
    // Sample the leader's shares of the last 10 s's completions while both run.
    let mut samples: Vec<(Instant, Vec<Placement>)> = Vec::new();
    let started = Instant::now();
    loop {
        let Ok(mut all) = jobs(at).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let (Some(ja), Some(jb)) = (all.remove(&a), all.remove(&b)) else {
            panic!("jobs {a} and {b} are not both listed");
        };
        if ja.state != JobState::Running || jb.state != JobState::Running {
            break;
        }
        if let Ok(InferResponse::Placement(p)) = infer(at, InferRequest::Placement).await {
            samples.push((Instant::now(), p));
        }
        if started.elapsed() > Duration::from_secs(35) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Once the 10 s window holds both jobs' queries: their shares of worker
    // time stay near half each, while a `tiny8` query costs more, so `tiny`
    // completes more queries.
    let share = |p: &[Placement], job| p.iter().find(|p| p.job == job).cloned();
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for (t, p) in &samples {
        if t.duration_since(started) < Duration::from_secs(12) {
            continue;
        }
        let (Some(pa), Some(pb)) = (share(p, a), share(p, b)) else {
            continue;
        };
        worst = worst.max((pa.time_share - 0.5).abs());
        assert!(pa.query_share > pb.query_share, "{pa:?} {pb:?}");
        checked += 1;
        if checked % 10 == 1 {
            eprintln!(
                "at {:.1} s: time shares {:.3} / {:.3}, query shares {:.3} / {:.3}",
                t.duration_since(started).as_secs_f64(),
                pa.time_share,
                pb.time_share,
                pa.query_share,
                pb.query_share
            );
        }
    }
    eprintln!("{checked} samples, worst time share off half by {worst:.3}");
    assert!(
        checked >= 10,
        "the jobs ran together for too short a time ({checked} samples)"
    );
    assert!(
        worst <= 0.1,
        "time shares drifted apart: {worst:.3} off half"
    );

    // A model whose registry entry does not match its file fails its job
    // with a reason that names both shapes, and the other jobs go on.
    let bad = submit(at, "tiny32", 8, DATASET).await.unwrap();
    let failed = wait_job(&[at], bad, JOB_BOUND, "the mismatched job to fail", |j| {
        j.state == JobState::Failed
    })
    .await
    .unwrap();
    let reason = failed.reason.unwrap();
    assert!(reason.contains("32") && reason.contains("64"), "{reason}");
    assert_eq!(job(at, a).await.unwrap().state, JobState::Running);

    // A corrupt file and a text file in a dataset are reported for those
    // images; the job goes on and finishes.
    let dir = c.local_path("mixed");
    dml_tests::infer::small_images(&dir, 1).unwrap();
    let good = std::fs::read(dir.join("s0000.png")).unwrap();
    let mut corrupt = good.clone();
    corrupt.truncate(good.len() / 2);
    c.must_put(leader, "datasets/mixed/a.png", &good)
        .await
        .unwrap();
    c.must_put(leader, "datasets/mixed/b.png", &corrupt)
        .await
        .unwrap();
    c.must_put(leader, "datasets/mixed/c.txt", b"not an image at all")
        .await
        .unwrap();
    let mixed = submit(at, "tiny", 3, "datasets/mixed").await.unwrap();
    let done = wait_job(&[at], mixed, JOB_BOUND, "the mixed job to finish", |j| {
        j.state != JobState::Running
    })
    .await
    .unwrap();
    assert_eq!((done.state, done.done, done.errors), (JobState::Done, 3, 2));
    let (_, results) = output(at, mixed).await.unwrap();
    for r in &results {
        match (&r.outcome, r.image.as_str()) {
            (Outcome::Top(p), "datasets/mixed/a.png") => assert_eq!(p.len(), 5),
            (Outcome::Error(e), _) if r.image != "datasets/mixed/a.png" => {
                assert!(e.contains("decode") || e.contains("image"), "{e}")
            }
            other => panic!("unexpected result {other:?}"),
        }
    }
}

/// Issue 18: with ONNX Runtime missing on every agent, a job stalls, and `dml jobs` says
/// why (text and JSON) instead of showing 0% done with nothing to go on.
#[tokio::test]
async fn a_job_no_worker_can_run_says_why() {
    let _slot = cluster_slot().await;
    let mut opts = SdfsOptions::new(3);
    opts.extra_config = "[inference]\nort_dylib = \"/nonexistent/libonnxruntime.so\"\n".into();
    let c = SdfsCluster::start_with("infer-stalled", opts)
        .await
        .unwrap();
    prepare(&c, 0, &["tiny"], DATASET, Images::Small(4))
        .await
        .unwrap();
    let id = submit(c.addrs[1], "tiny", 4, DATASET).await.unwrap();
    let info = dml_tests::wait::wait_for(
        "the stalled job to say why",
        Duration::from_secs(90),
        Duration::from_millis(250),
        async || {
            let j = job(c.addrs[2], id).await?;
            // Every worker's report in (each retries until the leader takes it).
            match &j.stalled {
                Some(s) if s.contains("3 of 3 workers") => Ok(s.clone()),
                _ => anyhow::bail!("job {id}: {j:?}"),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        info.contains("no worker can run tiny")
            && info.contains("ONNX Runtime is not loaded on 3 of 3 workers")
            && info.contains("/nonexistent/libonnxruntime.so"),
        "{info}"
    );
    assert_eq!(job(c.addrs[0], id).await.unwrap().done, 0);
    let out = c.dml(0, &["jobs"]).await.unwrap();
    let text = out.ensure_success().unwrap().stdout.clone();
    assert!(text.contains("ONNX Runtime is not loaded"), "{text}");
    let out = c.dml(2, &["--json", "jobs"]).await.unwrap();
    let v = out.json().unwrap();
    assert!(
        v.to_string()
            .contains("ONNX Runtime is not loaded on 3 of 3 workers"),
        "{v}"
    );
}

/// Issue 18: with `inference.worker = false` on every agent, nobody asks for work, and once
/// the leader has led long enough to know, `dml jobs` says so.
#[tokio::test]
async fn a_job_without_any_worker_says_why() {
    let _slot = cluster_slot().await;
    let mut opts = SdfsOptions::new(3);
    opts.extra_config = "[inference]\nworker = false\n".into();
    let c = SdfsCluster::start_with("infer-no-worker", opts)
        .await
        .unwrap();
    prepare(&c, 0, &["tiny"], DATASET, Images::Small(4))
        .await
        .unwrap();
    let id = submit(c.addrs[1], "tiny", 4, DATASET).await.unwrap();
    let why = dml_tests::wait::wait_for(
        "the job without workers to say why",
        Duration::from_secs(60),
        Duration::from_millis(250),
        async || {
            let j = job(c.addrs[2], id).await?;
            match &j.stalled {
                Some(s) if j.state == JobState::Running => Ok(s.clone()),
                _ => anyhow::bail!("job {id}: {j:?}"),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        why.starts_with("no worker can run tiny: no worker has asked for work in the last")
            && why.contains("is inference.worker off on every agent?"),
        "{why}"
    );
    let out = c.dml(0, &["jobs"]).await.unwrap();
    let text = out.ensure_success().unwrap().stdout.clone();
    assert!(text.contains("no worker has asked for work"), "{text}");
}
