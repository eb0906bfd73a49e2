//! `assets/tmux/dml-tmux.sh` end to end: it starts 5 agents in a tmux server
//! of the test's own, they elect a control-plane leader, a put reads back,
//! and a tiny job runs to the end. `-k` stops them.
//!
//! Needs tmux (installed by `scripts/setup.sh`) and the binaries
//! (`cargo build --workspace --bins`).

use anyhow::{Context, Result, bail};
use dml_tests::TestDir;
use dml_tests::bins::{agent_bin, dml_bin};
use dml_tests::infer::{small_images, tiny_model};
use dml_tests::ports::free_fixed_addr;
use dml_tests::sdfs::cluster_slot;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const AGENTS: u16 = 5;
/// Time for the agents to elect a leader, or for the job to finish.
const SETTLE: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tmux/dml-tmux.sh")
}

/// A base port with the `AGENTS` ports from it free for TCP and UDP.
fn free_range() -> Result<u16> {
    for _ in 0..200 {
        let base = free_fixed_addr()?.port();
        let free = (0..AGENTS).all(|i| {
            base.checked_add(i).is_some_and(|p| {
                let a = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                TcpListener::bind(a).is_ok() && UdpSocket::bind(a).is_ok()
            })
        });
        if free {
            return Ok(base);
        }
    }
    bail!("no {AGENTS} consecutive free ports")
}

/// The launcher's agents, stopped with `-k` (and their tmux server killed) on drop.
struct Launched {
    socket: String,
    dir: TestDir,
    base: u16,
}

impl Launched {
    fn start() -> Result<Self> {
        let dir = TestDir::new("tmux-launcher")?;
        let base = free_range()?;
        let socket = format!("dml-launcher-test-{}", std::process::id());
        let l = Self { socket, dir, base };
        let out = l.script(&[
            "-n",
            &AGENTS.to_string(),
            "-p",
            &base.to_string(),
            "-b",
            agent_bin()?.to_str().context("agent path")?,
            "-d",
            l.dir.path().to_str().context("dir")?,
            "-s",
            "agents",
        ])?;
        if !out.status.success() {
            bail!(
                "dml-tmux.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(l)
    }

    fn script(&self, args: &[&str]) -> Result<Output> {
        Command::new("bash")
            .arg(script())
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .context("cannot run dml-tmux.sh")
    }

    /// `dml --json` through the first agent, with the launcher's key.
    fn dml(&self, args: &[&str]) -> Result<Output> {
        let key = self.dir.path().join("cluster.key");
        Command::new(dml_bin()?)
            .arg("--agent")
            .arg(format!("127.0.0.1:{}", self.base))
            .arg("--key-file")
            .arg(key)
            .arg("--json")
            .args(args)
            .output()
            .context("cannot run dml")
    }

    fn dml_ok(&self, args: &[&str]) -> Result<Value> {
        let out = self.dml(args)?;
        if !out.status.success() {
            bail!(
                "dml {args:?} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(text.trim()).unwrap_or(Value::String(text.into())))
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.script(&["-k", "-s", "agents"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn the_tmux_launcher_starts_a_cluster_that_stores_files_and_runs_jobs() {
    let _slot = cluster_slot().await;
    let l = Launched::start().unwrap();
    let voters = poll("a control-plane leader", || {
        let v = l.dml_ok(&["leader"]).ok()?;
        v["leader"].as_str()?;
        v["voters"].as_array().cloned()
    });
    assert!(!voters.is_empty(), "the launcher configures voters");

    // A put reads back byte-exact.
    let local = l.dir.path().join("hello.txt");
    std::fs::write(&local, b"hello from tmux").unwrap();
    l.dml_ok(&["put", local.to_str().unwrap(), "docs/hello.txt"])
        .unwrap();
    let back = l.dir.path().join("back.txt");
    l.dml_ok(&["get", "docs/hello.txt", back.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), b"hello from tmux");

    // A tiny job over 8 small images runs to the end.
    l.dml_ok(&["put", tiny_model().to_str().unwrap(), "models/tiny.onnx"])
        .unwrap();
    let images = l.dir.path().join("images");
    small_images(&images, 8).unwrap();
    l.dml_ok(&["sdfs", "load", images.to_str().unwrap(), "datasets/sample"])
        .unwrap();
    let v = l.dml_ok(&["submit-job", "tiny", "8"]).unwrap();
    let job = v["job"]
        .as_u64()
        .unwrap_or_else(|| panic!("no job id: {v}"));
    let done = poll("the job to finish", || {
        let jobs = l.dml_ok(&["jobs"]).ok()?;
        let j = jobs.as_array()?.iter().find(|j| j["id"] == job)?.clone();
        assert_ne!(j["state"], "failed", "{j}");
        (j["state"] == "done").then_some(j)
    });
    assert_eq!(done["done"], 8, "{done}");
}
