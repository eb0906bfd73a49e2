//! Leaving a minority: freezing a majority of the voters with SIGSTOP.
//!
//! Why not firewall rules: every agent listens on 127.0.0.1, and TCP connections an agent
//! opens come from ephemeral ports, so nftables rules keyed on the agents' ports cut only
//! the connections *towards* the isolated side; the isolated side could still reach the
//! others (and forward to their leader). A frozen process answers nothing in either
//! direction, which is the partition a quorum system must survive.

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Agents frozen with SIGSTOP; each gets SIGCONT when this is dropped (or on
/// [`Frozen::resume`]), so a failing test leaves nothing stopped.
#[derive(Debug)]
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    /// SIGSTOPs every pid; on an error the ones already stopped are resumed.
    pub fn stop(pids: &[u32]) -> Result<Self> {
        let mut f = Frozen { pids: Vec::new() };
        for &p in pids {
            signal(p, Signal::SIGSTOP)?;
            f.pids.push(p);
        }
        Ok(f)
    }

    /// SIGCONTs every frozen agent now.
    pub fn resume(mut self) -> Result<()> {
        let pids = std::mem::take(&mut self.pids);
        pids.into_iter()
            .try_for_each(|p| signal(p, Signal::SIGCONT))
    }
}

fn signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    kill(Pid::from_raw(raw), sig).with_context(|| format!("cannot send {sig} to pid {pid}"))
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.pids {
            let _ = signal(p, Signal::SIGCONT);
        }
    }
}
