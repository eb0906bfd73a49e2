//! Raft RPCs over the agent TCP port: a [`RaftMessage`] (an [`RaftRpc`] and
//! the node id it is for) is postcard-encoded into `Request::Raft(bytes)` and
//! answered with `Response::Raft(bytes)` holding a [`RaftReply`]. An RPC for
//! another node id than the receiver's (it rejoined under a new id, see
//! `voters.rs`) is refused. One connection per peer ([`dml_shared::client::Client`]),
//! each call bounded by `control.rpc_timeout`. A peer that cannot be reached,
//! does not answer in time or refuses is reported `Unreachable`, so openraft
//! backs off (capped, jittered, exponential) instead of retrying at once.

use super::types::TypeConfig;
use dml_shared::api::{Request, Response};
use dml_shared::client::Client;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Raft RPC and the Raft node id it is for.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftMessage {
    pub to: u64,
    pub rpc: RaftRpc,
}

/// A Raft RPC from one voter to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// From a voter with a blank store: does the cluster exist? (`voters.rs`)
    Probe,
    /// From a voter that lost its state, to the leader: make `id` the voter
    /// at `addr` in place of its old id.
    Rejoin {
        addr: SocketAddr,
        id: u64,
    },
}

/// The answer to [`RaftRpc::Probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    /// The answering voter has taken part in the cluster (or knows it exists).
    pub exists: bool,
    /// The answering voter has chosen its id (a blank one that chose the
    /// bootstrap id waits for the cluster to be created).
    pub decided: bool,
    /// Who leads, as it knows.
    pub leader: Option<SocketAddr>,
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    Snapshot(InstallSnapshotResponse<u64>),
    /// The receiver expected another snapshot segment; the sender restarts.
    SnapshotMismatch(SnapshotMismatch),
    /// The receiving Raft node cannot serve (shutting down, or a bad RPC).
    Failed(String),
    Probe(ProbeAnswer),
    /// The leader is replacing the voter's old id (or has done it).
    Rejoining,
}

impl RaftRpc {
    /// The voter that sent it: the leader of an append or a snapshot, the
    /// candidate of a vote.
    pub fn sender(&self) -> Option<u64> {
        match self {
            RaftRpc::Append(r) => r.vote.leader_id().voted_for(),
            RaftRpc::Vote(r) => r.vote.leader_id().voted_for(),
            RaftRpc::Snapshot(r) => r.vote.leader_id().voted_for(),
            RaftRpc::Probe | RaftRpc::Rejoin { .. } => None,
        }
    }
}

/// Decodes one RPC from a peer; the error is the answer.
pub fn decode(bytes: &[u8]) -> Result<RaftMessage, dml_shared::RemoteError> {
    postcard::from_bytes(bytes)
        .map_err(|e| dml_shared::RemoteError::invalid(format!("bad Raft RPC: {e}")))
}

/// Encodes a reply.
pub fn reply(r: &RaftReply) -> Response {
    match postcard::to_allocvec(r) {
        Ok(b) => Response::Raft(b),
        Err(e) => Response::Error(dml_shared::RemoteError::internal(format!(
            "cannot encode Raft reply: {e}"
        ))),
    }
}

/// Serves one openraft RPC from a peer on this voter's Raft node (`me`).
/// `refuse` may turn away an RPC by its sender's id, with the reason.
pub async fn serve(
    raft: &Raft<TypeConfig>,
    me: u64,
    msg: RaftMessage,
    refuse: impl AsyncFnOnce(u64) -> Option<String>,
) -> Response {
    let RaftMessage { to, rpc } = msg;
    if to != me {
        return reply(&RaftReply::Failed(format!(
            "this agent is Raft node {me}, not {to}: it lost its state and rejoined under a new id"
        )));
    }
    let malformed = match &rpc {
        RaftRpc::Append(r) => r
            .entries
            .first()
            .is_some_and(|e| e.log_id.index != r.prev_log_id.map_or(0, |p| p.index + 1))
            .then(|| "an append whose first entry does not follow its prev_log_id".to_string()),
        _ => None,
    };
    let refused = match rpc.sender() {
        Some(sender) => refuse(sender).await,
        None => None,
    };
    if let Some(why) = malformed.or(refused) {
        return reply(&RaftReply::Failed(why));
    }
    let answer = match rpc {
        RaftRpc::Append(r) => match raft.append_entries(r).await {
            Ok(a) => RaftReply::Append(a),
            Err(e) => RaftReply::Failed(e.to_string()),
        },
        RaftRpc::Vote(r) => match raft.vote(r).await {
            Ok(a) => RaftReply::Vote(a),
            Err(e) => RaftReply::Failed(e.to_string()),
        },
        RaftRpc::Snapshot(r) => match raft.install_snapshot(r).await {
            Ok(a) => RaftReply::Snapshot(a),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                RaftReply::SnapshotMismatch(m)
            }
            Err(e) => RaftReply::Failed(e.to_string()),
        },
        RaftRpc::Probe | RaftRpc::Rejoin { .. } => RaftReply::Failed("not an openraft RPC".into()),
    };
    reply(&answer)
}

/// Makes one [`PeerConnection`] per target voter.
pub struct Network {
    pub rpc_timeout: Duration,
    /// First pause before retrying an unreachable peer; it doubles each
    /// retry up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Counts every failed RPC (the agent's `dml_raft_rpc_failures`).
    pub failures: Arc<AtomicU64>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.parse().ok(),
            node_addr: node.addr.clone(),
            client: None,
            rpc_timeout: self.rpc_timeout,
            backoff: (self.min_backoff, self.max_backoff),
            failures: self.failures.clone(),
        }
    }
}

/// The connection to one peer; reconnects after any error.
pub struct PeerConnection {
    target: u64,
    addr: Option<SocketAddr>,
    node_addr: String,
    client: Option<Client>,
    rpc_timeout: Duration,
    /// (first, longest) pause before retrying after `Unreachable`.
    backoff: (Duration, Duration),
    failures: Arc<AtomicU64>,
}

/// What went wrong on the way (before any openraft error type applies).
enum CallError {
    /// Not reached, no answer in time, or the peer refused: back off.
    Unreachable(String),
    Network(dml_shared::Error),
    Failed(String),
}

impl PeerConnection {
    async fn call(&mut self, rpc: RaftRpc, timeout: Duration) -> Result<RaftReply, CallError> {
        let Some(addr) = self.addr else {
            return Err(CallError::Failed(format!(
                "voter address \"{}\" does not parse",
                self.node_addr
            )));
        };
        let msg = RaftMessage {
            to: self.target,
            rpc,
        };
        let bytes = postcard::to_allocvec(&msg).map_err(|e| CallError::Failed(e.to_string()))?;
        let rpc_timeout = self.rpc_timeout;
        let client = self
            .client
            .get_or_insert_with(|| Client::new(addr).with_timeout(rpc_timeout));
        let answer = match tokio::time::timeout(timeout, client.call(&Request::Raft(bytes))).await {
            Ok(a) => a,
            Err(_) => Err(dml_shared::Error::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        };
        match answer {
            Ok(Response::Raft(b)) => match postcard::from_bytes(&b) {
                // Refused (membership holds this voter failed, or its Raft
                // node is stopping): asking again at once cannot help.
                Ok(RaftReply::Failed(m)) => Err(CallError::Unreachable(m)),
                Ok(r) => Ok(r),
                Err(e) => Err(CallError::Failed(format!("bad Raft reply: {e}"))),
            },
            Ok(other) => Err(CallError::Failed(format!("unexpected answer {other:?}"))),
            Err(e @ (dml_shared::Error::Connect { .. } | dml_shared::Error::Timeout { .. })) => {
                self.client = None;
                Err(CallError::Unreachable(e.to_string()))
            }
            Err(e) => {
                self.client = None;
                Err(CallError::Network(e))
            }
        }
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, BasicNode, E> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        match e {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("voter {} ({}): {m}", self.target, self.node_addr)),
            )),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Failed(m) => RPCError::Network(NetworkError::new(&std::io::Error::other(
                format!("voter {} ({}): {m}", self.target, self.node_addr),
            ))),
        }
    }

    fn timeout(&self, option: &RPCOption) -> Duration {
        self.rpc_timeout.min(option.hard_ttl())
    }
}

fn unexpected(what: &str) -> CallError {
    CallError::Failed(format!("answer of the wrong kind to a {what} RPC"))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    fn backoff(&self) -> openraft::network::Backoff {
        let (min, max) = self.backoff;
        openraft::network::Backoff::new(dml_shared::router::backoff(min, max))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let t = self.timeout(&option);
        match self.call(RaftRpc::Append(rpc), t).await {
            Ok(RaftReply::Append(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(unexpected("append"))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let t = self.timeout(&option);
        match self.call(RaftRpc::Snapshot(rpc), t).await {
            Ok(RaftReply::Snapshot(r)) => Ok(r),
            Ok(RaftReply::SnapshotMismatch(m)) => Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
            ))),
            Ok(_) => Err(self.rpc_error(unexpected("snapshot"))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let t = self.timeout(&option);
        match self.call(RaftRpc::Vote(rpc), t).await {
            Ok(RaftReply::Vote(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(unexpected("vote"))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::types::{Command, Op};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    fn round_trip<T: Serialize + for<'a> Deserialize<'a> + std::fmt::Debug>(v: &T) -> String {
        let bytes = postcard::to_allocvec(v).unwrap();
        let back: T = postcard::from_bytes(&bytes).unwrap();
        format!("{back:?}")
    }

    #[test]
    fn raft_rpcs_and_replies_round_trip_through_postcard() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 7), 42);
        let entry = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Normal(Command {
                now_ms: 5,
                op: Op::Delete { name: "x".into() },
            }),
        };
        let rpcs = [
            RaftRpc::Append(AppendEntriesRequest {
                vote: Vote::new_committed(3, 7),
                prev_log_id: Some(log_id),
                entries: vec![entry],
                leader_commit: None,
            }),
            RaftRpc::Vote(VoteRequest::new(Vote::new(4, 9), Some(log_id))),
        ];
        for r in &rpcs {
            assert_eq!(round_trip(r), format!("{r:?}"));
        }
        let replies = [
            RaftReply::Append(AppendEntriesResponse::Success),
            RaftReply::Vote(VoteResponse::new(Vote::new(4, 9), None, true)),
            RaftReply::Failed("stopped".into()),
        ];
        for r in &replies {
            assert_eq!(round_trip(r), format!("{r:?}"));
        }
    }
}
