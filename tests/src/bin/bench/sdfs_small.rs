//! The small-files row of `bench sdfs`: N files of 4–64 KiB (seeded sizes and bytes)
//! loaded as `dml sdfs load` does (batched puts: group commit), against the baseline of
//! writing the same files to 4 local directories with an fsync per file, measured side by
//! side in the same run, both starting cold. On a cluster of its own.

use crate::sdfs_local::{available_bytes, evict};
use anyhow::{Context, Result, bail};
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::sdfs::content::pattern;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: f64 = (1 << 20) as f64;
/// Smallest and largest file of the row.
const SMALLEST: u64 = 4 * KIB;
const LARGEST: u64 = 64 * KIB;
/// Local copies the baseline writes, as SDFS keeps 4 replicas.
const COPIES: usize = 4;

#[derive(clap::Args)]
pub struct SmallArgs {
    /// Files of the small-files row (4-64 KiB each); 0 skips the row.
    #[arg(long, default_value_t = 10_000)]
    pub small_files: usize,
    /// Run only the small-files row.
    #[arg(long)]
    pub small_only: bool,
}

/// The row's figures.
#[derive(Debug, Serialize)]
pub struct SmallReport {
    pub files: usize,
    pub bytes: u64,
    pub agents: usize,
    /// `dml sdfs load` of the files: seconds, files/s, MiB/s.
    pub load_s: f64,
    pub load_files_per_s: f64,
    pub load_mib_per_s: f64,
    /// The 4-directory fsync-per-file baseline.
    pub baseline_s: f64,
    pub baseline_files_per_s: f64,
    pub baseline_mib_per_s: f64,
    /// `load_s / baseline_s` (target at most 1.5).
    pub ratio: f64,
    /// Batches the load used, as the client sorted them.
    pub batch_files: usize,
    pub batch_bytes: u64,
}

/// The size of file `i`: 4-64 KiB, spread by a hash of `i`.
fn size_of(i: u64) -> u64 {
    let mut x = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    SMALLEST + x % (LARGEST - SMALLEST + 1)
}

/// Writes the dataset: `files` files under `dir` (100 per subdirectory). Total bytes.
fn make_dataset(dir: &Path, files: usize) -> Result<u64> {
    let mut total = 0;
    for i in 0..files as u64 {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let size = size_of(i);
        std::fs::write(
            sub.join(format!("img{i:05}.bin")),
            pattern(i, size as usize),
        )?;
        total += size;
    }
    Ok(total)
}

/// The baseline: every file read and written to each of 4 directories, each copy
/// fsynced before the next file, one file after another.
fn baseline(src: &Path, dsts: &[PathBuf]) -> Result<Duration> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for d in dsts {
        std::fs::create_dir_all(d)?;
    }
    let t = Instant::now();
    for (k, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read \"{}\"", f.display()))?;
        for d in dsts {
            let p = d.join(k.to_string());
            let mut out = std::fs::File::create(&p)
                .with_context(|| format!("cannot create \"{}\"", p.display()))?;
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
    }
    Ok(t.elapsed())
}

pub async fn run(a: &SmallArgs, agents: usize, run_dir: &Path) -> Result<SmallReport> {
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    // The source, 4 baseline copies and 4 replicas, and room for the Raft logs.
    let need = a.small_files as u64 * LARGEST * 9 + (1 << 30);
    let avail = available_bytes(run_dir)?;
    if avail < need {
        bail!(
            "not enough free space at \"{}\" for {} small files: {} MiB available, about {} MiB needed",
            run_dir.display(),
            a.small_files,
            avail >> 20,
            need >> 20
        );
    }
    let data = run_dir.join("dataset");
    eprintln!("[small files] writing {} files", a.small_files);
    let bytes = make_dataset(&data, a.small_files)?;

    let opts = SdfsOptions {
        agents,
        membership: MembershipConfig::preset(Preset::Local),
        control: ControlConfig::default(),
        sdfs: SdfsConfig::default(),
        base_dir: Some(run_dir.to_path_buf()),
        extra_config: String::new(),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    };
    let t = Instant::now();
    eprintln!("[small files] starting {agents} agents");
    let c = SdfsCluster::start_with("small-cluster", opts).await?;
    eprintln!("[small files] cluster ready in {:.1?}", t.elapsed());
    let mut cold = vec![data.clone()];
    cold.extend((0..c.len()).map(|i| c.data_dir(i).join("sdfs/objects")));

    // Baseline first, then the load, each from cold.
    let dsts: Vec<PathBuf> = (0..COPIES)
        .map(|k| run_dir.join(format!("base-{k}")))
        .collect();
    evict(&cold)?;
    let base = baseline(&data, &dsts)?.as_secs_f64();
    eprintln!(
        "[small files] baseline: {} files to {COPIES} directories with fsync in {base:.2}s",
        a.small_files
    );
    for d in &dsts {
        let _ = std::fs::remove_dir_all(d);
    }

    let client_opts = Options {
        store_timeout: Duration::from_secs(600),
        ..Options::default()
    };
    let (batch_files, batch_bytes) = (client_opts.batch_files, client_opts.batch_bytes);
    let client = Sdfs::with_options(c.addrs[c.len() - 1], client_opts);
    evict(&cold)?;
    let t = Instant::now();
    let report = client
        .load(&data, "small", &no_progress)
        .await
        .context("sdfs load of the small files")?;
    let load = t.elapsed().as_secs_f64();
    if report.failed() > 0 {
        let first = report
            .items
            .iter()
            .find_map(|i| i.result.as_ref().err().map(|e| e.to_string()))
            .unwrap_or_default();
        bail!(
            "{} of {} small files failed to load (first: {first})",
            report.failed(),
            report.items.len()
        );
    }
    if report.items.len() != a.small_files {
        bail!(
            "the load put {} files, not {}",
            report.items.len(),
            a.small_files
        );
    }
    eprintln!("[small files] load: {} files in {load:.2}s", a.small_files);
    drop(c);
    let _ = std::fs::remove_dir_all(run_dir);
    let n = a.small_files as f64;
    let mib = bytes as f64 / MIB;
    Ok(SmallReport {
        files: a.small_files,
        bytes,
        agents,
        load_s: load,
        load_files_per_s: n / load,
        load_mib_per_s: mib / load,
        baseline_s: base,
        baseline_files_per_s: n / base,
        baseline_mib_per_s: mib / base,
        ratio: load / base,
        batch_files,
        batch_bytes,
    })
}

/// The row as table lines.
pub fn table(r: &SmallReport) -> String {
    format!(
        "\nsmall files: {} files of 4-64 KiB ({:.1} MiB), {} agents, batches of up to {} files / {} KiB\n\
         {:<28} {:>9} {:>10} {:>9}\n\
         {:<28} {:>8.2}s {:>10.0} {:>9.1}\n\
         {:<28} {:>8.2}s {:>10.0} {:>9.1}\n\
         {:<28} {:>8.2}x (target <= 1.5x)\n",
        r.files,
        r.bytes as f64 / MIB,
        r.agents,
        r.batch_files,
        r.batch_bytes >> 10,
        "",
        "time",
        "files/s",
        "MiB/s",
        "sdfs load (4 replicas)",
        r.load_s,
        r.load_files_per_s,
        r.load_mib_per_s,
        "4 dirs, fsync per file",
        r.baseline_s,
        r.baseline_files_per_s,
        r.baseline_mib_per_s,
        "ratio (load / baseline)",
        r.ratio
    )
}
