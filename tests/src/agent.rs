//! [`Agent`]: one real `dml-agent` process on 127.0.0.1, killed (SIGKILL) and reaped on drop.

use crate::bins::agent_bin;
use crate::dml::{DmlOutput, run_dml};
use crate::events::{Event, read_events};
use crate::view::API_TIMEOUT;
use crate::wait::wait_for;
use anyhow::{Context, Result, anyhow, bail};
use dml_shared::NodeId;
use dml_shared::client::Client;
use dml_shared::config::{ControlConfig, MembershipConfig, SdfsConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Default time an agent has to print its `listening` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of an agent's stderr shown when it fails to start or a test fails.
const STDERR_TAIL_LINES: usize = 15;
/// How often [`Agent::wait_exit`] checks the process.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// How to start one agent.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Names the agent's directory and its log lines; unique within a test directory.
    pub name: String,
    /// `--bind`; port 0 lets the agent pick a free port.
    pub bind: SocketAddr,
    /// `--introducer`, one flag each; empty starts a cluster alone.
    pub introducers: Vec<SocketAddr>,
    /// Written to the agent's config file as `[membership]`.
    pub membership: MembershipConfig,
    /// The whole config file, written verbatim instead of one made from `membership`.
    pub config_text: Option<String>,
    /// `--no-join`: start out of the group.
    pub no_join: bool,
    /// `--node`, one flag each: every agent of the cluster (the default voters are taken
    /// from it).
    pub nodes: Vec<SocketAddr>,
    /// `--voter`, one flag each; empty leaves the voters to the agent's default.
    pub voters: Vec<SocketAddr>,
    /// The agent's state directory; `None` is `<agent dir>/data`. A restart with the same
    /// spec reuses it.
    pub data_dir: Option<PathBuf>,
    /// Written to the config file as `[control]` when set.
    pub control: Option<ControlConfig>,
    /// Written to the config file as `[sdfs]` when set.
    pub sdfs: Option<SdfsConfig>,
    /// More command-line arguments, appended last.
    pub extra_args: Vec<String>,
    /// TOML appended to the generated config file (e.g. an `[inference]` table).
    pub extra_config: String,
    /// Time allowed to print the `listening` line.
    pub startup_timeout: Duration,
    /// The network namespace to run in (`ip netns exec`); `None` is the caller's.
    pub netns: Option<String>,
    /// More environment variables for the agent process.
    pub env: Vec<(String, String)>,
}

impl AgentSpec {
    /// An agent on `127.0.0.1:0` with no introducer.
    pub fn new(name: impl Into<String>, membership: MembershipConfig) -> Self {
        Self {
            name: name.into(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            introducers: Vec::new(),
            membership,
            config_text: None,
            no_join: false,
            nodes: Vec::new(),
            voters: Vec::new(),
            data_dir: None,
            control: None,
            sdfs: None,
            extra_args: Vec::new(),
            extra_config: String::new(),
            startup_timeout: STARTUP_TIMEOUT,
            netns: None,
            env: Vec::new(),
        }
    }

    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    pub fn introducer(mut self, addr: SocketAddr) -> Self {
        self.introducers.push(addr);
        self
    }

    /// Uses `text` as the config file instead of one made from `membership`.
    pub fn config_text(mut self, text: impl Into<String>) -> Self {
        self.config_text = Some(text.into());
        self
    }

    pub fn no_join(mut self) -> Self {
        self.no_join = true;
        self
    }

    /// Every agent of the cluster, passed as `--node` flags.
    pub fn nodes(mut self, nodes: &[SocketAddr]) -> Self {
        self.nodes = nodes.to_vec();
        self
    }

    /// The Raft voters, passed as `--voter` flags.
    pub fn voters(mut self, voters: &[SocketAddr]) -> Self {
        self.voters = voters.to_vec();
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn control(mut self, control: ControlConfig) -> Self {
        self.control = Some(control);
        self
    }

    pub fn sdfs(mut self, sdfs: SdfsConfig) -> Self {
        self.sdfs = Some(sdfs);
        self
    }

    /// The config file this spec produces for an agent whose directory is `dir`.
    pub fn config_file_text(&self, dir: &Path) -> String {
        if let Some(t) = &self.config_text {
            return t.clone();
        }
        let data = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let mut text = config_toml(&self.membership, &data);
        if let Some(c) = &self.control {
            text.push_str(&control_toml(c));
        }
        if let Some(s) = &self.sdfs {
            text.push_str(&sdfs_toml(s));
        }
        text.push_str(&self.extra_config);
        text
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// The config file the harness writes for an agent: `data_dir` and `[membership]`, every
/// membership key spelled out so no preset default is relied on.
pub fn config_toml(m: &MembershipConfig, data_dir: &Path) -> String {
    // Destructured so a new field fails to compile here instead of being silently left out.
    let MembershipConfig {
        m,
        ping_interval,
        ping_timeout,
        suspicion_timeout,
        suspicion_min,
        indirect_checks,
        gossip_fanout,
        push_pull_interval,
        retransmit_mult,
        max_packet_size,
        join_backoff_max,
        dead_retention,
        udp_buffer,
    } = m;
    let d = toml_duration;
    // A JSON string literal is a valid TOML basic string.
    let data_dir = serde_json::to_string(&data_dir.to_string_lossy()).expect("string to JSON");
    format!(
        "data_dir = {data_dir}\n\
         \n\
         [membership]\n\
         m = {m}\n\
         ping_interval = {}\n\
         ping_timeout = {}\n\
         suspicion_timeout = {}\n\
         suspicion_min = {}\n\
         indirect_checks = {indirect_checks}\n\
         gossip_fanout = {gossip_fanout}\n\
         push_pull_interval = {}\n\
         retransmit_mult = {retransmit_mult}\n\
         max_packet_size = {max_packet_size}\n\
         join_backoff_max = {}\n\
         dead_retention = {}\n\
         udp_buffer = {udp_buffer}\n",
        d(ping_interval),
        d(ping_timeout),
        d(suspicion_timeout),
        d(suspicion_min),
        d(push_pull_interval),
        d(join_backoff_max),
        d(dead_retention),
    )
}

/// A duration as a TOML string humantime reads back exactly.
fn toml_duration(d: &Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("\"{}ms\"", d.as_millis())
    } else {
        format!("\"{}us\"", d.as_micros())
    }
}

/// A `[control]` section with every key spelled out.
pub fn control_toml(c: &ControlConfig) -> String {
    let ControlConfig {
        voters,
        heartbeat_interval,
        election_timeout_min,
        election_timeout_max,
        snapshot_every,
        rpc_timeout,
        maintenance_period,
    } = c;
    let d = toml_duration;
    let voters: Vec<String> = voters.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        "\n[control]\n\
         voters = [{}]\n\
         heartbeat_interval = {}\n\
         election_timeout_min = {}\n\
         election_timeout_max = {}\n\
         snapshot_every = {snapshot_every}\n\
         rpc_timeout = {}\n\
         maintenance_period = {}\n",
        voters.join(", "),
        d(heartbeat_interval),
        d(election_timeout_min),
        d(election_timeout_max),
        d(rpc_timeout),
        d(maintenance_period),
    )
}

/// An `[sdfs]` section with every key spelled out (`replicas` only when set).
pub fn sdfs_toml(s: &SdfsConfig) -> String {
    let SdfsConfig {
        replicas,
        write_quorum,
        chunk_size,
        put_timeout,
        repair_bytes_per_sec,
        repair_per_source,
        repair_per_target,
        balance_threshold,
        auto_balance,
        scrub_interval,
        reconcile_interval,
        disk_reserve,
    } = s;
    let d = toml_duration;
    let replicas = replicas.map_or_else(String::new, |r| format!("replicas = {r}\n"));
    format!(
        "\n[sdfs]\n\
         {replicas}\
         write_quorum = {write_quorum}\n\
         chunk_size = {chunk_size}\n\
         put_timeout = {}\n\
         repair_bytes_per_sec = {repair_bytes_per_sec}\n\
         repair_per_source = {repair_per_source}\n\
         repair_per_target = {repair_per_target}\n\
         balance_threshold = {balance_threshold:?}\n\
         auto_balance = {auto_balance}\n\
         scrub_interval = {}\n\
         reconcile_interval = {}\n\
         disk_reserve = {disk_reserve}\n",
        d(put_timeout),
        d(scrub_interval),
        d(reconcile_interval),
    )
}

/// A running `dml-agent`. Dropping it sends SIGKILL and reaps the process; if the thread is
/// panicking (a failed test), the tail of the agent's stderr is printed first.
#[derive(Debug)]
pub struct Agent {
    name: String,
    child: Child,
    addr: SocketAddr,
    id: NodeId,
    dir: PathBuf,
    exit: Option<ExitStatus>,
}

impl Agent {
    /// Starts `dml-agent` (working directory: its own) with its files in `parent/<spec.name>/` and waits for its
    /// `listening <addr> <id>` line.
    ///
    /// The agent gets SIGKILL if the thread that started it exits (`PR_SET_PDEATHSIG`), so a
    /// test process killed by its runner leaves no agents behind. Start agents from a thread
    /// that outlives them: the test's own thread or a tokio worker, not `spawn_blocking`.
    pub async fn start(spec: AgentSpec, parent: &Path) -> Result<Agent> {
        let dir = parent.join(&spec.name);
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("cannot create \"{}\"", dir.display()))?;
        if let Some(d) = &spec.data_dir {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create \"{}\"", d.display()))?;
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, spec.config_file_text(&dir))
            .with_context(|| format!("cannot write \"{}\"", config.display()))?;
        // Appended to, so a restarted agent's log follows its previous life's.
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))?;

        let bin = agent_bin()?;
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        // An agent finds the project's virtualenv (ONNX Runtime) above its
        // binary; built into a target directory outside the checkout
        // (CARGO_TARGET_DIR), it is told where the library is instead.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !bin.starts_with(repo.canonicalize().unwrap_or(repo.clone()))
            && std::env::var_os("ORT_DYLIB_PATH").is_none()
            && let Ok(lib) = dml_agent::infer::runtime::find_dylib(None)
        {
            cmd.env("ORT_DYLIB_PATH", lib);
        }
        cmd.env("DML_KEY_FILE", crate::key::path()?);
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--bind")
            .arg(spec.bind.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--event-log")
            .arg(dir.join("events.jsonl"));
        for i in &spec.introducers {
            cmd.arg("--introducer").arg(i.to_string());
        }
        if spec.no_join {
            cmd.arg("--no-join");
        }
        for n in &spec.nodes {
            cmd.arg("--node").arg(n.to_string());
        }
        for v in &spec.voters {
            cmd.arg("--voter").arg(v.to_string());
        }
        // Relative paths in a config (the default data_dir) land in the agent's directory.
        cmd.args(&spec.extra_args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // SAFETY: the closure only makes one async-signal-safe system call (prctl).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start agent {}", spec.name))?;

        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stdout_log = dir.join("stdout.log");
        std::thread::Builder::new()
            .name(format!("{}-stdout", spec.name))
            .spawn(move || pump_stdout(stdout, tx, &stdout_log))?;

        let mut agent = Agent {
            name: spec.name.clone(),
            child,
            addr: spec.bind,
            id: NodeId::new(spec.bind, 0),
            dir,
            exit: None,
        };
        let line = match tokio::time::timeout(spec.startup_timeout, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = agent.wait_exit(Duration::from_secs(2)).await.ok();
                bail!(
                    "agent {} closed stdout without a listening line (exit: {status:?}); stderr ({}):\n{}",
                    spec.name,
                    agent.stderr_path().display(),
                    agent.stderr_tail(STDERR_TAIL_LINES)
                );
            }
            Err(_) => bail!(
                "agent {} printed no listening line within {:?}; stderr ({}):\n{}",
                spec.name,
                spec.startup_timeout,
                agent.stderr_path().display(),
                agent.stderr_tail(STDERR_TAIL_LINES)
            ),
        };
        let (addr, id) = parse_listening(&line)
            .with_context(|| format!("agent {}: unexpected first line \"{line}\"", spec.name))?;
        agent.addr = addr;
        agent.id = id;
        Ok(agent)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// UDP and TCP address the agent listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity the agent announced at start; after a leave/join or a rejoin the agent
    /// has a newer one (see [`Agent::current_id`]).
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This agent's directory: `config.toml`, `stderr.log`, `stdout.log`, `events.jsonl`, `data/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// An API client with a short timeout (a stopped agent must not hang a test).
    pub fn client(&self) -> Client {
        Client::new(self.addr).with_timeout(API_TIMEOUT)
    }

    /// The agent's identity now, asked over the API.
    pub async fn current_id(&self) -> Result<NodeId> {
        Ok(self
            .client()
            .id()
            .await
            .with_context(|| format!("agent {} ({}): id", self.name, self.addr))?
            .id)
    }

    /// Every complete line of the agent's event log so far.
    pub fn events(&self) -> Result<Vec<Event>> {
        read_events(&self.events_path())
    }

    /// Runs `dml --agent <addr> <args>`.
    pub async fn dml(&self, args: &[&str], timeout: Duration) -> Result<DmlOutput> {
        let addr = self.addr.to_string();
        let mut all = vec!["--agent", addr.as_str()];
        all.extend_from_slice(args);
        run_dml(&all, timeout).await
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig)
            .with_context(|| format!("cannot send {sig} to agent {} (pid {pid})", self.name))
    }

    /// SIGKILL, without waiting: several agents can be killed at the same moment, then reaped.
    pub fn kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn stop(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`Agent::stop`].
    pub fn cont(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM: the agent should announce a graceful leave and exit 0.
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// True until the process has exited.
    pub fn is_running(&mut self) -> bool {
        !matches!(self.try_exit(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = format!("agent {} (pid {}) to exit", self.name, self.child.id());
        wait_for(&name, timeout, EXIT_POLL, async || {
            self.try_exit()?.ok_or_else(|| anyhow!("still running"))
        })
        .await
    }

    /// The last `n` lines of the agent's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agent {} ({}, pid {}): last lines of {}\n{}",
                self.name,
                self.addr,
                self.child.id(),
                self.stderr_path().display(),
                self.stderr_tail(STDERR_TAIL_LINES)
            );
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends the first stdout line through `first`, then copies the rest to `log` so the agent
/// never blocks on a full pipe.
fn pump_stdout(stdout: ChildStdout, first: tokio::sync::oneshot::Sender<String>, log: &Path) {
    let mut lines = BufReader::new(stdout).lines();
    let Some(Ok(line)) = lines.next() else {
        return;
    };
    let _ = first.send(line);
    let Ok(mut out) = File::create(log) else {
        lines.for_each(drop);
        return;
    };
    for line in lines.map_while(Result::ok) {
        let _ = writeln!(out, "{line}");
    }
}

/// Parses `listening <addr> <node-id>`.
pub fn parse_listening(line: &str) -> Result<(SocketAddr, NodeId)> {
    let mut words = line.split_whitespace();
    let (Some("listening"), Some(addr), Some(id), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("expected \"listening <addr> <node-id>\"");
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("\"{addr}\" is not an address"))?;
    let id: NodeId = id.parse().map_err(|e: String| anyhow!(e))?;
    if id.addr != addr {
        bail!("node id {id} does not carry the listening address {addr}");
    }
    Ok((addr, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::config::{Config, Preset};

    #[test]
    fn listening_line_parses() {
        let (a, id) =
            parse_listening("listening 127.0.0.1:8001 127.0.0.1:8001#1764150000123").unwrap();
        assert_eq!(a, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(id.started, 1_764_150_000_123);
        assert!(parse_listening("listening 127.0.0.1:8001").is_err());
        assert!(parse_listening("listening 127.0.0.1:8001 127.0.0.1:8002#1").is_err());
    }

    #[test]
    fn written_config_reads_back_and_validates() {
        let mut m = MembershipConfig::preset(Preset::Local);
        m.ping_timeout = Duration::from_micros(150_500);
        let text = config_toml(&m, Path::new("/tmp/x \"y\"/data"));
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.membership, m);
        assert_eq!(c.data_dir, Path::new("/tmp/x \"y\"/data"));
    }

    #[test]
    fn written_control_and_sdfs_sections_read_back_and_validate() {
        let control = ControlConfig {
            voters: vec!["127.0.0.1:9001".parse().unwrap()],
            election_timeout_min: Duration::from_micros(700_500),
            ..ControlConfig::default()
        };
        let sdfs = SdfsConfig {
            replicas: Some(3),
            write_quorum: 2,
            scrub_interval: Duration::from_secs(2),
            ..SdfsConfig::default()
        };
        let spec = AgentSpec::new("x", MembershipConfig::preset(Preset::Local))
            .data_dir("/tmp/d")
            .control(control.clone())
            .sdfs(sdfs.clone());
        let c = Config::from_toml(&spec.config_file_text(Path::new("/unused"))).unwrap();
        c.validate().unwrap();
        assert_eq!((c.control, c.sdfs), (control, sdfs));
        assert_eq!(c.data_dir, Path::new("/tmp/d"));
        let unset = SdfsConfig::default();
        let text = AgentSpec::new("y", MembershipConfig::preset(Preset::Local))
            .sdfs(unset.clone())
            .config_file_text(Path::new("/a"));
        assert_eq!(Config::from_toml(&text).unwrap().sdfs, unset);
    }
}
