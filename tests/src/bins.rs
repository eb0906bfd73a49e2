//! Finding the workspace's binaries: they live in `target/<profile>/`, the directory of the
//! bench executable and the parent of the test executables' `deps/`.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// File name of the agent daemon.
pub const AGENT_BIN: &str = "dml-agent";
/// File name of the operator command line.
pub const DML_BIN: &str = "dml";
/// Environment variable that, when set, names the directory holding the binaries.
pub const BIN_DIR_ENV: &str = "DML_BIN_DIR";

/// The directory holding the workspace's binaries: `$DML_BIN_DIR`, or `target/<profile>/`
/// derived from the running executable.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("executable \"{}\" has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of the workspace binary `name`, or an error saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "binary \"{}\" not found: run `cargo build --workspace --bins` (with the same profile \
             as the tests, e.g. add --release for release tests) before running these tests, or \
             set {BIN_DIR_ENV} to the directory holding it",
            path.display()
        );
    }
    Ok(path)
}

/// The `dml-agent` binary.
pub fn agent_bin() -> Result<PathBuf> {
    binary(AGENT_BIN)
}

/// The `dml` binary.
pub fn dml_bin() -> Result<PathBuf> {
    binary(DML_BIN)
}
