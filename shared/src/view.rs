//! What one agent sees of the cluster: its members and who leads. Both the
//! API's answers and the telemetry frames carry these (a leaf module, so
//! neither of those needs the other).

use crate::id::NodeId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A member's state as this agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Failed,
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
        }
    }

    /// Alive or suspect: still on the ring.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One row of `dml members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub state: MemberState,
    pub incarnation: u32,
    /// Milliseconds since this agent last heard from the member directly, if ever.
    pub last_heard_ms: Option<u64>,
    /// The members that probe this one (its ring predecessors).
    pub monitors: Vec<NodeId>,
}

/// The control plane as one agent sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's agent address, if one is known.
    pub leader: Option<SocketAddr>,
    pub term: u64,
    pub voters: Vec<SocketAddr>,
    /// Whether the answering agent is a voter.
    pub is_voter: bool,
    /// Index of the last entry applied to this agent's state machine (voters only).
    pub last_applied: Option<u64>,
    /// BLAKE3 (16 hex digits) of this voter's state machine at `last_applied`:
    /// voters at the same index must show the same digest.
    pub applied_digest: Option<String>,
    /// Set when the answering agent leads but no majority of the voters has
    /// acknowledged it for this many milliseconds, longer than an election
    /// timeout: it is cut off, and the others may have elected a new leader.
    pub unacked_ms: Option<u64>,
    /// The voters of the Raft configuration as this voter holds it: Raft node
    /// id and address (empty on a non-voter). A voter that lost its state
    /// comes back under a new id, replacing its old one.
    #[serde(default)]
    pub raft_ids: Vec<(u64, SocketAddr)>,
}
