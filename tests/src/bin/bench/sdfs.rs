//! `bench sdfs`: 10 local agents, put and get of 1 MiB, 64 MiB and 1 GiB files with 4
//! replicas and fsync, against the local baseline of the same bytes written to 4 files
//! with fsync and one copy read back; the agents' peak memory during the largest put; and
//! the time from killing 3 holders of the largest file to it being back at 4 replicas.
//! First, on a cluster of its own, the small-files row (`sdfs_small.rs`: `--small-files N`,
//! default 10,000, 0 skips it; `--small-only`).
//!
//! Puts and gets use the in-process client (`dml_shared::sdfs_client`), as `dml` does,
//! so no process start is timed. Every timing is wall-clock from the call to its return.

use crate::sdfs_local::{
    available_bytes, evict, proc_status_bytes, read_all, reset_peak_rss, write_copies,
};
use crate::sdfs_report::{Document, MemoryReport, RepairReport, SizeReport};
use anyhow::{Context, Result, bail};
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::sdfs::content::write_pattern_file;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Time for the cluster to converge and elect a leader.
const READY: Duration = Duration::from_secs(60);
/// Longest wait for the largest file to be back at 4 replicas after the kill.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the replica count is polled during repair.
const REPAIR_POLL: Duration = Duration::from_millis(200);
/// Free space kept beyond the bench's own estimate.
const SPACE_MARGIN: u64 = 2 * GIB;

#[path = "sdfs_small.rs"]
mod small;

#[derive(clap::Args)]
pub struct SdfsArgs {
    #[command(flatten)]
    small: small::SmallArgs,
    /// Agents in the cluster.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Smoke run: 1 MiB and 64 MiB only, fewer repetitions; JSON to `sdfs-quick.json`.
    #[arg(long)]
    quick: bool,
    /// Keep the agents' data directories after the run.
    #[arg(long)]
    keep: bool,
    /// Do not run `cargo build` for dml-agent first.
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    repair: crate::sdfs_repair::RepairArgs,
    #[command(flatten)]
    balance: crate::sdfs_balance::BalanceArgs,
    #[command(flatten)]
    meta: crate::sdfs_meta::MetaArgs,
}

/// A size and how many times it is measured (the median is reported).
struct Plan {
    size: u64,
    reps: usize,
}

/// Small sizes get many repetitions: one takes milliseconds, and its median
/// must stand against the noise of a shared two-core machine. Even a cold
/// 1 GiB read varies 0.45-1.4 s here, so the largest size is measured thrice.
fn plans(quick: bool) -> Vec<Plan> {
    if quick {
        vec![
            Plan { size: MIB, reps: 9 },
            Plan {
                size: 64 * MIB,
                reps: 3,
            },
        ]
    } else {
        vec![
            Plan {
                size: MIB,
                reps: 15,
            },
            Plan {
                size: 64 * MIB,
                reps: 9,
            },
            Plan { size: GIB, reps: 3 },
        ]
    }
}

fn label(size: u64) -> String {
    if size >= GIB {
        format!("{} GiB", size / GIB)
    } else {
        format!("{} MiB", size / MIB)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(a: SdfsArgs, bin_dir: &Path, out_dir: &Path) -> Result<()> {
    if a.agents < 4 {
        bail!("--agents must be at least 4 (4 replicas)");
    }
    if !a.no_build {
        crate::locate(bin_dir, "dml-agent", "dml-agent", true)?;
    }
    if a.meta.meta_only {
        return meta_row(&a, out_dir).await;
    }
    if a.repair.repair_only {
        return repair_row(&a, out_dir).await;
    }
    if a.balance.balance_only {
        return balance_row(&a, out_dir).await;
    }
    let run_dir = out_dir.join("sdfs-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    if a.small.small_files > 0 {
        small_row(&a, out_dir).await?;
    }
    if a.small.small_only {
        return Ok(());
    }
    let plans = plans(a.quick);
    let largest = plans.iter().map(|p| p.size).max().unwrap_or(MIB);
    // The source and a got copy, 4 baseline copies, 4 replicas and 3 repaired ones of the
    // largest file; smaller files are deleted before the next size.
    let need = largest * 12 + SPACE_MARGIN;
    let avail = available_bytes(&run_dir)?;
    eprintln!(
        "free space at {}: {:.1} GiB (need about {:.1} GiB)",
        run_dir.display(),
        avail as f64 / GIB as f64,
        need as f64 / GIB as f64
    );
    if avail < need {
        bail!(
            "not enough free space at \"{}\": {:.1} GiB available, about {:.1} GiB needed (try --quick)",
            run_dir.display(),
            avail as f64 / GIB as f64,
            need as f64 / GIB as f64
        );
    }

    let opts = SdfsOptions {
        agents: a.agents,
        membership: MembershipConfig::preset(Preset::Local),
        control: ControlConfig::default(),
        sdfs: SdfsConfig::default(),
        base_dir: Some(run_dir.clone()),
        extra_config: String::new(),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    };
    let sdfs_cfg = opts.sdfs.clone();
    let t = Instant::now();
    eprintln!("starting {} agents", a.agents);
    let mut c = SdfsCluster::start_with("cluster", opts).await?;
    if a.keep {
        c.cluster.keep_dir();
    }
    eprintln!("cluster ready in {:.1?}", t.elapsed());
    // Talk through the last agent, a non-voter.
    let via = c.len() - 1;
    let opts = Options {
        store_timeout: Duration::from_secs(600),
        ..Options::default()
    };
    let client = Sdfs::with_options(c.addrs[via], opts.clone());
    // The same get, but fsyncing the fetched copy before it returns.
    let synced = Sdfs::with_options(
        c.addrs[via],
        Options {
            sync_local: true,
            ..opts
        },
    );
    let files = run_dir.join("files");
    std::fs::create_dir_all(&files)?;
    // What is made cold before every timed step: the bench's files and the replicas.
    let mut cold = vec![files.clone()];
    cold.extend((0..c.len()).map(|i| c.data_dir(i).join("sdfs/objects")));
    if let Some(d) = cold.iter().find(|d| !d.is_dir()) {
        bail!(
            "no directory \"{}\" to make cold before timing",
            d.display()
        );
    }

    let mut sizes = Vec::new();
    let mut memory = None;
    let mut repair = None;
    for p in &plans {
        let l = label(p.size);
        let src = files.join(format!("src-{}", p.size));
        eprintln!("[{l}] writing the source file");
        write_pattern_file(&src, p.size, p.size)?;
        let (mut put, mut base_put, mut get, mut read) = (vec![], vec![], vec![], vec![]);
        let mut get_synced = vec![];
        let is_largest = p.size == largest;
        let mut last_name = String::new();
        for r in 0..p.reps {
            // Baseline: 4 local copies with fsync (the source read cold, as for the put),
            // then one read back cold.
            let copies: Vec<PathBuf> = (0..4)
                .map(|k| files.join(format!("base-{}-{k}", p.size)))
                .collect();
            evict(&cold)?;
            let d = write_copies(&src, &copies)?;
            base_put.push(d.as_secs_f64());
            evict(&cold)?;
            read.push(read_all(&copies[0])?.as_secs_f64());
            for cp in &copies {
                let _ = std::fs::remove_file(cp);
            }

            // SDFS put, with the agents' peak memory reset first for the largest file.
            let name = format!("bench/{}/r{r}", p.size);
            if is_largest {
                for i in 0..c.len() {
                    reset_peak_rss(c.agent(i).pid())?;
                }
            }
            evict(&cold)?;
            let t = Instant::now();
            let rep = client
                .put(&src, &name, &no_progress)
                .await
                .with_context(|| format!("put of {l}"))?;
            put.push(t.elapsed().as_secs_f64());
            if is_largest && memory.is_none() {
                let mut per_agent = Vec::new();
                for i in 0..c.len() {
                    let pid = c.agent(i).pid();
                    per_agent.push((
                        c.addrs[i].to_string(),
                        proc_status_bytes(pid, "VmHWM")? as f64 / MIB as f64,
                    ));
                }
                memory = Some(MemoryReport {
                    size_bytes: p.size,
                    per_agent_peak_mib: per_agent,
                });
            }

            // SDFS get, cold like the baseline read: first as `dml get` does
            // (the copy is not fsynced), then fsyncing the copy.
            let got = files.join(format!("got-{}", p.size));
            evict(&cold)?;
            let t = Instant::now();
            let got_rep = client
                .get(&name, &got, &no_progress)
                .await
                .with_context(|| format!("get of {l}"))?;
            get.push(t.elapsed().as_secs_f64());
            let _ = std::fs::remove_file(&got);
            evict(&cold)?;
            let t = Instant::now();
            synced
                .get(&name, &got, &no_progress)
                .await
                .with_context(|| format!("fsynced get of {l}"))?;
            get_synced.push(t.elapsed().as_secs_f64());
            let _ = std::fs::remove_file(&got);
            eprintln!(
                "[{l}] rep {}: put {:.4}s (v{} on {} holders; plan {:.4}s, store {:.4}s, commit {:.4}s), 4-copy baseline {:.4}s; get {:.4}s (lookup {:.4}s, start {:.4}s, receive {:.4}s, finish {:.4}s; fsynced {:.4}s), read {:.4}s",
                r + 1,
                put[r],
                rep.version,
                rep.holders.len(),
                rep.phases.plan.as_secs_f64(),
                rep.phases.store.as_secs_f64(),
                rep.phases.commit.as_secs_f64(),
                base_put[r],
                get[r],
                got_rep.lookup.as_secs_f64(),
                got_rep.phases.start.as_secs_f64(),
                got_rep.phases.receive.as_secs_f64(),
                got_rep.phases.finish.as_secs_f64(),
                get_synced[r],
                read[r]
            );
            if !is_largest || r + 1 < p.reps {
                client.delete(&name).await?;
            }
            last_name = name;
        }
        let _ = std::fs::remove_file(&src);
        sizes.push(SizeReport::new(
            p.size,
            p.reps,
            median(put),
            median(base_put),
            median(get),
            median(read),
            median(get_synced),
        ));
        if is_largest {
            repair = Some(measure_repair(&mut c, via, &last_name, p.size).await);
        }
    }

    let doc = Document {
        bench: "sdfs",
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        agents: a.agents,
        replicas: c.replicas(),
        write_quorum: sdfs_cfg.write_quorum,
        repair_bytes_per_sec: sdfs_cfg.repair_bytes_per_sec,
        sizes,
        memory,
        repair,
    };
    print!("{}", crate::sdfs_report::table(&doc));
    // A smoke run does not overwrite the figures of a full one.
    let json_path = out_dir.join(if a.quick {
        "sdfs-quick.json"
    } else {
        "sdfs.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("\nJSON: {}", json_path.display());
    drop(c);
    if a.keep {
        println!("agent data kept under {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    if a.repair.repair_files > 0 {
        repair_row(&a, out_dir).await?;
    }
    if a.balance.balance_mib > 0 {
        balance_row(&a, out_dir).await?;
    }
    if a.meta.meta_versions > 0 {
        meta_row(&a, out_dir).await?;
    }
    Ok(())
}

/// The metadata-at-scale rows (through a real leader, and in-process): their table lines
/// and `sdfs-meta.json`.
async fn meta_row(a: &SdfsArgs, out_dir: &Path) -> Result<()> {
    let row = crate::sdfs_meta::run(&a.meta, a.agents, &out_dir.join("sdfs-meta-run")).await;
    print!("{}", crate::sdfs_meta::table(&row));
    let json_path = out_dir.join("sdfs-meta.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&row)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("JSON: {}", json_path.display());
    Ok(())
}

/// The balance row on a cluster of its own (64 MiB at most under `--quick`): its table
/// lines and `sdfs-balance.json` (`sdfs-balance-quick.json`).
async fn balance_row(a: &SdfsArgs, out_dir: &Path) -> Result<()> {
    let mut args = a.balance.clone();
    if a.quick {
        args.balance_mib = args.balance_mib.min(64);
    }
    let run = out_dir.join("sdfs-balance-run");
    let row = crate::sdfs_balance::run(&args, a.agents, &run).await;
    print!("{}", crate::sdfs_balance::table(&row));
    let json_path = out_dir.join(if a.quick {
        "sdfs-balance-quick.json"
    } else {
        "sdfs-balance.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&row)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("JSON: {}", json_path.display());
    Ok(())
}

/// The repair row on a cluster of its own: its table lines and `sdfs-repair.json`.
async fn repair_row(a: &SdfsArgs, out_dir: &Path) -> Result<()> {
    let row = crate::sdfs_repair::run(&a.repair, a.agents, &out_dir.join("sdfs-repair-run")).await;
    print!("{}", crate::sdfs_repair::table(&row));
    let json_path = out_dir.join("sdfs-repair.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&row)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("JSON: {}", json_path.display());
    Ok(())
}

/// Kills 3 holders of `name` at once (the leader spared when it is a holder, so the time
/// is repair's, not an election's) and times the return to 4 live replicas, asking the
/// leader when the client's agent is among them.
async fn measure_repair(c: &mut SdfsCluster, via: usize, name: &str, size: u64) -> RepairReport {
    let mut report = RepairReport {
        size_bytes: size,
        killed: Vec::new(),
        seconds: None,
        error: None,
    };
    let r: Result<f64> = async {
        let all: Vec<usize> = (0..c.len()).collect();
        let leader = c.leader_index(&all, READY).await?;
        let f = c
            .file(via, name)
            .await?
            .with_context(|| format!("{name} is not committed"))?;
        let holders: Vec<usize> = f.versions[0]
            .replicas
            .iter()
            .map(|r| c.index_of(*r))
            .collect::<Result<_>>()?;
        let victims: Vec<usize> = holders
            .iter()
            .copied()
            .filter(|&i| i != leader)
            .take(3)
            .collect();
        if victims.len() < 3 {
            bail!("fewer than 3 holders besides the leader: {holders:?}");
        }
        // The agent asked about the replicas must outlive the kills.
        let via = if victims.contains(&via) { leader } else { via };
        report.killed = victims.iter().map(|&i| c.addrs[i].to_string()).collect();
        eprintln!("[repair] killing holders {:?} of {name}", report.killed);
        for &v in &victims {
            c.agent(v).kill()?;
        }
        let t = Instant::now();
        for &v in &victims {
            c.kill(v).await?;
        }
        let live: Vec<usize> = all.into_iter().filter(|i| !victims.contains(i)).collect();
        let deadline = t + REPAIR_TIMEOUT;
        loop {
            if c.check_replicas(via, name, 4, &live).await.is_ok() {
                return Ok(t.elapsed().as_secs_f64());
            }
            if Instant::now() >= deadline {
                bail!("not back at 4 replicas within {REPAIR_TIMEOUT:?}");
            }
            tokio::time::sleep(REPAIR_POLL).await;
        }
    }
    .await;
    match r {
        Ok(s) => report.seconds = Some(s),
        Err(e) => {
            eprintln!("[repair] {e:#}");
            report.error = Some(format!("{e:#}"));
        }
    }
    report
}

/// The small-files row on a cluster of its own: its table lines and `sdfs-small.json`
/// (`sdfs-small-quick.json` for a smoke run).
async fn small_row(a: &SdfsArgs, out_dir: &Path) -> Result<()> {
    let row = small::run(&a.small, a.agents, &out_dir.join("sdfs-small-run")).await?;
    print!("{}", small::table(&row));
    let json_path = out_dir.join(if a.quick {
        "sdfs-small-quick.json"
    } else {
        "sdfs-small.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&row)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("JSON: {}", json_path.display());
    Ok(())
}
