//! Lifeguard-style suspicion: the timeout shrinks from `max` towards `min` as
//! independent monitors confirm the suspicion.

use std::time::Duration;

/// Suspicion timeout after `confirmations` independent confirmations, out of
/// `expected` possible ones (the suspect's other monitors).
pub fn timeout(min: Duration, max: Duration, confirmations: usize, expected: usize) -> Duration {
    if expected == 0 {
        return max;
    }
    let c = confirmations.min(expected) as f64;
    let frac = (c + 1.0).ln() / (expected as f64 + 1.0).ln();
    let span = max.saturating_sub(min).as_secs_f64();
    min + Duration::from_secs_f64(span * (1.0 - frac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_from_max_to_min_with_confirmations() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(timeout(min, max, 0, 2), max);
        let one = timeout(min, max, 1, 2);
        assert!(one < max && one > min, "{one:?}");
        assert_eq!(timeout(min, max, 2, 2), min);
        assert_eq!(timeout(min, max, 5, 2), min);
        assert_eq!(timeout(min, max, 0, 0), max);
    }
}
