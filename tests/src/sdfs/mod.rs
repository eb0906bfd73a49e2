//! SDFS clusters for real-process tests and the bench: agents on ports chosen before they
//! start, each told every agent's address (`--node`), so the first `2m + 1` are the Raft
//! voters; fast control-plane and SDFS timers; and helpers to find the leader, put and get
//! through the `dml` binary, and look at what is committed and what lies on each disk.
//!
//! - [`content`]: distinct, recognisable file contents.
//! - [`api`]: the ground truth over the agent API (leader, committed versions, holdings).
//! - [`disk`]: an agent's data directory, searched by content; corrupting a copy.
//! - [`json`]: looking into `dml --json` output.
//! - [`partition`]: freezing agents (SIGSTOP) so a minority is left, resumed on drop.

pub mod api;
pub mod content;
pub mod disk;
pub mod json;
pub mod partition;

use crate::agent::{Agent, AgentSpec};
use crate::cluster::{Cluster, test_membership};
use crate::dml::DmlOutput;
use crate::ports::free_fixed_addr;
use crate::small_disk::SmallDisk;
use crate::view::VIEW_POLL;
use crate::wait::wait_for;
use anyhow::{Context, Result, anyhow, bail, ensure};
use dml_shared::config::{ControlConfig, MembershipConfig, SdfsConfig};
use dml_shared::sdfs::FileInfo;
use dml_shared::sdfs_client::{PutReport, Sdfs, no_progress};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The port of every agent on a namespace host.
pub const BED_PORT: u16 = 7000;
/// Time for a fresh cluster to converge and agree on a leader.
pub const READY: Duration = Duration::from_secs(45);
/// Time allowed for one `dml` command on small test files.
pub const DML: Duration = Duration::from_secs(60);
/// How often SDFS state is polled while waiting.
pub const SDFS_POLL: Duration = Duration::from_millis(250);

/// Raft timers for tests: elections in 1–2 s, with enough slack over the 150 ms heartbeat
/// that a loaded two-core machine running two clusters does not depose leaders.
pub fn test_control() -> ControlConfig {
    let ms = Duration::from_millis;
    ControlConfig {
        heartbeat_interval: ms(150),
        election_timeout_min: ms(1000),
        election_timeout_max: ms(2000),
        rpc_timeout: ms(1500),
        ..ControlConfig::default()
    }
}

/// SDFS timers for tests: reconcile every second, scrub every 2 s, and stale puts expire
/// after 8 s, so every SDFS background behaviour shows within a test's deadlines.
pub fn test_sdfs() -> SdfsConfig {
    SdfsConfig {
        put_timeout: Duration::from_secs(8),
        scrub_interval: Duration::from_secs(2),
        reconcile_interval: Duration::from_secs(1),
        ..SdfsConfig::default()
    }
}

/// At most this many SDFS clusters run at once in one test binary (tests run in parallel
/// threads); more would starve a two-core machine. Take a permit with [`cluster_slot`].
const CLUSTER_SLOTS: usize = 2;
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CLUSTER_SLOTS);

/// Waits for a turn to run an SDFS cluster; hold the permit for the whole test.
pub async fn cluster_slot() -> tokio::sync::SemaphorePermit<'static> {
    SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// Waits until no other cluster of this test binary runs, and keeps it so: for a test
/// whose assertion is about shares of the host's compute (another cluster's queries on
/// the same two cores and host compute slots would take an uneven part of them).
pub async fn cluster_alone() -> tokio::sync::SemaphorePermit<'static> {
    SLOTS
        .acquire_many(CLUSTER_SLOTS as u32)
        .await
        .expect("the semaphore is never closed")
}

/// libfaketime, multithreaded variant (Debian package libfaketime).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that runs an agent on the offset written in `file`: libfaketime re-reads
/// it every second and leaves the monotonic clock alone.
fn fake_clock_env(file: &Path) -> Result<Vec<(String, String)>> {
    ensure!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install the Debian package libfaketime (scripts/setup.sh does)"
    );
    Ok(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// What an SDFS cluster is started with.
#[derive(Clone, Debug)]
pub struct SdfsOptions {
    pub agents: usize,
    pub membership: MembershipConfig,
    pub control: ControlConfig,
    pub sdfs: SdfsConfig,
    /// Where the cluster's directory goes; `None` is the tests' default (see
    /// [`crate::dir::TestDir::new`]).
    pub base_dir: Option<PathBuf>,
    /// TOML appended to every agent's config file.
    pub extra_config: String,
    /// Namespace hosts (see [`crate::netbed`]): agent `i` runs on host `i`, at port
    /// [`BED_PORT`] of its address. Empty: every agent on 127.0.0.1.
    pub hosts: Vec<crate::netbed::Host>,
    /// Run every agent on a wall clock the test can move ([`SdfsCluster::set_clock`]),
    /// through libfaketime.
    pub movable_clocks: bool,
    /// Give every agent a file system of this many bytes of its own (a tmpfs at
    /// `<cluster dir>/a<i>-disk`, its data directory `data` inside), so a test can fill it
    /// ([`SdfsCluster::disk`]). Needs root.
    pub disk_bytes: Option<u64>,
}

impl SdfsOptions {
    /// `agents` agents with the test timers.
    pub fn new(agents: usize) -> Self {
        Self {
            agents,
            membership: test_membership(),
            control: test_control(),
            sdfs: test_sdfs(),
            base_dir: None,
            extra_config: String::new(),
            hosts: Vec::new(),
            movable_clocks: false,
            disk_bytes: None,
        }
    }
}

/// A cluster whose agents all know every agent's address (`--node`).
pub struct SdfsCluster {
    /// Before `cluster`: unmounted (lazily) first, so the test directory's removal finds
    /// empty mount points. A kept directory (a failed test) keeps the agents' logs, not
    /// their data directories.
    disks: Vec<SmallDisk>,
    pub cluster: Cluster,
    /// Agent `i` listens on `addrs[i]`, across restarts.
    pub addrs: Vec<SocketAddr>,
    pub opts: SdfsOptions,
    specs: Vec<AgentSpec>,
    /// Local files for `dml put` and `dml get`.
    scratch: PathBuf,
    next_file: AtomicU64,
}

impl SdfsCluster {
    /// Starts `agents` agents with the test timers and waits until they are ready.
    pub async fn start(name: &str, agents: usize) -> Result<Self> {
        Self::start_with(name, SdfsOptions::new(agents)).await
    }

    /// Starts the agents (agent 0 first, the others joining through it) and waits until
    /// they see each other and agree on a leader.
    pub async fn start_with(name: &str, opts: SdfsOptions) -> Result<Self> {
        ensure!(
            opts.hosts.is_empty() || opts.hosts.len() >= opts.agents,
            "{} agents on {} hosts",
            opts.agents,
            opts.hosts.len()
        );
        let mut addrs: Vec<SocketAddr> = opts.hosts[..opts.agents.min(opts.hosts.len())]
            .iter()
            .map(|h| SocketAddr::from((h.ip, BED_PORT)))
            .collect();
        while addrs.len() < opts.agents {
            let a = free_fixed_addr()?;
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let mut cluster = match &opts.base_dir {
            Some(base) => Cluster::new_in(base, name, opts.membership.clone())?,
            None => Cluster::new(name, opts.membership.clone())?,
        };
        let scratch = cluster.dir().join("local");
        std::fs::create_dir_all(&scratch)?;
        let mut specs = Vec::new();
        if opts.disk_bytes.is_some() {
            // What a killed run left mounted (a bed's creation sweeps too).
            crate::small_disk::sweep_stale()?;
        }
        let mut disks = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let mut spec = AgentSpec::new(format!("a{i}"), opts.membership.clone())
                .bind(*a)
                .nodes(&addrs)
                .control(opts.control.clone())
                .sdfs(opts.sdfs.clone());
            spec.extra_config = opts.extra_config.clone();
            spec.netns = opts.hosts.get(i).map(|h| h.ns.clone());
            if let Some(bytes) = opts.disk_bytes {
                let disk = SmallDisk::mount(&cluster.dir().join(format!("a{i}-disk")), bytes)?;
                spec = spec.data_dir(disk.path().join("data"));
                disks.push(disk);
            }
            if opts.movable_clocks {
                let file = cluster.dir().join(format!("a{i}.clock"));
                std::fs::write(&file, "+0s\n")?;
                spec.env = fake_clock_env(&file)?;
            }
            if i > 0 {
                spec = spec.introducer(addrs[0]);
            }
            cluster.spawn(spec.clone()).await?;
            specs.push(spec);
        }
        let c = Self {
            disks,
            cluster,
            addrs,
            opts,
            specs,
            scratch,
            next_file: AtomicU64::new(0),
        };
        c.wait_ready(READY).await?;
        Ok(c)
    }

    /// Moves agent `i`'s wall clock to `offset_s` seconds from the true time (within about
    /// a second; its monotonic clock is untouched). Needs [`SdfsOptions::movable_clocks`].
    pub fn set_clock(&self, i: usize, offset_s: i64) -> Result<()> {
        ensure!(
            self.opts.movable_clocks,
            "the cluster's clocks are not movable"
        );
        let file = self.dir().join(format!("a{i}.clock"));
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}s\n"))?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    pub fn agent(&self, i: usize) -> &Agent {
        &self.cluster.agents[i]
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The cluster's directory (agents' directories and the local files).
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// Agent `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.specs[i]
            .data_dir
            .clone()
            .unwrap_or_else(|| self.agent(i).dir().join("data"))
    }

    /// Agent `i`'s own file system, with [`SdfsOptions::disk_bytes`].
    pub fn disk(&self, i: usize) -> Result<&SmallDisk> {
        self.disks
            .get(i)
            .context("the cluster was started without disk_bytes")
    }

    /// The voters as every agent derives them: the first `2m + 1` addresses.
    pub fn voters(&self) -> Vec<SocketAddr> {
        if !self.opts.control.voters.is_empty() {
            return self.opts.control.voters.clone();
        }
        let n = 2 * self.opts.membership.m + 1;
        self.addrs.iter().take(n).copied().collect()
    }

    /// Indices of the voters.
    pub fn voter_indices(&self) -> Vec<usize> {
        let v = self.voters();
        (0..self.len())
            .filter(|&i| v.contains(&self.addrs[i]))
            .collect()
    }

    pub fn index_of(&self, addr: SocketAddr) -> Result<usize> {
        self.addrs
            .iter()
            .position(|a| *a == addr)
            .ok_or_else(|| anyhow!("{addr} is not an agent of this cluster"))
    }

    /// Indices of agents whose process has not exited (stopped ones included).
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.cluster.agents[i].is_running())
            .collect()
    }

    /// One check that every agent in `among` names the same leader, and the leader
    /// agrees that it leads.
    pub async fn check_leader(&self, among: &[usize]) -> Result<SocketAddr> {
        let mut leader = None;
        for &i in among {
            let info = api::leader_info(self.addrs[i]).await?;
            let l = info
                .leader
                .ok_or_else(|| anyhow!("agent a{i} knows no leader (term {})", info.term))?;
            match leader {
                None => leader = Some(l),
                Some(prev) if prev != l => bail!("agent a{i} names {l}, another names {prev}"),
                Some(_) => {}
            }
        }
        let l = leader.ok_or_else(|| anyhow!("no agent to ask"))?;
        let own = api::leader_info(l).await?;
        ensure!(
            own.leader == Some(l),
            "{l} is named leader but names {:?}",
            own.leader
        );
        Ok(l)
    }

    /// Waits until every agent in `among` names the same leader.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> Result<SocketAddr> {
        wait_for(
            "agents to agree on a leader",
            timeout,
            SDFS_POLL,
            async || self.check_leader(among).await,
        )
        .await
    }

    /// Waits until every running agent sees all the others live and they agree on a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<SocketAddr> {
        let running: Vec<&Agent> = self.cluster.agents.iter().collect();
        crate::view::wait_converged(&running, timeout).await?;
        let all: Vec<usize> = (0..self.len()).collect();
        self.wait_leader(&all, timeout).await
    }

    /// The leader's index, once `among` agree on one.
    pub async fn leader_index(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        let l = self.wait_leader(among, timeout).await?;
        self.index_of(l)
    }

    /// SIGKILLs agent `i` and reaps it.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        let a = &mut self.cluster.agents[i];
        a.kill()?;
        a.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGKILLs the leader, agent `leader`, and waits until another of
    /// `all` leads; logs how long that took.
    pub async fn kill_leader(&mut self, leader: usize, all: &[usize]) -> Result<SocketAddr> {
        self.kill(leader).await?;
        let t = std::time::Instant::now();
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        let new_leader = self
            .wait_leader(&survivors, Duration::from_secs(60))
            .await?;
        eprintln!(
            "killed leader a{leader}; {new_leader} leads {:.1?} later",
            t.elapsed()
        );
        Ok(new_leader)
    }

    /// Restarts agent `i` on its address with its data directory, joining through the
    /// agents running now.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let mut spec = self.specs[i].clone();
        let running = self.running();
        spec.introducers = running
            .into_iter()
            .filter(|&j| j != i)
            .map(|j| self.addrs[j])
            .collect();
        self.cluster.respawn(i, spec).await
    }

    /// A new path for a local file, under the cluster's directory.
    pub fn local_path(&self, hint: &str) -> PathBuf {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let safe: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        self.scratch.join(format!("{n:04}-{safe}"))
    }

    /// `dml --agent <agent i> <args>` with the default deadline.
    pub async fn dml(&self, i: usize, args: &[&str]) -> Result<DmlOutput> {
        self.agent(i).dml(args, DML).await
    }

    /// Writes `bytes` to a local file and runs `dml put` for it through agent `i`.
    pub async fn put_bytes(&self, i: usize, name: &str, bytes: &[u8]) -> Result<DmlOutput> {
        let local = self.local_path(name);
        content::write_file(&local, bytes)?;
        let l = local.to_string_lossy();
        self.dml(i, &["put", &l, name]).await
    }

    /// [`SdfsCluster::put_bytes`], failing unless `dml put` exits 0.
    pub async fn must_put(&self, i: usize, name: &str, bytes: &[u8]) -> Result<DmlOutput> {
        let out = self.put_bytes(i, name, bytes).await?;
        out.ensure_success()?;
        Ok(out)
    }

    /// `dml get` through agent `i` into a new local file; the bytes if it exited 0.
    pub async fn get_bytes(&self, i: usize, name: &str) -> Result<(DmlOutput, Option<Vec<u8>>)> {
        let local = self.local_path(&format!("got-{name}"));
        let l = local.to_string_lossy();
        let out = self.dml(i, &["get", name, &l]).await?;
        if !out.status.success() {
            return Ok((out, None));
        }
        let bytes = std::fs::read(&local)
            .with_context(|| format!("`{}` exited 0 but wrote no file", out.command))?;
        Ok((out, Some(bytes)))
    }

    /// `dml get` through agent `i`, failing unless it exits 0 with exactly `expected`.
    pub async fn must_get(&self, i: usize, name: &str, expected: &[u8]) -> Result<()> {
        let (out, got) = self.get_bytes(i, name).await?;
        out.ensure_success()?;
        let got = got.expect("success has bytes");
        ensure!(
            got == expected,
            "`{}` returned {} bytes that differ from the {} put (first difference at {:?})",
            out.command,
            got.len(),
            expected.len(),
            got.iter().zip(expected).position(|(a, b)| a != b)
        );
        Ok(())
    }

    /// An in-process SDFS client talking through agent `i`.
    pub fn client(&self, i: usize) -> Sdfs {
        Sdfs::new(self.addrs[i])
    }

    /// Writes `bytes` to a local file and puts it through agent `i` with the in-process
    /// client (which reports the version it committed).
    pub async fn client_put(
        &self,
        i: usize,
        name: &str,
        bytes: &[u8],
    ) -> Result<dml_shared::Result<PutReport>> {
        let local = self.local_path(name);
        content::write_file(&local, bytes)?;
        Ok(self.client(i).put(&local, name, &no_progress).await)
    }

    /// The committed versions of `name`, asked through agent `i`.
    pub async fn file(&self, i: usize, name: &str) -> Result<Option<FileInfo>> {
        api::file(self.addrs[i], name).await
    }

    /// Agents whose data directory holds a copy of `bytes`.
    pub fn holders_on_disk(&self, bytes: &[u8]) -> Result<BTreeSet<usize>> {
        let mut out = BTreeSet::new();
        for i in 0..self.len() {
            if !disk::copies_of(&self.data_dir(i), bytes)?.is_empty() {
                out.insert(i);
            }
        }
        Ok(out)
    }

    /// One check that every committed version of `name` has `replicas` replicas, all on
    /// agents in `live`; returns the file.
    pub async fn check_replicas(
        &self,
        via: usize,
        name: &str,
        replicas: usize,
        live: &[usize],
    ) -> Result<FileInfo> {
        let f = self
            .file(via, name)
            .await?
            .ok_or_else(|| anyhow!("\"{name}\" has no committed version"))?;
        for v in &f.versions {
            let dead: Vec<_> = v
                .replicas
                .iter()
                .filter(|r| !live.iter().any(|&i| self.addrs[i] == **r))
                .collect();
            ensure!(
                v.replicas.len() == replicas && dead.is_empty(),
                "\"{name}\" v{} has replicas {:?} ({} not live), want {replicas} live",
                v.version,
                v.replicas,
                dead.len()
            );
        }
        Ok(f)
    }

    /// Waits for [`SdfsCluster::check_replicas`].
    pub async fn wait_replicas(
        &self,
        via: usize,
        name: &str,
        replicas: usize,
        live: &[usize],
        timeout: Duration,
    ) -> Result<FileInfo> {
        let what = format!("\"{name}\" to have {replicas} live replicas");
        wait_for(&what, timeout, SDFS_POLL, async || {
            self.check_replicas(via, name, replicas, live).await
        })
        .await
    }

    /// The replication factor this cluster's agents use.
    pub fn replicas(&self) -> usize {
        self.opts
            .sdfs
            .replicas
            .unwrap_or(self.opts.membership.m + 1)
    }

    /// Polls agent `i`'s API until it answers (after a restart or SIGCONT).
    pub async fn wait_answering(&self, i: usize, timeout: Duration) -> Result<()> {
        let addr = self.addrs[i];
        wait_for("the agent to answer", timeout, VIEW_POLL, async || {
            api::leader_info(addr).await.map(drop)
        })
        .await
    }
}
