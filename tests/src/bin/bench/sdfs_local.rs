//! What `bench sdfs` measures outside SDFS: the local-disk baseline (the same bytes to 4
//! files with fsync, one copy read back), the page cache, free space and agents' memory.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Buffer size of the baseline copy and read, the same as SDFS's default chunk.
const CHUNK: usize = 1 << 20;

/// Writes `src`'s bytes to each of `dsts` (one read of `src`, every chunk written to
/// every copy), fsyncs every copy, and returns the time taken.
pub fn write_copies(src: &Path, dsts: &[PathBuf]) -> Result<Duration> {
    let t = Instant::now();
    let mut input =
        std::fs::File::open(src).with_context(|| format!("cannot open \"{}\"", src.display()))?;
    let mut outs = dsts
        .iter()
        .map(|p| {
            std::fs::File::create(p).with_context(|| format!("cannot create \"{}\"", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for o in &mut outs {
            o.write_all(&buf[..n])?;
        }
    }
    for o in &outs {
        o.sync_all()?;
    }
    Ok(t.elapsed())
}

/// Reads `path` to the end and returns the time taken.
pub fn read_all(path: &Path) -> Result<Duration> {
    let t = Instant::now();
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open \"{}\"", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut sink = 0u8;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Touch the bytes so the read cannot be skipped.
        sink ^= buf[n - 1];
    }
    std::hint::black_box(sink);
    Ok(t.elapsed())
}

/// Makes the data under `roots` (files, or directories walked) cold: syncs, then evicts
/// each file from the page cache (`posix_fadvise(DONTNEED)`), so the next read comes from
/// disk. Only the data goes: the agents' and the bench's program text and the agents'
/// Raft databases stay cached, as on a running cluster (dropping the whole page cache
/// made the first request after it fault the agents' code back in from disk).
/// `Err` names a file that could not be evicted.
pub fn evict(roots: &[PathBuf]) -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { nix::libc::sync() };
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // gone since (a temp file)
        };
        if meta.is_dir() {
            for e in
                std::fs::read_dir(&p).with_context(|| format!("cannot list \"{}\"", p.display()))?
            {
                stack.push(e?.path());
            }
        } else if meta.is_file() {
            let Ok(f) = std::fs::File::open(&p) else {
                continue;
            };
            use std::os::fd::AsRawFd;
            // SAFETY: fadvise on a descriptor we own.
            let r = unsafe {
                nix::libc::posix_fadvise(f.as_raw_fd(), 0, 0, nix::libc::POSIX_FADV_DONTNEED)
            };
            if r != 0 {
                bail!(
                    "cannot evict \"{}\" from the page cache: {}",
                    p.display(),
                    std::io::Error::from_raw_os_error(r)
                );
            }
        }
    }
    Ok(())
}

/// Bytes available to unprivileged users on the file system holding `dir` (`df`).
pub fn available_bytes(dir: &Path) -> Result<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("cannot run df")?;
    if !out.status.success() {
        bail!("df failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("cannot read df output \"{}\"", text.trim()))
}

/// A field of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`).
pub fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("no {field} in {path}"))?;
    let kib: u64 = line[field.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad line \"{line}\" in {path}"))?;
    Ok(kib * 1024)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (`echo 5 > clear_refs`).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("cannot write {path}"))
}
