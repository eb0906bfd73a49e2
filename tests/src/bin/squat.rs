//! `squat ADDR`: holds the local socket name of the agent at `ADDR`, as a local user
//! squatting it would, for the security tests. Prints `ready`, then one `got N` line per
//! connection with the bytes it sent before closing (or going quiet for a second).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// How long a connection may stay quiet before the squatter reports it.
const QUIET: Duration = Duration::from_secs(1);

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: squat ADDR");
    let name = dml_shared::stream::local_addr(addr)?;
    let listener = UnixListener::bind_addr(&name.into())?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_read_timeout(Some(QUIET))?;
        let (mut got, mut buf) = (0usize, [0u8; 4096]);
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        writeln!(out, "got {got}")?;
        out.flush()?;
    }
    Ok(())
}
