//! The byte stream of a [`crate::conn::Conn`] after its handshake: on an
//! encrypted connection every byte written goes out in Noise transport
//! messages, and every byte read comes from one whose tag verified; on an
//! authenticated-only one (the local socket, or `security.encrypt_tcp =
//! false`) it is the socket itself. The one exception is
//! [`Channel::bypass`]: bytes sealed end to end already (an SDFS put's
//! frames) go between the messages as they are.
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
use crate::auth::transport::{TAG_LEN, Transport};
use crate::auth::{self, Counters};
use crate::stream::{Stream, StreamRead, StreamWrite};
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
/// Each message is copied once before it is sealed in place (the plain
/// bytes into the output) and once before it is opened in place (the
/// ciphertext into the caller's buffer, or into `plain` and from there to
/// the caller when the caller's room is too small). On x86 CPUs whose
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
type Keys = Arc<Transport>;

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
        let n = keys.write_message(self.nonce, body, &mut self.out[at + 2..]);
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

    /// Writes `buf` to the socket as it is, after every byte written before
    /// has gone out in its messages.
    fn poll_write_bypass<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.keys.is_some() {
            ready!(self.poll_push(w, cx, true))?;
        }
        Pin::new(w).poll_write(cx, buf)
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

/// Plain bytes laid out as whole transport messages (each slot: room for
/// its length, [`MAX_PLAIN`] bytes and the tag), so that bytes read into it
/// (a file's chunk) are sealed where they lie and written out without a
/// copy: [`Channel::write_sealed`].
pub struct Sealable {
    wire: Vec<u8>,
    len: usize,
}

/// Bytes of one full slot on the wire.
const SLOT: usize = 2 + MAX_NOISE_MSG;

impl Sealable {
    /// Room for `capacity` plain bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let slots = capacity.div_ceil(MAX_PLAIN).max(1);
        Self {
            wire: vec![0; slots * SLOT],
            len: 0,
        }
    }

    /// Plain bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the bytes held (the buffer is kept for the next ones).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Where plain byte `i` lies in `wire`.
    fn at(i: usize) -> usize {
        i / MAX_PLAIN * SLOT + 2 + i % MAX_PLAIN
    }

    /// The free room of the slot the next byte goes to, growing the buffer
    /// by a slot when it is full.
    fn room(&mut self) -> &mut [u8] {
        let at = Self::at(self.len);
        if at >= self.wire.len() {
            self.wire.resize(self.wire.len() + SLOT, 0);
        }
        let end = (self.len / MAX_PLAIN) * SLOT + 2 + MAX_PLAIN;
        &mut self.wire[at..end]
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    /// Overwrites the plain bytes from offset `at` with `bytes` (within
    /// what is held).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len, "patch past the bytes held");
        for (i, b) in bytes.iter().enumerate() {
            self.wire[Self::at(at + i)] = *b;
        }
    }

    /// Appends up to `max` bytes read from `r`, stopping early only at its
    /// end; returns the bytes appended.
    pub fn read_from(&mut self, r: &mut impl io::Read, max: usize) -> io::Result<usize> {
        let mut got = 0;
        while got < max {
            let room = self.room();
            let want = room.len().min(max - got);
            let n = match r.read(&mut room[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.len += n;
            got += n;
        }
        Ok(got)
    }

    /// The plain bytes, slot by slot.
    fn slots(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len.div_ceil(MAX_PLAIN)).map(|k| {
            let n = (self.len - k * MAX_PLAIN).min(MAX_PLAIN);
            &self.wire[k * SLOT + 2..k * SLOT + 2 + n]
        })
    }
}

impl Tx {
    /// Writes `s`'s bytes after those written before: sealed in place as
    /// whole messages, then written from `s` in one go.
    async fn write_sealed<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        s: &mut Sealable,
    ) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let Some(keys) = self.keys.clone() else {
            for slot in s.slots() {
                w.write_all(slot).await?;
            }
            return Ok(());
        };
        // Bytes written before go first, in messages of their own.
        std::future::poll_fn(|cx| self.poll_push(w, cx, true)).await?;
        let mut end = 0;
        for k in 0..s.len.div_ceil(MAX_PLAIN) {
            let n = (s.len - k * MAX_PLAIN).min(MAX_PLAIN);
            let at = k * SLOT;
            let msg = &mut s.wire[at..at + 2 + n + TAG_LEN];
            msg[..2].copy_from_slice(&((n + TAG_LEN) as u16).to_be_bytes());
            let tag = keys.seal_in_place(self.nonce, &mut msg[2..2 + n]);
            msg[2 + n..].copy_from_slice(&tag);
            self.nonce += 1;
            end = at + 2 + n + TAG_LEN;
        }
        // The plain bytes are gone: sealed.
        s.len = 0;
        w.write_all(&s.wire[..end]).await
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
    /// into `buf` when its room (initialized or not) holds the message's
    /// bytes, else into `plain`. Either way the ciphertext is copied there
    /// and opened in place, its tag read from `input`.
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
        let n = len - TAG_LEN;
        let cipher = &avail[2..2 + n];
        let tag: &[u8; TAG_LEN] = avail[2 + n..2 + len].try_into().expect("TAG_LEN bytes");
        let filled = buf.filled().len();
        let dst = buf.filled().as_ptr_range().end;
        let opened = if buf.remaining() >= n && !slow_copy(cipher.as_ptr(), dst) {
            buf.put_slice(cipher);
            let out = &mut buf.filled_mut()[filled..];
            match keys.open_in_place(self.nonce, out, tag) {
                Ok(()) => Ok(Opened::ToCaller),
                Err(e) => {
                    // Nothing unverified is handed out.
                    buf.set_filled(filled);
                    Err(e)
                }
            }
        } else {
            if self.plain.is_empty() {
                self.plain = vec![0; MAX_NOISE_MSG + PAGE];
            }
            // The opened bytes are placed for two fast copies (see `PAGE`):
            // from `input` into `plain`, then from `plain` to `dst`.
            let lead = if slow_copy(cipher.as_ptr(), dst) {
                PAGE - 2 * SLOW_SPAN
            } else {
                0
            };
            let at = placed(self.plain.as_ptr(), cipher.as_ptr(), lead);
            self.plain_pos = at;
            self.plain_len = at + n;
            let out = &mut self.plain[at..at + n];
            out.copy_from_slice(cipher);
            keys.open_in_place(self.nonce, out, tag)
                .map(|()| Opened::ToPlain)
        };
        match opened {
            Ok(to) => {
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
    /// Reads bytes the writer wrote outside its messages
    /// ([`Tx::poll_write_bypass`]): those read ahead from the socket first,
    /// then the socket's.
    fn poll_read_bypass<R: AsyncRead + Unpin>(
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
        if self.plain_pos < self.plain_len {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes outside the transport messages began inside one",
            )));
        }
        if self.in_pos < self.in_len {
            let n = buf.remaining().min(self.in_len - self.in_pos);
            buf.put_slice(&self.input[self.in_pos..self.in_pos + n]);
            self.in_pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(r).poll_read(cx, buf)
    }

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
    pub fn new(inner: R, keys: Transport, nonce: u64, counters: Arc<Counters>) -> Self {
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
    pub fn new(inner: W, keys: Transport, nonce: u64) -> Self {
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

impl<W: AsyncWrite + Unpin> SealWrite<W> {
    /// As [`Channel::write_sealed`].
    pub async fn write_sealed(&mut self, bytes: &mut Sealable) -> io::Result<()> {
        self.tx.write_sealed(&mut self.inner, bytes).await
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
        keys: Transport,
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

    /// Writes `bytes` (after anything written before) sealed in place in
    /// their buffer, without the copy a write makes; leaves `bytes` empty.
    /// On a connection that is not encrypted they are written as they are.
    pub async fn write_sealed(&mut self, bytes: &mut Sealable) -> io::Result<()> {
        self.tx.write_sealed(&mut self.stream, bytes).await
    }

    /// The stream outside the transport messages, in both directions: bytes
    /// written go to the socket as they are (after those written before, in
    /// their messages), bytes read are the socket's (after the messages read
    /// before). For data sealed end to end already (an SDFS put's frames,
    /// [`crate::auth::put_seal`]); both ends must agree where such bytes
    /// start and end. On a connection that is not encrypted it is the
    /// channel itself.
    pub fn bypass(&mut self) -> Bypass<'_> {
        Bypass { chan: self }
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

/// See [`Channel::bypass`].
pub struct Bypass<'a> {
    chan: &'a mut Channel,
}

impl AsyncRead for Bypass<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let c = &mut *self.get_mut().chan;
        c.rx.poll_read_bypass(&mut c.stream, cx, buf)
    }
}

impl AsyncWrite for Bypass<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let c = &mut *self.get_mut().chan;
        c.tx.poll_write_bypass(&mut c.stream, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let c = &mut *self.get_mut().chan;
        c.tx.poll_flush(&mut c.stream, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let c = &mut *self.get_mut().chan;
        c.tx.poll_shutdown(&mut c.stream, cx)
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
    fn keys() -> (Transport, Transport) {
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

    /// `body` sealed as a frame: its length alone, then whole messages.
    async fn sealed_frame(keys: Transport, body: &[u8]) -> Vec<u8> {
        let mut w = SealWrite::new(Vec::new(), keys, 1);
        w.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        w.write_all(body).await.unwrap();
        w.flush().await.unwrap();
        w.into_inner()
    }

    #[tokio::test]
    async fn a_frame_is_opened_straight_into_a_buffers_uninitialized_spare_capacity() {
        let (tx_keys, rx_keys) = keys();
        let body = pattern(5 * MAX_PLAIN + 777);
        let wire = sealed_frame(tx_keys, &body).await;
        let mut r = OpenRead::new(&wire[..], rx_keys, 1, Arc::new(Counters::default()));
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.unwrap();
        let len = u32::from_be_bytes(len) as usize;
        // As an agent reads a data frame: into capacity, never zeroed.
        let mut got = Vec::with_capacity(len);
        (&mut r)
            .take(len as u64)
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert!(got == body, "the frame read differs from the one written");
        // The length went through `plain` (4 bytes asked for); every message
        // of the body was opened in the caller's memory, with no copy aside.
        assert_eq!(r.rx.nonce, 1 + 1 + 6, "the length and six body messages");
        assert!(
            r.rx.plain_pos == r.rx.plain_len,
            "no opened bytes left behind"
        );
    }

    #[tokio::test]
    async fn a_tampered_or_reordered_message_hands_out_none_of_its_bytes_and_fails_the_stream() {
        let body = pattern(3 * MAX_PLAIN);
        for what in ["tampered", "reordered"] {
            let (tx_keys, rx_keys) = keys();
            let wire = sealed_frame(tx_keys, &body).await;
            let lens = message_lengths(&wire);
            assert_eq!(
                lens,
                [
                    4 + NOISE_TAG_LEN,
                    MAX_NOISE_MSG,
                    MAX_NOISE_MSG,
                    MAX_NOISE_MSG
                ]
            );
            // Where the body's second and third messages start.
            let second = 2 + lens[0] + 2 + MAX_NOISE_MSG;
            let third = second + 2 + MAX_NOISE_MSG;
            let bad = if what == "tampered" {
                let mut bad = wire.clone();
                bad[second + 100] ^= 0x20;
                bad
            } else {
                let mut bad = wire[..second].to_vec();
                bad.extend_from_slice(&wire[third..]);
                bad.extend_from_slice(&wire[second..third]);
                bad
            };
            let counters = Arc::new(Counters::default());
            let mut r = OpenRead::new(&bad[..], rx_keys, 1, counters.clone());
            let mut len = [0u8; 4];
            r.read_exact(&mut len).await.unwrap();
            let mut got = Vec::with_capacity(body.len());
            let err = (&mut r)
                .take(body.len() as u64)
                .read_to_end(&mut got)
                .await
                .expect_err(what);
            assert!(is_forged(&err), "{what}: {err}");
            assert!(
                got == body[..MAX_PLAIN],
                "{what}: only the first message's bytes were handed out"
            );
            let again = r.read(&mut [0u8; 16]).await.expect_err(what);
            assert!(is_forged(&again), "{what}: the stream stays failed");
            assert_eq!(
                counters
                    .tcp_forged
                    .load(std::sync::atomic::Ordering::Relaxed),
                1,
                "{what}: counted once"
            );
        }
    }

    #[tokio::test]
    async fn bytes_sealed_in_their_buffer_arrive_in_order_between_written_ones() {
        let (tx_keys, rx_keys) = keys();
        let mut w = SealWrite::new(Vec::new(), tx_keys, 1);
        let mut want = Vec::new();
        w.write_all(b"before").await.unwrap();
        want.extend_from_slice(b"before");
        let mut s = Sealable::with_capacity(MAX_PLAIN);
        for n in [3 * MAX_PLAIN + 100, 2 * MAX_PLAIN - 4, 7] {
            // As a get sends a chunk: its length, then bytes read from a file.
            let data = pattern(n);
            s.clear();
            s.extend_from_slice(&[0; 4]);
            assert_eq!(s.read_from(&mut &data[..], n + 50).unwrap(), n);
            s.patch(0, &(n as u32).to_be_bytes());
            assert_eq!(s.len(), 4 + n);
            w.write_sealed(&mut s).await.unwrap();
            assert!(s.is_empty(), "sealed bytes are not sent twice");
            want.extend_from_slice(&(n as u32).to_be_bytes());
            want.extend_from_slice(&data);
            w.write_all(b"between").await.unwrap();
            want.extend_from_slice(b"between");
        }
        w.flush().await.unwrap();
        let wire = w.into_inner();
        assert!(
            !wire.windows(7).any(|x| x == b"between"),
            "the bytes are encrypted"
        );
        let mut r = OpenRead::new(&wire[..], rx_keys, 1, Arc::new(Counters::default()));
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == want, "the bytes read differ from those written");
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
