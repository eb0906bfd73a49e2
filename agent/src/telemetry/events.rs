//! The agent's event log for telemetry: a bounded ring of recent events, fed
//! from membership events, leader changes and [`super::Telemetry::event`].

use crate::membership::Event;
use crate::membership::driver::TimedEvent;
use dml_shared::api::LeaderInfo;
use dml_shared::telemetry::{EventKind, TelemetryEvent};
use std::collections::VecDeque;

/// Events kept for subscribers that fall behind or join late.
pub const RING: usize = 512;
/// Events a resync frame carries.
pub const RESYNC_TAIL: usize = 100;

/// Recent events, oldest first, numbered from 1.
#[derive(Debug, Default)]
pub struct EventRing {
    events: VecDeque<TelemetryEvent>,
    next_seq: u64,
}

impl EventRing {
    pub fn push(&mut self, unix_ms: u64, kind: EventKind, text: String) {
        self.next_seq += 1;
        if self.events.len() == RING {
            self.events.pop_front();
        }
        self.events.push_back(TelemetryEvent {
            seq: self.next_seq,
            unix_ms,
            kind,
            text,
        });
    }

    /// Events newer than `seq`, at most the last [`RESYNC_TAIL`] of them.
    pub fn since(&self, seq: u64) -> Vec<TelemetryEvent> {
        let new = self.events.iter().filter(|e| e.seq > seq).count();
        let skip = self.events.len() - new.min(RESYNC_TAIL);
        self.events.iter().skip(skip).cloned().collect()
    }

    /// The last [`RESYNC_TAIL`] events.
    pub fn tail(&self) -> Vec<TelemetryEvent> {
        self.since(0)
    }

    /// Sequence number of the newest event (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }
}

/// A membership event as a log line.
pub fn from_membership(e: &TimedEvent) -> (EventKind, String) {
    match e.event {
        Event::Joined(id) => (EventKind::Join, format!("{id} joined")),
        Event::Alive(id) => (EventKind::Refuted, format!("{id} refuted its suspicion")),
        Event::Suspect(id) => (EventKind::Suspect, format!("{id} is suspected")),
        Event::Failed(id) => (EventKind::Failure, format!("{id} failed")),
        Event::Left(id) => (EventKind::Leave, format!("{id} left")),
        Event::Reinstated(id) => (
            EventKind::Refuted,
            format!("{id} refuted its failure and is back"),
        ),
        Event::Refuted(id) => (
            EventKind::Refuted,
            format!("{id} was declared failed and refuted it"),
        ),
    }
}

/// The line for a change of leader, or `None` if the leader did not change.
pub fn leader_change(before: Option<&LeaderInfo>, now: &LeaderInfo) -> Option<String> {
    if before.is_some_and(|b| b.leader == now.leader) {
        return None;
    }
    Some(match now.leader {
        Some(l) => format!("leader is {l} (term {})", now.term),
        None => format!("no leader (term {})", now.term),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_returns_only_newer_events_and_caps_the_tail() {
        let mut r = EventRing::default();
        for i in 0..(RING + 10) {
            r.push(i as u64, EventKind::Info, format!("e{i}"));
        }
        assert_eq!(r.last_seq(), (RING + 10) as u64);
        let new = r.since(r.last_seq() - 3);
        assert_eq!(
            new.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![r.last_seq() - 2, r.last_seq() - 1, r.last_seq()]
        );
        assert_eq!(r.tail().len(), RESYNC_TAIL);
        assert_eq!(r.tail().last().unwrap().seq, r.last_seq());
        assert!(r.since(r.last_seq()).is_empty());
    }

    #[test]
    fn a_leader_change_is_reported_once() {
        let info = |leader: Option<&str>, term| LeaderInfo {
            leader: leader.map(|l| l.parse().unwrap()),
            term,
            voters: vec![],
            is_voter: true,
            last_applied: None,
            applied_digest: None,
            unacked_ms: None,
            raft_ids: Vec::new(),
        };
        let a = info(Some("127.0.0.1:8001"), 1);
        assert_eq!(
            leader_change(None, &a).unwrap(),
            "leader is 127.0.0.1:8001 (term 1)"
        );
        assert_eq!(
            leader_change(Some(&a), &info(Some("127.0.0.1:8001"), 1)),
            None
        );
        assert_eq!(
            leader_change(Some(&a), &info(None, 2)).unwrap(),
            "no leader (term 2)"
        );
    }
}
