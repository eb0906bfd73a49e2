//! A per-test scratch directory, removed when the test passes and kept (with its path
//! printed) when it fails, so the agents' logs can be read.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the parent of all test directories (default: the system
/// temp dir's `dml-tests/`).
pub const TEST_DIR_ENV: &str = "DML_TEST_DIR";
/// Environment variable that, when set, keeps every test directory, passed or failed.
pub const KEEP_ENV: &str = "DML_KEEP_TEST_DIRS";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A scratch directory owned by one test or bench run.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    /// Creates `<base>/<name>-<pid>-<n>-<unix ms>`, `<base>` being `$DML_TEST_DIR` or the
    /// system temp dir's `dml-tests/`.
    pub fn new(name: &str) -> Result<Self> {
        let base = std::env::var_os(TEST_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("dml-tests"));
        Self::new_in(&base, name)
    }

    /// Creates `<base>/<name>-<pid>-<n>-<unix ms>`.
    pub fn new_in(base: &Path, name: &str) -> Result<Self> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{name}-{}-{n}-{ms}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create test directory \"{}\"", path.display()))?;
        Ok(Self {
            path,
            keep: std::env::var_os(KEEP_ENV).is_some(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop even if the test passes.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
