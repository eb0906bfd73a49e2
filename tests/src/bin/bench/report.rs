//! The side-by-side table and the JSON file.

use crate::membership::{Params, Summary, SystemReport};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Targets from issue 2 (lan preset).
pub const TARGET_MEDIAN_S: f64 = 3.0;
pub const TARGET_P99_S: f64 = 5.0;
pub const TARGET_BYTES_PER_S: f64 = 1500.0;

/// One row of the foca parameter mapping.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MappingRow {
    pub ours: String,
    pub foca: String,
    pub note: String,
}

/// The whole JSON document.
#[derive(Serialize)]
pub struct Document<'a> {
    pub bench: &'static str,
    pub unix_ms: u64,
    pub command: String,
    pub params: &'a Params,
    pub foca_mapping: &'a [MappingRow],
    pub systems: &'a [SystemReport],
}

/// A [`Document`] read back from disk, to print its table again.
#[derive(Deserialize)]
pub struct SavedDocument {
    pub command: String,
    pub params: Params,
    pub foca_mapping: Vec<MappingRow>,
    pub systems: Vec<SystemReport>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |s| format!("{s:.2}"))
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => " ✓",
        Some(false) => " ✗",
        None => "",
    }
}

/// Renders the table: one column per system, with the target in the last column.
pub fn table(p: &Params, systems: &[SystemReport]) -> String {
    type Cell = Box<dyn Fn(&SystemReport) -> String>;
    let sum = |f: fn(&SystemReport) -> &Summary, g: fn(&Summary) -> Option<f64>| {
        move |r: &SystemReport| secs(g(f(r)))
    };
    let rows: Vec<(&str, Cell, &str)> = vec![
        (
            "detection, kill → all survivors: median (s)",
            Box::new(|r: &SystemReport| {
                let m = r.detection.median;
                format!("{}{}", secs(m), mark(m.map(|v| v <= TARGET_MEDIAN_S)))
            }),
            "≤ 3",
        ),
        ("  p90 (s)", Box::new(sum(|r| &r.detection, |s| s.p90)), ""),
        (
            "  p99 (s)",
            Box::new(|r: &SystemReport| {
                let m = r.detection.p99;
                format!("{}{}", secs(m), mark(m.map(|v| v <= TARGET_P99_S)))
            }),
            "≤ 5",
        ),
        ("  max (s)", Box::new(sum(|r| &r.detection, |s| s.max)), ""),
        (
            "kills removed by every survivor",
            Box::new(|r: &SystemReport| format!("{}/{}", r.kills_fully_detected, r.kills.len())),
            "all",
        ),
        (
            "survivors that missed a removal",
            Box::new(|r: &SystemReport| format!("{}/{}", r.survivor_misses, r.survivor_checks)),
            "0",
        ),
        (
            "  API still listing a removed member (agent)",
            Box::new(|r: &SystemReport| {
                r.api_disagreements
                    .map_or_else(|| "n/a".into(), |v| v.to_string())
            }),
            "0",
        ),
        (
            "detection, kill → first survivor: median (s)",
            Box::new(sum(|r| &r.first_detection, |s| s.median)),
            "",
        ),
        (
            "restart → all converged: median (s)",
            Box::new(sum(|r| &r.rejoin, |s| s.median)),
            "",
        ),
        (
            "payload sent at rest per member, mean (B/s)",
            Box::new(|r: &SystemReport| {
                let v = r.traffic.sent_mean_bps;
                format!("{v:.0}{}", mark(Some(v <= TARGET_BYTES_PER_S)))
            }),
            "≤ 1500",
        ),
        (
            "  max over members (B/s)",
            Box::new(|r: &SystemReport| format!("{:.0}", r.traffic.sent_max_bps)),
            "",
        ),
        (
            "  received, mean (B/s)",
            Box::new(|r: &SystemReport| format!("{:.0}", r.traffic.recv_mean_bps)),
            "",
        ),
        (
            "  packets sent per member (/s)",
            Box::new(|r: &SystemReport| format!("{:.1}", r.traffic.packets_sent_mean_ps)),
            "",
        ),
        (
            "false positives at loss: `failed` events",
            Box::new(|r: &SystemReport| match &r.loss.skipped {
                Some(_) => "skipped".into(),
                None if r.loss.secs == 0.0 => "—".into(),
                None => format!(
                    "{}{}",
                    r.loss.false_failed_events,
                    mark(Some(r.loss.false_failed_events == 0))
                ),
            }),
            "0",
        ),
        (
            "  live members declared failed",
            Box::new(|r: &SystemReport| match &r.loss.skipped {
                Some(_) => "skipped".into(),
                None => r.loss.members_wrongly_failed.to_string(),
            }),
            "0",
        ),
        (
            "  suspicions raised / refuted (agent counters)",
            Box::new(
                |r: &SystemReport| match (r.loss.suspicions, r.loss.refuted) {
                    (Some(s), Some(f)) => format!("{s} / {f}"),
                    _ => "n/a".into(),
                },
            ),
            "",
        ),
        (
            "  stats().false_failures (agent)",
            Box::new(|r: &SystemReport| {
                r.loss
                    .false_failures
                    .map_or_else(|| "n/a".into(), |v| v.to_string())
            }),
            "0",
        ),
        (
            "  packets dropped by the rule",
            Box::new(|r: &SystemReport| {
                r.loss
                    .dropped_packets
                    .map_or_else(|| "—".into(), |v| v.to_string())
            }),
            "",
        ),
        (
            "false `failed` events without loss",
            Box::new(|r: &SystemReport| r.false_failed_without_loss.to_string()),
            "0",
        ),
    ];

    let label_w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let col_w = 18;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "membership bench: {} members on 127.0.0.1, {} SIGKILLs, {}% receive loss on one member for {} s",
        p.nodes, p.kills, p.loss_percent, p.loss_secs
    );
    let _ = write!(out, "{:label_w$}", "");
    for r in systems {
        let _ = write!(out, "  {:>col_w$}", r.name);
    }
    let _ = writeln!(out, "  {:>8}", "target");
    for (label, cell, target) in &rows {
        let _ = write!(out, "{label:label_w$}");
        for r in systems {
            let v = if r.skipped.is_some() {
                "skipped".to_string()
            } else {
                cell(r)
            };
            let pad = col_w.saturating_sub(v.chars().count());
            let _ = write!(out, "  {}{v}", " ".repeat(pad));
        }
        let _ = writeln!(out, "  {target:>8}");
    }
    for r in systems {
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "{}: skipped: {why}", r.name);
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{}: run cut short (figures up to there): {e}", r.name);
        }
        if let Some(why) = &r.loss.skipped {
            let _ = writeln!(out, "{}: false-positive phase skipped: {why}", r.name);
        }
    }
    out
}

/// Renders the foca mapping as text lines.
pub fn mapping_text(rows: &[MappingRow]) -> String {
    let w = rows.iter().map(|r| r.ours.len()).max().unwrap_or(0);
    let fw = rows.iter().map(|r| r.foca.len()).max().unwrap_or(0);
    let mut out = String::from("foca-node parameters, mapped from our `lan` preset:\n");
    for r in rows {
        let _ = writeln!(out, "  {:w$}  →  {:fw$}  {}", r.ours, r.foca, r.note);
    }
    out
}
