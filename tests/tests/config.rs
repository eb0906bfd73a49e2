//! The real `dml-agent` binary against the config fixtures in `assets/configs/`: an invalid
//! file or flag makes it exit with code 2 and a message naming the key and the value; a
//! valid file starts it.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use dml_tests::bins::agent_bin;
use dml_tests::dml::run;
use dml_tests::{Agent, AgentSpec, TestDir, test_membership};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time for the agent to refuse a config and exit.
const EXIT: Duration = Duration::from_secs(10);
/// Exit code for an invalid config or flag (docs/AGENT_CLI.md).
const BAD_CONFIG: i32 = 2;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/configs")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// What the agent's message must contain for an invalid fixture: the key from its first
/// line (`# expect: KEY`) and, for a dotted key that `validate()` rejects, the value as
/// written in the file, quoted as the contract shows (`key "membership.m" = "0"`).
fn expected(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let key = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect:"))
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY`", path.display()))
        .trim()
        .to_string();
    let mut want = vec![key.clone()];
    if let Some((_, field)) = key.rsplit_once('.') {
        let value = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == field).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("{}: no `{field} = ...` line", path.display()));
        want.push(format!("\"{value}\""));
    }
    want
}

#[tokio::test]
async fn every_invalid_config_fixture_makes_the_agent_exit_2_naming_key_and_value() {
    let bin = agent_bin().unwrap();
    let dir = TestDir::new("invalid-configs").unwrap();
    let files = toml_files(&configs_dir().join("invalid"));
    for path in files {
        let want = expected(&path);
        // No --bind: the bind and introducer fixtures must fail on the file's own values.
        let args = [
            "--config".to_string(),
            path.display().to_string(),
            "--data-dir".to_string(),
            dir.path().join("data").display().to_string(),
        ];
        let out = run(&bin, &args, EXIT).await.unwrap();
        let stderr = out.stderr.replace(&path.display().to_string(), "<file>");
        assert_eq!(
            out.code(),
            Some(BAD_CONFIG),
            "{}: exit {}, stderr: {}",
            path.display(),
            out.status,
            out.stderr
        );
        for w in &want {
            assert!(
                stderr.contains(w.as_str()),
                "{}: stderr does not name {w}: {stderr}",
                path.display()
            );
        }
        assert!(
            out.stdout.is_empty(),
            "{}: printed {}",
            path.display(),
            out.stdout
        );
    }
}

#[tokio::test]
async fn invalid_flags_make_the_agent_exit_2_naming_the_value() {
    let bin = agent_bin().unwrap();
    for (args, want) in [
        (vec!["--bind", "nowhere"], "nowhere"),
        (vec!["--preset", "fast"], "fast"),
        (vec!["--introducer", "10.0.0.1"], "10.0.0.1"),
        (
            vec!["--bind", "127.0.0.1:0", "--introducer", "127.0.0.1:0"],
            "127.0.0.1:0",
        ),
        (vec!["--frobnicate"], "--frobnicate"),
    ] {
        let out = run(&bin, &args, EXIT).await.unwrap();
        assert_eq!(out.code(), Some(BAD_CONFIG), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{args:?}: stderr does not name {want}: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn every_valid_config_fixture_starts_the_agent_and_sigterm_exits_0() {
    let dir = TestDir::new("valid-configs").unwrap();
    for path in toml_files(&configs_dir().join("valid")) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        // On a free port whatever the file says; its other values are used as written.
        let spec = AgentSpec::new(name, test_membership()).config_text(text);
        let mut agent = Agent::start(spec, dir.path())
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let info = agent.client().id().await.unwrap();
        assert_eq!(info.id, agent.id(), "{}", path.display());
        agent.terminate().unwrap();
        let status = agent.wait_exit(EXIT).await.unwrap();
        assert_eq!(status.code(), Some(0), "{}: {status}", path.display());
    }
}

/// A `RUST_LOG` that is not a filter is reported (and the default used), and
/// `--log-format json` writes each line as one JSON object.
#[tokio::test]
async fn a_bad_rust_log_is_reported_and_json_logs_are_one_object_per_line() {
    let dir = TestDir::new("log-format").unwrap();
    let mut spec = AgentSpec::new("json", test_membership())
        .arg("--log-format")
        .arg("json");
    spec.env
        .push(("RUST_LOG".into(), "info,openraft=loudest".into()));
    let mut agent = Agent::start(spec, dir.path()).await.unwrap();
    agent.client().id().await.unwrap();
    agent.terminate().unwrap();
    let status = agent.wait_exit(EXIT).await.unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let text = agent.stderr();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let warned = lines.iter().any(|l| {
        l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("RUST_LOG") && m.contains("loudest"))
    });
    assert!(warned, "no warning about RUST_LOG in\n{text}");
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"),
        "the default filter should pass info lines:\n{text}"
    );

    let out = run(&agent_bin().unwrap(), &["--log-format", "xml"], EXIT)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(BAD_CONFIG), "{}", out.stderr);
    assert!(out.stderr.contains("xml"), "{}", out.stderr);
}
