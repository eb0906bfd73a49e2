//! Authenticated connections (TCP, or a Unix socket on one host; see
//! [`crate::stream`]): [`Conn`] runs the handshake of
//! [`crate::auth::handshake`] and then seals every frame with a 16-byte
//! keyed-BLAKE3 tag over its per-direction sequence number and body.
//!
//! ```text
//! +-------------------+------+------------------------------+
//! | len = n + 16 (BE) | body | tag(seq, body), 16 bytes     |
//! +-------------------+------+------------------------------+
//! ```
//!
//! A frame that fails its tag closes the connection. The one exception is
//! the bulk data of an SDFS file (`Data(Write)` and `Data(Read)` streams),
//! sent raw through [`Conn::raw`] so a get can use sendfile: its bytes are
//! authenticated by the file's BLAKE3 checksum, which travels in a sealed
//! frame and is checked before the version becomes visible anywhere.

use crate::auth::{self, AuthContext, Counters, TAG_LEN, handshake};
use crate::error::{Error, Result};
use crate::framing::read_frame;
use crate::stream::{self, Stream, StreamRead, StreamWrite};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Time a client gets to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An agent's default for a connection it accepted (`api.handshake_timeout`):
/// short, as an unauthenticated peer holds a handshake place meanwhile.
pub const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames up to this size go out in one write.
const COALESCE: usize = 64 * 1024;

/// Reads sealed frames.
pub trait FrameRead {
    /// One frame's body; `Ok(None)` when the peer closed between frames.
    fn read_frame(&mut self, max: usize) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
}

/// Writes sealed frames.
pub trait FrameWrite {
    /// Seals, writes and flushes one frame.
    fn write_frame(&mut self, bytes: &[u8], max: usize) -> impl Future<Output = Result<()>> + Send;
}

/// One direction's key and next sequence number, and where a forged frame
/// is counted.
struct Dir {
    key: [u8; 32],
    seq: u64,
    counters: Arc<Counters>,
}

impl Dir {
    fn tag(&mut self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.seq.to_le_bytes());
        h.update(body);
        self.seq += 1;
        h.finalize().as_bytes()[..TAG_LEN]
            .try_into()
            .expect("16 of 32")
    }
}

/// An authenticated connection to or from an agent.
pub struct Conn {
    stream: Stream,
    peer: SocketAddr,
    tx: Dir,
    rx: Dir,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({})", self.peer)
    }
}

impl Conn {
    /// Connects to an agent over TCP with the process's cluster key (no
    /// Nagle delays).
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        Self::handshake_on(addr, stream::connect_tcp(addr).await).await
    }

    /// Like [`Conn::connect`], but through the agent's local socket when it
    /// runs on this host and is trusted ([`stream::connect_local`]): for a
    /// client's bulk data. A local socket that is refused, or whose handshake
    /// fails, is left for TCP.
    pub async fn connect_near(addr: SocketAddr) -> Result<Conn> {
        #[cfg(target_os = "linux")]
        if let Ok(s) = stream::connect_local(addr).await
            && let Ok(c) = Self::client(s, addr, auth::installed()?).await
        {
            return Ok(c);
        }
        Self::connect(addr).await
    }

    /// The client handshake with the process's key on a fresh connection to `addr`.
    async fn handshake_on(addr: SocketAddr, s: std::io::Result<Stream>) -> Result<Conn> {
        let s = s.map_err(|reason| Error::Connect {
            addr: addr.to_string(),
            reason,
        })?;
        Self::client(s, addr, auth::installed()?).await
    }

    /// The client side of the handshake on a stream connected to `peer`.
    pub async fn client(mut stream: Stream, peer: SocketAddr, auth: &AuthContext) -> Result<Conn> {
        let key = auth.key();
        let c = handshake::nonce()?;
        let shake = async {
            stream.write_all(&handshake::hello(&c)).await?;
            let mut reply = [0u8; handshake::REPLY_LEN];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = match tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await {
            Ok(Ok(r)) => r,
            // Before the proofs the agent may just be going away (killed mid-accept):
            // a connection failure, which callers may retry elsewhere.
            Ok(Err(e)) => {
                let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(
                        e.kind(),
                        "it closed the connection during the handshake (stopping, or not an AwesomeDML agent of this version)",
                    )
                } else {
                    e
                };
                return Err(Error::Connect {
                    addr: peer.to_string(),
                    reason,
                });
            }
            Err(_) => {
                return Err(Error::Timeout {
                    addr: peer.to_string(),
                    timeout: HANDSHAKE_TIMEOUT,
                });
            }
        };
        let Some(s) = handshake::check_reply(key, &c, &reply) else {
            auth::bump(&auth.counters().tcp_handshake_failed);
            return Err(Error::Auth {
                addr: peer.to_string(),
                reason: format!(
                    "it does not hold cluster key {} (check --key-file, DML_KEY_FILE or security.key_file)",
                    key.fingerprint()
                ),
            });
        };
        stream
            .write_all(&handshake::client_proof(key, &c, &s))
            .await?;
        let (up, down) = handshake::frame_keys(key, &c, &s);
        Ok(Conn::new(stream, peer, up, down, auth))
    }

    /// The server side of the handshake; a failure is counted and the
    /// caller drops the connection.
    pub async fn accept(stream: impl Into<Stream>, auth: &AuthContext) -> Result<Conn> {
        Self::accept_within(stream, auth, HANDSHAKE_TIMEOUT).await
    }

    /// [`Conn::accept`] with `limit` for the whole handshake.
    pub async fn accept_within(
        stream: impl Into<Stream>,
        auth: &AuthContext,
        limit: Duration,
    ) -> Result<Conn> {
        let key = auth.key();
        let mut stream = stream.into();
        // A local client has no address; it is logged as 0.0.0.0:0.
        let peer = match &stream {
            Stream::Tcp(s) => s.peer_addr()?,
            Stream::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let shake = async {
            let mut hello = [0u8; handshake::HELLO_LEN];
            stream.read_exact(&mut hello).await?;
            let Some(c) = handshake::parse_hello(&hello) else {
                return Ok(None);
            };
            let s = handshake::nonce()?;
            stream.write_all(&handshake::reply(key, &c, &s)).await?;
            let mut proof = [0u8; TAG_LEN];
            stream.read_exact(&mut proof).await?;
            Ok::<_, Error>(handshake::check_client_proof(key, &c, &s, &proof).then_some((c, s)))
        };
        let fail = |reason: &str| {
            auth::bump(&auth.counters().tcp_handshake_failed);
            Error::Auth {
                addr: peer.to_string(),
                reason: reason.into(),
            }
        };
        match tokio::time::timeout(limit, shake).await {
            Ok(Ok(Some((c, s)))) => {
                let (up, down) = handshake::frame_keys(key, &c, &s);
                Ok(Conn::new(stream, peer, down, up, auth))
            }
            Ok(Ok(None)) => Err(fail("its first bytes are not an AwesomeDML hello")),
            Ok(Err(_)) => Err(fail("it broke off the handshake")),
            Err(_) => Err(fail("it did not finish the handshake in time")),
        }
    }

    /// A connection sending with key `tx` and receiving with `rx`.
    fn new(
        stream: Stream,
        peer: SocketAddr,
        tx: [u8; 32],
        rx: [u8; 32],
        auth: &AuthContext,
    ) -> Conn {
        let dir = |key| Dir {
            key,
            seq: 0,
            counters: auth.shared_counters(),
        };
        Conn {
            stream,
            peer,
            tx: dir(tx),
            rx: dir(rx),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket under the sealed frames, for the raw bulk data of an SDFS
    /// file (see the module docs). Raw bytes do not advance the sequence.
    pub fn raw(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// A reading and a writing half that can be used at the same time.
    pub fn split(&mut self) -> (ConnReader<'_>, ConnWriter<'_>) {
        let (r, w) = self.stream.split();
        (
            ConnReader {
                r,
                dir: &mut self.rx,
                peer: self.peer,
            },
            ConnWriter {
                w,
                dir: &mut self.tx,
            },
        )
    }
}

async fn read_sealed<R: AsyncRead + Unpin + Send>(
    r: &mut R,
    dir: &mut Dir,
    peer: SocketAddr,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    let Some(mut frame) = read_frame(r, max.saturating_add(TAG_LEN)).await? else {
        return Ok(None);
    };
    if frame.len() < TAG_LEN {
        auth::bump(&dir.counters.tcp_forged);
        return Err(Error::Auth {
            addr: peer.to_string(),
            reason: format!("a frame of {} bytes has no room for its tag", frame.len()),
        });
    }
    let tag = frame.split_off(frame.len() - TAG_LEN);
    if !auth::ct_eq(&dir.tag(&frame), &tag) {
        auth::bump(&dir.counters.tcp_forged);
        return Err(Error::Auth {
            addr: peer.to_string(),
            reason: "a frame's tag does not verify (forged, replayed or corrupted)".into(),
        });
    }
    Ok(Some(frame))
}

async fn write_sealed<W: AsyncWrite + Unpin + Send>(
    w: &mut W,
    dir: &mut Dir,
    bytes: &[u8],
    max: usize,
) -> Result<()> {
    if bytes.len() > max {
        return Err(Error::FrameTooLarge {
            len: bytes.len(),
            max,
        });
    }
    let tag = dir.tag(bytes);
    let len = ((bytes.len() + TAG_LEN) as u32).to_be_bytes();
    if bytes.len() <= COALESCE {
        let mut out = Vec::with_capacity(4 + bytes.len() + TAG_LEN);
        out.extend_from_slice(&len);
        out.extend_from_slice(bytes);
        out.extend_from_slice(&tag);
        w.write_all(&out).await?;
    } else {
        w.write_all(&len).await?;
        w.write_all(bytes).await?;
        w.write_all(&tag).await?;
    }
    w.flush().await?;
    Ok(())
}

impl FrameRead for Conn {
    async fn read_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        read_sealed(&mut self.stream, &mut self.rx, self.peer, max).await
    }
}

impl FrameWrite for Conn {
    async fn write_frame(&mut self, bytes: &[u8], max: usize) -> Result<()> {
        write_sealed(&mut self.stream, &mut self.tx, bytes, max).await
    }
}

/// The reading half of a [`Conn`].
pub struct ConnReader<'a> {
    r: StreamRead<'a>,
    dir: &'a mut Dir,
    peer: SocketAddr,
}

/// The writing half of a [`Conn`].
pub struct ConnWriter<'a> {
    w: StreamWrite<'a>,
    dir: &'a mut Dir,
}

impl<'a> ConnReader<'a> {
    /// The socket's reading half, to notice a close without reading a frame.
    pub fn raw(&mut self) -> &mut StreamRead<'a> {
        &mut self.r
    }
}

impl FrameRead for ConnReader<'_> {
    async fn read_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        read_sealed(&mut self.r, self.dir, self.peer, max).await
    }
}

impl FrameWrite for ConnWriter<'_> {
    async fn write_frame(&mut self, bytes: &[u8], max: usize) -> Result<()> {
        write_sealed(&mut self.w, self.dir, bytes, max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterKey;
    use tokio::net::TcpListener;

    async fn pair(
        server_key: AuthContext,
        client_key: AuthContext,
    ) -> (Result<Conn>, Result<Conn>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            Conn::accept(s, &server_key).await
        });
        let c = stream::connect_tcp(addr).await.unwrap();
        let client = Conn::client(c, addr, &client_key).await;
        (server.await.unwrap(), client)
    }

    /// The same over a Unix socket pair, as through an agent's local socket.
    async fn local_pair(
        server_key: AuthContext,
        client_key: AuthContext,
    ) -> (Result<Conn>, Result<Conn>) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move { Conn::accept(a, &server_key).await });
        let client =
            Conn::client(b.into(), SocketAddr::from(([127, 0, 0, 1], 1)), &client_key).await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn a_local_connection_runs_the_same_handshake_and_seals_its_frames() {
        let (server, client) = local_pair(key(3), key(3)).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        assert!(client.raw().is_local());
        client
            .write_frame(b"over the local socket", 1024)
            .await
            .unwrap();
        let got = server.read_frame(1024).await.unwrap().unwrap();
        assert_eq!(got, b"over the local socket");
        let (server, client) = local_pair(key(3), key(4)).await;
        assert!(matches!(client, Err(Error::Auth { .. })), "{client:?}");
        assert!(server.is_err());
    }

    fn key(b: u8) -> AuthContext {
        AuthContext::new(ClusterKey::from_bytes([b; 32]))
    }

    #[tokio::test]
    async fn frames_flow_both_ways_and_split_halves_keep_the_sequence() {
        let (s, c) = pair(key(1), key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_frame(b"hello", 64).await.unwrap();
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"hello");
        let big = vec![7u8; 200_000];
        s.write_frame(&big, 1 << 20).await.unwrap();
        assert_eq!(c.read_frame(1 << 20).await.unwrap().unwrap(), big);
        {
            let (mut r, mut w) = c.split();
            w.write_frame(b"x", 64).await.unwrap();
            s.write_frame(b"y", 64).await.unwrap();
            assert_eq!(r.read_frame(64).await.unwrap().unwrap(), b"y");
        }
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"x");
        assert!(matches!(
            c.write_frame(&[0u8; 65], 64).await,
            Err(Error::FrameTooLarge { .. })
        ));
        drop(c);
        assert!(s.read_frame(64).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_wrong_key_fails_the_handshake_on_both_sides() {
        let (s, c) = pair(key(1), key(2)).await;
        let e = c.unwrap_err().to_string();
        assert!(e.contains("does not hold cluster key"), "{e}");
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn a_failed_handshake_is_counted_in_the_context_that_refused_it_only() {
        let (server, client, bystander) = (key(1), key(2), key(1));
        let (s, c) = pair(server.clone(), client.clone()).await;
        assert!(s.is_err() && c.is_err());
        let failed = |a: &AuthContext| a.counters().snapshot().tcp_handshake_failed;
        assert_eq!(failed(&server), 1);
        assert_eq!(failed(&client), 1);
        assert_eq!(failed(&bystander), 0);
    }

    /// `body` sealed as `c`'s first frame, without sending it.
    async fn first_frame(c: &Conn, body: &[u8]) -> Vec<u8> {
        let mut dir = Dir {
            key: c.tx.key,
            seq: 0,
            counters: c.tx.counters.clone(),
        };
        let mut sealed = Vec::new();
        write_sealed(&mut sealed, &mut dir, body, 64).await.unwrap();
        sealed
    }

    #[tokio::test]
    async fn a_tampered_or_replayed_frame_is_refused() {
        let (s, c) = pair(key(1), key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        // A frame sealed for sequence 0, sent raw twice: the second is a replay.
        let sealed = first_frame(&c, b"once").await;
        c.raw().write_all(&sealed).await.unwrap();
        c.raw().write_all(&sealed).await.unwrap();
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"once");
        let e = s.read_frame(64).await.unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        let (s, c) = pair(key(1), key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        let mut sealed = first_frame(&c, b"body").await;
        sealed[5] ^= 1;
        c.raw().write_all(&sealed).await.unwrap();
        assert!(s.read_frame(64).await.is_err());
    }

    #[tokio::test]
    async fn junk_instead_of_a_hello_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            Conn::accept(s, &key(1)).await
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let e = server.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("not an AwesomeDML hello"), "{e}");
    }
}

/// An idle connection older than this is not reused (agents close theirs
/// after 300 s).
const IDLE_REUSE: Duration = Duration::from_secs(60);

/// Idle connections to agents by address, reused while they stay open: an
/// agent serves one request after another on a connection, data-path ones
/// included. Only a connection whose last exchange ended cleanly goes back.
#[derive(Debug)]
pub struct IdleConns {
    max: usize,
    idle: Mutex<Vec<(SocketAddr, Conn, Instant)>>,
}

impl IdleConns {
    /// A pool of at most `max` connections (all addresses together).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            idle: Mutex::default(),
        }
    }

    /// An idle connection to `addr` that the agent has not closed.
    pub fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = g.iter().rposition(|(a, _, _)| *a == addr) {
            let (_, mut s, since) = g.swap_remove(i);
            let mut probe = [0u8; 1];
            // Nothing to read and no end of stream: still open and in step.
            let open = matches!(s.raw().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if open && since.elapsed() < IDLE_REUSE {
                return Some(s);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly.
    pub fn put(&self, addr: SocketAddr, s: Conn) {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= self.max {
            g.remove(0);
        }
        g.push((addr, s, Instant::now()));
    }
}
