//! This agent's membership identity across restarts: a new process's identity is newer than
//! every earlier one of its data directory, even when the host's clock stepped back between
//! them (members order identities of one address by their start time, and ignore older ones).
//! The newest identity's start time is kept in `<data dir>/membership-id`.

use crate::membership::Event;
use crate::membership::driver::{TimedEvent, unix_ms};
use dml_shared::NodeId;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::broadcast;

const FILE: &str = "membership-id";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The identity for a process starting now at `addr`: its start time is the wall clock, or
/// one past the newest identity recorded in `data_dir` if that is later. Recorded at once.
pub fn next(data_dir: &Path, addr: SocketAddr) -> std::io::Result<NodeId> {
    let last = match std::fs::read_to_string(path(data_dir)) {
        Ok(text) => {
            let v = text.trim().parse::<u64>().ok();
            if v.is_none() {
                tracing::warn!(file = %path(data_dir).display(), "not a start time; replacing it");
            }
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let started = match last {
        Some(l) => unix_ms().max(l + 1),
        None => unix_ms(),
    };
    if last.is_some_and(|l| unix_ms() <= l) {
        tracing::warn!(
            last = last.unwrap_or_default(),
            now = unix_ms(),
            "the clock is behind this data directory's last identity; starting just after it"
        );
    }
    record(data_dir, started)?;
    Ok(NodeId::new(addr, started))
}

/// Writes `started` durably (a temporary file renamed over the old one).
fn record(data_dir: &Path, started: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{started}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Records each new identity this agent takes (a `dml join` after a leave), until the
/// membership events end. Declared failed, an agent refutes and keeps its identity.
pub async fn follow(
    data_dir: PathBuf,
    me: SocketAddr,
    mut events: broadcast::Receiver<TimedEvent>,
) {
    let mut recorded = None;
    loop {
        match events.recv().await {
            Ok(TimedEvent {
                event: Event::Joined(id),
                ..
            }) if id.addr == me && recorded != Some(id) => {
                recorded = Some(id);
                let dir = data_dir.clone();
                let r = tokio::task::spawn_blocking(move || record(&dir, id.started)).await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(%id, "cannot record the new identity in the data directory");
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_newer_than_a_recorded_identity_from_the_future() {
        let dir = std::env::temp_dir().join(format!("dml-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let first = next(&dir, addr).unwrap();
        assert!(first.started >= unix_ms() - 1000);
        // An identity taken while the clock ran 30 s ahead.
        let ahead = unix_ms() + 30_000;
        record(&dir, ahead).unwrap();
        let second = next(&dir, addr).unwrap();
        assert_eq!(second.started, ahead + 1);
        assert!(second > first);
        let third = next(&dir, addr).unwrap();
        assert!(third > second);
        std::fs::write(path(&dir), "junk").unwrap();
        assert!(next(&dir, addr).is_ok(), "a damaged record is replaced");
        assert!(
            std::fs::read_to_string(path(&dir))
                .unwrap()
                .trim()
                .parse::<u64>()
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
