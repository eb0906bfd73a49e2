//! The agent process's own CPU and memory, read from `/proc/self`.

use std::time::Instant;

/// `/proc` reports CPU times in USER_HZ ticks, fixed at 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) of a process in seconds, from `/proc/<pid>/stat` text.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15).
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Resident memory in bytes, from `/proc/<pid>/status` text (`VmRSS:  1234 kB`).
pub fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Turns successive CPU-time readings into a percentage of one core.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(Instant, f64)>,
}

impl CpuSampler {
    /// CPU use since the previous reading, percent of one core; `None` on the
    /// first reading or when `/proc` cannot be read.
    pub fn sample(&mut self, now: Instant) -> Option<f32> {
        let cpu = cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        self.record(now, cpu)
    }

    /// [`CpuSampler::sample`] with the reading given.
    pub fn record(&mut self, now: Instant, cpu_s: f64) -> Option<f32> {
        let prev = self.last.replace((now, cpu_s));
        let (then, before) = prev?;
        let wall = now.duration_since(then).as_secs_f64();
        (wall > 0.0).then(|| ((cpu_s - before).max(0.0) / wall * 100.0) as f32)
    }
}

/// The agent's resident memory, or 0 when `/proc` cannot be read.
pub fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| rss_bytes(&s))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        let stat = "42 (dml agent) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_kilobytes() {
        let status = "Name:\tdml-agent\nVmRSS:\t  2048 kB\nThreads: 4\n";
        assert_eq!(rss_bytes(status), Some(2048 * 1024));
        assert_eq!(rss_bytes("Name: x"), None);
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let mut s = CpuSampler::default();
        let t0 = Instant::now();
        assert_eq!(s.record(t0, 10.0), None);
        let p = s.record(t0 + Duration::from_secs(2), 10.5).unwrap();
        assert!((p - 25.0).abs() < 0.01, "{p}");
    }

    #[test]
    fn this_process_has_a_cpu_time_and_memory() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_seconds(&stat).is_some());
        assert!(own_rss() > 0);
    }
}
