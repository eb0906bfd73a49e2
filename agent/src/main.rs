//! `dml-agent`: parses flags and config, starts an [`Agent`], and leaves the
//! group gracefully on SIGTERM or SIGINT. See docs/AGENT_CLI.md.

use clap::Parser;
use dml_agent::agent::Agent;
use dml_shared::config::{Config, Preset};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "dml-agent", version, about = "AwesomeDML agent daemon")]
struct Args {
    /// TOML config file; keys it leaves out take its preset's values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Parameter preset when no config file is given.
    #[arg(long, value_parser = parse_preset)]
    preset: Option<Preset>,
    /// UDP and TCP address (same port); port 0 picks a free one.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Agent to join through (repeatable). Overrides the config file's list.
    #[arg(long = "introducer")]
    introducers: Vec<SocketAddr>,
    /// State directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Control-plane voter (repeatable). Overrides `control.voters`.
    #[arg(long = "voter")]
    voters: Vec<SocketAddr>,
    /// Cluster agent (repeatable). Overrides `nodes`; the default voters are taken from it.
    #[arg(long = "node")]
    nodes: Vec<SocketAddr>,
    /// Write membership events as JSON lines to this file (`-` for stdout).
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Start out of the group; `dml join` joins it later.
    #[arg(long)]
    no_join: bool,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse().map_err(|e: dml_shared::Error| e.to_string())
}

fn config(args: &Args) -> dml_shared::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::preset(args.preset.unwrap_or_default()),
    };
    if let Some(b) = args.bind {
        cfg.bind = b;
    }
    if !args.introducers.is_empty() {
        cfg.introducers = args.introducers.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if !args.voters.is_empty() {
        cfg.control.voters = args.voters.clone();
    }
    if !args.nodes.is_empty() {
        cfg.nodes = args.nodes.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;

    let agent = Agent::start(&cfg, !args.no_join).await?;
    let events = match &args.event_log {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            Some(Box::new(std::io::stdout()) as Box<dyn Write + Send>)
        }
        Some(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open event log {}", p.display()))?,
        ) as Box<dyn Write + Send>),
    };
    // Subscribe before announcing readiness so no event is missed.
    let event_task =
        events.map(|out| dml_agent::event_log::spawn(agent.membership().subscribe(), out));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {} {}", agent.id.addr, agent.id)?;
        out.flush()?;
    }
    tracing::info!(id = %agent.id, introducers = ?cfg.introducers, "agent started");

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: leaving the group"),
        _ = int.recv() => tracing::info!("SIGINT: leaving the group"),
    }
    agent.shutdown().await;
    if let Some(t) = event_task {
        // API connections may still hold the event channel open; don't wait on them.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
    }
    Ok(())
}
