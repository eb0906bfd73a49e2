//! What runs on a host: the shell scripts `dml cluster` sends over SSH, the
//! systemd unit it installs, and parsing their `key=value` output.
//!
//! Remote layout under the host's directory DIR: `bin/dml-agent`,
//! `agent.toml`, `data/`, `agent.pid`, `launcher` (`systemd UNIT` or
//! `tmux SESSION`), `agent.log` (tmux only; systemd logs to the journal).

use super::ssh::quote;
use std::collections::HashMap;

/// The agent's tmux server socket, in its own directory (`tmux -S
/// DIR/tmux.sock`): the operator's own sessions stay apart, and hosts that
/// share a `/tmp` (containers, namespaces) never share a tmux server.
pub const TMUX_SOCKET: &str = "tmux.sock";

/// The unit or tmux session name of the agent on `port`.
pub fn service_name(port: u16) -> String {
    format!("dml-agent-{port}")
}

/// `key=value` lines into a map (other lines are ignored).
pub fn parse_kv(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Prefix for privileged commands: empty as root, else `sudo -n`.
const SUDO: &str = r#"S=; [ "$(id -u)" = 0 ] || S="sudo -n""#;

/// Creates DIR and reports what `up` needs to know about the host.
pub fn probe(dir: &str) -> String {
    let d = quote(dir);
    format!(
        r#"set -e
mkdir -p {d}/bin {d}/lib {d}/data
cd {d}
echo "dir=$(pwd -P)"
echo "init=$(ps -p 1 -o comm= 2>/dev/null || cat /proc/1/comm)"
echo "uid=$(id -u)"
echo "arch=$(uname -m)"
echo "tmux=$(command -v tmux || true)"
echo "sha256=$(sha256sum bin/dml-agent 2>/dev/null | cut -d' ' -f1)"
echo "ort_sha256=$(sha256sum lib/{ort} 2>/dev/null | cut -d' ' -f1)"
"#,
        ort = dml_shared::ort_lib::DYLIB_PREFIX
    )
}

/// Shell lines that set `l` (launcher record) and `pid` (empty when not running).
fn find_pid() -> String {
    format!(
        r#"{SUDO}
l=$(cat launcher 2>/dev/null || true)
pid=$(cat agent.pid 2>/dev/null || true)
case "$l" in systemd\ *) pid=$($S systemctl show -p MainPID --value "${{l#systemd }}" 2>/dev/null || true) ;; esac
[ "$pid" = 0 ] && pid=
running=0
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < /proc/"$pid"/cmdline | grep -q -- "$(pwd -P)/bin/dml-agent"; then running=1; fi
"#
    )
}

/// Reports launcher, pid and whether the recorded agent runs; when it does not, the last
/// `error: ` line its log (tmux) holds since it was last started: why it exited (a full
/// disk, say).
pub fn state(dir: &str) -> String {
    format!(
        r#"cd {} 2>/dev/null || {{ echo nodir=1; exit 0; }}
{}
echo "launcher=$l"
echo "pid=$pid"
echo "running=$running"
[ "$running" = 1 ] || echo "last_error=$(awk '/^---- started by/ {{ e = "" }} /^error: / {{ e = $0 }} END {{ print e }}' agent.log 2>/dev/null)"
"#,
        quote(dir),
        find_pid()
    )
}

/// Stops the recorded agent with SIGTERM (systemctl stop, or kill -TERM of the
/// pid) so it leaves the group; SIGKILL after `timeout_secs`.
pub fn stop(dir: &str, timeout_secs: u64) -> String {
    let tenths = timeout_secs * 10;
    format!(
        r#"cd {dir} 2>/dev/null || {{ echo outcome=not-running; exit 0; }}
{find}
outcome=not-running
case "$l" in
systemd\ *)
  u=${{l#systemd }}
  if $S systemctl is-active -q "$u"; then $S systemctl stop "$u" && outcome=stopped; fi
  $S systemctl disable -q "$u" 2>/dev/null || true
  ;;
*)
  if [ "$running" = 1 ]; then
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt {tenths} ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; outcome=killed; else outcome=stopped; fi
  fi
  case "$l" in tmux\ *) tmux -S "$(pwd -P)/{TMUX_SOCKET}" kill-session -t "${{l#tmux }}" 2>/dev/null || true ;; esac
  ;;
esac
rm -f agent.pid
echo "pid=$pid"
echo "outcome=$outcome"
"#,
        dir = quote(dir),
        find = find_pid()
    )
}

/// Starts the agent in tmux session `dml-agent-PORT` (socket DIR/tmux.sock), logging to agent.log.
pub fn start_tmux(dir: &str, port: u16) -> String {
    let name = service_name(port);
    format!(
        r#"set -e
cd {dir}
tmux -S "$(pwd -P)/{TMUX_SOCKET}" kill-session -t {name} 2>/dev/null || true
echo "---- started by dml cluster up at $(date -u)" >> agent.log
tmux -S "$(pwd -P)/{TMUX_SOCKET}" new-session -d -s {name} -c "$(pwd -P)" "exec $(pwd -P)/bin/dml-agent --config $(pwd -P)/agent.toml >>$(pwd -P)/agent.log 2>&1"
tmux -S "$(pwd -P)/{TMUX_SOCKET}" list-panes -t {name} -F '#{{pane_pid}}' > agent.pid || {{ echo "the agent exited at once:"; tail -n 20 agent.log; exit 1; }}
echo "tmux {name}" > launcher
echo "pid=$(cat agent.pid)"
"#,
        dir = quote(dir)
    )
}

/// Installs DIR/UNIT.service and (re)starts it; `systemctl restart` returns
/// once the agent sent READY=1.
pub fn start_systemd(dir: &str, port: u16) -> String {
    let name = service_name(port);
    format!(
        r#"set -e
cd {dir}
{SUDO}
$S install -m 644 {name}.service /etc/systemd/system/{name}.service
$S systemctl daemon-reload
$S systemctl enable -q {name}
$S systemctl restart {name} || {{ $S journalctl -u {name} -n 20 --no-pager; exit 1; }}
echo "systemd {name}" > launcher
pid=$($S systemctl show -p MainPID --value {name})
echo "$pid" > agent.pid
echo "pid=$pid"
"#,
        dir = quote(dir)
    )
}

/// The last log lines of the agent (agent.log, or the journal under systemd).
pub fn log_tail(dir: &str, port: u16) -> String {
    format!(
        r#"cd {} 2>/dev/null || exit 0
{SUDO}
case "$(cat launcher 2>/dev/null)" in
systemd\ *) $S journalctl -u {} -n 15 --no-pager ;;
*) tail -n 15 agent.log 2>/dev/null ;;
esac
"#,
        quote(dir),
        service_name(port)
    )
}

/// The asset unit, as shipped.
const UNIT_TEMPLATE: &str = include_str!("../../../assets/systemd/dml-agent.service");

/// The unit for the agent in `dir` (absolute) on `port`: the asset with its
/// paths pointed at `dir`, the data directory `dir/data` writable, and homes
/// read-only rather than hidden when `dir` lies under one.
pub fn unit(dir: &str, port: u16) -> String {
    let under_home = ["/home/", "/root/", "/run/user/"]
        .iter()
        .any(|h| dir.starts_with(h) || format!("{dir}/") == *h);
    let mut out =
        String::from("# Written by `dml cluster up` from assets/systemd/dml-agent.service.\n");
    for line in UNIT_TEMPLATE.lines() {
        let key = line.split('=').next().unwrap_or("");
        let line = match key {
            "Description" => format!("{line} on port {port}"),
            "ExecStart" => format!("ExecStart={dir}/bin/dml-agent --config {dir}/agent.toml"),
            "WorkingDirectory" => format!("WorkingDirectory={dir}"),
            "ReadWritePaths" => format!("ReadWritePaths={dir}/data"),
            "StateDirectory" | "StateDirectoryMode" => continue,
            // The remote directory belongs to the SSH user and the key file lies in it: the
            // unit runs as root there, with no dynamic user and no credential.
            "DynamicUser"
            | "PrivateUsers"
            | "LoadCredential"
            | "CapabilityBoundingSet"
            | "AmbientCapabilities" => continue,
            "Environment" if line.contains("DML_KEY_FILE") => continue,
            "ProtectHome" if under_home => "ProtectHome=read-only".into(),
            _ if line.starts_with('#') => continue,
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_points_at_the_remote_dir() {
        let u = unit("/opt/dml", 8001);
        assert!(u.contains("\nExecStart=/opt/dml/bin/dml-agent --config /opt/dml/agent.toml\n"));
        assert!(u.contains("\nWorkingDirectory=/opt/dml\n"));
        assert!(u.contains("\nReadWritePaths=/opt/dml/data\n"));
        assert!(u.contains("\nType=notify\n"));
        assert!(u.contains("\nProtectHome=yes\n"));
        assert!(!u.contains("/var/lib/dml") && !u.contains("StateDirectory"));
        for key in [
            "DynamicUser",
            "LoadCredential",
            "DML_KEY_FILE",
            "CapabilityBoundingSet",
        ] {
            assert!(!u.contains(key), "{key} in {u}");
        }
        assert!(u.contains("\nSystemCallFilter=@system-service\n"));
        let home = unit("/root/dml", 8002);
        assert!(home.contains("\nProtectHome=read-only\n"), "{home}");
    }

    #[test]
    fn systemd_analyze_accepts_the_generated_unit() {
        let ok = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(std::env::var_os("CI").is_none(), "systemd-analyze missing");
            return;
        }
        let dir = std::env::temp_dir().join(format!("dml-cluster-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let _ = std::fs::remove_file(dir.join("bin/dml-agent"));
        std::os::unix::fs::symlink("/bin/true", dir.join("bin/dml-agent")).unwrap();
        let path = dir.join("dml-agent-8001.service");
        std::fs::write(&path, unit(dir.to_str().unwrap(), 8001)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.status.success(), "{stderr}");
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("dml-agent-8001.service"))
            .collect();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn the_state_of_a_stopped_agent_carries_its_last_error_since_its_start() {
        let dir = std::env::temp_dir().join(format!("dml-cluster-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("launcher"), "tmux dml-agent-1\n").unwrap();
        let log = "---- started by dml cluster up\nerror: old\n\
                   ---- started by dml cluster up\nINFO up\nerror: disk full: the store\n";
        std::fs::write(dir.join("agent.log"), log).unwrap();
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(state(dir.to_str().unwrap()))
                .output()
                .unwrap();
            parse_kv(&String::from_utf8_lossy(&out.stdout))
        };
        let kv = run();
        assert_eq!(kv["running"], "0");
        assert_eq!(kv["last_error"], "error: disk full: the store");
        std::fs::write(
            dir.join("agent.log"),
            format!("{log}---- started by dml cluster up\n"),
        )
        .unwrap();
        assert_eq!(run().get("last_error").map(String::as_str), Some(""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_values_are_parsed() {
        let kv = parse_kv("dir=/a/b\nnoise\npid=12\n");
        assert_eq!(kv["dir"], "/a/b");
        assert_eq!(kv["pid"], "12");
    }
}
