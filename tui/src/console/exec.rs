//! Carrying out the console's [`Action`]s. Keys that steer (batch size,
//! submit) go through the client API (`dml_shared::sdfs_client`); a `:` line
//! runs the `dml` binary itself ([`Dml`]), so it is parsed by the CLI's
//! clap definition and shows exactly what the CLI prints. Each result comes
//! back as text for the footer or a popup.

use super::app::{Action, Event, More};
use dml_shared::client::Client;
use dml_shared::infer::{InferRequest, InferResponse};
use dml_shared::sdfs_client::Sdfs;
use dml_shared::{ErrorKind, RemoteError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

/// How a `:` line reaches the cluster: the `dml` binary, pointed at the
/// console's agent with the console's key.
#[derive(Clone, Debug)]
pub struct Dml {
    /// The `dml` binary (the console's own executable).
    pub exe: PathBuf,
    /// The key file or credential the console uses, if any was found.
    pub key_file: Option<PathBuf>,
}

/// Why a console action failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("unexpected answer {0}")]
    Unexpected(String),
    #[error("cannot run {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("{message}")]
    Failed { kind: ErrorKind, message: String },
    #[error(transparent)]
    Client(#[from] dml_shared::Error),
}

impl ExecError {
    /// An answer of the wrong variant (a bug or a version skew).
    fn unexpected(answer: impl std::fmt::Debug) -> Self {
        ExecError::Unexpected(format!("{answer:?}"))
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Unexpected(_) | ExecError::Spawn { .. } => ErrorKind::Internal,
            ExecError::Failed { kind, .. } => *kind,
            ExecError::Client(e) => e.kind(),
        }
    }
}

impl From<ExecError> for RemoteError {
    fn from(e: ExecError) -> Self {
        RemoteError::new(e.kind(), e.to_string())
    }
}

/// A short name for an action, for error messages.
pub fn describe(a: &Action) -> String {
    match a {
        Action::SetBatchSize { model, size } => format!("set-batch-size {model} {size}"),
        Action::Submit {
            model,
            count,
            dataset,
        } => format!("submit-job {model} {count} --dataset {dataset}"),
        Action::Command(w) => w.join(" "),
        Action::Details { title, .. } => title.clone(),
        Action::Files => "list files".into(),
    }
}

/// Runs `a` against `agent`: the event that carries its answer.
pub async fn run(dml: &Dml, agent: SocketAddr, a: Action) -> Event {
    if let Action::Files = a {
        let files = Sdfs::new(agent)
            .ls_all("*")
            .await
            .map_err(|e| RemoteError::from(ExecError::from(e)));
        return Event::Files(files);
    }
    let what = describe(&a);
    let result = text(dml, agent, a).await.map_err(Into::into);
    Event::Done { what, result }
}

/// Runs `a` against `agent`; `Ok` is the text to show.
async fn text(dml: &Dml, agent: SocketAddr, a: Action) -> Result<String, ExecError> {
    match a {
        Action::Files => Err(ExecError::unexpected("a file list as text")),
        Action::SetBatchSize { model, size } => set_batch(agent, &model, size).await,
        Action::Submit {
            model,
            count,
            dataset,
        } => submit(agent, model, count, dataset).await,
        Action::Command(w) => command(dml, agent, &w).await,
        Action::Details {
            title,
            text,
            more: More::Log(from),
        } => Ok(with_log(title, text, from).await),
        Action::Details {
            title,
            text,
            more: More::Job(job),
        } => {
            let workers = match command(dml, agent, &["job".to_string(), job.to_string()]).await {
                Ok(t) => t,
                Err(e) => format!("cannot read them: {e}"),
            };
            Ok(format!("{title}\n{text}\n\n{workers}"))
        }
    }
}

/// A details popup's text and the tail of `from`'s log (or why there is none).
async fn with_log(title: String, text: String, from: SocketAddr) -> String {
    let log = match Client::new(from).logs(super::app::DETAIL_LOG_LINES).await {
        Ok(lines) if lines.is_empty() => "nothing logged yet".to_string(),
        Ok(lines) => lines.join("\n"),
        Err(e) => format!("cannot read it: {e}"),
    };
    format!("{title}\n{text}\n\nlog of {from}, newest last (L shows more):\n{log}")
}

async fn infer(agent: SocketAddr, req: InferRequest) -> Result<InferResponse, ExecError> {
    Ok(Sdfs::new(agent).infer(req).await?)
}

async fn set_batch(agent: SocketAddr, model: &str, size: u32) -> Result<String, ExecError> {
    let req = InferRequest::SetBatchSize {
        model: model.to_string(),
        size,
    };
    // The size before, for the undo hint: the change is cluster-wide.
    let before = match infer(agent, InferRequest::Models).await {
        Ok(InferResponse::Models(ms)) => ms
            .into_iter()
            .find(|m| m.name == model)
            .map(|m| m.batch_size),
        _ => None,
    };
    infer(agent, req).await?;
    Ok(match before {
        Some(b) if b != size => format!(
            "{model}: batch size {b} -> {size} on every worker; undo: :set-batch-size {model} {b}"
        ),
        _ => format!("{model}: batch size set to {size} on every worker"),
    })
}

async fn submit(
    agent: SocketAddr,
    model: String,
    count: u32,
    dataset: String,
) -> Result<String, ExecError> {
    let req = InferRequest::Submit {
        model: model.clone(),
        count: Some(count),
        dataset: dataset.clone(),
        weight: 1,
    };
    match infer(agent, req).await? {
        InferResponse::Submitted { job, images } => Ok(format!(
            "job {job} submitted: {model} over {images} images of {dataset}"
        )),
        other => Err(ExecError::unexpected(other)),
    }
}

/// One `dml` command line (the words after `dml`), run by the `dml` binary
/// against `agent` unless the line names its own agent or context.
pub async fn command(dml: &Dml, agent: SocketAddr, words: &[String]) -> Result<String, ExecError> {
    let has = |flag: &str| {
        words
            .iter()
            .any(|w| w == flag || w.starts_with(&format!("{flag}=")))
    };
    let mut cmd = tokio::process::Command::new(&dml.exe);
    if !has("--agent") && !has("--context") {
        cmd.arg("--agent").arg(agent.to_string());
    }
    if let Some(k) = dml
        .key_file
        .as_ref()
        .filter(|_| !has("--key-file") && !has("--context"))
    {
        cmd.arg("--key-file").arg(k);
    }
    let out = cmd
        .args(words)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ExecError::Spawn {
            exe: dml.exe.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    if out.status.success() {
        return Ok(match (stdout.is_empty(), stderr.is_empty()) {
            (false, _) => stdout,
            (true, false) => stderr,
            (true, true) => format!("{}: done", words.join(" ")),
        });
    }
    // `dml` ends a failure with "error: MESSAGE" and its kind's exit code.
    let message = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map_or_else(|| stderr.clone(), str::to_string);
    let kind = out
        .status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .and_then(ErrorKind::from_exit_code)
        .unwrap_or(ErrorKind::Internal);
    Err(ExecError::Failed {
        kind,
        message: if message.is_empty() {
            format!("dml exited with {}", out.status)
        } else {
            message
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in `dml`: prints its arguments, or fails as `dml` does.
    fn fake_dml(dir: &std::path::Path, body: &str) -> Dml {
        let exe = dir.join("dml");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dml {
            exe,
            key_file: Some(PathBuf::from("/k/cluster.key")),
        }
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_line_runs_dml_against_the_consoles_agent_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let dml = fake_dml(dir.path(), "echo \"$@\"");
        let agent = SocketAddr::from(([127, 0, 0, 1], 8001));
        let out = command(&dml, agent, &words(&["ls-all", "*"]))
            .await
            .unwrap();
        assert_eq!(
            out,
            "--agent 127.0.0.1:8001 --key-file /k/cluster.key ls-all *"
        );
        // A line that names its own context gets neither.
        let out = command(&dml, agent, &words(&["members", "--context", "lab"]))
            .await
            .unwrap();
        assert_eq!(out, "members --context lab");
    }

    #[tokio::test]
    async fn a_failure_keeps_dmls_words_and_the_kind_of_its_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let dml = fake_dml(
            dir.path(),
            "echo 'error: no file \"x\" in SDFS' >&2; exit 3",
        );
        let agent = SocketAddr::from(([127, 0, 0, 1], 8001));
        let e = command(&dml, agent, &words(&["ls", "x"]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no file \"x\" in SDFS");
        let gone = Dml {
            exe: dir.path().join("missing"),
            key_file: None,
        };
        let e = command(&gone, agent, &words(&["members"]))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot run "), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
