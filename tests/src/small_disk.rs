//! A full disk on one host: a small file system of an agent's own (a tmpfs mounted under
//! its directory, its data directory inside), and a ballast file that fills it to ENOSPC
//! until removed. A tmpfs fails a write that does not fit with ENOSPC as a disk does, costs
//! memory only for what is written, and needs no loop device.
//!
//! The mount's source names the process that made it (`dmlb-<pid>-disk`): [`sweep_stale`]
//! (called by [`crate::netbed::sweep_stale`]) unmounts those of processes that no longer
//! run, and [`SmallDisk`] unmounts on drop, so a crashed run leaves nothing mounted.

use anyhow::{Context, Result, bail, ensure};
use nix::mount::{MntFlags, MsFlags};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Prefix of a small disk's mount source, followed by the mounting process's pid.
const SOURCE_PREFIX: &str = "dmlb-";
const SOURCE_SUFFIX: &str = "-disk";
/// The ballast's file name, beside (not inside) the agent's data directory.
const BALLAST: &str = "ballast";
/// Bytes per write while filling.
const FILL_CHUNK: usize = 1 << 20;

/// A tmpfs of a fixed size at `path`; unmounted (lazily: an agent may still hold files
/// open) on drop.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `path` (created). Needs root.
    pub fn mount(path: &Path, bytes: u64) -> Result<Self> {
        ensure!(
            nix::unistd::Uid::effective().is_root(),
            "a small disk (tmpfs mount) needs root"
        );
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create \"{}\"", path.display()))?;
        let source = format!("{SOURCE_PREFIX}{}{SOURCE_SUFFIX}", std::process::id());
        let opts = format!("size={bytes},mode=0755");
        nix::mount::mount(
            Some(source.as_str()),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .with_context(|| {
            format!(
                "cannot mount a {bytes}-byte tmpfs at \"{}\"",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ballast(&self) -> PathBuf {
        self.path.join(BALLAST)
    }

    /// Bytes free for an unprivileged writer.
    pub fn available(&self) -> Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.path)
            .with_context(|| format!("statvfs \"{}\"", self.path.display()))?;
        Ok(s.blocks_available() * s.fragment_size())
    }

    /// Grows the ballast until at most `leave` bytes are free (0: until a write fails with
    /// ENOSPC). Returns the ballast's size.
    pub fn fill_leaving(&self, leave: u64) -> Result<u64> {
        let path = self.ballast();
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open \"{}\"", path.display()))?;
        let chunk = vec![0x5au8; FILL_CHUNK];
        loop {
            let free = self.available()?;
            if leave > 0 && free <= leave {
                break;
            }
            let n = if leave > 0 {
                usize::try_from(free - leave)
                    .unwrap_or(FILL_CHUNK)
                    .min(FILL_CHUNK)
            } else {
                FILL_CHUNK
            };
            match f.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => {
                    return Err(e).with_context(|| format!("writing \"{}\"", path.display()));
                }
            }
        }
        Ok(f.metadata()?.len())
    }

    /// Fills the disk to ENOSPC. Returns the ballast's size.
    pub fn fill(&self) -> Result<u64> {
        self.fill_leaving(0)
    }

    /// Deletes the ballast (none is fine).
    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(self.ballast()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("cannot delete the ballast"),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount \"{}\": {e}", self.path.display());
        }
    }
}

/// The pid in a small disk's mount source.
fn owner(source: &str) -> Option<i32> {
    source
        .strip_prefix(SOURCE_PREFIX)?
        .strip_suffix(SOURCE_SUFFIX)?
        .parse()
        .ok()
}

/// Unmounts the small disks of processes that no longer run. Returns how many.
pub fn sweep_stale() -> Result<usize> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .context("cannot read /proc/self/mountinfo")?;
    let mut removed = 0;
    for m in mounts {
        let Some(pid) = m.mount_source.as_deref().and_then(owner) else {
            continue;
        };
        if m.fs_type != "tmpfs" || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match nix::mount::umount2(&m.mount_point, MntFlags::MNT_DETACH) {
            Ok(()) => removed += 1,
            Err(e) => bail!(
                "cannot unmount a dead run's small disk \"{}\": {e}",
                m.mount_point.display()
            ),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_source_names_its_process() {
        assert_eq!(owner("dmlb-123-disk"), Some(123));
        assert_eq!(owner("dmlb-123-0-h1"), None);
        assert_eq!(owner("tmpfs"), None);
    }

    #[test]
    fn a_small_disk_fills_to_enospc_frees_and_is_swept_when_its_owner_is_gone() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = crate::TestDir::new("small-disk").unwrap();
        let disk = SmallDisk::mount(&dir.path().join("disk"), 4 << 20).unwrap();
        let full = disk.fill().unwrap();
        assert!(full > 3 << 20, "ballast {full}");
        let e = std::fs::write(disk.path().join("x"), vec![1u8; 8192]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
        disk.free().unwrap();
        std::fs::write(disk.path().join("x"), vec![1u8; 8192]).unwrap();
        disk.fill_leaving(1 << 20).unwrap();
        let free = disk.available().unwrap();
        assert!(free <= 1 << 20 && free > 0, "free {free}");
        drop(disk);
        assert!(!dir.path().join("disk/x").exists(), "unmounted on drop");

        // A mount whose owner is dead (no process has pid i32::MAX) is swept.
        let stale = dir.path().join("stale");
        std::fs::create_dir_all(&stale).unwrap();
        nix::mount::mount(
            Some(format!("{SOURCE_PREFIX}{}{SOURCE_SUFFIX}", i32::MAX).as_str()),
            &stale,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(stale.join("y"), b"y").unwrap();
        assert!(sweep_stale().unwrap() >= 1);
        assert!(!stale.join("y").exists(), "swept");
    }
}
