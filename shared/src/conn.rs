//! Authenticated connections (TCP, or a Unix socket on one host; see
//! [`crate::stream`]): [`Conn`] runs the Noise handshake of
//! [`crate::auth::handshake`], which proves the cluster key both ways, and
//! then protects every byte in one of two ways ([`Protection`]):
//!
//! - **Encrypted** (TCP, `security.encrypt_tcp = true`, the default): the
//!   whole byte stream after the handshake, frames and the raw bulk data of
//!   SDFS files alike, travels in Noise transport messages
//!   ([`crate::channel`]), AES-256-GCM with per-direction keys and nonces.
//!   Frames inside are plain length-prefixed frames ([`crate::framing`]).
//! - **Authenticated** (the local Unix socket, whose server the client checks
//!   by `SO_PEERCRED` before sending anything; and TCP with
//!   `security.encrypt_tcp = false`, for side-by-side measurement): frames in
//!   clear, each sealed with a 16-byte keyed-BLAKE3 tag over its
//!   per-direction sequence number and body, keys derived from the handshake:
//!
//! ```text
//! +-------------------+------+------------------------------+
//! | len = n + 16 (BE) | body | tag(seq, body), 16 bytes     |
//! +-------------------+------+------------------------------+
//! ```
//!
//!   The bulk data of an SDFS file (`Data(Write)` and `Data(Read)` streams)
//!   goes raw through [`Conn::raw`], so a get can use `sendfile`: its bytes
//!   are authenticated by the file's BLAKE3 checksum, which travels in a
//!   sealed frame and is checked before the version becomes visible anywhere.
//!   A same-host client skips encryption this way and keeps the fast path.
//!
//! A frame or message that fails its tag closes the connection and is
//! counted (`tcp_forged`).

use crate::auth::handshake::{self, Answer, HandshakeError, Protection, Session};
use crate::auth::{self, AuthContext, ClusterKey, Counters, Role, TAG_LEN};
use crate::channel::{self, Channel, ChannelRead, ChannelWrite};
use crate::error::{Error, Result};
use crate::framing::{self, read_frame};
use crate::stream::{self, Stream};
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

/// Reads protected frames.
pub trait FrameRead {
    /// One frame's body; `Ok(None)` when the peer closed between frames.
    fn read_frame(&mut self, max: usize) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
}

/// Writes protected frames.
pub trait FrameWrite {
    /// Seals (or encrypts), writes and flushes one frame.
    fn write_frame(&mut self, bytes: &[u8], max: usize) -> impl Future<Output = Result<()>> + Send;
}

/// One direction's frame key and next sequence number, and where a forged
/// frame is counted (authenticated-only connections).
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

/// The frame tags of an authenticated-only connection.
struct Tags {
    tx: Dir,
    rx: Dir,
}

/// An authenticated connection to or from an agent.
pub struct Conn {
    chan: Channel,
    peer: SocketAddr,
    /// `None` when the channel is encrypted: frames need no tag of their own.
    tags: Option<Tags>,
    /// What the other end's key lets it do (the server's side; a client
    /// sees [`Role::Peer`]: it authenticated the agent).
    role: Role,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({})", self.peer)
    }
}

/// The protection `auth` asks for on `stream`: the local socket is never
/// encrypted (see the module docs).
fn protection_for(stream: &Stream, auth: &AuthContext) -> Protection {
    if stream.is_local() || !auth.encrypt_tcp() {
        Protection::Authenticated
    } else {
        Protection::Encrypted
    }
}

/// The operator's words for a refused handshake.
fn reason(e: &HandshakeError) -> String {
    match e {
        HandshakeError::WrongKey { .. } => {
            format!("{e} (check --key-file, DML_KEY_FILE or security.key_file)")
        }
        _ => e.to_string(),
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
    /// client's bulk data, which then skips encryption (the fast path). A
    /// local socket that is refused, or whose handshake fails, is left for TCP.
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
        let protection = protection_for(&stream, auth);
        let fail = |e: HandshakeError| {
            auth::bump(&auth.counters().tcp_handshake_failed);
            Error::Auth {
                addr: peer.to_string(),
                reason: reason(&e),
            }
        };
        let key = auth.key();
        let (init, hello) = handshake::hello(&key, protection).map_err(fail)?;
        let shake = async {
            stream.write_all(&hello).await?;
            let mut status = [0u8; 1];
            stream.read_exact(&mut status).await?;
            if status[0] != handshake::STATUS_OK {
                return Ok(Err(status[0]));
            }
            let mut body = [0u8; handshake::REPLY_BODY_LEN];
            stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Ok(body))
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
        let body = match reply {
            Ok(body) => body,
            Err(status) => return Err(fail(init.refused(status))),
        };
        let (session, confirm) = init.finish(&body).map_err(fail)?;
        stream.write_all(&confirm).await?;
        Ok(Conn::established(
            stream,
            peer,
            (session, &key, Role::Peer),
            protection,
            auth,
            true,
        ))
    }

    /// The server side of the handshake; a failure is counted and the
    /// caller drops the connection.
    pub async fn accept(stream: impl Into<Stream>, auth: &AuthContext) -> Result<Conn> {
        Self::accept_within(stream, auth, HANDSHAKE_TIMEOUT).await
    }

    /// [`Conn::accept`] with `limit` for the whole handshake. Bounded work
    /// before the client proves the key: 53 bytes read, one hello decrypted,
    /// one ephemeral key made and two X25519 operations.
    pub async fn accept_within(
        stream: impl Into<Stream>,
        auth: &AuthContext,
        limit: Duration,
    ) -> Result<Conn> {
        let ring = auth.keyring();
        let mut stream = stream.into();
        // A local client has no address; it is logged as 0.0.0.0:0.
        let peer = match &stream {
            Stream::Tcp(s) => s.peer_addr()?,
            Stream::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let protection = protection_for(&stream, auth);
        let shake = async {
            let mut hello = [0u8; handshake::HELLO_LEN];
            stream.read_exact(&mut hello[..4]).await?;
            if let Err(e) = handshake::check_magic(&hello[..4]) {
                return Ok(Err(e));
            }
            stream.read_exact(&mut hello[4..]).await?;
            match handshake::respond(ring.candidates(), &hello, protection) {
                Answer::Refuse { reply, error } => {
                    if let Some(status) = reply {
                        // Best effort: the client's error then names the key.
                        let _ = stream.write_all(&[status]).await;
                    }
                    Ok(Err(error))
                }
                Answer::Reply {
                    reply,
                    session,
                    key,
                    role,
                } => {
                    stream.write_all(&reply).await?;
                    let session = match session {
                        Ok(s) => s,
                        Err(e) => return Ok(Err(e)),
                    };
                    let mut confirm = [0u8; handshake::CONFIRM_LEN];
                    stream.read_exact(&mut confirm).await?;
                    if !handshake::check_confirm(&session, &confirm) {
                        return Ok(Err(HandshakeError::Malformed {
                            len: handshake::CONFIRM_LEN,
                        }));
                    }
                    Ok::<_, std::io::Error>(Ok((session, key, role)))
                }
            }
        };
        let fail = |reason: String| {
            auth::bump(&auth.counters().tcp_handshake_failed);
            Error::Auth {
                addr: peer.to_string(),
                reason,
            }
        };
        match tokio::time::timeout(limit, shake).await {
            Ok(Ok(Ok((session, key, role)))) => Ok(Conn::established(
                stream,
                peer,
                (session, &key, role),
                protection,
                auth,
                false,
            )),
            Ok(Ok(Err(HandshakeError::Malformed {
                len: handshake::CONFIRM_LEN,
            }))) => Err(fail(
                "its confirm does not verify (a replayed hello, or not an AwesomeDML client)"
                    .into(),
            )),
            Ok(Ok(Err(e))) => Err(fail(e.to_string())),
            Ok(Err(_)) => Err(fail("it broke off the handshake".into())),
            Err(_) => Err(fail("it did not finish the handshake in time".into())),
        }
    }

    /// A connection after its handshake, on the side of the `client` or the
    /// server: the session, the key it was made with, and the peer's role.
    fn established(
        stream: Stream,
        peer: SocketAddr,
        (session, key, role): (Session, &ClusterKey, Role),
        protection: Protection,
        auth: &AuthContext,
        client: bool,
    ) -> Conn {
        let counters = auth.shared_counters();
        match protection {
            Protection::Encrypted => {
                // The client's confirm used its nonce 0.
                let (tx, rx) = if client { (1, 0) } else { (0, 1) };
                Conn {
                    chan: Channel::encrypted(stream, session.transport, tx, rx, counters),
                    peer,
                    tags: None,
                    role,
                }
            }
            Protection::Authenticated => {
                let (up, down) = handshake::frame_keys(key, &session.hash);
                let (tx, rx) = if client { (up, down) } else { (down, up) };
                let dir = |key| Dir {
                    key,
                    seq: 0,
                    counters: counters.clone(),
                };
                Conn {
                    tags: Some(Tags {
                        tx: dir(tx),
                        rx: dir(rx),
                    }),
                    chan: Channel::clear(stream, counters.clone()),
                    peer,
                    role,
                }
            }
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// What the other end's key lets it do (see [`Role`]).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this connection's bytes are encrypted (TCP with
    /// `security.encrypt_tcp`).
    pub fn is_encrypted(&self) -> bool {
        self.chan.is_encrypted()
    }

    /// The byte stream under the frames, for the raw bulk data of an SDFS
    /// file (see the module docs): encrypted on TCP, the socket itself on
    /// the local socket (where `sendfile` may write to
    /// [`Channel::socket`]). Raw bytes do not advance the frame sequence.
    pub fn raw(&mut self) -> &mut Channel {
        &mut self.chan
    }

    /// A reading and a writing half that can be used at the same time.
    pub fn split(&mut self) -> (ConnReader<'_>, ConnWriter<'_>) {
        let (r, w) = self.chan.split();
        let (tx, rx) = match &mut self.tags {
            Some(t) => (Some(&mut t.tx), Some(&mut t.rx)),
            None => (None, None),
        };
        (
            ConnReader {
                r,
                dir: rx,
                peer: self.peer,
            },
            ConnWriter { w, dir: tx },
        )
    }
}

/// A frame's error with a forged Noise message told as an authentication
/// failure (already counted by the channel).
fn forged_as_auth(e: Error, peer: SocketAddr) -> Error {
    match e {
        Error::Io(io) if channel::is_forged(&io) => Error::Auth {
            addr: peer.to_string(),
            reason: channel::Forged.to_string(),
        },
        e => e,
    }
}

async fn read_protected<R: AsyncRead + Unpin + Send>(
    r: &mut R,
    dir: Option<&mut Dir>,
    peer: SocketAddr,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    match dir {
        Some(dir) => read_sealed(r, dir, peer, max).await,
        None => read_frame(r, max)
            .await
            .map_err(|e| forged_as_auth(e, peer)),
    }
}

async fn write_protected<W: AsyncWrite + Unpin + Send>(
    w: &mut W,
    dir: Option<&mut Dir>,
    bytes: &[u8],
    max: usize,
) -> Result<()> {
    match dir {
        Some(dir) => write_sealed(w, dir, bytes, max).await,
        None => framing::write_frame(w, bytes, max).await,
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
            reason: channel::Forged.to_string(),
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
        let dir = self.tags.as_mut().map(|t| &mut t.rx);
        read_protected(&mut self.chan, dir, self.peer, max).await
    }
}

impl FrameWrite for Conn {
    async fn write_frame(&mut self, bytes: &[u8], max: usize) -> Result<()> {
        let dir = self.tags.as_mut().map(|t| &mut t.tx);
        write_protected(&mut self.chan, dir, bytes, max).await
    }
}

/// The reading half of a [`Conn`].
pub struct ConnReader<'a> {
    r: ChannelRead<'a>,
    dir: Option<&'a mut Dir>,
    peer: SocketAddr,
}

/// The writing half of a [`Conn`].
pub struct ConnWriter<'a> {
    w: ChannelWrite<'a>,
    dir: Option<&'a mut Dir>,
}

impl<'a> ConnReader<'a> {
    /// The byte stream's reading half, to notice a close without reading a frame.
    pub fn raw(&mut self) -> &mut ChannelRead<'a> {
        &mut self.r
    }
}

impl FrameRead for ConnReader<'_> {
    async fn read_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        read_protected(&mut self.r, self.dir.as_deref_mut(), self.peer, max).await
    }
}

impl FrameWrite for ConnWriter<'_> {
    async fn write_frame(&mut self, bytes: &[u8], max: usize) -> Result<()> {
        write_protected(&mut self.w, self.dir.as_deref_mut(), bytes, max).await
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
        assert!(!client.is_encrypted() && !server.is_encrypted());
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
        AuthContext::new(ClusterKey::from_bytes([b; 32])).with_encrypt_tcp(true)
    }

    fn clear_key(b: u8) -> AuthContext {
        AuthContext::new(ClusterKey::from_bytes([b; 32])).with_encrypt_tcp(false)
    }

    async fn frames_flow_both_ways(s: Result<Conn>, c: Result<Conn>) {
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_frame(b"hello", 64).await.unwrap();
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"hello");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.write_frame(&big, 4 << 20).await.unwrap();
        assert_eq!(c.read_frame(4 << 20).await.unwrap().unwrap(), big);
        {
            let (mut r, mut w) = c.split();
            w.write_frame(b"x", 64).await.unwrap();
            s.write_frame(b"y", 64).await.unwrap();
            assert_eq!(r.read_frame(64).await.unwrap().unwrap(), b"y");
        }
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"x");
        // Raw bytes between frames, as the SDFS data path sends them.
        c.raw().write_all(b"raw bulk bytes").await.unwrap();
        c.raw().flush().await.unwrap();
        c.write_frame(b"after", 64).await.unwrap();
        let mut raw = [0u8; 14];
        s.raw().read_exact(&mut raw).await.unwrap();
        assert_eq!(&raw, b"raw bulk bytes");
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"after");
        assert!(matches!(
            c.write_frame(&[0u8; 65], 64).await,
            Err(Error::FrameTooLarge { .. })
        ));
        drop(c);
        assert!(s.read_frame(64).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frames_flow_both_ways_and_split_halves_keep_the_sequence() {
        let (s, c) = pair(key(1), key(1)).await;
        assert!(c.as_ref().unwrap().is_encrypted());
        frames_flow_both_ways(s, c).await;
        let (s, c) = pair(clear_key(1), clear_key(1)).await;
        assert!(!c.as_ref().unwrap().is_encrypted());
        frames_flow_both_ways(s, c).await;
    }

    #[tokio::test]
    async fn bytes_written_outside_the_messages_arrive_as_they_are_between_frames() {
        for encrypted in [true, false] {
            let k = if encrypted { key(5) } else { clear_key(5) };
            let (s, c) = pair(k.clone(), k).await;
            let (mut s, mut c) = (s.unwrap(), c.unwrap());
            assert_eq!(c.is_encrypted(), encrypted);
            let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
            // A frame, bytes outside the messages (as a sealed put's frame),
            // then frames again: the reader's read-ahead holds some of each.
            c.write_frame(b"request", 64).await.unwrap();
            framing::write_frame(&mut c.raw().bypass(), &big, 4 << 20)
                .await
                .unwrap();
            c.write_frame(b"trailer", 64).await.unwrap();
            framing::write_frame(&mut c.raw().bypass(), b"again", 64)
                .await
                .unwrap();
            c.write_frame(b"end", 64).await.unwrap();
            assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"request");
            let got = read_frame(&mut s.raw().bypass(), 4 << 20).await.unwrap();
            assert!(got.unwrap() == big, "encrypted {encrypted}");
            assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"trailer");
            let got = read_frame(&mut s.raw().bypass(), 64).await.unwrap();
            assert_eq!(got.unwrap(), b"again");
            assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"end");
        }
    }

    #[tokio::test]
    async fn a_wrong_key_fails_the_handshake_on_both_sides() {
        let (s, c) = pair(key(1), key(2)).await;
        let e = c.unwrap_err().to_string();
        assert!(e.contains("does not hold cluster key"), "{e}");
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn ends_that_disagree_on_encryption_fail_naming_the_setting() {
        let (s, c) = pair(key(1), clear_key(1)).await;
        let c = c.unwrap_err().to_string();
        assert!(
            c.contains("security.encrypt_tcp is false here and true at the other end"),
            "{c}"
        );
        let s = s.unwrap_err().to_string();
        assert!(s.contains("security.encrypt_tcp is true here"), "{s}");
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
        let tx = &c
            .tags
            .as_ref()
            .expect("an authenticated-only connection")
            .tx;
        let mut dir = Dir {
            key: tx.key,
            seq: 0,
            counters: tx.counters.clone(),
        };
        let mut sealed = Vec::new();
        write_sealed(&mut sealed, &mut dir, body, 64).await.unwrap();
        sealed
    }

    #[tokio::test]
    async fn a_tampered_or_replayed_frame_is_refused() {
        let (s, c) = pair(clear_key(1), clear_key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        // A frame sealed for sequence 0, sent raw twice: the second is a replay.
        let sealed = first_frame(&c, b"once").await;
        c.raw().write_all(&sealed).await.unwrap();
        c.raw().write_all(&sealed).await.unwrap();
        assert_eq!(s.read_frame(64).await.unwrap().unwrap(), b"once");
        let e = s.read_frame(64).await.unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        let (s, c) = pair(clear_key(1), clear_key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        let mut sealed = first_frame(&c, b"body").await;
        sealed[5] ^= 1;
        c.raw().write_all(&sealed).await.unwrap();
        assert!(s.read_frame(64).await.is_err());
    }

    #[tokio::test]
    async fn a_forged_encrypted_message_is_refused_counted_and_ends_the_stream() {
        let server = key(1);
        let (s, c) = pair(server.clone(), key(1)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        // A well-formed message length and 40 bytes the sender never sealed.
        let mut forged = 40u16.to_be_bytes().to_vec();
        forged.extend([7u8; 40]);
        c.raw().socket().write_all(&forged).await.unwrap();
        let e = s.read_frame(64).await.unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e:?}");
        assert!(e.to_string().contains("does not verify"), "{e}");
        assert_eq!(server.counters().snapshot().tcp_forged, 1);
        assert!(s.read_frame(64).await.is_err(), "the stream stays failed");
    }

    #[tokio::test]
    async fn junk_or_the_old_handshake_instead_of_a_hello_is_refused() {
        for (junk, want) in [
            (
                &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
                "not an AwesomeDML hello",
            ),
            (&b"DLA1 an old client's nonce"[..], "protocol 1"),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                Conn::accept(s, &key(1)).await
            });
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(junk).await.unwrap();
            let e = server.await.unwrap().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
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
