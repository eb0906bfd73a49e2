//! `bench sdfs`'s repair row (issue 21), on a cluster of its own: many small versions and
//! one large file, then 2 holders of the large file killed at once (the leader and the
//! agent the bench talks through spared). Timed from the leader's detection of both
//! failures: every small version back at 4 live replicas, and the large file's 2 copies,
//! whose speed is compared with `sdfs.repair_bytes_per_sec` (each target copies at up to
//! that rate, the two in parallel).

use crate::sdfs_local::available_bytes;
use anyhow::{Context, Result, bail, ensure};
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::sdfs::FileInfo;
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::sdfs::content::{pattern, write_file, write_pattern_file};
use dml_tests::sdfs::{SdfsCluster, SdfsOptions, api};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Time for the cluster to converge and elect a leader, and for fresh puts to settle at
/// 4 replicas.
const READY: Duration = Duration::from_secs(120);
/// Longest wait for repair after the kills.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the leader's view and the replica sets are polled.
const POLL: Duration = Duration::from_millis(100);
/// Targets from issue 21.
pub const TARGET_SMALL_S: f64 = 10.0;
pub const TARGET_LARGE_FRACTION: f64 = 0.8;

#[derive(clap::Args, Clone, Debug)]
pub struct RepairArgs {
    /// Small versions (4-16 KiB) in the repair row; 0 leaves the row out.
    #[arg(long, default_value_t = 2000)]
    pub repair_files: usize,
    /// Size of the repair row's large file, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub repair_large_mib: u64,
    /// Run the repair row only (no put/get sizes).
    #[arg(long)]
    pub repair_only: bool,
}

/// The repair row.
#[derive(Debug, Default, Serialize)]
pub struct RepairRow {
    pub agents: usize,
    pub small_files: usize,
    pub small_bytes: u64,
    pub large_bytes: u64,
    pub repair_bytes_per_sec: u64,
    pub killed: Vec<String>,
    /// Small versions that had a copy on a killed agent.
    pub small_hit: usize,
    /// From the kills to the leader listing both as failed.
    pub detect_s: Option<f64>,
    /// From detection to every small version back at 4 live replicas.
    pub small_s: Option<f64>,
    /// From detection to the large file back at 4 live replicas.
    pub large_s: Option<f64>,
    /// `large_bytes / large_s` over `repair_bytes_per_sec`.
    pub large_fraction: Option<f64>,
    pub error: Option<String>,
}

/// Every version at `replicas` replicas, all on `live` agents.
fn all_at(files: &[FileInfo], replicas: usize, live: &[SocketAddr]) -> bool {
    files
        .iter()
        .flat_map(|f| &f.versions)
        .all(|v| v.replicas.len() == replicas && v.replicas.iter().all(|r| live.contains(r)))
}

/// Runs the row on a fresh `agents`-agent cluster under `run_dir`.
pub async fn run(a: &RepairArgs, agents: usize, run_dir: &Path) -> RepairRow {
    let sdfs = SdfsConfig::default();
    let mut row = RepairRow {
        agents,
        small_files: a.repair_files,
        large_bytes: a.repair_large_mib * MIB,
        repair_bytes_per_sec: sdfs.repair_bytes_per_sec,
        ..RepairRow::default()
    };
    if let Err(e) = measure(a, agents, run_dir, sdfs, &mut row).await {
        eprintln!("[repair row] {e:#}");
        row.error = Some(format!("{e:#}"));
    }
    row
}

async fn measure(
    a: &RepairArgs,
    agents: usize,
    run_dir: &Path,
    sdfs: SdfsConfig,
    row: &mut RepairRow,
) -> Result<()> {
    ensure!(agents >= 7, "the repair row needs at least 7 agents");
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)?;
    // The source, 4 replicas and 2 repaired copies of the large file, and slack.
    let need = row.large_bytes * 7 + (2 << 30);
    let avail = available_bytes(run_dir)?;
    if avail < need {
        bail!(
            "not enough free space at \"{}\": {:.1} GiB available, about {:.1} GiB needed (try --repair-large-mib)",
            run_dir.display(),
            avail as f64 / (1u64 << 30) as f64,
            need as f64 / (1u64 << 30) as f64
        );
    }
    let opts = SdfsOptions {
        agents,
        membership: MembershipConfig::preset(Preset::Local),
        control: ControlConfig::default(),
        sdfs,
        base_dir: Some(run_dir.to_path_buf()),
        extra_config: String::new(),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    };
    eprintln!("[repair row] starting {agents} agents");
    let mut c = SdfsCluster::start_with("cluster", opts).await?;
    let via = c.len() - 1;
    let client = Sdfs::with_options(
        c.addrs[via],
        Options {
            store_timeout: Duration::from_secs(600),
            ..Options::default()
        },
    );

    let files = run_dir.join("files");
    let small_dir = files.join("small");
    std::fs::create_dir_all(&small_dir)?;
    for i in 0..a.repair_files {
        let len = 4096 + (i * 2749) % (12 << 10);
        row.small_bytes += len as u64;
        write_file(&small_dir.join(format!("f{i:05}")), &pattern(i as u64, len))?;
    }
    let t = Instant::now();
    let load = client
        .load(&small_dir, "repair/small", &no_progress)
        .await
        .context("loading the small files")?;
    let failed = load.items.iter().filter(|i| i.result.is_err()).count();
    ensure!(failed == 0, "{failed} small puts failed");
    eprintln!(
        "[repair row] {} small files loaded in {:.1?}",
        a.repair_files,
        t.elapsed()
    );
    let large = files.join("large");
    write_pattern_file(&large, 7, row.large_bytes)?;
    client
        .put(&large, "repair/large", &no_progress)
        .await
        .context("putting the large file")?;
    let _ = std::fs::remove_file(&large);

    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, READY).await?;
    let everyone: Vec<SocketAddr> = c.addrs.clone();
    let t = Instant::now();
    loop {
        let small = api::list(c.addrs[via], "repair/small/*").await?;
        let large = api::list(c.addrs[via], "repair/large").await?;
        if small.len() == a.repair_files
            && all_at(&small, 4, &everyone)
            && all_at(&large, 4, &everyone)
        {
            break;
        }
        if t.elapsed() > READY {
            bail!("the files did not all reach 4 replicas after the puts");
        }
        tokio::time::sleep(POLL).await;
    }
    let holders = api::file(c.addrs[via], "repair/large")
        .await?
        .context("the large file is not committed")?
        .versions[0]
        .replicas
        .clone();
    let victims: Vec<usize> = holders
        .iter()
        .map(|h| c.index_of(*h))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|&i| i != leader && i != via)
        .take(2)
        .collect();
    ensure!(
        victims.len() == 2,
        "fewer than 2 holders besides the leader and the client's agent"
    );
    let small = api::list(c.addrs[via], "repair/small/*").await?;
    let dead: Vec<SocketAddr> = victims.iter().map(|&i| c.addrs[i]).collect();
    row.small_hit = small
        .iter()
        .filter(|f| f.versions[0].replicas.iter().any(|r| dead.contains(r)))
        .count();
    row.killed = dead.iter().map(ToString::to_string).collect();
    let ids: Vec<_> = victims.iter().map(|&i| c.agent(i).id()).collect();
    eprintln!(
        "[repair row] killing {:?} ({} small versions lose a copy)",
        row.killed, row.small_hit
    );
    for &v in &victims {
        c.agent(v).kill()?;
    }
    let killed = Instant::now();
    for &v in &victims {
        c.kill(v).await?;
    }
    let live: Vec<SocketAddr> = everyone
        .iter()
        .copied()
        .filter(|a| !dead.contains(a))
        .collect();
    let leader_addr = c.addrs[leader];
    let mut detected: Option<Instant> = None;
    while row.small_s.is_none() || row.large_s.is_none() {
        let now = Instant::now();
        if detected.is_none() {
            let members = dml_tests::view::members(leader_addr).await?;
            let gone = ids.iter().all(|id| {
                members
                    .iter()
                    .find(|m| m.id == *id)
                    .is_none_or(|m| !m.state.is_live())
            });
            if gone {
                detected = Some(now);
                row.detect_s = Some(now.duration_since(killed).as_secs_f64());
            }
        }
        if let Some(d) = detected {
            let since = now.duration_since(d).as_secs_f64();
            if row.small_s.is_none() {
                let small = api::list(c.addrs[via], "repair/small/*").await?;
                if all_at(&small, 4, &live) {
                    row.small_s = Some(since);
                    eprintln!("[repair row] small versions back {since:.2}s after detection");
                }
            }
            if row.large_s.is_none() {
                let large = api::list(c.addrs[via], "repair/large").await?;
                if all_at(&large, 4, &live) {
                    row.large_s = Some(since);
                    row.large_fraction =
                        Some(row.large_bytes as f64 / since / row.repair_bytes_per_sec as f64);
                    eprintln!("[repair row] large file back {since:.2}s after detection");
                }
            }
        }
        if killed.elapsed() > REPAIR_TIMEOUT {
            bail!("not all back at 4 replicas within {REPAIR_TIMEOUT:?} of the kills");
        }
        tokio::time::sleep(POLL).await;
    }
    drop(c);
    let _ = std::fs::remove_dir_all(run_dir);
    Ok(())
}

fn mark(ok: bool) -> &'static str {
    if ok { " ✓" } else { " ✗" }
}

/// The row's lines of the table.
pub fn table(r: &RepairRow) -> String {
    let mut out = String::new();
    if let Some(e) = &r.error {
        let _ = writeln!(out, "repair row: FAILED: {e}");
        return out;
    }
    let s = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let _ = writeln!(
        out,
        "repair row: {} agents, 2 killed at once ({}); detected {} s after the kills; times from detection",
        r.agents,
        r.killed.join(", "),
        s(r.detect_s)
    );
    let _ = writeln!(
        out,
        "  {} small versions ({:.1} MiB; {} lost a copy) back at 4 replicas in {} s{} (target ≤ {TARGET_SMALL_S} s)",
        r.small_files,
        r.small_bytes as f64 / MIB as f64,
        r.small_hit,
        s(r.small_s),
        mark(r.small_s.is_some_and(|v| v <= TARGET_SMALL_S))
    );
    let _ = writeln!(
        out,
        "  {} MiB file: 2 copies back in {} s = {} MiB/s per target, {} of repair_bytes_per_sec ({} MiB/s){} (target ≥ {TARGET_LARGE_FRACTION}; a target's throttle starts with 1 s of burst)",
        r.large_bytes / MIB,
        s(r.large_s),
        r.large_s.map_or("-".into(), |t| format!(
            "{:.0}",
            r.large_bytes as f64 / t / MIB as f64
        )),
        s(r.large_fraction),
        r.repair_bytes_per_sec / MIB,
        mark(r.large_fraction.is_some_and(|f| f >= TARGET_LARGE_FRACTION))
    );
    out
}
