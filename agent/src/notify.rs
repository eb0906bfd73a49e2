//! sd_notify by hand: datagrams such as `READY=1` to the socket systemd names in
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as `Type=notify`
//! units expect. Without `NOTIFY_SOCKET` nothing is sent.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connected notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
}

impl Notifier {
    /// Reads (and removes, so children don't inherit it) `NOTIFY_SOCKET`.
    /// `Ok(None)` when it is unset; an error when it is set but unusable.
    ///
    /// Call while the process is single-threaded: it edits the environment.
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        // SAFETY: called from `main` before any other thread is started.
        unsafe { std::env::remove_var(NOTIFY_SOCKET) };
        let value = value.to_str().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
        })?;
        Self::connect(value).map(Some)
    }

    /// Connects to `value`, written as in `NOTIFY_SOCKET`.
    pub fn connect(value: &str) -> io::Result<Self> {
        let addr = parse_addr(value)?;
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&addr)?;
        Ok(Self { socket })
    }

    /// Sends one notification, e.g. `"READY=1\nSTATUS=joined"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let n = self.socket.send(state.as_bytes())?;
        if n != state.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }
}

fn parse_addr(value: &str) -> io::Result<SocketAddr> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET \"{value}\": {why}"),
        )
    };
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if name.is_empty() {
            return Err(bad("empty abstract name"));
        }
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !value.starts_with('/') {
        return Err(bad("neither an absolute path nor an @abstract name"));
    }
    SocketAddr::from_pathname(value)
}

/// Sends `state` if there is a notifier; a failure is logged, never fatal.
pub fn notify(n: Option<&Notifier>, state: &str) {
    if let Some(n) = n
        && let Err(e) = n.send(state)
    {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_state_as_one_datagram_to_a_path() {
        let dir = std::env::temp_dir().join(format!("dml-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.send("READY=1\nSTATUS=joined").unwrap();
        notify(Some(&n), "STOPPING=1");
        assert_eq!(recv(&server), "READY=1\nSTATUS=joined");
        assert_eq!(recv(&server), "STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dml-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::connect(&format!("@{name}"))
            .unwrap()
            .send("READY=1")
            .unwrap();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn bad_values_are_refused_with_the_value() {
        let e = Notifier::connect("relative/sock").unwrap_err().to_string();
        assert!(e.contains("\"relative/sock\""), "{e}");
        assert!(Notifier::connect("@").is_err());
        // A path where nobody listens: the connect fails rather than later sends.
        let e = Notifier::connect("/nonexistent/dml/notify.sock").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
