//! Fail-stop when the control plane's store fails.
//!
//! A failed write of the Raft log (a full disk, an I/O error) makes openraft stop
//! this voter's Raft core for good: left running, the agent would answer every
//! control request from a frozen state with errors, forever, even once space
//! returns. Recovering in place would mean rebuilding the Raft node and the
//! handles every service holds, over a redb file whose failed commit may need
//! repair, which only a fresh open does. So the agent stops instead: it logs why,
//! naming the store's path and how full its disk is, leaves the group, and exits
//! non-zero. A supervisor (systemd's `Restart=on-failure`, or the operator)
//! starts it again on the same data directory: the log is durable up to its last
//! successful commit, and the other voters bring it up to date. While the disk
//! stays full the restart fails early, saying so (the identity file cannot be
//! written), and is retried.

use crate::control::ControlHandle;
use std::path::Path;
use std::time::Duration;

/// The store's file under the data directory (see `control/store.rs`).
const RAFT_STORE: &str = "control/raft.redb";

/// Waits until this voter's Raft node has stopped on its own; why, in words for
/// the operator. Pending forever on a non-voter. Polls every `every`: the node
/// may start after the agent (a voter with a blank store), and a second's delay
/// in noticing costs nothing.
pub async fn raft_stopped(control: ControlHandle, data_dir: &Path, every: Duration) -> String {
    let why = loop {
        if let Some(why) = control.log_status().and_then(|s| s.fatal) {
            break why;
        }
        tokio::time::sleep(every).await;
    };
    describe(&data_dir.join(RAFT_STORE), &why)
}

/// The fatal message: the store, its disk's free space, the cause, what to do.
fn describe(store: &Path, why: &str) -> String {
    let dir = store.parent().unwrap_or(store);
    let disk = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            let total = s.blocks().saturating_mul(s.fragment_size());
            format!("{free} of {total} bytes free on its file system")
        }
        Err(e) => format!("its file system cannot be read: {e}"),
    };
    let full = why.contains("No space left") || why.contains("Disk quota exceeded");
    format!(
        "{}the control plane's store \"{}\" failed a write ({disk}): {why}; the Raft node \
         cannot continue, so this agent exits: start it again on the same data directory{}",
        if full { "disk full: " } else { "" },
        store.display(),
        if full { " once space is freed" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_with_the_store_and_its_free_space() {
        // A store in a directory that exists, so its file system can be read.
        let dir = std::env::temp_dir();
        let msg = describe(
            &dir.join("raft.redb"),
            "StorageError: I/O error: No space left on device (os error 28)",
        );
        assert!(
            msg.starts_with("disk full: the control plane's store \""),
            "{msg}"
        );
        assert!(msg.contains("raft.redb\" failed a write ("), "{msg}");
        assert!(msg.contains("bytes free on its file system"), "{msg}");
        assert!(msg.ends_with("once space is freed"), "{msg}");
        let other = describe(&dir.join("raft.redb"), "I/O error: Input/output error");
        assert!(!other.contains("disk full"), "{other}");
    }
}
