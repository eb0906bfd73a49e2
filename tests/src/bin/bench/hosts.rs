//! `bench hosts`: issue 18's figures on the namespace test bed (`dml_tests::netbed`): 7 agent
//! hosts and one client host, each its own network namespace on a private bridge, so every
//! request crosses a (virtual) network and partitions are drop rules in both directions.
//! Agents run with the `lan` membership preset and the default control settings. Needs root,
//! `ip` and `nft`; the SDFS phase also `sshd` and `scp` (all from `scripts/setup.sh`).
//!
//! 1. crash detection and fail-over: SIGKILL the leader, time until every survivor's event
//!    log says `failed`, and until a Raft write through a survivor commits; restart on the
//!    same data directory; repeat;
//! 2. a partition: the leader cut off both ways; time until the majority commits, until one
//!    view remains after healing, the identities the heal changed, failed Raft RPCs per
//!    second after healing, and acknowledged puts that do not read back;
//! 3. SDFS from the client host: put and get of each size against `scp` of the same file
//!    between the same two hosts;
//! 4. the soak: every worker busy with tiny-model jobs; suspicions from every agent's
//!    counters.
//!
//! Table on stdout, progress on stderr, JSON in `target/bench/hosts.json`.

use crate::membership::Summary;
use anyhow::{Context, Result, anyhow, ensure};
use dml_shared::NodeId;
use dml_shared::api::Stats;
use dml_shared::client::Client;
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::infer::{JobInfo, JobState};
use dml_shared::sdfs_client::no_progress;
use dml_tests::events::EventKind;
use dml_tests::infer::{Images, jobs, prepare, set_batch, submit};
use dml_tests::netbed::{Bed, cpu_busy_jiffies};
use dml_tests::sdfs::content::write_pattern_file;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use dml_tests::ssh::{self, Sshd};
use dml_tests::view::wait_not_live;
use dml_tests::wait::wait_for;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
/// Time for the cluster to converge and elect a leader.
const READY: Duration = Duration::from_secs(90);
/// Longest wait for a removal or a commit after a fault.
const FAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Each agent's Prometheus endpoint, on its own host's address.
const METRICS_PORT: u16 = 9100;
/// How long the leader stays cut off.
const PARTITION: Duration = Duration::from_secs(15);
/// The window after healing in which failed Raft RPCs are counted.
const AFTER_HEAL: Duration = Duration::from_secs(5);
const SOAK_DATA: &str = "datasets/soak/";

#[derive(clap::Args)]
pub struct HostsArgs {
    /// Agent hosts (the client gets one more).
    #[arg(long, default_value_t = 7)]
    agents: usize,
    /// Leader kills (default 20; 5 with --quick).
    #[arg(long)]
    kills: Option<usize>,
    /// Soak length in seconds (default 600; 60 with --quick); 0 skips it.
    #[arg(long)]
    soak_secs: Option<u64>,
    /// File sizes for the SDFS phase, in MiB (default 64 and 1024; 64 with --quick).
    #[arg(long, value_delimiter = ',')]
    sizes_mib: Vec<u64>,
    /// Smaller run: 5 kills, 64 MiB, a 60 s soak.
    #[arg(long)]
    quick: bool,
    /// Run only these phases (comma-separated: kills, partition, sdfs, soak); JSON to
    /// `hosts-partial.json`.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Phase>,
    /// Keep the agents' directories.
    #[arg(long)]
    keep: bool,
    /// Do not run `cargo build` for dml-agent and dml first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Kills,
    Partition,
    Sdfs,
    Soak,
}

#[derive(Default, Serialize)]
struct Kills {
    /// Kill → every survivor's event log says `failed`, per kill (s).
    detect_s: Vec<f64>,
    /// Kill → a Raft write through a survivor commits, per kill (s).
    failover_s: Vec<f64>,
    errors: Vec<String>,
}

#[derive(Default, Serialize)]
struct Partition {
    /// Cut → a Raft write through the majority commits (s).
    commit_s: Option<f64>,
    /// Heal → every agent sees every other live and one leader (s).
    one_view_s: Option<f64>,
    /// Members whose identity the heal changed, and the minority.
    changed: Vec<String>,
    minority: Vec<String>,
    /// Failed Raft RPCs per second, all voters, in the [`AFTER_HEAL`] window.
    rpc_failures_per_s: Option<f64>,
    /// The same while cut off, for comparison.
    rpc_failures_per_s_cut: Option<f64>,
    puts_acked: usize,
    puts_lost: usize,
    error: Option<String>,
}

#[derive(Default, Serialize)]
struct Transfer {
    size_mib: u64,
    reps: usize,
    /// Medians (s).
    put_s: Option<f64>,
    get_s: Option<f64>,
    scp_up_s: Option<f64>,
    scp_down_s: Option<f64>,
    error: Option<String>,
}

impl Transfer {
    fn put_ratio(&self) -> Option<f64> {
        Some(self.put_s? / self.scp_up_s?)
    }
    fn get_ratio(&self) -> Option<f64> {
        Some(self.get_s? / self.scp_down_s?)
    }
}

#[derive(Default, Serialize)]
struct Soak {
    secs: u64,
    jobs: usize,
    images: u64,
    cpu_busy: f64,
    suspicions: u64,
    refuted: u64,
    declared_failed: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct Document {
    bench: &'static str,
    unix_ms: u64,
    command: String,
    agents: usize,
    kills: Kills,
    partition: Partition,
    sdfs: Vec<Transfer>,
    soak: Option<Soak>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(a: HostsArgs, bin_dir: &Path, out_dir: &Path) -> Result<()> {
    ensure!(a.agents >= 5, "--agents must be at least 5");
    if !a.no_build {
        crate::locate(bin_dir, "dml-agent", "dml-agent", true)?;
        crate::locate(bin_dir, "dml-tui", "dml", true)?;
    }
    let kills = a.kills.unwrap_or(if a.quick { 5 } else { 20 });
    let soak = a.soak_secs.unwrap_or(if a.quick { 60 } else { 600 });
    let sizes = match (a.sizes_mib.is_empty(), a.quick) {
        (false, _) => a.sizes_mib.clone(),
        (true, true) => vec![64],
        (true, false) => vec![64, 1024],
    };
    let run_dir = out_dir.join("hosts-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    let n = a.agents;
    let bed = Bed::create(n + 1)?;
    let hosts = bed.hosts()[..n].to_vec();
    let doc = tokio::task::block_in_place(|| {
        bed.block_on_in(n, || async {
            let mut opts = SdfsOptions::new(n);
            opts.hosts = hosts;
            opts.membership = MembershipConfig::preset(Preset::Lan);
            opts.control = ControlConfig::default();
            opts.sdfs = SdfsConfig::default();
            opts.base_dir = Some(run_dir.clone());
            opts.extra_config = format!("[metrics]\nbind = \"0.0.0.0:{METRICS_PORT}\"\n");
            eprintln!("[hosts] starting {n} agents on {n} hosts");
            let mut c = SdfsCluster::start_with("hosts", opts).await?;
            if a.keep {
                c.cluster.keep_dir();
            }
            let run = |p: Phase| a.only.is_empty() || a.only.contains(&p);
            let kills = match run(Phase::Kills) {
                true => kill_rounds(&mut c, kills).await,
                false => Kills::default(),
            };
            let partition = match run(Phase::Partition) {
                true => partition(&bed, &c).await,
                false => Partition::default(),
            };
            let mut sdfs = Vec::new();
            if run(Phase::Sdfs) {
                for &s in &sizes {
                    sdfs.push(transfer(&bed, &c, s, &run_dir).await);
                }
            }
            let soak = match soak {
                0 => None,
                _ if !run(Phase::Soak) => None,
                secs => Some(soak_run(&c, secs).await),
            };
            Ok(Document {
                bench: "hosts",
                unix_ms: unix_ms(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                agents: n,
                kills,
                partition,
                sdfs,
                soak,
            })
        })
    })?;
    print!("{}", table(&doc));
    let json = out_dir.join(match a.only.is_empty() {
        true => "hosts.json",
        false => "hosts-partial.json",
    });
    std::fs::write(&json, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write \"{}\"", json.display()))?;
    println!("\nJSON: {}", json.display());
    Ok(())
}

/// A Raft write through `via` (a batch size; each round sets another) until one commits;
/// the time it took from `since`.
async fn commit_through(via: SocketAddr, since: Instant, k: u32) -> Result<f64> {
    wait_for(
        "a Raft write to commit",
        FAULT_DEADLINE,
        Duration::from_millis(20),
        async || set_batch(via, "tiny", 1 + k % 8).await,
    )
    .await?;
    Ok(since.elapsed().as_secs_f64())
}

async fn kill_rounds(c: &mut SdfsCluster, rounds: usize) -> Kills {
    let mut k = Kills::default();
    for r in 0..rounds {
        match kill_round(c, r).await {
            Ok((detect, failover)) => {
                eprintln!(
                    "[kills] {}/{rounds}: every survivor removed it in {detect:.2} s, a new leader committed in {failover:.2} s",
                    r + 1
                );
                k.detect_s.push(detect);
                k.failover_s.push(failover);
            }
            Err(e) => {
                eprintln!("[kills] {}/{rounds}: {e:#}", r + 1);
                k.errors.push(format!("{e:#}"));
                if c.wait_ready(READY).await.is_err() {
                    break;
                }
            }
        }
    }
    k
}

/// Kills the leader; (detection, fail-over) in seconds; restarts it.
async fn kill_round(c: &mut SdfsCluster, r: usize) -> Result<(f64, f64)> {
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await?;
    let id = c.agent(leader).current_id().await?;
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let via = c.addrs[survivors[r % survivors.len()]];
    let kill_ms = unix_ms();
    let t0 = Instant::now();
    c.kill(leader).await?;
    let failover = commit_through(via, t0, r as u32).await?;
    let removed_ms = wait_for(
        "every survivor to remove the killed leader",
        FAULT_DEADLINE,
        Duration::from_millis(100),
        async || failed_at(c, &survivors, id, kill_ms),
    )
    .await?;
    c.restart(leader).await?;
    c.wait_ready(READY).await?;
    Ok(((removed_ms - kill_ms) as f64 / 1000.0, failover))
}

/// The latest time (unix ms) at which one of `observers` logged `id` failed, after
/// `since_ms`; an error while one has not.
fn failed_at(c: &SdfsCluster, observers: &[usize], id: NodeId, since_ms: u64) -> Result<u64> {
    let mut latest = 0;
    for &i in observers {
        let at = c
            .agent(i)
            .events()?
            .into_iter()
            .find(|e| e.member == id && e.event == EventKind::Failed && e.ts_ms >= since_ms)
            .map(|e| e.ts_ms)
            .ok_or_else(|| anyhow!("a{i} has not removed {id}"))?;
        latest = latest.max(at);
    }
    Ok(latest)
}

/// Failed Raft RPCs so far, summed over the voters' metrics.
fn rpc_failures(c: &SdfsCluster) -> Result<f64> {
    let mut sum = 0.0;
    for i in c.voter_indices() {
        let at = SocketAddr::new(c.addrs[i].ip(), METRICS_PORT);
        sum += dml_tests::metrics::scrape(at)?.value("dml_raft_rpc_failures_total")?;
    }
    Ok(sum)
}

async fn current_ids(c: &SdfsCluster) -> Result<Vec<NodeId>> {
    let mut v = Vec::new();
    for i in 0..c.len() {
        v.push(c.agent(i).current_id().await?);
    }
    Ok(v)
}

async fn partition(bed: &Bed, c: &SdfsCluster) -> Partition {
    let mut p = Partition::default();
    if let Err(e) = partition_run(bed, c, &mut p).await {
        eprintln!("[partition] {e:#}");
        p.error = Some(format!("{e:#}"));
    }
    let _ = bed.heal();
    p
}

async fn partition_run(bed: &Bed, c: &SdfsCluster, p: &mut Partition) -> Result<()> {
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await?;
    let before = current_ids(c).await?;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    p.minority = vec![before[leader].to_string()];
    let via = rest[0];
    let t0 = Instant::now();
    let rpc0 = rpc_failures(c)?;
    bed.partition(&[leader], &rest)?;
    p.commit_s = Some(commit_through(c.addrs[via], t0, 3).await?);
    eprintln!(
        "[partition] the majority committed {:.2} s after the cut",
        p.commit_s.unwrap_or_default()
    );
    // Puts through the majority once it has dropped the cut-off member (a put's chain
    // may hold it until then).
    let majority: Vec<_> = rest.iter().map(|&i| c.agent(i)).collect();
    wait_not_live(&majority, &[before[leader]], FAULT_DEADLINE).await?;
    let mut acked = Vec::new();
    for k in 0..5 {
        let name = format!("bench/partition-{k}");
        let bytes = dml_tests::sdfs::content::text(&name, 50_000);
        if let Ok(Ok(_)) = c.client_put(rest[k % rest.len()], &name, &bytes).await {
            acked.push((name, bytes));
        }
    }
    p.puts_acked = acked.len();
    tokio::time::sleep_until((t0 + PARTITION).into()).await;
    let cut_secs = t0.elapsed().as_secs_f64();
    let rpc_cut = rpc_failures(c)?;
    p.rpc_failures_per_s_cut = Some((rpc_cut - rpc0) / cut_secs);
    bed.heal()?;
    let t1 = Instant::now();
    c.wait_ready(READY).await?;
    p.one_view_s = Some(t1.elapsed().as_secs_f64());
    tokio::time::sleep_until((t1 + AFTER_HEAL).into()).await;
    let rpc_healed = rpc_failures(c)?;
    p.rpc_failures_per_s = Some((rpc_healed - rpc_cut) / t1.elapsed().as_secs_f64());
    let after = current_ids(c).await?;
    p.changed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.to_string())
        .collect();
    for (name, bytes) in &acked {
        let ok = c.must_get(leader, name, bytes).await.is_ok();
        p.puts_lost += usize::from(!ok);
    }
    eprintln!(
        "[partition] one view {:.2} s after healing; identities changed: {:?}; lost puts {}",
        p.one_view_s.unwrap_or_default(),
        p.changed,
        p.puts_lost
    );
    Ok(())
}

/// Median of `v`.
fn median(v: &[f64]) -> Option<f64> {
    Summary::of(v).median
}

/// Times `f` `reps` times; the median.
async fn timed<F: AsyncFnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f().await?;
        v.push(t.elapsed().as_secs_f64());
    }
    median(&v).context("no repetition")
}

async fn transfer(bed: &Bed, c: &SdfsCluster, mib: u64, dir: &Path) -> Transfer {
    let reps = if mib >= 1024 { 1 } else { 3 };
    let mut t = Transfer {
        size_mib: mib,
        reps,
        ..Transfer::default()
    };
    if let Err(e) = transfer_run(bed, c, &mut t, dir).await {
        eprintln!("[sdfs] {mib} MiB: {e:#}");
        t.error = Some(format!("{e:#}"));
    }
    t
}

async fn transfer_run(bed: &Bed, c: &SdfsCluster, t: &mut Transfer, dir: &Path) -> Result<()> {
    let size = t.size_mib * MIB;
    let src = dir.join(format!("file-{}", t.size_mib));
    write_pattern_file(&src, t.size_mib, size)?;
    ensure!(
        std::fs::metadata(&src)?.len() == size,
        "\"{}\" is not {size} bytes",
        src.display()
    );
    let back = dir.join(format!("back-{}", t.size_mib));
    // The client host reaches the agent of host 0, as scp does.
    let target = 0;
    let ssh = Scp::start(bed, target, &dir.join(format!("ssh-{}", t.size_mib)))?;
    let remote = dir.join(format!("scp-{}", t.size_mib));
    t.scp_up_s = Some(
        timed(t.reps, async || {
            ssh.copy(&src.display().to_string(), &ssh.remote(&remote))
        })
        .await?,
    );
    t.scp_down_s = Some(
        timed(t.reps, async || {
            ssh.copy(&ssh.remote(&remote), &back.display().to_string())
        })
        .await?,
    );
    let _ = std::fs::remove_file(&remote);
    let sdfs = c.client(target);
    let name = format!("bench/file-{}", t.size_mib);
    t.put_s = Some(
        timed(t.reps, async || {
            sdfs.put(&src, &name, &no_progress).await?;
            Ok(())
        })
        .await?,
    );
    t.get_s = Some(
        timed(t.reps, async || {
            sdfs.get(&name, &back, &no_progress).await?;
            Ok(())
        })
        .await?,
    );
    ensure!(
        same_file(&src, &back)?,
        "the file read back differs from the file put"
    );
    let _ = std::fs::remove_file(&back);
    let _ = std::fs::remove_file(&src);
    eprintln!(
        "[sdfs] {} MiB: put {:.2} s (scp {:.2} s), get {:.2} s (scp {:.2} s)",
        t.size_mib,
        t.put_s.unwrap_or_default(),
        t.scp_up_s.unwrap_or_default(),
        t.get_s.unwrap_or_default(),
        t.scp_down_s.unwrap_or_default()
    );
    Ok(())
}

/// `scp` from the calling thread's host to one bed host, through an sshd started there.
struct Scp {
    key: PathBuf,
    known_hosts: PathBuf,
    user: String,
    sshd: Sshd,
}

impl Scp {
    fn start(bed: &Bed, host: usize, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = dir.join("client_key");
        let public = ssh::keygen(&key)?;
        let sshd = bed.start_sshd(host, dir, &public)?;
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, sshd.known_hosts_line())?;
        Ok(Self {
            key,
            known_hosts,
            user: ssh::user()?,
            sshd,
        })
    }

    /// `path` on the remote host, as scp names it.
    fn remote(&self, path: &Path) -> String {
        format!("{}@{}:{}", self.user, self.sshd.addr().ip(), path.display())
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let out = Command::new("scp")
            .args(["-q", "-B", "-P", &self.sshd.addr().port().to_string(), "-i"])
            .arg(&self.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", from, to])
            .output()
            .context("cannot run scp (Debian package openssh-client)")?;
        ensure!(
            out.status.success(),
            "scp {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let hash = |p: &Path| -> Result<blake3::Hash> {
        let mut h = blake3::Hasher::new();
        let f =
            std::fs::File::open(p).with_context(|| format!("cannot read \"{}\"", p.display()))?;
        std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut h)?;
        Ok(h.finalize())
    };
    Ok(hash(a)? == hash(b)?)
}

async fn soak_run(c: &SdfsCluster, secs: u64) -> Soak {
    let mut s = Soak {
        secs,
        ..Soak::default()
    };
    if let Err(e) = soak_inner(c, &mut s).await {
        eprintln!("[soak] {e:#}");
        s.error = Some(format!("{e:#}"));
    }
    s
}

async fn soak_inner(c: &SdfsCluster, s: &mut Soak) -> Result<()> {
    let n = c.len();
    prepare(c, 0, &["tiny"], SOAK_DATA, Images::Sample(48)).await?;
    let counters = async || -> Result<Vec<Stats>> {
        let mut v = Vec::new();
        for a in &c.addrs {
            v.push(Client::new(*a).stats().await?);
        }
        Ok(v)
    };
    let before = counters().await?;
    let cpu0 = cpu_busy_jiffies()?;
    eprintln!("[soak] {} s", s.secs);
    let end = Instant::now() + Duration::from_secs(s.secs);
    while Instant::now() < end {
        // Two jobs running at all times: more queries than the workers' slots.
        let via = c.addrs[s.jobs % n];
        if let Ok(js) = jobs(via).await {
            let running = js
                .values()
                .filter(|j: &&JobInfo| j.state == JobState::Running)
                .count();
            for _ in running..2 {
                if submit(via, "tiny", 4000, SOAK_DATA).await.is_ok() {
                    s.jobs += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for j in jobs(c.addrs[0]).await?.values() {
        s.images += u64::from(j.done);
    }
    let cpu = cpu_busy_jiffies()?;
    let after = counters().await?;
    s.cpu_busy = (cpu.0 - cpu0.0) as f64 / (cpu.1 - cpu0.1).max(1) as f64;
    let diff =
        |f: fn(&Stats) -> u64| -> u64 { before.iter().zip(&after).map(|(b, a)| f(a) - f(b)).sum() };
    s.suspicions = diff(|x| x.suspicions);
    s.refuted = diff(|x| x.refuted);
    s.declared_failed = diff(|x| x.declared_failed);
    Ok(())
}

fn s2(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.2}"))
}

fn table(d: &Document) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "command: {}", d.command);
    let _ = writeln!(
        t,
        "{} agent hosts and 1 client host (network namespaces on one bridge); lan preset, default control timers\n",
        d.agents
    );
    let (det, fo) = (
        Summary::of(&d.kills.detect_s),
        Summary::of(&d.kills.failover_s),
    );
    let _ = writeln!(
        t,
        "1. leader SIGKILLed {} times ({} rounds failed)",
        det.n,
        d.kills.errors.len()
    );
    let _ = writeln!(t, "   {:<44} {:>7} {:>7} {:>7}", "", "median", "p99", "max");
    let _ = writeln!(
        t,
        "   {:<44} {:>7} {:>7} {:>7}",
        "kill → every survivor removed it (s)",
        s2(det.median),
        s2(det.p99),
        s2(det.max)
    );
    let _ = writeln!(
        t,
        "   {:<44} {:>7} {:>7} {:>7}",
        "kill → a new leader committed a write (s)",
        s2(fo.median),
        s2(fo.p99),
        s2(fo.max)
    );
    let p = &d.partition;
    let _ = writeln!(
        t,
        "\n2. the leader's host cut off both ways for {} s",
        PARTITION.as_secs()
    );
    if let Some(e) = &p.error {
        let _ = writeln!(t, "   error: {e}");
    }
    let _ = writeln!(
        t,
        "   cut → the majority committed a write   {} s",
        s2(p.commit_s)
    );
    let _ = writeln!(
        t,
        "   heal → one view, one leader             {} s",
        s2(p.one_view_s)
    );
    let _ = writeln!(
        t,
        "   identities changed by the heal          {} (minority: {})",
        if p.changed.is_empty() {
            "none".into()
        } else {
            p.changed.join(", ")
        },
        p.minority.join(", ")
    );
    let _ = writeln!(
        t,
        "   failed Raft RPCs/s, all voters          {} while cut off, {} in the {} s after healing",
        s2(p.rpc_failures_per_s_cut),
        s2(p.rpc_failures_per_s),
        AFTER_HEAL.as_secs()
    );
    let _ = writeln!(
        t,
        "   puts acknowledged during the cut        {}, lost {}",
        p.puts_acked, p.puts_lost
    );
    let _ = writeln!(
        t,
        "\n3. SDFS from the client host vs scp between the same hosts (medians; targets: put ≤ 2× scp, get ≤ 1× scp)"
    );
    let _ = writeln!(
        t,
        "   {:>8} {:>4} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}",
        "size", "reps", "put s", "scp s", "ratio", "get s", "scp s", "ratio"
    );
    for x in &d.sdfs {
        let _ = writeln!(
            t,
            "   {:>4} MiB {:>4} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}{}",
            x.size_mib,
            x.reps,
            s2(x.put_s),
            s2(x.scp_up_s),
            s2(x.put_ratio()),
            s2(x.get_s),
            s2(x.scp_down_s),
            s2(x.get_ratio()),
            x.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(s) = &d.soak {
        let _ = writeln!(
            t,
            "\n4. soak: {} s, {} tiny-model jobs, {} images, machine CPU busy {:.0}%",
            s.secs,
            s.jobs,
            s.images,
            s.cpu_busy * 100.0
        );
        let _ = writeln!(
            t,
            "   suspicions {}, refuted {}, declared failed {} (target 0){}",
            s.suspicions,
            s.refuted,
            s.declared_failed,
            s.error
                .as_deref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
    }
    t
}
