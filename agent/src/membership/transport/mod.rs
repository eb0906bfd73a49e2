//! Where the membership driver's datagrams go: a small trait and two ends.
//!
//! - [`Transport`]: send and receive whole datagrams, and the local address.
//! - [`udp`]: [`UdpTransport`], the agent's real UDP socket.
//! - [`channel`]: [`MemNetwork`] and its [`ChannelTransport`]s, an in-memory
//!   network for tests and simulations that can drop, delay, cut links and
//!   isolate nodes.
//!
//! The driver ([`super::driver`]) seals and opens what passes through; a
//! transport only carries bytes.

pub mod channel;
pub mod udp;

pub use self::channel::{ChannelTransport, Datagram, MemNetwork, NetStats};
pub use self::udp::UdpTransport;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// A datagram socket: unreliable, unordered, message-preserving, like UDP.
///
/// The driver owns its transport and polls [`Transport::recv_from`] inside a
/// `select!`, so that future must be cancel-safe: dropping it before it
/// completes loses no datagram.
pub trait Transport: Send + Sync + 'static {
    /// The address other members reach this one at.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram to `to`. `Ok` means handed to the network, not
    /// delivered.
    fn send_to(&self, bytes: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<()>> + Send;

    /// Waits for the next datagram, copies it into `buf` (truncated to its
    /// length, as UDP does) and returns its length and sender.
    fn recv_from(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}
