//! `dml local up|status|down`: a cluster of agents on this machine, recorded in a
//! run directory so later commands find (and stop) exactly what was started.
//!
//! - [`record`]: `cluster.json`, pid and log file names.
//! - [`process`]: starting, probing and stopping processes (detached or in tmux).

pub mod process;
pub mod record;

use crate::agent_bin::find_agent_bin;
use crate::cli::{DownArgs, LocalCommand, OneAgentArgs, RunDirArg, UpArgs};
use crate::report::render_table;
use anyhow::{Result, bail};
use dml_shared::client::Client;
use dml_tui::error::ClientError;
use process::Stopped;
use record::{AgentRecord, ClusterRecord, TMUX_SESSION};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Time allowed for one API probe while waiting for agents or reporting status.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two rounds of readiness probes.
const READY_POLL: Duration = Duration::from_millis(100);
/// Log lines shown for an agent that failed to start.
const LOG_TAIL_LINES: usize = 8;

/// `key_file`: the global `--key-file`; without it the cluster's key is
/// `<run_dir>/cluster.key`, made by `up` when missing.
/// `context`: the name to save the new cluster's context under (default `local`).
pub async fn run(
    cmd: &LocalCommand,
    key_file: Option<&Path>,
    context: Option<&str>,
    json: bool,
) -> Result<()> {
    match cmd {
        LocalCommand::Up(a) => up(a, key_file, context.unwrap_or("local"), json).await,
        LocalCommand::Status(a) => {
            let own = a.run_dir.join("cluster.key");
            crate::key::install(key_file.or(own.exists().then_some(own.as_path())))?;
            status(a, json).await
        }
        LocalCommand::Down(a) => down(a, json),
        LocalCommand::Start(a) => one(a, Action::Start, key_file, json).await,
        LocalCommand::Stop(a) => one(a, Action::Stop, key_file, json).await,
        LocalCommand::Restart(a) => one(a, Action::Restart, key_file, json).await,
        LocalCommand::Kill(a) => one(a, Action::Kill, key_file, json).await,
    }
}

/// What `dml local start|stop|restart|kill PORT` does to one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Restart,
    Kill,
}

/// Acts on the agent recorded at `a.port`, keeping `cluster.json` and its pid
/// file true: a started agent gets the command line `up` gave it (same data
/// directory, key, nodes and metrics address) and its new pid and node id.
async fn one(a: &OneAgentArgs, action: Action, key_file: Option<&Path>, json: bool) -> Result<()> {
    let run_dir = a
        .run
        .run_dir
        .canonicalize()
        .map_err(|e| ClientError::io("open", &a.run.run_dir, e))?;
    let no_such = |known: Vec<u16>| ClientError::NoSuchAgent {
        port: a.port,
        run_dir: run_dir.clone(),
        known,
    };
    let mut rec = ClusterRecord::load(&run_dir)?.ok_or_else(|| no_such(Vec::new()))?;
    let i = rec
        .agents
        .iter()
        .position(|ag| ag.port == a.port)
        .ok_or_else(|| no_such(rec.agents.iter().map(|ag| ag.port).collect()))?;
    // To ask a started agent who it is.
    let own = run_dir.join("cluster.key");
    crate::key::install(key_file.or(rec.key_file.as_deref()).or(Some(&own)))?;
    let mut outcome = Vec::new();
    if action != Action::Start {
        let pid = rec.agents[i].pid;
        let grace = Duration::from_secs(a.timeout_secs);
        let stopped = match action {
            Action::Kill => process::kill_now(pid, grace)?,
            _ => process::stop(pid, grace)?,
        };
        outcome.push(match stopped {
            Stopped::NotRunning => format!("pid {pid} was not running"),
            Stopped::Terminated => format!("stopped pid {pid}"),
            Stopped::Killed => format!("killed pid {pid}"),
        });
        let _ = std::fs::remove_file(record::pid_file(&run_dir, a.port));
    }
    if matches!(action, Action::Start | Action::Restart) {
        let old = rec.agents[i].pid;
        if process::is_live_agent(old) {
            return Err(ClientError::InTheWay(format!(
                "the agent on port {} already runs (pid {old}); `dml local restart {}` restarts it",
                a.port, a.port
            ))
            .into());
        }
        if !busy_ports(&[a.port]).is_empty() {
            return Err(ClientError::InTheWay(format!(
                "port {} on 127.0.0.1 is in use by another process",
                a.port
            ))
            .into());
        }
        let pid = start_recorded(&mut rec, i, &run_dir, Duration::from_secs(a.wait_secs)).await?;
        outcome.push(format!("started pid {pid}"));
    }
    let ag = &rec.agents[i];
    if json {
        println!(
            "{}",
            json!({"port": ag.port, "pid": ag.pid, "node_id": ag.node_id, "outcome": outcome})
        );
    } else {
        println!(
            "agent {}: {}{}",
            ag.port,
            outcome.join(", then "),
            match (&ag.node_id, action) {
                (Some(id), Action::Start | Action::Restart) => format!("; node id {id}"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// Starts recorded agent `i` again and waits until it answers, updating the
/// record and its pid file.
async fn start_recorded(
    rec: &mut ClusterRecord,
    i: usize,
    run_dir: &Path,
    wait: Duration,
) -> Result<i32> {
    let nodes: Vec<SocketAddr> = rec.agents.iter().map(|ag| ag.addr).collect();
    let key_file = rec
        .key_file
        .clone()
        .unwrap_or_else(|| run_dir.join("cluster.key"));
    let ag = rec.agents[i].clone();
    let args = agent_args(
        &rec.preset,
        ag.port,
        rec.introducer,
        &nodes,
        run_dir,
        &key_file,
        ag.metrics,
    );
    let mut child = None;
    let pid = match &rec.tmux_session {
        Some(session) => {
            let line = process::tmux_command_line(&rec.agent_bin, &args);
            let first = !process::tmux_has_session(session);
            process::tmux_start(
                session,
                first,
                &format!("agent-{}", ag.port),
                &line,
                &ag.log,
            )?
        }
        None => {
            let c = process::spawn_detached(&rec.agent_bin, &args, &ag.log)?;
            let pid = c.id() as i32;
            child = Some(c);
            pid
        }
    };
    std::fs::write(record::pid_file(run_dir, ag.port), format!("{pid}\n"))?;
    let agent = &mut rec.agents[i];
    agent.pid = pid;
    agent.started_ms = now_ms();
    agent.node_id = None;
    rec.save(run_dir)?;
    let mut one = ClusterRecord {
        agents: vec![rec.agents[i].clone()],
        ..rec.clone()
    };
    let mut children: Vec<Child> = child.into_iter().collect();
    let failures = wait_ready(&mut one, &mut children, Instant::now() + wait).await;
    drop(children);
    if let Some((_, why)) = failures.first() {
        bail!(
            "the agent on port {} (pid {pid}) did not come up: {why}; last lines of {}:\n{}",
            ag.port,
            ag.log.display(),
            log_tail(&ag.log)
        );
    }
    rec.agents[i].node_id = one.agents[0].node_id.clone();
    rec.save(run_dir)?;
    Ok(pid)
}

use dml_shared::clock::unix_ms as now_ms;

/// Ports `base..base+count`, or an error naming the flags when they overflow.
pub fn ports(base: u16, count: u16) -> Result<Vec<u16>> {
    let last = u32::from(base) + u32::from(count) - 1;
    if base == 0 || last > u32::from(u16::MAX) {
        return Err(ClientError::BadPorts { base, count, last }.into());
    }
    Ok((base..=last as u16).collect())
}

/// Arguments of one agent of the local cluster: every agent is told the whole
/// node list (the agent takes its default Raft voters from it) and gets its
/// own data directory under the run directory.
pub fn agent_args(
    preset: &str,
    port: u16,
    introducer: SocketAddr,
    nodes: &[SocketAddr],
    run_dir: &Path,
    key_file: &Path,
    metrics: Option<SocketAddr>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--key-file".into(),
        key_file.to_string_lossy().into_owned(),
        "--preset".into(),
        preset.into(),
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--introducer".into(),
        introducer.to_string(),
        "--data-dir".into(),
        record::data_dir(run_dir, port)
            .to_string_lossy()
            .into_owned(),
    ];
    for n in nodes {
        args.push("--node".into());
        args.push(n.to_string());
    }
    if let Some(m) = metrics {
        args.push("--metrics-bind".into());
        args.push(m.to_string());
    }
    args
}

/// The metrics address of each agent: none with `--no-metrics`, else on
/// 127.0.0.1 from `--metrics-base-port` (default: right after the agents' ports).
pub fn metrics_addrs(a: &UpArgs) -> Result<Vec<Option<SocketAddr>>> {
    if a.no_metrics {
        return Ok(vec![None; usize::from(a.count)]);
    }
    let base = match a.metrics_base_port {
        Some(p) => p,
        None => u16::try_from(u32::from(a.base_port) + u32::from(a.count)).map_err(|_| {
            ClientError::BadPorts {
                base: a.base_port,
                count: a.count.saturating_mul(2),
                last: u32::from(a.base_port) + 2 * u32::from(a.count) - 1,
            }
        })?,
    };
    Ok(ports(base, a.count)?
        .into_iter()
        .map(|p| Some(SocketAddr::from(([127, 0, 0, 1], p))))
        .collect())
}

/// Writes the Prometheus file-based discovery list (`file_sd_configs`) of the
/// agents that serve metrics; removes it when none does.
fn write_targets(rec: &ClusterRecord, run_dir: &Path) -> Result<()> {
    let path = record::targets_file(run_dir);
    let targets: Vec<String> = rec
        .agents
        .iter()
        .filter_map(|a| a.metrics.map(|m| m.to_string()))
        .collect();
    if targets.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&json!([{
        "targets": targets,
        "labels": { "cluster": "local" },
    }]))?;
    std::fs::write(&path, text + "\n").map_err(|e| ClientError::io("write", &path, e))?;
    Ok(())
}

/// Ports where a TCP or UDP socket on 127.0.0.1 cannot be bound right now.
pub fn busy_ports(ports: &[u16]) -> Vec<u16> {
    ports
        .iter()
        .copied()
        .filter(|&p| {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            std::net::TcpListener::bind(addr).is_err() || std::net::UdpSocket::bind(addr).is_err()
        })
        .collect()
}

/// Recorded agents (from cluster.json and stray pid files) that still run.
fn live_agents(run_dir: &Path) -> Result<Vec<(u16, i32)>> {
    let mut all = record::pid_files(run_dir);
    if let Some(r) = ClusterRecord::load(run_dir)? {
        all.extend(r.agents.iter().map(|a| (a.port, a.pid)));
    }
    all.sort();
    all.dedup();
    Ok(all
        .into_iter()
        .filter(|(_, pid)| process::is_live_agent(*pid))
        .collect())
}

fn remove_records(run_dir: &Path) {
    for (port, _) in record::pid_files(run_dir) {
        let _ = std::fs::remove_file(record::pid_file(run_dir, port));
    }
    let _ = std::fs::remove_file(record::cluster_file(run_dir));
    let _ = std::fs::remove_file(record::targets_file(run_dir));
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..].iter().map(|l| format!("    {l}\n")).collect()
}

async fn up(a: &UpArgs, key_file: Option<&Path>, context: &str, json: bool) -> Result<()> {
    let ports = ports(a.base_port, a.count)?;
    let bin = find_agent_bin(a.agent_bin.as_deref())?;
    std::fs::create_dir_all(&a.run.run_dir)
        .map_err(|e| ClientError::io("create", &a.run.run_dir, e))?;
    let run_dir = a.run.run_dir.canonicalize()?;
    let live = live_agents(&run_dir)?;
    if !live.is_empty() {
        let pids: Vec<String> = live
            .iter()
            .map(|(p, pid)| format!("{pid} (port {p})"))
            .collect();
        return Err(ClientError::InTheWay(format!(
            "{} already has live agents: pids {}; run `dml local down --run-dir {}` first",
            run_dir.display(),
            pids.join(", "),
            a.run.run_dir.display()
        ))
        .into());
    }
    if a.tmux && process::tmux_has_session(TMUX_SESSION) {
        return Err(ClientError::InTheWay(format!(
            "tmux session \"{TMUX_SESSION}\" already exists; stop it with \
             `tmux kill-session -t {TMUX_SESSION}` first"
        ))
        .into());
    }
    let metrics = metrics_addrs(a)?;
    let mut wanted = ports.clone();
    wanted.extend(metrics.iter().flatten().map(SocketAddr::port));
    let busy = busy_ports(&wanted);
    if !busy.is_empty() {
        let list: Vec<String> = busy.iter().map(u16::to_string).collect();
        return Err(ClientError::InTheWay(format!(
            "port(s) {} on 127.0.0.1 already in use; pick another --base-port",
            list.join(", ")
        ))
        .into());
    }
    remove_records(&run_dir);
    let key_file = crate::key::for_local_cluster(key_file, &run_dir)?;
    let key_file = key_file.canonicalize().unwrap_or(key_file);

    let introducer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let mut rec = ClusterRecord {
        created_ms: now_ms(),
        preset: a.preset.as_str().into(),
        agent_bin: bin.clone(),
        introducer,
        tmux_session: a.tmux.then(|| TMUX_SESSION.to_string()),
        key_file: Some(key_file.clone()),
        agents: Vec::new(),
    };
    let nodes: Vec<SocketAddr> = ports
        .iter()
        .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let mut children: Vec<Child> = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let args = agent_args(
            a.preset.as_str(),
            port,
            introducer,
            &nodes,
            &run_dir,
            &key_file,
            metrics[i],
        );
        let log = record::log_file(&run_dir, port);
        let _ = std::fs::remove_file(&log);
        let started = if a.tmux {
            let line = process::tmux_command_line(&bin, &args);
            process::tmux_start(TMUX_SESSION, i == 0, &format!("agent-{port}"), &line, &log)
        } else {
            process::spawn_detached(&bin, &args, &log).map(|c| {
                let pid = c.id() as i32;
                children.push(c);
                pid
            })
        };
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                abort(&rec, &run_dir);
                return Err(e.context(format!("starting the agent on port {port}")));
            }
        };
        std::fs::write(record::pid_file(&run_dir, port), format!("{pid}\n"))?;
        rec.agents.push(AgentRecord {
            port,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            started_ms: now_ms(),
            log,
            node_id: None,
            metrics: metrics[i],
        });
        rec.save(&run_dir)?;
    }

    let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
    let failures = wait_ready(&mut rec, &mut children, deadline).await;
    // The agents run in their own sessions; dropping the handles leaves them running.
    drop(children);
    if !failures.is_empty() {
        abort(&rec, &run_dir);
        let mut msg = format!(
            "{} of {} agents did not come up, so all were stopped:\n",
            failures.len(),
            rec.agents.len()
        );
        for (agent, why) in failures {
            msg += &format!(
                "  port {} (pid {}): {why}; last lines of {}:\n{}",
                agent.port,
                agent.pid,
                agent.log.display(),
                log_tail(&agent.log)
            );
        }
        bail!(msg.trim_end().to_string());
    }
    rec.save(&run_dir)?;
    write_targets(&rec, &run_dir)?;
    let converged = wait_converged(&rec, deadline).await;
    if !converged {
        eprintln!(
            "warning: not every agent saw all {} members before the deadline; \
             `dml local status` shows who sees what",
            rec.agents.len()
        );
    }
    let leader = wait_leader(&rec, deadline).await;
    if let Leader::NotElected = leader {
        eprintln!(
            "warning: no control-plane leader was elected before the deadline;              `dml leader` asks again"
        );
    }

    // `dml` from any directory: the cluster becomes the current context.
    let saved = crate::context::remember(
        context,
        crate::context::Context {
            agents: rec.agents.iter().map(|ag| ag.addr).collect(),
            key_file: Some(key_file.clone()),
        },
    );
    if let Err(e) = &saved {
        eprintln!("warning: the cluster runs, but its context was not saved: {e:#}");
    }
    if json {
        println!("{}", serde_json::to_string(&rec)?);
    } else {
        println!(
            "{} agents up (preset {}, introducer {}){}; logs and pids in {}",
            rec.agents.len(),
            rec.preset,
            rec.introducer,
            if a.tmux {
                ", in tmux session \"dml\""
            } else {
                ""
            },
            run_dir.display()
        );
        let rows: Vec<Vec<String>> = rec
            .agents
            .iter()
            .map(|ag| {
                vec![
                    ag.port.to_string(),
                    ag.pid.to_string(),
                    ag.node_id.clone().unwrap_or_default(),
                    ag.metrics
                        .map(|m| format!("http://{m}/metrics"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(&["PORT", "PID", "NODE ID", "METRICS"], &rows)
        );
        if rec.agents.iter().any(|a| a.metrics.is_some()) {
            println!(
                "Prometheus targets: {} (assets/prometheus/prometheus.yml reads it)",
                record::targets_file(&run_dir).display()
            );
        }
        if let Leader::Elected(l) = leader {
            println!("control-plane leader: {l}");
        }
        match saved {
            Ok(path) => println!(
                "context \"{context}\" (agents and cluster key {}) is current in {}: \
                 dml works from any directory",
                key_file.display(),
                path.display()
            ),
            Err(_) => println!(
                "cluster key: {} (dml finds it when run from here; elsewhere: export DML_KEY_FILE={})",
                key_file.display(),
                key_file.display()
            ),
        }
    }
    Ok(())
}

/// Polls every agent's `id()` until all answer or `deadline`; returns the ones
/// that exited or never answered, with the reason.
async fn wait_ready(
    rec: &mut ClusterRecord,
    children: &mut [Child],
    deadline: Instant,
) -> Vec<(AgentRecord, String)> {
    let mut last_error: Vec<Option<String>> = vec![None; rec.agents.len()];
    let mut exited: Vec<bool> = vec![false; rec.agents.len()];
    loop {
        for c in children.iter_mut() {
            let _ = c.try_wait();
        }
        let mut pending = false;
        for (i, agent) in rec.agents.iter_mut().enumerate() {
            if agent.node_id.is_some() || exited[i] {
                continue;
            }
            if !process::is_running(agent.pid) {
                exited[i] = true;
                continue;
            }
            let mut client = Client::new(agent.addr).with_timeout(PROBE_TIMEOUT);
            match client.id().await {
                Ok(info) => agent.node_id = Some(info.id.to_string()),
                Err(e) => {
                    last_error[i] = Some(e.to_string());
                    pending = true;
                }
            }
        }
        if !pending || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    // An agent that exited after another process answered on its port is a failure too.
    for c in children.iter_mut() {
        let _ = c.try_wait();
    }
    for (i, a) in rec.agents.iter().enumerate() {
        if !process::is_running(a.pid) {
            exited[i] = true;
        }
    }
    rec.agents
        .iter()
        .enumerate()
        .filter(|(i, a)| a.node_id.is_none() || exited[*i])
        .map(|(i, a)| {
            let why = if exited[i] {
                "exited".to_string()
            } else {
                format!(
                    "no answer before the deadline ({})",
                    last_error[i].as_deref().unwrap_or("never probed")
                )
            };
            (a.clone(), why)
        })
        .collect()
}

/// Polls until every agent sees every started agent live, or `deadline`.
async fn wait_converged(rec: &ClusterRecord, deadline: Instant) -> bool {
    let want = rec.agents.len();
    loop {
        let mut all = true;
        for agent in &rec.agents {
            let mut client = Client::new(agent.addr).with_timeout(PROBE_TIMEOUT);
            let live = match client.members().await {
                Ok(m) => m.iter().filter(|m| m.state.is_live()).count(),
                Err(_) => 0,
            };
            if live < want {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// What [`wait_leader`] found.
enum Leader {
    Elected(SocketAddr),
    NotElected,
    /// The agents run no control plane (no voters), so there is none to wait for.
    NoControlPlane,
}

/// Polls the first agent until it names a Raft leader, or `deadline`.
async fn wait_leader(rec: &ClusterRecord, deadline: Instant) -> Leader {
    let Some(first) = rec.agents.first() else {
        return Leader::NoControlPlane;
    };
    loop {
        let mut client = Client::new(first.addr).with_timeout(PROBE_TIMEOUT);
        match client.leader().await {
            Ok(l) if l.voters.is_empty() => return Leader::NoControlPlane,
            Ok(l) => {
                if let Some(a) = l.leader {
                    return Leader::Elected(a);
                }
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Leader::NotElected;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Stops whatever `rec` started and forgets it (used when `up` fails half-way).
fn abort(rec: &ClusterRecord, run_dir: &Path) {
    for a in &rec.agents {
        let _ = process::stop(a.pid, Duration::from_secs(2));
    }
    if let Some(s) = &rec.tmux_session {
        let _ = process::tmux_kill_session(s);
    }
    remove_records(run_dir);
}

async fn status(a: &RunDirArg, json: bool) -> Result<()> {
    let Some(rec) = ClusterRecord::load(&a.run_dir)? else {
        if json {
            println!("{}", json!({"run_dir": a.run_dir, "agents": []}));
        } else {
            println!("no cluster recorded in {}", a.run_dir.display());
        }
        return Ok(());
    };
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for agent in &rec.agents {
        let alive = process::is_live_agent(agent.pid);
        let mut client = Client::new(agent.addr).with_timeout(PROBE_TIMEOUT);
        let members = client.members().await;
        let live_members = members
            .as_ref()
            .ok()
            .map(|m| m.iter().filter(|m| m.state.is_live()).count());
        values.push(json!({
            "port": agent.port,
            "pid": agent.pid,
            "alive": alive,
            "answering": members.is_ok(),
            "members": live_members,
            "node_id": agent.node_id,
            "log": agent.log,
        }));
        rows.push(vec![
            agent.port.to_string(),
            agent.pid.to_string(),
            if alive { "running" } else { "gone" }.to_string(),
            if members.is_ok() {
                "answering"
            } else {
                "no answer"
            }
            .to_string(),
            live_members.map_or("-".into(), |n| n.to_string()),
            agent.node_id.clone().unwrap_or_default(),
        ]);
    }
    if json {
        println!(
            "{}",
            json!({"run_dir": a.run_dir, "tmux_session": rec.tmux_session, "agents": values})
        );
    } else {
        print!(
            "{}",
            render_table(
                &["PORT", "PID", "PROCESS", "API", "MEMBERS", "NODE ID"],
                &rows
            )
        );
    }
    Ok(())
}

fn down(a: &DownArgs, json: bool) -> Result<()> {
    let run_dir = &a.run.run_dir;
    let rec = ClusterRecord::load(run_dir)?;
    let mut targets = record::pid_files(run_dir);
    if let Some(r) = &rec {
        targets.extend(r.agents.iter().map(|ag| (ag.port, ag.pid)));
    }
    targets.sort();
    targets.dedup();
    let grace = Duration::from_secs(a.timeout_secs);
    // Stop all at once: each may take up to the grace period.
    let results: Vec<(u16, i32, Result<Stopped>)> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&(port, pid)| s.spawn(move || (port, pid, process::stop(pid, grace))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stop thread panicked"))
            .collect()
    });
    if let Some(session) = rec.as_ref().and_then(|r| r.tmux_session.as_deref()) {
        process::tmux_kill_session(session)?;
    }
    remove_records(run_dir);

    let mut failed = Vec::new();
    let mut values = Vec::new();
    let mut rows = Vec::new();
    for (port, pid, r) in results {
        let outcome = match &r {
            Ok(Stopped::NotRunning) => "not running".to_string(),
            Ok(Stopped::Terminated) => "stopped".to_string(),
            Ok(Stopped::Killed) => "killed after the grace period".to_string(),
            Err(e) => {
                failed.push(format!("port {port} pid {pid}: {e:#}"));
                format!("error: {e:#}")
            }
        };
        values.push(json!({"port": port, "pid": pid, "outcome": outcome}));
        rows.push(vec![port.to_string(), pid.to_string(), outcome]);
    }
    if json {
        println!("{}", json!({"run_dir": run_dir, "agents": values}));
    } else if rows.is_empty() {
        println!("nothing recorded in {}", run_dir.display());
    } else {
        print!("{}", render_table(&["PORT", "PID", "OUTCOME"], &rows));
    }
    if !failed.is_empty() {
        bail!("could not stop every agent:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_run_from_the_base_and_refuse_overflow() {
        assert_eq!(ports(8001, 3).unwrap(), vec![8001, 8002, 8003]);
        assert_eq!(ports(65535, 1).unwrap(), vec![65535]);
        let e = ports(65535, 2).unwrap_err().to_string();
        assert!(e.contains("--base-port 65535"), "{e}");
        assert!(ports(0, 1).is_err());
    }

    #[test]
    fn every_agent_is_told_the_key_the_introducer_its_data_dir_and_every_node() {
        let intro: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let nodes: Vec<SocketAddr> = ["127.0.0.1:8001", "127.0.0.1:8002"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let args = agent_args(
            "local",
            8002,
            intro,
            &nodes,
            Path::new("/r"),
            Path::new("/r/cluster.key"),
            Some("127.0.0.1:8102".parse().unwrap()),
        );
        assert_eq!(
            args,
            [
                "--key-file",
                "/r/cluster.key",
                "--preset",
                "local",
                "--bind",
                "127.0.0.1:8002",
                "--introducer",
                "127.0.0.1:8001",
                "--data-dir",
                "/r/data-8002",
                "--node",
                "127.0.0.1:8001",
                "--node",
                "127.0.0.1:8002",
                "--metrics-bind",
                "127.0.0.1:8102"
            ]
        );
    }

    #[test]
    fn a_bound_port_is_reported_busy() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(busy_ports(&[port]), vec![port]);
        drop(l);
        assert!(busy_ports(&[port]).is_empty());
    }

    #[test]
    fn a_missing_agent_binary_is_a_clear_error() {
        let e = find_agent_bin(Some(Path::new("/nonexistent/dml-agent")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent binary not found at /nonexistent/dml-agent"),
            "{e}"
        );
    }

    #[test]
    fn down_on_an_empty_run_dir_stops_nothing() {
        let dir = std::env::temp_dir().join(format!("dml-down-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A pid file pointing at a process that is not an agent must be left alone.
        let me = std::process::id() as i32;
        std::fs::write(record::pid_file(&dir, 9), format!("{me}\n")).unwrap();
        down(
            &DownArgs {
                run: RunDirArg {
                    run_dir: dir.clone(),
                },
                timeout_secs: 1,
            },
            true,
        )
        .unwrap();
        assert!(process::is_running(me));
        assert!(record::pid_files(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
