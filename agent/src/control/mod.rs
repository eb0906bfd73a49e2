//! The replicated control plane: Raft (openraft) among the voters, with the
//! SDFS metadata state machine. Not running yet: every call says so.

use dml_shared::api::{LeaderInfo, Response};
use dml_shared::sdfs::MetaRequest;

/// Cheap to clone; reaches the control-plane task.
#[derive(Clone, Default)]
pub struct ControlHandle {}

impl ControlHandle {
    pub async fn leader_info(&self) -> LeaderInfo {
        LeaderInfo {
            leader: None,
            term: 0,
            voters: Vec::new(),
            is_voter: false,
            last_applied: None,
        }
    }

    /// Serves a metadata request here if this agent leads, else forwards it.
    pub async fn meta(&self, _req: MetaRequest) -> Response {
        Response::Error("the control plane is not running on this agent".into())
    }

    /// Handles one Raft RPC from another voter.
    pub async fn raft_rpc(&self, _rpc: Vec<u8>) -> Response {
        Response::Error("this agent is not a voter".into())
    }
}
