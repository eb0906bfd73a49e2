//! The standard `process_*` series of this agent, read from `/proc/self`
//! through `procfs` at each scrape (the same figures, names and units as
//! the other Prometheus client libraries export).

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when encoded; a figure `/proc` cannot give is left out.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// The figures, read once per scrape.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn read() -> Figures {
    let Ok(me) = Process::myself() else {
        return Figures::default();
    };
    let ticks = procfs::ticks_per_second() as f64;
    let stat = me.stat().ok();
    Figures {
        cpu_seconds: stat.as_ref().map(|s| (s.utime + s.stime) as f64 / ticks),
        resident_bytes: stat.as_ref().map(|s| s.rss * procfs::page_size()),
        virtual_bytes: stat.as_ref().map(|s| s.vsize),
        start_time_seconds: stat.as_ref().and_then(|s| {
            let boot = procfs::boot_time_secs().ok()?;
            Some(boot as f64 + s.starttime as f64 / ticks)
        }),
        open_fds: me.fd_count().ok().map(|n| n as u64),
        max_fds: me
            .limits()
            .ok()
            .and_then(|l| match l.max_open_files.soft_limit {
                LimitValue::Value(v) => Some(v),
                LimitValue::Unlimited => None,
            }),
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = read();
        if let Some(v) = f.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(v) = f.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                g.metric_type(),
            )?)?;
        }
        let sizes: [(&str, &str, Option<u64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                f.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                f.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                f.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                f.max_fds,
            ),
        ];
        for (name, help, v) in sizes {
            if let Some(v) = v {
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn this_process_has_cpu_memory_fds_and_a_start_time_in_the_past() {
        let f = read();
        assert!(f.cpu_seconds.is_some_and(|v| v >= 0.0), "{f:?}");
        assert!(f.resident_bytes.is_some_and(|v| v > 0), "{f:?}");
        assert!(
            f.virtual_bytes
                .is_some_and(|v| v >= f.resident_bytes.unwrap()),
            "{f:?}"
        );
        // stdin, stdout, stderr at least.
        assert!(f.open_fds.is_some_and(|v| v >= 3), "{f:?}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = f.start_time_seconds.unwrap();
        // Boot time is in whole seconds, so the start may read up to 1 s late.
        assert!(
            start > now - 24.0 * 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn the_standard_process_families_are_encoded_with_their_types() {
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        for line in [
            "# TYPE process_cpu_seconds_total counter\n",
            "# TYPE process_start_time_seconds gauge\n",
            "# TYPE process_resident_memory_bytes gauge\n",
            "# TYPE process_virtual_memory_bytes gauge\n",
            "# TYPE process_open_fds gauge\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        let fds = text
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .unwrap_or_else(|| panic!("no process_open_fds in\n{text}"));
        assert!(fds.parse::<u64>().is_ok_and(|n| n >= 3), "{fds}");
    }
}
