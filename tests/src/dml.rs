//! Running a binary to completion with a deadline, in particular the `dml` command line.

use crate::bins::dml_bin;
use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct DmlOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl DmlOutput {
    /// The exit code, or `None` if a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// An error carrying the output unless the command exited 0.
    pub fn ensure_success(&self) -> Result<&Self> {
        if !self.status.success() {
            bail!(
                "`{}` failed ({}):\nstdout: {}\nstderr: {}",
                self.command,
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }

    /// Stdout parsed as one JSON value (for `--json` commands).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("`{}` did not print JSON: \"{}\"", self.command, self.stdout))
    }
}

/// Runs `program args` with no stdin and the tests' cluster key in
/// `DML_KEY_FILE` (a `--key-file` argument overrides it), killing it after
/// `timeout`.
pub async fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    timeout: Duration,
) -> Result<DmlOutput> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("DML_KEY_FILE", crate::key::path()?);
    run_command(cmd, program, args, timeout).await
}

/// Runs the `dml` binary with `args` in `dir`, with no `DML_KEY_FILE`.
pub async fn run_dml_without_key(
    args: &[&str],
    dir: &Path,
    timeout: Duration,
) -> Result<DmlOutput> {
    let program = dml_bin()?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.env_remove("DML_KEY_FILE").current_dir(dir);
    run_command(cmd, &program, args, timeout).await
}

/// The contexts file the tests' `dml` uses (`DML_CONFIG`): one per test
/// process under the temp directory, so `dml local up` or `cluster up` in a test
/// never writes the user's `~/.config/dml/config.toml`, and no context of the
/// user's is picked up.
pub fn test_config() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("dml-tests-config-{}", std::process::id()))
        .join("config.toml")
}

async fn run_command<S: AsRef<OsStr>>(
    mut cmd: tokio::process::Command,
    program: &Path,
    args: &[S],
    timeout: Duration,
) -> Result<DmlOutput> {
    let command = std::iter::once(program.as_os_str())
        .chain(args.iter().map(AsRef::as_ref))
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let child = cmd
        .env("DML_CONFIG", test_config())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run `{command}`"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("`{command}` did not finish within {timeout:?}"))?
        .with_context(|| format!("`{command}`"))?;
    Ok(DmlOutput {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs the `dml` binary with `args`.
pub async fn run_dml(args: &[&str], timeout: Duration) -> Result<DmlOutput> {
    run(&dml_bin()?, args, timeout).await
}
