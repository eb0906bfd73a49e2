//! Issue 18 on the namespace test bed: five agents on five hosts and the test client on a
//! sixth, so every request crosses a (virtual) network, and partitions are real drop rules
//! in both directions. Needs root, `ip` and `nft` (installed by `scripts/setup.sh`).
//!
//! - a cut-off leader: replaced, and the heal keeps every identity (failures refuted);
//! - a seeded nemesis run: a recorded history checked for linearizability, jobs checked for
//!   exactly-once results, failure declarations checked against the faults;
//! - a soak: seven agents busy with inference suspect no one;
//! - a deploy: `dml cluster up` over SSH to four hosts, used from a fifth.

use anyhow::{Context, Result, anyhow, ensure};
use dml_shared::NodeId;
use dml_shared::api::Stats;
use dml_shared::client::Client;
use dml_shared::config::DEFAULT_PORT;
use dml_shared::infer::{JobInfo, JobState};
use dml_shared::sdfs_client::no_progress;
use dml_tests::DmlOutput;
use dml_tests::agent::Agent;
use dml_tests::dir::TestDir;
use dml_tests::events::EventKind;
use dml_tests::history::{self, Op, Ret, value_of};
use dml_tests::infer::{Images, exactly_once, jobs, output, prepare, submit, wait_job};
use dml_tests::nemesis::{self, Clients, Outcome, file_name};
use dml_tests::netbed::{Bed, cpu_busy_jiffies};
use dml_tests::sdfs::{DML, READY, SdfsCluster, SdfsOptions, api, content};
use dml_tests::ssh::{self, DeployedAgents, Sshd};
use dml_tests::view::{check_not_failed, wait_not_live};
use dml_tests::wait::wait_for;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const AGENTS: usize = 5;
const CLIENT: usize = AGENTS;

/// The leader's host is cut off from the other agents (both directions; the client still
/// reaches it). The majority elects a new leader and commits; the old leader says it has
/// no majority; after healing one leader remains, the majority's members kept their
/// identities and declared none of each other failed, the cut-off agent refuted its failure
/// and is back under its identity, no agent lists anyone as failed, and every file reads
/// back everywhere.
#[test]
fn a_cut_off_leader_is_replaced_and_the_heal_keeps_the_majority_identities() -> Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let bed = Bed::create(AGENTS + 1)?;
    let hosts = bed.hosts()[..AGENTS].to_vec();
    bed.block_on_in(CLIENT, || async {
        let mut opts = SdfsOptions::new(AGENTS);
        opts.hosts = hosts;
        let c = SdfsCluster::start_with("netbed-partition", opts).await?;
        let all: Vec<usize> = (0..AGENTS).collect();
        let before = c.leader_index(&all, READY).await?;
        c.must_put(before, "before", &content::text("before", 10_000))
            .await?;
        let ids_before: Vec<_> = current_ids(&c, &all).await?;

        let rest: Vec<usize> = all.iter().copied().filter(|&i| i != before).collect();
        let warnings_at_cut = raft_warnings(&c, before);
        let t0 = Instant::now();
        bed.partition(&[before], &rest)?;
        let new = wait_for(
            "the majority to elect a new leader",
            READY,
            Duration::from_millis(100),
            async || {
                let l = c.check_leader(&rest).await?;
                ensure!(
                    l != c.addrs[before],
                    "the cut-off agent a{before} still leads"
                );
                c.index_of(l)
            },
        )
        .await
        .with_context(|| format!("rules:\n{}", bed.rules()))?;
        // A put's chain may hold the cut-off agent until the majority drops it.
        let majority: Vec<&Agent> = rest.iter().map(|&i| c.agent(i)).collect();
        wait_not_live(&majority, &[ids_before[before]], READY).await?;
        let during = content::text("during", 20_000);
        c.must_put(rest[0], "during", &during).await?;
        eprintln!(
            "new leader a{new} committed a put {:.1} s after the cut",
            t0.elapsed().as_secs_f64()
        );
        // The cut-off agent no longer claims the term without a majority.
        let cut_off = c.addrs[before];
        wait_for(
            "the cut-off leader to stop claiming a majority",
            READY,
            Duration::from_millis(250),
            async || {
                let info = api::leader_info(cut_off).await?;
                ensure!(
                    info.leader != Some(cut_off) || info.unacked_ms.is_some(),
                    "a{before} still claims to lead, acknowledged: {info:?}"
                );
                Ok(())
            },
        )
        .await?;

        // The cut-off side has removed the others too before the heal.
        let rest_ids: Vec<NodeId> = rest.iter().map(|&i| ids_before[i]).collect();
        wait_not_live(&[c.agent(before)], &rest_ids, READY).await?;

        // Fifteen seconds apart at least, to see the log rate of failing Raft RPCs.
        tokio::time::sleep_until((t0 + Duration::from_secs(15)).into()).await;
        let apart = t0.elapsed().as_secs_f64();
        let logged = raft_warnings(&c, before) - warnings_at_cut;
        eprintln!("the cut-off agent logged {logged} openraft warnings in {apart:.1} s apart");
        // Unthrottled, every failed RPC is logged: about 80 a second (issue 18).
        ensure!(
            logged <= 150,
            "{logged} openraft warnings in {apart:.1} s: repeated errors are not rate-limited"
        );
        bed.heal()?;
        let t1 = Instant::now();
        c.wait_ready(READY).await?;
        eprintln!(
            "one view and one leader {:.1} s after healing",
            t1.elapsed().as_secs_f64()
        );
        for &i in &all {
            c.must_get(i, "before", &content::text("before", 10_000))
                .await?;
            c.must_get(i, "during", &during).await?;
        }
        let ids_after = current_ids(&c, &all).await?;
        // Each side held the other failed; both refute with a higher incarnation (issue 18):
        // the cut-off agent is reinstated, not re-joined under a new identity, and once the
        // view is one no agent lists any of the five as failed.
        ensure!(
            ids_after[before] == ids_before[before],
            "the cut-off agent a{before} took a new identity: {} → {}",
            ids_before[before],
            ids_after[before]
        );
        let agents: Vec<&Agent> = all.iter().map(|&i| c.agent(i)).collect();
        wait_for(
            "no agent to list a member as failed",
            READY,
            Duration::from_millis(200),
            async || check_not_failed(&agents, &ids_before).await,
        )
        .await?;
        let refuted = c
            .agent(before)
            .events()?
            .into_iter()
            .filter(|e| e.event == EventKind::Refuted)
            .count();
        ensure!(
            refuted >= 1,
            "a{before} logged no refutation of its failure"
        );
        for &i in &rest {
            ensure!(
                c.agent(i)
                    .events()?
                    .iter()
                    .any(|e| e.event == EventKind::Reinstated && e.member == ids_before[before]),
                "a{i} did not reinstate a{before}"
            );
        }
        for &i in &rest {
            ensure!(
                ids_after[i] == ids_before[i],
                "majority member a{i} changed identity: {} → {}",
                ids_before[i],
                ids_after[i]
            );
            let failed: Vec<String> = c
                .agent(i)
                .events()?
                .into_iter()
                .filter(|e| e.event == EventKind::Failed && rest.contains(&index(&c, e)))
                .map(|e| e.member.to_string())
                .collect();
            ensure!(
                failed.is_empty(),
                "a{i} declared majority members failed: {failed:?}"
            );
        }
        Ok(())
    })
}

async fn current_ids(c: &SdfsCluster, among: &[usize]) -> Result<Vec<NodeId>> {
    let mut v = Vec::new();
    for &i in among {
        v.push(c.agent(i).current_id().await?);
    }
    Ok(v)
}

/// Lines of openraft warnings and errors in agent `i`'s log so far.
fn raft_warnings(c: &SdfsCluster, i: usize) -> usize {
    c.agent(i)
        .stderr()
        .lines()
        .filter(|l| l.contains("openraft") && (l.contains("WARN") || l.contains("ERROR")))
        .count()
}

/// The agent index of an event's member (`usize::MAX` if none).
fn index(c: &SdfsCluster, e: &dml_tests::events::Event) -> usize {
    c.index_of(e.member.addr).unwrap_or(usize::MAX)
}

/// Files the nemesis clients work on.
const FILES: usize = 3;
/// How long after a fault a failure it caused may still be declared: the test timers'
/// ping interval and timeouts plus the longest suspicion, with room for a loaded machine.
const FAILURE_GRACE: Duration = Duration::from_secs(6);
/// The nemesis jobs' dataset.
const NEMESIS_DATA: &str = "datasets/nemesis/";
/// Each nemesis agent's own file system, which the full-disk fault fills: room for its
/// files, its Raft log and `sdfs.disk_reserve` (64 MiB).
const NEMESIS_DISK: u64 = 256 << 20;

/// A seeded nemesis run (`DML_NEMESIS_SEED` replays one, `DML_NEMESIS_SECS` sets its
/// length, 120 s by default): three clients put, get and delete a few files through random
/// hosts, and a fourth submits tiny-model jobs, while partitions, one-way loss, flapping
/// links, SIGKILLs (restarts on the agent's data or an emptied directory), SIGSTOPs and
/// wall-clock jumps of ±30 s come and go. Afterwards the history is linearizable per
/// file, every read was byte-exact, every stored version reads back as its put wrote it,
/// every job has each image exactly once, no member was declared failed because of loss, a
/// flapping link or a clock jump, and the voters agree on the state digest.
#[test]
fn a_seeded_nemesis_run_keeps_sdfs_linearizable() -> Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let seed: u64 = match std::env::var("DML_NEMESIS_SEED") {
        Ok(s) => s.parse().context("DML_NEMESIS_SEED must be a number")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let secs: f64 = match std::env::var("DML_NEMESIS_SECS") {
        Ok(s) => s.parse().context("DML_NEMESIS_SECS must be a number")?,
        Err(_) => 120.0,
    };
    let mut steps = nemesis::schedule(seed, secs, AGENTS);
    eprintln!(
        "nemesis seed {seed}, {secs} s, {} faults (replay: DML_NEMESIS_SEED={seed})",
        steps.len()
    );
    let bed = Bed::create(AGENTS + 1)?;
    let hosts = bed.hosts()[..AGENTS].to_vec();
    let result = bed.block_on_in(CLIENT, || async {
        let mut opts = SdfsOptions::new(AGENTS);
        opts.hosts = hosts;
        opts.movable_clocks = true;
        opts.disk_bytes = Some(NEMESIS_DISK);
        let mut c = SdfsCluster::start_with("netbed-nemesis", opts).await?;
        prepare(&c, 0, &["tiny"], NEMESIS_DATA, Images::Small(12)).await?;
        // On failure the cluster's files (logs, history.json) are kept.
        let scratch = c.local_path("clients");
        std::fs::create_dir_all(&scratch)?;
        let clients = Clients::new(c.addrs.clone(), FILES, scratch);
        let r: Result<()> = async {
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
            let since_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let (faults, _, _, _, acked_jobs) = tokio::join!(
                async {
                    let r = nemesis::run(&bed, &mut c, &mut steps, &clients.down).await;
                    tokio::time::sleep_until(end).await;
                    clients.stop.store(true, Ordering::Relaxed);
                    r
                },
                clients.client(seed ^ 1),
                clients.client(seed ^ 2),
                clients.client(seed ^ 3),
                clients.jobs(seed ^ 4, NEMESIS_DATA, 12),
            );
            faults?;
            bed.heal()?;
            c.wait_ready(READY).await?;

            // Final reads of every file through every agent, part of the history.
            for f in 0..FILES {
                for i in 0..AGENTS {
                    let t = clients.new_thread();
                    wait_for(
                        "a final read",
                        READY,
                        Duration::from_millis(250),
                        async || {
                            let o = clients.once(t, i, f, Op::Get, 0).await;
                            ensure!(o == Outcome::Done, "f{f} through a{i}: {o:?}");
                            Ok(())
                        },
                    )
                    .await?;
                }
            }
            let records = clients.history.records();
            let unknown = records.iter().filter(|r| r.completed.is_none()).count();
            let count = |p: fn(&Op) -> bool| records.iter().filter(|r| p(&r.op)).count();
            eprintln!(
                "history: {} operations ({} puts, {} gets, {} deletes), {unknown} unknown outcomes",
                records.len(),
                count(|o| matches!(o, Op::Put { .. })),
                count(|o| matches!(o, Op::Get)),
                count(|o| matches!(o, Op::Delete)),
            );
            for s in &steps {
                eprintln!(
                    "fault at {:6.1} s for {:.1} s: {}",
                    s.at_s,
                    s.lasts_s,
                    s.done.as_deref().unwrap_or("not run")
                );
            }
            // No member was declared failed while reachable from a majority: none around
            // one-way loss, flapping links or clock jumps, only the agent around a kill or a
            // pause (a suspicion ends within a few seconds of its fault).
            let unexcused = nemesis::unexcused_failures(&c, &steps, since_ms, FAILURE_GRACE)?;
            ensure!(
                unexcused.is_empty(),
                "seed {seed}: members declared failed while reachable from a majority:\n{}",
                unexcused.join("\n")
            );
            let corrupt = clients.corrupt.lock().expect("not poisoned").clone();
            ensure!(corrupt.is_empty(), "reads that no put wrote: {corrupt:#?}");

            let t = Instant::now();
            let checks = clients.history.check(FILES);
            for ch in &checks {
                eprintln!(
                    "f{}: {} operations, {} unknown: {}",
                    ch.file,
                    ch.ops,
                    ch.unknown,
                    if ch.linearizable {
                        "linearizable"
                    } else {
                        "NOT linearizable"
                    }
                );
            }
            eprintln!("checked in {:.1} s", t.elapsed().as_secs_f64());
            let failing: Vec<&str> = checks.iter().filter_map(|c| c.window.as_deref()).collect();
            ensure!(
                failing.is_empty(),
                "seed {seed}: not linearizable\n{}",
                failing.join("\n")
            );

            // Every stored version reads back as its put wrote it.
            let acked: Vec<(usize, u64, u64)> = records
                .iter()
                .filter_map(|r| match (&r.op, &r.completed) {
                    (Op::Put { value }, Some((_, Ret::Put { version }))) => {
                        Some((r.file, *version, *value))
                    }
                    _ => None,
                })
                .collect();
            let sdfs = c.client(0);
            for f in 0..FILES {
                let name = file_name(f);
                let Some(info) = c.file(0, &name).await? else {
                    continue;
                };
                for v in &info.versions {
                    let local = c.local_path("version");
                    sdfs.get_version(&name, v.version, &local, &no_progress)
                        .await
                        .with_context(|| format!("{name} v{}", v.version))?;
                    let bytes = std::fs::read(&local)?;
                    let value = value_of(&bytes)
                        .with_context(|| format!("{name} v{} holds no put's bytes", v.version))?;
                    ensure!(
                        bytes == history::content(value, bytes.len()),
                        "{name} v{} differs from what value {value}'s put wrote",
                        v.version
                    );
                    if let Some((.., put)) = acked
                        .iter()
                        .find(|(af, av, _)| *af == f && *av == v.version)
                    {
                        ensure!(
                            *put == value,
                            "{name} v{} holds value {value}, its put wrote {put}",
                            v.version
                        );
                    }
                }
            }

            // Every job ends with each image's result exactly once.
            let all_jobs = jobs(c.addrs[0]).await?;
            ensure!(
                all_jobs.len() >= acked_jobs,
                "{acked_jobs} jobs acknowledged, {} listed",
                all_jobs.len()
            );
            for &id in all_jobs.keys() {
                wait_job(&c.addrs, id, READY, "a nemesis job to end", |j| {
                    j.state != JobState::Running
                })
                .await?;
                let (info, results) = output(c.addrs[0], id).await?;
                exactly_once(&info, &results)?;
            }
            eprintln!(
                "jobs: {} listed ({acked_jobs} acknowledged), each image exactly once",
                all_jobs.len()
            );

            // The voters agree on the state machine's digest at one index.
            let voters = c.voter_indices();
            wait_for(
                "the voters to agree on the state digest",
                READY,
                Duration::from_millis(250),
                async || {
                    let mut seen = Vec::new();
                    for &i in &voters {
                        let info = api::leader_info(c.addrs[i]).await?;
                        // Every voter, a wiped one too, is in the Raft configuration, once.
                        let mut config: Vec<_> = info.raft_ids.iter().map(|(_, a)| *a).collect();
                        config.sort();
                        let mut want: Vec<_> = voters.iter().map(|&v| c.addrs[v]).collect();
                        want.sort();
                        ensure!(config == want, "a{i} holds Raft voters {:?}", info.raft_ids);
                        seen.push((info.last_applied, info.applied_digest));
                    }
                    ensure!(
                        seen.windows(2).all(|w| w[0] == w[1]) && seen[0].0.is_some(),
                        "voters at {seen:?}"
                    );
                    Ok(())
                },
            )
            .await?;
            Ok(())
        }
        .await;
        if r.is_err() {
            // The history so far, for `saved_history` to check again.
            let path = c.dir().join("history.json");
            let saved = serde_json::to_string(&clients.history.records())
                .map_err(anyhow::Error::from)
                .and_then(|j| Ok(std::fs::write(&path, j)?));
            eprintln!("history saved to {}: {saved:?}", path.display());
            c.cluster.keep_dir();
        }
        r
    });
    if result.is_err() {
        eprintln!("nemesis seed {seed} failed (replay: DML_NEMESIS_SEED={seed})");
    }
    result
}

/// Each test here runs a whole cluster with timing it checks (elections, detection, log
/// rates) on a two-core machine: one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Issue 18: seven agents on seven hosts, every worker kept busy with tiny-model jobs for
/// `DML_SOAK_SECS` (120 s by default): no agent suspects another, counted from every
/// agent's own counters. The machine's CPU use over the soak is printed.
#[test]
fn a_cluster_busy_with_inference_suspects_no_one() -> Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 7;
    let secs: u64 = match std::env::var("DML_SOAK_SECS") {
        Ok(s) => s.parse().context("DML_SOAK_SECS must be a number")?,
        Err(_) => 120,
    };
    let bed = Bed::create(N + 1)?;
    let hosts = bed.hosts()[..N].to_vec();
    bed.block_on_in(N, || async {
        let mut opts = SdfsOptions::new(N);
        opts.hosts = hosts;
        let c = SdfsCluster::start_with("netbed-soak", opts).await?;
        prepare(&c, 0, &["tiny"], SOAK_DATA, Images::Sample(48)).await?;
        let counters = async || -> Result<Vec<Stats>> {
            let mut v = Vec::new();
            for a in &c.addrs {
                v.push(Client::new(*a).stats().await?);
            }
            Ok(v)
        };
        let before = counters().await?;
        let cpu0 = cpu_busy_jiffies()?;
        let end = Instant::now() + Duration::from_secs(secs);
        let mut submitted = 0;
        let mut done = 0u64;
        while Instant::now() < end {
            // Two jobs running at all times: more queries than the workers' slots. A
            // request the busy cluster does not answer in time is tried again next round.
            let via = c.addrs[submitted % N];
            match jobs(via).await {
                Ok(js) => {
                    let running = js
                        .values()
                        .filter(|j: &&JobInfo| j.state == JobState::Running)
                        .count();
                    for _ in running..2 {
                        match submit(via, "tiny", 4000, SOAK_DATA).await {
                            Ok(_) => submitted += 1,
                            Err(e) => eprintln!("soak: submit: {e:#}"),
                        }
                    }
                }
                Err(e) => eprintln!("soak: jobs: {e:#}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for j in jobs(c.addrs[0]).await?.values() {
            done += u64::from(j.done);
        }
        let cpu = cpu_busy_jiffies()?;
        let after = counters().await?;
        let busy = (cpu.0 - cpu0.0) as f64 / (cpu.1 - cpu0.1).max(1) as f64;
        eprintln!(
            "soak: {secs} s, {submitted} jobs, {done} images inferred, machine CPU busy {:.0}%",
            busy * 100.0
        );
        let diff = |f: fn(&Stats) -> u64| -> u64 {
            before.iter().zip(&after).map(|(b, a)| f(a) - f(b)).sum()
        };
        let (suspicions, refuted, failed) = (
            diff(|s| s.suspicions),
            diff(|s| s.refuted),
            diff(|s| s.declared_failed),
        );
        eprintln!("soak: suspicions {suspicions}, refuted {refuted}, declared failed {failed}");
        ensure!(done > 0, "no image was inferred: the soak loaded nothing");
        ensure!(
            suspicions == 0 && refuted == 0 && failed == 0,
            "live agents were suspected under load: {suspicions} suspicions, {refuted} refuted, \
             {failed} declared failed"
        );
        Ok(())
    })
}

const SOAK_DATA: &str = "datasets/soak/";

/// Agent hosts of the deploy test; its client is one more host.
const DEPLOYED: usize = 4;
/// The deploy test's `dml cluster up`, and its `--wait-secs` for the agents.
const UP_TIMEOUT: Duration = Duration::from_secs(300);
const UP_WAIT_SECS: &str = "120";
/// Images of the deploy test's job, and of the dataset it cycles through.
const JOB_IMAGES: u32 = 16;
const DATASET_IMAGES: u32 = 8;
const JOB_DEADLINE: Duration = Duration::from_secs(120);

/// Issue 18, deployed as an operator would: each agent host runs sshd, and `dml cluster up
/// --hosts hosts.toml` on a fifth host uploads the binary, config, key and ONNX Runtime and
/// starts the agents under tmux. Then, from that host across the bridge: `cluster status`
/// reports four healthy agents, a put reads back byte-exact, a tiny-model job infers every
/// image, and `cluster down` stops every agent. The test itself stays in the machine's own
/// namespace, which has no route to the bed: what it learns of the cluster, `dml` told it.
#[test]
fn cluster_up_over_ssh_deploys_to_bed_hosts_and_a_client_host_uses_them() -> Result<()> {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    if !ssh::sshd_installed() {
        return Ok(());
    }
    let t0 = Instant::now();
    let bed = Bed::create(DEPLOYED + 1)?;
    let mut tmp = TestDir::new("netbed-deploy")?;
    let dir = tmp.path().canonicalize()?;
    let client_pub = ssh::keygen(&dir.join("client_key"))?;
    let sshds = (0..DEPLOYED)
        .map(|i| bed.start_sshd(i, &dir, &client_pub))
        .collect::<Result<Vec<Sshd>>>()?;
    let known: String = sshds.iter().map(Sshd::known_hosts_line).collect();
    std::fs::write(dir.join("known_hosts"), known)?;
    // The hosts share one filesystem: each has its own remote directory.
    let remote: Vec<PathBuf> = (0..DEPLOYED)
        .map(|i| bed.host_dir(i, &dir).join("dml"))
        .collect();
    let _agents = DeployedAgents(remote.clone());
    let hosts_file = dir.join("hosts.toml");
    std::fs::write(&hosts_file, deploy_hosts_toml(&bed, &dir, &remote)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(deploy_and_use(&bed, &dir, &hosts_file, &remote));
    eprintln!("deploy test: {:.1} s", t0.elapsed().as_secs_f64());
    if r.is_err() {
        tmp.keep();
    }
    r
}

/// The agent address of bed host `i` in the deploy test.
fn deployed_agent(bed: &Bed, i: usize) -> String {
    format!("{}:{DEFAULT_PORT}", bed.host(i).ip)
}

/// hosts.toml naming the first [`DEPLOYED`] hosts by their addresses, with the tests'
/// Raft timers (a loaded two-core machine keeps its leader).
fn deploy_hosts_toml(bed: &Bed, dir: &Path, remote: &[PathBuf]) -> Result<String> {
    let mut text = format!(
        "key_file = \"{d}/client_key\"\n\
         known_hosts = \"{d}/known_hosts\"\n\
         launcher = \"tmux\"\n\
         [config]\n\
         preset = \"local\"\n\
         [config.control]\n\
         heartbeat_interval = \"150ms\"\n\
         election_timeout_min = \"1s\"\n\
         election_timeout_max = \"2s\"\n\
         rpc_timeout = \"1500ms\"\n",
        d = dir.display()
    );
    let user = ssh::user()?;
    for (i, r) in remote.iter().enumerate() {
        text += &format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"{}\"\nuser = \"{user}\"\n\
             bind = \"{}\"\nremote_dir = \"{}\"\n",
            bed.host(i).ip,
            deployed_agent(bed, i),
            r.display()
        );
    }
    Ok(text)
}

/// `dml args` on the deploy test's client host; an error unless it exits 0.
async fn on_client(bed: &Bed, args: &[&str], timeout: Duration) -> Result<DmlOutput> {
    let out = bed.dml(DEPLOYED, args, timeout).await?;
    out.ensure_success()?;
    Ok(out)
}

/// `dml --agent ADDR args` on the deploy test's client host, ADDR being host `i`'s agent.
async fn via(bed: &Bed, i: usize, args: &[&str]) -> Result<DmlOutput> {
    let agent = deployed_agent(bed, i);
    let mut all = vec!["--agent", agent.as_str()];
    all.extend_from_slice(args);
    on_client(bed, &all, DML).await
}

/// The `hosts` array of a `dml cluster --json` report.
fn host_reports(v: &Value) -> Vec<Value> {
    v["hosts"].as_array().cloned().unwrap_or_default()
}

/// Process `pid`'s parent and that parent's command line.
fn parent(pid: i32) -> Result<(i32, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    let ppid: i32 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no parent in /proc/{pid}/stat: {stat}"))?;
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline"))?;
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok((ppid, args))
}

/// tmux servers and clients on the tmux socket of remote directory `dir`.
fn tmux_on(dir: &Path) -> Vec<i32> {
    let socket = dir.join("tmux.sock").display().to_string();
    ssh::processes(|args| {
        args.first().is_some_and(|a| a.ends_with("tmux")) && args.contains(&socket)
    })
}

async fn deploy_and_use(
    bed: &Bed,
    dir: &Path,
    hosts_file: &Path,
    remote: &[PathBuf],
) -> Result<()> {
    let hf = hosts_file.to_str().context("hosts file path")?;
    let launcher = format!("tmux dml-agent-{DEFAULT_PORT}");

    let t = Instant::now();
    let up = on_client(
        bed,
        &[
            "cluster",
            "up",
            "--json",
            "--hosts",
            hf,
            "--wait-secs",
            UP_WAIT_SECS,
        ],
        UP_TIMEOUT,
    )
    .await?
    .json()?;
    eprintln!("cluster up: {:.1} s", t.elapsed().as_secs_f64());
    let venv_ort = dml_shared::ort_lib::search_venvs().map_err(|searched| {
        anyhow!("no ONNX Runtime in the virtualenv (scripts/setup.sh makes it): {searched:?}")
    })?;
    let reports = host_reports(&up);
    ensure!(reports.len() == DEPLOYED && up["failed"] == 0, "{up}");
    let mut pids = Vec::new();
    for (i, h) in reports.iter().enumerate() {
        ensure!(
            h["error"].is_null()
                && h["launcher"] == launcher.as_str()
                && h["uploaded_agent"] == true
                && h["uploaded_ort"] == true,
            "{h}"
        );
        // ONNX Runtime's library from the virtualenv, where the host's config names it.
        let lib = remote[i].join("lib/libonnxruntime.so");
        ensure!(h["ort_dylib"].as_str() == lib.to_str(), "{h}");
        ensure!(
            content::same_file_contents(&lib, &venv_ort)?,
            "{} differs from {}",
            lib.display(),
            venv_ort.display()
        );
        let cfg = std::fs::read_to_string(remote[i].join("agent.toml"))?;
        ensure!(
            cfg.contains(&format!("ort_dylib = \"{}\"", lib.display())),
            "{cfg}"
        );
        // The agent runs on its host, under that host's own tmux server.
        let pid = h["pid"].as_i64().context("no pid")? as i32;
        ensure!(
            ssh::is_agent(pid, &remote[i]),
            "pid {pid} does not run {}/bin/dml-agent",
            remote[i].display()
        );
        ensure!(
            bed.host_of(pid) == Some(i),
            "h{i}'s agent runs on host {:?}",
            bed.host_of(pid)
        );
        let (tmux, tmux_args) = parent(pid)?;
        ensure!(
            tmux_on(&remote[i]).contains(&tmux) && bed.host_of(tmux) == Some(i),
            "h{i}'s agent's parent {tmux} {tmux_args:?} is not h{i}'s tmux server"
        );
        pids.push(pid);
    }

    let status = wait_for(
        "cluster status to report four healthy agents with one leader",
        READY,
        Duration::from_secs(1),
        async || {
            let st = on_client(bed, &["cluster", "status", "--json", "--hosts", hf], DML)
                .await?
                .json()?;
            let hs = host_reports(&st);
            ensure!(hs.len() == DEPLOYED, "{st}");
            for (h, pid) in hs.iter().zip(&pids) {
                ensure!(
                    h["ssh_error"].is_null()
                        && h["running"] == true
                        && h["answering"] == true
                        && h["pid"] == *pid
                        && h["launcher"] == launcher.as_str()
                        && h["members"] == DEPLOYED
                        && !h["leader"].is_null(),
                    "{h}"
                );
            }
            ensure!(hs.iter().all(|h| h["leader"] == hs[0]["leader"]), "{st}");
            Ok(st)
        },
    )
    .await?;
    eprintln!(
        "healthy {:.1} s after up began; leader {}",
        t.elapsed().as_secs_f64(),
        host_reports(&status)[0]["leader"]
    );

    // A put through one agent reads back byte-exact through another.
    let local = dir.join("client");
    let bytes = content::pattern(18, 3 << 20);
    let sent = local.join("sent.bin");
    content::write_file(&sent, &bytes)?;
    let got = local.join("got.bin");
    let path = |p: &Path| p.display().to_string();
    via(bed, 1, &["put", &path(&sent), "deploy/file.bin"]).await?;
    via(bed, 3, &["get", "deploy/file.bin", &path(&got)]).await?;
    ensure!(
        std::fs::read(&got)? == bytes,
        "dml get returned other bytes than dml put stored"
    );

    // A tiny-model job over a sample dataset: every image inferred.
    let models = local.join("models");
    std::fs::create_dir_all(&models)?;
    let data = local.join("dataset");
    via(
        bed,
        0,
        &[
            "models",
            "upload",
            "--models",
            "tiny",
            "--dir",
            &path(&models),
        ],
    )
    .await?;
    let d = path(&data);
    let count = DATASET_IMAGES.to_string();
    let make = ["dataset", "make", &d, "--count", &count, "--seed", "7"];
    on_client(bed, &make, DML).await?;
    via(bed, 2, &["sdfs", "load", &d, "datasets/sample"]).await?;
    let n = JOB_IMAGES.to_string();
    let submitted = via(bed, 3, &["submit-job", "tiny", &n, "--json"])
        .await?
        .json()?;
    let job = submitted["job"]
        .as_u64()
        .with_context(|| format!("no job id: {submitted}"))?;
    let t = Instant::now();
    let finished = wait_for(
        "the tiny-model job to finish",
        JOB_DEADLINE,
        Duration::from_secs(1),
        async || {
            let js = via(bed, 0, &["jobs", "--json"]).await?.json()?;
            let j = js
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == job))
                .cloned()
                .with_context(|| format!("job {job} is not listed: {js}"))?;
            ensure!(j["state"] != "running", "{j}");
            Ok(j)
        },
    )
    .await?;
    eprintln!("job {job} finished in {:.1} s", t.elapsed().as_secs_f64());
    ensure!(
        finished["state"] == "done" && finished["done"] == JOB_IMAGES && finished["errors"] == 0,
        "{finished}"
    );
    let out = via(bed, 1, &["get-output", &job.to_string()]).await?;
    let mut indices = Vec::new();
    for line in out.stdout.lines() {
        let r: Value = serde_json::from_str(line).with_context(|| format!("line {line}"))?;
        ensure!(
            r["predictions"].as_array().is_some_and(|p| p.len() == 5),
            "{line}"
        );
        indices.push(
            r["index"]
                .as_u64()
                .with_context(|| format!("no index: {line}"))?,
        );
    }
    indices.sort_unstable();
    ensure!(
        indices == (0..u64::from(JOB_IMAGES)).collect::<Vec<_>>(),
        "job {job}'s results are for images {indices:?}"
    );

    // Down: every agent leaves gracefully, and nothing of it runs any more.
    let down = on_client(bed, &["cluster", "down", "--json", "--hosts", hf], DML)
        .await?
        .json()?;
    for h in host_reports(&down) {
        ensure!(h["outcome"] == "stopped", "{h}");
    }
    for (i, r) in remote.iter().enumerate() {
        let left = ssh::agent_pids(r);
        ensure!(
            left.is_empty(),
            "h{i}'s agent still runs after down: {left:?}"
        );
        let log = std::fs::read_to_string(r.join("agent.log"))?;
        ensure!(
            log.contains("SIGTERM"),
            "h{i}'s agent did not log its SIGTERM:\n{log}"
        );
        wait_for(
            "the tmux server to exit with its session",
            Duration::from_secs(10),
            Duration::from_millis(100),
            async || {
                let t = tmux_on(r);
                ensure!(t.is_empty(), "h{i}'s tmux still runs: {t:?}");
                Ok(())
            },
        )
        .await?;
    }
    let after = on_client(bed, &["cluster", "status", "--json", "--hosts", hf], DML)
        .await?
        .json()?;
    for h in host_reports(&after) {
        ensure!(h["running"] == false && h["answering"] == false, "{h}");
    }
    Ok(())
}
