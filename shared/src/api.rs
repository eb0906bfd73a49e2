//! Requests `dml` sends to an agent over TCP, and the answers.

use crate::control::{ControlRequest, ControlResponse};
use crate::error::RemoteError;
use crate::id::NodeId;
use crate::sdfs::{Checksum, DataRequest, Holding};
pub use crate::view::{LeaderInfo, MemberInfo, MemberState};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// One request per frame; the agent answers each with one [`Response`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// This agent's identity.
    Id,
    /// The agent's membership list.
    Members,
    /// Traffic and failure-detector counters.
    Stats,
    /// (Re)join the group through the introducers, as a new identity.
    Join,
    /// Leave the group gracefully; the agent stays up and can join again.
    Leave,
    /// Who leads the control plane.
    Leader,
    /// A control-plane request (SDFS metadata or inference), served at the
    /// leader. `leader_only`: an agent relaying it to the leader sets it, so
    /// the receiver serves it only if it leads and never relays it again
    /// (it answers `NotLeader`); from a client, any agent relays it.
    Control {
        req: ControlRequest,
        leader_only: bool,
    },
    /// SDFS bytes: a write, a read, a repair copy, or the local holdings.
    Data(DataRequest),
    /// An openraft RPC between voters, postcard-encoded by the control plane.
    Raft(Vec<u8>),
    /// Stream telemetry on this connection: the agent answers with
    /// [`Response::Telemetry`] frames until the connection closes.
    Subscribe,
    /// This agent's own figures (CPU, memory, SDFS bytes), for telemetry.
    NodeStats,
    /// `dml keyring` (see [`crate::keyring`]).
    Keyring(crate::keyring::KeyringRequest),
    /// This agent's newest log lines, at most `lines`, oldest first
    /// (`dml logs`, the console's member details).
    Logs { lines: u32 },
}

/// This agent's view of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdInfo {
    pub id: NodeId,
    pub incarnation: u32,
    /// False after `dml leave` and before the join completes.
    pub joined: bool,
}

/// Counters of the failure detector; rates are over the last few seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_ms: u64,
    pub bytes_sent_per_s: f64,
    pub bytes_recv_per_s: f64,
    pub packets_sent_per_s: f64,
    pub packets_recv_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    pub probes_sent: u64,
    /// Suspicions this agent raised about others.
    pub suspicions: u64,
    /// Suspicions about this agent that it refuted: false positives.
    pub refuted: u64,
    /// Members this agent saw declared failed.
    pub declared_failed: u64,
    /// Times this agent learned it was declared failed while alive.
    pub false_failures: u64,
    pub bad_packets: u64,
    pub bad_frames: u64,
    pub members_live: u64,
    /// Datagrams dropped for a missing or wrong authentication tag.
    pub udp_unauthenticated: u64,
    /// Authentic datagrams dropped as replayed or stale.
    pub udp_replayed: u64,
    /// TCP connections dropped in the handshake or for a bad frame tag.
    pub tcp_unauthenticated: u64,
    /// Members this agent held as failed that refuted it (alive at a higher incarnation) and
    /// were taken back under the same identity.
    pub reinstated: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Id(IdInfo),
    Members(Vec<MemberInfo>),
    Stats(Stats),
    Ok,
    /// The request was refused or failed; what kind, and why.
    Error(RemoteError),
    Leader(LeaderInfo),
    Control(ControlResponse),
    /// A write stored durably on these agents (the answering one first).
    /// `failed`: replicas of the chain that did not store it, each with the
    /// reason it gave (or "unreachable"/"timed out" as its upstream saw it).
    Stored {
        holders: Vec<SocketAddr>,
        failed: Vec<(SocketAddr, String)>,
    },
    /// A read starts: `size` bytes follow as raw data frames.
    ReadStart {
        size: u64,
        checksum: Checksum,
    },
    Holdings(Vec<Holding>),
    Raft(Vec<u8>),
    /// This agent is not the leader; ask `leader` instead.
    NotLeader {
        leader: Option<SocketAddr>,
    },
    /// One frame of a [`Request::Subscribe`] stream.
    Telemetry(Box<crate::telemetry::Frame>),
    NodeStats(crate::telemetry::NodeStats),
    Keyring(crate::keyring::KeyringResponse),
    /// A batched write ([`DataRequest::WriteBatch`]): per file, in order,
    /// who stored it and who did not.
    StoredBatch(Vec<crate::sdfs::StoredFile>),
    /// [`Request::Logs`]: log lines, oldest first.
    Logs(Vec<String>),
}
