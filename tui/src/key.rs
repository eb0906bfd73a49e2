//! Finding, loading and making the cluster key (`dml keygen`).

use anyhow::{Context, Result};
use dml_shared::auth::{self, ClusterKey};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where `dml keygen` writes by default.
pub use dml_tui::cli::KEYGEN_PATH;
/// Tried in order when no key file is given.
pub const DEFAULT_PATHS: [&str; 2] = [".dml/run/cluster.key", KEYGEN_PATH];

/// The key file to use: the given one, else the first default that exists.
pub fn find(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()))
}

/// Loads and installs the key of [`find`]. Without one nothing is
/// installed, and a command that talks to an agent fails with a message
/// saying how to give one.
pub fn install(given: Option<&Path>) -> Result<()> {
    if let Some(path) = find(given) {
        let key = ClusterKey::load(&path)?;
        auth::install(key)?;
    }
    Ok(())
}

/// `dml keygen`.
pub fn keygen(out: &Path, force: bool, json: bool) -> Result<()> {
    let key = ClusterKey::write_new(out, force).context("cannot write a cluster key")?;
    if json {
        println!("{}", json!({"path": out, "fingerprint": key.fingerprint()}));
    } else {
        println!(
            "wrote cluster key {} to {} (mode 0600); give every agent and dml this file \
             (--key-file, DML_KEY_FILE or security.key_file)",
            key.fingerprint(),
            out.display()
        );
    }
    Ok(())
}

/// The key of a local cluster: `given`, else `<run_dir>/cluster.key`, made
/// if missing. Returns its path, installed for this process.
pub fn for_local_cluster(given: Option<&Path>, run_dir: &Path) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => run_dir.join("cluster.key"),
    };
    let key = if given.is_none() && !path.exists() {
        ClusterKey::write_new(&path, false)?
    } else {
        ClusterKey::load(&path)?
    };
    auth::install(key)?;
    Ok(path)
}
