//! Picking a port for an agent that must listen on a number known in advance.

use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Every port [`free_fixed_addr`] handed out in this process. Tests of one binary run
/// on parallel threads, each picking ports for its agents before they bind: without
/// this, two picks in a row could name the same still-free port (seen in CI as an
/// agent failing with "Address already in use").
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

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

/// Lowest port [`free_fixed_addr`] picks from.
const FIXED_LOW: u16 = 10_000;

/// The kernel's ephemeral port range (`ip_local_port_range`), where outgoing connections
/// get their source ports.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// A 127.0.0.1 address for an agent that must listen on a number known before it starts,
/// when many agents and connections come and go meanwhile (several clusters in one test
/// binary): the port is free for TCP and UDP and lies *below* the ephemeral range, so no
/// outgoing connection can take it between this call and the agent's bind, as happens
/// with [`free_local_addr`]; and never twice in one process. Falls back to
/// [`free_local_addr`] when the range leaves no room below it.
pub fn free_fixed_addr() -> Result<SocketAddr> {
    let Some((low, _)) = ephemeral_range().filter(|(l, _)| *l > FIXED_LOW + 1000) else {
        return free_local_addr();
    };
    let span = u64::from(low - FIXED_LOW);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    for _ in 0..ATTEMPTS {
        // splitmix64 step: a different candidate each attempt and each call.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = FIXED_LOW + u16::try_from(z % span).expect("below the range start");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        let handed = handed.get_or_insert_with(HashSet::new);
        if !handed.contains(&port)
            && TcpListener::bind(addr).is_ok()
            && UdpSocket::bind(addr).is_ok()
        {
            handed.insert(port);
            return Ok(addr);
        }
    }
    free_local_addr()
}
