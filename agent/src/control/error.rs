//! Control-plane errors, worded for the operator who reads them in `dml`.

use dml_shared::{ErrorKind, RemoteError};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the control plane is not running: no voters are configured (set control.voters or nodes in the config, or pass --voter)"
    )]
    NotConfigured,
    #[error("no control-plane leader after {waited:?}: is a majority of the voters {voters:?} up?")]
    NoLeader {
        waited: Duration,
        voters: Vec<SocketAddr>,
    },
    /// Definite: nothing was appended.
    #[error(
        "the leader could not reach a majority of the voters (tried for {waited:?}); nothing was changed"
    )]
    NoQuorum { waited: Duration },
    /// Ambiguous: appended, but no majority confirmed it in time.
    #[error(
        "the leader wrote the change to its log, but a majority of the voters did not confirm it within {waited:?}; it takes effect only if they come back before another leader replaces it: check before retrying"
    )]
    Unconfirmed {
        waited: Duration,
        /// The term the entry was appended in.
        term: u64,
    },
    /// Ambiguous: appended, then this leader stepped down before it
    /// committed; a later leader may still commit it.
    #[error(
        "the leader wrote the change to its log and then stepped down; a later leader may still commit it: check before retrying"
    )]
    SteppedDown {
        /// The term the entry was appended in.
        term: u64,
    },
    #[error("the leader did not answer the forwarded request: {reason}")]
    Forward { reason: String },
    #[error(
        "only {alive} {} alive; a write needs {quorum}",
        if *alive == 1 { "agent is" } else { "agents are" }
    )]
    TooFewAlive { alive: usize, quorum: usize },
    #[error("no such SDFS file \"{0}\"")]
    NoSuchFile(String),
    #[error("there is no job {0}")]
    NoSuchJob(u64),
    #[error(transparent)]
    NotRunning(#[from] super::jobs::NotRunning),
    #[error("{0}")]
    Rejected(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the Raft node stopped: {0}")]
    Raft(String),
    #[error(transparent)]
    Open(#[from] super::store::OpenError),
    #[error("invalid Raft settings: {0}")]
    RaftConfig(String),
    #[error("no key with fingerprint \"{fingerprint}\" is installed (installed: {})", installed.join(", "))]
    NoSuchKey {
        fingerprint: String,
        installed: Vec<String>,
    },
}

impl ControlError {
    /// What a client can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ControlError::NotConfigured => ErrorKind::Refused,
            ControlError::NoLeader { .. }
            | ControlError::NoQuorum { .. }
            | ControlError::Unconfirmed { .. }
            | ControlError::SteppedDown { .. }
            | ControlError::Forward { .. }
            | ControlError::TooFewAlive { .. } => ErrorKind::Unavailable,
            ControlError::NoSuchFile(_)
            | ControlError::NoSuchJob(_)
            | ControlError::NoSuchKey { .. } => ErrorKind::NotFound,
            ControlError::NotRunning(super::jobs::NotRunning::NoSuchJob(_)) => ErrorKind::NotFound,
            ControlError::Rejected(_) | ControlError::NotRunning(_) => ErrorKind::Conflict,
            ControlError::BadRequest(_) | ControlError::RaftConfig(_) => ErrorKind::Invalid,
            ControlError::Raft(_) | ControlError::Open(_) => ErrorKind::Internal,
        }
    }
}

impl From<ControlError> for RemoteError {
    fn from(e: ControlError) -> Self {
        RemoteError::new(e.kind(), e.to_string())
    }
}

/// Why the leader path did not serve a request.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not the leader (any more); maybe who is.
    NotLeader(Option<SocketAddr>),
    Failed(ControlError),
}

impl From<ControlError> for Refusal {
    fn from(e: ControlError) -> Self {
        Refusal::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::ControlError;

    #[test]
    fn too_few_alive_agrees_in_number() {
        let e = |alive| ControlError::TooFewAlive { alive, quorum: 3 }.to_string();
        assert_eq!(e(1), "only 1 agent is alive; a write needs 3");
        assert_eq!(e(2), "only 2 agents are alive; a write needs 3");
    }
}
