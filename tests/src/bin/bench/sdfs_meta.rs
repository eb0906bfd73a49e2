//! `bench sdfs`'s metadata-at-scale rows (issue 21 §3). Through a real leader
//! (`sdfs_meta_cluster.rs`): N versions committed by a cluster of release agents as
//! batched puts commit them. In this process: the same N versions applied to the control
//! plane's state machine as a batched put's commits apply (`Op::Batch` of `PutAt`, 1,024
//! to an entry), then its store's snapshot built, installed into a fresh store and read
//! back as a restarted voter does, and `ls-all` of a prefix that matches 100 names; no
//! Raft, no leader process (the RSS figure is this process's growth while applying). Both
//! build their names and entries with `dml_agent::control::state::scale`.

use crate::sdfs_meta_cluster::ClusterRow;
use anyhow::{Context, Result};
use dml_agent::control::state::LIST_SCAN_MAX;
use dml_agent::control::state::scale::{self, PREFIX_GLOB};
use dml_agent::control::store;
use dml_shared::sdfs::Glob;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, LogId, RaftSnapshotBuilder};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Target from issue 21.
pub const TARGET_RSS_BYTES: u64 = 1 << 30;
/// Listings timed for the prefix row (the median is reported).
const LISTINGS: usize = 21;

#[derive(clap::Args, Clone, Debug)]
pub struct MetaArgs {
    /// Versions in the metadata-at-scale row; 0 leaves the row out.
    #[arg(long, default_value_t = 1_000_000)]
    pub meta_versions: u64,
    /// Run the metadata-at-scale rows only.
    #[arg(long)]
    pub meta_only: bool,
    /// Leave out the row through a real leader (it starts its own cluster).
    #[arg(long)]
    pub meta_no_cluster: bool,
    /// Leave out the in-process row.
    #[arg(long)]
    pub meta_no_local: bool,
}

/// Both rows, as `sdfs-meta.json` holds them.
#[derive(Debug, Default, Serialize)]
pub struct MetaReport {
    pub cluster: Option<ClusterRow>,
    pub local: Option<MetaRow>,
}

#[derive(Debug, Default, Serialize)]
pub struct MetaRow {
    pub versions: u64,
    pub apply_s: f64,
    /// This process's resident growth while applying the versions.
    pub rss_bytes: u64,
    pub snapshot_s: f64,
    pub snapshot_bytes: u64,
    /// Decoding and swapping in a received snapshot.
    pub install_s: f64,
    /// Opening the store as a restarted voter does (its snapshot read back).
    pub reopen_s: f64,
    /// One page of `ls-all` of [`PREFIX_GLOB`] (100 names), median.
    pub prefix_list_ms: f64,
    pub prefix_matches: usize,
    /// One page of `ls-all '*'` (the first 2,000 names), median.
    pub first_page_ms: f64,
    pub error: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The rows `a` asks for; the cluster row on `agents` agents.
pub async fn run(a: &MetaArgs, agents: usize, run_dir: &Path) -> MetaReport {
    let mut report = MetaReport::default();
    if !a.meta_no_cluster {
        let dir = run_dir.join("cluster");
        report.cluster = Some(crate::sdfs_meta_cluster::run(a.meta_versions, agents, &dir).await);
    }
    if !a.meta_no_local {
        report.local = Some(run_local(a, &run_dir.join("local")).await);
    }
    report
}

async fn run_local(a: &MetaArgs, run_dir: &Path) -> MetaRow {
    let mut row = MetaRow {
        versions: a.meta_versions,
        ..MetaRow::default()
    };
    if let Err(e) = measure(run_dir, &mut row).await {
        eprintln!("[meta row] {e:#}");
        row.error = Some(format!("{e:#}"));
    }
    row
}

async fn measure(run_dir: &Path, row: &mut MetaRow) -> Result<()> {
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)?;
    let before = scale::resident_bytes();
    let t = Instant::now();
    let state = scale::filled(row.versions)?;
    row.apply_s = t.elapsed().as_secs_f64();
    row.rss_bytes = scale::resident_bytes().saturating_sub(before);
    eprintln!(
        "[meta row] {} versions applied in {:.1} s",
        row.versions, row.apply_s
    );

    let glob = Glob::new(PREFIX_GLOB)?;
    let all = Glob::new("*")?;
    let (mut prefix, mut first) = (Vec::new(), Vec::new());
    for _ in 0..LISTINGS {
        let t = Instant::now();
        let page = state.listing().page(&glob, None, 2000, LIST_SCAN_MAX);
        prefix.push(t.elapsed().as_secs_f64() * 1e3);
        row.prefix_matches = page.files.len();
        let t = Instant::now();
        let page = state.listing().page(&all, None, 2000, LIST_SCAN_MAX);
        first.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(page);
    }
    row.prefix_list_ms = median(prefix);
    row.first_page_ms = median(first);

    let err = |e: store::OpenError| anyhow::anyhow!("{e}");
    let (_log, mut sm, shared) = store::open(&run_dir.join("leader")).map_err(err)?;
    let applied = LogId::new(CommittedLeaderId::new(1, 1), row.versions / 1024 + 1);
    {
        let mut d = shared.write().unwrap_or_else(|p| p.into_inner());
        d.state = state;
        d.last_applied = Some(applied);
    }
    let t = Instant::now();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .context("building the snapshot")?;
    row.snapshot_s = t.elapsed().as_secs_f64();
    row.snapshot_bytes = snap.snapshot.get_ref().len() as u64;

    let dir = run_dir.join("voter");
    let (log2, mut fresh, restored) = store::open(&dir).map_err(err)?;
    let t = Instant::now();
    fresh
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .context("installing the snapshot")?;
    row.install_s = t.elapsed().as_secs_f64();
    drop((log2, fresh, restored));
    let t = Instant::now();
    let (_log3, _sm3, reopened) = store::open(&dir).map_err(err)?;
    row.reopen_s = t.elapsed().as_secs_f64();
    let n = reopened
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .state
        .count()
        .1;
    anyhow::ensure!(n == row.versions, "the reopened store holds {n} versions");
    let _ = std::fs::remove_dir_all(run_dir);
    Ok(())
}

/// The table lines of the rows that ran.
pub fn table(r: &MetaReport) -> String {
    let mut s = String::new();
    if let Some(c) = &r.cluster {
        s += &crate::sdfs_meta_cluster::table(c);
    }
    if let Some(l) = &r.local {
        s += &local_table(l);
    }
    s
}

fn local_table(r: &MetaRow) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nmetadata at scale: {} versions in the state machine and its store, in-process \
         (not through a cluster)",
        r.versions
    );
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  failed: {e}");
        return s;
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let _ = writeln!(
        s,
        "  resident growth {:.0} MiB ({} B per version; target <= {} MiB) {}",
        mib(r.rss_bytes),
        r.rss_bytes / r.versions.max(1),
        TARGET_RSS_BYTES >> 20,
        if r.rss_bytes <= TARGET_RSS_BYTES {
            "ok"
        } else {
            "MISSED"
        }
    );
    let _ = writeln!(
        s,
        "  applied in {:.1} s (batches of 1,024 PutAt)",
        r.apply_s
    );
    let _ = writeln!(
        s,
        "  snapshot built in {:.2} s, {:.0} MiB; installed in {:.2} s; reopened (restart) in {:.2} s",
        r.snapshot_s,
        mib(r.snapshot_bytes),
        r.install_s,
        r.reopen_s
    );
    let _ = writeln!(
        s,
        "  ls-all of a prefix: {} names in {:.3} ms; first page of '*': {:.3} ms (medians of {LISTINGS})",
        r.prefix_matches, r.prefix_list_ms, r.first_page_ms
    );
    s
}
