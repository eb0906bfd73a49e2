//! The leader's read lease (pure): after a quorum acknowledged this leader
//! at `since`, followers refuse to vote for anyone else for
//! `election_timeout_max` after they heard from it (openraft's leader
//! lease), so no other leader can exist before `since` plus that. Reads are
//! served without a quorum round until half of the shorter
//! `election_timeout_min` has passed.

use std::time::{Duration, Instant};

/// The read lease of one leader term.
#[derive(Clone, Debug)]
pub struct ReadLease {
    term: u64,
    /// How long after an acknowledgement the lease lasts.
    span: Duration,
    until: Option<Instant>,
}

impl ReadLease {
    /// The lease of the leader of `term`; `span` is half of
    /// `control.election_timeout_min`.
    pub fn new(term: u64, span: Duration) -> Self {
        Self {
            term,
            span,
            until: None,
        }
    }

    /// A quorum acknowledged the leader of `term` after `since`. An
    /// acknowledgement of another term is not this lease's.
    pub fn extend(&mut self, term: u64, since: Instant) {
        let until = since + self.span;
        if term == self.term && self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// Whether the lease still runs at `now` (the caller checks that this
    /// agent still leads in the term and applied an entry of it).
    pub fn holds(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_latest_acknowledgement_of_its_own_term() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut l = ReadLease::new(3, ms(100));
        assert!(!l.holds(t));
        l.extend(3, t);
        assert!(l.holds(t + ms(99)));
        assert!(!l.holds(t + ms(100)));
        // An older acknowledgement never shortens it; another term's never counts.
        l.extend(3, t + ms(50));
        l.extend(3, t);
        l.extend(4, t + ms(500));
        assert!(l.holds(t + ms(149)));
        assert!(!l.holds(t + ms(150)));
    }
}
