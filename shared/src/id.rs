//! Node identity: the address an agent listens on plus the time it (re)joined.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A member's identity. The same address with a newer `started` is a new member:
/// a restarted or re-joined agent never inherits the state of its predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// UDP and TCP address (same port number for both).
    pub addr: SocketAddr,
    /// Start time in milliseconds since the Unix epoch, bumped on every (re)join.
    pub started: u64,
}

impl NodeId {
    pub fn new(addr: SocketAddr, started: u64) -> Self {
        Self { addr, started }
    }

    /// Position on the hash ring: FNV-1a over the address and generation, so
    /// every agent computes the same ring without coordination.
    pub fn ring_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        match self.addr.ip() {
            std::net::IpAddr::V4(ip) => eat(&ip.octets()),
            std::net::IpAddr::V6(ip) => eat(&ip.octets()),
        }
        eat(&self.addr.port().to_le_bytes());
        eat(&self.started.to_le_bytes());
        // Final avalanche so neighbouring ports spread over the ring.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.started)
    }
}

impl FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, started) = s
            .split_once('#')
            .ok_or_else(|| format!("node id \"{s}\" is not of the form ADDR#STARTED"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("node id \"{s}\": \"{addr}\" is not an address"))?;
        let started = started
            .parse()
            .map_err(|_| format!("node id \"{s}\": \"{started}\" is not a number"))?;
        Ok(Self { addr, started })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = NodeId::new("127.0.0.1:8001".parse().unwrap(), 1_700_000_000_123);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!("127.0.0.1:8001".parse::<NodeId>().is_err());
    }

    #[test]
    fn ring_hash_depends_on_generation() {
        let a = NodeId::new("127.0.0.1:8001".parse().unwrap(), 1);
        let b = NodeId::new("127.0.0.1:8001".parse().unwrap(), 2);
        assert_ne!(a.ring_hash(), b.ring_hash());
        assert_eq!(a.ring_hash(), a.ring_hash());
    }
}
