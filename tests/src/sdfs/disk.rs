//! An agent's on-disk store, inspected without knowing its layout: a stored copy of a
//! version is a regular file under the agent's data directory holding exactly its bytes.
//! Test contents are pseudo-random per put, so a match names one version.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Every regular file under `dir`, recursively; a missing directory has none.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list \"{}\"", d.display())),
        };
        for e in entries {
            // A file may vanish between the listing and the look (reconcile, a rename).
            let Ok(e) = e else { continue };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files under `data_dir` whose bytes are exactly `bytes`.
pub fn copies_of(data_dir: &Path, bytes: &[u8]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in files_under(data_dir)? {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.len() != bytes.len() as u64 {
            continue;
        }
        if std::fs::read(&p).is_ok_and(|b| b == bytes) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Total size of the files under `dir` whose names show they are temporary (a `tmp`
/// directory on their path, or a `.tmp`/`.part` suffix): space a failed put must free.
pub fn temp_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for p in files_under(dir)? {
        let s = p.to_string_lossy();
        let in_tmp = p
            .strip_prefix(dir)
            .is_ok_and(|r| r.components().any(|c| c.as_os_str() == "tmp"));
        if in_tmp || s.ends_with(".tmp") || s.ends_with(".part") {
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Flips every byte of `len` bytes at the middle of the file, keeping its size, and
/// syncs it: a bit-rotted replica.
pub fn corrupt_middle(path: &Path, len: usize) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open \"{}\"", path.display()))?;
    let size = f.metadata()?.len();
    let len = len.min(usize::try_from(size).unwrap_or(usize::MAX));
    let at = (size - len as u64) / 2;
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    for b in &mut buf {
        *b = !*b;
    }
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&buf)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_copies_by_content_and_corrupts_in_place() {
        let dir = crate::TestDir::new("disk-helpers").unwrap();
        let bytes = crate::sdfs::content::pattern(9, 4096);
        let deep = dir.path().join("sdfs/objects/ab/f.v1");
        crate::sdfs::content::write_file(&deep, &bytes).unwrap();
        crate::sdfs::content::write_file(&dir.path().join("sdfs/tmp/x"), &bytes[..10]).unwrap();
        assert_eq!(copies_of(dir.path(), &bytes).unwrap(), vec![deep.clone()]);
        assert_eq!(temp_bytes(dir.path()).unwrap(), 10);
        corrupt_middle(&deep, 16).unwrap();
        assert!(copies_of(dir.path(), &bytes).unwrap().is_empty());
        assert_eq!(std::fs::metadata(&deep).unwrap().len(), 4096);
    }
}
