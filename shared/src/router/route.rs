//! The decisions for one request on its way to the leader: where the next
//! attempt goes, how long to wait before it, and when to give up. A plain
//! state machine: it is told what became of each attempt and the time, and
//! never reads a clock or a socket itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Redirects followed in a row before waiting (a loop of stale hints).
pub const MAX_REDIRECTS: usize = 8;

/// Where one attempt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Straight to this agent as the leader, sent `leader_only`: only the
    /// leader serves it, anyone else answers `NotLeader`.
    Leader(SocketAddr),
    /// Through the entry agent, which forwards it to the leader itself.
    Entry(SocketAddr),
    /// Find out who leads first (a router without an entry agent).
    Find,
}

/// What became of an attempt that neither answered nor refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent is not the leader; it named the one it believes in, if any.
    NotLeader(Option<SocketAddr>),
    /// Never delivered: the connection could not be opened.
    Unreachable,
    /// Maybe delivered, but the answer was lost (a timeout, a broken connection).
    Lost,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Go at once.
    Go(Hop),
    /// Pause for this long, then go.
    Wait(Duration, Hop),
    /// Stop and report the last error.
    GiveUp,
}

/// One request's route. Rules:
/// - a named leader is followed at once, up to [`MAX_REDIRECTS`] in a row;
/// - when nobody names a leader, or an attempt went unanswered, the request
///   starts over (through the entry agent, or by finding the leader) after
///   the next backoff pause;
/// - a request that is not idempotent is never sent again once it may have
///   been delivered;
/// - an entry agent that cannot be reached ends the request at once (the
///   caller asked that very agent);
/// - nothing starts after the deadline; a pause never runs past it.
pub struct Route<B> {
    entry: Option<SocketAddr>,
    idempotent: bool,
    deadline: Instant,
    backoff: B,
    redirects: usize,
}

impl<B: Iterator<Item = Duration>> Route<B> {
    /// `backoff` yields the pauses between attempts.
    pub fn new(entry: Option<SocketAddr>, idempotent: bool, deadline: Instant, backoff: B) -> Self {
        Self {
            entry,
            idempotent,
            deadline,
            backoff,
            redirects: 0,
        }
    }

    /// The first attempt: the leader last seen, else the entry agent, else
    /// finding the leader.
    pub fn first(&self, known_leader: Option<SocketAddr>) -> Hop {
        match known_leader {
            Some(l) => Hop::Leader(l),
            None => self.restart(),
        }
    }

    /// After `hop` ended in `outcome` at `now`.
    pub fn handle_outcome(&mut self, hop: Hop, outcome: Outcome, now: Instant) -> Step {
        let at = match hop {
            Hop::Leader(a) | Hop::Entry(a) => Some(a),
            Hop::Find => None,
        };
        match outcome {
            Outcome::NotLeader(Some(hint))
                if Some(hint) != at && self.redirects < MAX_REDIRECTS =>
            {
                self.redirects += 1;
                self.go(Hop::Leader(hint), now)
            }
            Outcome::NotLeader(_) => self.pause(now),
            Outcome::Unreachable => match hop {
                Hop::Entry(_) => Step::GiveUp,
                // The entry agent is another way in; without one, wait.
                _ if self.entry.is_some() => self.go(self.restart(), now),
                _ => self.pause(now),
            },
            Outcome::Lost if !self.idempotent => Step::GiveUp,
            Outcome::Lost => match hop {
                Hop::Leader(_) if self.entry.is_some() => self.go(self.restart(), now),
                _ => self.pause(now),
            },
        }
    }

    /// After finding the leader (`None`: nobody knows one yet) at `now`.
    pub fn handle_found(&mut self, leader: Option<SocketAddr>, now: Instant) -> Step {
        match leader {
            Some(l) => self.go(Hop::Leader(l), now),
            None => self.pause(now),
        }
    }

    fn restart(&self) -> Hop {
        self.entry.map_or(Hop::Find, Hop::Entry)
    }

    fn go(&self, hop: Hop, now: Instant) -> Step {
        if now >= self.deadline {
            Step::GiveUp
        } else {
            Step::Go(hop)
        }
    }

    /// The next backoff pause, cut at the deadline, then a fresh start.
    fn pause(&mut self, now: Instant) -> Step {
        self.redirects = 0;
        let left = self.deadline.saturating_duration_since(now);
        match self.backoff.next() {
            Some(d) if !left.is_zero() => Step::Wait(d.min(left), self.restart()),
            _ => Step::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_millis(100);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn route(
        entry: Option<SocketAddr>,
        idempotent: bool,
        now: Instant,
    ) -> Route<impl Iterator<Item = Duration>> {
        Route::new(
            entry,
            idempotent,
            now + Duration::from_secs(1),
            std::iter::repeat(PAUSE),
        )
    }

    #[test]
    fn the_leader_last_seen_is_asked_first_then_the_entry_agent() {
        let now = Instant::now();
        let r = route(Some(addr(1)), true, now);
        assert_eq!(r.first(Some(addr(9))), Hop::Leader(addr(9)));
        assert_eq!(r.first(None), Hop::Entry(addr(1)));
        assert_eq!(route(None, true, now).first(None), Hop::Find);
    }

    #[test]
    fn a_named_leader_is_followed_at_once_and_a_redirect_loop_ends_in_a_pause() {
        let now = Instant::now();
        let mut r = route(Some(addr(1)), false, now);
        let mut hop = Hop::Entry(addr(1));
        for i in 0..MAX_REDIRECTS as u16 {
            let hint = addr(10 + i % 2);
            let step = r.handle_outcome(hop, Outcome::NotLeader(Some(hint)), now);
            assert_eq!(step, Step::Go(Hop::Leader(hint)));
            hop = Hop::Leader(hint);
        }
        let step = r.handle_outcome(hop, Outcome::NotLeader(Some(addr(10))), now);
        assert_eq!(step, Step::Wait(PAUSE, Hop::Entry(addr(1))));
        // The pause starts the count again.
        let step = r.handle_outcome(hop, Outcome::NotLeader(Some(addr(10))), now);
        assert_eq!(step, Step::Go(Hop::Leader(addr(10))));
    }

    #[test]
    fn an_agent_naming_itself_or_nobody_means_waiting_for_an_election() {
        let now = Instant::now();
        let mut r = route(Some(addr(1)), true, now);
        let step = r.handle_outcome(Hop::Entry(addr(1)), Outcome::NotLeader(Some(addr(1))), now);
        assert_eq!(step, Step::Wait(PAUSE, Hop::Entry(addr(1))));
        let step = r.handle_outcome(Hop::Leader(addr(2)), Outcome::NotLeader(None), now);
        assert_eq!(step, Step::Wait(PAUSE, Hop::Entry(addr(1))));
    }

    #[test]
    fn an_unreachable_entry_agent_is_reported_at_once_and_a_dead_leader_is_gone_around() {
        let now = Instant::now();
        let mut r = route(Some(addr(1)), false, now);
        assert_eq!(
            r.handle_outcome(Hop::Entry(addr(1)), Outcome::Unreachable, now),
            Step::GiveUp
        );
        assert_eq!(
            r.handle_outcome(Hop::Leader(addr(2)), Outcome::Unreachable, now),
            Step::Go(Hop::Entry(addr(1)))
        );
        let mut r = route(None, false, now);
        assert_eq!(
            r.handle_outcome(Hop::Leader(addr(2)), Outcome::Unreachable, now),
            Step::Wait(PAUSE, Hop::Find)
        );
    }

    #[test]
    fn a_lost_answer_is_asked_again_only_for_an_idempotent_request() {
        let now = Instant::now();
        let mut once = route(Some(addr(1)), false, now);
        assert_eq!(
            once.handle_outcome(Hop::Leader(addr(2)), Outcome::Lost, now),
            Step::GiveUp
        );
        assert_eq!(
            once.handle_outcome(Hop::Entry(addr(1)), Outcome::Lost, now),
            Step::GiveUp
        );
        let mut again = route(Some(addr(1)), true, now);
        assert_eq!(
            again.handle_outcome(Hop::Leader(addr(2)), Outcome::Lost, now),
            Step::Go(Hop::Entry(addr(1)))
        );
        assert_eq!(
            again.handle_outcome(Hop::Entry(addr(1)), Outcome::Lost, now),
            Step::Wait(PAUSE, Hop::Entry(addr(1)))
        );
    }

    #[test]
    fn a_found_leader_is_asked_and_none_found_means_a_pause() {
        let now = Instant::now();
        let mut r = route(None, true, now);
        assert_eq!(
            r.handle_found(Some(addr(3)), now),
            Step::Go(Hop::Leader(addr(3)))
        );
        assert_eq!(r.handle_found(None, now), Step::Wait(PAUSE, Hop::Find));
    }

    #[test]
    fn nothing_starts_after_the_deadline_and_no_pause_runs_past_it() {
        let now = Instant::now();
        let mut r = route(Some(addr(1)), true, now);
        let almost = now + Duration::from_secs(1) - Duration::from_millis(30);
        assert_eq!(
            r.handle_outcome(Hop::Entry(addr(1)), Outcome::Lost, almost),
            Step::Wait(Duration::from_millis(30), Hop::Entry(addr(1)))
        );
        let late = now + Duration::from_secs(1);
        assert_eq!(
            r.handle_outcome(Hop::Entry(addr(1)), Outcome::Lost, late),
            Step::GiveUp
        );
        assert_eq!(
            r.handle_outcome(
                Hop::Leader(addr(2)),
                Outcome::NotLeader(Some(addr(3))),
                late
            ),
            Step::GiveUp
        );
        assert_eq!(r.handle_found(Some(addr(3)), late), Step::GiveUp);
    }
}
