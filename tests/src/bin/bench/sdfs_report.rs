//! The `bench sdfs` table and JSON document.

use serde::Serialize;
use std::fmt::Write as _;

/// Targets from issue 3.
pub const TARGET_PUT_RATIO: f64 = 2.0;
pub const TARGET_GET_RATIO: f64 = 1.5;
pub const TARGET_PEAK_MIB: f64 = 200.0;

/// Medians for one file size.
#[derive(Debug, Serialize)]
pub struct SizeReport {
    pub size_bytes: u64,
    pub reps: usize,
    pub put_s: f64,
    pub put_mib_s: f64,
    /// The same bytes written to 4 local files, each fsynced.
    pub baseline_put_s: f64,
    pub put_ratio: f64,
    pub get_s: f64,
    pub get_mib_s: f64,
    /// One local copy read back.
    pub baseline_read_s: f64,
    pub get_ratio: f64,
    /// A get that also fsyncs the fetched copy (`Options::sync_local`).
    pub get_synced_s: f64,
    pub get_synced_ratio: f64,
}

impl SizeReport {
    pub fn new(
        size: u64,
        reps: usize,
        put: f64,
        base_put: f64,
        get: f64,
        read: f64,
        get_synced: f64,
    ) -> Self {
        let mib = size as f64 / (1u64 << 20) as f64;
        Self {
            size_bytes: size,
            reps,
            put_s: put,
            put_mib_s: mib / put,
            baseline_put_s: base_put,
            put_ratio: put / base_put,
            get_s: get,
            get_mib_s: mib / get,
            baseline_read_s: read,
            get_ratio: get / read,
            get_synced_s: get_synced,
            get_synced_ratio: get_synced / read,
        }
    }
}

/// Peak resident memory (VmHWM, reset before the put) of every agent during the put.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub size_bytes: u64,
    pub per_agent_peak_mib: Vec<(String, f64)>,
}

impl MemoryReport {
    pub fn max_mib(&self) -> f64 {
        self.per_agent_peak_mib
            .iter()
            .map(|(_, m)| *m)
            .fold(0.0, f64::max)
    }
}

/// From killing 3 holders of the largest file to its being at 4 live replicas again.
#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub size_bytes: u64,
    pub killed: Vec<String>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Document {
    pub bench: &'static str,
    pub unix_ms: u64,
    pub command: String,
    pub agents: usize,
    pub replicas: usize,
    pub write_quorum: usize,
    pub repair_bytes_per_sec: u64,
    pub sizes: Vec<SizeReport>,
    pub memory: Option<MemoryReport>,
    pub repair: Option<RepairReport>,
}

fn mark(ok: bool) -> &'static str {
    if ok { " ✓" } else { " ✗" }
}

fn size_label(size: u64) -> String {
    if size >= 1 << 30 {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    }
}

pub fn table(d: &Document) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sdfs bench: {} agents on 127.0.0.1, {} replicas, write quorum {}, fsync; the source, the copies and the replicas evicted from the page cache before every timed step",
        d.agents, d.replicas, d.write_quorum,
    );
    let _ = writeln!(
        out,
        "{:>7} {:>4} | {:>8} {:>9} {:>10} {:>8} | {:>8} {:>9} {:>9} {:>8} | {:>9} {:>6}",
        "size",
        "reps",
        "put s",
        "put MiB/s",
        "4-copy s",
        "ratio",
        "get s",
        "get MiB/s",
        "read s",
        "ratio",
        "get+sync",
        "ratio"
    );
    for s in &d.sizes {
        let _ = writeln!(
            out,
            "{:>7} {:>4} | {:>8.4} {:>9.1} {:>10.4} {:>6.2}{} | {:>8.4} {:>9.1} {:>9.4} {:>6.2}{} | {:>9.4} {:>6.2}",
            size_label(s.size_bytes),
            s.reps,
            s.put_s,
            s.put_mib_s,
            s.baseline_put_s,
            s.put_ratio,
            mark(s.put_ratio <= TARGET_PUT_RATIO),
            s.get_s,
            s.get_mib_s,
            s.baseline_read_s,
            s.get_ratio,
            mark(s.get_ratio <= TARGET_GET_RATIO),
            s.get_synced_s,
            s.get_synced_ratio,
        );
    }
    let _ = writeln!(
        out,
        "targets: put ≤ {TARGET_PUT_RATIO}× the 4-copy baseline, get ≤ {TARGET_GET_RATIO}× reading one copy (medians)"
    );
    let _ = writeln!(
        out,
        "put: the leader plans the put, the client streams the file down the 4-agent chain (to its head through the local socket) hashing it as it goes (each replica fsyncs), commit; \
         4-copy: one thread writes every chunk to 4 files, then fsyncs them.\n\
         get: fetch from a replica (cold) through its local socket (the bench runs on the agents' host), check BLAKE3, write the local copy (not fsynced, as `dml get`); \
         get+sync: the same, fsyncing the copy; read: read one copy only (cold)."
    );
    if let Some(m) = &d.memory {
        let max = m.max_mib();
        let _ = writeln!(
            out,
            "peak RSS of an agent during the {} put: {max:.1} MiB{} (target < {TARGET_PEAK_MIB} MiB); per agent: {}",
            size_label(m.size_bytes),
            mark(max < TARGET_PEAK_MIB),
            m.per_agent_peak_mib
                .iter()
                .map(|(a, v)| format!("{a} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(r) = &d.repair {
        match (r.seconds, &r.error) {
            (Some(s), _) => {
                let _ = writeln!(
                    out,
                    "repair: {} back at 4 replicas {s:.1} s after killing 3 holders ({}); repair_bytes_per_sec = {} MiB/s",
                    size_label(r.size_bytes),
                    r.killed.join(", "),
                    d.repair_bytes_per_sec >> 20
                );
            }
            (None, e) => {
                let _ = writeln!(
                    out,
                    "repair of {}: FAILED: {}",
                    size_label(r.size_bytes),
                    e.as_deref().unwrap_or("unknown")
                );
            }
        }
    }
    out
}
