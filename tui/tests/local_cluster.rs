//! `dml local up|status|stop|kill|start|restart|down` against the real `dml-agent`
//! (built next to `dml`
//! by `cargo build --workspace --bins`; skipped with a note when it is missing
//! outside CI).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const AGENTS: u16 = 3;

fn agent_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_dml")).with_file_name("dml-agent");
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    eprintln!("skipped: {} is not built", p.display());
    None
}

/// The contexts file of this test (`DML_CONFIG`; one per test thread, as the
/// tests run at once), never the user's.
fn config_file() -> PathBuf {
    let test = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-");
    std::env::temp_dir()
        .join(format!(
            "dml-local-test-config-{}-{test}",
            std::process::id()
        ))
        .join("config.toml")
}

fn dml(args: &[&str]) -> Output {
    dml_in(args, Path::new("."), &config_file())
}

/// `dml args` run in `dir` with `config` as its contexts file.
fn dml_in(args: &[&str], dir: &Path, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dml"))
        .args(args)
        .current_dir(dir)
        .env("DML_CONFIG", config)
        .env_remove("DML_KEY_FILE")
        .env_remove("DML_AGENT")
        .env_remove("DML_CONTEXT")
        .output()
        .expect("run dml")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "dml failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// A base port with `n` free TCP and UDP ports after it, spread by pid; tests
/// running at once pass different `slot`s.
fn free_base(n: u16, slot: u16) -> u16 {
    let start = 20_000 + slot * 15_000 + (std::process::id() % 1_000) as u16 * 10;
    (0..200)
        .map(|i| start + i * 3)
        .find(|&b| {
            // The agents' ports and, after them, their metrics ports.
            (b..b + 2 * n).all(|p| {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
            })
        })
        .expect("a free port range")
}

/// Runs `dml local down` on drop, so a failed assertion leaves no agents behind.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = dml(&["local", "down", "--run-dir", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(dir) = config_file().parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pid_running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn up_status_down(tmux: bool) {
    let Some(bin) = agent_bin() else { return };
    let run_dir = std::env::temp_dir().join(format!(
        "dml-local-test-{}-{}",
        std::process::id(),
        if tmux { "tmux" } else { "bg" }
    ));
    let _ = std::fs::remove_dir_all(&run_dir);
    let guard = Down(run_dir.clone());
    let rd = run_dir.to_str().unwrap();
    let base = free_base(AGENTS, u16::from(tmux));
    let (base_s, n_s) = (base.to_string(), AGENTS.to_string());
    let mut args = vec![
        "--json",
        "local",
        "up",
        "-n",
        &n_s,
        "--base-port",
        &base_s,
        "--run-dir",
        rd,
        "--agent-bin",
        bin.to_str().unwrap(),
        "--context",
        if tmux { "local-tmux" } else { "local-bg" },
    ];
    if tmux {
        args.push("--tmux");
    }
    let rec = json_of(&dml(&args));
    let agents = rec["agents"].as_array().unwrap();
    assert_eq!(agents.len(), usize::from(AGENTS));
    let pids: Vec<i64> = agents.iter().map(|a| a["pid"].as_i64().unwrap()).collect();
    for (i, a) in agents.iter().enumerate() {
        let port = base + i as u16;
        assert_eq!(a["port"], port);
        assert!(
            a["node_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("127.0.0.1:{port}#")),
            "{a}"
        );
        assert!(run_dir.join(format!("agent-{port}.pid")).is_file());
        assert!(pid_running(pids[i]));
    }
    assert_eq!(rec["introducer"], format!("127.0.0.1:{base}"));
    assert!(run_dir.join("cluster.json").is_file());

    // A second cluster in the same run directory is refused.
    let again = dml(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has live agents"));

    // Every agent ends up seeing every other one.
    wait_until(
        "all agents to see the whole cluster",
        Duration::from_secs(20),
        || {
            let st = json_of(&dml(&["--json", "local", "status", "--run-dir", rd]));
            st["agents"].as_array().unwrap().iter().all(|a| {
                a["alive"] == true && a["answering"] == true && a["members"] == u64::from(AGENTS)
            })
        },
    );
    assert_eq!(
        rec["key_file"],
        run_dir
            .canonicalize()
            .unwrap()
            .join("cluster.key")
            .to_str()
            .unwrap()
    );
    // `up` made the cluster the current context, so `dml` works from any
    // directory with neither --agent nor --key-file.
    let context = if tmux { "local-tmux" } else { "local-bg" };
    let elsewhere = dml_in(
        &["--context", context, "--json", "members"],
        Path::new("/"),
        &config_file(),
    );
    assert_eq!(
        json_of(&elsewhere).as_array().unwrap().len(),
        usize::from(AGENTS)
    );
    let current = dml_in(&["--json", "members"], Path::new("/"), &config_file());
    assert_eq!(
        json_of(&current).as_array().unwrap().len(),
        usize::from(AGENTS)
    );
    let listed = json_of(&dml(&["--json", "context", "show", context]));
    assert_eq!(listed["context"]["agents"][0], format!("127.0.0.1:{base}"));
    // Other commands need the cluster's key; without it (and no context) they say so.
    let keyless = dml_in(
        &["--agent", &format!("127.0.0.1:{base}"), "members"],
        Path::new("."),
        Path::new("/nonexistent/dml/config.toml"),
    );
    assert!(!keyless.status.success());
    // (Or a stray default key file in the working directory: the wrong key.)
    assert!(
        ["no cluster key", "does not hold cluster key"]
            .iter()
            .any(|m| String::from_utf8_lossy(&keyless.stderr).contains(m)),
        "{}",
        String::from_utf8_lossy(&keyless.stderr)
    );
    let key = run_dir.join("cluster.key");
    let members = json_of(&dml(&[
        "--key-file",
        key.to_str().unwrap(),
        "--json",
        "--agent",
        &format!("127.0.0.1:{base}"),
        "members",
    ]));
    assert_eq!(members.as_array().unwrap().len(), usize::from(AGENTS));

    metrics_are_served(&rec, &run_dir);
    let pids = single_agents(rd, base, pids);

    let down = json_of(&dml(&["--json", "local", "down", "--run-dir", rd]));
    let outcomes: Vec<&str> = down["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    // The third was left stopped by `dml local stop`.
    assert_eq!(outcomes, ["stopped", "stopped", "not running"]);
    for pid in pids {
        assert!(!pid_running(pid), "pid {pid} still runs after down");
    }
    assert!(!run_dir.join("cluster.json").exists());
    assert!(!run_dir.join(format!("agent-{base}.pid")).exists());
    if tmux {
        let has = Command::new("tmux")
            .args(["has-session", "-t", "dml"])
            .output()
            .unwrap();
        assert!(!has.status.success(), "tmux session dml still exists");
    }
    drop(guard);
}

/// Every agent serves `/metrics` where the record says, and the Prometheus
/// targets file lists exactly those addresses.
fn metrics_are_served(rec: &Value, run_dir: &Path) {
    let addrs: Vec<String> = rec["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["metrics"]
                .as_str()
                .expect("a metrics address")
                .to_string()
        })
        .collect();
    for a in &addrs {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(a.as_str()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.contains("\ndml_up 1"), "{a}: {body}");
    }
    let targets: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("prometheus-targets.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(targets[0]["targets"], serde_json::json!(addrs));
}

/// The status of the agent on `port`, as `dml local status` reports it.
fn status_of(rd: &str, port: u16) -> Value {
    let st = json_of(&dml(&["--json", "local", "status", "--run-dir", rd]));
    st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["port"] == port)
        .cloned()
        .unwrap_or_else(|| panic!("no agent {port} in {st}"))
}

/// Live members the first agent sees.
fn seen_by_first(rd: &str, base: u16) -> u64 {
    status_of(rd, base)["members"].as_u64().unwrap_or(0)
}

/// `kill` crashes one agent and the others see it go; `start` brings it back as a
/// new incarnation with its records updated; `restart` replaces another's
/// process; `stop` leaves one stopped; wrong targets are refused. Returns the
/// pids now recorded.
fn single_agents(rd: &str, base: u16, mut pids: Vec<i64>) -> Vec<i64> {
    let (second, third) = (base + 1, base + 2);
    let act = |what: &str, port: u16| {
        json_of(&dml(&[
            "--json",
            "local",
            what,
            &port.to_string(),
            "--run-dir",
            rd,
        ]))
    };
    let killed = act("kill", second);
    assert_eq!(killed["outcome"][0], format!("killed pid {}", pids[1]));
    assert!(!pid_running(pids[1]));
    assert_eq!(status_of(rd, second)["alive"], false);
    wait_until(
        "the others to drop the killed agent",
        Duration::from_secs(30),
        || seen_by_first(rd, base) == u64::from(AGENTS) - 1,
    );

    let running = dml(&["local", "start", &base.to_string(), "--run-dir", rd]);
    assert_eq!(running.status.code(), Some(8), "conflict");
    assert!(String::from_utf8_lossy(&running.stderr).contains("already runs"));
    let unknown = dml(&["local", "stop", "1", "--run-dir", rd]);
    assert_eq!(unknown.status.code(), Some(3), "not found");
    let msg = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        msg.contains("port 1") && msg.contains(&base.to_string()),
        "{msg}"
    );

    let old_id = status_of(rd, second)["node_id"].clone();
    let started = act("start", second);
    let pid = started["pid"].as_i64().unwrap();
    assert!(pid_running(pid) && pid != pids[1]);
    assert_ne!(started["node_id"], old_id, "a new incarnation");
    assert_eq!(
        std::fs::read_to_string(Path::new(rd).join(format!("agent-{second}.pid")))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    pids[1] = pid;
    wait_until(
        "the started agent to rejoin",
        Duration::from_secs(30),
        || seen_by_first(rd, base) == u64::from(AGENTS),
    );

    let restarted = act("restart", third);
    assert_eq!(restarted["outcome"][0], format!("stopped pid {}", pids[2]));
    let pid = restarted["pid"].as_i64().unwrap();
    assert!(pid_running(pid) && !pid_running(pids[2]));
    pids[2] = pid;

    let stopped = act("stop", third);
    assert_eq!(stopped["outcome"][0], format!("stopped pid {pid}"));
    assert!(!pid_running(pid));
    assert_eq!(status_of(rd, third)["alive"], false);
    pids
}

#[test]
fn local_up_status_down_with_background_agents() {
    up_status_down(false);
}

#[test]
fn local_up_status_down_in_tmux() {
    let tmux_ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tmux_ok {
        assert!(std::env::var_os("CI").is_none(), "tmux is not installed");
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let busy = Command::new("tmux")
        .args(["has-session", "-t", "dml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if busy {
        eprintln!("skipped: a tmux session named dml already exists");
        return;
    }
    up_status_down(true);
}
