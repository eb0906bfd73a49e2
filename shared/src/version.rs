//! One committed version of an SDFS file, as SDFS answers and inference
//! leases both name it. A leaf module: SDFS's and inference's wire types
//! both build on it, so neither needs the other.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// BLAKE3 digest of a whole version's bytes.
pub type Checksum = [u8; 32];

/// One committed version of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// 1, 2, 3, ... in commit order.
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    /// Agents holding a verified copy.
    pub replicas: Vec<SocketAddr>,
    /// When the leader committed it (Unix ms).
    pub committed_ms: u64,
}
