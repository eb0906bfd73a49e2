//! Processes of a local cluster: starting agents (detached, or in tmux), telling
//! whether a pid is still a live `dml-agent`, and stopping one.

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often waits poll a process.
const POLL: Duration = Duration::from_millis(50);

/// Size of the detached tmux session's windows (columns, rows) until a client attaches.
const TMUX_SIZE: (&str, &str) = ("200", "50");

// The agent binary's name is also what `/proc/<pid>/cmdline` must show.
use crate::agent_bin::AGENT_BIN_NAME;

/// The process state letter from `/proc/<pid>/stat` ("R", "S", "Z", ...).
pub fn parse_stat_state(stat: &str) -> Option<char> {
    // The command name is in parentheses and may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Whether a NUL-separated command line is a `dml-agent` process.
pub fn cmdline_is_agent(raw: &[u8]) -> bool {
    let Some(argv0) = raw.split(|b| *b == 0).next() else {
        return false;
    };
    let argv0 = String::from_utf8_lossy(argv0);
    Path::new(argv0.as_ref())
        .file_name()
        .is_some_and(|n| n == AGENT_BIN_NAME)
}

/// The process exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(parse_stat_state(&stat), Some('Z' | 'X') | None),
        Err(_) => false,
    }
}

/// The process is running and is a `dml-agent` (so the pid was not reused).
pub fn is_live_agent(pid: i32) -> bool {
    is_running(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| cmdline_is_agent(&c))
}

/// How [`stop`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (or not an agent any more); nothing was sent.
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM until the deadline and was killed.
    Killed,
}

/// SIGTERM, wait up to `grace`, then SIGKILL; only if `pid` is a live `dml-agent`.
pub fn stop(pid: i32, grace: Duration) -> Result<Stopped> {
    if !is_live_agent(pid) {
        return Ok(Stopped::NotRunning);
    }
    let p = Pid::from_raw(pid);
    kill(p, Signal::SIGTERM).with_context(|| format!("cannot send SIGTERM to pid {pid}"))?;
    if wait_gone(pid, grace) {
        return Ok(Stopped::Terminated);
    }
    kill(p, Signal::SIGKILL).with_context(|| format!("cannot send SIGKILL to pid {pid}"))?;
    if wait_gone(pid, grace) {
        Ok(Stopped::Killed)
    } else {
        bail!("pid {pid} still runs after SIGKILL")
    }
}

/// SIGKILL at once (a crash, for fault drills); only if `pid` is a live `dml-agent`.
pub fn kill_now(pid: i32, within: Duration) -> Result<Stopped> {
    if !is_live_agent(pid) {
        return Ok(Stopped::NotRunning);
    }
    kill(Pid::from_raw(pid), Signal::SIGKILL)
        .with_context(|| format!("cannot send SIGKILL to pid {pid}"))?;
    if wait_gone(pid, within) {
        Ok(Stopped::Killed)
    } else {
        bail!("pid {pid} still runs after SIGKILL")
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !is_running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Starts `bin args` in a new session (so it outlives `dml` and its terminal),
/// stdin closed, stdout and stderr appended to `log` (a restarted agent's
/// lines follow its previous life's).
pub fn spawn_detached(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Quotes one word for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sh` command line tmux runs in a window: `exec` keeps the pane's pid the agent's.
pub fn tmux_command_line(bin: &Path, args: &[String]) -> String {
    let mut line = format!("exec {}", shell_quote(&bin.to_string_lossy()));
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    line
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run tmux (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "tmux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn tmux_has_session(session: &str) -> bool {
    Command::new("tmux")
        .args(["has-session", "-t", session])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Opens window `window` running `command_line` (in a new session `session` when
/// `first`), copies its output to `log`, and returns the pane's pid.
pub fn tmux_start(
    session: &str,
    first: bool,
    window: &str,
    command_line: &str,
    log: &Path,
) -> Result<i32> {
    let fmt = "#{pane_id} #{pane_pid}";
    let out = if first {
        tmux(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-n",
            window,
            "-x",
            TMUX_SIZE.0,
            "-y",
            TMUX_SIZE.1,
            "-P",
            "-F",
            fmt,
            command_line,
        ])?
    } else {
        let target = format!("{session}:");
        tmux(&[
            "new-window",
            "-d",
            "-t",
            &target,
            "-n",
            window,
            "-P",
            "-F",
            fmt,
            command_line,
        ])?
    };
    let (pane, pid) = out
        .split_once(' ')
        .with_context(|| format!("tmux printed \"{out}\", expected a pane id and pid"))?;
    let pid: i32 = pid
        .parse()
        .with_context(|| format!("tmux printed pane pid \"{pid}\""))?;
    let pipe = format!("cat >> {}", shell_quote(&log.to_string_lossy()));
    tmux(&["pipe-pane", "-t", pane, &pipe])?;
    Ok(pid)
}

pub fn tmux_kill_session(session: &str) -> Result<()> {
    if tmux_has_session(session) {
        tmux(&["kill-session", "-t", session])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_survives_odd_command_names() {
        assert_eq!(parse_stat_state("42 (dml-agent) S 1 42 42 0"), Some('S'));
        assert_eq!(parse_stat_state("42 (a) b) Z 1 42"), Some('Z'));
        assert_eq!(parse_stat_state("garbage"), None);
    }

    #[test]
    fn only_dml_agent_command_lines_count() {
        assert!(cmdline_is_agent(
            b"/x/target/debug/dml-agent\0--bind\x00127.0.0.1:8001\0"
        ));
        assert!(cmdline_is_agent(b"dml-agent\0"));
        assert!(!cmdline_is_agent(b"/bin/sleep\0dml-agent\0"));
        assert!(!cmdline_is_agent(b"/x/dml-agent-old\0"));
        assert!(!cmdline_is_agent(b""));
    }

    #[test]
    fn this_test_process_is_running_but_not_an_agent() {
        let me = std::process::id() as i32;
        assert!(is_running(me));
        assert!(!is_live_agent(me));
        assert_eq!(
            stop(me, Duration::from_millis(10)).unwrap(),
            Stopped::NotRunning
        );
    }

    #[test]
    fn a_reaped_child_is_not_running_and_a_zombie_is_not_either() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Give it time to exit; unreaped it is a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_running(pid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(
            !is_running(pid),
            "an exited, unreaped child is a zombie, not running"
        );
        child.wait().unwrap();
        assert!(!is_running(pid));
    }

    #[test]
    fn shell_quoting_keeps_words_whole() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            tmux_command_line(
                Path::new("/x y/dml-agent"),
                &["--bind".into(), "1:2".into()]
            ),
            "exec '/x y/dml-agent' '--bind' '1:2'"
        );
    }
}
