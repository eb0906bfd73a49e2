//! [`MemNetwork`]: an in-memory datagram network, for tests and simulations.
//!
//! Each node binds a [`ChannelTransport`] at an address of its choosing (port
//! 0 picks a free one, as the kernel does). The network can lose datagrams at
//! random, delay them, cut single links (`from -> to`) and isolate nodes;
//! every datagram sent is counted in [`NetStats`] by what became of it, and a
//! [`MemNetwork::tap`] sees a copy of each. A cut, an isolation or a loss
//! applies to datagrams sent after it. Delays are tokio timers, so under
//! `tokio::time::pause` they cost no real time.

use super::Transport;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Largest datagram accepted, as for UDP over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Datagrams waiting at a receiver (its socket buffer); more are lost.
pub const QUEUE_DATAGRAMS: usize = 4096;
/// First port handed out to binds at port 0.
const FIRST_FREE_PORT: u16 = 40_000;

/// One datagram on the wire, as a [`MemNetwork::tap`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What became of the datagrams sent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    /// Queued at their receiver.
    pub delivered: u64,
    /// Dropped by the random-loss model or at a full receiver queue.
    pub lost: u64,
    /// Dropped by a cut link or an isolated node.
    pub blocked: u64,
    /// Sent to an address no transport holds.
    pub unreachable: u64,
}

type Inbox = mpsc::Sender<(SocketAddr, Vec<u8>)>;

struct Net {
    inboxes: HashMap<SocketAddr, Inbox>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
    loss: f64,
    delay: Duration,
    rng: SmallRng,
    next_port: u16,
    stats: NetStats,
    taps: Vec<mpsc::UnboundedSender<Datagram>>,
}

impl Net {
    fn deliver(&mut self, inbox: &Inbox, from: SocketAddr, bytes: Vec<u8>) {
        match inbox.try_send((from, bytes)) {
            Ok(()) => self.stats.delivered += 1,
            Err(TrySendError::Full(_)) => self.stats.lost += 1,
            Err(TrySendError::Closed(_)) => self.stats.unreachable += 1,
        }
    }
}

/// The shared network; clones are handles to the same one.
#[derive(Clone)]
pub struct MemNetwork {
    net: Arc<Mutex<Net>>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new(0)
    }
}

impl MemNetwork {
    /// A network without loss, delay or cuts; `seed` drives the loss model.
    pub fn new(seed: u64) -> Self {
        Self {
            net: Arc::new(Mutex::new(Net {
                inboxes: HashMap::new(),
                cut: HashSet::new(),
                isolated: HashSet::new(),
                loss: 0.0,
                delay: Duration::ZERO,
                rng: SmallRng::seed_from_u64(seed),
                next_port: FIRST_FREE_PORT,
                stats: NetStats::default(),
                taps: Vec::new(),
            })),
        }
    }

    /// The lock is never held across an await.
    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A transport receiving at `addr`; port 0 takes a free port.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<ChannelTransport> {
        let mut net = self.lock();
        let mut addr = addr;
        if addr.port() == 0 {
            loop {
                addr.set_port(net.next_port);
                net.next_port = net
                    .next_port
                    .checked_add(1)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port left"))?;
                if !net.inboxes.contains_key(&addr) {
                    break;
                }
            }
        } else if net.inboxes.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("address \"{addr}\" is already bound"),
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE_DATAGRAMS);
        net.inboxes.insert(addr, tx);
        Ok(ChannelTransport {
            addr,
            net: self.clone(),
            rx,
        })
    }

    /// Drops every datagram sent from `from` to `to` from now on.
    pub fn cut(&self, from: SocketAddr, to: SocketAddr) {
        self.lock().cut.insert((from, to));
    }

    /// Undoes [`MemNetwork::cut`].
    pub fn heal(&self, from: SocketAddr, to: SocketAddr) {
        self.lock().cut.remove(&(from, to));
    }

    /// Drops every datagram to or from `node` from now on.
    pub fn isolate(&self, node: SocketAddr) {
        self.lock().isolated.insert(node);
    }

    /// Undoes [`MemNetwork::isolate`].
    pub fn reconnect(&self, node: SocketAddr) {
        self.lock().isolated.remove(&node);
    }

    /// Loses each datagram with probability `loss` (0 to 1).
    pub fn set_loss(&self, loss: f64) {
        self.lock().loss = loss.clamp(0.0, 1.0);
    }

    /// Delivers each datagram `delay` after it was sent.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// A copy of every datagram sent from now on, whatever becomes of it.
    pub fn tap(&self) -> mpsc::UnboundedReceiver<Datagram> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().taps.push(tx);
        rx
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a datagram of {} bytes is over {MAX_DATAGRAM}", bytes.len()),
            ));
        }
        let mut net = self.lock();
        net.stats.sent += 1;
        net.taps.retain(|tap| {
            tap.send(Datagram {
                from,
                to,
                bytes: bytes.to_vec(),
            })
            .is_ok()
        });
        if net.cut.contains(&(from, to))
            || net.isolated.contains(&from)
            || net.isolated.contains(&to)
        {
            net.stats.blocked += 1;
            return Ok(());
        }
        let loss = net.loss;
        if loss > 0.0 && net.rng.random_bool(loss) {
            net.stats.lost += 1;
            return Ok(());
        }
        let Some(inbox) = net.inboxes.get(&to).cloned() else {
            net.stats.unreachable += 1;
            return Ok(());
        };
        if net.delay.is_zero() {
            net.deliver(&inbox, from, bytes.to_vec());
        } else {
            let delay = net.delay;
            let network = self.clone();
            let bytes = bytes.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                network.lock().deliver(&inbox, from, bytes);
            });
        }
        Ok(())
    }
}

/// One node's end of a [`MemNetwork`]; dropping it frees its address.
pub struct ChannelTransport {
    addr: SocketAddr,
    net: MemNetwork,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl Drop for ChannelTransport {
    fn drop(&mut self) {
        self.rx.close();
        self.net
            .lock()
            .inboxes
            .retain(|_, inbox| !inbox.is_closed());
    }
}

impl Transport for ChannelTransport {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.net.send(self.addr, to, bytes)
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // Cancel-safe: `mpsc::Receiver::recv` is.
        // The network keeps this inbox open while the transport lives.
        let (from, bytes) = self.rx.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the in-memory inbox closed")
        })?;
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        Ok((len, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The next datagram at `t`, if one is already there.
    fn next(t: &mut ChannelTransport) -> Option<(Vec<u8>, SocketAddr)> {
        use futures::FutureExt;
        let mut buf = [0u8; 64];
        t.recv_from(&mut buf).now_or_never().map(|r| {
            let (len, from) = r.expect("an open inbox");
            (buf[..len].to_vec(), from)
        })
    }

    #[tokio::test]
    async fn port_zero_takes_a_free_port_and_a_dropped_transport_frees_its_address() {
        let net = MemNetwork::default();
        let a = net.bind(addr(0)).expect("free");
        let b = net.bind(addr(0)).expect("free");
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
        let taken = net.bind(a.local_addr().unwrap()).err().expect("taken");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        let at = a.local_addr().unwrap();
        drop(a);
        net.bind(at).expect("freed on drop");
    }

    #[tokio::test]
    async fn a_datagram_arrives_whole_from_its_sender_or_truncated_to_the_buffer() {
        let net = MemNetwork::default();
        let a = net.bind(addr(1)).unwrap();
        let mut b = net.bind(addr(2)).unwrap();
        a.send_to(b"hello", addr(2)).await.unwrap();
        assert_eq!(next(&mut b), Some((b"hello".to_vec(), addr(1))));
        a.send_to(&[1; 100], addr(2)).await.unwrap();
        assert_eq!(next(&mut b), Some((vec![1; 64], addr(1))));
        let long = a.send_to(&vec![0; MAX_DATAGRAM + 1], addr(2)).await;
        assert_eq!(long.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        a.send_to(b"nobody", addr(3)).await.unwrap();
        let s = net.stats();
        assert_eq!((s.sent, s.delivered, s.unreachable), (3, 2, 1), "{s:?}");
    }

    #[tokio::test]
    async fn a_cut_is_one_way_and_an_isolation_both_ways_until_undone() {
        let net = MemNetwork::default();
        let mut a = net.bind(addr(1)).unwrap();
        let mut b = net.bind(addr(2)).unwrap();
        net.cut(addr(1), addr(2));
        a.send_to(b"x", addr(2)).await.unwrap();
        b.send_to(b"y", addr(1)).await.unwrap();
        assert_eq!(next(&mut b), None);
        assert_eq!(next(&mut a), Some((b"y".to_vec(), addr(2))));
        net.heal(addr(1), addr(2));
        net.isolate(addr(2));
        a.send_to(b"x", addr(2)).await.unwrap();
        b.send_to(b"y", addr(1)).await.unwrap();
        assert_eq!(next(&mut a), None);
        assert_eq!(next(&mut b), None);
        net.reconnect(addr(2));
        a.send_to(b"x", addr(2)).await.unwrap();
        assert_eq!(next(&mut b), Some((b"x".to_vec(), addr(1))));
        assert_eq!(net.stats().blocked, 3);
    }

    #[tokio::test]
    async fn total_loss_loses_everything_and_the_tap_still_sees_it() {
        let net = MemNetwork::new(1);
        let mut tap = net.tap();
        let a = net.bind(addr(1)).unwrap();
        let mut b = net.bind(addr(2)).unwrap();
        net.set_loss(1.0);
        for _ in 0..10 {
            a.send_to(b"x", addr(2)).await.unwrap();
        }
        assert_eq!(next(&mut b), None);
        assert_eq!(net.stats().lost, 10);
        let seen = std::iter::from_fn(|| tap.try_recv().ok()).count();
        assert_eq!(seen, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_datagram_arrives_after_the_delay() {
        let net = MemNetwork::default();
        let a = net.bind(addr(1)).unwrap();
        let mut b = net.bind(addr(2)).unwrap();
        net.set_delay(Duration::from_secs(5));
        let sent = tokio::time::Instant::now();
        a.send_to(b"late", addr(2)).await.unwrap();
        let mut buf = [0u8; 8];
        let (len, _) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"late");
        assert!(sent.elapsed() >= Duration::from_secs(5));
    }
}
