//! Control-plane requests: everything the Raft leader serves, SDFS metadata
//! and inference alike. Every [`ControlRequest`] is served at the leader;
//! any agent accepts one and relays it there (`Request::Control`).

use crate::infer::{InferRequest, InferResponse};
use crate::keyring::{KeyringAnswer, KeyringCommand};
use crate::sdfs::{MetaRequest, MetaResponse};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// SDFS metadata (see [`crate::sdfs`]).
    Sdfs(MetaRequest),
    /// Inference jobs, figures and the worker protocol (see [`crate::infer`]).
    Infer(InferRequest),
    /// The cluster's keyring (see [`crate::keyring`]).
    Keyring(KeyringCommand),
}

impl ControlRequest {
    /// Whether repeating the request after an unknown outcome is harmless.
    pub fn is_idempotent(&self) -> bool {
        match self {
            ControlRequest::Sdfs(r) => r.is_idempotent(),
            ControlRequest::Infer(r) => r.is_idempotent(),
            ControlRequest::Keyring(r) => r.is_idempotent(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Sdfs(MetaResponse),
    Infer(InferResponse),
    Keyring(KeyringAnswer),
}

impl From<MetaRequest> for ControlRequest {
    fn from(r: MetaRequest) -> Self {
        ControlRequest::Sdfs(r)
    }
}

impl From<InferRequest> for ControlRequest {
    fn from(r: InferRequest) -> Self {
        ControlRequest::Infer(r)
    }
}

impl From<MetaResponse> for ControlResponse {
    fn from(r: MetaResponse) -> Self {
        ControlResponse::Sdfs(r)
    }
}

impl From<InferResponse> for ControlResponse {
    fn from(r: InferResponse) -> Self {
        ControlResponse::Infer(r)
    }
}
