//! The agent's TOML config.
//!
//! A file names an optional `preset` (`local`, `lan`, `wan`); every key it leaves
//! out takes the preset's value. Unknown keys are an error, and [`Config::validate`]
//! names the key and the value it rejects.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Parameter sets tuned for a network class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// One machine, loopback: fast timers.
    Local,
    /// A data-centre LAN: 1 s probes (the default).
    #[default]
    Lan,
    /// Hosts across a WAN: slower timers, more tolerance.
    Wan,
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Preset::Local),
            "lan" => Ok(Preset::Lan),
            "wan" => Ok(Preset::Wan),
            _ => Err(Error::Config {
                key: "preset".into(),
                value: s.into(),
                reason: "expected one of local, lan, wan".into(),
            }),
        }
    }
}

/// Failure-detector parameters. Names follow the original system where it had one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// Ring successors each member probes every interval, and so the number of
    /// simultaneous failures detection survives (the original's M).
    pub m: usize,
    /// Time between probe rounds (the original's PING_DURATION).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Wait for a direct ack before asking others to probe (PING_TIMEOOUT).
    /// The indirect probes get the same time again.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Longest a suspect may stay unrefuted before it is declared failed, with
    /// no other monitor confirming (CLEANUP_TIME).
    #[serde(with = "humantime_serde")]
    pub suspicion_timeout: Duration,
    /// Shortest suspicion, reached once every other monitor has confirmed it.
    #[serde(with = "humantime_serde")]
    pub suspicion_min: Duration,
    /// Members asked to probe a target that missed its direct ack (k).
    pub indirect_checks: usize,
    /// Random members that pending updates are also sent to each round, so
    /// news spreads in O(log n) rounds, not around the ring (0: piggyback only).
    pub gossip_fanout: usize,
    /// Period of the full-state exchange with one random member.
    #[serde(with = "humantime_serde")]
    pub push_pull_interval: Duration,
    /// An update is piggybacked `retransmit_mult * ceil(log2(n + 1))` times.
    pub retransmit_mult: usize,
    /// Largest datagram sent; piggybacked updates are cut to fit.
    pub max_packet_size: usize,
    /// Longest wait between two join attempts (the wait doubles from `ping_interval`).
    #[serde(with = "humantime_serde")]
    pub join_backoff_max: Duration,
    /// How long a failed or departed identity is remembered, so stale gossip about it is ignored.
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
    /// SO_RCVBUF and SO_SNDBUF of the UDP socket, in bytes.
    pub udp_buffer: usize,
}

impl MembershipConfig {
    pub fn preset(p: Preset) -> Self {
        let ms = Duration::from_millis;
        match p {
            Preset::Local => Self {
                m: 3,
                ping_interval: ms(500),
                ping_timeout: ms(200),
                suspicion_timeout: ms(2000),
                suspicion_min: ms(800),
                indirect_checks: 3,
                gossip_fanout: 3,
                push_pull_interval: ms(10_000),
                retransmit_mult: 3,
                max_packet_size: 1400,
                join_backoff_max: ms(5_000),
                dead_retention: ms(60_000),
                udp_buffer: 1 << 20,
            },
            Preset::Lan => Self {
                m: 3,
                ping_interval: ms(1000),
                ping_timeout: ms(400),
                suspicion_timeout: ms(3000),
                suspicion_min: ms(1000),
                indirect_checks: 3,
                gossip_fanout: 3,
                push_pull_interval: ms(30_000),
                retransmit_mult: 3,
                max_packet_size: 1400,
                join_backoff_max: ms(10_000),
                dead_retention: ms(120_000),
                udp_buffer: 1 << 20,
            },
            Preset::Wan => Self {
                m: 3,
                ping_interval: ms(3000),
                ping_timeout: ms(1200),
                suspicion_timeout: ms(12_000),
                suspicion_min: ms(4000),
                indirect_checks: 4,
                gossip_fanout: 3,
                push_pull_interval: ms(60_000),
                retransmit_mult: 4,
                max_packet_size: 1200,
                join_backoff_max: ms(30_000),
                dead_retention: ms(300_000),
                udp_buffer: 1 << 20,
            },
        }
    }
}

/// Agent API limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Hard limit on one TCP frame, in bytes.
    pub max_frame: usize,
    /// Simultaneous API connections; more are refused.
    pub max_connections: usize,
    /// Time a new connection gets to finish the key handshake; it holds a
    /// handshake place (not a connection slot) meanwhile.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_frame: crate::framing::DEFAULT_MAX_FRAME,
            max_connections: 256,
            handshake_timeout: crate::conn::ACCEPT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The replicated control plane (Raft among the voters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Agents that hold a Raft replica. Empty: the first `2m + 1` of `nodes`
    /// (all of them if fewer), so `m` simultaneous failures leave a majority.
    pub voters: Vec<SocketAddr>,
    /// Raft heartbeat period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A follower that hears no heartbeat for a random time in
    /// [`election_timeout_min`, `election_timeout_max`] starts an election.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Entries between two snapshots; the log is purged up to each snapshot.
    pub snapshot_every: u64,
    /// Time allowed for one Raft RPC.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// Period of the leader's maintenance pass: expiry of stale puts, repair
    /// of under-replicated versions, storing finished jobs' output
    /// (a membership failure or leave also starts one at once).
    #[serde(with = "humantime_serde")]
    pub maintenance_period: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            voters: Vec::new(),
            heartbeat_interval: ms(100),
            election_timeout_min: ms(500),
            election_timeout_max: ms(1000),
            snapshot_every: 1000,
            rpc_timeout: ms(1000),
            maintenance_period: ms(1000),
        }
    }
}

/// The replicated, versioned file store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SdfsConfig {
    /// Copies of each version; unset means `membership.m + 1`.
    pub replicas: Option<usize>,
    /// Durable copies needed before a version commits.
    pub write_quorum: usize,
    /// Bytes per data frame on the put and get streams.
    pub chunk_size: usize,
    /// A put with no progress for this long is aborted and its space freed.
    #[serde(with = "humantime_serde")]
    pub put_timeout: Duration,
    /// Bandwidth repair may use on one agent, in bytes per second.
    pub repair_bytes_per_sec: u64,
    /// Repair copies read from one agent at the same time.
    pub repair_per_source: usize,
    /// Repair copies written to one agent at the same time.
    pub repair_per_target: usize,
    /// How far one alive agent's bytes may stray from an even spread (as a
    /// fraction of the mean) before the leader moves copies toward the
    /// placement the alive agents give; an agent joining moves them too.
    pub balance_threshold: f64,
    /// Whether the leader balances on its own (on a join, or past the
    /// threshold); when off, only `dml sdfs balance` moves copies.
    pub auto_balance: bool,
    /// Period of the on-disk checksum scrub.
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
    /// Period of the comparison of the disk with the committed metadata.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Bytes SDFS leaves free on the data directory's file system: a copy that would
    /// leave less is refused as a full disk, so the Raft log (same directory) can still
    /// grow when SDFS data is what fills the disk. 0 turns the check off.
    pub disk_reserve: u64,
}

impl Default for SdfsConfig {
    fn default() -> Self {
        Self {
            replicas: None,
            write_quorum: 3,
            chunk_size: 1 << 20,
            put_timeout: Duration::from_secs(60),
            repair_bytes_per_sec: 200 << 20,
            repair_per_source: 8,
            repair_per_target: 8,
            balance_threshold: 0.1,
            auto_balance: true,
            scrub_interval: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(30),
            disk_reserve: 64 << 20,
        }
    }
}

/// Inference workers and the leader's scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Model registry file; unset means the one built into the binary.
    pub registry: Option<PathBuf>,
    /// ONNX Runtime's shared library. Unset: `ORT_DYLIB_PATH`, else the
    /// project virtualenv (`.venv`) beside the binary or the working directory.
    pub ort_dylib: Option<PathBuf>,
    /// Whether this agent runs queries.
    pub worker: bool,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Shortest lease of a query; the leader stretches it for slow models.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Queries that the agents of this host run at the same time (each holds
    /// a slot). Unset: the host's cores divided by `intra_threads`; 0: no limit.
    pub host_slots: Option<usize>,
    /// Directory where the agents of a host share their slots. Unset:
    /// `/dev/shm/dml-compute-slots-<uid>` (else under the temporary directory).
    pub slot_dir: Option<PathBuf>,
    /// Time a worker allows for reading one image (or the model) from a
    /// replica before it tries the next.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            registry: None,
            ort_dylib: None,
            worker: true,
            intra_threads: 1,
            lease_timeout: Duration::from_secs(10),
            host_slots: None,
            slot_dir: None,
            fetch_timeout: Duration::from_secs(20),
        }
    }
}

/// The Prometheus endpoint (`GET /metrics`, `/healthz`, `/readyz`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener; unset: no endpoint. An address other
    /// hosts can reach is warned about at start.
    pub bind: Option<SocketAddr>,
    /// File holding a bearer token (mode 0600, at least 16 visible ASCII
    /// characters); set, `/metrics` answers only requests with
    /// `Authorization: Bearer <token>`. `/healthz` and `/readyz` stay open.
    /// Unset: no token.
    pub token_file: Option<PathBuf>,
}

/// The cluster key (`dml keygen`) and what it protects; see [`crate::auth`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// File holding the cluster key (hex, mode 0600). `--key-file` and
    /// `DML_KEY_FILE` override it; an agent without a key does not start.
    /// Once `dml keyring` changed the cluster's keys, the keyring the agent
    /// keeps in its data directory wins and this key only seeds a new one.
    pub key_file: Option<PathBuf>,
    /// Encrypt TCP connections (API, Raft, SDFS chains, telemetry) with
    /// Noise. `false` keeps them authenticated but in clear text, to measure
    /// the cost of encryption; every agent and client of a cluster must
    /// agree, a mismatch fails the handshake naming this key. The local
    /// socket is never encrypted. Default true.
    pub encrypt_tcp: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            encrypt_tcp: true,
        }
    }
}

/// The whole agent config, every value resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub preset: Preset,
    /// UDP and TCP address; port 0 picks a free port (same number for both).
    pub bind: SocketAddr,
    /// Agents to join through. An agent listed here that finds no one else
    /// starts the cluster alone.
    pub introducers: Vec<SocketAddr>,
    /// Where the agent keeps its state.
    pub data_dir: PathBuf,
    /// Every agent of the cluster, as in the original's node list; the
    /// default voters are taken from it.
    pub nodes: Vec<SocketAddr>,
    pub membership: MembershipConfig,
    pub api: ApiConfig,
    pub control: ControlConfig,
    pub sdfs: SdfsConfig,
    pub inference: InferenceConfig,
    pub metrics: MetricsConfig,
    pub security: SecurityConfig,
}

/// What a file may say: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    preset: Option<Preset>,
    bind: Option<SocketAddr>,
    introducers: Option<Vec<SocketAddr>>,
    data_dir: Option<PathBuf>,
    nodes: Option<Vec<SocketAddr>>,
    membership: Option<RawMembership>,
    api: Option<RawApi>,
    control: Option<ControlConfig>,
    sdfs: Option<SdfsConfig>,
    inference: Option<InferenceConfig>,
    metrics: Option<MetricsConfig>,
    security: Option<SecurityConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    m: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    ping_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    suspicion_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    suspicion_min: Option<Duration>,
    indirect_checks: Option<usize>,
    gossip_fanout: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    push_pull_interval: Option<Duration>,
    retransmit_mult: Option<usize>,
    max_packet_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    join_backoff_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dead_retention: Option<Duration>,
    udp_buffer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    max_frame: Option<usize>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    handshake_timeout: Option<Duration>,
}

/// Default agent port, as in the original's first node.
pub const DEFAULT_PORT: u16 = 8001;

impl Config {
    /// The preset's values on the default address.
    pub fn preset(preset: Preset) -> Self {
        Self {
            preset,
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            introducers: Vec::new(),
            data_dir: PathBuf::from(".dml/data"),
            nodes: Vec::new(),
            membership: MembershipConfig::preset(preset),
            api: ApiConfig::default(),
            control: ControlConfig::default(),
            sdfs: SdfsConfig::default(),
            inference: InferenceConfig::default(),
            metrics: MetricsConfig::default(),
            security: SecurityConfig::default(),
        }
    }

    /// Parses TOML text; keys left out take the named preset's values.
    /// The result is not yet validated.
    pub fn from_toml(text: &str) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: "<text>".into(),
            reason: e.to_string(),
        })?;
        let mut c = Config::preset(raw.preset.unwrap_or_default());
        if let Some(v) = raw.bind {
            c.bind = v;
        }
        if let Some(v) = raw.introducers {
            c.introducers = v;
        }
        if let Some(v) = raw.data_dir {
            c.data_dir = v;
        }
        if let Some(m) = raw.membership {
            let t = &mut c.membership;
            macro_rules! take {
                ($($f:ident),*) => { $( if let Some(v) = m.$f { t.$f = v; } )* };
            }
            take!(
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
                udp_buffer
            );
        }
        if let Some(v) = raw.nodes {
            c.nodes = v;
        }
        if let Some(v) = raw.control {
            c.control = v;
        }
        if let Some(v) = raw.sdfs {
            c.sdfs = v;
        }
        if let Some(v) = raw.inference {
            c.inference = v;
        }
        if let Some(v) = raw.metrics {
            c.metrics = v;
        }
        if let Some(v) = raw.security {
            c.security = v;
        }
        // An unset write quorum follows the replica count (itself `m + 1` when
        // unset): a majority of the copies, 3 of the default 4.
        let quorum_set = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("sdfs")?.get("write_quorum").cloned())
            .is_some();
        if !quorum_set {
            c.sdfs.write_quorum = c.replicas() / 2 + 1;
        }
        if let Some(a) = raw.api {
            if let Some(v) = a.max_frame {
                c.api.max_frame = v;
            }
            if let Some(v) = a.max_connections {
                c.api.max_connections = v;
            }
            if let Some(v) = a.handshake_timeout {
                c.api.handshake_timeout = v;
            }
        }
        Ok(c)
    }

    /// The Raft voters: `control.voters`, or else the first `2m + 1` of `nodes`.
    pub fn voters(&self) -> Vec<SocketAddr> {
        if !self.control.voters.is_empty() {
            return self.control.voters.clone();
        }
        self.nodes
            .iter()
            .take(2 * self.membership.m + 1)
            .copied()
            .collect()
    }

    /// Copies of each SDFS version: `sdfs.replicas`, or else `m + 1`.
    pub fn replicas(&self) -> usize {
        self.sdfs.replicas.unwrap_or(self.membership.m + 1)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let c = Self::from_toml(&text).map_err(|e| match e {
            Error::ConfigFile { reason, .. } => Error::ConfigFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the invariants the agent relies on; the error names the key and value.
    pub fn validate(&self) -> Result<()> {
        let m = &self.membership;
        if m.m == 0 || m.m > 16 {
            return bad("membership.m", m.m.to_string(), "must be between 1 and 16");
        }
        if m.ping_interval < Duration::from_millis(10) {
            return bad(
                "membership.ping_interval",
                d(m.ping_interval),
                "must be at least 10ms",
            );
        }
        if m.ping_timeout.is_zero() || m.ping_timeout * 2 > m.ping_interval {
            return bad(
                "membership.ping_timeout",
                d(m.ping_timeout),
                "must be above zero and at most half of membership.ping_interval (the indirect probes need the other half)",
            );
        }
        if m.suspicion_min.is_zero() {
            return bad(
                "membership.suspicion_min",
                d(m.suspicion_min),
                "must be above zero",
            );
        }
        if m.suspicion_timeout < m.suspicion_min {
            return bad(
                "membership.suspicion_timeout",
                d(m.suspicion_timeout),
                "must be at least membership.suspicion_min",
            );
        }
        if m.indirect_checks > 16 {
            return bad(
                "membership.indirect_checks",
                m.indirect_checks.to_string(),
                "must be at most 16",
            );
        }
        if m.gossip_fanout > 16 {
            return bad(
                "membership.gossip_fanout",
                m.gossip_fanout.to_string(),
                "must be at most 16",
            );
        }
        if m.push_pull_interval < m.ping_interval {
            return bad(
                "membership.push_pull_interval",
                d(m.push_pull_interval),
                "must be at least membership.ping_interval",
            );
        }
        if m.retransmit_mult == 0 || m.retransmit_mult > 32 {
            return bad(
                "membership.retransmit_mult",
                m.retransmit_mult.to_string(),
                "must be between 1 and 32",
            );
        }
        if !(512..=65_000).contains(&m.max_packet_size) {
            return bad(
                "membership.max_packet_size",
                m.max_packet_size.to_string(),
                "must be between 512 and 65000 bytes",
            );
        }
        if m.join_backoff_max < m.ping_interval {
            return bad(
                "membership.join_backoff_max",
                d(m.join_backoff_max),
                "must be at least membership.ping_interval",
            );
        }
        if m.dead_retention < m.suspicion_timeout {
            return bad(
                "membership.dead_retention",
                d(m.dead_retention),
                "must be at least membership.suspicion_timeout",
            );
        }
        if !(4096..=(64 << 20)).contains(&m.udp_buffer) {
            return bad(
                "membership.udp_buffer",
                m.udp_buffer.to_string(),
                "must be between 4096 and 67108864 bytes",
            );
        }
        if !(1024..=(256 << 20)).contains(&self.api.max_frame) {
            return bad(
                "api.max_frame",
                self.api.max_frame.to_string(),
                "must be between 1024 and 268435456 bytes",
            );
        }
        if self.api.max_connections == 0 {
            return bad(
                "api.max_connections",
                self.api.max_connections.to_string(),
                "must be above zero",
            );
        }
        let h = self.api.handshake_timeout;
        if h < Duration::from_millis(100) || h > Duration::from_secs(60) {
            return bad(
                "api.handshake_timeout",
                d(h),
                "must be between 100ms and 60s",
            );
        }
        self.validate_control()?;
        self.validate_sdfs()?;
        self.validate_inference()?;
        self.validate_metrics()?;
        if self.bind.ip().is_unspecified() && !self.introducers.is_empty() {
            return bad(
                "bind",
                self.bind.to_string(),
                "must be a concrete address other members can reach, not a wildcard",
            );
        }
        for i in &self.introducers {
            if i.port() == 0 || i.ip().is_unspecified() {
                return bad("introducers", i.to_string(), "must be a reachable address");
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_control(&self) -> Result<()> {
        let c = &self.control;
        if c.heartbeat_interval.is_zero() {
            return bad(
                "control.heartbeat_interval",
                d(c.heartbeat_interval),
                "must be above zero",
            );
        }
        if c.election_timeout_min <= c.heartbeat_interval * 2 {
            return bad(
                "control.election_timeout_min",
                d(c.election_timeout_min),
                "must be more than twice control.heartbeat_interval",
            );
        }
        if c.election_timeout_max <= c.election_timeout_min {
            return bad(
                "control.election_timeout_max",
                d(c.election_timeout_max),
                "must be above control.election_timeout_min",
            );
        }
        if c.snapshot_every == 0 {
            return bad("control.snapshot_every", "0".into(), "must be above zero");
        }
        if c.rpc_timeout.is_zero() {
            return bad(
                "control.rpc_timeout",
                d(c.rpc_timeout),
                "must be above zero",
            );
        }
        let mp = c.maintenance_period;
        if mp < Duration::from_millis(100) || mp > Duration::from_secs(60) {
            return bad(
                "control.maintenance_period",
                d(mp),
                "must be between 100ms and 60s",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &c.voters {
            if v.port() == 0 || v.ip().is_unspecified() {
                return bad(
                    "control.voters",
                    v.to_string(),
                    "must be a reachable address",
                );
            }
            if !seen.insert(*v) {
                return bad("control.voters", v.to_string(), "is listed twice");
            }
        }
        Ok(())
    }

    fn validate_metrics(&self) -> Result<()> {
        let Some(b) = self.metrics.bind else {
            return Ok(());
        };
        if b.port() != 0
            && b.port() == self.bind.port()
            && (b.ip() == self.bind.ip()
                || b.ip().is_unspecified()
                || self.bind.ip().is_unspecified())
        {
            return bad(
                "metrics.bind",
                b.to_string(),
                "must not be the agent's own port (bind)",
            );
        }
        Ok(())
    }

    fn validate_inference(&self) -> Result<()> {
        let i = &self.inference;
        if i.intra_threads == 0 || i.intra_threads > 256 {
            return bad(
                "inference.intra_threads",
                i.intra_threads.to_string(),
                "must be between 1 and 256",
            );
        }
        if i.lease_timeout < Duration::from_secs(1) {
            return bad(
                "inference.lease_timeout",
                d(i.lease_timeout),
                "must be at least 1s",
            );
        }
        if i.fetch_timeout < Duration::from_secs(1) {
            return bad(
                "inference.fetch_timeout",
                d(i.fetch_timeout),
                "must be at least 1s",
            );
        }
        if let Some(p) = &i.registry
            && p.as_os_str().is_empty()
        {
            return bad("inference.registry", String::new(), "must not be empty");
        }
        if let Some(n) = i.host_slots
            && n > 1024
        {
            return bad(
                "inference.host_slots",
                n.to_string(),
                "must be at most 1024 (0 turns the limit off)",
            );
        }
        if let Some(p) = &i.slot_dir
            && p.as_os_str().is_empty()
        {
            return bad("inference.slot_dir", String::new(), "must not be empty");
        }
        Ok(())
    }

    fn validate_sdfs(&self) -> Result<()> {
        let s = &self.sdfs;
        let replicas = self.replicas();
        if replicas == 0 || replicas > 32 {
            return bad(
                "sdfs.replicas",
                replicas.to_string(),
                "must be between 1 and 32",
            );
        }
        if s.write_quorum == 0 || s.write_quorum > replicas {
            let from = match s.replicas {
                Some(_) => "sdfs.replicas".to_string(),
                None => format!(
                    "membership.m + 1, as sdfs.replicas is unset; m = {}",
                    self.membership.m
                ),
            };
            return bad(
                "sdfs.write_quorum",
                s.write_quorum.to_string(),
                format!(
                    "must be between 1 and the replica count, {replicas} ({from}); lower sdfs.write_quorum or raise sdfs.replicas"
                ),
            );
        }
        if !(4096..=(8 << 20)).contains(&s.chunk_size) {
            return bad(
                "sdfs.chunk_size",
                s.chunk_size.to_string(),
                "must be between 4096 and 8388608 bytes",
            );
        }
        if s.put_timeout < Duration::from_secs(1) {
            return bad("sdfs.put_timeout", d(s.put_timeout), "must be at least 1s");
        }
        if s.repair_bytes_per_sec < (1 << 20) {
            return bad(
                "sdfs.repair_bytes_per_sec",
                s.repair_bytes_per_sec.to_string(),
                "must be at least 1048576",
            );
        }
        if s.repair_per_source == 0 {
            return bad("sdfs.repair_per_source", "0".into(), "must be above zero");
        }
        if s.repair_per_target == 0 {
            return bad("sdfs.repair_per_target", "0".into(), "must be above zero");
        }
        if !(s.balance_threshold > 0.0 && s.balance_threshold <= 10.0) {
            return bad(
                "sdfs.balance_threshold",
                s.balance_threshold.to_string(),
                "must be above 0 and at most 10",
            );
        }
        if s.scrub_interval < Duration::from_secs(1) {
            return bad(
                "sdfs.scrub_interval",
                d(s.scrub_interval),
                "must be at least 1s",
            );
        }
        if s.reconcile_interval < Duration::from_secs(1) {
            return bad(
                "sdfs.reconcile_interval",
                d(s.reconcile_interval),
                "must be at least 1s",
            );
        }
        Ok(())
    }
}

/// The error for `key` holding the unacceptable `value`.
fn bad(key: &str, value: String, reason: impl Into<String>) -> Result<()> {
    Err(Error::Config {
        key: key.into(),
        value,
        reason: reason.into(),
    })
}

/// A duration as an operator would write it in the file.
fn d(v: Duration) -> String {
    humantime_serde::re::humantime::format_duration(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for p in [Preset::Local, Preset::Lan, Preset::Wan] {
            Config::preset(p).validate().unwrap();
        }
    }

    #[test]
    fn file_overrides_preset_and_keeps_the_rest() {
        let c =
            Config::from_toml("preset = \"wan\"\n[membership]\nm = 4\nping_interval = \"2s\"\n")
                .unwrap();
        assert_eq!(c.membership.m, 4);
        assert_eq!(c.membership.ping_interval, Duration::from_secs(2));
        assert_eq!(
            c.membership.suspicion_timeout,
            MembershipConfig::preset(Preset::Wan).suspicion_timeout
        );
    }

    #[test]
    fn voters_default_to_2m_plus_1_nodes_and_replicas_to_m_plus_1() {
        let nodes: Vec<String> = (1..=10)
            .map(|i| format!("\"127.0.0.1:{}\"", 8000 + i))
            .collect();
        let c = Config::from_toml(&format!(
            "nodes = [{}]\n[sdfs]\nwrite_quorum = 2\n",
            nodes.join(",")
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.voters().len(), 7);
        assert_eq!(c.replicas(), 4);
        assert_eq!(c.sdfs.write_quorum, 2);
        assert_eq!(c.sdfs.chunk_size, SdfsConfig::default().chunk_size);
        let e = Config::from_toml("[sdfs]\nwrite_quorum = 5\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("sdfs.write_quorum"), "{e}");
        assert!(e.to_string().contains("membership.m"), "{e}");
        let e = Config::from_toml("[sdfs]\nreplicas = 2\nwrite_quorum = 3\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sdfs.write_quorum") && e.contains("sdfs.replicas"),
            "{e}"
        );
        // An unset quorum follows m (through the replica count): a majority of the copies.
        for (m, quorum) in [(1, 2), (2, 2), (3, 3), (5, 4)] {
            let c = Config::from_toml(&format!("[membership]\nm = {m}\n")).unwrap();
            c.validate().unwrap();
            assert_eq!(
                (c.replicas(), c.sdfs.write_quorum),
                (m + 1, quorum),
                "m = {m}"
            );
        }
        let c = Config::from_toml("[sdfs]\nreplicas = 5\n").unwrap();
        assert_eq!(c.sdfs.write_quorum, 3);
        let e = Config::from_toml("[control]\nvoterz = []\n").unwrap_err();
        assert!(e.to_string().contains("voterz"), "{e}");
    }

    #[test]
    fn metrics_bind_is_optional_and_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.metrics.bind, None);
        let c = Config::from_toml("[metrics]\nbind = \"127.0.0.1:9101\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.metrics.bind, Some("127.0.0.1:9101".parse().unwrap()));
        let e = Config::from_toml("[metrics]\nbind = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("bind"), "{e}");
        let e = Config::from_toml("[metrics]\nbnd = \"127.0.0.1:9101\"\n").unwrap_err();
        assert!(e.to_string().contains("bnd"), "{e}");
        let e =
            Config::from_toml("bind = \"127.0.0.1:8001\"\n[metrics]\nbind = \"127.0.0.1:8001\"\n")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("metrics.bind") && e.contains("127.0.0.1:8001"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let e = Config::from_toml("[membership]\npingg_interval = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("pingg_interval"), "{e}");
    }

    #[test]
    fn validate_names_key_and_value() {
        let mut c = Config::preset(Preset::Lan);
        c.membership.ping_timeout = Duration::from_millis(900);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("membership.ping_timeout") && e.contains("900ms"),
            "{e}"
        );
        let mut c = Config::preset(Preset::Lan);
        c.membership.m = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("membership.m") && e.contains("\"0\""), "{e}");
        let mut c = Config::preset(Preset::Lan);
        c.inference.host_slots = Some(5000);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("inference.host_slots") && e.contains("5000"),
            "{e}"
        );
    }
}
