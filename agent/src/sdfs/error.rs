//! Errors of the SDFS store and data path, worded for an operator.

use dml_shared::{ErrorKind, RemoteError};
use std::io;
use std::net::SocketAddr;

/// What went wrong while storing, reading or copying a version.
#[derive(Debug, thiserror::Error)]
pub enum SdfsError {
    #[error(
        "disk full on agent {agent}: cannot store \"{name}\" v{version} under \"{dir}\": {why}"
    )]
    DiskFull {
        agent: SocketAddr,
        name: String,
        version: u64,
        dir: String,
        /// The file system's answer, or the reserve the copy would eat into.
        why: String,
    },
    #[error("agent {agent} cannot {action} \"{path}\": {source}")]
    Io {
        agent: SocketAddr,
        action: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(
        "checksum mismatch for \"{name}\" v{version} on agent {agent}: the bytes received are not the bytes announced"
    )]
    ChecksumMismatch {
        agent: SocketAddr,
        name: String,
        version: u64,
    },
    #[error(
        "size mismatch for \"{name}\" v{version} on agent {agent}: {expected} bytes announced, {got} received"
    )]
    SizeMismatch {
        agent: SocketAddr,
        name: String,
        version: u64,
        expected: u64,
        got: u64,
    },
    #[error(
        "agent {agent} already holds other bytes as \"{name}\" v{version} (another put was given the same version by an earlier leader); it keeps the copy in place"
    )]
    OtherCopy {
        agent: SocketAddr,
        name: String,
        version: u64,
    },
    #[error("\"{name}\" v{version} is not stored here ({agent})")]
    NotStored {
        agent: SocketAddr,
        name: String,
        version: u64,
    },
    #[error("{0}")]
    BadName(#[from] dml_shared::Error),
    #[error("the stream from {peer} broke: {reason}")]
    Stream { peer: String, reason: String },
    /// Like `Stream`, but the peer stopped answering within the timeout.
    #[error("the stream from {peer} broke: {reason}")]
    Stalled { peer: String, reason: String },
    #[error("no source could provide \"{name}\" v{version}: {tried}")]
    NoSource {
        name: String,
        version: u64,
        tried: String,
    },
    #[error("the write of \"{name}\" v{version} on agent {agent} was abandoned")]
    Aborted {
        agent: SocketAddr,
        name: String,
        version: u64,
    },
    #[error("agent {agent} refused \"{name}\" v{version}: {reason}; nothing of it was stored")]
    Unsealed {
        agent: SocketAddr,
        name: String,
        version: u64,
        reason: dml_shared::auth::put_seal::SealError,
    },
    #[error("SDFS on agent {agent} is shutting down")]
    ShuttingDown { agent: SocketAddr },
}

impl SdfsError {
    /// What a client can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SdfsError::ChecksumMismatch { .. }
            | SdfsError::SizeMismatch { .. }
            | SdfsError::Unsealed { .. }
            | SdfsError::BadName(_) => ErrorKind::Invalid,
            SdfsError::OtherCopy { .. } => ErrorKind::Conflict,
            SdfsError::NotStored { .. } => ErrorKind::NotFound,
            SdfsError::Io { .. } => ErrorKind::Internal,
            SdfsError::DiskFull { .. }
            | SdfsError::Stream { .. }
            | SdfsError::Stalled { .. }
            | SdfsError::NoSource { .. }
            | SdfsError::Aborted { .. }
            | SdfsError::ShuttingDown { .. } => ErrorKind::Unavailable,
        }
    }
}

impl From<&SdfsError> for RemoteError {
    fn from(e: &SdfsError) -> Self {
        RemoteError::new(e.kind(), e.to_string())
    }
}

/// Whether an IO error means the file system has no room left (ENOSPC, EDQUOT).
pub fn is_disk_full(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}
