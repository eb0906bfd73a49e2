//! Failure-detector counters, and traffic rates over a sliding window.

use crate::timing::MEMBERSHIP_RATE_WINDOW as RATE_WINDOW;
use crate::timing::MEMBERSHIP_SAMPLE_EVERY as SAMPLE_EVERY;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    pub probes_sent: u64,
    pub suspicions: u64,
    pub refuted: u64,
    pub declared_failed: u64,
    pub false_failures: u64,
    pub bad_packets: u64,
    /// Members held as failed that refuted it and were taken back, same identity.
    pub reinstated: u64,
}

#[derive(Debug, Default)]
pub struct Traffic {
    pub counters: Counters,
    samples: VecDeque<(Instant, Counters)>,
}

/// Per-second rates: bytes sent, bytes received, packets sent, packets received.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub bytes_sent: f64,
    pub bytes_recv: f64,
    pub packets_sent: f64,
    pub packets_recv: f64,
}

impl Traffic {
    pub fn sent(&mut self, bytes: usize) {
        self.counters.bytes_sent += bytes as u64;
        self.counters.packets_sent += 1;
    }

    pub fn received(&mut self, bytes: usize) {
        self.counters.bytes_recv += bytes as u64;
        self.counters.packets_recv += 1;
    }

    /// Records a sample if the last one is old enough; drops samples out of the window.
    pub fn sample(&mut self, now: Instant) {
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.duration_since(*t) < SAMPLE_EVERY)
        {
            return;
        }
        self.samples.push_back((now, self.counters));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    pub fn next_sample(&self) -> Option<Instant> {
        self.samples.back().map(|(t, _)| *t + SAMPLE_EVERY)
    }

    pub fn rates(&self, now: Instant) -> Rates {
        let Some((t0, c0)) = self.samples.front() else {
            return Rates::default();
        };
        let secs = now.duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let c = &self.counters;
        let per = |a: u64, b: u64| (a - b) as f64 / secs;
        Rates {
            bytes_sent: per(c.bytes_sent, c0.bytes_sent),
            bytes_recv: per(c.bytes_recv, c0.bytes_recv),
            packets_sent: per(c.packets_sent, c0.packets_sent),
            packets_recv: per(c.packets_recv, c0.packets_recv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_follow_the_window() {
        let t = Instant::now();
        let mut tr = Traffic::default();
        tr.sample(t);
        for _ in 0..10 {
            tr.sent(100);
        }
        let r = tr.rates(t + Duration::from_secs(2));
        assert!((r.bytes_sent - 500.0).abs() < 1e-6, "{r:?}");
        assert!((r.packets_sent - 5.0).abs() < 1e-6);
    }
}
