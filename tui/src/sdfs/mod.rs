//! The SDFS commands of `dml` (put, get, delete, ls, store, get-versions,
//! get-all, ls-all, `sdfs files|nodes|count|load`) and `dml leader`, all
//! through [`dml_shared::sdfs_client`].
//!
//! - [`report`]: their tables and JSON.
//! - [`progress`]: the terminal progress bar.

pub mod progress;
pub mod report;

use crate::cli::{Command, SdfsCommand};
use crate::oneshot::resolve_agent;
use anyhow::{Context, Result, bail};
use dml_shared::client::Client;
use dml_shared::sdfs::printable;
use dml_shared::sdfs_client::{Progress, Sdfs};
use progress::Bar;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Whether `command` is one of the commands this module runs.
pub fn handles(command: &Command) -> bool {
    matches!(
        command,
        Command::Leader
            | Command::Put { .. }
            | Command::Get { .. }
            | Command::Delete { .. }
            | Command::Ls { .. }
            | Command::Store { .. }
            | Command::GetVersions { .. }
            | Command::GetAll { .. }
            | Command::LsAll { .. }
            | Command::Sdfs(_)
    )
}

/// Runs one SDFS command through `agent` and prints its answer.
pub async fn run(command: &Command, agent: SocketAddr, json: bool) -> Result<()> {
    let sdfs = Sdfs::new(agent);
    let bar = Bar::for_terminal(json);
    let progress = |p: Progress| bar.update(p);
    let result = execute(command, &sdfs, json, &progress).await;
    bar.finish();
    let out = result?;
    if let Some(w) = &out.warning {
        eprintln!("{w}");
    }
    if !out.raw {
        print!("{}", out.text);
        if json {
            println!();
        }
    }
    match out.failed {
        Some(msg) => Err(PartialFailure(msg).into()),
        None => Ok(()),
    }
}

/// Some files of a bulk command failed; the report (with an `"error"` key
/// under `--json`) is already printed, so only the exit code and stderr remain.
#[derive(Debug)]
pub struct PartialFailure(pub String);

impl std::fmt::Display for PartialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PartialFailure {}

/// The JSON report with the failure added, or the text report as is.
fn with_failure(mut out: Output, json: bool, msg: String) -> Output {
    if json && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&out.text) {
        v["error"] = serde_json::Value::String(msg.clone());
        out.text = v.to_string();
    }
    out.failed = Some(msg);
    out
}

/// What a command prints, and whether it failed in part (after printing).
struct Output {
    text: String,
    failed: Option<String>,
    /// Printed on stderr (never under `--json`) though the command succeeded.
    warning: Option<String>,
    /// The command wrote a file's bytes to stdout: no report follows them.
    raw: bool,
}

impl Output {
    fn ok(text: String) -> Self {
        Self {
            text,
            failed: None,
            warning: None,
            raw: false,
        }
    }
}

/// Where `dml get` writes: LOCALFILE, or the SDFS name's last component
/// inside it when LOCALFILE is a directory or ends in '/' (as `cp` does).
fn get_target(localfile: &Path, sdfsname: &str) -> PathBuf {
    let dir = localfile.is_dir() || localfile.as_os_str().to_string_lossy().ends_with('/');
    match sdfsname.rsplit('/').next() {
        Some(base) if dir && !base.is_empty() => localfile.join(base),
        _ => localfile.to_path_buf(),
    }
}

/// Stdin copied into a file of a new private (0700) temporary directory,
/// removed when the returned guard drops.
fn stdin_to_temp() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let path = dir.path().join("put");
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::copy(&mut std::io::stdin().lock(), &mut f).context("cannot read stdin")?;
    Ok((dir, path))
}

/// Copies a fetched file to stdout, then removes its temporary directory. A
/// reader that went away (`| head`) ends `dml` quietly with 141, as a
/// broken pipe does elsewhere (see main.rs).
fn to_stdout(file: &Path, dir: tempfile::TempDir) -> Result<()> {
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut f, &mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            drop(dir);
            std::process::exit(141);
        }
        Err(e) => Err(anyhow::Error::from(e).context("cannot write to stdout")),
    }
}

async fn execute(
    command: &Command,
    sdfs: &Sdfs,
    json: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Output> {
    let pick =
        |v: serde_json::Value, text: String| Output::ok(if json { v.to_string() } else { text });
    let out = match command {
        Command::Leader => {
            let agent = sdfs.agent();
            let l = Client::new(agent).leader().await?;
            if l.voters.is_empty() {
                return Err(dml_shared::Error::Remote(dml_shared::RemoteError::new(
                    dml_shared::ErrorKind::Refused,
                    format!(
                        "{agent} has no control-plane voters configured, so there is no leader: start the agents with `--node` for every agent (or set `nodes` or `control.voters` in their config)"
                    ),
                ))
                .into());
            }
            pick(
                report::leader_json(agent, &l),
                report::leader_text(agent, &l),
            )
        }
        Command::Put {
            localfiles,
            sdfsname,
        } if localfiles.len() > 1 || localfiles[0].is_dir() => {
            if localfiles.iter().any(|p| p.as_os_str() == "-") {
                bail!("`-` (stdin) can only be put alone, as one file");
            }
            let r = sdfs.put_paths(localfiles, sdfsname, progress).await?;
            let out = pick(report::load_json(&r), report::load_text(&r));
            if r.failed() > 0 {
                let msg = format!("{} of {} files failed", r.failed(), r.items.len());
                with_failure(out, json, msg)
            } else {
                out
            }
        }
        Command::Put {
            localfiles,
            sdfsname,
        } => {
            let localfile = &localfiles[0];
            // `-`: stdin, kept in a private temporary file first (a put
            // needs its size and checksum before the bytes).
            let stdin = (localfile.as_os_str() == "-")
                .then(|| stdin_to_temp().context("read the file to put from stdin"))
                .transpose()?;
            let from = stdin
                .as_ref()
                .map_or(localfile.as_path(), |(_, p)| p.as_path());
            let r = sdfs.put(from, sdfsname, progress).await.with_context(|| {
                format!("put {} as \"{}\"", localfile.display(), printable(sdfsname))
            })?;
            let mut out = pick(report::put_json(&r), report::put_text(&r));
            if !json {
                out.warning = report::put_warning(&r);
            }
            out
        }
        Command::Get {
            sdfsname,
            localfile,
        } => {
            if localfile.as_os_str() == "-" {
                let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
                let tmp = dir.path().join("get");
                sdfs.get(sdfsname, &tmp, progress)
                    .await
                    .with_context(|| format!("get \"{}\"", printable(sdfsname)))?;
                to_stdout(&tmp, dir)?;
                let mut out = Output::ok(String::new());
                out.raw = true;
                out
            } else {
                let target = get_target(localfile, sdfsname);
                let r = sdfs
                    .get(sdfsname, &target, progress)
                    .await
                    .with_context(|| format!("get \"{}\"", printable(sdfsname)))?;
                pick(report::get_json(&r), report::get_text(&r))
            }
        }
        Command::Delete { sdfsname } => {
            sdfs.delete_with(sdfsname, progress)
                .await
                .with_context(|| format!("delete \"{}\"", printable(sdfsname)))?;
            pick(
                json!({"name": sdfsname, "deleted": true}),
                format!("deleted every version of \"{}\"\n", printable(sdfsname)),
            )
        }
        Command::Ls { sdfsname } => {
            let f = sdfs.ls(sdfsname).await?;
            pick(report::file_json(&f), report::ls_table(&f))
        }
        // Printed page by page: the first names show at once however many match.
        Command::LsAll { glob } => {
            let mut table = report::FilesStream::new(json);
            sdfs.ls_all_pages(glob, |page| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(table.page(&page).as_bytes());
                let _ = out.flush();
            })
            .await?;
            print!("{}", table.end());
            Output {
                raw: true,
                ..Output::ok(String::new())
            }
        }
        Command::Store { node } => {
            let node = match node {
                Some(n) => resolve_agent(n)?,
                None => sdfs.agent(),
            };
            let held = sdfs.store(Some(node)).await?;
            pick(
                report::store_json(node, &held),
                report::store_table(node, &held),
            )
        }
        Command::GetVersions {
            sdfsname,
            n,
            localpath,
            merge,
        } => {
            let n = usize::try_from(*n).unwrap_or(usize::MAX);
            let r = sdfs
                .get_versions(sdfsname, n, localpath, *merge, progress)
                .await
                .with_context(|| format!("get-versions \"{}\"", printable(sdfsname)))?;
            pick(report::versions_json(&r), report::versions_text(&r))
        }
        Command::GetAll { glob, localdir } => {
            let r = sdfs.get_all(glob, localdir, progress).await?;
            let failed = r.items.iter().filter(|(_, r)| r.is_err()).count();
            let out = pick(report::get_all_json(&r), report::get_all_text(&r));
            if failed > 0 {
                with_failure(
                    out,
                    json,
                    format!("{failed} of {} files failed", r.items.len()),
                )
            } else if r.items.is_empty() {
                with_failure(out, json, format!("no SDFS file matches \"{glob}\""))
            } else {
                out
            }
        }
        Command::Sdfs(SdfsCommand::Files) => {
            let f = sdfs.files().await?;
            pick(report::files_json(&f), report::files_table(&f))
        }
        Command::Sdfs(SdfsCommand::Nodes) => {
            let n = sdfs.nodes().await?;
            pick(report::nodes_json(&n), report::nodes_table(&n))
        }
        Command::Sdfs(SdfsCommand::Balance { dry_run }) => {
            let p = sdfs.balance(*dry_run).await?;
            pick(report::balance_json(&p), report::balance_text(&p))
        }
        Command::Sdfs(SdfsCommand::Count) => {
            let c = sdfs.count().await?;
            pick(report::count_json(&c), report::count_text(&c))
        }
        Command::Sdfs(SdfsCommand::Load { localdir, prefix }) => {
            let r = sdfs.load(localdir, prefix, progress).await?;
            let out = pick(report::load_json(&r), report::load_text(&r));
            if r.failed() > 0 {
                let msg = format!("{} of {} files failed", r.failed(), r.items.len());
                with_failure(out, json, msg)
            } else {
                out
            }
        }
        other => bail!("{other:?} is not an SDFS command"),
    };
    Ok(out)
}
