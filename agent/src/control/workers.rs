//! Which inference workers can run queries (pure, takes `now`): those that asked for work
//! lately, and those that reported they cannot (ONNX Runtime did not load). A running job
//! with none of the first and some of the second says why it makes no progress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A worker that asked for work within this span is ready. Workers ask at least every
/// lease wait (2 s), so a few seconds would do; the margin covers a busy leader.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// An unready report holds this long; workers repeat it every `RUNTIME_RETRY` (30 s).
const UNREADY_WITHIN: Duration = Duration::from_secs(75);

#[derive(Debug, Default)]
pub struct Workers {
    asked: HashMap<SocketAddr, Instant>,
    unready: HashMap<SocketAddr, (String, Instant)>,
}

impl Workers {
    /// `worker` asked for work: it can run queries.
    pub fn asked(&mut self, worker: SocketAddr, now: Instant) {
        self.unready.remove(&worker);
        self.asked.insert(worker, now);
    }

    /// `worker` cannot run queries, because of `reason`.
    pub fn unready(&mut self, worker: SocketAddr, reason: String, now: Instant) {
        self.asked.remove(&worker);
        self.unready.insert(worker, (reason, now));
    }

    /// Why no worker can run a query of `model`, if none can and some said why.
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
        let (first, reason) = unready.first()?;
        let n = unready.len();
        Some(format!(
            "no worker can run {model}: ONNX Runtime is not loaded on {n} of {n} workers \
             ({first}: {reason})"
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
        let mut w = Workers::default();
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
        // It stops asking; reports age out too.
        assert!(w.stall("tiny", t + READY_WITHIN).is_some());
        assert_eq!(w.stall("tiny", t + UNREADY_WITHIN), None);
    }
}
