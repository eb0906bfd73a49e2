//! The cluster key every agent, `dml` run and in-process client of the
//! tests uses: one file beside the binaries, made once and shared by all
//! test processes, and installed in this process.

use anyhow::{Context, Result};
use dml_shared::auth::{self, ClusterKey};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The shared test key's file, made on first use and installed in this process.
pub fn path() -> Result<PathBuf> {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    if let Some(p) = PATH.get() {
        return Ok(p.clone());
    }
    // Tests of one binary run on threads that share a pid: one makes the key.
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = PATH.get() {
        return Ok(p.clone());
    }
    let path = crate::bins::bin_dir()?.join("dml-test-cluster.key");
    if !path.exists() {
        // Published with a hard link, so a racing process sees all or nothing.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", ClusterKey::generate_hex()?))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = linked
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
    }
    auth::install(ClusterKey::load(&path)?)?;
    Ok(PATH.get_or_init(|| path).clone())
}

/// Writes a fresh key, different from the shared one, to `path`.
pub fn other(path: &std::path::Path) -> Result<ClusterKey> {
    Ok(ClusterKey::write_new(path, true)?)
}
