//! Text tables and JSON values for the one-shot commands; pure functions, no IO.

use dml_shared::NodeId;
use dml_shared::api::{IdInfo, MemberInfo, Stats};
use serde_json::{Value, json};

/// Lays rows out in left-aligned columns under a header, two spaces apart.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "12ms", "3.4s", or "never" when the agent has not heard from the member directly.
pub fn last_heard(ms: Option<u64>) -> String {
    ms.map_or_else(|| "never".into(), dml_tui::units::age_ms)
}

/// Monitors as bare addresses: the generation adds nothing for an operator here.
pub fn monitors(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(|m| m.addr.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Members ordered by address, then generation, so tables are stable between calls.
pub fn sorted(members: &[MemberInfo]) -> Vec<&MemberInfo> {
    let mut v: Vec<&MemberInfo> = members.iter().collect();
    v.sort_by_key(|m| (m.id.addr, m.id.started));
    v
}

pub fn members_table(members: &[MemberInfo]) -> String {
    let rows: Vec<Vec<String>> = sorted(members)
        .into_iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.state.as_str().to_string(),
                m.incarnation.to_string(),
                last_heard(m.last_heard_ms),
                monitors(&m.monitors),
            ]
        })
        .collect();
    render_table(&["ID", "STATE", "INC", "LAST HEARD", "MONITORS"], &rows)
}

pub fn members_json(members: &[MemberInfo]) -> Value {
    Value::Array(
        sorted(members)
            .into_iter()
            .map(|m| {
                json!({
                    "id": m.id.to_string(),
                    "addr": m.id.addr.to_string(),
                    "started": m.id.started,
                    "state": m.state.as_str(),
                    "incarnation": m.incarnation,
                    "last_heard_ms": m.last_heard_ms,
                    "monitors": m.monitors.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

pub fn id_text(info: &IdInfo) -> String {
    format!(
        "{}  incarnation {}  {}\n",
        info.id,
        info.incarnation,
        if info.joined { "joined" } else { "not joined" }
    )
}

pub fn id_json(info: &IdInfo) -> Value {
    json!({
        "id": info.id.to_string(),
        "addr": info.id.addr.to_string(),
        "started": info.id.started,
        "incarnation": info.incarnation,
        "joined": info.joined,
    })
}

pub use dml_tui::units::rate;

/// The figures of `dml stats`, as (label, value) pairs; the console shows the same list.
pub fn stats_lines(s: &Stats) -> Vec<(&'static str, String)> {
    vec![
        ("uptime", dml_tui::units::age_ms(s.uptime_ms)),
        ("live members", s.members_live.to_string()),
        (
            "sent",
            format!(
                "{}  {:.1} pkt/s",
                rate(s.bytes_sent_per_s),
                s.packets_sent_per_s
            ),
        ),
        (
            "received",
            format!(
                "{}  {:.1} pkt/s",
                rate(s.bytes_recv_per_s),
                s.packets_recv_per_s
            ),
        ),
        (
            "total sent",
            format!("{} B  {} pkt", s.bytes_sent, s.packets_sent),
        ),
        (
            "total received",
            format!("{} B  {} pkt", s.bytes_recv, s.packets_recv),
        ),
        ("probes sent", s.probes_sent.to_string()),
        ("suspicions raised", s.suspicions.to_string()),
        ("refuted (false positives)", s.refuted.to_string()),
        ("declared failed", s.declared_failed.to_string()),
        ("falsely declared failed", s.false_failures.to_string()),
        ("reinstated (refuted failures)", s.reinstated.to_string()),
        ("bad packets", s.bad_packets.to_string()),
        ("bad frames", s.bad_frames.to_string()),
        (
            "unauthenticated datagrams",
            s.udp_unauthenticated.to_string(),
        ),
        ("replayed/stale datagrams", s.udp_replayed.to_string()),
        (
            "unauthenticated connections",
            s.tcp_unauthenticated.to_string(),
        ),
    ]
}

pub fn stats_text(s: &Stats) -> String {
    let width = stats_lines(s)
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    stats_lines(s)
        .into_iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

pub fn stats_json(s: &Stats) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::api::MemberState;

    fn id(port: u16, started: u64) -> NodeId {
        NodeId::new(format!("127.0.0.1:{port}").parse().unwrap(), started)
    }

    fn member(port: u16, state: MemberState) -> MemberInfo {
        MemberInfo {
            id: id(port, 100 + u64::from(port)),
            state,
            incarnation: 2,
            last_heard_ms: Some(40),
            monitors: vec![id(8003, 1), id(8004, 1)],
        }
    }

    #[test]
    fn members_table_aligns_columns_and_sorts_by_address() {
        let t = members_table(&[
            member(8002, MemberState::Suspect),
            member(8001, MemberState::Alive),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID "), "{t}");
        assert!(lines[1].starts_with("127.0.0.1:8001#8101  alive  "), "{t}");
        assert!(lines[2].contains("suspect"), "{t}");
        assert!(lines[2].ends_with("127.0.0.1:8003 127.0.0.1:8004"), "{t}");
        let state_col = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("alive").unwrap(), state_col);
        assert_eq!(lines[2].find("suspect").unwrap(), state_col);
    }

    #[test]
    fn members_json_uses_string_ids_and_lowercase_states() {
        let v = members_json(&[member(8001, MemberState::Failed)]);
        assert_eq!(v[0]["id"], "127.0.0.1:8001#8101");
        assert_eq!(v[0]["state"], "failed");
        assert_eq!(v[0]["monitors"][1], "127.0.0.1:8004#1");
        assert_eq!(v[0]["last_heard_ms"], 40);
    }

    #[test]
    fn last_heard_reads_naturally() {
        assert_eq!(last_heard(None), "never");
        assert_eq!(last_heard(Some(12)), "12ms");
        assert_eq!(last_heard(Some(12_345)), "12s");
    }

    #[test]
    fn rate_picks_a_unit() {}

    #[test]
    fn stats_text_shows_false_positives() {
        let s = Stats {
            refuted: 7,
            bytes_sent_per_s: 1200.0,
            ..Stats::default()
        };
        let t = stats_text(&s);
        assert!(
            t.lines()
                .any(|l| l.starts_with("refuted (false positives)") && l.ends_with(" 7")),
            "{t}"
        );
        assert!(t.contains("1.2 KiB/s"), "{t}");
        assert_eq!(stats_json(&s)["refuted"], 7);
    }
}
