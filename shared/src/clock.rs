//! Wall-clock time as the wire and the logs carry it: milliseconds (or
//! microseconds) since the Unix epoch. Cores never read it: drivers do and
//! pass it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_and_micros_agree_and_are_after_2020() {
        let ms = unix_ms();
        let us = unix_micros();
        assert!(ms > 1_577_836_800_000, "clock reads {ms} ms");
        assert!(
            us / 1000 >= ms && us / 1000 - ms < 1000,
            "{us} us vs {ms} ms"
        );
    }
}
