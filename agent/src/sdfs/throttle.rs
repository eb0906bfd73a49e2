//! A token bucket that paces repair and scrub traffic to
//! `sdfs.repair_bytes_per_sec`, so foreground reads and writes keep flowing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second with a burst of one second's worth.
pub struct Throttle {
    rate: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            state: Mutex::new(Bucket {
                tokens: rate,
                last: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes at `now` and says how long to wait before using them.
    /// Tokens may go negative: later callers then wait for the debt too.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.rate);
        b.last = b.last.max(now);
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.rate)
        }
    }

    /// Waits until `n` bytes may go (async side).
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until `n` bytes may go (blocking threads).
    pub fn take_blocking(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces_to_the_rate() {
        let t = Throttle::new(1000);
        let t0 = Instant::now();
        assert_eq!(t.reserve(1000, t0), Duration::ZERO);
        assert_eq!(t.reserve(500, t0), Duration::from_millis(500));
        // Another 500 queues behind the debt.
        assert_eq!(t.reserve(500, t0), Duration::from_secs(1));
        // After 2 s the debt is paid and nothing more is banked beyond a burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.reserve(1000, later), Duration::ZERO);
        assert!(t.reserve(1, later) > Duration::ZERO);
    }
}
