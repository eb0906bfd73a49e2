//! Writes membership events as JSON lines: `{"ts_ms":..,"event":..,"member":..}`.

use crate::membership::Event;
use crate::membership::driver::TimedEvent;
use std::io::Write;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// One event as a JSON line (without the newline).
pub fn to_json(e: &TimedEvent) -> String {
    let (name, id) = match e.event {
        Event::Joined(id) => ("joined", id),
        Event::Alive(id) => ("alive", id),
        Event::Suspect(id) => ("suspect", id),
        Event::Failed(id) => ("failed", id),
        Event::Left(id) => ("left", id),
        Event::Reinstated(id) => ("reinstated", id),
        Event::Refuted(id) => ("refuted", id),
    };
    serde_json::json!({ "ts_ms": e.unix_ms, "event": name, "member": id.to_string() }).to_string()
}

/// Copies events to `out` until the sender closes. Lines are flushed one by
/// one so readers see them as they happen.
pub fn spawn(
    mut rx: broadcast::Receiver<TimedEvent>,
    mut out: Box<dyn Write + Send>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if writeln!(out, "{}", to_json(&e))
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        tracing::warn!("event log is not writable; no more events are logged");
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "event log fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_event_and_member() {
        let id = dml_shared::NodeId::new("127.0.0.1:8001".parse().unwrap(), 42);
        let line = to_json(&TimedEvent {
            unix_ms: 7,
            event: Event::Failed(id),
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["member"], "127.0.0.1:8001#42");
        assert_eq!(v["ts_ms"], 7);
    }
}
