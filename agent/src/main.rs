//! `dml-agent`: parses flags and config, starts an [`Agent`], tells systemd
//! when it is ready ([`notify`]), reloads what it can on SIGHUP ([`reload`]),
//! and leaves the group gracefully on SIGTERM or SIGINT. See docs/AGENT_CLI.md.

mod notify;
mod reload;

use clap::Parser;
use dml_agent::agent::Agent;
use dml_agent::failstop;
use dml_agent::log_line;
use dml_agent::timing::{FAILSTOP_POLL, FAILSTOP_SHUTDOWN};
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
    /// The cluster key file; overrides `security.key_file`.
    #[arg(long, env = "DML_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Serve Prometheus metrics here; overrides `metrics.bind`.
    #[arg(long)]
    metrics_bind: Option<SocketAddr>,
    /// Log lines as text or as JSON objects (one per line, for log shippers).
    #[arg(long, env = "DML_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_preset(s: &str) -> dml_shared::Result<Preset> {
    s.parse()
}

/// The config file (or preset) with the flags applied, validated, and the
/// file's `log` filter.
fn config(args: &Args) -> dml_shared::Result<(Config, Option<String>)> {
    let (mut cfg, log) = match &args.config {
        Some(path) => {
            let f = reload::read(path)?;
            (f.cfg, f.log)
        }
        None => (Config::preset(args.preset.unwrap_or_default()), None),
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
    if let Some(k) = &args.key_file {
        cfg.security.key_file = Some(k.clone());
    }
    if let Some(m) = args.metrics_bind {
        cfg.metrics.bind = Some(m);
    }
    cfg.validate()?;
    let path = cfg
        .security
        .key_file
        .as_ref()
        .ok_or(dml_shared::Error::NoKey)?;
    dml_shared::auth::install(dml_shared::auth::ClusterKey::load(path)?)?;
    // Outgoing connections (Raft, SDFS chains) follow the setting too.
    dml_shared::auth::set_encrypt_tcp(cfg.security.encrypt_tcp);
    Ok((cfg, log))
}

/// Swaps the log filter of the running subscriber.
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Longest wait for the first join before telling systemd the agent is ready
/// anyway (an introducer that is down must not fail the start).
const READY_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Repeated log lines (the same level, target and message) pass in a burst of
/// [`LOG_BURST`], then one per [`LOG_EVERY`]: an unreachable Raft peer makes openraft log
/// every failed RPC, thousands a minute.
const LOG_BURST: f64 = 3.0;
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Fields whose values do not make a log line new: openraft's errors, backoff intervals,
/// peers and request ids.
const LOG_VARYING: [&str; 8] = [
    "error",
    "err",
    "result",
    "interval",
    "target",
    "request_id",
    "resp",
    "now",
];

fn log_throttle() -> Result<tracing_throttle::TracingRateLimitLayer, Box<dyn std::error::Error>> {
    let policy = tracing_throttle::Policy::token_bucket(LOG_BURST, 1.0 / LOG_EVERY.as_secs_f64())?;
    Ok(tracing_throttle::TracingRateLimitLayer::builder()
        .with_policy(policy)
        .with_excluded_fields(LOG_VARYING.iter().map(|f| f.to_string()).collect())
        .build()?)
}

fn main() -> ExitCode {
    // What the agent writes (objects, raft.redb, its directories) is its own
    // only, whatever the shell or service manager left (the unit's UMask= too).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = Args::parse();
    let (cfg, log) = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let notifier = match notify::Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (log_text, log_note) = reload::filter_text(log.as_deref());
    let log_handle = {
        use tracing_subscriber::prelude::*;
        let filter = tracing_subscriber::EnvFilter::try_new(&log_text)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(reload::DEFAULT_LOG));
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        let throttle = match log_throttle() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot set up the log rate limit: {e}");
                return ExitCode::FAILURE;
            }
        };
        let lines = tracing_subscriber::fmt::layer().with_writer(log_line::OneLineStderr);
        let lines = match args.log_format {
            LogFormat::Text => lines
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .boxed(),
            LogFormat::Json => lines.json().with_ansi(false).boxed(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(lines.with_filter(throttle))
            .init();
        handle
    };
    if let Some(note) = log_note {
        tracing::warn!("{note}");
    }
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
    match runtime.block_on(run(args, cfg, notifier, (log_handle, log_text))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    cfg: Config,
    notifier: Option<notify::Notifier>,
    (log_handle, mut log_text): (LogHandle, String),
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;

    let agent = Agent::start(&cfg, !args.no_join).await?;
    // Runs until the process exits.
    let _watchdog = notify::spawn_watchdog(agent.membership().clone());
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

    // Ready for systemd once joined (or after a bounded wait), signals handled meanwhile.
    let ready = async {
        let deadline = tokio::time::Instant::now() + READY_JOIN_WAIT;
        let joined = loop {
            if args.no_join {
                break false;
            }
            if agent.membership().id().await.is_some_and(|i| i.joined) {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let status = if joined {
            "joined the group"
        } else {
            "listening, not joined yet"
        };
        notify::notify(
            notifier.as_ref(),
            &format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()),
        );
    };
    // Why the agent must stop (see `failstop.rs`); `None` on a signal.
    let fatal = {
        tokio::pin!(ready);
        let stopped = failstop::raft_stopped(agent.control(), &cfg.data_dir, FAILSTOP_POLL);
        tokio::pin!(stopped);
        let mut ready_sent = false;
        loop {
            tokio::select! {
                () = &mut ready, if !ready_sent => ready_sent = true,
                _ = hup.recv() => reload_config(&args, &cfg, &log_handle, &mut log_text),
                _ = term.recv() => { tracing::info!("SIGTERM: leaving the group"); break None; }
                _ = int.recv() => { tracing::info!("SIGINT: leaving the group"); break None; }
                why = &mut stopped => {
                    tracing::error!("{why}");
                    break Some(why);
                }
            }
        }
    };
    let status = match &fatal {
        None => "leaving the group".to_string(),
        Some(why) => format!("failed: {why}"),
    };
    notify::notify(notifier.as_ref(), &format!("STOPPING=1\nSTATUS={status}"));
    match &fatal {
        None => agent.shutdown().await,
        // Leaving tells the others at once; a store that cannot write may keep
        // the Raft node from stopping cleanly, so the wait is bounded.
        Some(_) => {
            if tokio::time::timeout(FAILSTOP_SHUTDOWN, agent.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "the agent did not stop within {FAILSTOP_SHUTDOWN:?}; exiting anyway"
                );
            }
        }
    }
    if let Some(t) = event_task {
        // API connections may still hold the event channel open; don't wait on them.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
    }
    match fatal {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// SIGHUP: re-reads the config file, applies the `log` filter, and logs every
/// other changed key as refused (it needs a restart).
fn reload_config(args: &Args, running: &Config, log: &LogHandle, log_text: &mut String) {
    let Some(path) = &args.config else {
        tracing::warn!("SIGHUP: started without --config, nothing to re-read");
        return;
    };
    let new = match config(args) {
        Ok((cfg, log)) => reload::FileConfig { cfg, log },
        Err(e) => {
            tracing::error!(file = %path.display(), "SIGHUP: config refused, nothing changed: {e}");
            return;
        }
    };
    let plan = reload::plan(running, log_text, &new);
    if let Some(text) = plan.log {
        match tracing_subscriber::EnvFilter::try_new(&text)
            .map_err(|e| e.to_string())
            .and_then(|f| log.reload(f).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                tracing::info!(old = %log_text, new = %text, "SIGHUP: log filter changed");
                *log_text = text;
            }
            Err(e) => tracing::error!("SIGHUP: cannot apply log filter \"{text}\": {e}"),
        }
    }
    for c in &plan.refused {
        tracing::warn!(
            key = %c.key, running = %c.old, file = %c.new,
            "SIGHUP: changed key needs a restart; keeping the running value"
        );
    }
    if plan.refused.is_empty() {
        tracing::info!(file = %path.display(), "SIGHUP: config re-read");
    }
}
