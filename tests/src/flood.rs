//! A connection flood that never authenticates: `n` TCP connections from a
//! loopback address of their own, each held until the agent closes it and
//! then reopened (the flood test and `bench security`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// The flood's default source.
pub const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
/// Pause after a failed connect or a closed connection.
const PAUSE: Duration = Duration::from_millis(100);
/// How often a held connection looks at the stop flag.
const CHECK: Duration = Duration::from_millis(200);

/// What the flood did.
#[derive(Debug, Default)]
pub struct Counts {
    pub opened: AtomicU64,
    /// Closed by the agent (shed at once, or at the handshake timeout).
    pub closed: AtomicU64,
}

/// A running flood; stopped on drop.
pub struct Flood {
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Flood {
    /// Starts `n` connections from `from` against `target`.
    pub fn start(target: SocketAddr, n: usize, from: Ipv4Addr) -> Self {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| tokio::spawn(one(target, from, stop.clone(), counts.clone())))
            .collect();
        Self {
            counts,
            stop,
            tasks,
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.counts.opened.load(Ordering::Relaxed)
    }

    /// Connections the agent closed so far.
    pub fn closed(&self) -> u64 {
        self.counts.closed.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One flooding connection, reopened whenever the agent closes it, until `stop`.
async fn one(target: SocketAddr, from: Ipv4Addr, stop: Arc<AtomicBool>, f: Arc<Counts>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(sock) = TcpSocket::new_v4() else {
            return;
        };
        if sock.bind(SocketAddr::from((from, 0))).is_err() {
            tokio::time::sleep(PAUSE).await;
            continue;
        }
        let Ok(mut s) = sock.connect(target).await else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        f.opened.fetch_add(1, Ordering::Relaxed);
        // Never a byte: wait for the agent to close it.
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(CHECK) => {
                    if stop.load(Ordering::Relaxed) { return }
                }
            }
        }
        f.closed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(PAUSE).await;
    }
}
