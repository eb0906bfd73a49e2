//! The two systems under test and one running member of either, behind a kill-on-drop guard.

use anyhow::{Context, Result, bail};
use dml_shared::client::Client;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a freshly spawned member may take to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for one API call to an agent.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// Which implementation a member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `dml-agent`, queried through its TCP API.
    Agent,
    /// `foca-node`, queried through its stats file.
    Foca,
}

/// A system under test: the binary and the arguments every member gets.
#[derive(Clone, Debug)]
pub struct System {
    pub kind: Kind,
    /// Short name used in the table, the JSON and the run directory.
    pub name: &'static str,
    pub bin: PathBuf,
    /// Arguments given to every member besides bind / introducer / logs.
    pub args: Vec<String>,
}

/// Traffic and failure-detector counters of one member.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    /// Agent only: suspicions this member refuted.
    pub refuted: Option<u64>,
    /// Agent only: times this member learned it had been declared failed while alive.
    pub false_failures: Option<u64>,
    /// Agent only: suspicions this member raised.
    pub suspicions: Option<u64>,
}

/// One line of a member's event log, read leniently (foca-node has a few extra event names).
#[derive(Clone, Debug, Deserialize)]
pub struct LogEvent {
    pub ts_ms: u64,
    pub event: String,
    pub member: String,
}

/// The stats file written by `foca-node`.
#[derive(Deserialize)]
struct FocaStats {
    bytes_sent: u64,
    bytes_recv: u64,
    packets_sent: u64,
    packets_recv: u64,
    members: Vec<String>,
}

/// One running member; the process is killed when this is dropped.
pub struct Node {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// `addr#started`, as printed on the `listening` line.
    pub id: String,
    pub event_log: PathBuf,
    stats_file: PathBuf,
    child: Child,
    client: Option<Client>,
}

impl System {
    /// Starts a member bound to `bind`, joining through `introducer` (none: it starts alone),
    /// with its files in `dir`.
    pub async fn spawn(
        &self,
        bind: SocketAddr,
        introducer: Option<SocketAddr>,
        dir: &Path,
    ) -> Result<Node> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create \"{}\"", dir.display()))?;
        let event_log = dir.join("events.jsonl");
        let stats_file = dir.join("stats.json");
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.env("DML_KEY_FILE", dml_tests::key::path()?);
        cmd.args(&self.args)
            .arg("--bind")
            .arg(bind.to_string())
            .arg("--event-log")
            .arg(&event_log);
        if let Some(i) = introducer {
            cmd.arg("--introducer").arg(i.to_string());
        }
        match self.kind {
            Kind::Agent => {
                cmd.arg("--data-dir").arg(dir.join("data"));
            }
            Kind::Foca => {
                cmd.arg("--stats").arg(&stats_file);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start \"{}\"", self.bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) | Ok(Err(_)) => bail!(
                "{} on {bind} exited before listening; see {}",
                self.name,
                dir.join("stderr.log").display()
            ),
            Err(_) => bail!("{} on {bind} printed no `listening` line", self.name),
        };
        // Keep draining stdout so a chatty member never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut parts = line.split_whitespace();
        let (Some("listening"), Some(addr), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "{} on {bind} printed {line:?}, not `listening ADDR ID`",
                self.name
            );
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        let client =
            (self.kind == Kind::Agent).then(|| Client::new(addr).with_timeout(API_TIMEOUT));
        Ok(Node {
            kind: self.kind,
            addr,
            id: id.to_string(),
            event_log,
            stats_file,
            child,
            client,
        })
    }
}

impl Node {
    /// The ids this member holds as live (alive or suspect), itself excluded.
    pub async fn live_view(&mut self) -> Result<BTreeSet<String>> {
        let mut ids: BTreeSet<String> = match self.kind {
            Kind::Agent => {
                let c = self.client.as_mut().context("agent without a client")?;
                // The agent closes idle API connections; the client then reconnects on the
                // next call, so one failure is retried.
                let members = match c.members().await {
                    Ok(m) => m,
                    Err(_) => c.members().await?,
                };
                members
                    .into_iter()
                    .filter(|m| m.state.is_live())
                    .map(|m| m.id.to_string())
                    .collect()
            }
            Kind::Foca => self.foca_stats()?.members.into_iter().collect(),
        };
        ids.remove(&self.id);
        Ok(ids)
    }

    /// Current traffic and detector counters.
    pub async fn counters(&mut self) -> Result<Counters> {
        match self.kind {
            Kind::Agent => {
                let c = self.client.as_mut().context("agent without a client")?;
                let s = match c.stats().await {
                    Ok(s) => s,
                    Err(_) => c.stats().await?,
                };
                Ok(Counters {
                    bytes_sent: s.bytes_sent,
                    bytes_recv: s.bytes_recv,
                    packets_sent: s.packets_sent,
                    packets_recv: s.packets_recv,
                    refuted: Some(s.refuted),
                    false_failures: Some(s.false_failures),
                    suspicions: Some(s.suspicions),
                })
            }
            Kind::Foca => {
                let s = self.foca_stats()?;
                Ok(Counters {
                    bytes_sent: s.bytes_sent,
                    bytes_recv: s.bytes_recv,
                    packets_sent: s.packets_sent,
                    packets_recv: s.packets_recv,
                    ..Counters::default()
                })
            }
        }
    }

    fn foca_stats(&self) -> Result<FocaStats> {
        let text = std::fs::read_to_string(&self.stats_file)
            .with_context(|| format!("cannot read \"{}\"", self.stats_file.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("bad stats in \"{}\"", self.stats_file.display()))
    }

    /// Every complete line of this member's event log.
    pub fn events(&self) -> Vec<LogEvent> {
        read_events(&self.event_log)
    }

    /// SIGKILLs the member and reaps it. The bench's API connection is closed first, so the
    /// member's port is not left in TIME_WAIT and a restart can bind it again.
    pub async fn kill(&mut self) -> Result<()> {
        self.client = None;
        self.child.start_kill().context("SIGKILL")?;
        self.child.wait().await?;
        Ok(())
    }

    /// Stops the member gracefully (SIGTERM), waiting a little before killing it.
    pub async fn stop(mut self) {
        self.client = None;
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

/// Reads the complete lines of an event log; lines that do not parse are skipped.
pub fn read_events(path: &Path) -> Vec<LogEvent> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
