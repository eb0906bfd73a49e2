//! An agent's `--event-log`: one JSON object per line,
//! `{"ts_ms": <unix ms>, "event": "<kind>", "member": "<addr>#<started>"}`.

use anyhow::{Context, Result};
use dml_shared::NodeId;
use serde::Deserialize;
use std::path::Path;

/// What happened to a member, as the agent logging it saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Joined,
    Alive,
    Suspect,
    /// The logging agent removed the member as failed.
    Failed,
    Left,
    /// Written by the foca comparison node only: the agent refutes instead.
    Rejoined,
    /// A member the logging agent held as failed refuted it and is back, same identity.
    Reinstated,
    /// The logging agent was declared failed and refuted it, keeping its identity.
    Refuted,
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Event {
    pub ts_ms: u64,
    pub event: EventKind,
    #[serde(deserialize_with = "node_id")]
    pub member: NodeId,
}

fn node_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// Reads every complete line of the event log at `path`; a missing file is an empty log.
/// A last line without its newline may still be being written and is skipped.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read \"{}\"", path.display())),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("bad event line in \"{}\": {l}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_lines_and_skips_a_partial_one() {
        let dir = crate::TestDir::new("events-parse").unwrap();
        let p = dir.path().join("events.jsonl");
        std::fs::write(
            &p,
            "{\"ts_ms\":1,\"event\":\"failed\",\"member\":\"127.0.0.1:9#5\"}\n{\"ts_ms\":2,\"ev",
        )
        .unwrap();
        let ev = read_events(&p).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, EventKind::Failed);
        assert_eq!(ev[0].member, NodeId::new("127.0.0.1:9".parse().unwrap(), 5));
    }
}
