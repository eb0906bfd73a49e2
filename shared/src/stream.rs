//! The socket under a [`crate::conn::Conn`]: TCP, or a Unix socket to an
//! agent on this host.
//!
//! Each agent also listens on the abstract Unix socket [`local_name`] of its
//! address (Linux). A client fetching a file from an agent on its own host
//! connects there first ([`connect_near`]): on two cores a loopback TCP
//! stream spends as much CPU on the protocol as on the bytes, a Unix socket
//! almost none. The handshake is the same on both; a connection over the
//! local socket is not encrypted (tagged frames, raw bulk data, `sendfile`):
//! the client checks the server's credentials below before sending anything,
//! and the bytes never leave the host, so it keeps the fast path while TCP
//! is encrypted (see [`crate::conn`]).
//!
//! Abstract rather than a file in a 0700 directory: an abstract name lives in
//! the network namespace, as the address it is named after does (agents in
//! other namespaces, as on the test bed, are not reached around the network),
//! and it goes with the process (no stale file after a kill, no directory
//! that clients and a service manager must agree on). Any local user can bind
//! a free abstract name, so both ends check who holds it: the agent refuses to
//! start when the name is taken, and a client takes the socket only from a
//! server running as its own user or root ([`SO_PEERCRED`](UnixStream::peer_cred),
//! read before a byte is sent), else it uses TCP.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// A connected stream socket of either family.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The abstract Unix socket name of the agent at `addr`.
pub fn local_name(addr: SocketAddr) -> String {
    format!("awesomedml/agent/{addr}")
}

/// The abstract address of the agent at `addr`'s local socket.
#[cfg(target_os = "linux")]
pub fn local_addr(addr: SocketAddr) -> io::Result<tokio::net::unix::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(local_name(addr).as_bytes()).map(Into::into)
}

/// Whether a local socket served by `server_uid` may carry this process's
/// traffic: the server runs as this process's user (`my_uid`) or as root.
pub fn trusted_server(server_uid: u32, my_uid: u32) -> bool {
    server_uid == my_uid || server_uid == 0
}

/// Connects to the local socket of the agent at `addr`, and checks that the
/// process holding it runs as this user or root ([`trusted_server`]) before
/// anything is sent.
#[cfg(target_os = "linux")]
pub async fn connect_local(addr: SocketAddr) -> io::Result<Stream> {
    let s = UnixStream::connect_addr(&local_addr(addr)?).await?;
    let cred = s.peer_cred()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !trusted_server(cred.uid(), me) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the local socket @{} is held by uid {} (pid {}), neither this user ({me}) nor root",
                local_name(addr),
                cred.uid(),
                cred.pid().unwrap_or(0)
            ),
        ));
    }
    let s = Stream::Unix(s);
    s.widen_send_buffer();
    Ok(s)
}

/// Connects to the agent at `addr` through its local socket if it runs on this
/// host and is trusted ([`connect_local`]), else over TCP.
pub async fn connect_near(addr: SocketAddr) -> io::Result<Stream> {
    #[cfg(target_os = "linux")]
    if let Ok(s) = connect_local(addr).await {
        return Ok(s);
    }
    connect_tcp(addr).await
}

/// Connects over TCP, without Nagle delays.
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<Stream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(Stream::Tcp(s))
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

/// Send buffer of a local socket carrying bulk data. The default (about
/// 200 KiB) stopped a replica's `sendfile` every few hundred KiB to wait for
/// the reader; 4 MiB made cold 64 MiB gets about 15 % faster.
pub const LOCAL_SEND_BUFFER: usize = 4 << 20;

impl Stream {
    pub fn is_local(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Raises a local socket's send buffer to [`LOCAL_SEND_BUFFER`]: past
    /// `net.core.wmem_max` when privileged (`SO_SNDBUFFORCE`), else up to it.
    /// TCP sizes its own; a failure only leaves the default.
    pub fn widen_send_buffer(&self) {
        #[cfg(target_os = "linux")]
        if let Stream::Unix(s) = self {
            use std::os::fd::AsRawFd;
            let set = |opt| {
                let v = LOCAL_SEND_BUFFER as libc::c_int;
                // SAFETY: setsockopt on an open descriptor with an int value.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&v as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    ) == 0
                }
            };
            let _ = set(libc::SO_SNDBUFFORCE) || set(libc::SO_SNDBUF);
        }
    }

    /// A reading and a writing half that can be used at the same time.
    pub fn split(&mut self) -> (StreamRead<'_>, StreamWrite<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (StreamRead::Tcp(r), StreamWrite::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (StreamRead::Unix(r), StreamWrite::Unix(w))
            }
        }
    }

    /// Whether the peer has closed, without blocking: a read would return
    /// end-of-file or an error now.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Both families' halves and the stream itself implement the tokio traits by
/// delegating to the variant.
macro_rules! delegate_io {
    ($ty:ty, read) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
    ($ty:ty, write) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Unix(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum StreamRead<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Unix(unix::ReadHalf<'a>),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum StreamWrite<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Unix(unix::WriteHalf<'a>),
}

delegate_io!(Stream, read);
delegate_io!(Stream, write);
delegate_io!(StreamRead<'_>, read);
delegate_io!(StreamWrite<'_>, write);

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_agent_on_this_host_is_reached_through_its_local_socket_else_over_tcp() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        // Nothing on the local name yet: TCP.
        let s = connect_near(addr).await.unwrap();
        assert!(!s.is_local());
        // Held by this process: this user.
        let local = tokio::net::UnixListener::bind_addr(&local_addr(addr).unwrap()).unwrap();
        let mut s = connect_near(addr).await.unwrap();
        assert!(s.is_local());
        let (mut served, _) = local.accept().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        served.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn only_a_local_server_of_this_user_or_root_is_trusted() {
        assert!(trusted_server(1000, 1000));
        assert!(trusted_server(0, 1000));
        assert!(trusted_server(0, 0));
        assert!(!trusted_server(1001, 1000));
        assert!(!trusted_server(1000, 0));
    }
}
