//! `dml`, the AwesomeDML operator binary.
//!
//! - [`cli`]: the command line (clap), in the library for the console.
//! - [`agent_bin`]: finding the `dml-agent` binary to start or upload.
//! - [`oneshot`]: `members`, `id`, `join`, `leave`, `stats` against one agent.
//! - [`report`]: tables and JSON for those commands.
//! - [`sdfs`]: `put`, `get`, `ls`, `get-versions`, `sdfs ...` and `leader`.
//! - [`local`]: `local up|status|down`, a cluster of agents on this machine.
//! - [`cluster`]: `cluster up|down|status`, agents on remote hosts over SSH.
//! - [`console`]: the full-screen console shown without a subcommand.
//! - [`infer`]: `submit-job`, `get-output`, `set-batch-size`, `rates`,
//!   `latency`, `placement`, `jobs` (C1–C5).
//! - [`models`]: `models` and `models build|fetch|upload`.
//! - [`dataset`]: `dataset make`, a seeded sample image dataset.
//! - [`key`]: finding and loading the cluster key; `keygen`.
//! - [`keyring`]: `dml keyring` (list, install, use, remove).
//! - [`credential`]: `credential`, a client credential (admin, read-only).

mod agent_bin;
use dml_tui::cli;
mod cluster;
mod context;
mod credential;
mod dataset;
mod infer;
mod install;
mod key;
mod keyring;
mod local;
mod models;
mod oneshot;
mod report;
mod sdfs;

use clap::Parser;
use cli::{Cli, Command, DEFAULT_AGENT, DatasetCommand};
use dml_shared::{ErrorKind, RemoteError};
use dml_tui::console;
use dml_tui::error::ClientError;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(
                json,
                &anyhow::Error::from(e).context("cannot start the runtime"),
            );
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(json, &e),
    }
}

/// A command line clap refused: exit 2 as clap does, and under `--json` also
/// the `{"error", "kind": "usage"}` line every other failure prints.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    let json = std::env::args_os().any(|a| a == "--json");
    let shown = matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if shown || !json {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    println!("{}", serde_json::json!({ "error": msg, "kind": "usage" }));
    eprint!("{text}");
    ExitCode::from(2)
}

/// `dml ... | head` ends quietly with status 141 (as if by SIGPIPE, like
/// `git`) once the reader has gone, instead of std's panic at the next
/// `print!`. Not SIGPIPE itself: `dml`'s sockets (libssh2's among them)
/// would then kill it instead of failing with an error.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's text for a failed `print!`: "failed printing to stdout: Broken pipe (os error 32)".
        if msg.starts_with("failed printing to stdout") && msg.contains("os error 32") {
            std::process::exit(141);
        }
        default(info);
    }));
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let key_file = cli.key_file.as_deref();
    let name = cli.context.as_deref();
    match &cli.command {
        Some(Command::Keygen { out, force }) => return key::keygen(out, *force, cli.json),
        Some(Command::Credential { role, out, force }) => {
            return credential::run(key_file, *role, out, *force, cli.json);
        }
        Some(Command::Local(l)) => return local::run(l, key_file, name, cli.json).await,
        Some(Command::Completion { shell }) => {
            install::completion(*shell, &mut std::io::stdout());
            return Ok(());
        }
        Some(Command::Install { prefix }) => return install::install(prefix.as_deref(), cli.json),
        Some(Command::Context(c)) => return context::run(c, cli.json),
        _ => {}
    }
    // Flags and environment first, then the context, then the defaults.
    let ctx = match (&cli.agent, key_file) {
        (Some(_), Some(_)) => None,
        _ => context::selected(name)?.map(|(_, c)| c),
    };
    let key_file = key_file.or(ctx.as_ref().and_then(|c| c.key_file.as_deref()));
    let agent = match (&cli.agent, &ctx) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) if !c.agents.is_empty() => context::pick_agent(&c.agents)
            .await
            .map(|a| a.to_string())
            .unwrap_or_else(|| DEFAULT_AGENT.to_string()),
        _ => DEFAULT_AGENT.to_string(),
    };
    key::install(key_file)?;
    match &cli.command {
        Some(
            Command::Keygen { .. }
            | Command::Credential { .. }
            | Command::Local(_)
            | Command::Completion { .. }
            | Command::Install { .. }
            | Command::Context(_),
        ) => {
            unreachable!("handled above")
        }
        Some(Command::Cluster(c)) => {
            cluster::run(c, key::find(key_file).as_deref(), name, cli.json).await
        }
        Some(Command::Screenshot {
            out,
            width,
            height,
            settle_secs,
        }) => {
            let agent = oneshot::resolve_agent(cli.connect.as_deref().unwrap_or(&agent))?;
            let size = ((*width).clamp(40, 400), (*height).clamp(12, 200));
            let buf =
                console::shot::capture(agent, size, std::time::Duration::from_secs(*settle_secs))
                    .await?;
            std::fs::write(out, console::shot::svg(&buf))
                .map_err(|e| ClientError::io("write", out, e))?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"out": out, "width": size.0, "height": size.1})
                );
            } else {
                println!("wrote {} ({}x{})", out.display(), size.0, size.1);
            }
            Ok(())
        }
        Some(Command::Models(m)) => models::run(m, &agent, cli.json).await,
        Some(Command::Keyring(k)) => {
            keyring::run(k, oneshot::resolve_agent(&agent)?, cli.json).await
        }
        Some(Command::Dataset(DatasetCommand::Make { dir, count, seed })) => {
            dataset::run_make(dir, *count, *seed, cli.json)
        }
        Some(c) if infer::handles(c) => {
            infer::run(c, oneshot::resolve_agent(&agent)?, cli.json).await
        }
        Some(c) if sdfs::handles(c) => {
            sdfs::run(c, oneshot::resolve_agent(&agent)?, cli.json).await
        }
        Some(c) => oneshot::run(c, oneshot::resolve_agent(&agent)?, cli.json).await,
        None => {
            let agent = cli.connect.as_deref().unwrap_or(&agent);
            let dml = console::exec::Dml {
                exe: anyhow::Context::context(
                    std::env::current_exe(),
                    "cannot find the dml binary itself",
                )?,
                key_file: key::find(key_file),
            };
            console::run(oneshot::resolve_agent(agent)?, dml).await
        }
    }
}

/// Prints the error (also as JSON on stdout under `--json`, with its kind)
/// and exits with its kind's code (README, "Exit codes").
fn fail(json: bool, e: &anyhow::Error) -> ExitCode {
    let msg = error_message(e);
    let kind = error_kind(e);
    // A bulk command's JSON report already carries its failure.
    if json && e.downcast_ref::<sdfs::PartialFailure>().is_none() {
        println!(
            "{}",
            serde_json::json!({ "error": msg, "kind": kind.as_str() })
        );
    }
    eprintln!("error: {msg}");
    ExitCode::from(kind.exit_code())
}

/// The kind of the first typed error in the chain: the outermost one says
/// best what the command failed at. Errors with no type are `internal`.
fn error_kind(e: &anyhow::Error) -> ErrorKind {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<dml_shared::Error>()
                .map(dml_shared::Error::kind)
                .or_else(|| c.downcast_ref::<RemoteError>().map(|r| r.kind))
                .or_else(|| c.downcast_ref::<ClientError>().map(ClientError::kind))
        })
        .unwrap_or(ErrorKind::Internal)
}

/// The error and its causes joined by ": ", skipping a cause the message
/// above it already quotes (some errors print their source themselves).
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_does_not_repeat_a_quoted_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::from(dml_shared::Error::Connect {
            addr: "127.0.0.1:8001".into(),
            reason: io,
        });
        assert_eq!(
            error_message(&e),
            "cannot reach agent at 127.0.0.1:8001: connection refused"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&e), "outer: inner");
    }

    #[test]
    fn the_exit_code_follows_the_kind_of_the_typed_error_in_the_chain() {
        let remote = |kind| {
            anyhow::Error::from(dml_shared::Error::Remote(RemoteError::new(kind, "x")))
                .context("get \"a\"")
        };
        for kind in ErrorKind::ALL {
            assert_eq!(error_kind(&remote(kind)), kind);
        }
        let missing = anyhow::Error::from(dml_shared::Error::NotFound { name: "a".into() });
        assert_eq!(error_kind(&missing), ErrorKind::NotFound);
        assert_eq!(error_kind(&anyhow::anyhow!("untyped")), ErrorKind::Internal);
        // A failure found on this side, under a context.
        let bad = anyhow::Error::from(ClientError::bad_value("batch size", 0, "at least 1"))
            .context("set-batch-size");
        assert_eq!(error_kind(&bad), ErrorKind::Invalid);
        let unwritable = anyhow::Error::from(ClientError::io(
            "write",
            "/nonexistent/out.jsonl",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
        assert_eq!(error_kind(&unwritable), ErrorKind::NotFound);
        // Distinct codes, none of them clap's usage error (2) or success.
        let mut codes: Vec<u8> = ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(!codes.contains(&0) && !codes.contains(&2));
    }
}
