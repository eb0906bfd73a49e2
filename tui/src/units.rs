//! The one place sizes, rates and durations become text, so every command,
//! table and pane writes them alike: binary units with one decimal under 10
//! (`1.5 KiB`, `64 MiB`, `1.0 GiB`), and durations from milliseconds to
//! hours (`340ms`, `9.2s`, `2m05s`, `3h04m`).
//!
//! Written here rather than with indicatif's `HumanBytes`/`HumanDuration` or
//! humantime: those print `64.00 MiB` and `2 minutes` or `2m 5s 340ms`,
//! longer than a table column or a console pane has room for.

use std::time::Duration;

const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];

fn scaled(v: f64, suffix: &str) -> String {
    if v < 1024.0 {
        return format!("{v:.0} B{suffix}");
    }
    let mut v = v / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    // 9.96 would print as "10.0": decide on the rounded value.
    if (v * 10.0).round() < 100.0 {
        format!("{v:.1} {}{suffix}", UNITS[u])
    } else {
        format!("{v:.0} {}{suffix}", UNITS[u])
    }
}

/// `300 B`, `1.5 KiB`, `64 MiB`, `512 MiB`, `1.0 GiB`.
pub fn bytes(n: u64) -> String {
    scaled(n as f64, "")
}

/// `830 B/s`, `1.5 KiB/s`, `112 MiB/s`.
pub fn rate(bytes_per_s: f64) -> String {
    scaled(bytes_per_s.max(0.0), "/s")
}

/// `340ms`, `9.2s`, `45s`, `2m05s`, `3h04m`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// [`duration`] of a count of milliseconds (ages, timeouts).
pub fn age_ms(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_durations_read_the_same_everywhere() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes((10 << 20) - 1), "10 MiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(rate(830.0), "830 B/s");
        assert_eq!(rate(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
        assert_eq!(age_ms(340), "340ms");
        assert_eq!(age_ms(9_237), "9.2s");
        assert_eq!(age_ms(96_300), "1m36s");
        assert_eq!(age_ms(45_000), "45s");
        assert_eq!(age_ms(11_040_000), "3h04m");
    }
}
