//! The byte stream of a [`crate::conn::Conn`] after its handshake: on an
//! encrypted connection every byte written goes out in Noise transport
//! messages, and every byte read comes from one whose tag verified; on an
//! authenticated-only one (the local socket, or `security.encrypt_tcp =
//! false`) it is the socket itself.
//!
//! ```text
//! +----------------+--------------------------------------------+
//! | len (u16, BE)  | ciphertext of up to 65519 bytes | tag (16)  |
//! +----------------+--------------------------------------------+
//! ```
//!
//! Each direction counts its messages from its own nonce; a message whose
//! tag does not verify (forged, replayed, reordered or corrupted) is counted
//! in `tcp_forged` and fails the stream for good. Message boundaries carry
//! no meaning: frames and raw bulk data are written through the stream and
//! cut where the buffer fills or the writer flushes.

use crate::auth::handshake::{MAX_NOISE_MSG, NOISE_TAG_LEN};
use crate::auth::{self, Counters};
use crate::stream::{Stream, StreamRead, StreamWrite};
use snow::StatelessTransportState;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Plain bytes of one full transport message. A writer's large write goes
/// out in whole messages from its first byte (bytes buffered before it, such
/// as a frame's length, are sealed alone), so a reader whose reads start
/// there and take a multiple of this opens each message straight into its
/// buffer, without a copy.
pub const MAX_PLAIN: usize = MAX_NOISE_MSG - NOISE_TAG_LEN;
/// A whole message with its length.
const MAX_WIRE: usize = 2 + MAX_NOISE_MSG;
/// Full messages sealed before they are written in one system call, and
/// read from the socket at once.
const BATCH: usize = 4;
/// Bytes read from the socket at once.
const READ_AHEAD: usize = BATCH * MAX_WIRE;
/// Sealed bytes held before a write, and room to place the first message
/// of a batch (see [`PAGE`]).
const OUT_CAP: usize = BATCH * MAX_WIRE + PAGE;

/// Where a message's bytes land is chosen by their address modulo this.
/// Each message is copied once inside `snow` (the plain bytes into the
/// output before sealing in place, the sealed ones before opening in place)
/// and once more on reading (opened bytes to the caller). On x86 CPUs whose
/// `memcpy` uses `rep movsb` (AMD EPYC here), a copy whose destination lies
/// 1 to 15 bytes ahead of its source modulo 4 KiB runs at 2-3 GB/s instead
/// of 40 GB/s or more, and the addresses of these buffers fell there often
/// enough that copies took more time than AES-GCM. Placing the destination
/// at a chosen distance from the source keeps every such copy fast.
const PAGE: usize = 4096;
/// Distances (destination minus source, modulo [`PAGE`]) below this are
/// avoided: the slow span measured was 1 to 15 bytes, with a margin.
const SLOW_SPAN: usize = 64;
/// The distance a batch's first sealed message is placed at from its plain
/// bytes: the next messages from the same bytes land 18 bytes further each
/// (a wire message is 18 bytes longer than its plain bytes), all past
/// [`SLOW_SPAN`].
const SEAL_LEAD: usize = SLOW_SPAN;

/// The offset `o` below [`PAGE`] at which `base + o` lies `lead` bytes after
/// `src` modulo [`PAGE`].
fn placed(base: *const u8, src: *const u8, lead: usize) -> usize {
    (src as usize)
        .wrapping_add(lead)
        .wrapping_sub(base as usize)
        % PAGE
}

/// Whether copying from `src` to `dst` is in the slow span (see [`PAGE`]).
fn slow_copy(src: *const u8, dst: *const u8) -> bool {
    let d = (dst as usize).wrapping_sub(src as usize) % PAGE;
    (1..SLOW_SPAN).contains(&d)
}

/// Where [`Rx::open_next`] put a message's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// No whole message is buffered yet.
    Nothing,
    /// Into the caller's buffer.
    ToCaller,
    /// Into `plain`, to be copied out.
    ToPlain,
}

/// The error of a message whose tag did not verify; [`crate::conn`] turns
/// it into an authentication error.
#[derive(Debug, thiserror::Error)]
#[error("a frame's tag does not verify (forged, replayed or corrupted)")]
pub struct Forged;

/// Whether `e` is a [`Forged`] message's error.
pub fn is_forged(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Forged>())
}

/// The keys of an encrypted connection, shared by its two directions.
type Keys = Arc<StatelessTransportState>;

/// The sending direction's state.
pub(crate) struct Tx {
    keys: Option<Keys>,
    nonce: u64,
    /// Plain bytes not yet sealed.
    plain: Vec<u8>,
    /// Sealed messages not yet written: `out[out_pos..out_len]`. Allocated
    /// once, on the first message, and never cleared (no memset per message).
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
}

/// The receiving direction's state.
pub(crate) struct Rx {
    keys: Option<Keys>,
    nonce: u64,
    counters: Arc<Counters>,
    /// Bytes read from the socket, not yet opened: `input[in_pos..in_len]`.
    /// Allocated once, on the first read.
    input: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Opened bytes not yet returned: `plain[plain_pos..plain_len]`.
    plain: Vec<u8>,
    plain_pos: usize,
    plain_len: usize,
    failed: bool,
}

impl Tx {
    /// Free bytes after the sealed ones.
    fn room(&self) -> usize {
        if self.out_len == 0 {
            OUT_CAP - PAGE
        } else {
            OUT_CAP - self.out_len
        }
    }

    fn seal(&mut self, bytes_from_plain: bool, direct: &[u8]) -> io::Result<()> {
        let keys = self.keys.as_ref().expect("only an encrypted stream seals");
        let body: &[u8] = if bytes_from_plain {
            &self.plain
        } else {
            direct
        };
        if self.out.is_empty() {
            self.out = vec![0; OUT_CAP];
        }
        if self.out_len == 0 {
            // A batch's first message: placed for a fast copy (see `PAGE`).
            self.out_len = placed(self.out.as_ptr(), body.as_ptr(), SEAL_LEAD + PAGE - 2);
            self.out_pos = self.out_len;
        }
        let at = self.out_len;
        debug_assert!(OUT_CAP - at >= 2 + body.len() + NOISE_TAG_LEN);
        let n = keys
            .write_message(self.nonce, body, &mut self.out[at + 2..])
            .map_err(io::Error::other)?;
        self.out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        self.out_len = at + 2 + n;
        self.nonce += 1;
        if bytes_from_plain {
            self.plain.clear();
        }
        Ok(())
    }

    /// Writes out every sealed byte; with `partial`, seals what is buffered first.
    fn poll_push<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        partial: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if partial && !self.plain.is_empty() && self.room() >= MAX_WIRE {
                self.seal(true, &[])?;
            }
            while self.out_pos < self.out_len {
                let n = ready!(
                    Pin::new(&mut *w).poll_write(cx, &self.out[self.out_pos..self.out_len])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out_pos += n;
            }
            self.out_pos = 0;
            self.out_len = 0;
            if !partial || self.plain.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.keys.is_none() {
            return Pin::new(w).poll_write(cx, buf);
        }
        if self.room() < MAX_WIRE {
            ready!(self.poll_push(w, cx, false))?;
        }
        // A few bytes buffered before a large write (a frame's length) go in
        // a message of their own: the large write's messages then come
        // straight from the caller's bytes, without a copy through `plain`,
        // and start where its reader's buffer does.
        if !self.plain.is_empty() && buf.len() >= MAX_PLAIN {
            self.seal(true, &[])?;
            if self.room() < MAX_WIRE {
                ready!(self.poll_push(w, cx, false))?;
            }
        }
        // Whole messages straight from the caller's bytes, without a copy.
        if self.plain.is_empty() && buf.len() >= MAX_PLAIN {
            let mut done = 0;
            while buf.len() - done >= MAX_PLAIN && self.room() >= MAX_WIRE {
                self.seal(false, &buf[done..done + MAX_PLAIN])?;
                done += MAX_PLAIN;
            }
            return Poll::Ready(Ok(done));
        }
        let n = buf.len().min(MAX_PLAIN - self.plain.len());
        self.plain.extend_from_slice(&buf[..n]);
        if self.plain.len() == MAX_PLAIN {
            self.seal(true, &[])?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.keys.is_some() {
            ready!(self.poll_push(w, cx, true))?;
        }
        Pin::new(w).poll_flush(cx)
    }

    fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(w, cx))?;
        Pin::new(w).poll_shutdown(cx)
    }
}

impl Rx {
    fn fail(&mut self) -> io::Error {
        if !self.failed {
            self.failed = true;
            auth::bump(&self.counters.tcp_forged);
        }
        io::Error::new(io::ErrorKind::InvalidData, Forged)
    }

    /// Opens the next whole message in `input`, if there is one: straight
    /// into `buf` when its initialized room holds the whole message (a
    /// caller reading into a zeroed or reused buffer saves a copy), else into
    /// `plain`.
    fn open_next(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<Opened> {
        let avail = &self.input[self.in_pos..self.in_len];
        if avail.len() < 2 {
            return Ok(Opened::Nothing);
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if len < NOISE_TAG_LEN {
            return Err(self.fail());
        }
        if avail.len() < 2 + len {
            return Ok(Opened::Nothing);
        }
        let keys = self.keys.as_ref().expect("only an encrypted stream opens");
        let sealed = &avail[2..2 + len];
        let filled = buf.filled().len();
        let dst = buf.filled().as_ptr_range().end;
        // `snow` copies the whole sealed message (tag included) before
        // opening it in place: the room must hold it.
        let direct = buf.initialized().len() - filled >= len && !slow_copy(sealed.as_ptr(), dst);
        let opened = if direct {
            let out = &mut buf.initialized_mut()[filled..filled + len];
            keys.read_message(self.nonce, sealed, out)
                .map(|n| (Opened::ToCaller, n))
        } else {
            if self.plain.is_empty() {
                self.plain = vec![0; MAX_NOISE_MSG + PAGE];
            }
            // The opened bytes are placed for two fast copies (see `PAGE`):
            // from `input` into `plain` inside `snow`, then from `plain` to `dst`.
            let lead = if slow_copy(sealed.as_ptr(), dst) {
                PAGE - 2 * SLOW_SPAN
            } else {
                0
            };
            let at = placed(self.plain.as_ptr(), sealed.as_ptr(), lead);
            self.plain_pos = at;
            keys.read_message(self.nonce, sealed, &mut self.plain[at..at + MAX_NOISE_MSG])
                .map(|n| (Opened::ToPlain, n))
        };
        match opened {
            Ok((to, n)) => {
                match to {
                    Opened::ToCaller => buf.advance(n),
                    _ => self.plain_len = self.plain_pos + n,
                }
                self.nonce += 1;
                self.in_pos += 2 + len;
                Ok(to)
            }
            Err(_) => {
                self.plain_pos = 0;
                self.plain_len = 0;
                Err(self.fail())
            }
        }
    }

    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.keys.is_none() {
            return Pin::new(r).poll_read(cx, buf);
        }
        if self.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, Forged)));
        }
        loop {
            if self.plain_pos < self.plain_len {
                let n = buf.remaining().min(self.plain_len - self.plain_pos);
                buf.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            match self.open_next(buf)? {
                Opened::ToCaller => return Poll::Ready(Ok(())),
                Opened::ToPlain => continue,
                Opened::Nothing => {}
            }
            // Need more bytes: keep the unopened tail at the front.
            if self.input.is_empty() {
                self.input = vec![0; READ_AHEAD];
            }
            if self.in_pos > 0 {
                self.input.copy_within(self.in_pos..self.in_len, 0);
                self.in_len -= self.in_pos;
                self.in_pos = 0;
            }
            let have = self.in_len;
            let mut rb = ReadBuf::new(&mut self.input[have..]);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            self.in_len += got;
            if got == 0 {
                return if have == 0 {
                    Poll::Ready(Ok(())) // a clean end between messages
                } else {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

impl Rx {
    fn new(keys: Keys, nonce: u64, counters: Arc<Counters>) -> Self {
        Self {
            keys: Some(keys),
            nonce,
            counters,
            input: Vec::new(),
            in_pos: 0,
            in_len: 0,
            plain: Vec::new(),
            plain_pos: 0,
            plain_len: 0,
            failed: false,
        }
    }
}

/// The reading direction of an encrypted stream over any reader, through
/// the same code as [`Channel`]'s: the decoder the fuzz target drives.
pub struct OpenRead<R> {
    inner: R,
    rx: Rx,
}

impl<R> OpenRead<R> {
    /// Opens `inner`'s messages with `keys`, the first at nonce `nonce`;
    /// a message that does not verify counts in `counters.tcp_forged`.
    pub fn new(
        inner: R,
        keys: StatelessTransportState,
        nonce: u64,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner,
            rx: Rx::new(Arc::new(keys), nonce, counters),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OpenRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.rx.poll_read(&mut me.inner, cx, buf)
    }
}

/// The writing direction of an encrypted stream over any writer, through
/// the same code as [`Channel`]'s (to make the fuzz target's valid streams).
pub struct SealWrite<W> {
    inner: W,
    tx: Tx,
}

impl<W> SealWrite<W> {
    /// Seals into `inner` with `keys`, the first message at nonce `nonce`.
    pub fn new(inner: W, keys: StatelessTransportState, nonce: u64) -> Self {
        Self {
            inner,
            tx: Tx {
                keys: Some(Arc::new(keys)),
                nonce,
                plain: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                out_len: 0,
            },
        }
    }

    /// The writer, with what was flushed into it.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SealWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.tx.poll_write(&mut me.inner, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_flush(&mut me.inner, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_shutdown(&mut me.inner, cx)
    }
}

/// A connection's stream of bytes after its handshake; see the module docs.
pub struct Channel {
    stream: Stream,
    tx: Tx,
    rx: Rx,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Channel({:?}, encrypted: {})",
            self.stream,
            self.is_encrypted()
        )
    }
}

impl Channel {
    /// The socket itself, without encryption.
    pub(crate) fn clear(stream: Stream, counters: Arc<Counters>) -> Self {
        Self::with_keys(stream, None, 0, 0, counters)
    }

    /// Encrypted with `keys`; the first message sent has nonce `tx_nonce`,
    /// the first received `rx_nonce`.
    pub(crate) fn encrypted(
        stream: Stream,
        keys: StatelessTransportState,
        tx_nonce: u64,
        rx_nonce: u64,
        counters: Arc<Counters>,
    ) -> Self {
        Self::with_keys(stream, Some(Arc::new(keys)), tx_nonce, rx_nonce, counters)
    }

    fn with_keys(
        stream: Stream,
        keys: Option<Keys>,
        tx_nonce: u64,
        rx_nonce: u64,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            stream,
            tx: Tx {
                keys: keys.clone(),
                nonce: tx_nonce,
                plain: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                out_len: 0,
            },
            rx: Rx {
                keys,
                nonce: rx_nonce,
                counters,
                input: Vec::new(),
                in_pos: 0,
                in_len: 0,
                plain: Vec::new(),
                plain_pos: 0,
                plain_len: 0,
                failed: false,
            },
        }
    }

    /// Whether bytes written here are encrypted (TCP with
    /// `security.encrypt_tcp`).
    pub fn is_encrypted(&self) -> bool {
        self.tx.keys.is_some()
    }

    /// Whether the socket is the agent's local Unix socket.
    pub fn is_local(&self) -> bool {
        self.stream.is_local()
    }

    /// The socket under the encryption. Bytes written to it directly are
    /// not encrypted: only for `sendfile` on a connection that is not
    /// [`encrypted`](Self::is_encrypted), and for tests that forge.
    pub fn socket(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// See [`Stream::widen_send_buffer`].
    pub fn widen_send_buffer(&self) {
        self.stream.widen_send_buffer();
    }

    /// Reads the socket without blocking, to notice that an idle connection
    /// was closed. Not for data: bytes read here bypass the decryption.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.try_read(buf)
    }

    /// A reading and a writing half that can be used at the same time.
    pub fn split(&mut self) -> (ChannelRead<'_>, ChannelWrite<'_>) {
        let (r, w) = self.stream.split();
        (
            ChannelRead {
                r,
                rx: &mut self.rx,
            },
            ChannelWrite {
                w,
                tx: &mut self.tx,
            },
        )
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The reading half of a [`Channel`].
pub struct ChannelRead<'a> {
    r: StreamRead<'a>,
    rx: &'a mut Rx,
}

/// The writing half of a [`Channel`].
pub struct ChannelWrite<'a> {
    w: StreamWrite<'a>,
    tx: &'a mut Tx,
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.rx.poll_read(&mut me.stream, cx, buf)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.tx.poll_write(&mut me.stream, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_flush(&mut me.stream, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_shutdown(&mut me.stream, cx)
    }
}

impl AsyncRead for ChannelRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.rx.poll_read(&mut me.r, cx, buf)
    }
}

impl AsyncWrite for ChannelWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.tx.poll_write(&mut me.w, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_flush(&mut me.w, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tx.poll_shutdown(&mut me.w, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::handshake::{self, Answer, Protection};
    use crate::auth::{ClusterKey, KEY_LEN, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The client's and the server's transport keys of one real handshake.
    fn keys() -> (StatelessTransportState, StatelessTransportState) {
        let key = ClusterKey::from_bytes([9; KEY_LEN]);
        let (init, hello) = handshake::hello(&key, Protection::Encrypted).unwrap();
        let Answer::Reply {
            reply,
            session: Ok(server),
            ..
        } = handshake::respond(&[(key, Role::Peer)], &hello, Protection::Encrypted)
        else {
            panic!("the hello was refused");
        };
        let (client, _) = init.finish(&reply[1..]).unwrap();
        (client.transport, server.transport)
    }

    /// Bytes that differ from one offset to the next.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The lengths of the sealed messages in `wire`.
    fn message_lengths(mut wire: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while wire.len() >= 2 {
            let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
            out.push(len);
            wire = &wire[2 + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_length_written_before_a_large_write_is_sealed_alone_and_the_body_in_whole_messages()
    {
        let (tx_keys, rx_keys) = keys();
        let body = pattern(2 * MAX_PLAIN + 5);
        let mut w = SealWrite::new(Vec::new(), tx_keys, 1);
        w.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        w.write_all(&body).await.unwrap();
        w.flush().await.unwrap();
        let wire = w.into_inner();
        let tag = NOISE_TAG_LEN;
        assert_eq!(
            message_lengths(&wire),
            [4 + tag, MAX_NOISE_MSG, MAX_NOISE_MSG, 5 + tag],
            "the length alone, then the body in whole messages from its first byte"
        );

        // A reader of the length, then of the body into a zeroed buffer,
        // gets every byte.
        let mut r = OpenRead::new(&wire[..], rx_keys, 1, Arc::new(Counters::default()));
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.unwrap();
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut got).await.unwrap();
        assert!(got == body, "the body read differs from the one written");
    }

    #[tokio::test]
    async fn bytes_from_and_into_buffers_at_every_page_offset_arrive_whole() {
        let (tx_keys, rx_keys) = keys();
        let data = pattern(9 * MAX_PLAIN + 12345);
        // Writes of many sizes, each from a fresh buffer whose bytes start at
        // another offset, so the sealed messages are placed differently.
        let mut w = SealWrite::new(Vec::new(), tx_keys, 1);
        let sizes = [
            1,
            4,
            MAX_PLAIN - 3,
            3 * MAX_PLAIN + 17,
            700,
            2 * MAX_PLAIN,
            1,
        ];
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            let shift = (i * 37) % PAGE;
            let mut buf = vec![0u8; shift + n];
            buf[shift..].copy_from_slice(&data[at..at + n]);
            w.write_all(&buf[shift..]).await.unwrap();
            if i % 3 == 0 {
                w.flush().await.unwrap();
            }
            at += n;
            i += 1;
        }
        w.flush().await.unwrap();
        let wire = w.into_inner();

        // Reads into buffers of many sizes and offsets.
        let mut r = OpenRead::new(&wire[..], rx_keys, 1, Arc::new(Counters::default()));
        let mut got = Vec::new();
        let mut i = 0;
        loop {
            let n = [MAX_NOISE_MSG + 100, 5, 1 << 20, MAX_PLAIN, 3000][i % 5];
            let shift = (i * 53) % PAGE;
            let mut buf = vec![0u8; shift + n];
            let k = r.read(&mut buf[shift..]).await.unwrap();
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[shift..shift + k]);
            i += 1;
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes read differ from those written");
    }
}
