//! Chaos: eight real agents (m = 3: seven Raft voters, four replicas per SDFS version)
//! take a seeded schedule of faults — SIGKILL (restarted later on the same data
//! directory), SIGSTOP (SIGCONT later) and receive-side drop rules (removed later), never
//! more than three agents at once — while two client loops put new versions of a few SDFS
//! files and inference jobs of the tiny model run. Once every fault is healed: every
//! acknowledged version is still there with its bytes, every job has each image exactly
//! once, every agent lists the same members, and the voters agree on the Raft leader, term,
//! last applied entry and the digest of their state machines at it. The leader is then
//! frozen twice in turn and each new leader must serve the same committed versions and
//! jobs.
//!
//! The seed comes from `DML_CHAOS_SEED` (else a random one); it and the schedule are
//! printed at the start and again on failure. The same seed gives the same schedule (with
//! these constants); the cluster's own timing still varies from run to run. Needs root for nftables (or iptables), the
//! binaries (`cargo build --workspace --bins`) and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use anyhow::{Result, anyhow, bail, ensure};
use dml_shared::infer::{JobId, JobState};
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::chaos::{Action, DropRule, Firewall, Schedule, ScheduleParams, Step};
use dml_tests::infer::{Images, JOB_POLL, exactly_once, jobs, output, prepare, set_batch, submit};
use dml_tests::sdfs::api::leader_info;
use dml_tests::sdfs::content::pattern;
use dml_tests::sdfs::partition::Frozen;
use dml_tests::sdfs::{READY, SDFS_POLL, SdfsCluster, cluster_slot};
use dml_tests::view::wait_converged;
use dml_tests::{Agent, wait_for, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// m = 3: the first seven are the voters (quorum four), the eighth is not.
const AGENTS: usize = 8;
/// Faults start within this time and are all healed by its end.
const CHAOS: Duration = Duration::from_secs(80);
/// Three faulted agents leave four of the seven voters and five agents for four replicas.
const MAX_FAULTED: usize = 3;
/// Two client loops put new versions, each over this many files of its own.
const FILES_PER_LOOP: usize = 2;
/// Time for the healed cluster to agree again (restarted and rejoined agents included).
const HEAL: Duration = Duration::from_secs(90);
/// Time for the last job to finish after the chaos.
const JOB_BOUND: Duration = Duration::from_secs(120);
/// Time for one check that reads SDFS after the heal (a read retried through elections).
const READ_BOUND: Duration = Duration::from_secs(30);
/// Leader changes forced after the checks, each letting one more voter serve its state.
const ROTATIONS: usize = 2;
const DATASET: &str = "datasets/chaos/";
/// Images per job; a finished job is followed by another while the chaos lasts.
const JOB_IMAGES: u32 = 600;

fn params() -> ScheduleParams {
    ScheduleParams {
        agents: AGENTS,
        max_faulted: MAX_FAULTED,
        length: CHAOS,
        gap_ms: (1000, 4000),
        fault_ms: (3000, 12_000),
        cooldown: Duration::from_secs(2),
    }
}

/// What the chaos driver and the client loops share.
struct Shared {
    epoch: Instant,
    /// Agents faulted now; the loops talk through the others.
    faulted: Mutex<BTreeSet<usize>>,
    stop: AtomicBool,
    addrs: Vec<SocketAddr>,
    /// Steps as they were carried out: (time, action, target).
    log: Mutex<Vec<(Duration, Action, usize)>>,
}

impl Shared {
    /// The `n`-th healthy agent, cycling.
    fn healthy(&self, n: usize) -> usize {
        let f = self.faulted.lock().unwrap();
        let ok: Vec<usize> = (0..self.addrs.len()).filter(|i| !f.contains(i)).collect();
        ok[n % ok.len()]
    }

    /// Whether a fault hit agent `i` between `from` and `to`.
    fn faulted_during(&self, i: usize, from: Duration, to: Duration) -> bool {
        let log = self.log.lock().unwrap();
        let mut down = false;
        for &(t, a, _) in log.iter().filter(|s| s.2 == i && s.0 <= to) {
            if a.is_fault() && t >= from {
                return true;
            }
            down = a.is_fault();
        }
        down
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A put the client was told committed.
#[derive(Debug)]
struct Acked {
    name: String,
    version: u64,
    hash: [u8; 32],
    seed: u64,
    len: usize,
    at: Duration,
    via: usize,
}

/// A put that reported an error (allowed during faults).
#[derive(Debug)]
struct Failed {
    name: String,
    hash: [u8; 32],
    at: Duration,
    end: Duration,
    via: usize,
    error: String,
}

/// Short client timeouts: a put through a frozen chain fails in seconds instead of
/// holding the loop for minutes.
fn put_options() -> Options {
    Options {
        call_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        store_timeout: Duration::from_secs(15),
        leader_wait: Duration::from_secs(10),
        ..Options::default()
    }
}

/// Puts new versions of its files round-robin, each through the next healthy agent,
/// until told to stop.
async fn put_loop(
    k: usize,
    shared: Arc<Shared>,
    scratch: PathBuf,
) -> Result<(Vec<Acked>, Vec<Failed>)> {
    std::fs::create_dir_all(&scratch)?;
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    let mut n = 0usize;
    while !shared.stopped() {
        let name = format!("chaos/l{k}/f{}", n % FILES_PER_LOOP);
        let seed = ((k as u64) << 32) | n as u64;
        let len = 32 * 1024 + (seed.wrapping_mul(2_654_435_761) % (96 * 1024)) as usize;
        let bytes = pattern(seed, len);
        let hash = *blake3::hash(&bytes).as_bytes();
        let local = scratch.join(n.to_string());
        std::fs::write(&local, &bytes)?;
        let via = shared.healthy(n + k);
        let at = shared.epoch.elapsed();
        let client = Sdfs::with_options(shared.addrs[via], put_options());
        match client.put(&local, &name, &no_progress).await {
            Ok(r) => {
                ensure!(
                    r.checksum == hash,
                    "put of {name} (seed {seed}) acknowledged v{} with another checksum",
                    r.version
                );
                acked.push(Acked {
                    name,
                    version: r.version,
                    hash,
                    seed,
                    len,
                    at,
                    via,
                });
            }
            Err(e) => failed.push(Failed {
                name,
                hash,
                at,
                end: shared.epoch.elapsed(),
                via,
                error: e.to_string(),
            }),
        }
        std::fs::remove_file(&local)?;
        n += 1;
    }
    Ok((acked, failed))
}

/// Submits a job, waits for it to finish (or for the chaos to end), and submits the next,
/// through healthy agents; returns the jobs it was told were submitted and the errors
/// it met on the way.
async fn job_loop(shared: Arc<Shared>) -> (Vec<JobId>, Vec<String>) {
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    let mut n = 0usize;
    while !shared.stopped() {
        let submitted = wait_for("a job submitted", HEAL, JOB_POLL, async || {
            if shared.stopped() {
                return Ok(None);
            }
            n += 1;
            let via = shared.addrs[shared.healthy(n)];
            let r = submit(via, "tiny", JOB_IMAGES, DATASET).await;
            if let Err(e) = &r {
                errors.push(format!("submit through {via}: {e:#}"));
            }
            r.map(Some)
        })
        .await;
        let Ok(Some(id)) = submitted else { break };
        ids.push(id);
        let _ = wait_until("the job to end", JOB_BOUND + CHAOS, JOB_POLL, async || {
            if shared.stopped() {
                return Ok(());
            }
            n += 1;
            let via = shared.addrs[shared.healthy(n)];
            let j = jobs(via).await?;
            match j.get(&id) {
                Some(j) if j.state == JobState::Running => bail!("running"),
                Some(_) => Ok(()),
                None => bail!("job {id} not listed by {via}"),
            }
        })
        .await;
    }
    (ids, errors)
}

/// Prints the seed, the schedule and what ran of it if the test panics.
struct FailureReport {
    schedule: String,
    done: Vec<String>,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n=== chaos test FAILED ===\n{}steps run (actual time):\n  {}\n",
                self.schedule,
                self.done.join("\n  ")
            );
        }
    }
}

#[tokio::test]
async fn chaos_keeps_acknowledged_data_jobs_exactly_once_and_one_view() {
    let _slot = cluster_slot().await;
    let test_start = Instant::now();
    let seed = dml_tests::chaos::seed_from_env().unwrap();
    let schedule = Schedule::draw(seed, &params());
    eprintln!("{schedule}");
    let mut report = FailureReport {
        schedule: schedule.to_string(),
        done: Vec::new(),
    };
    let firewall = Firewall::detect().unwrap();
    for t in dml_tests::chaos::remove_stale_tables() {
        eprintln!("removed stale nftables table {t} of an earlier run");
    }

    let mut c = SdfsCluster::start("chaos", AGENTS).await.unwrap();
    assert_eq!(c.voters().len(), 7);
    assert_eq!(c.replicas(), 4);
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await.unwrap();
    let via = (leader + 1) % AGENTS;
    prepare(&c, via, &["tiny"], DATASET, Images::Small(32))
        .await
        .unwrap();
    set_batch(c.addrs[via], "tiny", 2).await.unwrap();
    std::fs::write(c.dir().join("schedule.txt"), schedule.to_string()).unwrap();
    let names: Vec<String> = c
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("a{i}={a}"))
        .collect();
    eprintln!(
        "cluster ready in {:.1?} (leader a{leader}; {}); chaos starts",
        test_start.elapsed(),
        names.join(" ")
    );

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        faulted: Mutex::new(BTreeSet::new()),
        stop: AtomicBool::new(false),
        addrs: c.addrs.clone(),
        log: Mutex::new(Vec::new()),
    });
    // The loops and the schedule run together on this task (no spawn: agents restarted
    // here must belong to the test's thread).
    let dirs = [c.local_path("loop0"), c.local_path("loop1")];
    let puts = async {
        let [d0, d1] = dirs;
        let (a, b) = tokio::join!(
            put_loop(0, shared.clone(), d0),
            put_loop(1, shared.clone(), d1)
        );
        [a, b]
    };
    let (dropped_packets, put_results, (job_ids, submit_errors)) = tokio::join!(
        run_schedule(&mut c, &schedule, &shared, firewall, &mut report),
        puts,
        job_loop(shared.clone())
    );
    let chaos_took = shared.epoch.elapsed();
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for r in put_results {
        let (a, f) = r.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    eprintln!(
        "chaos over after {chaos_took:.1?}: {} puts acknowledged, {} failed; jobs {job_ids:?}",
        acked.len(),
        failed.len()
    );

    // (3) One membership view: every agent lists exactly the agents' current identities.
    let heal = Instant::now();
    let agents: Vec<&Agent> = c.cluster.agents.iter().collect();
    let view = wait_converged(&agents, HEAL).await.unwrap();
    let converged_after = heal.elapsed();
    let leader = c.leader_index(&all, HEAL).await.unwrap();
    eprintln!(
        "healed: {} members in every view after {converged_after:.1?}; leader a{leader}",
        view.len()
    );

    // (1) Every acknowledged version is committed with its checksum and reads back intact.
    ensure_acked_sequential(&acked).unwrap();
    let reader = Sdfs::new(c.addrs[leader]);
    let mut files: BTreeMap<String, dml_shared::sdfs::FileInfo> = BTreeMap::new();
    for name in acked
        .iter()
        .map(|a| a.name.clone())
        .collect::<BTreeSet<_>>()
    {
        let f = wait_for("the file's versions", READ_BOUND, SDFS_POLL, async || {
            c.file(leader, &name).await
        })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} has acknowledged versions but none is committed"));
        files.insert(name, f);
    }
    let out_dir = c.local_path("verify");
    std::fs::create_dir_all(&out_dir).unwrap();
    for a in &acked {
        let f = &files[&a.name];
        let v = f
            .versions
            .iter()
            .find(|v| v.version == a.version)
            .unwrap_or_else(|| {
                panic!(
                    "LOST: acknowledged {} v{} (seed {}, {} bytes, put through a{} at +{:.2}s) is not committed; committed: {:?}",
                    a.name,
                    a.version,
                    a.seed,
                    a.len,
                    a.via,
                    a.at.as_secs_f64(),
                    f.versions.iter().map(|v| v.version).collect::<Vec<_>>()
                )
            });
        assert!(
            v.checksum == a.hash,
            "CORRUPT: {} v{} is committed with another checksum than the put acknowledged (seed {})",
            a.name,
            a.version,
            a.seed
        );
        let local = out_dir.join(format!("{}-v{}", a.name.replace('/', "_"), a.version));
        wait_until(
            "the version to read back",
            READ_BOUND,
            SDFS_POLL,
            async || {
                reader
                    .get_version(&a.name, a.version, &local, &no_progress)
                    .await
                    .map(drop)
                    .map_err(|e| anyhow!("get {} v{}: {e}", a.name, a.version))
            },
        )
        .await
        .unwrap();
        let got = std::fs::read(&local).unwrap();
        assert!(
            *blake3::hash(&got).as_bytes() == a.hash,
            "CORRUPT: {} v{} read back {} bytes that differ from the {} put (seed {})",
            a.name,
            a.version,
            got.len(),
            a.len,
            a.seed
        );
    }
    // A failed put may still have committed (its answer lost with a killed agent); count
    // those, they are not errors.
    let failed_visible: Vec<&Failed> = failed
        .iter()
        .filter(|f| {
            files
                .get(&f.name)
                .is_some_and(|fi| fi.versions.iter().any(|v| v.checksum == f.hash))
        })
        .collect();
    for f in &failed_visible {
        eprintln!(
            "note: a put reported failure but committed: {} +{:.2}s..+{:.2}s through a{} \
             (faulted during the put: {}): {}",
            f.name,
            f.at.as_secs_f64(),
            f.end.as_secs_f64(),
            f.via,
            shared.faulted_during(f.via, f.at, f.end),
            f.error
        );
    }
    let failed_visible = failed_visible.len();

    // (2) Every job finishes with each image exactly once.
    let listed = wait_for("every job to finish", JOB_BOUND, JOB_POLL, async || {
        let j = jobs(c.addrs[leader]).await?;
        let running: Vec<JobId> = j
            .values()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect();
        ensure!(running.is_empty(), "jobs {running:?} still running");
        let unstored: Vec<JobId> = j
            .values()
            .filter(|j| j.output.is_none())
            .map(|j| j.id)
            .collect();
        ensure!(
            unstored.is_empty(),
            "outputs of jobs {unstored:?} not in SDFS yet"
        );
        Ok(j)
    })
    .await
    .unwrap();
    for id in &job_ids {
        assert!(listed.contains_key(id), "submitted job {id} is not listed");
    }
    assert!(!listed.is_empty(), "no job ran");
    let mut images = 0;
    let mut image_errors = 0;
    for (id, j) in &listed {
        let (info, results) = wait_for("the job's output", READ_BOUND, JOB_POLL, async || {
            output(c.addrs[leader], *id).await
        })
        .await
        .unwrap();
        exactly_once(&info, &results).unwrap_or_else(|e| panic!("{e:#}; job {j:?}"));
        images += info.images;
        image_errors += info.errors;
        for r in &results {
            if let dml_shared::infer::Outcome::Error(e) = &r.outcome {
                eprintln!("job {id} image {} ({}): error {e}", r.index, r.image);
            }
        }
    }

    // (4) The voters agree on the leader and term, have applied the same entries, and
    // hold the same state machine (its digest at that entry).
    let voters = c.voter_indices();
    let raft = wait_for(
        "the voters to apply the same entries",
        HEAL,
        SDFS_POLL,
        async || {
            let mut seen = BTreeSet::new();
            for &i in &voters {
                let l = leader_info(c.addrs[i]).await?;
                let applied = l
                    .last_applied
                    .ok_or_else(|| anyhow!("voter a{i} reports no applied entry"))?;
                let digest = l
                    .applied_digest
                    .ok_or_else(|| anyhow!("voter a{i} reports no state digest"))?;
                seen.insert((l.leader, l.term, applied, digest));
            }
            ensure!(
                seen.len() == 1,
                "(leader, term, last applied, state digest) differ: {seen:?}"
            );
            Ok(seen.into_iter().next().expect("one"))
        },
    )
    .await
    .unwrap();

    // No voter answers reads from its own state machine, so each is read as leader in
    // turn: freeze the leader, let another take over, and compare what it serves.
    let baseline = state_digest(c.addrs[leader]).await.unwrap();
    let mut read_from = vec![leader];
    for _ in 0..ROTATIONS {
        let old = read_from[read_from.len() - 1];
        let frozen = Frozen::stop(&[c.agent(old).pid()]).unwrap();
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let new = c.leader_index(&others, HEAL).await.unwrap();
        let state = wait_for(
            "the new leader's state",
            READ_BOUND,
            SDFS_POLL,
            async || state_digest(c.addrs[new]).await,
        )
        .await
        .unwrap();
        assert_eq!(
            state, baseline,
            "DIVERGED: voter a{new} as leader serves another SDFS/jobs state than a{leader} did"
        );
        frozen.resume().unwrap();
        read_from.push(new);
    }
    let agents: Vec<&Agent> = c.cluster.agents.iter().collect();
    wait_converged(&agents, HEAL).await.unwrap();
    c.leader_index(&all, HEAL).await.unwrap();

    let (kills, stops, drops) = schedule.counts();
    eprintln!(
        "\n=== chaos summary (seed {seed}) ===\n\
         faults: {kills} sigkill+restart, {stops} sigstop+sigcont, {drops} drop rules \
         ({dropped_packets} packets dropped), at most {} at once; chaos {chaos_took:.1?}\n\
         puts: {} acknowledged and verified ({} files), {} failed ({failed_visible} of them \
         committed anyway)\n\
         jobs: {} ({images} images, {image_errors} image errors, each image exactly once); \
         {} submit attempts failed\n\
         membership: {} members in every view {converged_after:.1?} after the chaos\n\
         raft: the {} voters agree on leader {}, term {}, last applied {}, state {}; voters \
         {read_from:?} served the same {} versions and {} jobs as leaders\n\
         total {:.1?}",
        schedule.max_concurrent(),
        acked.len(),
        files.len(),
        failed.len(),
        listed.len(),
        submit_errors.len(),
        view.len(),
        voters.len(),
        raft.0
            .and_then(|l| c.index_of(l).ok())
            .map_or("none".to_string(), |i| format!("a{i}")),
        raft.1,
        raft.2,
        raft.3,
        baseline.0.len(),
        baseline.1.len(),
        test_start.elapsed()
    );
    let too_few_alive = failed
        .iter()
        .filter(|f| f.error.contains("alive; a write needs"))
        .count();
    if too_few_alive > 0 {
        eprintln!(
            "note: {too_few_alive} puts were refused for too few alive agents although at \
             most {MAX_FAULTED} of {AGENTS} were faulted at a time"
        );
    }
    if !failed.is_empty() {
        let mut by_error: BTreeMap<String, usize> = BTreeMap::new();
        for f in &failed {
            let short: String = f.error.chars().take(90).collect();
            *by_error.entry(short).or_default() += 1;
        }
        eprintln!("put failures by message: {by_error:#?}");
        for f in &failed {
            eprintln!(
                "  failed put +{:.2}s {} through a{}: {}",
                f.at.as_secs_f64(),
                f.name,
                f.via,
                f.error
            );
        }
        let late: Vec<_> = failed
            .iter()
            .filter(|f| f.at > CHAOS)
            .map(|f| (f.via, &f.error))
            .collect();
        eprintln!("put failures after the last heal: {late:?}");
    }
    assert!(
        acked.len() >= 10,
        "only {} puts were acknowledged in {chaos_took:.1?}",
        acked.len()
    );
    drop(report);
}

/// Runs the schedule's steps at their times, then tells the loops to stop; returns the
/// packets the drop rules dropped. A step that cannot be carried out fails the test.
async fn run_schedule(
    c: &mut SdfsCluster,
    schedule: &Schedule,
    shared: &Shared,
    firewall: Firewall,
    report: &mut FailureReport,
) -> u64 {
    // Guards: a failing test still SIGCONTs and removes its rules while unwinding.
    let mut frozen: BTreeMap<usize, Frozen> = BTreeMap::new();
    let mut rules: BTreeMap<usize, DropRule> = BTreeMap::new();
    let mut dropped_packets = 0u64;
    for step in &schedule.steps {
        let Step { at, action, target } = *step;
        tokio::time::sleep_until((shared.epoch + at).into()).await;
        if action.is_fault() {
            shared.faulted.lock().unwrap().insert(target);
        }
        let t = shared.epoch.elapsed();
        shared.log.lock().unwrap().push((t, action, target));
        let r: Result<()> = match action {
            Action::Kill => c.kill(target).await,
            Action::Restart => c.restart(target).await,
            Action::Stop => Frozen::stop(&[c.agent(target).pid()]).map(|f| {
                frozen.insert(target, f);
            }),
            Action::Cont => frozen.remove(&target).map_or(Ok(()), Frozen::resume),
            Action::Drop => DropRule::install(firewall, c.addrs[target].port()).map(|r| {
                rules.insert(target, r);
            }),
            Action::Undrop => match rules.remove(&target) {
                Some(r) => {
                    dropped_packets += r.dropped_packets().unwrap_or(0);
                    r.remove()
                }
                None => Ok(()),
            },
        };
        let restarted = if action == Action::Restart {
            format!(", up after {:.1?}", shared.epoch.elapsed() - t)
        } else {
            String::new()
        };
        // Who leads as a healthy agent sees it, to tell faults of the leader apart.
        let asked = shared.addrs[shared.healthy(target + 1)];
        let leads = match leader_info(asked).await.map(|l| l.leader) {
            Ok(Some(l)) => c.index_of(l).map_or(l.to_string(), |i| format!("a{i}")),
            Ok(None) => "none".into(),
            Err(_) => "?".into(),
        };
        let line = format!(
            "+{:6.2}s {:8} a{target} (planned +{:.2}s{restarted}; leader {leads})",
            t.as_secs_f64(),
            action.name(),
            at.as_secs_f64(),
        );
        eprintln!("chaos {line}");
        report.done.push(line);
        if let Err(e) = r {
            panic!("{} a{target} failed: {e:#}", action.name());
        }
        if !action.is_fault() {
            shared.faulted.lock().unwrap().remove(&target);
        }
    }
    assert!(
        frozen.is_empty() && rules.is_empty(),
        "a fault was not healed"
    );
    shared.stop.store(true, Ordering::SeqCst);
    dropped_packets
}

/// What a leader serves from its state machine: every committed version (name,
/// version, checksum) and every job (id, state, images, results, errors, output).
type Digest = (
    BTreeSet<(String, u64, [u8; 32])>,
    BTreeSet<(JobId, String, u32, u32, u32, Option<String>)>,
);

async fn state_digest(addr: SocketAddr) -> Result<Digest> {
    let files = dml_tests::sdfs::api::list(addr, "*").await?;
    let versions = files
        .iter()
        .flat_map(|f| {
            f.versions
                .iter()
                .map(|v| (f.name.clone(), v.version, v.checksum))
        })
        .collect();
    let jobs = jobs(addr)
        .await?
        .into_values()
        .map(|j| {
            (
                j.id,
                format!("{:?}", j.state),
                j.images,
                j.done,
                j.errors,
                j.output,
            )
        })
        .collect();
    Ok((versions, jobs))
}

/// The loops put each file's versions one after another, so the versions acknowledged
/// for one file must increase.
fn ensure_acked_sequential(acked: &[Acked]) -> Result<()> {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for a in acked {
        if let Some(prev) = last.insert(&a.name, a.version) {
            ensure!(
                prev < a.version,
                "{} was acknowledged v{prev} and then v{} by a later put",
                a.name,
                a.version
            );
        }
    }
    Ok(())
}
