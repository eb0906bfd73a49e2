//! [`UdpTransport`]: the membership transport of a real agent.

use super::Transport;
use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// A bound UDP socket (see [`crate::membership::driver::bind_udp`]).
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    pub fn new(socket: UdpSocket) -> Self {
        Self { socket }
    }
}

impl From<UdpSocket> for UdpTransport {
    fn from(socket: UdpSocket) -> Self {
        Self::new(socket)
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(bytes, to).await.map(|_| ())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // Cancel-safe: tokio's `recv_from` takes a datagram only on completion.
        self.socket.recv_from(buf).await
    }
}
