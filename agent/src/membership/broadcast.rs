//! The piggyback queue: recent updates ride on probes and acks until each has
//! been sent `limit` times (infection-style dissemination).

use super::msg::{Update, update_len};
use dml_shared::NodeId;

#[derive(Debug)]
struct Entry {
    update: Update,
    sent: usize,
    len: usize,
}

#[derive(Debug, Default)]
pub struct Broadcasts {
    entries: Vec<Entry>,
}

impl Broadcasts {
    /// Queues `update`, replacing any older update about the same member.
    pub fn push(&mut self, update: Update) {
        self.entries.retain(|e| e.update.id != update.id);
        self.entries.push(Entry {
            update,
            sent: 0,
            len: update_len(&update),
        });
    }

    /// Keeps only the queued updates `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Update) -> bool) {
        self.entries.retain(|e| keep(&e.update));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the least-sent updates that fit in `budget` bytes, updates about
    /// `first` (the receiver) ahead of all others so it can refute at once.
    /// Each taken update counts one transmission; those sent `limit` times go.
    pub fn take(&mut self, budget: usize, limit: usize, first: Option<&NodeId>) -> Vec<Update> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        self.entries
            .sort_by_key(|e| (Some(&e.update.id) != first, e.sent));
        let mut used = 0;
        let mut out = Vec::new();
        for e in &mut self.entries {
            if used + e.len > budget {
                continue;
            }
            used += e.len;
            e.sent += 1;
            out.push(e.update);
        }
        self.entries.retain(|e| e.sent < limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::msg::UpdateKind;
    use super::*;

    fn up(port: u16) -> Update {
        Update {
            id: NodeId::new(([127, 0, 0, 1], port).into(), 1),
            incarnation: 0,
            kind: UpdateKind::Alive,
        }
    }

    #[test]
    fn updates_retire_after_limit_and_respect_budget() {
        let mut b = Broadcasts::default();
        for p in 0..10 {
            b.push(up(p));
        }
        let one = update_len(&up(0));
        let taken = b.take(one * 3, 2, None);
        assert_eq!(taken.len(), 3);
        // Least-sent first: the next take serves the other seven.
        let next = b.take(one * 7, 2, None);
        assert!(next.iter().all(|u| !taken.contains(u)));
        for _ in 0..4 {
            b.take(one * 100, 2, None);
        }
        assert!(b.is_empty());
    }

    #[test]
    fn updates_about_the_receiver_go_first_and_newer_replace_older() {
        let mut b = Broadcasts::default();
        for p in 0..10 {
            b.push(up(p));
        }
        let target = up(9).id;
        let taken = b.take(update_len(&up(0)), 5, Some(&target));
        assert_eq!(taken, vec![up(9)]);
        let mut newer = up(3);
        newer.incarnation = 4;
        b.push(newer);
        assert_eq!(b.len(), 10);
    }
}
