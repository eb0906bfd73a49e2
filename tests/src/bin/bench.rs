//! `bench`: benchmarks that print a table and write JSON; they never assert on timings.
//!
//! `bench membership` runs 10 real members on 127.0.0.1, first of `dml-agent` with the `lan`
//! preset and then of `foca-node` (the foca crate's SWIM with the same probe period and
//! timeouts), one system after the other, and measures for each:
//!
//! - crash detection: SIGKILL a non-introducer member, time until every survivor's event log
//!   says `failed`, restart it as a new identity, wait for convergence, repeat;
//! - payload bytes per second per member at rest;
//! - false positives while one member drops a share of the UDP datagrams it receives
//!   (an nftables rule, iptables as fallback, removed afterwards even on Ctrl-C).
//!
//! The table goes to stdout, progress to stderr, the JSON to `target/bench/membership.json`.
//!
//! `bench sdfs [--quick]` runs 10 local agents and measures SDFS put and get against the
//! local disk, agent memory and repair time; table on stdout, JSON in `target/bench/sdfs.json`.
//! Then the repair row on a fresh cluster (`--repair-files`, `--repair-large-mib`,
//! `--repair-only`): JSON in `target/bench/sdfs-repair.json`.
//!
//! `bench console [--quick]` measures the console's frame render time with synthetic
//! telemetry at 10 and 1,000 members, and the CPU an agent spends streaming telemetry to 5
//! subscribers (10 local agents); table on stdout, JSON in `target/bench/console.json`.
//!
//! `bench inference [--quick]` runs the built full-size models through one agent and through
//! 10 agents against bare ONNX Runtime loops, and measures fairness, the time to a fair
//! share and the completion gap after SIGKILLs; JSON in `target/bench/inference.json`.
//!
//! `bench hosts [--quick]` runs on the namespace test bed (7 agent hosts, 1 client host): leader
//! fail-over and detection over 20 kills, a partition and its heal, SDFS from the client host
//! against scp, and a 10-minute soak; JSON in `target/bench/hosts.json`.
//!
//! Modules: `node` (the systems and a kill-on-drop member), `membership` (the measurements),
//! `loss` (the firewall rule guard), `report` (table and JSON); `sdfs`, `sdfs_local`
//! (baseline, page cache, memory), `sdfs_report` and `sdfs_repair` (the repair row) for
//! `bench sdfs`; `security` for `bench security` (the cost of encryption: SDFS throughput,
//! handshakes, `members` latency under a connection flood, membership bytes per member).

#[path = "bench/console.rs"]
mod console;
#[path = "bench/hosts.rs"]
mod hosts;
#[path = "bench/inference.rs"]
mod inference;
#[path = "bench/inference_batching.rs"]
mod inference_batching;
#[path = "bench/loss.rs"]
mod loss;
#[path = "bench/membership.rs"]
mod membership;
#[path = "bench/node.rs"]
mod node;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/sdfs.rs"]
mod sdfs;
#[path = "bench/sdfs_balance.rs"]
mod sdfs_balance;
#[path = "bench/sdfs_local.rs"]
mod sdfs_local;
#[path = "bench/sdfs_meta.rs"]
mod sdfs_meta;
#[path = "bench/sdfs_meta_cluster.rs"]
mod sdfs_meta_cluster;
#[path = "bench/sdfs_repair.rs"]
mod sdfs_repair;
#[path = "bench/sdfs_report.rs"]
mod sdfs_report;
#[path = "bench/security.rs"]
mod security;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use dml_shared::config::{MembershipConfig, Preset};
use membership::{Params, SystemReport};
use node::{Kind, System};
use report::MappingRow;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "AwesomeDML benchmarks: print a table, write JSON"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Failure detection, traffic at rest and false positives: dml-agent vs foca.
    Membership(MembershipArgs),
    /// SDFS put/get throughput vs local disk, agent memory, repair time (see bench/sdfs.rs).
    Sdfs(sdfs::SdfsArgs),
    /// Console frame render time (10 and 1,000 members) and agent CPU of streaming telemetry.
    Console(console::ConsoleArgs),
    /// Inference images/s vs bare ONNX Runtime, fairness, fair-share time, kill gaps, numerics.
    Inference(inference::InferenceArgs),
    /// The namespace test bed: fail-over, partitions, SDFS vs scp, a soak (see bench/hosts.rs).
    Hosts(hosts::HostsArgs),
    /// The cost of encryption: SDFS put/get, handshakes, members p99 under a flood, membership B/s.
    Security(security::SecurityArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Agent,
    Foca,
}

#[derive(clap::Args)]
struct MembershipArgs {
    /// Members per cluster.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// SIGKILL + restart rounds per system (default 20; 5 with --quick).
    #[arg(long)]
    kills: Option<usize>,
    /// Length of the receive-loss phase in seconds; 0 skips it (default 300; 30 with --quick).
    #[arg(long)]
    loss_secs: Option<u64>,
    /// Percentage of received datagrams the lossy member drops.
    #[arg(long, default_value_t = 5)]
    loss_percent: u32,
    /// Window for traffic at rest in seconds (default 30; 10 with --quick).
    #[arg(long)]
    rest_secs: Option<u64>,
    /// Give up on a survivor's removal of a killed member after this many seconds.
    #[arg(long, default_value_t = 30)]
    detect_timeout: u64,
    /// Smoke-test sizes: 5 kills, 30 s of loss, 10 s at rest.
    #[arg(long)]
    quick: bool,
    /// Run one system only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Do not run `cargo build` for dml-agent and foca-node first.
    #[arg(long)]
    no_build: bool,
    /// Run nothing: print the table of a JSON file an earlier run wrote.
    #[arg(long, value_name = "JSON")]
    print: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = async {
                match cli.cmd {
                    Cmd::Membership(a) => membership_bench(a).await,
                    Cmd::Sdfs(a) => sdfs_bench(a).await,
                    Cmd::Console(a) => console_bench(a).await,
                    Cmd::Inference(a) => inference_bench(a).await,
                    Cmd::Hosts(a) => hosts_bench(a).await,
                    Cmd::Security(a) => security_bench(a).await,
                }
            } => r,
            // Dropping the bench future kills every member and removes the loss rule.
            _ = tokio::signal::ctrl_c() => bail!("interrupted; members stopped and loss rule removed"),
        }
    })
}

/// `target/` (the parent of the profile directory the bench runs from).
fn target_dir(bin_dir: &Path) -> PathBuf {
    bin_dir
        .parent()
        .map_or_else(|| bin_dir.to_path_buf(), Path::to_path_buf)
}

/// Builds `bin` of `package` with the bench's own profile; the error carries cargo's reason.
fn cargo_build(bin_dir: &Path, package: &str, bin: &str) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => {
            cmd.arg("--release");
        }
        Some("debug") => {}
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => {}
    }
    eprintln!("building {bin} ({})", bin_dir.display());
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo build -p {package} --bin {bin}` failed");
    }
    Ok(())
}

/// Finds (and unless `--no-build`, first builds) a workspace binary.
fn locate(bin_dir: &Path, package: &str, bin: &str, build: bool) -> Result<PathBuf> {
    if build {
        cargo_build(bin_dir, package, bin)?;
    }
    let path = bin_dir.join(bin);
    if !path.is_file() {
        bail!("\"{}\" not found", path.display());
    }
    Ok(path)
}

/// foca-node flags reproducing our `lan` preset as far as foca allows, with the reasoning.
fn foca_mapping(lan: &MembershipConfig, nodes: usize) -> (Vec<String>, Vec<MappingRow>) {
    let ms = |d: std::time::Duration| format!("{}ms", d.as_millis());
    let row = |ours: String, foca: &str, note: &str| MappingRow {
        ours,
        foca: foca.to_string(),
        note: note.to_string(),
    };
    let args = vec![
        "--cluster-size".into(),
        nodes.to_string(),
        "--probe-period".into(),
        ms(lan.ping_interval),
        "--probe-rtt".into(),
        ms(lan.ping_timeout),
        "--num-indirect-probes".into(),
        lan.indirect_checks.to_string(),
        "--suspect-to-down-after".into(),
        ms(lan.suspicion_timeout),
        "--periodic-announce".into(),
        ms(lan.push_pull_interval),
        "--max-packet-size".into(),
        lan.max_packet_size.to_string(),
    ];
    let rows = vec![
        row(
            "base".into(),
            &format!("Config::new_lan({nodes})"),
            "foca's own LAN config for everything not listed",
        ),
        row(
            format!("ping_interval = {}", ms(lan.ping_interval)),
            &format!("probe_period = {}", ms(lan.ping_interval)),
            "",
        ),
        row(
            format!("ping_timeout = {}", ms(lan.ping_timeout)),
            &format!("probe_rtt = {}", ms(lan.ping_timeout)),
            "wait for the direct ack before indirect probes",
        ),
        row(
            format!("indirect_checks = {}", lan.indirect_checks),
            &format!("num_indirect_probes = {}", lan.indirect_checks),
            "",
        ),
        row(
            format!(
                "suspicion {}..{}",
                ms(lan.suspicion_min),
                ms(lan.suspicion_timeout)
            ),
            &format!("suspect_to_down_after = {}", ms(lan.suspicion_timeout)),
            "foca's suspicion is fixed: the unconfirmed (longest) value is used",
        ),
        row(
            format!("push_pull_interval = {}", ms(lan.push_pull_interval)),
            &format!(
                "periodic_announce = {} to 1 member",
                ms(lan.push_pull_interval)
            ),
            "foca has no push-pull; announce fetches a peer's member list",
        ),
        row(
            format!("max_packet_size = {}", lan.max_packet_size),
            &format!("max_packet_size = {}", lan.max_packet_size),
            "",
        ),
        row(
            format!("m = {} ring successors", lan.m),
            "(none)",
            "foca probes one member per period, round-robin over a shuffled list",
        ),
        row(
            format!("retransmit_mult = {}", lan.retransmit_mult),
            "max_transmissions, periodic_gossip from new_lan",
            "foca's own dissemination (piggyback + 200 ms gossip to 3)",
        ),
    ];
    (args, rows)
}

async fn console_bench(a: console::ConsoleArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin_dir = exe.parent().context("bench has no directory")?;
    console::run(a, bin_dir, &target_dir(bin_dir).join("bench")).await
}

async fn inference_bench(a: inference::InferenceArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin_dir = exe.parent().context("bench has no directory")?;
    inference::run(a, bin_dir, &target_dir(bin_dir).join("bench")).await
}

async fn hosts_bench(a: hosts::HostsArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin_dir = exe.parent().context("bench has no directory")?;
    hosts::run(a, bin_dir, &target_dir(bin_dir).join("bench")).await
}

async fn security_bench(a: security::SecurityArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("bench has no directory")?;
    security::run(a, bin_dir, &target_dir(bin_dir).join("bench")).await
}

async fn sdfs_bench(a: sdfs::SdfsArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin_dir = exe.parent().context("bench has no directory")?;
    sdfs::run(a, bin_dir, &target_dir(bin_dir).join("bench")).await
}

async fn membership_bench(a: MembershipArgs) -> Result<()> {
    if let Some(path) = &a.print {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read \"{}\"", path.display()))?;
        let doc: report::SavedDocument = serde_json::from_str(&text)
            .with_context(|| format!("\"{}\" is not a membership bench JSON", path.display()))?;
        println!("command: {}", doc.command);
        print!("{}", report::mapping_text(&doc.foca_mapping));
        println!();
        print!("{}", report::table(&doc.params, &doc.systems));
        return Ok(());
    }
    if a.nodes < 3 {
        bail!("--nodes must be at least 3");
    }
    let params = Params {
        nodes: a.nodes,
        kills: a.kills.unwrap_or(if a.quick { 5 } else { 20 }),
        rest_secs: a.rest_secs.unwrap_or(if a.quick { 10 } else { 30 }),
        loss_secs: a.loss_secs.unwrap_or(if a.quick { 30 } else { 300 }),
        loss_percent: a.loss_percent,
        detect_timeout_secs: a.detect_timeout,
        converge_timeout_secs: 60,
        settle_secs: if a.quick { 1 } else { 2 },
    };
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let bin_dir = exe
        .parent()
        .context("bench has no directory")?
        .to_path_buf();
    let out_dir = target_dir(&bin_dir).join("bench");
    let run_dir = out_dir.join("membership-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create \"{}\"", run_dir.display()))?;

    let lan = MembershipConfig::preset(Preset::Lan);
    let (foca_args, mapping) = foca_mapping(&lan, params.nodes);
    eprint!("{}", report::mapping_text(&mapping));

    let build = !a.no_build;
    let mut systems: Vec<Result<System>> = Vec::new();
    if a.only != Some(Only::Foca) {
        let cfg = run_dir.join("agent-lan.toml");
        std::fs::write(&cfg, "preset = \"lan\"\n")?;
        systems.push(
            locate(&bin_dir, "dml-agent", "dml-agent", build).map(|bin| System {
                kind: Kind::Agent,
                name: "dml-agent (lan)",
                bin,
                args: vec!["--config".into(), cfg.display().to_string()],
            }),
        );
    }
    if a.only != Some(Only::Agent) {
        systems.push(
            locate(&bin_dir, "dml-tests", "foca-node", build).map(|bin| System {
                kind: Kind::Foca,
                name: "foca 2.0.0",
                bin,
                args: foca_args.clone(),
            }),
        );
    }

    let mut reports: Vec<SystemReport> = Vec::new();
    for (i, s) in systems.into_iter().enumerate() {
        let rep = match s {
            Ok(sys) => {
                let dir = run_dir.join(format!(
                    "{i}-{}",
                    sys.bin
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                ));
                let mut rep = SystemReport {
                    name: sys.name.into(),
                    ..SystemReport::default()
                };
                if let Err(e) = membership::run(&sys, &params, dir, &mut rep).await {
                    eprintln!("[{}] FAILED: {e:#}", sys.name);
                    rep.error = Some(format!("{e:#}"));
                }
                rep
            }
            Err(e) => {
                eprintln!("skipping a system: {e:#}");
                SystemReport {
                    name: if i == 0 && a.only != Some(Only::Foca) {
                        "dml-agent (lan)".into()
                    } else {
                        "foca 2.0.0".into()
                    },
                    skipped: Some(format!("{e:#}")),
                    ..SystemReport::default()
                }
            }
        };
        reports.push(rep);
    }

    print!("{}", report::mapping_text(&mapping));
    println!();
    print!("{}", report::table(&params, &reports));

    let doc = report::Document {
        bench: "membership",
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        params: &params,
        foca_mapping: &mapping,
        systems: &reports,
    };
    let json_path = out_dir.join("membership.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write \"{}\"", json_path.display()))?;
    println!("\nJSON: {}", json_path.display());
    println!("member logs: {}", run_dir.display());
    Ok(())
}
