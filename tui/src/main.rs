//! `dml`, the AwesomeDML operator binary.
//!
//! - [`cli`]: the command line (clap).
//! - [`oneshot`]: `members`, `id`, `join`, `leave`, `stats` against one agent.
//! - [`report`]: tables and JSON for those commands.
//! - [`local`]: `local up|status|down`, a cluster of agents on this machine.
//! - [`console`]: the full-screen console shown without a subcommand.

mod cli;
mod console;
mod local;
mod oneshot;
mod report;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
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

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Local(l)) => local::run(l, cli.json).await,
        Some(c) => oneshot::run(c, oneshot::resolve_agent(&cli.agent)?, cli.json).await,
        None => console::run(oneshot::resolve_agent(&cli.agent)?).await,
    }
}

/// Prints the error (also as JSON on stdout under `--json`) and picks the exit code.
fn fail(json: bool, e: &anyhow::Error) -> ExitCode {
    let msg = format!("{e:#}");
    if json {
        println!("{}", serde_json::json!({ "error": msg }));
    }
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
