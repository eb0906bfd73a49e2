//! Typed errors shared by the wire, framing, config and client layers.

use std::time::Duration;

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
    Remote(String),
    #[error("bad SDFS name \"{name}\": {reason}")]
    BadName { name: String, reason: String },
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
}

/// ` (addr: reason; ...)` for a quorum error, or nothing.
fn failed_suffix(failed: &[(std::net::SocketAddr, String)]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        format!(" ({})", crate::sdfs::describe_failed(failed))
    }
}

impl Error {
    /// Errors that may go away on retry (a peer restarting, a dropped connection).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Connect { .. } | Error::Io(_)
        )
    }
}
