//! Dedicated threads for CPU-heavy inference work (decoding, resizing,
//! ONNX Runtime), run at a lower scheduling priority so that membership
//! probes, Raft heartbeats and SDFS traffic on the same cores are served
//! first: a busy worker must not look dead or depose its leader.

use std::sync::mpsc;
use tokio::sync::oneshot;

/// Nice value of the compute threads (the agent's other threads keep 0).
pub const COMPUTE_NICE: i32 = 10;

type Task = Box<dyn FnOnce() + Send>;

/// Why a closure handed to a compute thread gave no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error("the compute thread has stopped")]
    Stopped,
    #[error("the compute task panicked")]
    Panicked,
}

/// One named thread running closures in order. Cheap to clone.
#[derive(Clone)]
pub struct Compute {
    tx: mpsc::Sender<Task>,
}

impl Compute {
    /// Starts the thread; it ends when every clone is dropped.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                lower_priority();
                while let Ok(task) = rx.recv() {
                    task();
                }
            })?;
        Ok(Self { tx })
    }

    /// Runs `f` on the thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ComputeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| ComputeError::Stopped)?;
        rx.await.map_err(|_| ComputeError::Panicked)
    }
}

/// Lowers this thread's priority (Linux: nice is per thread).
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, no memory involved.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, COMPUTE_NICE)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the compute thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_closures_on_a_lower_priority_thread() {
        let c = Compute::spawn("test-compute").unwrap();
        let (name, nice) = c
            .run(|| {
                let nice = unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::getpriority(libc::PRIO_PROCESS, tid)
                };
                (std::thread::current().name().map(String::from), nice)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-compute"));
        assert!(nice >= COMPUTE_NICE, "nice {nice}");
        assert_eq!(c.run(|| 2 + 2).await.unwrap(), 4);
    }
}
