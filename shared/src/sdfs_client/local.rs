//! Local files: the sink a fetched copy goes through (hashing and writing on
//! two threads), temp files and renames, target checks, the directory walk.

use crate::disk::start_writeback;
use crate::error::{Error, Result};
use crate::sdfs::Checksum;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Bytes per piece handed from the network to the hashing and writing threads.
pub(super) const PIECE: usize = 256 << 10;

/// Pieces queued towards each of those threads.
const PIECES_IN_FLIGHT: usize = 8;

/// A fetched copy on its way to disk: one blocking thread hashes the pieces
/// while another writes them (and fsyncs at the end when asked); buffers come
/// back for reuse once both are done with them.
pub(super) struct Sink {
    hash_tx: mpsc::Sender<Arc<Vec<u8>>>,
    write_tx: mpsc::Sender<Arc<Vec<u8>>>,
    spare: std::sync::Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
    hasher: tokio::task::JoinHandle<Checksum>,
    writer: tokio::task::JoinHandle<std::io::Result<u64>>,
}

impl Sink {
    pub(super) fn start(path: &Path, sync: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|reason| Error::LocalFile {
                path: shown(path),
                reason,
            })?;
        let (hash_tx, mut hash_rx) = mpsc::channel::<Arc<Vec<u8>>>(PIECES_IN_FLIGHT);
        let (write_tx, mut write_rx) = mpsc::channel::<Arc<Vec<u8>>>(PIECES_IN_FLIGHT);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let give_back = |piece: Arc<Vec<u8>>, to: &std::sync::mpsc::Sender<Vec<u8>>| {
            // The second of the two threads to let go gets the buffer back.
            if let Ok(buf) = Arc::try_unwrap(piece) {
                let _ = to.send(buf);
            }
        };
        let spare_h = spare_tx.clone();
        let hasher = tokio::task::spawn_blocking(move || {
            let mut h = blake3::Hasher::new();
            while let Some(piece) = hash_rx.blocking_recv() {
                h.update(&piece);
                give_back(piece, &spare_h);
            }
            *h.finalize().as_bytes()
        });
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let (mut n, mut flushed) = (0u64, 0u64);
            while let Some(piece) = write_rx.blocking_recv() {
                file.write_all(&piece)?;
                n += piece.len() as u64;
                give_back(piece, &spare_tx);
                if sync && n - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, n - flushed);
                    flushed = n;
                }
            }
            if sync {
                file.sync_all()?;
            }
            Ok(n)
        });
        Ok(Self {
            hash_tx,
            write_tx,
            spare: std::sync::Mutex::new(spare_rx),
            hasher,
            writer,
        })
    }

    /// A recycled buffer, or a new one.
    pub(super) fn buffer(&self) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE))
    }

    /// Hands a piece to both threads; false once the writer has stopped.
    pub(super) async fn send(&self, piece: Vec<u8>) -> bool {
        let piece = Arc::new(piece);
        let hashed = self.hash_tx.send(piece.clone()).await.is_ok();
        self.write_tx.send(piece).await.is_ok() && hashed
    }

    /// The checksum of what was received and the bytes written (fsynced when asked).
    pub(super) async fn finish(self) -> std::io::Result<(Checksum, u64)> {
        drop((self.hash_tx, self.write_tx));
        let written = self.writer.await.map_err(std::io::Error::other)??;
        let hash = self.hasher.await.map_err(std::io::Error::other)?;
        Ok((hash, written))
    }
}

/// Concatenates `(header, part file)` sections into `out`, atomically.
pub(super) fn write_merged(out: &Path, sections: &[(String, PathBuf)]) -> Result<()> {
    let tmp = temp_path(out)?;
    let local = |path: &Path| {
        let path = shown(path);
        move |reason| Error::LocalFile { path, reason }
    };
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(local(&tmp))?;
        let mut w = std::io::BufWriter::new(file);
        for (header, part) in sections {
            w.write_all(header.as_bytes()).map_err(local(&tmp))?;
            let mut src = std::fs::File::open(part).map_err(local(part))?;
            std::io::copy(&mut src, &mut w).map_err(local(&tmp))?;
            w.write_all(b"\n").map_err(local(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| local(&tmp)(e.into_error()))?;
        file.sync_all().map_err(local(&tmp))?;
        std::fs::rename(&tmp, out).map_err(local(out))?;
        sync_parent(out);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where `name`, as an agent listed it, goes under `dir`: refused unless it
/// is a valid SDFS name (relative, no `.`/`..`/empty component, no
/// backslash or control character), so nothing lands outside `dir`.
pub(super) fn path_under(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    use std::path::Component;
    let unsafe_name = |reason: String| Error::UnsafeName {
        name: crate::sdfs::printable(name).chars().take(200).collect(),
        dir: dir.display().to_string(),
        reason,
    };
    if let Err(e) = crate::sdfs::validate_name(name) {
        return Err(unsafe_name(match e {
            Error::BadName { reason, .. } => reason,
            other => other.to_string(),
        }));
    }
    // Belt and braces: every component a plain name.
    if !Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_name("is not a plain relative path".into()));
    }
    Ok(dir.join(name))
}

/// A local file can be written at `path`: its directory exists and it is not
/// itself a directory.
pub(super) fn check_target(path: &Path) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::LocalFile {
            path: path.display().to_string(),
            reason: std::io::Error::other(reason.to_string()),
        })
    };
    if path.is_dir() {
        return bad("is a directory");
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return bad("its directory does not exist");
    }
    Ok(())
}

/// Size of a local regular file, or a clear error naming it.
pub(super) fn local_file_size(path: &Path) -> Result<u64> {
    let bad = |reason: std::io::Error| Error::LocalFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(bad)?;
    if !meta.is_file() {
        return Err(bad(std::io::Error::other("not a regular file")));
    }
    Ok(meta.len())
}

pub(super) fn open_local(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|reason| Error::LocalFile {
        path: path.display().to_string(),
        reason,
    })
}

/// Bytes written before their writeback is started, so the final fsync of a
/// large download does not have to write the whole file at once.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A hidden, unique temp file name beside `target`.
pub(super) fn temp_path(target: &Path) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file = target.file_name().ok_or_else(|| Error::LocalFile {
        path: target.display().to_string(),
        reason: std::io::Error::other("names no file"),
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        ".{}.{}-{n}.dml-part",
        file.to_string_lossy(),
        std::process::id()
    );
    Ok(target.with_file_name(name))
}

/// The path to name in an error about `path`: the user's target for one of
/// [`temp_path`]'s hidden files (however deeply nested), else `path` itself.
pub(super) fn shown(path: &Path) -> String {
    let mut p = path.to_path_buf();
    while let Some(target) = p
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix('.')?.strip_suffix(".dml-part"))
        .and_then(|f| f.rsplit_once('.'))
        .map(|(file, _pid_n)| p.with_file_name(file))
    {
        p = target;
    }
    p.display().to_string()
}

/// Makes a rename durable (best effort: some filesystems refuse to sync a directory).
pub(super) fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Regular files under `dir`, recursively, with their `/`-separated relative
/// paths, sorted by that path. Symlinks to files are followed, to directories not.
pub(super) fn walk_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let bad = |p: &Path| {
        let path = p.display().to_string();
        move |reason| Error::LocalFile { path, reason }
    };
    if !std::fs::metadata(dir).map_err(bad(dir))?.is_dir() {
        return Err(bad(dir)(std::io::Error::other("not a directory")));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(bad(&d))? {
            let entry = entry.map_err(bad(&d))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = entry.file_type().map_err(bad(&path))?;
            if ty.is_dir() {
                stack.push((path, rel));
            } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_needs_an_existing_directory() {
        let dir = std::env::temp_dir();
        check_target(&dir.join("new-file")).unwrap();
        let e = check_target(&dir).unwrap_err().to_string();
        assert!(e.ends_with("is a directory"), "{e}");
        let e = check_target(&dir.join("no-such-dir-xyz/f")).unwrap_err();
        assert!(e.to_string().contains("no-such-dir-xyz/f"), "{e}");
        check_target(Path::new("relative-file")).unwrap();
    }

    #[test]
    fn a_name_from_the_agent_that_would_escape_the_directory_is_refused_by_name() {
        let dir = Path::new("/tmp/out");
        assert_eq!(
            path_under(dir, "a/b.jpg").unwrap(),
            Path::new("/tmp/out/a/b.jpg")
        );
        for (name, why) in [
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("./x", "'.'"),
            ("a//b", "empty"),
            ("a\\..\\x", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "line feed"),
            ("\u{1b}[2J", "ESC"),
            ("", "empty"),
        ] {
            let e = path_under(dir, name).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Refused);
            let msg = e.to_string();
            assert!(msg.contains(why), "{name:?}: {msg}");
            assert!(msg.contains("/tmp/out"), "{msg}");
            let shown = crate::sdfs::printable(name);
            assert!(msg.contains(&format!("\"{shown}\"")), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg:?}");
        }
    }

    #[test]
    fn errors_about_temp_files_name_the_users_target() {
        let target = Path::new("/proc/self/out.bin");
        let part = temp_path(&temp_path(target).unwrap()).unwrap();
        assert_eq!(shown(&part), "/proc/self/out.bin");
        assert_eq!(shown(Path::new("/x/.y")), "/x/.y");
        // procfs takes no new files, even from root.
        let tmp = temp_path(target).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e = rt
            .block_on(async { Sink::start(&tmp, false).map(|_| ()) })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/proc/self/out.bin") && !e.contains("dml-part"),
            "{e}"
        );
    }

    #[test]
    fn temp_files_are_hidden_unique_and_beside_the_target() {
        let a = temp_path(Path::new("/x/y/out.bin")).unwrap();
        let b = temp_path(Path::new("/x/y/out.bin")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x/y")));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".out.bin.")
        );
        assert!(temp_path(Path::new("/")).is_err());
    }
}
