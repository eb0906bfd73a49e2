//! `bench console`: the console's frame render time with synthetic telemetry at 10 and
//! 1,000 members (apply a frame to the `App`, draw the whole screen on a `TestBackend`),
//! and the agent CPU spent streaming telemetry to 5 subscribers, measured from
//! `/proc/<pid>/stat` on the agent the subscribers use (the leader) and over all agents,
//! without and with subscribers in the same run.

use anyhow::{Context, Result, bail};
use dml_shared::api::Response;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions};
use dml_tui::console::app::{App, ConnEvent, Event};
use dml_tui::console::{draw, follow, synth};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Targets from issue 5.
const TARGET_10_MS: f64 = 2.0;
const TARGET_1000_MS: f64 = 10.0;
const TARGET_CPU_PERCENT: f64 = 1.0;
/// Subscribers of the CPU measurement.
const SUBSCRIBERS: usize = 5;
/// /proc reports CPU times in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// Agents in the cluster of the CPU measurement.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Seconds of each CPU window (without, with, without subscribers).
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Frames drawn per render measurement.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Smoke run: 5 s windows, 50 frames; JSON to `console-quick.json`.
    #[arg(long)]
    quick: bool,
    /// Skip the agent CPU measurement (no cluster is started).
    #[arg(long)]
    render_only: bool,
    /// Do not run `cargo build` for dml-agent first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Serialize)]
struct RenderRow {
    members: usize,
    width: u16,
    height: u16,
    frames: usize,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    target_ms: f64,
}

#[derive(Serialize)]
struct CpuReport {
    agents: usize,
    subscribers: usize,
    window_secs: f64,
    /// Percent of one core used by the subscribed agent, without subscribers (mean of
    /// the windows before and after) and with them.
    leader_idle_percent: f64,
    leader_streaming_percent: f64,
    leader_overhead_percent: f64,
    /// The same summed over every agent (the others answer the leader's stats polls).
    cluster_idle_percent: f64,
    cluster_streaming_percent: f64,
    cluster_overhead_percent: f64,
    frames_per_subscriber_per_s: f64,
    bytes_per_subscriber_per_s: f64,
    frames_dropped: u64,
    target_percent: f64,
}

#[derive(Serialize)]
struct Document {
    bench: &'static str,
    unix_ms: u64,
    command: String,
    render: Vec<RenderRow>,
    cpu: Option<CpuReport>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Applies `frames` synthetic frames of `members` members to an `App` and draws each.
fn render(members: usize, (w, h): (u16, u16), frames: usize) -> Result<RenderRow> {
    let inputs: Vec<_> = (0..frames as u64)
        .map(|t| synth::frame(members, t))
        .collect();
    let mut app = App::new(synth::addr(0), synth::T0, (w, h));
    app.handle(Event::Conn(ConnEvent::Connected(synth::addr(0))));
    let mut term = Terminal::new(TestBackend::new(w, h))?;
    // Warm up allocations and the terminal's buffers.
    app.handle(Event::Frame(Box::new(synth::frame(members, 0))));
    term.draw(|f| draw::draw(f, &app))?;
    let mut times = Vec::with_capacity(frames);
    for (i, f) in inputs.into_iter().enumerate() {
        let t = Instant::now();
        app.handle(Event::Tick(synth::T0 + i as u64 * 500));
        app.handle(Event::Frame(Box::new(f)));
        term.draw(|f| draw::draw(f, &app))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(RenderRow {
        members,
        width: w,
        height: h,
        frames,
        median_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        max_ms: *times.last().unwrap_or(&0.0),
        target_ms: if members <= 10 {
            TARGET_10_MS
        } else {
            TARGET_1000_MS
        },
    })
}

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / USER_HZ)
}

/// Percent of one core each pid used over `window`.
async fn cpu_window(pids: &[u32], window: Duration) -> Result<Vec<f64>> {
    let before: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let wall = t.elapsed().as_secs_f64();
    let after: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    Ok(before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) / wall * 100.0)
        .collect())
}

/// Counters shared by the subscriber tasks.
#[derive(Default)]
struct Received {
    frames: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

async fn subscriber(addr: std::net::SocketAddr, got: Arc<Received>) -> Result<()> {
    let mut s = follow::subscribe(addr).await.map_err(anyhow::Error::msg)?;
    loop {
        let f = follow::next_frame(&mut s)
            .await
            .map_err(anyhow::Error::msg)?;
        let size = dml_shared::wire::encode(
            dml_shared::wire::Kind::Response,
            &Response::Telemetry(Box::new(f.clone())),
        )
        .len();
        got.frames.fetch_add(1, Ordering::Relaxed);
        got.bytes.fetch_add(size as u64, Ordering::Relaxed);
        got.dropped.store(f.dropped, Ordering::Relaxed);
    }
}

async fn cpu(a: &ConsoleArgs, out_dir: &Path, window: Duration) -> Result<CpuReport> {
    let run_dir = out_dir.join("console-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;
    let mut opts = SdfsOptions::new(a.agents);
    opts.base_dir = Some(run_dir);
    eprintln!("starting {} agents", a.agents);
    let c = SdfsCluster::start_with("cluster", opts).await?;
    let all: Vec<usize> = (0..c.len()).collect();
    let leader = c.leader_index(&all, Duration::from_secs(30)).await?;
    let addr = c.addrs[leader];
    let pids: Vec<u32> = all.iter().map(|&i| c.agent(i).pid()).collect();
    eprintln!("leader {addr}; settling");
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("window 1/3: no subscribers ({window:?})");
    let idle1 = cpu_window(&pids, window).await?;
    let got = Arc::new(Received::default());
    let tasks: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| tokio::spawn(subscriber(addr, got.clone())))
        .collect();
    // Let the subscriptions start and the stats caches fill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let f0 = got.frames.load(Ordering::Relaxed);
    let b0 = got.bytes.load(Ordering::Relaxed);
    eprintln!("window 2/3: {SUBSCRIBERS} subscribers ({window:?})");
    let t = Instant::now();
    let busy = cpu_window(&pids, window).await?;
    let secs = t.elapsed().as_secs_f64();
    let frames = got.frames.load(Ordering::Relaxed) - f0;
    let bytes = got.bytes.load(Ordering::Relaxed) - b0;
    for t in &tasks {
        if t.is_finished() {
            bail!("a subscriber stopped during the measurement");
        }
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("window 3/3: no subscribers ({window:?})");
    let idle2 = cpu_window(&pids, window).await?;

    let idle_leader = (idle1[leader] + idle2[leader]) / 2.0;
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let idle_cluster = (sum(&idle1) + sum(&idle2)) / 2.0;
    Ok(CpuReport {
        agents: a.agents,
        subscribers: SUBSCRIBERS,
        window_secs: window.as_secs_f64(),
        leader_idle_percent: idle_leader,
        leader_streaming_percent: busy[leader],
        leader_overhead_percent: busy[leader] - idle_leader,
        cluster_idle_percent: idle_cluster,
        cluster_streaming_percent: sum(&busy),
        cluster_overhead_percent: sum(&busy) - idle_cluster,
        frames_per_subscriber_per_s: frames as f64 / SUBSCRIBERS as f64 / secs,
        bytes_per_subscriber_per_s: bytes as f64 / SUBSCRIBERS as f64 / secs,
        frames_dropped: got.dropped.load(Ordering::Relaxed),
        target_percent: TARGET_CPU_PERCENT,
    })
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn table(render: &[RenderRow], cpu: Option<&CpuReport>) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}\n",
        "console frame (apply + draw)", "median ms", "p99 ms", "max ms", "target"
    ));
    for r in render {
        s.push_str(&format!(
            "{:<34} {:>9.3} {:>9.3} {:>9.3} {:>7} {}\n",
            format!("{} members, {}x{}", r.members, r.width, r.height),
            r.median_ms,
            r.p99_ms,
            r.max_ms,
            format!("≤{}", r.target_ms),
            mark(r.median_ms <= r.target_ms)
        ));
    }
    if let Some(c) = cpu {
        s.push('\n');
        s.push_str(&format!(
            "{:<48} {:>8} {:>8} {:>9} {:>8}\n",
            format!("agent CPU, % of a core ({} subscribers)", c.subscribers),
            "idle",
            "stream",
            "overhead",
            "target"
        ));
        s.push_str(&format!(
            "{:<48} {:>8.2} {:>8.2} {:>9.2} {:>6} {}\n",
            "subscribed agent (the leader)",
            c.leader_idle_percent,
            c.leader_streaming_percent,
            c.leader_overhead_percent,
            format!("≤{}", c.target_percent),
            mark(c.leader_overhead_percent <= c.target_percent)
        ));
        s.push_str(&format!(
            "{:<48} {:>8.2} {:>8.2} {:>9.2}\n",
            format!("all {} agents together", c.agents),
            c.cluster_idle_percent,
            c.cluster_streaming_percent,
            c.cluster_overhead_percent
        ));
        s.push_str(&format!(
            "per subscriber: {:.2} frames/s, {:.0} bytes/s, {} frames dropped; windows of {:.0} s\n",
            c.frames_per_subscriber_per_s,
            c.bytes_per_subscriber_per_s,
            c.frames_dropped,
            c.window_secs
        ));
    }
    s
}

pub async fn run(a: ConsoleArgs, bin_dir: &Path, out_dir: &Path) -> Result<()> {
    let frames = if a.quick { 50 } else { a.frames.max(1) };
    let window = Duration::from_secs(if a.quick { 5 } else { a.window_secs.max(1) });
    let mut rows = Vec::new();
    for members in [10, 1000] {
        for size in [(80, 24), (200, 60)] {
            eprintln!("render: {members} members at {}x{}", size.0, size.1);
            rows.push(render(members, size, frames)?);
        }
    }
    let cpu = if a.render_only {
        None
    } else {
        if !a.no_build {
            crate::locate(bin_dir, "dml-agent", "dml-agent", true)?;
        }
        Some(cpu(&a, out_dir, window).await?)
    };
    print!("{}", table(&rows, cpu.as_ref()));
    let doc = Document {
        bench: "console",
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        render: rows,
        cpu,
    };
    std::fs::create_dir_all(out_dir)?;
    let json_path = out_dir.join(if a.quick {
        "console-quick.json"
    } else {
        "console.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("\nJSON: {}", json_path.display());
    Ok(())
}
