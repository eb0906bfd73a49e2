//! Short text forms of sizes, ages, times and rate histories for the panes.

pub use crate::units::{age_ms, bytes};

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// The last `width` values as block characters scaled to the largest.
pub fn spark(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().fold(0.0_f64, f64::max);
    let mut s: String = " ".repeat(width - tail.len());
    for v in tail {
        if max <= 0.0 {
            s.push(BARS[0]);
        } else {
            let i = ((v / max) * (BARS.len() - 1) as f64).round() as usize;
            s.push(BARS[i.min(BARS.len() - 1)]);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_hours_minutes_seconds() {
        assert_eq!(clock(3_661_000), "01:01:01");
    }

    #[test]
    fn sparkline_scales_to_the_largest_and_pads_on_the_left() {
        assert_eq!(spark(&[0.0, 5.0, 10.0], 4), " ▁▅█");
        assert_eq!(spark(&[1.0; 10], 3), "███");
        assert_eq!(spark(&[], 2), "  ");
        assert_eq!(spark(&[0.0, 0.0], 2), "▁▁");
    }
}
