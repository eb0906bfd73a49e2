//! Short text forms of sizes, ages, times and rate histories for the panes.

/// `1.5 GiB`, `12 KiB`, `300 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// `0.4s`, `12s`, `3m`, `2h`.
pub fn age_ms(ms: u64) -> String {
    match ms {
        0..10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{}s", ms / 1000),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

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
    fn sizes_and_ages_read_naturally() {
        assert_eq!(bytes(300), "300 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(age_ms(400), "0.4s");
        assert_eq!(age_ms(45_000), "45s");
        assert_eq!(age_ms(600_000), "10m");
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
