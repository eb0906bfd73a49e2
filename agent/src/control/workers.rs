//! Which inference workers can run queries (pure, takes `now`): those that asked for work
//! lately, and those that reported they cannot (ONNX Runtime did not load). A running job
//! with none of the first says why it makes no progress: the second's reason, or, once the
//! leader has led long enough to have heard from its workers, that none asked at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A worker that asked for work within this span is ready. Workers ask at least every
/// lease wait (2 s), so a few seconds would do; the margin covers a busy leader.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// An unready report holds this long; workers repeat it every `RUNTIME_RETRY` (30 s).
const UNREADY_WITHIN: Duration = Duration::from_secs(75);
/// A leader claims no worker asked only after leading this long: an idle worker asks
/// every lease wait (at most `MAX_LEASE_WAIT`, 5 s) and finds a new leader within a
/// heartbeat or two, so this is three times that.
const SETTLE: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Workers {
    /// When this view started (the leader's term began): nothing was heard before.
    since: Instant,
    asked: HashMap<SocketAddr, Instant>,
    unready: HashMap<SocketAddr, (String, Instant)>,
}

impl Workers {
    /// An empty view, started at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            asked: HashMap::new(),
            unready: HashMap::new(),
        }
    }

    /// `worker` asked for work (or handed a query back): it can run queries.
    pub fn asked(&mut self, worker: SocketAddr, now: Instant) {
        self.unready.remove(&worker);
        self.asked.insert(worker, now);
    }

    /// `worker` cannot run queries, because of `reason`.
    pub fn unready(&mut self, worker: SocketAddr, reason: String, now: Instant) {
        self.asked.remove(&worker);
        self.unready.insert(worker, (reason, now));
    }

    /// Why no worker can run a query of `model`, if none can and either some said why or
    /// none was heard from since the view settled.
    pub fn stall(&self, model: &str, now: Instant) -> Option<String> {
        let within = |t: &Instant, span| now.saturating_duration_since(*t) < span;
        if self.asked.values().any(|t| within(t, READY_WITHIN)) {
            return None;
        }
        let mut unready: Vec<(&SocketAddr, &String)> = self
            .unready
            .iter()
            .filter(|(_, (_, t))| within(t, UNREADY_WITHIN))
            .map(|(w, (r, _))| (w, r))
            .collect();
        unready.sort();
        if let Some((first, reason)) = unready.first() {
            let n = unready.len();
            return Some(format!(
                "no worker can run {model}: ONNX Runtime is not loaded on {n} of {n} workers \
                 ({first}: {reason})"
            ));
        }
        let led = now.saturating_duration_since(self.since);
        if led < SETTLE {
            return None;
        }
        let secs = led.min(READY_WITHIN).as_secs();
        Some(format!(
            "no worker can run {model}: no worker has asked for work in the last {secs} s \
             (is inference.worker off on every agent?)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_job_stalls_only_while_every_reporting_worker_is_unready() {
        let t = Instant::now();
        let mut w = Workers::new(t);
        assert_eq!(w.stall("tiny", t), None, "nobody said anything");
        w.unready(addr(2), "no library".into(), t);
        w.unready(addr(1), "no library".into(), t);
        let s = w.stall("tiny", t).expect("stalled");
        assert!(
            s.contains("no worker can run tiny") && s.contains("2 of 2 workers"),
            "{s}"
        );
        assert!(s.contains("127.0.0.1:1: no library"), "{s}");
        // One worker loads it and asks for work: no stall.
        w.asked(addr(1), t);
        assert_eq!(w.stall("tiny", t), None);
        // It stops asking; worker 2's report still holds.
        let s = w.stall("tiny", t + READY_WITHIN).expect("stalled");
        assert!(s.contains("1 of 1 workers"), "{s}");
        // The reports age out too: nobody was heard from lately.
        let s = w.stall("tiny", t + UNREADY_WITHIN).expect("stalled");
        assert!(
            s.contains("no worker has asked for work in the last 30 s"),
            "{s}"
        );
    }

    #[test]
    fn a_leader_that_hears_from_no_worker_says_so_once_settled() {
        let t = Instant::now();
        let w = Workers::new(t);
        assert_eq!(w.stall("tiny", t), None, "a fresh leader claims nothing");
        assert_eq!(w.stall("tiny", t + SETTLE - Duration::from_millis(1)), None);
        let s = w.stall("tiny", t + SETTLE).expect("stalled once settled");
        assert_eq!(
            s,
            "no worker can run tiny: no worker has asked for work in the last 15 s \
             (is inference.worker off on every agent?)"
        );
        // The span said never exceeds what makes a worker ready.
        let s = w.stall("tiny", t + Duration::from_secs(600)).unwrap();
        assert!(s.contains("in the last 30 s"), "{s}");
    }

    #[test]
    fn a_fresh_leader_makes_no_claim_before_its_workers_found_it() {
        // A leader elected at `t`: its workers asked the previous one, not it.
        let t = Instant::now();
        let mut w = Workers::new(t);
        for s in [0, 1, 5, 14] {
            assert_eq!(
                w.stall("tiny", t + Duration::from_secs(s)),
                None,
                "{s} s in"
            );
        }
        // A worker finds it in time: no claim then or later while it keeps asking.
        w.asked(addr(1), t + Duration::from_secs(4));
        assert_eq!(w.stall("tiny", t + SETTLE), None);
        assert_eq!(w.stall("tiny", t + Duration::from_secs(33)), None);
        assert!(w.stall("tiny", t + Duration::from_secs(34)).is_some());
    }
}
