//! `bench sdfs`'s metadata-at-scale row through a real leader (issue 21 §3): N versions
//! committed by the leader of a cluster of release agents, as batched puts commit them
//! (`BeginPutBatch`, then `CommitPutBatch`: one plan in the leader's memory, one
//! `Op::Batch` Raft entry of 1,024 `PutAt`), without their bytes: the bench names each
//! batch's chain as its holders instead of streaming the files to it. Every metadata step
//! is the one a real batched put takes; only the data plane is left out (1M files would
//! be 4M copies on this disk).
//!
//! Files are batched by their placement (`placement::place` over the agents), so every
//! version sits where balance wants it and nothing moves. Reconcile is set to once an hour,
//! since a holder's pass would find its copies missing and try to fetch them.
//!
//! Figures: the leader's RSS (`/proc/PID/status`), the snapshot the leader built covering
//! every version (time and size, from its log line), `dml ls-all` of a prefix matching 100
//! names (wall time of the process, median), and a voter's restart to answering and to
//! catching up with the leader.

use crate::sdfs_local::proc_status_bytes;
use anyhow::{Context, Result, bail, ensure};
use dml_agent::control::placement;
use dml_agent::control::state::scale::{self, BATCH, PREFIX_GLOB, PREFIX_MATCHES};
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::sdfs::{BatchCommit, FileCommit, MetaRequest, MetaResponse};
use dml_tests::sdfs::{SdfsCluster, SdfsOptions, api, test_control};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time for the cluster to converge and elect a leader.
const READY: Duration = Duration::from_secs(120);
/// Batches in flight at once.
const PARALLEL: usize = 4;
/// Tries of one metadata request.
const ATTEMPTS: u32 = 20;
/// Entries before the first snapshot beyond the batches: the fill's batches, the entries
/// a cluster starts with and slack. The voters' first snapshot then follows the fill, as
/// one snapshot of a leader of 1M versions would (a snapshot every few entries would
/// serialise the growing state again and again on every voter).
const SNAPSHOT_SLACK: u64 = 40;
/// Longest wait for that snapshot, and for the restarted voter.
const WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(50);
/// `dml ls-all` runs timed (the median is reported).
const LISTINGS: usize = 11;
/// The leader's log line for a built snapshot (`control/store.rs`).
const SNAPSHOT_LINE: &str = "snapshot built and saved";

#[derive(Debug, Default, Serialize)]
pub struct ClusterRow {
    pub agents: usize,
    pub versions: u64,
    /// Entries of one file committed after the fill until a snapshot covered it.
    pub padding: u64,
    pub fill_s: f64,
    /// Another agent led after the fill than before it.
    pub leader_changed: bool,
    pub leader_rss_before_bytes: u64,
    pub leader_rss_bytes: u64,
    pub leader_peak_rss_bytes: u64,
    pub snapshot_index: u64,
    pub snapshot_s: f64,
    pub snapshot_bytes: u64,
    /// `dml ls-all` of [`PREFIX_GLOB`] through the leader: the process's wall time, median.
    pub ls_all_ms: f64,
    pub ls_all_lines: usize,
    /// One `ListPage` request of the same glob from the bench process, median.
    pub list_page_ms: f64,
    pub restarted: String,
    /// From the restart to the voter answering its API.
    pub restart_answer_s: Option<f64>,
    /// From the restart to the voter having applied what the leader had when it was killed.
    pub restart_caught_up_s: Option<f64>,
    /// From the restart to a stat through the voter answering.
    pub restart_read_s: Option<f64>,
    pub error: Option<String>,
}

/// Ways to choose `k` of `n` (the distinct placements of `k` replicas on `n` agents).
fn choose(n: u64, k: u64) -> u64 {
    (0..k.min(n)).fold(1, |c, i| c * (n - i) / (i + 1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The last snapshot line in the leader's log: (index, bytes, build ms).
fn last_snapshot(log: &str) -> Option<(u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains(SNAPSHOT_LINE))?;
    let field = |key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))?
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    Some((field("index=")?, field("bytes=")?, field("build_ms=")?))
}

pub async fn run(versions: u64, agents: usize, run_dir: &Path) -> ClusterRow {
    let mut row = ClusterRow {
        agents,
        versions,
        ..ClusterRow::default()
    };
    if let Err(e) = measure(run_dir, &mut row).await {
        eprintln!("[meta cluster row] {e:#}");
        row.error = Some(format!("{e:#}"));
    }
    let _ = std::fs::remove_dir_all(run_dir);
    row
}

/// One metadata request to the leader; an error keeps only its end (the request is too
/// long to quote, the end says why).
async fn ask(leader: SocketAddr, req: MetaRequest) -> Result<MetaResponse> {
    api::meta(leader, req).await.map_err(|e| {
        let full = format!("{e:#}");
        let cut = full.len().saturating_sub(300);
        let cut = (cut..full.len())
            .find(|&i| full.is_char_boundary(i))
            .unwrap_or(0);
        anyhow::anyhow!("...{}", &full[cut..])
    })
}

/// Plans and commits one batch of versions (`ids`, or the one file `pad`) with the leader
/// at `leader`, as a batched put does; the ids left to try again (a refused commit: on a
/// loaded machine the leader's lease round can time out). A commit refused with "nothing
/// was changed" still used up its plan's versions, so a name tried again may be planned
/// above version 1; it is committed there (the fill's count is checked at the end: a
/// commit whose answer was lost but which took effect shows as a version too many).
async fn commit_batch(leader: SocketAddr, ids: Vec<u64>, pad: Option<String>) -> Result<Vec<u64>> {
    let named: Vec<(String, u64, u64)> = match pad {
        Some(name) => vec![(name, 1, 0)],
        None => ids
            .iter()
            .map(|&i| (scale::name(i), scale::size(i), i))
            .collect(),
    };
    let files = named.iter().map(|(n, s, _)| (n.clone(), *s)).collect();
    let (versions, chain, plan) = match ask(leader, MetaRequest::BeginPutBatch { files }).await? {
        MetaResponse::PutBatchPlan {
            versions,
            chain,
            plan,
            ..
        } => (versions, chain, plan),
        other => bail!("BeginPutBatch answered {other:?}"),
    };
    let (files, ids): (Vec<BatchCommit>, Vec<u64>) = named
        .into_iter()
        .zip(versions)
        .map(|((name, _, i), version)| {
            let file = BatchCommit {
                name,
                version,
                checksum: scale::checksum(i),
                holders: chain.clone(),
            };
            (file, i)
        })
        .unzip();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    match ask(leader, MetaRequest::CommitPutBatch { plan, files }).await {
        Ok(MetaResponse::CommittedBatch(answers)) => Ok(ids
            .into_iter()
            .zip(answers)
            .filter(|(_, a)| !matches!(a, FileCommit::Committed { .. }))
            .map(|(i, _)| i)
            .collect()),
        Ok(other) => bail!("CommitPutBatch answered {other:?}"),
        Err(e) => {
            eprintln!("[meta cluster row] a commit failed, tried again: {e:#}");
            Ok(ids)
        }
    }
}

/// The leader as the agents at `addrs` name it (the first that names one).
async fn find_leader(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    for a in addrs {
        if let Ok(Some(l)) = api::leader_info(*a).await.map(|i| i.leader) {
            return Some(l);
        }
    }
    None
}

/// [`commit_batch`] until every id is committed, at most [`ATTEMPTS`] times; after a
/// failure, asked of the leader the agents at `addrs` name then.
async fn commit_all(
    addrs: Arc<Vec<SocketAddr>>,
    mut leader: SocketAddr,
    mut ids: Vec<u64>,
    pad: Option<String>,
) -> Result<()> {
    for attempt in 1..=ATTEMPTS {
        match commit_batch(leader, ids.clone(), pad.clone()).await {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(left) => ids = left,
            Err(e) if attempt == ATTEMPTS => return Err(e),
            Err(e) => eprintln!("[meta cluster row] attempt {attempt}: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        leader = find_leader(&addrs).await.unwrap_or(leader);
    }
    bail!(
        "{} versions still not committed after {ATTEMPTS} tries",
        ids.len()
    )
}

async fn measure(run_dir: &Path, row: &mut ClusterRow) -> Result<()> {
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)?;
    let opts = SdfsOptions {
        agents: row.agents,
        membership: MembershipConfig::preset(Preset::Local),
        // The tests' Raft timers (elections in 1-2 s): with the defaults, a leader
        // applying entries of 1,024 puts on a loaded two-core machine was deposed again
        // and again.
        control: ControlConfig {
            // At most one batch per placement (of 4 replicas, the Local preset's) more
            // than the versions fill.
            snapshot_every: row.versions.div_ceil(BATCH)
                + choose(row.agents as u64, 4)
                + SNAPSHOT_SLACK,
            ..test_control()
        },
        sdfs: SdfsConfig {
            reconcile_interval: Duration::from_secs(3600),
            ..SdfsConfig::default()
        },
        base_dir: Some(run_dir.to_path_buf()),
        extra_config: String::new(),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    };
    eprintln!("[meta cluster row] starting {} agents", row.agents);
    let mut c = SdfsCluster::start_with("cluster", opts).await?;
    let replicas = c.replicas();
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await?;
    let leader_addr = c.addrs[leader];
    let addrs = Arc::new(c.addrs.clone());
    let pid = c.agent(leader).pid();
    row.leader_rss_before_bytes = proc_status_bytes(pid, "VmRSS")?;

    // Versions grouped by where placement puts them, in batches of 1,024.
    let mut groups: BTreeMap<Vec<SocketAddr>, Vec<u64>> = BTreeMap::new();
    for i in 0..row.versions {
        let mut at = placement::place(&scale::name(i), &c.addrs, replicas);
        at.sort();
        groups.entry(at).or_default().push(i);
    }
    let mut batches: Vec<Vec<u64>> = groups
        .into_values()
        .flat_map(|ids| {
            ids.chunks(BATCH as usize)
                .map(<[u64]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    batches.reverse();
    eprintln!(
        "[meta cluster row] committing {} versions in {} batches through leader {leader_addr}",
        row.versions,
        batches.len()
    );
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let (mut done, total) = (0usize, batches.len());
    loop {
        while set.len() < PARALLEL {
            let Some(ids) = batches.pop() else { break };
            set.spawn(commit_all(addrs.clone(), leader_addr, ids, None));
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        r.context("a batch task failed")??;
        done += 1;
        if done % 100 == 0 {
            eprintln!(
                "[meta cluster row] {done}/{total} batches in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    row.fill_s = t.elapsed().as_secs_f64();
    eprintln!(
        "[meta cluster row] {} versions committed in {:.1} s",
        row.versions, row.fill_s
    );

    // Asked directly, a deposed leader refuses and the batch is tried again; measured,
    // the leader now (whose RSS then covers part of the fill in its follower's role).
    let now = c.leader_index(&all, READY).await?;
    if now != leader {
        eprintln!("[meta cluster row] the leader changed during the fill");
        row.leader_changed = true;
    }
    let (leader, leader_addr) = (now, c.addrs[now]);
    let pid = c.agent(leader).pid();
    let MetaResponse::Count { versions, .. } = ask(leader_addr, MetaRequest::Count).await? else {
        bail!("Count answered something else");
    };
    ensure!(
        versions == row.versions,
        "the leader counts {versions} committed versions, not {}",
        row.versions
    );

    // Every voter snapshots on its own; the leader's snapshot covering the fill.
    let filled = api::leader_info(leader_addr)
        .await?
        .last_applied
        .context("the leader reports no applied index")?;
    let deadline = Instant::now() + WAIT;
    let snap = loop {
        match last_snapshot(&c.agent(leader).stderr()) {
            Some(s) if s.0 >= filled => break s,
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "no snapshot of the leader covers index {filled} within {WAIT:?}"
        );
        row.padding += 1;
        let pad = Some(format!("pad/{}", row.padding));
        commit_all(addrs.clone(), leader_addr, vec![], pad).await?;
    };
    (row.snapshot_index, row.snapshot_bytes) = (snap.0, snap.1);
    row.snapshot_s = snap.2 as f64 / 1e3;
    row.leader_rss_bytes = proc_status_bytes(pid, "VmRSS")?;
    row.leader_peak_rss_bytes = proc_status_bytes(pid, "VmHWM")?;

    // `dml ls-all` of a prefix matching 100 names, as an operator runs it.
    let (mut wall, mut page) = (Vec::new(), Vec::new());
    for _ in 0..LISTINGS {
        let t = Instant::now();
        let out = c.dml(leader, &["ls-all", PREFIX_GLOB]).await?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(out.code() == Some(0), "dml ls-all failed: {}", out.stderr);
        row.ls_all_lines = out
            .stdout
            .lines()
            .filter(|l| l.contains("data/00042/00421"))
            .count();
        let req = MetaRequest::ListPage {
            glob: PREFIX_GLOB.into(),
            after: None,
            limit: 2000,
        };
        let t = Instant::now();
        let r = api::meta(leader_addr, req).await?;
        page.push(t.elapsed().as_secs_f64() * 1e3);
        let MetaResponse::FilesPage { files, .. } = r else {
            bail!("ListPage answered {r:?}");
        };
        ensure!(
            files.len() == PREFIX_MATCHES,
            "{PREFIX_GLOB} matched {} names",
            files.len()
        );
    }
    row.ls_all_ms = median(wall);
    row.list_page_ms = median(page);
    ensure!(
        row.ls_all_lines >= PREFIX_MATCHES,
        "dml ls-all printed {} lines naming the prefix",
        row.ls_all_lines
    );

    // A voter (not the leader) killed and restarted with its data directory.
    let victim = c
        .voter_indices()
        .into_iter()
        .find(|&i| i != leader)
        .context("no voter besides the leader")?;
    let victim_addr = c.addrs[victim];
    row.restarted = victim_addr.to_string();
    let target = api::leader_info(leader_addr)
        .await?
        .last_applied
        .unwrap_or(0);
    c.kill(victim).await?;
    let t = Instant::now();
    c.restart(victim).await?;
    let deadline = t + WAIT;
    let probe = scale::name(42_100);
    loop {
        let now = t.elapsed().as_secs_f64();
        if let Ok(info) = api::leader_info(victim_addr).await {
            row.restart_answer_s.get_or_insert(now);
            if info.last_applied.is_some_and(|a| a >= target) {
                row.restart_caught_up_s.get_or_insert(now);
            }
        }
        if row.restart_answer_s.is_some()
            && row.restart_read_s.is_none()
            && matches!(api::file(victim_addr, &probe).await, Ok(Some(_)))
        {
            row.restart_read_s = Some(t.elapsed().as_secs_f64());
        }
        if row.restart_caught_up_s.is_some() && row.restart_read_s.is_some() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the restarted voter {victim_addr} did not catch up within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

pub fn table(r: &ClusterRow) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nmetadata at scale through a real leader: {} versions (+{} padding) on {} release agents, \
         committed as batched puts without their bytes",
        r.versions, r.padding, r.agents
    );
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  failed: {e}");
        return s;
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let target = crate::sdfs_meta::TARGET_RSS_BYTES;
    let _ = writeln!(
        s,
        "  committed in {:.1} s ({:.0} versions/s, {PARALLEL} batches of {BATCH} in flight)",
        r.fill_s,
        r.versions as f64 / r.fill_s.max(1e-9)
    );
    if r.leader_changed {
        let _ = writeln!(
            s,
            "  the leader changed during the fill: RSS of the new one"
        );
    }
    let _ = writeln!(
        s,
        "  leader RSS {:.0} MiB (before the fill {:.0} MiB, peak {:.0} MiB; target <= {} MiB) {}",
        mib(r.leader_rss_bytes),
        mib(r.leader_rss_before_bytes),
        mib(r.leader_peak_rss_bytes),
        target >> 20,
        if r.leader_rss_bytes <= target {
            "ok"
        } else {
            "MISSED"
        }
    );
    let _ = writeln!(
        s,
        "  leader's snapshot at index {}: built and saved in {:.2} s, {:.0} MiB",
        r.snapshot_index,
        r.snapshot_s,
        mib(r.snapshot_bytes)
    );
    let _ = writeln!(
        s,
        "  dml ls-all '{PREFIX_GLOB}' ({} names): {:.1} ms wall (process included); one ListPage {:.2} ms (medians of {LISTINGS})",
        r.ls_all_lines, r.ls_all_ms, r.list_page_ms
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
    let _ = writeln!(
        s,
        "  voter {} restarted: answering after {}, caught up after {}, a read through it after {}",
        r.restarted,
        f(r.restart_answer_s),
        f(r.restart_caught_up_s),
        f(r.restart_read_s)
    );
    s
}
