//! Finding the `dml-agent` binary that `dml local` starts and `dml cluster`
//! uploads: beside the running `dml`, or where `--agent-bin` says.

use anyhow::{Context, Result};
use dml_tui::error::ClientError;
use std::path::{Path, PathBuf};

/// The agent binary's file name.
pub const AGENT_BIN_NAME: &str = "dml-agent";

/// `--agent-bin`, or `dml-agent` beside the running `dml`.
pub fn find_agent_bin(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot tell where dml runs from; pass --agent-bin")?
            .parent()
            .map(|d| d.join(AGENT_BIN_NAME))
            .context("cannot tell where dml runs from; pass --agent-bin")?,
    };
    if !path.is_file() {
        return Err(ClientError::Missing {
            what: "agent binary",
            path,
            hint: "build it with `cargo build --bin dml-agent` (next to dml) or pass --agent-bin PATH",
        }
        .into());
    }
    Ok(path)
}
