//! The deployment assets `dml` documents: the systemd unit and the tmux launcher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn unit_path() -> PathBuf {
    assets().join("systemd/dml-agent.service")
}

/// A unit file as section -> key -> values (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not KEY=VALUE: {line}", n + 1));
        let s = section
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: key outside any section", n + 1));
        out.get_mut(s)
            .unwrap()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn tool_available(name: &str, arg: &str) -> bool {
    let ok = Command::new(name)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    ok
}

#[test]
fn systemd_unit_runs_the_agent_with_its_config_and_restarts_on_failure() {
    let unit = parse_unit(&std::fs::read_to_string(unit_path()).unwrap());
    let get = |s: &str, k: &str| -> String {
        unit.get(s)
            .and_then(|sec| sec.get(k))
            .and_then(|v| v.last())
            .unwrap_or_else(|| panic!("[{s}] {k} is missing"))
            .clone()
    };
    assert_eq!(
        get("Service", "ExecStart"),
        "/usr/local/bin/dml-agent --config /etc/dml/agent.toml"
    );
    assert_eq!(get("Service", "Restart"), "on-failure");
    assert_eq!(get("Service", "KillSignal"), "SIGTERM");
    // Ready once joined (sd_notify READY=1); SIGHUP reloads.
    assert_eq!(get("Service", "Type"), "notify");
    assert_eq!(get("Service", "NotifyAccess"), "main");
    // The agent pings the watchdog while its loops answer (agent/src/notify.rs).
    assert_eq!(get("Service", "WatchdogSec"), "30s");
    // A bad config exits 2 (docs/AGENT_CLI.md); restarting cannot fix it.
    assert_eq!(get("Service", "RestartPreventExitStatus"), "2");
    assert_eq!(get("Install", "WantedBy"), "multi-user.target");
    assert!(get("Unit", "After").contains("network-online.target"));
    assert!(!get("Unit", "Description").is_empty());
    assert_eq!(
        unit.keys().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    if !tool_available("systemd-analyze", "--version") {
        return;
    }
    // verify insists that ExecStart exists; point it at a binary that does.
    let text = std::fs::read_to_string(unit_path())
        .unwrap()
        .replace("/usr/local/bin/dml-agent", "/bin/true");
    let dir = std::env::temp_dir().join(format!("dml-unit-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dml-agent.service");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", copy.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // verify only warns about unknown keys or bad values, with the file's name.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dml-agent.service"))
        .collect();
    assert!(warnings.is_empty(), "unit warnings: {warnings:?}");

    // And the check is not blind: a bad key in a copy is reported.
    let bad = dir.with_extension("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let bad_unit = bad.join("dml-agent.service");
    std::fs::write(
        &bad_unit,
        "[Service]\nExecStart=/bin/true\nKillSignal=SIGNOPE\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", bad_unit.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGNOPE"));
}

/// Issue 18: the unit runs unprivileged and `systemd-analyze security` rates it "OK"
/// (exposure 2.0 or lower).
#[test]
fn systemd_analyze_security_rates_the_unit_ok() {
    if !tool_available("systemd-analyze", "--version") {
        return;
    }
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let unit = parse_unit(&text);
    let service = &unit["Service"];
    let last = |k: &str| service.get(k).and_then(|v| v.last()).map(String::as_str);
    assert_eq!(last("DynamicUser"), Some("yes"));
    assert_eq!(last("CapabilityBoundingSet"), Some(""));
    assert_eq!(
        last("LoadCredential"),
        Some("cluster.key:/etc/dml/cluster.key")
    );
    assert_eq!(last("ProtectProc"), Some("invisible"));
    assert!(
        service["SystemCallFilter"].contains(&"@system-service".to_string()),
        "{:?}",
        service["SystemCallFilter"]
    );

    let dir = std::env::temp_dir().join(format!("dml-unit-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dml-agent.service");
    std::fs::write(&copy, &text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dml-agent.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(
        level <= 2.0,
        "exposure {level} is above 2.0 (OK):\n{stdout}"
    );
}

#[test]
fn tmux_launcher_starts_one_window_per_agent_and_stops_them() {
    if !tool_available("tmux", "-V") {
        return;
    }
    let script = assets().join("tmux/dml-tmux.sh");
    let dir = std::env::temp_dir().join(format!("dml-tmux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in agent that records its arguments and waits to be stopped.
    let fake = dir.join("dml-agent");
    std::fs::write(
        &fake,
        format!(
            // Written aside and renamed, so a listed args file is never half-written.
            "#!/bin/sh\necho \"$@\" > {d}/.tmp-$$ && mv {d}/.tmp-$$ {d}/args-$$\nexec sleep 600\n",
            d = dir.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let session = format!("dml-tmux-test-{}", std::process::id());
    let key = dir.join("data").join("cluster.key");
    let out = Command::new("bash")
        .arg(&script)
        .args(["-n", "3", "-p", "9301", "-s", &session, "-P", "lan"])
        .arg("-b")
        .arg(&fake)
        .arg("-d")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.contains(" pid ")).count(), 3);
    let windows = Command::new("tmux")
        .args(["list-windows", "-t", &session, "-F", "#{window_name}"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&windows.stdout);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["agent-9301", "agent-9302", "agent-9303"]
    );
    // Each agent got its own port and the first one as introducer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let args = loop {
        let args: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("args-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        if args.len() == 3 || Instant::now() > deadline {
            break args;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(args.len(), 3, "{args:?}");
    for port in 9301..=9303 {
        assert!(
            args.iter()
                .any(|a| a.contains(&format!("--bind 127.0.0.1:{port} "))
                    && a.contains("--introducer 127.0.0.1:9301")
                    && a.contains("--preset lan")
                    && a.contains(&format!("--key-file {}", key.display()))),
            "{args:?}"
        );
    }
    // The key it made is 64 hex digits, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        text.trim().len() == 64 && text.trim().chars().all(|c| c.is_ascii_hexdigit()),
        "{text:?}"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let stop = Command::new("bash")
        .arg(&script)
        .args(["-k", "-s", &session])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let has = Command::new("tmux")
        .args(["has-session", "-t", &session])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!has.status.success(), "session {session} survived -k");
}
