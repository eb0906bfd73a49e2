//! SDFS vocabulary shared by agents and `dml`: file names, version metadata,
//! and the requests of the metadata (control) plane and the data path.
//!
//! Put: `Meta(BeginPut)` to the leader gives a version and a replica chain;
//! the client streams the bytes to the chain's head with `Data(Write)` (the
//! head forwards them down the chain), their checksum last; then
//! `Meta(CommitPut)` with the holders that stored them durably makes the
//! version visible.
//! Get: `Meta(Stat)` gives the replicas; `Data(Read)` from the nearest one.

use crate::error::{Error, RemoteError, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Most files in one [`MetaRequest::ListPage`] answer.
pub const LIST_PAGE_MAX: u32 = 2000;

/// Longest SDFS name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Most files in one batched put ([`MetaRequest::BeginPutBatch`]).
pub const MAX_BATCH_FILES: usize = 1024;

/// Most bytes, all files together, in one batched put: the leader keeps a
/// batch's plans in memory until its commit, as for one small put.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

pub use crate::version::{Checksum, VersionInfo};

/// Checks an SDFS name: non-empty UTF-8 of at most [`MAX_NAME_BYTES`], no
/// control character (C0, DEL, C1; NUL among them), not absolute, no `.` or
/// `..` component, no empty component.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::BadName {
            name: printable(name).chars().take(80).collect(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("is longer than 1024 bytes");
    }
    if let Some((i, c)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        let known = match c {
            '\0' => " (NUL)",
            '\t' => " (tab)",
            '\n' => " (line feed)",
            '\r' => " (carriage return)",
            '\u{1b}' => " (ESC)",
            '\u{7f}' => " (DEL)",
            '\u{80}'..='\u{9f}' => " (C1)",
            _ => "",
        };
        return bad(&format!(
            "contains the control character U+{:04X}{known} at character {}",
            c as u32,
            i + 1
        ));
    }
    if name.starts_with('/') {
        return bad("is an absolute path");
    }
    if name.contains('\\') {
        return bad("contains a backslash");
    }
    for part in name.split('/') {
        match part {
            "" => return bad("has an empty path component"),
            "." | ".." => return bad("has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// `name` with every unprintable character (controls, and the invisible
/// format characters that reorder or hide text on a terminal) written as
/// `\u{..}`: for any output that shows a name to a person. Names cannot hold
/// a backslash, so the escapes are unambiguous.
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(unprintable) {
        return name.into();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match unprintable(c) {
            true => out += &format!("\\u{{{:x}}}", c as u32),
            false => out.push(c),
        }
    }
    out.into()
}

/// Controls (C0, DEL, C1), and Unicode format characters (bidi overrides,
/// zero-width ones, the BOM).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// Adds each replica of `chain` that is neither in `holders` nor already in
/// `failed` to `failed` with `reason`: a replica the write never reached.
pub fn note_unreached(
    chain: &[SocketAddr],
    holders: &[SocketAddr],
    failed: &mut Vec<(SocketAddr, String)>,
    reason: &str,
) {
    for a in chain {
        if !holders.contains(a) && !failed.iter().any(|(f, _)| f == a) {
            failed.push((*a, reason.to_string()));
        }
    }
}

pub use crate::error::describe_failed;

pub use crate::glob::{BadGlob, Glob, MAX_GLOB_LEN, glob_match};

/// A file and its committed versions, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub versions: Vec<VersionInfo>,
}

/// A version stored on one agent's disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub name: String,
    pub version: u64,
    pub size: u64,
}

/// Metadata operations, served by the Raft leader (followers forward them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaRequest {
    /// Reserve the next version of `name`; answered with [`MetaResponse::PutPlan`].
    BeginPut { name: String, size: u64 },
    /// The put's bytes are durable on `holders`; commit if they reach the
    /// write quorum. Answered with [`MetaResponse::Committed`].
    CommitPut {
        name: String,
        version: u64,
        checksum: Checksum,
        holders: Vec<SocketAddr>,
        /// The plan's id from [`MetaResponse::PutPlan`].
        plan: u64,
    },
    /// Give up a put; its version never becomes visible.
    AbortPut {
        name: String,
        version: u64,
        /// The plan's id from [`MetaResponse::PutPlan`].
        plan: u64,
    },
    /// What became of a commit answered [`MetaResponse::Unconfirmed`]:
    /// answered with [`MetaResponse::Outcome`].
    PutOutcome {
        name: String,
        version: u64,
        checksum: Checksum,
        /// The plan's id from [`MetaResponse::PutPlan`].
        plan: u64,
    },
    /// Delete every version of `name`. Answered with [`MetaResponse::Done`],
    /// or [`MetaResponse::DeleteUnconfirmed`].
    Delete { name: String },
    /// What became of a delete answered [`MetaResponse::DeleteUnconfirmed`]
    /// (its `term` and `through`): answered with [`MetaResponse::Outcome`].
    DeleteOutcome {
        name: String,
        term: u64,
        through: u64,
    },
    /// A file's committed versions.
    Stat { name: String },
    /// Files whose names match a glob.
    List { glob: String },
    /// Totals over the whole store.
    Count,
    /// Files per node.
    Nodes,
    /// Reconcile: what `node` should do with each copy it stores (name,
    /// version, the checksum its sidecar records). Answered with
    /// [`MetaResponse::Wanted`], one [`Keep`] per item, in order.
    Wanted {
        node: SocketAddr,
        items: Vec<(String, u64, Checksum)>,
    },
    /// Reconcile: the committed versions that name `node` among their
    /// replicas, in (name, version) order after `after`, at most `limit`.
    /// Answered with [`MetaResponse::Assigned`].
    Assigned {
        node: SocketAddr,
        after: Option<(String, u64)>,
        limit: u32,
    },
    /// Reserve the next version of each file (name, size) of a batched put,
    /// all on one chain. Answered with [`MetaResponse::PutBatchPlan`]; at most
    /// [`MAX_BATCH_FILES`] files and [`MAX_BATCH_BYTES`] bytes; a name
    /// given twice takes two versions.
    BeginPutBatch { files: Vec<(String, u64)> },
    /// Commit the files of a batch whose bytes are durable: one Raft entry for
    /// all of them, each file committed or refused on its own. Answered with
    /// [`MetaResponse::CommittedBatch`], or [`MetaResponse::Unconfirmed`]
    /// (then ask [`MetaRequest::PutOutcome`] per file).
    CommitPutBatch {
        /// The plan's id from [`MetaResponse::PutBatchPlan`].
        plan: u64,
        files: Vec<BatchCommit>,
    },
    /// `dml sdfs balance`: the moves that bring every committed version to
    /// the placement the alive agents give it, and, unless `dry_run`, start
    /// them. Answered with [`MetaResponse::Balance`].
    Balance { dry_run: bool },
    /// One page of the files whose names match `glob` and sort after
    /// `after`, at most `limit` of them (the leader caps it at
    /// [`LIST_PAGE_MAX`]): `ls-all` asks page after page, so the first
    /// names come back at once however many there are. Answered with
    /// [`MetaResponse::FilesPage`].
    ListPage {
        glob: String,
        after: Option<String>,
        limit: u32,
    },
    /// Totals and the versions short of `replicas` copies (at most `sample`
    /// of them named), counted off the state-machine lock. Answered with
    /// [`MetaResponse::Health`]; the console's SDFS pane reads it.
    Health { replicas: u32, sample: u32 },
}

/// [`MetaResponse::Health`]: committed files, versions and bytes, and the
/// versions with fewer copies than asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub versions: u64,
    pub bytes: u64,
    pub under_replicated: u64,
    /// Some of them: (name, version, copies).
    pub sample: Vec<(String, u64, u32)>,
}

impl MetaRequest {
    /// Whether repeating the request after an unknown outcome is harmless:
    /// reads, and commits and aborts of a given version (the state machine
    /// treats a repeat as a no-op). `BeginPut` would reserve a second version
    /// and `Delete` would fail on its own success, so they are not.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            MetaRequest::BeginPut { .. }
                | MetaRequest::BeginPutBatch { .. }
                | MetaRequest::Delete { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaResponse {
    PutPlan {
        version: u64,
        /// Stream to `chain[0]`, which forwards to the rest in order.
        chain: Vec<SocketAddr>,
        /// Durable copies needed to commit.
        quorum: usize,
        /// Which leader made the plan (its Raft term): a commit or abort
        /// names it, so a later leader never takes it for a plan of its own.
        plan: u64,
    },
    Committed {
        version: u64,
    },
    /// The leader appended the commit, but a majority of the voters did not
    /// confirm it in time: it may still take effect. Ask
    /// [`MetaRequest::PutOutcome`] until the answer is final.
    Unconfirmed {
        reason: String,
    },
    /// The leader appended the delete in `term`, when `through` was the
    /// newest committed version, but a majority of the voters did not confirm
    /// it in time: it may still take effect. Ask [`MetaRequest::DeleteOutcome`]
    /// until the answer is final.
    DeleteUnconfirmed {
        reason: String,
        term: u64,
        through: u64,
    },
    Outcome(ChangeOutcome),
    Done,
    File(FileInfo),
    Files(Vec<FileInfo>),
    Count {
        files: u64,
        versions: u64,
        bytes: u64,
    },
    Nodes(Vec<(SocketAddr, Vec<Holding>)>),
    /// One answer per item of [`MetaRequest::Wanted`].
    Wanted(Vec<Keep>),
    /// [`MetaRequest::Assigned`]: (name, version) pairs; `more` when `limit`
    /// cut the list.
    Assigned {
        items: Vec<(String, VersionInfo)>,
        more: bool,
    },
    /// The plan of a batched put: `versions[i]` for the request's file `i`,
    /// all on `chain`.
    PutBatchPlan {
        versions: Vec<u64>,
        chain: Vec<SocketAddr>,
        quorum: usize,
        plan: u64,
    },
    /// Per file of [`MetaRequest::CommitPutBatch`], in order.
    CommittedBatch(Vec<FileCommit>),
    /// [`MetaRequest::Balance`]: the plan, as the leader sees it now.
    Balance(BalancePlan),
    /// [`MetaRequest::ListPage`]: matching files by name; `next`, when some,
    /// is the `after` of the next page (the page may hold fewer than `limit`
    /// files, even none, when the leader stopped looking); `None` at the end.
    FilesPage {
        files: Vec<FileInfo>,
        next: Option<String>,
    },
    /// [`MetaRequest::Health`].
    Health(Totals),
}

/// The moves that bring the copies to the placement the alive agents give
/// them (`dml sdfs balance`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalancePlan {
    /// Copies to move, and their bytes (running ones included).
    pub moves: u64,
    pub bytes: u64,
    /// Per (from, to): copies and bytes, most bytes first.
    pub flows: Vec<BalanceFlow>,
    /// Each alive agent's committed bytes now, and once every move is done.
    pub agents: Vec<BalanceShare>,
    /// The leader started (or kept running) these moves: not a dry run.
    pub started: bool,
    /// Versions the plan leaves alone because repair must act first (a
    /// holder is not alive, or copies are missing).
    pub waiting_for_repair: u64,
}

/// Copies moving from one agent to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceFlow {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub moves: u64,
    pub bytes: u64,
}

/// One agent's bytes before and after a balance plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceShare {
    pub agent: SocketAddr,
    pub now: u64,
    pub after: u64,
}

/// One file of a batch's commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchCommit {
    pub name: String,
    pub version: u64,
    pub checksum: Checksum,
    /// The replicas that stored it durably.
    pub holders: Vec<SocketAddr>,
}

/// What became of one file of [`MetaRequest::CommitPutBatch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FileCommit {
    Committed {
        version: u64,
    },
    /// Refused: it never becomes visible.
    Refused(RemoteError),
    /// Appended but not confirmed in time: ask [`MetaRequest::PutOutcome`].
    Unconfirmed {
        reason: String,
    },
}

/// One file of a batched write ([`DataRequest::WriteBatch`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchFile {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
}

/// What the chain did with one file of a batched write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Replicas that stored it durably, the answering one first.
    pub holders: Vec<SocketAddr>,
    /// Replicas that did not, each with its reason.
    pub failed: Vec<(SocketAddr, String)>,
}

/// What became of an unconfirmed commit or delete, as the current leader
/// sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOutcome {
    /// The version is committed with these bytes; the file's versions up to
    /// the delete's `through` are gone.
    Committed,
    /// It never will be: a later leader, which has applied every entry it
    /// holds from earlier terms, does not have it.
    Failed,
    /// Still in the log of the leader that appended it, not yet confirmed.
    Pending,
}

/// What reconcile does with one stored copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keep {
    /// Committed with `node` among its replicas and these bytes, or pending.
    Yes,
    /// Not wanted there: deleted, never committed, or placed elsewhere.
    No,
    /// Wanted there, but the copy holds other bytes than the committed
    /// version (a put of the same version by an earlier leader, finished
    /// late): fetch it again from the other replicas.
    Refetch,
}

/// Data-path requests, sent straight to an agent that holds (or will hold) bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Store a version. Raw data frames follow (see `framing`), then an
    /// empty frame, then, if `checksum` is `None`, the checksum in a sealed
    /// frame of its own (a client hashes the bytes as it sends them). The
    /// agent forwards them to `downstream[0]` with the rest of the chain,
    /// writes a temp file, fsyncs, checks the checksum and renames it into
    /// place. Answered with [`crate::api::Response::Stored`].
    Write {
        name: String,
        version: u64,
        size: u64,
        checksum: Option<Checksum>,
        downstream: Vec<SocketAddr>,
        /// The put's plan id ([`MetaResponse::PutPlan`]'s `plan`). A replica
        /// holding other bytes of this version from an earlier plan (which
        /// can no longer commit) replaces them; from this plan or a later
        /// one, or committed, it keeps them and refuses the write.
        plan: u64,
        /// The put's key, on an encrypted connection: the data frames (and
        /// the end frame) are sealed with it end to end and travel outside
        /// the connections' Noise messages, forwarded as received
        /// ([`crate::auth::put_seal`]). `None`: plain frames inside them.
        seal: Option<crate::auth::put_seal::PutKey>,
    },
    /// Send a stored version: answered with [`crate::api::Response::ReadStart`],
    /// then raw data frames, then an empty frame. The agent does not re-hash
    /// the copy as it sends it: the reader checks the checksum and reports a
    /// mismatch with [`DataRequest::BadCopy`]; a copy found shorter than its
    /// size ends without the end frame.
    Read { name: String, version: u64 },
    /// Copy a version from one of `sources` (leader to a new holder, for repair).
    Replicate {
        name: String,
        version: u64,
        size: u64,
        checksum: Checksum,
        sources: Vec<SocketAddr>,
    },
    /// What this agent stores.
    Store,
    /// A reader found that the bytes this agent sent for a version did not
    /// match the committed checksum. The agent re-hashes its copy and, if it
    /// is corrupt, deletes it and fetches it again (as scrub does). Answered
    /// with [`crate::api::Response::Ok`] at once; the check runs afterwards.
    BadCopy { name: String, version: u64 },
    /// Store the versions of a batched put in one stream: the files' bytes
    /// follow back to back, in order, as raw data frames (a frame may end one
    /// file and begin the next), then an empty frame. The agent
    /// forwards them to `downstream[0]` with the rest of the chain, writes
    /// each file to a temp file checked against its checksum, makes them all
    /// durable with one file-system sync, renames them into place and
    /// answers [`crate::api::Response::StoredBatch`]: one entry per file.
    WriteBatch {
        files: Vec<BatchFile>,
        downstream: Vec<SocketAddr>,
        /// The batch's plan id ([`MetaResponse::PutBatchPlan`]'s `plan`).
        plan: u64,
    },
    /// A delete of `name` committed (leader to each holder): drop the copies
    /// of its versions up to `through`. The agent asks the metadata first and
    /// drops only what it no longer wants. Answered with
    /// [`crate::api::Response::Ok`] once done.
    Drop { name: String, through: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "dir/file.txt", "models/resnet50.onnx", "ünïcode"] {
            validate_name(ok).unwrap();
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a\0b",
            "a\\b",
            &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name(&"x".repeat(MAX_NAME_BYTES)).unwrap();
    }

    #[test]
    fn names_with_control_characters_are_refused_naming_the_character_and_its_position() {
        for (name, code, at) in [
            ("a\nb", "U+000A (line feed)", 2),
            ("\u{1b}[31mred", "U+001B (ESC)", 1),
            ("ok/\u{7f}", "U+007F (DEL)", 4),
            ("é\u{85}", "U+0085 (C1)", 2),
            ("x\u{9b}", "U+009B (C1)", 2),
            ("a\0b", "U+0000 (NUL)", 2),
            ("bell\u{7}", "U+0007", 5),
        ] {
            let e = validate_name(name).unwrap_err().to_string();
            assert!(
                e.contains(&format!("control character {code} at character {at}")),
                "{name:?}: {e}"
            );
            // The error itself prints nothing raw.
            assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        }
        validate_name("tab-free/ünïcode ok").unwrap();
    }

    #[test]
    fn printable_escapes_controls_and_hidden_characters_only() {
        assert!(matches!(
            printable("dir/ünï.jpg"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\nb\u{1b}[0m"), "a\\u{a}b\\u{1b}[0m");
        assert_eq!(printable("x\u{9b}y\u{7f}"), "x\\u{9b}y\\u{7f}");
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*", "a/b"));
        assert!(glob_match("img_*.jpg", "img_001.jpg"));
        assert!(!glob_match("img_*.jpg", "img_001.png"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("data/*", "data/x/y"));
        assert!(!glob_match("data", "data/x"));
        assert!(glob_match("img_[0-9]*.{jpg,png}", "img_1.png"));
        let long = "*".repeat(MAX_GLOB_LEN + 1);
        assert!(matches!(Glob::new(&long), Err(BadGlob::TooLong { .. })));
        assert!(matches!(Glob::new("a[b"), Err(BadGlob::Syntax { .. })));
    }
}
