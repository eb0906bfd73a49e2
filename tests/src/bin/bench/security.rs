//! `bench security`: the cost of security (issue 19), measured in one run. Two clusters,
//! one with `security.encrypt_tcp = true` (the default) and one with `false`
//! (authenticated only, as before), each measuring:
//!
//! - SDFS put and get of 64 MiB and 1 GiB (`--quick`: 64 MiB only) from an in-process
//!   client that always uses TCP (`local_socket = false`, as a client on another host; the
//!   replica chain is TCP too); each file is deleted after its round. Both clusters run
//!   at once and their rounds alternate (which mode goes first alternates too), so a
//!   change in the load of the shared cores falls on both modes; a warm-up round per mode
//!   and size is not counted, and a round whose put a leader change refused runs again;
//! - handshakes per second (sequential `Conn::connect`, TCP connect included);
//! - `members` latency (a new TCP connection and handshake per call, as `dml members`
//!   from another host) against the leader, p50 and p99, first at rest, then while 2,000
//!   connections that never authenticate are held and reopened against it from another
//!   loopback address ([`dml_tests::flood`]).
//!
//! Then membership traffic per member, on a cluster of `--members` agents with the `lan`
//! preset, at rest. `encrypt_tcp` does not touch UDP: datagrams are always sealed, so the
//! figure is measured once; the sealed bytes (what the agents count, seal included) are
//! set against their payload (sealed bytes less [`UDP_OVERHEAD`] per datagram), the
//! plaintext baseline. The target is at most 400 B/s.
//!
//! The ratio is encrypted over plaintext; the target for throughput is at least 0.8.
//! `--throughput-only` runs the put and get rows alone.
//! Table on stdout, progress on stderr, JSON in `target/bench/security.json`.

use anyhow::{Context, Result, bail};
use dml_shared::api::{Request, Response};
use dml_shared::auth::{self, UDP_OVERHEAD};
use dml_shared::client::Client;
use dml_shared::config::{ControlConfig, MembershipConfig, Preset, SdfsConfig};
use dml_shared::conn::Conn;
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::Cluster;
use dml_tests::flood::{FLOODER, Flood};
use dml_tests::sdfs::content::write_pattern_file;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct SecurityArgs {
    /// Agents per cluster (4 replicas).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Puts and gets per size and mode; the median is reported. Even, so each mode
    /// goes first equally often.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Skip the 1 GiB files.
    #[arg(long)]
    quick: bool,
    /// Handshakes timed per mode.
    #[arg(long, default_value_t = 300)]
    handshakes: usize,
    /// `members` calls timed per mode, at rest and again under the flood.
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Unauthenticated connections held by the flood.
    #[arg(long, default_value_t = 2000)]
    flood: usize,
    /// Agents of the membership-traffic cluster (`lan` preset).
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Seconds of membership traffic measured.
    #[arg(long, default_value_t = 30)]
    traffic_secs: u64,
    /// Do not run `cargo build` for dml-agent first.
    #[arg(long)]
    no_build: bool,
    /// Only the put and get rows: no handshakes, `members` latency, flood or
    /// membership traffic.
    #[arg(long)]
    throughput_only: bool,
}

/// Latency of `members` calls, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
struct Latency {
    calls: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Calls that failed or timed out (not in the percentiles).
    failed: usize,
}

/// One mode's figures.
#[derive(Clone, Debug, Serialize)]
struct Mode {
    encrypt_tcp: bool,
    /// (size in bytes, put MB/s, get MB/s), medians.
    sizes: Vec<(u64, f64, f64)>,
    /// (size in bytes, put, get): CPU seconds per GB (1e9 bytes) that the
    /// cluster's agents and this process (the client) used, over all rounds.
    cpu_s_per_gb: Vec<(u64, f64, f64)>,
    handshakes_per_s: f64,
    members_at_rest: Latency,
    members_under_flood: Latency,
    /// Flood connections opened, and closed by the agent, while the calls ran.
    flood_opened: u64,
    flood_closed: u64,
}

/// Membership traffic per member at rest, bytes per second.
#[derive(Clone, Debug, Serialize)]
struct Traffic {
    members: usize,
    preset: &'static str,
    window_s: f64,
    /// Sent, as counted by the agents (sealed datagrams): mean and max over members.
    sealed_sent_mean_bps: f64,
    sealed_sent_max_bps: f64,
    /// Sent payload: sealed bytes less the seal's overhead per datagram.
    payload_sent_mean_bps: f64,
    payload_sent_max_bps: f64,
    packets_sent_mean_ps: f64,
    overhead_per_datagram: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    agents: usize,
    rounds: usize,
    /// Connections held by the flood.
    flood: usize,
    encrypted: Mode,
    plaintext: Mode,
    /// `None` with `--throughput-only`.
    membership: Option<Traffic>,
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

/// A started cluster of one mode and its TCP client.
struct Side {
    encrypt_tcp: bool,
    cluster: SdfsCluster,
    client: Sdfs,
    files: std::path::PathBuf,
}

impl Side {
    fn name(&self) -> &'static str {
        mode_name(self.encrypt_tcp)
    }

    /// Makes this process's connections match the cluster's mode (the client's
    /// pooled connections are per address, so per cluster).
    fn enter(&self) {
        auth::set_encrypt_tcp(self.encrypt_tcp);
    }
}

fn mode_name(encrypt_tcp: bool) -> &'static str {
    if encrypt_tcp {
        "encrypted"
    } else {
        "plaintext"
    }
}

async fn start(a: &SecurityArgs, run_dir: &Path, encrypt_tcp: bool) -> Result<Side> {
    let name = mode_name(encrypt_tcp);
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
    let cluster = SdfsCluster::start_with(name, opts).await?;
    let client = Sdfs::with_options(
        cluster.addrs[cluster.len() - 1],
        Options {
            store_timeout: Duration::from_secs(600),
            local_socket: false,
            ..Options::default()
        },
    );
    let files = run_dir.join(format!("files-{name}"));
    std::fs::create_dir_all(&files)?;
    Ok(Side {
        encrypt_tcp,
        cluster,
        client,
        files,
    })
}

/// CPU seconds (user and system) used so far by the processes `pids` and
/// this one; a process that is gone counts nothing.
fn cpu_secs(pids: &[u32]) -> f64 {
    let ticks = procfs::ticks_per_second() as f64;
    let me = std::process::id();
    pids.iter()
        .chain([&me])
        .filter_map(|&p| procfs::process::Process::new(p as i32).ok()?.stat().ok())
        .map(|s| (s.utime + s.stime) as f64 / ticks)
        .sum()
}

/// Speed and CPU seconds of one put and one get.
struct Timed {
    put_mb_s: f64,
    get_mb_s: f64,
    put_cpu_s: f64,
    get_cpu_s: f64,
}

/// One put and one get of `src` through `side`.
async fn round(side: &Side, src: &Path, size: u64, r: &str) -> Result<Timed> {
    side.enter();
    let (name, client) = (side.name(), &side.client);
    let pids: Vec<u32> = side
        .cluster
        .cluster
        .agents
        .iter()
        .map(|a| a.pid())
        .collect();
    let sdfs_name = format!("bench/{size}-{r}");
    let (t, cpu) = (Instant::now(), cpu_secs(&pids));
    client.put(src, &sdfs_name, &no_progress).await?;
    let put = mb_per_s(size, t.elapsed());
    let put_cpu_s = cpu_secs(&pids) - cpu;
    let dst = side.files.join(format!("got-{size}-{r}"));
    let (t, cpu) = (Instant::now(), cpu_secs(&pids));
    client.get(&sdfs_name, &dst, &no_progress).await?;
    let get = mb_per_s(size, t.elapsed());
    let get_cpu_s = cpu_secs(&pids) - cpu;
    std::fs::remove_file(&dst)?;
    // Keeps the disk for the next round (a 1 GiB file is 4 GiB stored).
    if let Err(e) = client.delete(&sdfs_name).await {
        eprintln!("[{name}] cannot delete {sdfs_name}: {e}");
    }
    eprintln!(
        "[{name}] {} round {r}: put {put:.0} MB/s ({put_cpu_s:.2} CPU s), get {get:.0} MB/s ({get_cpu_s:.2} CPU s)",
        label(size)
    );
    Ok(Timed {
        put_mb_s: put,
        get_mb_s: get,
        put_cpu_s,
        get_cpu_s,
    })
}

/// A round, run again (at most twice) when its put was refused because the leader
/// changed under it: the put did not commit, and the refusal says to retry. The
/// retry is printed; the refused attempt's time is not counted.
async fn retried(side: &Side, src: &Path, size: u64, r: &str) -> Result<Timed> {
    let mut tries = 0;
    loop {
        match round(side, src, size, r).await {
            Err(e) if tries < 2 && format!("{e:#}").contains("retry the put") => {
                tries += 1;
                eprintln!("[{}] round {r} retried: {e:#}", side.name());
            }
            other => return other,
        }
    }
}

/// Put and get throughput of both modes, side by side: each round runs one
/// put and get per mode, the mode going first alternating, so that a change in
/// the machine's load (two cores shared with other work) falls on both.
/// Per size: (size in bytes, put, get).
type Rows = Vec<(u64, f64, f64)>;

/// Per mode: (size, put MB/s, get MB/s) medians, and (size, put, get) CPU
/// seconds per GB over all rounds (the clock ticks of /proc are 10 ms: a sum
/// is steadier than a median of short rounds).
async fn throughput(
    a: &SecurityArgs,
    run_dir: &Path,
    sides: [&Side; 2],
    sizes: &[u64],
) -> Result<[(Rows, Rows); 2]> {
    let mut out = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for &size in sizes {
        let src = run_dir.join(format!("src-{size}"));
        write_pattern_file(&src, size, size)?;
        // A warm-up round per mode, not counted: the first put of a size costs either
        // mode 1.3-1.5x the CPU of later ones (fresh files, page cache), and would fall
        // on whichever mode the order puts first.
        for side in sides {
            retried(side, &src, size, "warm-up").await?;
        }
        let mut got: [Vec<Timed>; 2] = [Vec::new(), Vec::new()];
        for r in 0..a.rounds {
            for i in [r % 2, 1 - r % 2] {
                got[i].push(retried(sides[i], &src, size, &r.to_string()).await?);
            }
        }
        std::fs::remove_file(&src)?;
        let gb = (size * a.rounds as u64) as f64 / 1e9;
        for (o, g) in out.iter_mut().zip(got) {
            let put = median(g.iter().map(|t| t.put_mb_s).collect());
            let get = median(g.iter().map(|t| t.get_mb_s).collect());
            o.0.push((size, put, get));
            let put_cpu: f64 = g.iter().map(|t| t.put_cpu_s).sum();
            let get_cpu: f64 = g.iter().map(|t| t.get_cpu_s).sum();
            o.1.push((size, put_cpu / gb, get_cpu / gb));
        }
    }
    Ok(out)
}

/// Handshakes and `members` latency, at rest and under the flood, of one mode.
async fn measure(
    a: &SecurityArgs,
    side: &Side,
    (sizes, cpu_s_per_gb): (Rows, Rows),
) -> Result<Mode> {
    side.enter();
    let (name, c) = (side.name(), &side.cluster);
    let mut mode = Mode {
        encrypt_tcp: side.encrypt_tcp,
        sizes,
        cpu_s_per_gb,
        handshakes_per_s: f64::NAN,
        members_at_rest: Latency::default(),
        members_under_flood: Latency::default(),
        flood_opened: 0,
        flood_closed: 0,
    };
    if a.throughput_only {
        return Ok(mode);
    }
    let addr = c.addrs[c.len() - 1];
    let t = Instant::now();
    for _ in 0..a.handshakes {
        drop(Conn::connect(addr).await.context("a timed handshake")?);
    }
    mode.handshakes_per_s = a.handshakes as f64 / t.elapsed().as_secs_f64();
    eprintln!("[{name}] {:.0} handshakes/s", mode.handshakes_per_s);

    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.addrs[c.leader_index(&all, READY).await?];
    mode.members_at_rest = members_latency(leader, a.calls).await;
    eprintln!("[{name}] members at rest: {:?}", mode.members_at_rest);
    let flood = Flood::start(leader, a.flood, FLOODER);
    let t = Instant::now();
    while flood.opened() < a.flood as u64 && t.elapsed() < READY {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[{name}] flood: {} connections open after {:.1} s",
        flood.opened(),
        t.elapsed().as_secs_f64()
    );
    mode.members_under_flood = members_latency(leader, a.calls).await;
    (mode.flood_opened, mode.flood_closed) = (flood.opened(), flood.closed());
    drop(flood);
    eprintln!(
        "[{name}] members under the flood: {:?}; {} flood connections opened, {} closed by the agent",
        mode.members_under_flood, mode.flood_opened, mode.flood_closed
    );
    Ok(mode)
}

/// Time allowed for the cluster to elect a leader, converge, and for one call.
const READY: Duration = Duration::from_secs(60);
/// Bound on one `members` call.
const CALL: Duration = Duration::from_secs(10);
/// Pause between two timed calls.
const CALL_GAP: Duration = Duration::from_millis(20);

/// `calls` `members` calls to `agent`, each on a new TCP connection (as `dml members`
/// from another host).
async fn members_latency(agent: SocketAddr, calls: usize) -> Latency {
    let mut ms = Vec::with_capacity(calls);
    let mut failed = 0;
    for _ in 0..calls {
        let t = Instant::now();
        let r = Client::new(agent)
            .with_timeout(CALL)
            .call(&Request::Members)
            .await;
        match r {
            Ok(Response::Members(_)) => ms.push(t.elapsed().as_secs_f64() * 1e3),
            _ => failed += 1,
        }
        tokio::time::sleep(CALL_GAP).await;
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Latency {
        calls: ms.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        failed,
    }
}

/// Membership traffic at rest on `members` agents with the `lan` preset.
async fn traffic(a: &SecurityArgs, run_dir: &Path) -> Result<Traffic> {
    eprintln!("[membership] starting {} agents (lan preset)", a.members);
    let mut c = Cluster::new_in(run_dir, "membership", MembershipConfig::preset(Preset::Lan))?;
    for _ in 0..a.members {
        c.add().await?;
    }
    c.wait_converged(READY).await?;
    // The first hellos and the joins' gossip settle before the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let addrs: Vec<SocketAddr> = c.agents.iter().map(|x| x.addr()).collect();
    let before = stats(&addrs).await?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.traffic_secs)).await;
    let after = stats(&addrs).await?;
    let secs = t.elapsed().as_secs_f64();
    let per = |f: &dyn Fn(&dml_shared::api::Stats) -> u64| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, x)| f(x).saturating_sub(f(b)) as f64 / secs)
            .collect()
    };
    let sealed = per(&|s| s.bytes_sent);
    let packets = per(&|s| s.packets_sent);
    let payload: Vec<f64> = sealed
        .iter()
        .zip(&packets)
        .map(|(b, p)| b - p * UDP_OVERHEAD as f64)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let t = Traffic {
        members: a.members,
        preset: "lan",
        window_s: secs,
        sealed_sent_mean_bps: mean(&sealed),
        sealed_sent_max_bps: max(&sealed),
        payload_sent_mean_bps: mean(&payload),
        payload_sent_max_bps: max(&payload),
        packets_sent_mean_ps: mean(&packets),
        overhead_per_datagram: UDP_OVERHEAD,
    };
    eprintln!("[membership] {t:?}");
    Ok(t)
}

async fn stats(addrs: &[SocketAddr]) -> Result<Vec<dml_shared::api::Stats>> {
    let mut out = Vec::new();
    for a in addrs {
        match Client::new(*a)
            .with_timeout(CALL)
            .call(&Request::Stats)
            .await?
        {
            Response::Stats(s) => out.push(s),
            other => bail!("stats of {a}: unexpected answer {other:?}"),
        }
    }
    Ok(out)
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
    if !a.quick {
        sizes.push(GIB);
    }
    // A round's 4 replicas and the previous round's (its delete frees them
    // shortly after; a round of the other mode runs in between), the source
    // and a got copy.
    let largest = *sizes.last().expect("a size");
    let need = largest * (2 * 4 + 2) + 2 * GIB;
    let avail = crate::sdfs_local::available_bytes(&run_dir)?;
    if avail < need {
        bail!(
            "not enough free space at \"{}\": {:.1} GiB available, about {:.1} GiB needed (try --quick)",
            run_dir.display(),
            avail as f64 / GIB as f64,
            need as f64 / GIB as f64
        );
    }
    let enc = start(&a, &run_dir, true).await?;
    let plain = start(&a, &run_dir, false).await?;
    let [enc_sizes, plain_sizes] = throughput(&a, &run_dir, [&enc, &plain], &sizes).await?;
    let encrypted = measure(&a, &enc, enc_sizes).await?;
    drop(enc);
    let plaintext = measure(&a, &plain, plain_sizes).await?;
    drop(plain);
    auth::set_encrypt_tcp(true);
    let membership = if a.throughput_only {
        None
    } else {
        Some(traffic(&a, &run_dir).await?)
    };
    let report = Report {
        agents: a.agents,
        rounds: a.rounds,
        flood: a.flood,
        encrypted,
        plaintext,
        membership,
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
    let _ = writeln!(
        t,
        "CPU per GB, agents and client (the ratio is plaintext over encrypted: the \
         throughput ratio when the CPU is the limit)"
    );
    for ((size, ep, eg), (_, pp, pg)) in r
        .encrypted
        .cpu_s_per_gb
        .iter()
        .zip(&r.plaintext.cpu_s_per_gb)
    {
        for (op, e, p) in [("put", ep, pp), ("get", eg, pg)] {
            let _ = writeln!(
                t,
                "{:<16} {:>11.2} s {:>11.2} s {:>8.2}",
                format!("{} {op}", label(*size)),
                e,
                p,
                p / e
            );
        }
    }
    let Some(m) = &r.membership else {
        return t; // --throughput-only
    };
    let (e, p) = (r.encrypted.handshakes_per_s, r.plaintext.handshakes_per_s);
    let _ = writeln!(
        t,
        "{:<16} {:>11.0} /s {:>11.0} /s {:>8.2}",
        "handshakes",
        e,
        p,
        e / p
    );
    let (e, p) = (&r.encrypted, &r.plaintext);
    for (row, e, p) in [
        ("members p50", &e.members_at_rest, &p.members_at_rest),
        ("members p99", &e.members_at_rest, &p.members_at_rest),
        ("flood p50", &e.members_under_flood, &p.members_under_flood),
        ("flood p99", &e.members_under_flood, &p.members_under_flood),
    ] {
        let pick = |l: &Latency| {
            if row.ends_with("p50") {
                l.p50_ms
            } else {
                l.p99_ms
            }
        };
        let _ = writeln!(
            t,
            "{:<16} {:>11.2} ms {:>11.2} ms {:>8.2}",
            row,
            pick(e),
            pick(p),
            pick(e) / pick(p)
        );
    }
    let _ = writeln!(
        t,
        "flood: {} unauthenticated connections held and reopened against the leader from \
         another address ({} / {} opened, {} / {} closed by the agent; {} / {} calls failed)",
        r.flood,
        e.flood_opened,
        p.flood_opened,
        e.flood_closed,
        p.flood_closed,
        e.members_under_flood.failed,
        p.members_under_flood.failed
    );
    let _ = writeln!(
        t,
        "\nmembership, {} agents ({} preset), {:.0} s at rest; UDP is always sealed\n\
         {:<16} {:>14} {:>14} {:>8}\n\
         {:<16} {:>9.0} B/s {:>9.0} B/s {:>8.2}\n\
         {:<16} {:>9.0} B/s {:>9.0} B/s {:>8.2}\n\
         {:.1} datagrams/s per member, {} bytes of seal each; target: at most 400 B/s",
        m.members,
        m.preset,
        m.window_s,
        "sent per member",
        "sealed",
        "payload",
        "ratio",
        "mean",
        m.sealed_sent_mean_bps,
        m.payload_sent_mean_bps,
        m.sealed_sent_mean_bps / m.payload_sent_mean_bps,
        "max",
        m.sealed_sent_max_bps,
        m.payload_sent_max_bps,
        m.sealed_sent_max_bps / m.payload_sent_max_bps,
        m.packets_sent_mean_ps,
        m.overhead_per_datagram
    );
    t
}
