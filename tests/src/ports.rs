//! Picking a port for an agent that must listen on a number known in advance.

use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// Attempts before giving up on finding a port free for both protocols.
const ATTEMPTS: usize = 64;

/// A 127.0.0.1 address whose port is free for both TCP and UDP at the time of the call.
///
/// The sockets are released before returning, so another process may take the port before
/// the agent binds it. The window is tiny and the kernel hands out ephemeral ports
/// round-robin, so this is good enough for tests; prefer `--bind 127.0.0.1:0` wherever the
/// port need not be known before the agent starts.
pub fn free_local_addr() -> Result<SocketAddr> {
    for _ in 0..ATTEMPTS {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a TCP port")?;
        let addr = tcp.local_addr()?;
        if UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no port on 127.0.0.1 was free for both TCP and UDP after {ATTEMPTS} attempts")
}
