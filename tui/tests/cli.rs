//! `dml` as a process: errors are clear messages with a non-zero exit, never a panic.

use std::process::{Command, Output};

fn dml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dml"))
        .args(args)
        .env_remove("DML_AGENT")
        .output()
        .expect("run dml")
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_agent_command_fails_cleanly_when_no_agent_listens() {
    let agent = format!("127.0.0.1:{}", closed_port());
    for cmd in ["members", "id", "join", "leave", "stats"] {
        let out = dml(&["--agent", &agent, cmd]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // An unreachable agent is `unavailable`: exit code 5.
        assert_eq!(out.status.code(), Some(5), "{cmd}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: cannot reach agent at {agent}: ")),
            "{cmd}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
    }
}

#[test]
fn json_errors_are_json_on_stdout() {
    let agent = format!("127.0.0.1:{}", closed_port());
    let out = dml(&["--json", "--agent", &agent, "stats"]);
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("cannot reach agent at"), "{msg}");
    assert_eq!(v["kind"], "unavailable", "{v}");
}

#[test]
fn the_agent_address_comes_from_the_environment() {
    let agent = format!("127.0.0.1:{}", closed_port());
    let out = Command::new(env!("CARGO_BIN_EXE_dml"))
        .arg("id")
        .env("DML_AGENT", &agent)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&agent), "{stderr}");
}

#[test]
fn a_bad_agent_address_is_quoted() {
    let out = dml(&["--agent", "not-an-address", "members"]);
    assert_eq!(out.status.code(), Some(INVALID));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"not-an-address\""), "{stderr}");
}

#[test]
fn the_console_refuses_to_run_without_a_terminal() {
    let out = dml(&[]);
    assert_eq!(out.status.code(), Some(INVALID));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a terminal"), "{stderr}");
}

#[test]
fn local_up_without_an_agent_binary_says_where_it_looked() {
    let dir = std::env::temp_dir().join(format!("dml-cli-test-{}", std::process::id()));
    let out = dml(&[
        "local",
        "up",
        "--agent-bin",
        "/nonexistent/dml-agent",
        "--run-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(NOT_FOUND));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent binary not found at /nonexistent/dml-agent"),
        "{stderr}"
    );
}

/// The `--json` error of a failed `dml`: its exit code, message and kind.
fn json_failure(args: &[&str]) -> (Option<i32>, String, String) {
    let mut full = vec!["--json"];
    full.extend(args);
    let out = dml(&full);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (out.status.code(), field("error"), field("kind"))
}

#[test]
fn failures_found_by_dml_itself_exit_with_their_kind() {
    let agent = format!("127.0.0.1:{}", closed_port());
    // A bad value, refused before any agent is asked.
    let (code, error, kind) = json_failure(&["--agent", &agent, "set-batch-size", "tiny", "0"]);
    assert_eq!((code, kind.as_str()), (Some(INVALID), "invalid"), "{error}");
    assert!(error.contains("batch size 0 for \"tiny\""), "{error}");
    let (code, error, kind) = json_failure(&["--agent", "not-an-address", "members"]);
    assert_eq!((code, kind.as_str()), (Some(INVALID), "invalid"), "{error}");
    // A target that cannot be written: a directory under a regular file.
    let blocked = format!("{}/images", env!("CARGO_BIN_EXE_dml"));
    let (code, error, kind) = json_failure(&["dataset", "make", &blocked, "--count", "1"]);
    assert_eq!((code, kind.as_str()), (Some(INVALID), "invalid"), "{error}");
    assert!(
        error.contains(&format!("cannot create {blocked}")),
        "{error}"
    );
    // A file dml needs that is not there.
    let (code, error, kind) = json_failure(&[
        "local",
        "up",
        "--agent-bin",
        "/nonexistent/dml-agent",
        "--run-dir",
        "/nonexistent/run",
    ]);
    assert_eq!(
        (code, kind.as_str()),
        (Some(NOT_FOUND), "not-found"),
        "{error}"
    );
}

#[test]
fn local_status_and_down_on_an_empty_run_dir_say_so() {
    let dir = std::env::temp_dir().join(format!("dml-cli-empty-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let out = dml(&["local", "status", "--run-dir", d]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no cluster recorded"));
    let out = dml(&["--json", "local", "down", "--run-dir", d]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agents"].as_array().unwrap().len(), 0);
}

/// Exit codes of the error kinds (README, "Exit codes").
const INTERNAL: i32 = 1;
const NOT_FOUND: i32 = 3;
const INVALID: i32 = 4;
const UNAVAILABLE: i32 = 5;

fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = dml(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

#[test]
fn sdfs_commands_refuse_bad_names_before_asking_any_agent() {
    let agent = format!("127.0.0.1:{}", closed_port());
    let a = agent.as_str();
    let this = env!("CARGO_BIN_EXE_dml");
    fails_with(
        &["--agent", a, "put", this, "/etc/passwd"],
        INVALID,
        "bad SDFS name \"/etc/passwd\": is an absolute path",
    );
    fails_with(
        &["--agent", a, "put", this, "a/../b"],
        INVALID,
        "'..' component",
    );
    fails_with(
        &["--agent", a, "get", "../x", "/tmp/x"],
        INVALID,
        "bad SDFS name",
    );
    fails_with(&["--agent", a, "ls", ""], INVALID, "is empty");
    fails_with(
        &["--agent", a, "delete", "a//b"],
        INVALID,
        "empty path component",
    );
}

#[test]
fn put_of_a_missing_local_file_names_it() {
    let agent = format!("127.0.0.1:{}", closed_port());
    fails_with(
        &["--agent", &agent, "put", "/nonexistent/file.bin", "f"],
        NOT_FOUND,
        "local file \"/nonexistent/file.bin\": No such file or directory",
    );
    let out = dml(&["--json", "--agent", &agent, "put", "/nonexistent/x", "f"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/x"));
}

#[test]
fn sdfs_commands_fail_cleanly_when_no_agent_listens() {
    let agent = format!("127.0.0.1:{}", closed_port());
    let a = agent.as_str();
    let this = env!("CARGO_BIN_EXE_dml");
    let dir = std::env::temp_dir().join(format!("dml-cli-sdfs-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let target = dir.join("out");
    let t = target.to_str().unwrap();
    for args in [
        vec!["leader"],
        vec!["put", this, "bin/dml"],
        vec!["get", "bin/dml", t],
        vec!["delete", "x"],
        vec!["ls", "x"],
        vec!["ls-all", "*"],
        vec!["store"],
        vec!["get-versions", "x", "2", d],
        vec!["get-all", "*", d],
        vec!["sdfs", "files"],
        vec!["sdfs", "nodes"],
        vec!["sdfs", "count"],
    ] {
        let mut full = vec!["--agent", a];
        full.extend(args);
        fails_with(
            &full,
            UNAVAILABLE,
            &format!("cannot reach agent at {agent}"),
        );
    }
    assert!(!target.exists(), "a failed get left {t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn store_with_a_bad_node_address_quotes_it() {
    fails_with(&["store", "--node", "nowhere"], INVALID, "\"nowhere\"");
}

#[test]
fn a_load_that_fails_reports_every_file_in_one_json_document() {
    let agent = format!("127.0.0.1:{}", closed_port());
    let dir = std::env::temp_dir().join(format!("dml-cli-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"a").unwrap();
    std::fs::write(dir.join("sub/b.txt"), b"b").unwrap();
    let out = dml(&[
        "--json",
        "--agent",
        &agent,
        "sdfs",
        "load",
        dir.to_str().unwrap(),
        "p",
    ]);
    assert_eq!(out.status.code(), Some(INTERNAL));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["failed"], 2);
    assert_eq!(v["error"], "2 of 2 files failed");
    assert_eq!(v["files"][1]["name"], "p/sub/b.txt");
    assert!(
        v["files"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach agent")
    );
    let _ = std::fs::remove_dir_all(&dir);
    fails_with(
        &["--agent", &agent, "sdfs", "load", "/nonexistent/dir"],
        NOT_FOUND,
        "local file \"/nonexistent/dir\"",
    );
}

/// Completion scripts for bash, zsh and fish come from the clap definition (so
/// they know every subcommand); `dml install` links the binaries and writes the
/// scripts and a man page per command under its prefix, idempotently.
#[test]
fn completions_and_install_come_from_the_command_definition() {
    for (shell, marker) in [
        ("bash", "_dml()"),
        ("zsh", "#compdef dml"),
        ("fish", "complete -c dml"),
    ] {
        let out = dml(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker}");
        for sub in ["get-versions", "submit-job", "local"] {
            assert!(text.contains(sub), "{shell} script lacks {sub}");
        }
    }
    // The main commands' help ends with examples.
    for cmd in [
        &["--help"][..],
        &["put", "--help"],
        &["get", "--help"],
        &["submit-job", "--help"],
        &["local", "up", "--help"],
    ] {
        let out = dml(cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:\n  dml "), "{cmd:?}: {text}");
    }
    let bad = dml(&["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tcsh"));

    let prefix = std::env::temp_dir().join(format!("dml-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    for _ in 0..2 {
        let out = dml(&["--json", "install", "--prefix", prefix.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["man_pages"].as_u64().unwrap() > 30, "{v}");
    }
    let link = std::fs::read_link(prefix.join("bin/dml")).unwrap();
    assert_eq!(
        link,
        std::path::Path::new(env!("CARGO_BIN_EXE_dml"))
            .canonicalize()
            .unwrap()
    );
    let share = prefix.join("share");
    for f in [
        "bash-completion/completions/dml",
        "zsh/site-functions/_dml",
        "fish/vendor_completions.d/dml.fish",
    ] {
        assert!(share.join(f).is_file(), "{f}");
    }
    for page in ["dml.1", "dml-put.1", "dml-get-versions.1", "dml-local-up.1"] {
        let text = std::fs::read_to_string(share.join("man/man1").join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let put = std::fs::read_to_string(share.join("man/man1/dml-put.1")).unwrap();
    assert!(put.contains("Examples"), "{put}");
    assert!(
        put.contains("dml\\-put") || put.contains("dml put"),
        "{put}"
    );
    std::fs::remove_dir_all(&prefix).unwrap();
}
