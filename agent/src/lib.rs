//! `dml-agent`: the AwesomeDML daemon.
//!
//! - [`membership`]: the failure detector (sans-IO core and its UDP driver).
//! - [`api`]: the TCP request/response server on the same port number.
//! - [`control`]: the replicated control plane (Raft) and its state machine.
//! - [`sdfs`]: the file store on this agent and its data path.
//! - [`infer`]: ONNX Runtime sessions and image preprocessing (the worker's tools).
//! - [`latency`]: C2's query time histograms (queue and compute), kept by workers, merged by the leader.
//! - [`telemetry`]: the frames streamed to console subscribers, and the event log.
//! - [`agent`]: wiring: binds sockets, starts the services, stops them in order.
//! - [`event_log`]: membership events as JSON lines.
//! - [`keyring`]: `dml keyring`: the agent's keyring file and its sync with the leader.
//! - [`identity`]: this agent's identity, newer at each restart whatever the clock does.
//! - [`log_line`]: the log's one-line writer, and its newest lines for `dml logs`.
//! - [`metrics`]: the Prometheus endpoint (`GET /metrics`).
//! - [`timing`]: the internal timing constants, named in one place.
//! - [`failstop`]: the agent exits when its Raft store fails (a full disk), for a supervisor
//!   to restart it.

pub mod agent;
pub mod api;
pub mod control;
pub mod event_log;
pub mod failstop;
pub mod identity;
pub mod infer;
pub mod keyring;
pub mod latency;
pub mod log_line;
pub mod membership;
pub mod metrics;
pub mod sdfs;
pub mod telemetry;
pub mod timing;

/// Installs the fixed cluster key of the in-process tests and returns it.
#[cfg(test)]
pub(crate) fn test_key() -> &'static dml_shared::auth::AuthContext {
    use dml_shared::auth;
    auth::install(auth::ClusterKey::from_bytes([9; auth::KEY_LEN])).expect("one test key");
    auth::installed().expect("installed above")
}
