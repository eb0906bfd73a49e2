//! The replicated metadata: SDFS files, their versions (pending or
//! committed), replica sets and version counters. A plain deterministic
//! struct: [`MetaState::apply`] takes a [`Command`] and returns [`Applied`];
//! the Raft glue lives in `store.rs`.
//!
//! Files live in a persistent B-tree ([`imbl::OrdMap`]) keyed by name: a
//! clone costs O(1) and shares every node until one side changes it, so a
//! listing ([`Listing`]) or a snapshot reads a frozen copy without holding
//! the state-machine lock while the log applies.

use super::jobs::JobsState;
use super::types::{Applied, Command, Op};
use dml_shared::keyring::KeyringState;
use dml_shared::sdfs::{Checksum, FileInfo, Glob, Holding, Keep, Totals, VersionInfo};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Arc;

mod compact;
pub mod scale;
pub use compact::{Holders, Versions};

/// The files by name (names shared between the map's copies).
type Files = OrdMap<Arc<str>, FileMeta>;

/// Where a version is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// Reserved by a put still streaming; dropped after `deadline_ms`.
    Pending { deadline_ms: u64 },
    /// Visible to readers.
    Committed,
}

/// One version of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub size: u64,
    /// Known once committed.
    pub checksum: Checksum,
    /// Planned chain while pending; agents holding a verified copy once committed.
    pub replicas: Holders,
    /// Unix ms of the commit (0 while pending).
    pub committed_ms: u64,
    pub state: VersionState,
}

impl VersionMeta {
    pub fn is_committed(&self) -> bool {
        self.state == VersionState::Committed
    }

    /// What clients see of it as `version`.
    fn info(&self, version: u64) -> VersionInfo {
        VersionInfo {
            version,
            size: self.size,
            checksum: self.checksum,
            replicas: self.replicas.to_vec(),
            committed_ms: self.committed_ms,
        }
    }
}

/// A file: its versions by number, and the next number to hand out. A file
/// whose versions were all deleted stays as a tombstone so numbers are never reused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub next_version: u64,
    pub versions: Versions,
    /// Unix ms of the last delete, if any.
    pub deleted_ms: Option<u64>,
}

impl FileMeta {
    /// Records `version` as pending on `replicas` and moves the counter past it.
    fn plan(
        &mut self,
        version: u64,
        size: u64,
        replicas: &[SocketAddr],
        deadline_ms: u64,
    ) -> Applied {
        self.next_version = version + 1;
        self.versions.insert(
            version,
            VersionMeta {
                size,
                checksum: [0; 32],
                replicas: Holders::new(replicas),
                committed_ms: 0,
                state: VersionState::Pending { deadline_ms },
            },
        );
        Applied::Version(version)
    }

    fn committed(&self) -> impl Iterator<Item = (&u64, &VersionMeta)> {
        self.versions.iter().filter(|(_, v)| v.is_committed())
    }
}

/// The whole replicated metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    #[serde(deserialize_with = "decode_files")]
    files: Files,
    /// Inference jobs and model settings.
    pub jobs: JobsState,
    /// The cluster's keyring once `dml keyring` changed it (secrets: the
    /// store lives in the 0700 data directory).
    pub keyring: Option<KeyringState>,
}

impl MetaState {
    /// The keyring's version: 0 until `dml keyring` changed it.
    pub fn keyring_version(&self) -> u64 {
        self.keyring.as_ref().map_or(0, |k| k.version)
    }

    fn set_keyring(&mut self, base: u64, ring: &KeyringState) -> Applied {
        let have = self.keyring_version();
        if have != base {
            return Applied::Rejected(format!(
                "the keyring changed meanwhile (version {have}, not {base}); retry"
            ));
        }
        if let Err(e) = ring.check() {
            return Applied::Rejected(format!("bad keyring: {e}"));
        }
        let version = base + 1;
        self.keyring = Some(KeyringState {
            version,
            ..ring.clone()
        });
        Applied::Version(version)
    }

    /// `name`'s record, made empty if it has none.
    fn file_mut(&mut self, name: &str) -> &mut FileMeta {
        if !self.files.contains_key(name) {
            self.files.insert(Arc::from(name), FileMeta::default());
        }
        self.files.get_mut(name).expect("inserted above")
    }

    /// Applies one command. Never panics; refusals are [`Applied::Rejected`].
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        self.apply_op(&cmd.op, cmd.now_ms)
    }

    fn apply_op(&mut self, op: &Op, now: u64) -> Applied {
        match op {
            Op::BeginPut {
                name,
                size,
                replicas,
                deadline_ms,
            } => {
                let file = self.file_mut(name);
                let version = file.next_version.max(1);
                file.plan(version, *size, replicas, *deadline_ms)
            }
            Op::BeginPutAt {
                name,
                version,
                size,
                replicas,
                deadline_ms,
            } => {
                let file = self.file_mut(name);
                let next = file.next_version.max(1);
                if *version < next {
                    return Applied::Rejected(format!(
                        "version {version} of \"{name}\" is taken (the next is {next}); retry the put"
                    ));
                }
                file.plan(*version, *size, replicas, *deadline_ms)
            }
            Op::CommitPut {
                name,
                version,
                checksum,
                holders,
                quorum,
            } => self.commit(name, *version, *checksum, holders, *quorum, now),
            Op::AbortPut { name, version } => {
                let Some(file) = self.files.get_mut(name.as_str()) else {
                    return Applied::Rejected(format!("no put of \"{name}\" is in progress"));
                };
                match file.versions.get(version) {
                    Some(v) if !v.is_committed() => {
                        file.versions.remove(version);
                        Applied::Done
                    }
                    Some(_) => Applied::Rejected(format!(
                        "version {version} of \"{name}\" is already committed"
                    )),
                    None => Applied::Done,
                }
            }
            Op::ExpirePending => {
                let expired = |v: &VersionMeta| match v.state {
                    VersionState::Pending { deadline_ms } => deadline_ms <= now,
                    VersionState::Committed => false,
                };
                let names: Vec<Arc<str>> = self
                    .files
                    .iter()
                    .filter(|(_, f)| f.versions.values().any(expired))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in names {
                    if let Some(file) = self.files.get_mut(&name) {
                        file.versions.retain(|_, v| !expired(v));
                    }
                }
                Applied::Done
            }
            Op::Delete { name } => match self.files.get_mut(name.as_str()) {
                Some(file) if file.committed().next().is_some() => {
                    file.versions.clear();
                    file.deleted_ms = Some(now);
                    Applied::Done
                }
                _ => Applied::NoSuchFile(name.clone()),
            },
            Op::SetReplicas {
                name,
                version,
                add,
                drop,
            } => {
                let Some(v) = self
                    .files
                    .get_mut(name.as_str())
                    .and_then(|f| f.versions.get_mut(version))
                    .filter(|v| v.is_committed())
                else {
                    return Applied::Rejected(format!(
                        "version {version} of \"{name}\" is no longer stored"
                    ));
                };
                let mut next: Vec<SocketAddr> = v
                    .replicas
                    .iter()
                    .filter(|r| !drop.contains(r))
                    .copied()
                    .collect();
                for a in add {
                    if !next.contains(a) {
                        next.push(*a);
                    }
                }
                v.replicas = Holders::new(&next);
                Applied::Done
            }
            Op::SubmitJob {
                model,
                dataset,
                images,
                count,
                weight,
            } => Applied::Job(self.jobs.submit_weighted(
                model,
                dataset,
                images.clone(),
                *count,
                *weight,
                now,
            )),
            Op::SetBatchSize { model, size } => {
                self.jobs.batch.insert(model.clone(), *size);
                Applied::Done
            }
            Op::SetBatchPolicy {
                model,
                max_queue_delay_ms,
                p99_target_ms,
            } => {
                self.jobs
                    .set_policy(model, *max_queue_delay_ms, *p99_target_ms);
                Applied::Done
            }
            Op::CompleteQuery { job, results } => {
                let a = self.jobs.complete(*job, results, now);
                Applied::Accepted {
                    new: a.new,
                    finished: a.finished,
                }
            }
            Op::FailJob { job, reason } => {
                self.jobs.fail(*job, reason, now);
                Applied::Done
            }
            Op::CancelJob { job } => match self.jobs.cancel(*job, now) {
                Ok(()) => Applied::Done,
                Err(e) => Applied::Rejected(e.to_string()),
            },
            Op::SetJobOutput { job, name } => {
                self.jobs.set_output(*job, name);
                Applied::Done
            }
            Op::SetKeyring { base, ring } => self.set_keyring(*base, ring),
            Op::Batch { ops } => Applied::Batch(
                ops.iter()
                    .map(|op| match op {
                        // No nesting: a batch holds plain operations.
                        Op::Batch { .. } => Applied::Rejected("a batch inside a batch".into()),
                        op => self.apply_op(op, now),
                    })
                    .collect(),
            ),
            Op::PutAt {
                name,
                version,
                size,
                checksum,
                holders,
                quorum,
            } => {
                let file = self.file_mut(name);
                match file.versions.get(version) {
                    // A retried commit: `commit` tells the same bytes from others.
                    Some(v) if v.is_committed() => {}
                    Some(_) => {
                        return Applied::Rejected(format!(
                            "version {version} of \"{name}\" is another put's; retry the put"
                        ));
                    }
                    None => {
                        let next = file.next_version.max(1);
                        if *version < next {
                            return Applied::Rejected(format!(
                                "version {version} of \"{name}\" is taken (the next is {next}); retry the put"
                            ));
                        }
                        file.plan(*version, *size, holders, now);
                    }
                }
                self.commit(name, *version, *checksum, holders, *quorum, now)
            }
        }
    }

    fn commit(
        &mut self,
        name: &str,
        version: u64,
        checksum: Checksum,
        holders: &[SocketAddr],
        quorum: usize,
        now: u64,
    ) -> Applied {
        let Some(file) = self.files.get_mut(name) else {
            return Applied::Rejected(format!("no put of \"{name}\" is in progress"));
        };
        let Some(v) = file.versions.get_mut(&version) else {
            return Applied::Rejected(format!(
                "version {version} of \"{name}\" is not pending: it was aborted, expired or deleted, or planned by an earlier leader"
            ));
        };
        if v.is_committed() {
            // A retried commit of the same bytes is fine.
            return if v.checksum == checksum {
                Applied::Version(version)
            } else {
                Applied::Rejected(format!(
                    "version {version} of \"{name}\" is already committed with other content"
                ))
            };
        }
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(holders.len());
        for h in holders {
            if !unique.contains(h) {
                unique.push(*h);
            }
        }
        if unique.len() < quorum {
            file.versions.remove(&version);
            return Applied::Rejected(format!(
                "put of \"{name}\" aborted: only {} agent(s) stored it durably; a write needs {quorum}",
                unique.len()
            ));
        }
        v.checksum = checksum;
        v.replicas = Holders::new(&unique);
        v.committed_ms = now;
        v.state = VersionState::Committed;
        Applied::Version(version)
    }

    /// A file's committed versions, oldest first; `None` if it has none.
    pub fn stat(&self, name: &str) -> Option<FileInfo> {
        let file = self.files.get(name)?;
        let versions: Vec<VersionInfo> = file.committed().map(|(n, v)| v.info(*n)).collect();
        (!versions.is_empty()).then(|| FileInfo {
            name: name.to_string(),
            versions,
        })
    }

    /// A frozen copy of the SDFS files alone (no jobs, no keyring), taken in
    /// O(1): what the leader's repair and balance scans read, off the lock.
    pub fn files_copy(&self) -> MetaState {
        MetaState {
            files: self.files.clone(),
            ..MetaState::default()
        }
    }

    /// A frozen copy of the files to list from, taken in O(1).
    pub fn listing(&self) -> Listing {
        Listing {
            files: self.files.clone(),
        }
    }

    /// Names with committed versions that start with `prefix`, by name.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        self.files
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(n, _)| n.starts_with(prefix))
            .filter(|(_, f)| f.committed().next().is_some())
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// (files, committed versions, bytes over committed versions): a scan
    /// of every file ([`Listing::count`]; the leader counts off the lock).
    pub fn count(&self) -> (u64, u64, u64) {
        self.listing().count()
    }

    /// Committed versions per replica address ([`Listing::nodes`]).
    pub fn nodes(&self, extra: &[SocketAddr]) -> Vec<(SocketAddr, Vec<Holding>)> {
        self.listing().nodes(extra)
    }

    /// What `node` should do with its copy ([`Listing::wanted`]).
    pub fn wanted(&self, node: SocketAddr, name: &str, version: u64, checksum: &Checksum) -> Keep {
        wanted(&self.files, node, name, version, checksum)
    }

    /// Committed versions held by `node` ([`Listing::assigned`]).
    pub fn assigned(
        &self,
        node: SocketAddr,
        after: Option<&(String, u64)>,
        limit: usize,
    ) -> (Vec<(String, VersionInfo)>, bool) {
        self.listing().assigned(node, after, limit)
    }

    /// Whether `version` of `name` is committed with `checksum`.
    pub fn is_committed_as(&self, name: &str, version: u64, checksum: &Checksum) -> bool {
        self.files
            .get(name)
            .and_then(|f| f.versions.get(&version))
            .is_some_and(|v| v.is_committed() && v.checksum == *checksum)
    }

    /// The chain planned for a pending `version` of `name`; `None` once
    /// committed, aborted or expired.
    pub fn pending_replicas(&self, name: &str, version: u64) -> Option<&[SocketAddr]> {
        self.files
            .get(name)
            .and_then(|f| f.versions.get(&version))
            .filter(|v| !v.is_committed())
            .map(|v| &*v.replicas)
    }

    /// The version the next put of `name` would get.
    pub fn next_version(&self, name: &str) -> u64 {
        self.files.get(name).map_or(1, |f| f.next_version.max(1))
    }

    /// Whether any pending version is past its deadline at `now_ms`
    /// ([`Listing::has_expired_pending`]).
    pub fn has_expired_pending(&self, now_ms: u64) -> bool {
        self.listing().has_expired_pending(now_ms)
    }

    /// Every committed version: (name, version, meta).
    pub fn committed_versions(&self) -> impl Iterator<Item = (&str, u64, &VersionMeta)> {
        self.files
            .iter()
            .flat_map(|(name, f)| f.committed().map(move |(n, v)| (&**name, *n, v)))
    }

    /// The raw version record, pending or committed.
    pub fn version(&self, name: &str, version: u64) -> Option<&VersionMeta> {
        self.files.get(name)?.versions.get(&version)
    }
}

/// The files map, decoded entry by entry: imbl's own decoder reserves room
/// for the length the input claims, so a corrupt snapshot could ask for
/// terabytes before failing.
fn decode_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Files, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Files;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of SDFS files")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Files, A::Error> {
            let mut files = Files::new();
            while let Some((name, file)) = m.next_entry::<Arc<str>, FileMeta>()? {
                files.insert(name, file);
            }
            Ok(files)
        }
    }
    d.deserialize_map(Entries)
}

/// [`Listing::wanted`] over `files` (a point lookup, no scan).
fn wanted(files: &Files, node: SocketAddr, name: &str, version: u64, checksum: &Checksum) -> Keep {
    let Some(v) = files.get(name).and_then(|f| f.versions.get(&version)) else {
        return Keep::No;
    };
    match v.state {
        VersionState::Committed if !v.replicas.contains(&node) => Keep::No,
        VersionState::Committed if v.checksum != *checksum => Keep::Refetch,
        VersionState::Committed | VersionState::Pending { .. } => Keep::Yes,
    }
}

/// Most names one [`Listing::page`] looks at: a glob that matches few names
/// of many still answers promptly, with a cursor to go on from.
pub const LIST_SCAN_MAX: usize = 100_000;
/// Most under-replicated versions one [`Listing::totals`] names.
pub const HEALTH_SAMPLE_MAX: u32 = 100;

/// A frozen copy of the files ([`MetaState::listing`]): listing runs on it
/// off the state-machine lock, on a blocking thread.
#[derive(Clone, Debug)]
pub struct Listing {
    files: Files,
}

/// One page of a listing.
#[derive(Debug, PartialEq)]
pub struct Page {
    /// Files with committed versions that match, by name.
    pub files: Vec<FileInfo>,
    /// The last name looked at when the page stopped early: the next page
    /// starts after it. `None`: nothing more matches.
    pub next: Option<String>,
    /// Names looked at.
    pub scanned: usize,
}

impl Listing {
    /// Files whose names match `glob` and sort after `after`, at most
    /// `limit` of them, looking at most at `scan` names. Only the names that
    /// start with the glob's literal prefix are looked at (a range of the
    /// sorted map, not a scan of every name).
    pub fn page(&self, glob: &Glob, after: Option<&str>, limit: usize, scan: usize) -> Page {
        let prefix = glob.literal_prefix();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut page = Page {
            files: Vec::new(),
            next: None,
            scanned: 0,
        };
        let mut last: Option<&Arc<str>> = None;
        for (name, file) in self.files.range::<_, str>((start, Bound::Unbounded)) {
            if !name.starts_with(prefix) {
                break;
            }
            if page.files.len() >= limit.max(1) || page.scanned >= scan.max(1) {
                // More names follow: go on after the last one looked at.
                page.next = last.map(|n| n.to_string());
                break;
            }
            page.scanned += 1;
            last = Some(name);
            if glob.is_match(name) {
                let versions: Vec<VersionInfo> =
                    file.committed().map(|(n, v)| v.info(*n)).collect();
                if !versions.is_empty() {
                    page.files.push(FileInfo {
                        name: name.to_string(),
                        versions,
                    });
                }
            }
        }
        page
    }

    /// Every file with committed versions whose name matches `glob`.
    pub fn all(&self, glob: &Glob) -> Vec<FileInfo> {
        self.page(glob, None, usize::MAX, usize::MAX).files
    }

    /// Committed totals, and the versions with fewer than `replicas`
    /// copies (the first `sample` of them by name).
    pub fn totals(&self, replicas: u32, sample: usize) -> Totals {
        let mut t = Totals::default();
        for (name, f) in &self.files {
            let mut any = false;
            for (n, v) in f.committed() {
                any = true;
                t.versions += 1;
                t.bytes += v.size;
                let have = v.replicas.len() as u32;
                if have < replicas {
                    t.under_replicated += 1;
                    if t.sample.len() < sample {
                        t.sample.push((name.to_string(), *n, have));
                    }
                }
            }
            t.files += u64::from(any);
        }
        t
    }

    /// (files, committed versions, bytes over committed versions).
    pub fn count(&self) -> (u64, u64, u64) {
        let (mut files, mut versions, mut bytes) = (0, 0, 0);
        for f in self.files.values() {
            let mut any = false;
            for (_, v) in f.committed() {
                any = true;
                versions += 1;
                bytes += v.size;
            }
            files += u64::from(any);
        }
        (files, versions, bytes)
    }

    /// Committed versions per replica address; `extra` nodes appear even if empty.
    pub fn nodes(&self, extra: &[SocketAddr]) -> Vec<(SocketAddr, Vec<Holding>)> {
        let mut out: BTreeMap<SocketAddr, Vec<Holding>> =
            extra.iter().map(|a| (*a, Vec::new())).collect();
        for (name, f) in &self.files {
            for (n, v) in f.committed() {
                for r in v.replicas.iter() {
                    out.entry(*r).or_default().push(Holding {
                        name: name.to_string(),
                        version: *n,
                        size: v.size,
                    });
                }
            }
        }
        out.into_iter().collect()
    }

    /// What `node` should do with its copy of `name` version `version`,
    /// which holds bytes with `checksum`. A pending version is kept, even
    /// past its deadline, until the log aborts or expires it: a commit
    /// already on its way may still land before the expiry, and its copies
    /// must then be there.
    pub fn wanted(&self, node: SocketAddr, name: &str, version: u64, checksum: &Checksum) -> Keep {
        wanted(&self.files, node, name, version, checksum)
    }

    /// Up to `limit` committed versions that name `node` among their
    /// replicas, in (name, version) order after `after`; and whether more
    /// follow.
    pub fn assigned(
        &self,
        node: SocketAddr,
        after: Option<&(String, u64)>,
        limit: usize,
    ) -> (Vec<(String, VersionInfo)>, bool) {
        let start = after.map_or(Bound::Unbounded, |(n, _)| Bound::Included(n.as_str()));
        let mut out = Vec::new();
        for (name, file) in self.files.range::<_, str>((start, Bound::Unbounded)) {
            for (&version, v) in file.committed() {
                if after.is_some_and(|(n, a)| **n == **name && version <= *a)
                    || !v.replicas.contains(&node)
                {
                    continue;
                }
                if out.len() == limit {
                    return (out, true);
                }
                out.push((name.to_string(), v.info(version)));
            }
        }
        (out, false)
    }

    /// Whether any pending version is past its deadline at `now_ms`.
    pub fn has_expired_pending(&self, now_ms: u64) -> bool {
        self.files.values().any(|f| {
            f.versions.values().any(|v| match v.state {
                VersionState::Pending { deadline_ms } => deadline_ms <= now_ms,
                VersionState::Committed => false,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn cmd(now_ms: u64, op: Op) -> Command {
        Command { now_ms, op }
    }

    /// Whether `node` keeps its copy of the bytes the helpers commit ([7; 32]).
    fn keeps(s: &MetaState, node: u16, name: &str, version: u64) -> bool {
        s.wanted(addr(node), name, version, &[7; 32]) == Keep::Yes
    }

    fn begin(s: &mut MetaState, name: &str, now: u64) -> u64 {
        match s.apply(&cmd(
            now,
            Op::BeginPut {
                name: name.into(),
                size: 10,
                replicas: vec![addr(1), addr(2), addr(3), addr(4)],
                deadline_ms: now + 1000,
            },
        )) {
            Applied::Version(v) => v,
            other => panic!("begin: {other:?}"),
        }
    }

    fn commit(s: &mut MetaState, name: &str, version: u64, holders: &[u16]) -> Applied {
        s.apply(&cmd(
            50,
            Op::CommitPut {
                name: name.into(),
                version,
                checksum: [7; 32],
                holders: holders.iter().map(|p| addr(*p)).collect(),
                quorum: 3,
            },
        ))
    }

    fn begin_at(s: &mut MetaState, name: &str, version: u64) -> Applied {
        s.apply(&cmd(
            0,
            Op::BeginPutAt {
                name: name.into(),
                version,
                size: 10,
                replicas: vec![addr(1), addr(2), addr(3), addr(4)],
                deadline_ms: 1000,
            },
        ))
    }

    fn put_at(s: &mut MetaState, name: &str, version: u64, sum: u8, holders: &[u16]) -> Applied {
        s.apply(&cmd(
            70,
            Op::PutAt {
                name: name.into(),
                version,
                size: 10,
                checksum: [sum; 32],
                holders: holders.iter().map(|p| addr(*p)).collect(),
                quorum: 3,
            },
        ))
    }

    #[test]
    fn assigned_lists_a_nodes_committed_versions_page_by_page() {
        let mut s = MetaState::default();
        for (name, holders) in [("b", [1, 2, 3]), ("a", [2, 3, 4]), ("c", [1, 3, 4])] {
            for v in 1..=2 {
                assert_eq!(put_at(&mut s, name, v, 7, &holders), Applied::Version(v));
            }
        }
        // Pending versions are nobody's yet.
        begin(&mut s, "b", 80);
        let names = |items: &[(String, VersionInfo)]| -> Vec<(String, u64)> {
            items.iter().map(|(n, v)| (n.clone(), v.version)).collect()
        };
        let (all, more) = s.assigned(addr(1), None, 10);
        assert!(!more);
        assert_eq!(
            names(&all),
            [("b", 1), ("b", 2), ("c", 1), ("c", 2)].map(|(n, v)| (n.to_string(), v))
        );
        assert_eq!(all[0].1.replicas, [addr(1), addr(2), addr(3)]);
        // Pages of 3, then the rest after the last one listed.
        let (first, more) = s.assigned(addr(1), None, 3);
        assert!(more);
        let after = (first[2].0.clone(), first[2].1.version);
        let (rest, more) = s.assigned(addr(1), Some(&after), 3);
        assert!(!more);
        assert_eq!([names(&first), names(&rest)].concat(), names(&all));
        assert!(s.assigned(addr(9), None, 10).0.is_empty());
    }

    #[test]
    fn a_put_at_plans_and_commits_in_one_entry_and_only_a_free_version() {
        let mut s = MetaState::default();
        assert_eq!(put_at(&mut s, "a", 1, 7, &[1, 2, 3]), Applied::Version(1));
        let f = s.stat("a").expect("committed");
        assert_eq!(f.versions.len(), 1);
        assert_eq!(f.versions[0].size, 10);
        assert_eq!(f.versions[0].replicas, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(s.next_version("a"), 2);
        // A retried commit of the same bytes answers the same; other bytes are refused.
        assert_eq!(put_at(&mut s, "a", 1, 7, &[1, 2, 3]), Applied::Version(1));
        assert!(
            matches!(put_at(&mut s, "a", 1, 8, &[1, 2, 3]), Applied::Rejected(m) if m.contains("other content"))
        );
        // A version an appended plan holds is another put's.
        assert_eq!(begin_at(&mut s, "a", 2), Applied::Version(2));
        assert!(
            matches!(put_at(&mut s, "a", 2, 7, &[1, 2, 3]), Applied::Rejected(m) if m.contains("another put's"))
        );
        // Below the counter (a deleted version included) is taken.
        assert_eq!(
            s.apply(&cmd(80, Op::Delete { name: "a".into() })),
            Applied::Done
        );
        assert!(
            matches!(put_at(&mut s, "a", 1, 7, &[1, 2, 3]), Applied::Rejected(m) if m.contains("is taken"))
        );
        // Too few holders: refused, and nothing is left pending.
        assert!(
            matches!(put_at(&mut s, "b", 4, 7, &[1, 2]), Applied::Rejected(m) if m.contains("only 2 agent(s)"))
        );
        assert!(!keeps(&s, 1, "b", 4));
        assert_eq!(s.next_version("b"), 5, "the number is not handed out again");
        // Skipping numbers (a plan aborted in memory) is fine.
        assert_eq!(
            put_at(&mut s, "b", 6, 7, &[1, 2, 3, 4]),
            Applied::Version(6)
        );
        assert!(keeps(&s, 4, "b", 6));
    }

    #[test]
    fn a_leader_chosen_version_is_taken_only_at_or_above_the_next_one() {
        let mut s = MetaState::default();
        assert_eq!(s.next_version("a"), 1);
        assert_eq!(begin_at(&mut s, "a", 1), Applied::Version(1));
        assert_eq!(s.next_version("a"), 2);
        assert!(
            matches!(begin_at(&mut s, "a", 1), Applied::Rejected(m) if m.contains("version 1 of \"a\" is taken")),
            "a version already planned"
        );
        assert!(matches!(begin_at(&mut s, "a", 0), Applied::Rejected(_)));
        assert_eq!(commit(&mut s, "a", 1, &[1, 2, 3]), Applied::Version(1));
        // Numbers of deleted versions are never handed out again.
        assert_eq!(
            s.apply(&cmd(60, Op::Delete { name: "a".into() })),
            Applied::Done
        );
        assert!(matches!(begin_at(&mut s, "a", 1), Applied::Rejected(_)));
        // Plans of the old kind and the new one share the counter.
        assert_eq!(begin(&mut s, "a", 0), 2);
        assert_eq!(begin_at(&mut s, "a", 3), Applied::Version(3));
        assert_eq!(begin(&mut s, "a", 0), 4);
        assert_eq!(commit(&mut s, "a", 3, &[1, 2, 3]), Applied::Version(3));
        assert_eq!(s.stat("a").map(|f| f.versions.len()), Some(1));
    }

    #[test]
    fn versions_are_numbered_in_order_and_visible_only_once_committed() {
        let mut s = MetaState::default();
        let v1 = begin(&mut s, "a", 0);
        let v2 = begin(&mut s, "a", 0);
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(s.stat("a"), None);
        assert_eq!(commit(&mut s, "a", v2, &[1, 2, 3]), Applied::Version(2));
        let info = s.stat("a").unwrap();
        assert_eq!(info.versions.len(), 1);
        assert_eq!(info.versions[0].version, 2);
        assert_eq!(info.versions[0].replicas, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(info.versions[0].committed_ms, 50);
        assert_eq!(commit(&mut s, "a", v1, &[1, 2, 3]), Applied::Version(1));
        let versions: Vec<u64> = s
            .stat("a")
            .unwrap()
            .versions
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(s.count(), (1, 2, 20));
    }

    #[test]
    fn commit_below_quorum_aborts_the_version() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        let r = commit(&mut s, "a", v, &[1, 2, 2]);
        assert!(
            matches!(&r, Applied::Rejected(m) if m.contains("only 2")),
            "{r:?}"
        );
        assert_eq!(s.version("a", v), None);
        // Too late now: it is gone.
        assert!(matches!(
            commit(&mut s, "a", v, &[1, 2, 3]),
            Applied::Rejected(_)
        ));
    }

    #[test]
    fn retried_commit_is_idempotent() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        assert_eq!(commit(&mut s, "a", v, &[1, 2, 3]), Applied::Version(v));
        assert_eq!(commit(&mut s, "a", v, &[1, 2, 3]), Applied::Version(v));
    }

    #[test]
    fn expired_pending_puts_are_dropped_and_cannot_commit() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        assert!(!s.has_expired_pending(999));
        assert!(s.has_expired_pending(1000));
        s.apply(&cmd(999, Op::ExpirePending));
        assert!(s.version("a", v).is_some());
        s.apply(&cmd(1000, Op::ExpirePending));
        assert!(s.version("a", v).is_none());
        assert!(matches!(
            commit(&mut s, "a", v, &[1, 2, 3]),
            Applied::Rejected(_)
        ));
    }

    #[test]
    fn abort_drops_a_pending_version_only() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        let abort = |s: &mut MetaState| {
            s.apply(&cmd(
                1,
                Op::AbortPut {
                    name: "a".into(),
                    version: v,
                },
            ))
        };
        assert_eq!(abort(&mut s), Applied::Done);
        assert!(s.version("a", v).is_none());
        let v2 = begin(&mut s, "a", 0);
        assert_eq!(v2, 2, "aborted numbers are not reused");
        commit(&mut s, "a", v2, &[1, 2, 3]);
        let r = s.apply(&cmd(
            1,
            Op::AbortPut {
                name: "a".into(),
                version: v2,
            },
        ));
        assert!(matches!(r, Applied::Rejected(_)));
    }

    #[test]
    fn delete_removes_every_version_and_keeps_numbering() {
        let mut s = MetaState::default();
        let del = |s: &mut MetaState| s.apply(&cmd(5, Op::Delete { name: "a".into() }));
        assert_eq!(del(&mut s), Applied::NoSuchFile("a".into()));
        let v = begin(&mut s, "a", 0);
        commit(&mut s, "a", v, &[1, 2, 3]);
        assert_eq!(del(&mut s), Applied::Done);
        assert_eq!(s.stat("a"), None);
        assert_eq!(s.count(), (0, 0, 0));
        assert!(!keeps(&s, 1, "a", v));
        assert_eq!(begin(&mut s, "a", 0), 2);
    }

    #[test]
    fn wanted_keeps_committed_replicas_and_pending_until_the_log_expires_them() {
        let mut s = MetaState::default();
        let v1 = begin(&mut s, "a", 0);
        commit(&mut s, "a", v1, &[1, 2, 3]);
        let v2 = begin(&mut s, "a", 0);
        assert!(keeps(&s, 1, "a", v1));
        assert!(!keeps(&s, 4, "a", v1), "not among the committed holders");
        // Past its deadline (1000) but not yet expired by the log: kept, since
        // a commit proposed in time may still be applied.
        assert!(keeps(&s, 4, "a", v2), "pending");
        let late = s.apply(&cmd(
            1500,
            Op::CommitPut {
                name: "a".into(),
                version: v2,
                checksum: [7; 32],
                holders: vec![addr(1), addr(2), addr(4)],
                quorum: 3,
            },
        ));
        assert_eq!(late, Applied::Version(v2));
        assert!(keeps(&s, 4, "a", v2), "committed here");
        let v3 = begin(&mut s, "a", 0);
        assert!(keeps(&s, 4, "a", v3));
        assert_eq!(s.apply(&cmd(1000, Op::ExpirePending)), Applied::Done);
        assert!(!keeps(&s, 4, "a", v3), "expired by the log");
        assert!(keeps(&s, 4, "a", v2), "committed versions stay");
        // Other bytes under a committed version here (a late put of an earlier
        // leader's plan): fetched again. Pending or not placed here: as before.
        assert_eq!(s.wanted(addr(4), "a", v2, &[8; 32]), Keep::Refetch);
        assert_eq!(s.wanted(addr(3), "a", v2, &[8; 32]), Keep::No);
        let v4 = begin(&mut s, "a", 0);
        assert_eq!(s.wanted(addr(4), "a", v4, &[8; 32]), Keep::Yes);
        assert!(!keeps(&s, 1, "a", 9));
        assert!(!keeps(&s, 1, "b", 1));
    }

    #[test]
    fn set_replicas_adds_and_drops_holders() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        commit(&mut s, "a", v, &[1, 2, 3]);
        s.apply(&cmd(
            9,
            Op::SetReplicas {
                name: "a".into(),
                version: v,
                add: vec![addr(5)],
                drop: vec![addr(2)],
            },
        ));
        assert_eq!(
            s.stat("a").unwrap().versions[0].replicas,
            vec![addr(1), addr(3), addr(5)]
        );
        let nodes = s.nodes(&[addr(9)]);
        let names: Vec<SocketAddr> = nodes.iter().map(|(a, _)| *a).collect();
        assert_eq!(names, vec![addr(1), addr(3), addr(5), addr(9)]);
        assert!(nodes[3].1.is_empty());
    }

    #[test]
    fn list_matches_globs_over_committed_files() {
        let mut s = MetaState::default();
        for name in ["img/1.jpg", "img/2.jpg", "model.onnx"] {
            let v = begin(&mut s, name, 0);
            commit(&mut s, name, v, &[1, 2, 3]);
        }
        begin(&mut s, "img/3.jpg", 0);
        let names: Vec<String> = s
            .listing()
            .all(&Glob::new("img/*").unwrap())
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec!["img/1.jpg", "img/2.jpg"]);
        assert_eq!(s.names_under("img/"), vec!["img/1.jpg", "img/2.jpg"]);
        assert_eq!(s.names_under("img/2"), vec!["img/2.jpg"]);
        assert!(s.names_under("imh").is_empty());
        assert_eq!(
            s.names_under(""),
            vec!["img/1.jpg", "img/2.jpg", "model.onnx"]
        );
    }

    #[test]
    fn a_listing_pages_through_its_prefix_range_and_is_not_changed_by_later_applies() {
        let mut s = MetaState::default();
        for i in 0..50 {
            put_at(&mut s, &format!("d/{i:02}"), 1, 7, &[1, 2, 3]);
            put_at(&mut s, &format!("e/{i:02}"), 1, 7, &[1, 2, 3]);
        }
        put_at(&mut s, "c", 1, 7, &[1, 2, 3]);
        let listing = s.listing();
        // Applied after the copy was taken: not in it.
        put_at(&mut s, "d/50", 1, 7, &[1, 2, 3]);
        let glob = Glob::new("d/*").unwrap();
        let (mut names, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = listing.page(&glob, after.as_deref(), 7, 1000);
            assert!(page.files.len() <= 7);
            // Only the prefix's range is looked at.
            assert!(page.scanned <= 7, "{}", page.scanned);
            names.extend(page.files.into_iter().map(|f| f.name));
            pages += 1;
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = (0..50).map(|i| format!("d/{i:02}")).collect();
        assert_eq!(names, want);
        assert_eq!(pages, 8);
        // A glob matching few names: pages stop after `scan` names, some empty.
        let few = Glob::new("*9").unwrap();
        // ("c", "d/00" .. "d/08": none matches.)
        let page = listing.page(&few, None, 100, 10);
        assert_eq!((page.scanned, page.files.len()), (10, 0));
        assert_eq!(page.next.as_deref(), Some("d/08"));
        let page = listing.page(&few, Some("d/08"), 100, 10);
        assert_eq!(page.files[0].name, "d/09");
        let all: Vec<String> = listing.all(&few).into_iter().map(|f| f.name).collect();
        assert_eq!(
            all,
            [
                "d/09", "d/19", "d/29", "d/39", "d/49", "e/09", "e/19", "e/29", "e/39", "e/49"
            ]
        );
        assert_eq!(s.listing().all(&glob).len(), 51);
    }

    #[test]
    fn totals_count_committed_versions_and_name_those_short_of_copies() {
        let mut s = MetaState::default();
        // (put_at stores 10 bytes per version; a write quorum of 3.)
        put_at(&mut s, "x", 1, 1, &[1, 2, 3, 4]);
        put_at(&mut s, "x", 2, 2, &[1, 2, 3]);
        put_at(&mut s, "y", 1, 3, &[2, 3, 4]);
        begin(&mut s, "z", 0);
        let t = s.listing().totals(4, 10);
        assert_eq!((t.files, t.versions, t.bytes), (2, 3, 30));
        assert_eq!(t.under_replicated, 2);
        assert_eq!(t.sample, vec![("x".into(), 2, 3), ("y".into(), 1, 3)]);
        // The sample is cut, the count is not; three copies are enough for 3.
        assert_eq!(s.listing().totals(4, 1).sample.len(), 1);
        assert_eq!(s.listing().totals(4, 1).under_replicated, 2);
        assert_eq!(s.listing().totals(3, 10).under_replicated, 0);
        assert_eq!(s.count(), (t.files, t.versions, t.bytes));
    }

    #[test]
    fn a_snapshot_claiming_a_huge_map_fails_to_decode_without_reserving_it() {
        // The files map's length says 2^40 entries; nothing follows.
        let mut bytes = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        bytes.extend_from_slice(&[0; 4]);
        assert!(postcard::from_bytes::<MetaState>(&bytes).is_err());
    }

    #[test]
    fn snapshots_round_trip() {
        let mut s = MetaState::default();
        let v = begin(&mut s, "a", 0);
        commit(&mut s, "a", v, &[1, 2, 3]);
        begin(&mut s, "b", 0);
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: MetaState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
    }
}
