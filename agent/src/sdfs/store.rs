//! The on-disk store of one agent, under `<data_dir>/sdfs/`:
//!
//! - `objects/<encoded name>.v<version>`: the bytes of one version;
//! - `objects/<encoded name>.v<version>.meta`: JSON sidecar with the name,
//!   version, size and the BLAKE3 checksum recorded at write time;
//! - `tmp/`: writes in progress.
//!
//! A write goes to `tmp/`, is hashed as it arrives, checked against the
//! announced size and checksum; the data and its sidecar are fsynced (at
//! once, on two threads), then renamed into `objects/` (sidecar first). The
//! renames are not fsynced on the write's path: until the file system
//! commits them, the fsynced temp pair is the durable record, and
//! [`Store::open`] finishes the renames of every verified pair a crash left
//! behind ([`Store::recover_temp`]). An object exists when both files do; a
//! sidecar without data is dropped at start. Every call here blocks: run it
//! on a blocking thread.

use super::encode::object_file;
use super::error::{SdfsError, is_disk_full};
use dml_shared::disk::start_writeback;
use dml_shared::sdfs::{Checksum, Holding, validate_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const META_SUFFIX: &str = ".meta";
const PART_SUFFIX: &str = ".part";

/// What the sidecar of a stored version records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    pub version: u64,
    pub size: u64,
    #[serde(with = "hex_checksum")]
    pub checksum: Checksum,
    /// When this copy was stored (Unix ms).
    pub stored_ms: u64,
    /// The plan id of the put that wrote it; `None` for a copy of a committed
    /// version (repair, scrub) and for sidecars older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<u64>,
}

/// The result of re-hashing a stored copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact,
    /// The bytes on disk no longer match the recorded size or checksum.
    Corrupt,
    /// The data file is gone.
    Missing,
}

/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    agent: SocketAddr,
    objects: PathBuf,
    tmp: PathBuf,
    index: Mutex<BTreeMap<(String, u64), ObjectMeta>>,
    temp_seq: AtomicU64,
    /// Testing seam: a write past this many bytes of one object fails as a
    /// full disk would. `u64::MAX` means no limit.
    write_limit: AtomicU64,
    /// `sdfs.disk_reserve`: free bytes a new copy must leave (0: no check).
    reserve: AtomicU64,
}

impl Store {
    /// Opens (creating) the store under `<data_dir>/sdfs/`, removes temp
    /// files left by a previous run and indexes what is stored.
    pub fn open(data_dir: &Path, agent: SocketAddr) -> Result<Self, SdfsError> {
        let root = data_dir.join("sdfs");
        let store = Store {
            inner: Arc::new(Inner {
                agent,
                objects: root.join("objects"),
                tmp: root.join("tmp"),
                index: Mutex::new(BTreeMap::new()),
                temp_seq: AtomicU64::new(0),
                write_limit: AtomicU64::new(u64::MAX),
                reserve: AtomicU64::new(0),
            }),
        };
        for dir in [&store.inner.objects, &store.inner.tmp] {
            fs::create_dir_all(dir).map_err(|e| store.io("create", dir, e))?;
        }
        // Nothing can be in flight before the store is opened.
        store.recover_temp();
        store.sweep_tmp(Duration::ZERO);
        store.rescan(true)?;
        Ok(store)
    }

    /// Finishes the renames of writes whose temp pair was fsynced before a
    /// crash (their renames may not have reached the disk): a data temp file
    /// whose sidecar (still in `tmp/`, or already in `objects/` while the
    /// data is not) matches its name, size and checksum goes into place.
    /// Returns how many. What does not verify is left for the sweep.
    pub fn recover_temp(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.inner.tmp) else {
            return 0;
        };
        let mut recovered = 0;
        for entry in entries.flatten() {
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            let Some(stem) = file.strip_suffix(PART_SUFFIX) else {
                continue;
            };
            // `<object file>.<pid>-<seq>`; sidecars end in `.meta.part`.
            let Some((obj, _)) = stem
                .rsplit_once('.')
                .filter(|_| !stem.ends_with(META_SUFFIX))
            else {
                continue;
            };
            let tmp_meta = self
                .inner
                .tmp
                .join(format!("{stem}{META_SUFFIX}{PART_SUFFIX}"));
            let placed_meta = self.inner.objects.join(format!("{obj}{META_SUFFIX}"));
            let data_final = self.inner.objects.join(obj);
            if data_final.exists() {
                continue;
            }
            let (meta_path, placed) = if tmp_meta.exists() {
                (tmp_meta, false)
            } else {
                (placed_meta.clone(), true)
            };
            let Some(meta) = fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ObjectMeta>(&b).ok())
                .filter(|m| object_file(&m.name, m.version) == obj)
            else {
                continue;
            };
            let data = entry.path();
            if !verify_file(&data, &meta) {
                tracing::warn!(file = %data.display(), "SDFS: a temp copy left by a crash does not verify; not recovered");
                continue;
            }
            let moved = (placed || fs::rename(&meta_path, &placed_meta).is_ok())
                && fs::rename(&data, &data_final).is_ok();
            if moved {
                tracing::info!(name = %meta.name, version = meta.version, "SDFS: recovered a copy whose rename a crash interrupted");
                recovered += 1;
            }
        }
        if recovered > 0 {
            let _ = File::open(&self.inner.objects).and_then(|d| d.sync_all());
        }
        recovered
    }

    pub fn agent(&self) -> SocketAddr {
        self.inner.agent
    }

    /// Testing seam: writes of one object past `limit` bytes fail with ENOSPC.
    pub fn set_write_limit(&self, limit: Option<u64>) {
        self.inner
            .write_limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Free bytes a new copy must leave on the file system (`sdfs.disk_reserve`).
    pub fn set_reserve(&self, bytes: u64) {
        self.inner.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Refuses a copy of `size` bytes that would leave less than the reserve free.
    /// The reserve is there for the Raft log in the same data directory: a full
    /// disk that fails its append stops the control plane on this agent (the
    /// agent exits), while a refused copy only makes a put use another replica.
    fn check_room(&self, name: &str, version: u64, size: u64) -> Result<(), SdfsError> {
        let reserve = self.inner.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        // If the file system cannot say, the write itself will.
        let Ok(st) = nix::sys::statvfs::statvfs(&self.inner.tmp) else {
            return Ok(());
        };
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if free >= size.saturating_add(reserve) {
            return Ok(());
        }
        Err(self.disk_full(
            name,
            version,
            format!(
                "{free} bytes free, and sdfs.disk_reserve keeps {reserve} for the control plane's log"
            ),
        ))
    }

    fn disk_full(&self, name: &str, version: u64, why: String) -> SdfsError {
        SdfsError::DiskFull {
            agent: self.inner.agent,
            name: name.to_string(),
            version,
            dir: self
                .inner
                .tmp
                .parent()
                .unwrap_or(&self.inner.tmp)
                .display()
                .to_string(),
            why,
        }
    }

    fn index(&self) -> MutexGuard<'_, BTreeMap<(String, u64), ObjectMeta>> {
        // A panic while holding this lock leaves a plain map: still usable.
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn data_path(&self, name: &str, version: u64) -> PathBuf {
        self.inner.objects.join(object_file(name, version))
    }

    fn meta_path(&self, name: &str, version: u64) -> PathBuf {
        let mut f = object_file(name, version);
        f.push_str(META_SUFFIX);
        self.inner.objects.join(f)
    }

    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> SdfsError {
        SdfsError::Io {
            agent: self.inner.agent,
            action,
            path: path.display().to_string(),
            source,
        }
    }

    /// Brings the index in line with the disk (files removed or restored by
    /// hand). At open (`cleanup`), nothing else runs: sidecars whose data is
    /// gone (a crash between the two renames), unreadable sidecars and data
    /// files without a sidecar are deleted. Later passes run beside writes, so
    /// they only delete a data file whose sidecar is still missing when
    /// re-checked (a write renames the sidecar first), and index an entry
    /// only if its data is still there under the index lock.
    pub fn rescan(&self, cleanup: bool) -> Result<(), SdfsError> {
        let dir = &self.inner.objects;
        let entries = fs::read_dir(dir).map_err(|e| self.io("list", dir, e))?;
        let mut files = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            if let Ok(f) = entry.file_name().into_string() {
                files.insert(f);
            }
        }
        let mut found = Vec::new();
        for f in files.iter().filter(|f| f.ends_with(META_SUFFIX)) {
            let path = dir.join(f);
            let data = &f[..f.len() - META_SUFFIX.len()];
            let meta = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ObjectMeta>(&b).ok())
                .filter(|m| object_file(&m.name, m.version) == data);
            match meta {
                Some(m) if files.contains(data) => found.push(m),
                Some(m) if cleanup => {
                    tracing::warn!(name = %m.name, version = m.version, "SDFS: dropping a sidecar whose data is gone");
                    let _ = fs::remove_file(&path);
                }
                None if cleanup => {
                    tracing::warn!(file = %path.display(), "SDFS: removing an unreadable sidecar and its data");
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(dir.join(data));
                }
                _ => {}
            }
        }
        for f in files.iter().filter(|f| !f.ends_with(META_SUFFIX)) {
            let sidecar = dir.join(format!("{f}{META_SUFFIX}"));
            if !files.contains(&format!("{f}{META_SUFFIX}")) && !sidecar.exists() {
                tracing::warn!(file = %f, "SDFS: removing a data file without its sidecar");
                let _ = fs::remove_file(dir.join(f));
            }
        }
        let mut index = self.index();
        // A sidecar without its data stays indexed: scrub sees it missing
        // and fetches it again.
        index.retain(|(name, version), _| self.meta_path(name, *version).exists());
        for m in found {
            if self.data_path(&m.name, m.version).exists() {
                index.insert((m.name.clone(), m.version), m);
            }
        }
        Ok(())
    }

    /// Starts writing a version; the bytes go to a temp file until
    /// [`TempObject::finish`].
    pub fn begin(
        &self,
        name: &str,
        version: u64,
        size: u64,
        checksum: Checksum,
    ) -> Result<TempObject, SdfsError> {
        validate_name(name)?;
        self.check_room(name, version, size)?;
        let seq = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let stem = format!(
            "{}.{}-{seq}",
            object_file(name, version),
            std::process::id()
        );
        let path = self.inner.tmp.join(format!("{stem}{PART_SUFFIX}"));
        let meta_tmp = self
            .inner
            .tmp
            .join(format!("{stem}{META_SUFFIX}{PART_SUFFIX}"));
        let file = File::create_new(&path).map_err(|e| self.write_err(name, version, &path, e))?;
        let mut t = TempObject {
            store: self.clone(),
            name: name.to_string(),
            version,
            size,
            checksum,
            plan: None,
            path,
            meta_tmp,
            file: Some(file),
            meta_file: None,
            hasher: blake3::Hasher::new(),
            written: 0,
            done: false,
        };
        // The sidecar's file too, now, while the bytes stream in: creating a
        // file costs ext4 up to a tenth of a millisecond, which `finish`
        // would otherwise spend after the last byte. Until `finish` fills it,
        // `recover_temp` cannot parse it and leaves the pair to the sweeper.
        // On an error, dropping `t` removes the data file.
        let meta_file = File::create_new(&t.meta_tmp)
            .map_err(|e| self.write_err(name, version, &t.meta_tmp, e))?;
        t.meta_file = Some(meta_file);
        Ok(t)
    }

    fn write_err(&self, name: &str, version: u64, path: &Path, e: io::Error) -> SdfsError {
        if is_disk_full(&e) {
            self.disk_full(name, version, e.to_string())
        } else {
            self.io("write", path, e)
        }
    }

    /// The sidecar of a stored version, if stored.
    pub fn get(&self, name: &str, version: u64) -> Option<ObjectMeta> {
        self.index().get(&(name.to_string(), version)).cloned()
    }

    /// Opens a stored version for reading.
    pub fn open_read(&self, name: &str, version: u64) -> Result<(ObjectMeta, File), SdfsError> {
        let not_stored = || SdfsError::NotStored {
            agent: self.inner.agent,
            name: name.to_string(),
            version,
        };
        let meta = self.get(name, version).ok_or_else(not_stored)?;
        let path = self.data_path(name, version);
        match File::open(&path) {
            Ok(f) => Ok((meta, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index().remove(&(name.to_string(), version));
                Err(not_stored())
            }
            Err(e) => Err(self.io("open", &path, e)),
        }
    }

    /// Deletes a stored version (data first, so a crash leaves at most a
    /// sidecar, dropped at the next start). Returns whether it was stored.
    pub fn remove(&self, name: &str, version: u64) -> Result<bool, SdfsError> {
        // Under the lock, so a concurrent rescan cannot index it again.
        let mut index = self.index();
        let was = index.remove(&(name.to_string(), version)).is_some();
        for path in [self.data_path(name, version), self.meta_path(name, version)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("delete", &path, e)),
            }
        }
        Ok(was)
    }

    /// Re-hashes a stored copy against its sidecar, `chunk` bytes at a time;
    /// `pace` is called before each read (throttling).
    pub fn verify(
        &self,
        meta: &ObjectMeta,
        chunk: usize,
        mut pace: impl FnMut(usize),
    ) -> Result<Verdict, SdfsError> {
        let path = self.data_path(&meta.name, meta.version);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Missing),
            Err(e) => return Err(self.io("open", &path, e)),
        };
        let (total, sum) =
            hash_file(&mut file, chunk, &mut pace).map_err(|e| self.io("read", &path, e))?;
        let intact = total == meta.size && sum == meta.checksum;
        Ok(if intact {
            Verdict::Intact
        } else {
            Verdict::Corrupt
        })
    }

    /// Deletes temp files not modified for `older_than`; returns how many.
    pub fn sweep_tmp(&self, older_than: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.inner.tmp) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= older_than)
                .unwrap_or(true);
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Every stored version's sidecar, in name order.
    pub fn objects(&self) -> Vec<ObjectMeta> {
        self.index().values().cloned().collect()
    }

    /// The stored versions of `name` numbered up to `through`, oldest first.
    pub fn versions_of(&self, name: &str, through: u64) -> Vec<ObjectMeta> {
        let (from, to) = ((name.to_string(), 0), (name.to_string(), through));
        self.index()
            .range(from..=to)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// What this agent stores, for `dml store`.
    pub fn holdings(&self) -> Vec<Holding> {
        self.index()
            .values()
            .map(|m| Holding {
                name: m.name.clone(),
                version: m.version,
                size: m.size,
            })
            .collect()
    }

    /// Versions stored and their total bytes.
    pub fn totals(&self) -> (u64, u64) {
        let index = self.index();
        (index.len() as u64, index.values().map(|m| m.size).sum())
    }

    /// Where a stored version's bytes live (tests and operators).
    pub fn path_of(&self, name: &str, version: u64) -> PathBuf {
        self.data_path(name, version)
    }

    /// The temp directory (tests and operators).
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp
    }
}

/// Bytes between two [`start_writeback`] calls of a write: per call, not
/// per frame, since the call can wait for the disk's queue.
const WRITEBACK_STEP: u64 = 4 << 20;

/// A version being written; dropped unfinished, it deletes its temp files.
pub struct TempObject {
    store: Store,
    name: String,
    version: u64,
    size: u64,
    checksum: Checksum,
    plan: Option<u64>,
    path: PathBuf,
    meta_tmp: PathBuf,
    file: Option<File>,
    meta_file: Option<File>,
    hasher: blake3::Hasher,
    written: u64,
    done: bool,
}

impl TempObject {
    /// Appends bytes; more than the announced size is an error.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SdfsError> {
        let after = self.written + chunk.len() as u64;
        if after > self.size {
            return Err(self.size_mismatch(after));
        }
        if after > self.store.inner.write_limit.load(Ordering::Relaxed) {
            let e = io::Error::from_raw_os_error(28);
            return Err(self
                .store
                .write_err(&self.name, self.version, &self.path, e));
        }
        let file = self.file.as_mut().expect("open until finish");
        if let Err(e) = file.write_all(chunk) {
            return Err(self
                .store
                .write_err(&self.name, self.version, &self.path, e));
        }
        // Every WRITEBACK_STEP bytes, start writing the last step back.
        let step = WRITEBACK_STEP;
        if after / step > self.written / step && after < self.size {
            let end = after / step * step;
            start_writeback(file, end - step, step);
        }
        self.hasher.update(chunk);
        self.written = after;
        Ok(())
    }

    fn size_mismatch(&self, got: u64) -> SdfsError {
        SdfsError::SizeMismatch {
            agent: self.store.inner.agent,
            name: self.name.clone(),
            version: self.version,
            expected: self.size,
            got,
        }
    }

    /// The checksum to check at [`TempObject::finish`], when it arrives
    /// after the bytes.
    pub fn set_checksum(&mut self, checksum: Checksum) {
        self.checksum = checksum;
    }

    /// The plan id of the put writing this copy (see [`ObjectMeta::plan`]).
    pub fn set_plan(&mut self, plan: Option<u64>) {
        self.plan = plan;
    }

    /// Checks size and checksum, fsyncs, and renames the version into place.
    pub fn finish(mut self) -> Result<ObjectMeta, SdfsError> {
        let meta = self.seal()?;
        let (name, version) = (self.name.clone(), self.version);
        let werr = |path: &Path, e| self.store.write_err(&name, version, path, e);
        let file = self.file.take().expect("open until finish");
        let mf = self.meta_file.take().expect("open until finish");
        // Both fsyncs at once, so the file system commits them together;
        // neither file is renamed into place before both are durable.
        let (synced, meta_synced) = std::thread::scope(|s| {
            let m = s.spawn(|| mf.sync_all());
            let d = file.sync_all();
            (d, m.join())
        });
        synced.map_err(|e| werr(&self.path, e))?;
        meta_synced
            .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
            .map_err(|e| werr(&self.meta_tmp, e))?;
        drop((file, mf));
        self.place(meta)
    }

    /// Checks size and checksum and writes the sidecar; nothing is synced.
    fn seal(&mut self) -> Result<ObjectMeta, SdfsError> {
        if self.written != self.size {
            return Err(self.size_mismatch(self.written));
        }
        if *self.hasher.finalize().as_bytes() != self.checksum {
            return Err(SdfsError::ChecksumMismatch {
                agent: self.store.inner.agent,
                name: self.name.clone(),
                version: self.version,
            });
        }
        let meta = ObjectMeta {
            name: self.name.clone(),
            version: self.version,
            size: self.size,
            checksum: self.checksum,
            stored_ms: dml_shared::clock::unix_ms(),
            plan: self.plan,
        };
        let json = serde_json::to_vec(&meta).expect("plain struct to JSON");
        let mf = self.meta_file.as_mut().expect("open until finish");
        if let Err(e) = mf.write_all(&json) {
            return Err(self
                .store
                .write_err(&self.name, self.version, &self.meta_tmp, e));
        }
        Ok(meta)
    }

    /// Renames the durable temp pair into place (see [`TempObject::finish`]).
    fn place(mut self, meta: ObjectMeta) -> Result<ObjectMeta, SdfsError> {
        let store = self.store.clone();
        let (name, version) = (self.name.clone(), self.version);
        // Under the index lock, so the check and the renames are one step.
        let mut index = store.index();
        let key = (name.clone(), version);
        if let Some(there) = index.get(&key) {
            if there.checksum == meta.checksum && there.size == meta.size {
                if !supersedes(meta.plan, there.plan) {
                    return Ok(there.clone());
                }
                // The same bytes from a later plan: the sidecar takes its id, so
                // a straggler of a plan in between can never replace the copy
                // this later plan commits.
                let meta_final = store.meta_path(&name, version);
                fs::rename(&self.meta_tmp, &meta_final)
                    .map_err(|e| store.io("rename", &meta_final, e))?;
                index.insert(key, meta.clone());
                return Ok(meta);
            }
            if !supersedes(meta.plan, there.plan) {
                return Err(SdfsError::OtherCopy {
                    agent: store.inner.agent,
                    name,
                    version,
                });
            }
        }
        let meta_final = store.meta_path(&name, version);
        let data_final = store.data_path(&name, version);
        fs::rename(&self.meta_tmp, &meta_final).map_err(|e| store.io("rename", &meta_final, e))?;
        if let Err(e) = fs::rename(&self.path, &data_final) {
            // A replaced copy's sidecar is gone with it: drop its bytes too.
            if index.remove(&key).is_some() {
                let _ = fs::remove_file(&data_final);
            }
            let _ = fs::remove_file(&meta_final);
            return Err(store.io("rename", &data_final, e));
        }
        self.done = true;
        index.insert(key, meta.clone());
        // No directory fsync: the durable temp pair stands for the renames
        // until they reach the disk (see `Store::recover_temp`).
        Ok(meta)
    }
}

impl Store {
    /// Finishes several writes with one sync: each is checked and its
    /// sidecar written, then one `syncfs` makes every temp pair durable
    /// (one journal commit instead of two fsyncs per file), then each is
    /// renamed into place as [`TempObject::finish`] does. One result per
    /// object, in order; a failed sync fails them all.
    pub fn finish_batch(&self, objects: Vec<TempObject>) -> Vec<Result<ObjectMeta, SdfsError>> {
        let mut sealed: Vec<Result<(TempObject, ObjectMeta), SdfsError>> = objects
            .into_iter()
            .map(|mut o| o.seal().map(|m| (o, m)))
            .collect();
        if sealed.iter().any(|r| r.is_ok()) {
            let tmp = &self.inner.tmp;
            let synced =
                File::open(tmp).and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from));
            if let Err(e) = synced {
                let err =
                    |e: &io::Error| self.io("sync", tmp, io::Error::new(e.kind(), e.to_string()));
                for r in &mut sealed {
                    if r.is_ok() {
                        *r = Err(err(&e));
                    }
                }
            }
        }
        sealed
            .into_iter()
            .map(|r| {
                let (mut o, meta) = r?;
                // Close both files before the renames, as `finish` does.
                o.file = None;
                o.meta_file = None;
                o.place(meta)
            })
            .collect()
    }
}

/// Whether a write of plan `new` may replace a copy of the same version
/// written by plan `old`. A leader hands a version out again only while it
/// is uncommitted, and then under a later plan id (its own, higher term),
/// after which no earlier plan of it can commit. So a strictly later plan
/// replaces a copy, and a late stream of an earlier plan never does. A copy
/// of a committed version (`None`: repair, scrub) brings the committed bytes
/// and replaces any put's copy, but is itself never replaced (nor is a
/// sidecar older than plan ids).
fn supersedes(new: Option<u64>, old: Option<u64>) -> bool {
    match (new, old) {
        (Some(n), Some(o)) => n > o,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

/// Whether `path` holds exactly the bytes `meta` describes.
fn verify_file(path: &Path, meta: &ObjectMeta) -> bool {
    File::open(path)
        .and_then(|mut f| hash_file(&mut f, 1 << 20, &mut |_| {}))
        .is_ok_and(|(total, sum)| total == meta.size && sum == meta.checksum)
}

/// The length and BLAKE3 checksum of what is left of `file`, read `chunk`
/// bytes at a time with `pace` called before each read.
fn hash_file(
    file: &mut File,
    chunk: usize,
    pace: &mut impl FnMut(usize),
) -> io::Result<(u64, Checksum)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; chunk.max(1)];
    let mut total = 0u64;
    loop {
        pace(buf.len());
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((total, *hasher.finalize().as_bytes()));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

impl Drop for TempObject {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            self.meta_file = None;
            let _ = fs::remove_file(&self.path);
            let _ = fs::remove_file(&self.meta_tmp);
        }
    }
}

/// The checksum as 64 hex digits in the sidecar.
mod hex_checksum {
    use dml_shared::sdfs::Checksum;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(c: &Checksum, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(blake3::Hash::from_bytes(*c).to_hex().as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        let s = String::deserialize(d)?;
        blake3::Hash::from_hex(s.as_bytes())
            .map(|h| *h.as_bytes())
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdfs::tests::{TestDir, checksum, pattern};

    fn agent() -> SocketAddr {
        "127.0.0.1:7001".parse().unwrap()
    }

    fn put(s: &Store, name: &str, v: u64, data: &[u8]) -> Result<ObjectMeta, SdfsError> {
        put_plan(s, name, v, data, None)
    }

    fn put_plan(
        s: &Store,
        name: &str,
        v: u64,
        data: &[u8],
        plan: Option<u64>,
    ) -> Result<ObjectMeta, SdfsError> {
        let mut t = s.begin(name, v, data.len() as u64, checksum(data))?;
        t.set_plan(plan);
        for c in data.chunks(1000) {
            t.write(c)?;
        }
        t.finish()
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_later_plan_replaces_an_earlier_plans_uncommitted_copy() {
        let dir = TestDir::new("store-later-plan");
        let s = Store::open(dir.path(), agent()).unwrap();
        let (stale, new, newer) = (pattern(21, 3_000), pattern(22, 4_000), pattern(23, 10));
        put_plan(&s, "f", 3, &stale, Some(2)).unwrap();
        // A later leader gave v3 out again: its put replaces the stale copy.
        let m = put_plan(&s, "f", 3, &new, Some(4)).unwrap();
        assert_eq!((m.plan, m.size), (Some(4), 4_000));
        assert_eq!(s.get("f", 3), Some(m.clone()));
        assert_eq!(fs::read(s.path_of("f", 3)).unwrap(), new);
        assert_eq!(s.verify(&m, 4096, |_| {}).unwrap(), Verdict::Intact);
        // The sidecar keeps the plan across a restart.
        let s = Store::open(dir.path(), agent()).unwrap();
        assert_eq!(s.get("f", 3), Some(m.clone()));
        assert_eq!(count(s.tmp_dir()), 0);
        // A copy of a committed version (repair) replaces a put's copy with other
        // bytes, and is never replaced.
        put_plan(&s, "g", 1, &newer, Some(8)).unwrap();
        let m = put(&s, "g", 1, &stale).unwrap();
        assert_eq!(s.get("g", 1), Some(m));
        assert!(matches!(
            put_plan(&s, "g", 1, &newer, Some(9)),
            Err(SdfsError::OtherCopy { .. })
        ));
        assert_eq!(fs::read(s.path_of("g", 1)).unwrap(), stale);
    }

    #[test]
    fn the_same_bytes_from_a_later_plan_take_its_id() {
        let dir = TestDir::new("store-same-later");
        let s = Store::open(dir.path(), agent()).unwrap();
        let (bytes, between) = (pattern(24, 6_000), pattern(25, 6_000));
        put_plan(&s, "h", 2, &bytes, Some(2)).unwrap();
        // Plan 5 stores the same bytes (and commits them); a straggler of plan 4,
        // which lost v2 in between, must not replace that copy.
        assert_eq!(put_plan(&s, "h", 2, &bytes, Some(5)).unwrap().plan, Some(5));
        assert!(matches!(
            put_plan(&s, "h", 2, &between, Some(4)),
            Err(SdfsError::OtherCopy { .. })
        ));
        let s = Store::open(dir.path(), agent()).unwrap();
        assert_eq!(s.get("h", 2).unwrap().plan, Some(5));
        assert_eq!(fs::read(s.path_of("h", 2)).unwrap(), bytes);
        // An earlier plan's same bytes change nothing.
        assert_eq!(put_plan(&s, "h", 2, &bytes, Some(3)).unwrap().plan, Some(5));
        assert_eq!(count(s.tmp_dir()), 0);
    }

    #[test]
    fn a_late_write_of_other_bytes_never_replaces_the_copy_in_place() {
        let dir = TestDir::new("store-other");
        let s = Store::open(dir.path(), agent()).unwrap();
        let (first, late) = (pattern(11, 5_000), pattern(12, 5_000));
        // Both begin before either finishes, as a straggler of an earlier
        // leader's plan (3) and a new put given the version again (plan 5).
        let mut a = s.begin("v", 7, 5_000, checksum(&late)).unwrap();
        a.set_plan(Some(3));
        a.write(&late).unwrap();
        let m = put_plan(&s, "v", 7, &first, Some(5)).unwrap();
        assert!(matches!(a.finish(), Err(SdfsError::OtherCopy { .. })));
        // Neither an earlier nor the same plan replaces it.
        for plan in [Some(3), Some(5)] {
            assert!(matches!(
                put_plan(&s, "v", 7, &late, plan),
                Err(SdfsError::OtherCopy { .. })
            ));
        }
        // The same bytes again: already stored; from repair, marked committed.
        assert_eq!(put_plan(&s, "v", 7, &first, Some(5)).unwrap(), m);
        assert_eq!(put(&s, "v", 7, &first).unwrap().plan, None);
        assert_eq!(fs::read(s.path_of("v", 7)).unwrap(), first);
        assert_eq!(s.verify(&m, 4096, |_| {}).unwrap(), Verdict::Intact);
        assert_eq!(count(s.tmp_dir()), 0);
    }

    #[test]
    fn a_batch_is_synced_once_and_each_copy_placed_or_refused_on_its_own() {
        let dir = TestDir::new("store-batch");
        let s = Store::open(dir.path(), agent()).unwrap();
        let (a, b, c) = (pattern(41, 9_000), pattern(42, 0), pattern(43, 70_000));
        let begin = |name: &str, data: &[u8], sum: Checksum| {
            let mut t = s.begin(name, 1, data.len() as u64, sum).unwrap();
            t.set_plan(Some(2));
            t.write(data).unwrap();
            t
        };
        let mut wrong = checksum(&c);
        wrong[3] ^= 1;
        let objs = vec![
            begin("a", &a, checksum(&a)),
            begin("b", &b, checksum(&b)),
            begin("c", &c, wrong),
        ];
        let r = s.finish_batch(objs);
        assert_eq!(r[0].as_ref().unwrap().size, 9_000);
        assert_eq!(r[1].as_ref().unwrap().size, 0);
        assert!(matches!(r[2], Err(SdfsError::ChecksumMismatch { .. })));
        assert_eq!(count(s.tmp_dir()), 0);
        drop(s);
        let s = Store::open(dir.path(), agent()).unwrap();
        assert_eq!(fs::read(s.path_of("a", 1)).unwrap(), a);
        assert_eq!(s.get("b", 1).unwrap().plan, Some(2));
        assert_eq!(s.get("c", 1), None);
        assert_eq!(s.totals(), (2, 9_000));
    }

    #[test]
    fn a_write_is_verified_renamed_into_place_and_found_after_a_restart() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        let data = pattern(1, 10_000);
        let m = put(&s, "a/b.txt", 3, &data).unwrap();
        assert_eq!((m.size, m.checksum), (10_000, checksum(&data)));
        assert_eq!(fs::read(s.path_of("a/b.txt", 3)).unwrap(), data);
        assert!(
            s.path_of("a/b.txt", 3)
                .starts_with(dir.path().join("sdfs/objects"))
        );
        assert_eq!(count(s.tmp_dir()), 0);
        assert_eq!(s.totals(), (1, 10_000));
        drop(s);

        let s = Store::open(dir.path(), agent()).unwrap();
        assert_eq!(s.get("a/b.txt", 3), Some(m.clone()));
        assert_eq!(s.verify(&m, 4096, |_| {}).unwrap(), Verdict::Intact);
        let (meta, _) = s.open_read("a/b.txt", 3).unwrap();
        assert_eq!(meta, m);
        assert!(s.remove("a/b.txt", 3).unwrap());
        assert!(matches!(
            s.open_read("a/b.txt", 3),
            Err(SdfsError::NotStored { .. })
        ));
        assert_eq!(count(&dir.path().join("sdfs/objects")), 0);
    }

    #[test]
    fn a_restart_finishes_renames_a_crash_interrupted_and_only_for_verified_copies() {
        let dir = TestDir::new("store");
        let objects = dir.path().join("sdfs/objects");
        let tmp = dir.path().join("sdfs/tmp");
        let s = Store::open(dir.path(), agent()).unwrap();
        let (a, b, c) = (pattern(3, 70_000), pattern(4, 5_000), pattern(5, 9_000));
        let ma = put(&s, "a", 1, &a).unwrap();
        let mb = put(&s, "dir/b", 2, &b).unwrap();
        let mc = put(&s, "c", 3, &c).unwrap();
        drop(s);
        // What a crash before the renames reached the disk leaves: "a" with
        // neither rename, "dir/b" with only its sidecar's; "c" like "a", but
        // its temp data is corrupt.
        let unplace = |name: &str, v: u64, seq: u32, meta_too: bool| {
            let obj = object_file(name, v);
            let stem = format!("{obj}.4242-{seq}");
            fs::rename(objects.join(&obj), tmp.join(format!("{stem}{PART_SUFFIX}"))).unwrap();
            if meta_too {
                fs::rename(
                    objects.join(format!("{obj}{META_SUFFIX}")),
                    tmp.join(format!("{stem}{META_SUFFIX}{PART_SUFFIX}")),
                )
                .unwrap();
            }
            tmp.join(format!("{stem}{PART_SUFFIX}"))
        };
        unplace("a", 1, 1, true);
        unplace("dir/b", 2, 2, false);
        let c_tmp = unplace("c", 3, 3, true);
        let mut bytes = fs::read(&c_tmp).unwrap();
        bytes[100] ^= 1;
        fs::write(&c_tmp, bytes).unwrap();

        let s = Store::open(dir.path(), agent()).unwrap();
        for (m, data) in [(&ma, &a), (&mb, &b)] {
            assert_eq!(s.get(&m.name, m.version).as_ref(), Some(m));
            assert_eq!(fs::read(s.path_of(&m.name, m.version)).unwrap(), *data);
            assert_eq!(s.verify(m, 4096, |_| {}).unwrap(), Verdict::Intact);
        }
        assert_eq!(
            s.get(&mc.name, mc.version),
            None,
            "a corrupt temp copy is not recovered"
        );
        assert_eq!(count(&tmp), 0, "what did not verify was swept");
        assert_eq!(count(&objects), 4);
    }

    #[test]
    fn a_checksum_or_size_mismatch_leaves_nothing_behind() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        let data = pattern(2, 5000);
        let mut bad = checksum(&data);
        bad[31] ^= 1;
        let mut t = s.begin("x", 1, 5000, bad).unwrap();
        t.write(&data).unwrap();
        assert!(matches!(
            t.finish(),
            Err(SdfsError::ChecksumMismatch { .. })
        ));

        let mut t = s.begin("x", 1, 5000, checksum(&data)).unwrap();
        t.write(&data[..4000]).unwrap();
        let e = t.finish().unwrap_err();
        assert!(
            e.to_string()
                .contains("5000 bytes announced, 4000 received"),
            "{e}"
        );

        let mut t = s.begin("x", 1, 10, checksum(&data)).unwrap();
        assert!(matches!(
            t.write(&data),
            Err(SdfsError::SizeMismatch { .. })
        ));
        drop(t);

        // Abandoned half way (the upstream went away).
        let mut t = s.begin("x", 1, 5000, checksum(&data)).unwrap();
        t.write(&data[..100]).unwrap();
        drop(t);

        assert_eq!(count(s.tmp_dir()), 0);
        assert_eq!(count(&dir.path().join("sdfs/objects")), 0);
        assert!(s.holdings().is_empty());
    }

    #[test]
    fn bad_names_are_refused_and_none_escapes_the_store() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        for bad in ["../escape", "/abs", "a/../../b", ""] {
            assert!(matches!(
                s.begin(bad, 1, 0, checksum(b"")),
                Err(SdfsError::BadName(_))
            ));
        }
        // Valid but hostile-looking names stay inside objects/.
        for name in [".hidden", "..x", "a/b/c", "%2F..%2F", &"n".repeat(1024)] {
            put(&s, name, 1, b"hi").unwrap();
            assert_eq!(
                s.path_of(name, 1).parent(),
                Some(&*dir.path().join("sdfs/objects"))
            );
        }
        assert_eq!(s.holdings().len(), 5);
        assert!(fs::read_dir(dir.path()).unwrap().count() == 1); // only sdfs/
    }

    #[test]
    fn stale_temp_files_are_swept_and_leftovers_cleared_at_open() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        fs::write(s.tmp_dir().join("old.part"), b"x").unwrap();
        assert_eq!(s.sweep_tmp(Duration::from_secs(3600)), 0);
        assert_eq!(s.sweep_tmp(Duration::ZERO), 1);
        fs::write(s.tmp_dir().join("crash.part"), b"x").unwrap();
        // A sidecar whose data never arrived (crash between the two renames).
        put(&s, "k", 1, b"abc").unwrap();
        fs::remove_file(s.path_of("k", 1)).unwrap();
        drop(s);
        let s = Store::open(dir.path(), agent()).unwrap();
        assert_eq!(count(s.tmp_dir()), 0);
        assert!(s.holdings().is_empty());
        assert_eq!(count(&dir.path().join("sdfs/objects")), 0);
    }

    #[test]
    fn verify_tells_corrupt_and_missing_copies() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        let m = put(&s, "v", 1, &pattern(3, 3000)).unwrap();
        let mut b = fs::read(s.path_of("v", 1)).unwrap();
        b[1500] ^= 1;
        fs::write(s.path_of("v", 1), &b).unwrap();
        assert_eq!(s.verify(&m, 1024, |_| {}).unwrap(), Verdict::Corrupt);
        fs::write(s.path_of("v", 1), &b[..10]).unwrap();
        assert_eq!(s.verify(&m, 1024, |_| {}).unwrap(), Verdict::Corrupt);
        fs::remove_file(s.path_of("v", 1)).unwrap();
        assert_eq!(s.verify(&m, 1024, |_| {}).unwrap(), Verdict::Missing);
        // A periodic rescan keeps it indexed so scrub can fetch it again...
        s.rescan(false).unwrap();
        assert_eq!(s.get("v", 1), Some(m.clone()));
        // ...and forgets it once the sidecar is gone too.
        s.remove("v", 1).unwrap();
        put(&s, "w", 1, b"w").unwrap();
        fs::remove_file(s.path_of("w", 1)).unwrap();
        fs::remove_file(dir.path().join("sdfs/objects/w.v1.meta")).unwrap();
        s.rescan(false).unwrap();
        assert!(s.holdings().is_empty());
    }

    fn disk_full_error_names_the_agent(e: SdfsError) {
        assert!(matches!(e, SdfsError::DiskFull { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("disk full on agent 127.0.0.1:7001"),
            "{msg}"
        );
    }

    #[test]
    fn a_failing_write_reports_disk_full_and_leaves_no_temp_file() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        s.set_write_limit(Some(2500));
        disk_full_error_names_the_agent(put(&s, "big", 1, &pattern(4, 5000)).unwrap_err());
        assert_eq!(count(s.tmp_dir()), 0);
        s.set_write_limit(None);
        put(&s, "big", 1, &pattern(4, 5000)).unwrap();
    }

    #[test]
    fn a_copy_that_would_eat_into_the_reserve_is_refused_as_a_full_disk() {
        let dir = TestDir::new("store");
        let s = Store::open(dir.path(), agent()).unwrap();
        s.set_reserve(u64::MAX / 2);
        let e = put(&s, "r", 1, b"r").unwrap_err();
        assert!(e.to_string().contains("sdfs.disk_reserve keeps"), "{e}");
        disk_full_error_names_the_agent(e);
        assert_eq!(count(s.tmp_dir()), 0);
        s.set_reserve(1);
        put(&s, "r", 1, b"r").unwrap();
    }

    /// Unmounts on drop, even when an assertion fails.
    struct Mount<'a>(&'a Path);

    impl Drop for Mount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    /// The real thing, where the machine lets us mount a 1 MiB tmpfs (root).
    #[test]
    fn a_real_full_file_system_reports_disk_full() {
        let dir = TestDir::new("tmpfs");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here; the injected failure test covers this");
            return;
        }
        let _mount = Mount(dir.path());
        let s = Store::open(dir.path(), agent()).unwrap();
        disk_full_error_names_the_agent(put(&s, "big", 1, &pattern(5, 3 << 20)).unwrap_err());
        assert_eq!(count(s.tmp_dir()), 0);
        put(&s, "small", 1, b"fits").unwrap();
        eprintln!("checked on a real 1 MiB tmpfs");
    }
}
