//! Membership datagrams and the updates they piggyback.
//!
//! Probes are kept tiny: members are named by a 32-bit tag (the high half of
//! their ring hash) where the receiver only needs to check identity, and by
//! their full [`NodeId`] where it must learn about them.

use dml_shared::NodeId;
use dml_shared::wire::{self, Kind};
use serde::{Deserialize, Serialize};

/// Short name of a member inside probes.
pub type Tag = u32;

/// The tag of a member.
pub fn tag(id: &NodeId) -> Tag {
    (id.ring_hash() >> 32) as Tag
}

/// The shorter tag a probe carries to name its target: enough for a
/// restarted agent to tell that a probe was meant for its predecessor.
pub fn probe_tag(id: &NodeId) -> u16 {
    (id.ring_hash() >> 48) as u16
}

/// What a piggybacked or pushed update says about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateKind {
    Alive,
    /// Raised by the member with tag `by`; distinct tags confirm each other.
    Suspect {
        by: Tag,
    },
    Failed,
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub id: NodeId,
    pub incarnation: u32,
    pub kind: UpdateKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Direct probe; `target` ([`probe_tag`]) lets a restarted member at the
    /// same address tell it is not the one being probed.
    Ping {
        seq: u16,
        target: u16,
        updates: Vec<Update>,
    },
    /// Answer to a ping, or a relayed answer to a ping request.
    Ack { seq: u16, updates: Vec<Update> },
    /// "Probe `target` for me and answer with `Ack { seq }`".
    PingReq { seq: u16, target: NodeId },
    /// Ask to be added to the group.
    Join { id: NodeId },
    /// Full state, sent back to a joiner.
    JoinReply { members: Vec<Update> },
    /// Full-state exchange; the receiver answers with its own when `reply`.
    Sync { members: Vec<Update>, reply: bool },
    /// Updates that must not wait for a probe: suspicions, failures, leaves.
    Gossip { updates: Vec<Update> },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(Kind::Gossip, self)
    }

    pub fn decode(bytes: &[u8]) -> dml_shared::Result<Self> {
        wire::decode(Kind::Gossip, bytes)
    }
}

/// Encoded size of one update, to fill packets without overflowing them.
pub fn update_len(u: &Update) -> usize {
    postcard::to_stdvec(u).map_or(64, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16) -> NodeId {
        NodeId::new(
            ([127, 0, 0, 1], port).into(),
            1_764_150_000_000 + u64::from(port),
        )
    }

    #[test]
    fn every_message_round_trips() {
        let u = Update {
            id: id(1),
            incarnation: 3,
            kind: UpdateKind::Suspect { by: 9 },
        };
        let msgs = [
            Message::Ping {
                seq: 1,
                target: 2,
                updates: vec![u],
            },
            Message::Ack {
                seq: 65535,
                updates: vec![],
            },
            Message::PingReq {
                seq: 4,
                target: id(2),
            },
            Message::Join { id: id(3) },
            Message::JoinReply { members: vec![u] },
            Message::Sync {
                members: vec![u],
                reply: true,
            },
            Message::Gossip { updates: vec![u] },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn probes_are_small() {
        let ping = Message::Ping {
            seq: 40_000,
            target: u16::MAX,
            updates: vec![],
        };
        assert!(ping.encode().len() <= 12, "{}", ping.encode().len());
        let ack = Message::Ack {
            seq: 40_000,
            updates: vec![],
        };
        assert!(ack.encode().len() <= 10);
    }
}
