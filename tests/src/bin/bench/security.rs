//! `bench security`: the cost of encrypting TCP (issue 19), measured in one run. Two
//! clusters in turn, one with `security.encrypt_tcp = true` (the default) and one with
//! `false` (authenticated only, as before): SDFS put and get of 64 MiB (and 1 GiB with
//! `--large`) from an in-process client that always uses TCP (`local_socket = false`, as a
//! client on another host; the replica chain is TCP too), and handshakes per second
//! (sequential `Conn::connect`, TCP connect included). The ratio is encrypted over
//! plaintext throughput; the target is at least 0.8.
//!
//! Table on stdout, progress on stderr, JSON in `target/bench/security.json`.

use anyhow::{Context, Result, bail};
use dml_shared::auth;
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::conn::Conn;
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::sdfs::content::write_pattern_file;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct SecurityArgs {
    /// Agents per cluster (4 replicas).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Puts and gets per size and mode; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also move 1 GiB files.
    #[arg(long)]
    large: bool,
    /// Handshakes timed per mode.
    #[arg(long, default_value_t = 300)]
    handshakes: usize,
    /// Do not run `cargo build` for dml-agent first.
    #[arg(long)]
    no_build: bool,
}

/// One mode's figures.
#[derive(Clone, Debug, Serialize)]
struct Mode {
    encrypt_tcp: bool,
    /// (size in bytes, put MB/s, get MB/s), medians.
    sizes: Vec<(u64, f64, f64)>,
    handshakes_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    agents: usize,
    rounds: usize,
    encrypted: Mode,
    plaintext: Mode,
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

fn mb_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

async fn measure(
    a: &SecurityArgs,
    run_dir: &Path,
    encrypt_tcp: bool,
    sizes: &[u64],
) -> Result<Mode> {
    let name = if encrypt_tcp {
        "encrypted"
    } else {
        "plaintext"
    };
    auth::set_encrypt_tcp(encrypt_tcp);
    let opts = SdfsOptions {
        agents: a.agents,
        membership: MembershipConfig::preset(Preset::Local),
        control: ControlConfig::default(),
        sdfs: SdfsConfig::default(),
        base_dir: Some(run_dir.to_path_buf()),
        extra_config: format!("\n[security]\nencrypt_tcp = {encrypt_tcp}\n"),
        hosts: Vec::new(),
        movable_clocks: false,
        disk_bytes: None,
    };
    eprintln!("[{name}] starting {} agents", a.agents);
    let c = SdfsCluster::start_with(name, opts).await?;
    let via = c.len() - 1;
    let client = Sdfs::with_options(
        c.addrs[via],
        Options {
            store_timeout: Duration::from_secs(600),
            local_socket: false,
            ..Options::default()
        },
    );
    let files = run_dir.join(format!("files-{name}"));
    std::fs::create_dir_all(&files)?;
    let mut out = Vec::new();
    for &size in sizes {
        let l = label(size);
        let src = files.join(format!("src-{size}"));
        write_pattern_file(&src, size, size)?;
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for r in 0..a.rounds {
            let sdfs_name = format!("bench/{size}-{r}");
            let t = Instant::now();
            client.put(&src, &sdfs_name, &no_progress).await?;
            put.push(mb_per_s(size, t.elapsed()));
            let dst = files.join(format!("got-{size}-{r}"));
            let t = Instant::now();
            client.get(&sdfs_name, &dst, &no_progress).await?;
            get.push(mb_per_s(size, t.elapsed()));
            std::fs::remove_file(&dst)?;
            eprintln!(
                "[{name}] {l} round {r}: put {:.0} MB/s, get {:.0} MB/s",
                put[r], get[r]
            );
        }
        std::fs::remove_file(&src)?;
        out.push((size, median(put), median(get)));
    }
    let addr = c.addrs[via];
    let t = Instant::now();
    for _ in 0..a.handshakes {
        drop(Conn::connect(addr).await.context("a timed handshake")?);
    }
    let handshakes_per_s = a.handshakes as f64 / t.elapsed().as_secs_f64();
    eprintln!("[{name}] {handshakes_per_s:.0} handshakes/s");
    Ok(Mode {
        encrypt_tcp,
        sizes: out,
        handshakes_per_s,
    })
}

pub async fn run(a: SecurityArgs, bin_dir: &Path, out_dir: &Path) -> Result<()> {
    if a.agents < 4 || a.rounds == 0 {
        bail!("--agents must be at least 4 (4 replicas) and --rounds at least 1");
    }
    if !a.no_build {
        crate::locate(bin_dir, "dml-agent", "dml-agent", true)?;
    }
    dml_tests::key::path()?;
    let run_dir = out_dir.join("security-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    let mut sizes = vec![64 * MIB];
    if a.large {
        sizes.push(GIB);
    }
    let encrypted = measure(&a, &run_dir, true, &sizes).await?;
    let plaintext = measure(&a, &run_dir, false, &sizes).await?;
    auth::set_encrypt_tcp(true);
    let report = Report {
        agents: a.agents,
        rounds: a.rounds,
        encrypted,
        plaintext,
    };
    println!("{}", table(&report));
    let path = out_dir.join("security.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write \"{}\"", path.display()))?;
    eprintln!("wrote {}", path.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut t = format!(
        "bench security: {} agents, 4 replicas, client over TCP, median of {} rounds\n\
         {:<16} {:>14} {:>14} {:>8}\n",
        r.agents, r.rounds, "", "encrypted", "plaintext", "ratio"
    );
    for ((size, ep, eg), (_, pp, pg)) in r.encrypted.sizes.iter().zip(&r.plaintext.sizes) {
        for (op, e, p) in [("put", ep, pp), ("get", eg, pg)] {
            let _ = writeln!(
                t,
                "{:<16} {:>9.0} MB/s {:>9.0} MB/s {:>8.2}",
                format!("{} {op}", label(*size)),
                e,
                p,
                e / p
            );
        }
    }
    let (e, p) = (r.encrypted.handshakes_per_s, r.plaintext.handshakes_per_s);
    let _ = writeln!(
        t,
        "{:<16} {:>11.0} /s {:>11.0} /s {:>8.2}",
        "handshakes",
        e,
        p,
        e / p
    );
    t
}
