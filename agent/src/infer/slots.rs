//! Host compute slots: agents sharing a machine (a local cluster) take turns
//! at ONNX Runtime instead of all running at once. Ten single-threaded
//! sessions on two cores lose about 5% to switching and cache misses
//! against two running at a time.
//!
//! A slot is an exclusive `flock` on one of `count` files (`slot-I`) in a
//! directory that every agent of the host uses; the kernel drops it when
//! its holder dies. A waiter gives up after `max_wait` and runs without a
//! slot, so a frozen holder (SIGSTOP) slows the others down but never stops
//! them.
//!
//! The order queries run in is the leader's: a worker leases its next query
//! only once it holds one of `count` places on deck (`deck-I`), and frees
//! the place when the query takes a run slot. So the host holds at most
//! `count` queries running and `count` leased ahead of them: which worker
//! gets a place does not matter (the leader picks the job when it leases),
//! and a job the leader favours, such as one just submitted, runs next
//! instead of behind every query the host's agents had leased before it
//! (the kernel wakes `flock` waiters in no particular order, so ten workers
//! each queueing their own leases ran them in a random one).

use crate::timing::{DECK_RECHECK, SLOT_RECHECK};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `count` slots under `dir`, shared by every agent that names the same ones.
#[derive(Debug)]
pub struct HostSlots {
    dir: PathBuf,
    count: usize,
    max_wait: Duration,
    /// Which file to wait on when all are taken; spreads the waiters.
    next: AtomicUsize,
}

/// A held run slot or place on deck; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    _file: File,
    index: usize,
}

impl Slot {
    /// Which of the host's slots (or places on deck) it is.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The two sets of files: run slots and places on deck.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Run,
    Deck,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Run => "slot",
            Kind::Deck => "deck",
        }
    }

    fn recheck(self) -> Duration {
        match self {
            Kind::Run => SLOT_RECHECK,
            Kind::Deck => DECK_RECHECK,
        }
    }
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl HostSlots {
    /// Creates `dir` if needed (0700), checks that it is this user's own
    /// ([`private_dir`]) and that its slot files can be opened.
    pub fn open(dir: &Path, count: usize, max_wait: Duration) -> io::Result<Self> {
        private_dir(dir)?;
        let slots = Self {
            dir: dir.to_path_buf(),
            count: count.max(1),
            max_wait,
            next: AtomicUsize::new(std::process::id() as usize),
        };
        for i in 0..slots.count {
            slots.file(Kind::Run, i)?;
            slots.file(Kind::Deck, i)?;
        }
        Ok(slots)
    }

    /// Where agents of this host meet by default: `/dev/shm` (memory, cleared
    /// at boot), else the temporary directory; one directory per user.
    pub fn default_dir() -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("dml-compute-slots-{uid}"))
    }

    /// Slots for `intra_threads`-thread sessions: the host's cores divided
    /// among them, at least one.
    pub fn default_count(intra_threads: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / intra_threads.max(1)).max(1)
    }

    fn file(&self, kind: Kind, i: usize) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(format!("{}-{i}", kind.prefix())))
    }

    /// A place on deck: the right to lease the next query. Waits for one
    /// up to `max_wait`; `None` when none came (or the files cannot be
    /// opened): lease anyway. Blocks.
    pub fn deck(&self) -> Option<Slot> {
        let prefer = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        self.take(Kind::Deck, prefer)
    }

    /// A run slot for a query; `deck`, its place on deck, is freed once the
    /// slot is held (or none came), and names the slot waited on first.
    /// Waits up to `max_wait`; `None`: run anyway. Blocks.
    pub fn acquire_from(&self, deck: Option<Slot>) -> Option<Slot> {
        let prefer = match &deck {
            Some(d) => d.index % self.count,
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.count,
        };
        let slot = self.take(Kind::Run, prefer);
        drop(deck);
        slot
    }

    /// [`HostSlots::acquire_from`] with no place on deck.
    pub fn acquire(&self) -> Option<Slot> {
        self.acquire_from(None)
    }

    /// One of the `kind` files: a free one at once (`prefer` first), else
    /// the first to free: a thread blocks on `prefer` while the others are
    /// tried again every [`Kind::recheck`].
    fn take(&self, kind: Kind, prefer: usize) -> Option<Slot> {
        // Each call opens its own descriptors: a flock belongs to the open
        // file, so reusing one would let this agent take a slot twice.
        let mut files = Vec::with_capacity(self.count);
        for i in 0..self.count {
            files.push(Some(self.file(kind, i).ok()?));
        }
        let order: Vec<usize> = (0..self.count).map(|k| (prefer + k) % self.count).collect();
        let free = |files: &mut Vec<Option<File>>| {
            order.iter().find_map(|&i| {
                let f = files[i].take_if(|f| try_lock(f))?;
                Some(Slot { _file: f, index: i })
            })
        };
        if let Some(s) = free(&mut files) {
            return Some(s);
        }
        let deadline = Instant::now() + self.max_wait;
        let f = files[prefer].take()?;
        let (tx, rx) = mpsc::sync_channel(1);
        // The blocking lock runs on its own thread so that the wait can end;
        // a lock it gets after the waiter left is dropped (freed) at once.
        std::thread::Builder::new()
            .name("dml-slot-wait".into())
            .spawn(move || {
                // SAFETY: flock on a descriptor this thread owns.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    let _ = tx.send(Slot {
                        _file: f,
                        index: prefer,
                    });
                }
            })
            .ok()?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match rx.recv_timeout(kind.recheck().min(left)) {
                Ok(s) => return Some(s),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
            if let Some(s) = free(&mut files) {
                return Some(s);
            }
        }
    }
}

/// Creates `dir` (0700) if needed and checks that it is a directory of this
/// user that no one else can write in; a looser one of this user is
/// tightened. A directory in `/dev/shm` that another user made first could
/// hold every slot, or swap the files for links.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("slot directory \"{}\" {why}", dir.display()),
        ))
    };
    if !m.is_dir() {
        return refuse("is not a directory (a link?)".into());
    }
    if m.uid() != me {
        return refuse(format!(
            "belongs to uid {}, not to this user ({me}); another user may have made it: remove it",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dml-slots-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_slot_is_exclusive_until_dropped() {
        let d = dir("excl");
        let a = HostSlots::open(&d, 1, Duration::from_secs(10)).unwrap();
        // Another agent of the host: its own descriptors, the same files.
        let b = std::sync::Arc::new(HostSlots::open(&d, 1, Duration::from_secs(10)).unwrap());
        let held = a.acquire().expect("a free slot");
        let (tx, rx) = mpsc::channel();
        let b2 = b.clone();
        std::thread::spawn(move || {
            let s = b2.acquire();
            tx.send(s.is_some()).unwrap();
            drop(s);
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the second agent got a slot that was held"
        );
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Polls `acquire` until it gives a slot (an abandoned waiter thread
    /// may hold a freed slot for a moment before it lets go).
    fn poll_slot(s: &HostSlots) -> Option<Slot> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.acquire() {
                Some(slot) => return Some(slot),
                None if Instant::now() < deadline => continue,
                None => return None,
            }
        }
    }

    #[test]
    fn two_slots_let_two_run_and_a_third_waits() {
        let d = dir("two");
        let s = HostSlots::open(&d, 2, Duration::from_millis(200)).unwrap();
        let x = s.acquire().expect("first slot");
        let y = s.acquire().expect("second slot");
        assert_ne!(x.index(), y.index());
        let t = Instant::now();
        assert!(s.acquire().is_none(), "a third slot out of two");
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(x);
        assert!(poll_slot(&s).is_some(), "the freed slot");
        drop(y);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_waiter_takes_whichever_slot_frees_first() {
        let d = dir("any");
        let s = std::sync::Arc::new(HostSlots::open(&d, 2, Duration::from_secs(10)).unwrap());
        let a = s.acquire().expect("first slot");
        let b = s.acquire().expect("second slot");
        // A query on deck 0 waits on slot 0 first; slot 1 frees.
        let deck = s.deck().expect("a place on deck");
        let want = deck.index();
        let other = [&a, &b].into_iter().find(|x| x.index() != want).unwrap();
        let freed = other.index();
        let (tx, rx) = mpsc::channel();
        let s2 = s.clone();
        std::thread::spawn(move || tx.send(s2.acquire_from(Some(deck)).map(|x| x.index())));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        if freed == a.index() {
            drop(a);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Some(freed)));
            drop(b);
        } else {
            drop(b);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Some(freed)));
            drop(a);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_places_on_deck_are_as_many_as_the_slots_and_free_once_a_query_runs() {
        let d = dir("deck");
        let s = HostSlots::open(&d, 2, Duration::from_millis(100)).unwrap();
        let first = s.deck().expect("first place");
        let second = s.deck().expect("second place");
        assert_ne!(first.index(), second.index());
        assert!(s.deck().is_none(), "a third place on deck out of two");
        // The query on deck takes a run slot: its place goes to the next lease.
        let run = s.acquire_from(Some(first)).expect("a free run slot");
        let deadline = Instant::now() + Duration::from_secs(10);
        let next = loop {
            match s.deck() {
                Some(p) => break Some(p),
                None if Instant::now() < deadline => continue,
                None => break None,
            }
        };
        assert!(next.is_some(), "the place freed when its query ran");
        drop((run, second, next));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_waiter_that_gave_up_does_not_keep_the_slot() {
        let d = dir("gaveup");
        let s = HostSlots::open(&d, 1, Duration::from_millis(100)).unwrap();
        let held = s.acquire().expect("a free slot");
        assert!(s.acquire().is_none());
        drop(held);
        // The abandoned waiter thread takes the lock and frees it at once.
        let s2 = HostSlots::open(&d, 1, Duration::from_secs(10)).unwrap();
        assert!(s2.acquire().is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_slot_directory_and_files_are_this_users_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = dir("modes");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = HostSlots::open(&d, 1, Duration::from_secs(1)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(
            mode(&d),
            0o700,
            "a loose directory of this user is tightened"
        );
        assert_eq!(mode(&d.join("slot-0")), 0o600);
        drop(s);
        // Another user's directory is refused, naming the owner (needs root to make).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let e = HostSlots::open(&d, 1, Duration::from_secs(1)).unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_link_in_place_of_the_slot_directory_is_refused() {
        let d = dir("link");
        let target = dir("link-target");
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&target, &d).unwrap();
        let e = HostSlots::open(&d, 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let _ = std::fs::remove_file(&d);
        let _ = std::fs::remove_dir_all(&target);
    }

    #[test]
    fn counts_divide_the_cores_among_sessions() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(HostSlots::default_count(1), cores);
        assert_eq!(HostSlots::default_count(usize::MAX), 1);
        assert_eq!(HostSlots::default_count(0), cores);
    }
}
