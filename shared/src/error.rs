//! Typed errors shared by the wire, framing, config and client layers, and
//! the kind every error has ([`ErrorKind`]): what a client can act on. An
//! agent's refusal crosses the wire as a [`RemoteError`] with its kind.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What kind of failure an error is: what a caller (or a script, through
/// `dml`'s exit code) can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The named file, version, job, model or member does not exist.
    NotFound,
    /// The request, a name, a file or a setting is malformed or out of range.
    Invalid,
    /// Not enough of the cluster is reachable now (no leader, no quorum, too
    /// few live agents, a timeout); the same request may succeed later.
    Unavailable,
    /// The agent asked is not the leader (clients follow this themselves).
    NotLeader,
    /// Refused by policy: authentication, a connection or size limit, an
    /// agent that does not serve this request.
    Refused,
    /// The request conflicts with the current state (a version taken, a put
    /// or job in another state, other bytes in place).
    Conflict,
    /// A bug or a failure with no better kind.
    Internal,
}

impl ErrorKind {
    /// Every kind, in exit-code order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Internal,
        ErrorKind::NotFound,
        ErrorKind::Invalid,
        ErrorKind::Unavailable,
        ErrorKind::NotLeader,
        ErrorKind::Refused,
        ErrorKind::Conflict,
    ];

    /// The name scripts see (`--json` errors carry it).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotLeader => "not-leader",
            ErrorKind::Refused => "refused",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal",
        }
    }

    /// `dml`'s exit code for an error of this kind (2 is clap's usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::NotFound => 3,
            ErrorKind::Invalid => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::NotLeader => 6,
            ErrorKind::Refused => 7,
            ErrorKind::Conflict => 8,
        }
    }

    /// The kind behind one of `dml`'s exit codes; clap's usage error (2)
    /// is [`ErrorKind::Invalid`].
    pub fn from_exit_code(code: u8) -> Option<Self> {
        use ErrorKind as K;
        if code == 2 {
            return Some(K::Invalid);
        }
        [
            K::Internal,
            K::NotFound,
            K::Invalid,
            K::Unavailable,
            K::NotLeader,
            K::Refused,
            K::Conflict,
        ]
        .into_iter()
        .find(|k| k.exit_code() == code)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's refusal as it crosses the wire: its kind and the operator's words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A malformed request or frame.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// A failure with no better kind.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<&Error> for RemoteError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Remote(r) => r.clone(),
            e => RemoteError::new(e.kind(), e.to_string()),
        }
    }
}

/// A model name the model registry does not list (kind not-found).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown model \"{name}\" (known: {})", known.join(", "))]
pub struct UnknownModel {
    pub name: String,
    /// The registry's models.
    pub known: Vec<String>,
}

/// For callers that still word a refusal as plain text.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("packet too short: {len} bytes, the envelope alone needs {need}")]
    Truncated { len: usize, need: usize },
    #[error("bad magic number {found:#06x}: not an AwesomeDML packet")]
    BadMagic { found: u16 },
    #[error("protocol version {found} is not supported (this build speaks {supported})")]
    BadVersion { found: u8, supported: u8 },
    #[error("message kind {found} was not expected here (wanted {expected})")]
    BadKind { found: u8, expected: u8 },
    #[error("payload does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("invalid config: key \"{key}\" = \"{value}\": {reason}")]
    Config {
        key: String,
        value: String,
        reason: String,
    },
    #[error("config file \"{path}\": {reason}")]
    ConfigFile { path: String, reason: String },
    #[error("model registry \"{path}\": {reason}")]
    Registry { path: String, reason: String },
    #[error("agent at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("cannot reach agent at {addr}: {reason}")]
    Connect {
        addr: String,
        reason: std::io::Error,
    },
    #[error("agent refused the request: {0}")]
    Remote(RemoteError),
    #[error("bad SDFS name \"{name}\": {reason}")]
    BadName { name: String, reason: String },
    /// A name from an agent that would land outside the local directory
    /// it is fetched into (absolute, `..`, control characters, ...).
    #[error(
        "refusing SDFS file \"{name}\" from the agent: it {reason}, so it could land outside {dir}; nothing was written for it"
    )]
    UnsafeName {
        name: String,
        dir: String,
        reason: String,
    },
    #[error(transparent)]
    BadGlob(#[from] crate::glob::BadGlob),
    #[error("model \"{name}\": {reason}")]
    BadModelName { name: String, reason: String },
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{} is not the leader{}", addr, match leader { Some(l) => format!("; the leader is {l}"), None => "; no leader is known yet".into() })]
    NotLeader {
        addr: String,
        leader: Option<std::net::SocketAddr>,
    },
    #[error("local file \"{path}\": {reason}")]
    LocalFile {
        path: String,
        reason: std::io::Error,
    },
    #[error("SDFS file \"{name}\" does not exist")]
    NotFound { name: String },
    #[error("SDFS file \"{name}\" has no version {version}")]
    NoSuchVersion { name: String, version: u64 },
    #[error("\"{name}\" v{version} from {from}: checksum mismatch")]
    ChecksumMismatch {
        name: String,
        version: u64,
        from: std::net::SocketAddr,
    },
    #[error("no replica of \"{name}\" v{version} could serve it: {tried}")]
    ReplicasFailed {
        name: String,
        version: u64,
        tried: String,
    },
    #[error("cluster key file \"{path}\": {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "no cluster key: pass --key-file, set DML_KEY_FILE or security.key_file (make one with `dml keygen`)"
    )]
    NoKey,
    #[error("agent at {addr} failed authentication: {reason}")]
    Auth { addr: String, reason: String },
    #[error("data transfer with {addr} failed: {reason}")]
    Transfer { addr: String, reason: String },
    #[error(
        "put of \"{name}\" v{version}: its commit got no answer ({reason}); it may have committed: check with `dml ls {name}`"
    )]
    CommitUnknown {
        name: String,
        version: u64,
        reason: String,
    },
    #[error(
        "put of \"{name}\" v{version}: the leader appended its commit, but neither did a majority of the voters confirm it nor did a later leader settle it within {waited:?}; it may still take effect: check with `dml ls {name}` before retrying"
    )]
    CommitUnsettled {
        name: String,
        version: u64,
        waited: std::time::Duration,
    },
    #[error(
        "put of \"{name}\" v{version} did not commit: its leader lost the majority of the voters before they confirmed it, and the leader after it does not hold it; nothing is visible, retry the put"
    )]
    PutLost { name: String, version: u64 },
    #[error(
        "delete of \"{name}\": the leader appended it, but neither did a majority of the voters confirm it nor did a later leader settle it within {waited:?}; it may still take effect: check with `dml ls {name}` before retrying"
    )]
    DeleteUnsettled {
        name: String,
        waited: std::time::Duration,
    },
    #[error(
        "delete of \"{name}\" did not take effect: its leader lost the majority of the voters before they confirmed it, and the leader after it does not hold it; every version is still there, retry the delete"
    )]
    DeleteLost { name: String },
    #[error(
        "put of \"{name}\" aborted: only {stored} agent(s) stored it durably; a write needs {quorum}{}",
        failed_suffix(.failed)
    )]
    QuorumNotReached {
        name: String,
        stored: usize,
        quorum: usize,
        /// The replicas that did not store it, with their reasons.
        failed: Vec<(std::net::SocketAddr, String)>,
    },
    /// A batched put failed as a whole (its plan, its stream or its commit),
    /// so this file of it did too; `kind` is the failure's.
    #[error("put of \"{name}\" (in a batch of {files}): {reason}")]
    BatchFailed {
        name: String,
        files: usize,
        kind: ErrorKind,
        reason: String,
    },
}

/// ` (addr: reason; ...)` for a quorum error, or nothing.
fn failed_suffix(failed: &[(std::net::SocketAddr, String)]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        format!(" ({})", describe_failed(failed))
    }
}

/// The failed replicas of a write as `addr: reason; addr: reason`.
pub fn describe_failed(failed: &[(std::net::SocketAddr, String)]) -> String {
    failed
        .iter()
        .map(|(a, why)| format!("{a}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Errors that may go away on retry (a peer restarting, a dropped connection).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Connect { .. } | Error::Io(_)
        )
    }

    /// An answer this client did not expect: a bug or a version skew.
    pub fn unexpected(text: impl Into<String>) -> Self {
        Error::Remote(RemoteError::internal(text))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::Remote(r) => r.kind,
            Error::BatchFailed { kind, .. } => *kind,
            Error::NotLeader { .. } => K::NotLeader,
            Error::NotFound { .. } | Error::NoSuchVersion { .. } | Error::UnknownModel(_) => {
                K::NotFound
            }
            Error::LocalFile { reason, .. } if reason.kind() == std::io::ErrorKind::NotFound => {
                K::NotFound
            }
            Error::Config { .. }
            | Error::ConfigFile { .. }
            | Error::Registry { .. }
            | Error::BadName { .. }
            | Error::BadGlob(_)
            | Error::BadModelName { .. }
            | Error::LocalFile { .. }
            | Error::KeyFile { .. }
            | Error::NoKey => K::Invalid,
            Error::Auth { .. } | Error::UnsafeName { .. } => K::Refused,
            Error::Timeout { .. }
            | Error::Connect { .. }
            | Error::Io(_)
            | Error::Transfer { .. }
            | Error::ReplicasFailed { .. }
            | Error::QuorumNotReached { .. }
            | Error::CommitUnknown { .. }
            | Error::CommitUnsettled { .. }
            | Error::PutLost { .. }
            | Error::DeleteUnsettled { .. }
            | Error::DeleteLost { .. } => K::Unavailable,
            Error::Truncated { .. }
            | Error::BadMagic { .. }
            | Error::BadVersion { .. }
            | Error::BadKind { .. }
            | Error::Decode(_)
            | Error::FrameTooLarge { .. }
            | Error::ChecksumMismatch { .. } => K::Internal,
        }
    }
}
