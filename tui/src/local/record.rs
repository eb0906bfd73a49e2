//! What `dml local up` writes into the run directory, and reading it back:
//! `cluster.json`, `agent-<port>.pid` and `agent-<port>.log`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Name of the tmux session `dml local up --tmux` uses.
pub const TMUX_SESSION: &str = "dml";

/// One started agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub port: u16,
    pub addr: SocketAddr,
    pub pid: i32,
    /// When `dml` started it, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub log: PathBuf,
    /// The agent's node id once it answered, e.g. `127.0.0.1:8001#1764150000123`.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where it serves Prometheus metrics, if it does.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// The whole `cluster.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub created_ms: u64,
    pub preset: String,
    pub agent_bin: PathBuf,
    pub introducer: SocketAddr,
    /// Set when the agents run in a tmux session.
    #[serde(default)]
    pub tmux_session: Option<String>,
    /// The cluster key every agent was given.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    pub agents: Vec<AgentRecord>,
}

/// The Prometheus file-based discovery list of the cluster's metrics endpoints.
pub fn targets_file(run_dir: &Path) -> PathBuf {
    run_dir.join("prometheus-targets.json")
}

pub fn cluster_file(run_dir: &Path) -> PathBuf {
    run_dir.join("cluster.json")
}

pub fn pid_file(run_dir: &Path, port: u16) -> PathBuf {
    run_dir.join(format!("agent-{port}.pid"))
}

pub fn log_file(run_dir: &Path, port: u16) -> PathBuf {
    run_dir.join(format!("agent-{port}.log"))
}

pub fn data_dir(run_dir: &Path, port: u16) -> PathBuf {
    run_dir.join(format!("data-{port}"))
}

impl ClusterRecord {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// Reads `cluster.json`; `Ok(None)` when there is none.
    pub fn load(run_dir: &Path) -> Result<Option<Self>> {
        let path = cluster_file(run_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .with_context(|| format!("{} is not a cluster record", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes `cluster.json` atomically (temp file, then rename).
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let path = cluster_file(run_dir);
        let tmp = run_dir.join("cluster.json.tmp");
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Pid files in the run directory as (port, pid), sorted by port; unreadable ones are skipped.
pub fn pid_files(run_dir: &Path) -> Vec<(u16, i32)> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u16, i32)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let port = parse_pid_file_name(&name)?;
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((port, pid))
        })
        .collect();
    found.sort();
    found
}

/// `agent-8001.pid` -> 8001.
pub fn parse_pid_file_name(name: &str) -> Option<u16> {
    name.strip_prefix("agent-")?
        .strip_suffix(".pid")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterRecord {
        ClusterRecord {
            created_ms: 1_764_150_000_000,
            preset: "local".into(),
            agent_bin: "/x/dml-agent".into(),
            introducer: "127.0.0.1:8001".parse().unwrap(),
            tmux_session: None,
            key_file: None,
            agents: vec![AgentRecord {
                port: 8001,
                addr: "127.0.0.1:8001".parse().unwrap(),
                pid: 4242,
                started_ms: 1_764_150_000_001,
                metrics: None,
                log: ".dml/run/agent-8001.log".into(),
                node_id: Some("127.0.0.1:8001#1764150000123".into()),
            }],
        }
    }

    #[test]
    fn cluster_record_round_trips_through_json() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(ClusterRecord::parse(&text).unwrap(), r);
    }

    #[test]
    fn cluster_record_parses_a_hand_written_file_without_optional_fields() {
        let text = r#"{"created_ms": 1, "preset": "lan", "agent_bin": "dml-agent",
            "introducer": "127.0.0.1:9000",
            "agents": [{"port": 9000, "addr": "127.0.0.1:9000", "pid": 7,
                        "started_ms": 2, "log": "l"}]}"#;
        let r = ClusterRecord::parse(text).unwrap();
        assert_eq!(r.agents[0].pid, 7);
        assert_eq!(r.agents[0].node_id, None);
        assert_eq!(r.tmux_session, None);
        assert!(ClusterRecord::parse("{\"agents\": 3}").is_err());
    }

    #[test]
    fn save_then_load_gives_the_same_record() {
        let dir = std::env::temp_dir().join(format!("dml-record-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(ClusterRecord::load(&dir).unwrap(), None);
        sample().save(&dir).unwrap();
        assert_eq!(ClusterRecord::load(&dir).unwrap(), Some(sample()));
        std::fs::write(pid_file(&dir, 8002), "99\n").unwrap();
        std::fs::write(pid_file(&dir, 8001), "98").unwrap();
        std::fs::write(dir.join("agent-x.pid"), "1").unwrap();
        assert_eq!(pid_files(&dir), vec![(8001, 98), (8002, 99)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_file_names_give_their_port() {
        assert_eq!(parse_pid_file_name("agent-8001.pid"), Some(8001));
        assert_eq!(parse_pid_file_name("agent-8001.log"), None);
        assert_eq!(parse_pid_file_name("agent-99999.pid"), None);
    }
}
