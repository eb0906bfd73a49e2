//! Sealed UDP datagrams: encrypted and authenticated with XChaCha20-Poly1305
//! (RustCrypto's `chacha20poly1305`), as memberlist's keyring encrypts its
//! gossip with an AEAD. [`Session`] is one process's side, a pure state
//! machine fed datagrams and the clock; the membership driver owns it.
//!
//! A datagram is `magic | sender epoch | receiver epoch | sequence |
//! ciphertext | tag`. An epoch is 8 random bytes new to each process. The
//! sequence is the sender's clock in microseconds, forced to grow. The nonce
//! is the sender's epoch and sequence, never repeated by one process; the
//! associated data is the header and the receiver's address. So a datagram
//! opens only at the address and in the very process it was sealed for:
//! captured on its way to one agent it is forged for every other, and after
//! the receiver restarts it is for an earlier run and dropped.
//!
//! A sender learns a receiver's epoch from any datagram it opens from that
//! address. Before that it sends a `hello` (receiver epoch zero, no payload)
//! and holds the payload; the receiver answers with a `notice` (no payload,
//! sealed for the hello's sender), and the payloads held go out. A receiver
//! that gets a datagram for its earlier run answers with a notice too, and
//! the sender seals its recent payloads again for the new run, so a restart
//! costs one round trip, not a lost probe.
//!
//! Keys follow the context's keyring (`dml keyring`): a datagram is sealed
//! with the primary and opened with any installed key, the primary tried
//! first. The ciphers are built once per keyring and rebuilt when a
//! rotation swaps it.

use super::{AuthContext, ClusterKey, Counters, Keyring, bump, now_micros, random};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// First byte of a sealed datagram (format 2: encrypted).
pub const UDP_MAGIC: [u8; 1] = [0xD6];
/// Bytes of an epoch.
pub const EPOCH_LEN: usize = 8;
/// Bytes before a datagram's ciphertext: magic, two epochs, sequence number.
pub const UDP_HEAD_LEN: usize = 1 + 2 * EPOCH_LEN + 8;
/// Bytes of a datagram's Poly1305 tag.
pub const UDP_TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its payload.
pub const UDP_OVERHEAD: usize = UDP_HEAD_LEN + UDP_TAG_LEN;
/// How far a datagram's sequence (its sender's clock) may be from ours when
/// its sender is new to us; NTP keeps real clusters well inside this.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How far behind the newest datagram of a sender an older one may still
/// arrive (reordering), if it was not seen before.
pub const REORDER_WINDOW: Duration = Duration::from_secs(2);
/// Senders and addresses not heard from for this long are forgotten.
const IDLE: Duration = Duration::from_secs(600);
/// Most sequence numbers remembered per sender inside the reorder window.
const MAX_RECENT: usize = 4096;
/// Least time between two hellos to one address, or two notices to one sender.
const HELLO_EVERY: Duration = Duration::from_millis(200);
/// Payloads held per address: waiting for its epoch, or sent lately (sealed
/// again if it turns out to have restarted).
const HELD: usize = 16;
/// How long a sent payload is kept for sealing again.
const RESEND_WITHIN: Duration = Duration::from_secs(2);

/// A process's epoch: 8 random bytes; all zero means "not known".
pub type Epoch = [u8; EPOCH_LEN];
const UNKNOWN: Epoch = [0; EPOCH_LEN];

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    /// The tag does not verify: another key, tampered, or sealed for another
    /// receiver.
    Forged,
    /// Seen before, older than the reorder window, or sealed for an earlier
    /// run of this process.
    Replayed,
    Stale,
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Drop::Malformed => "not a sealed AwesomeDML datagram",
            Drop::Forged => {
                "authentication tag does not verify (wrong cluster key, forged, or sealed for another agent)"
            }
            Drop::Replayed => "replayed, too old, or sealed for an earlier run of this agent",
            Drop::Stale => "sender clock too far from ours",
        })
    }
}

/// What [`Session::open`] made of a datagram.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// The payload for the membership core, if the datagram carried one.
    pub payload: Option<Vec<u8>>,
    /// Datagrams to send back to the sender (a notice, payloads sealed again).
    pub replies: Vec<Vec<u8>>,
    /// Why it was dropped, if it was (already counted).
    pub dropped: Option<Drop>,
}

/// One sender's sequence numbers used up.
struct Window {
    newest: u64,
    /// Sequence numbers seen inside the reorder window, oldest first.
    recent: VecDeque<u64>,
    heard: u64,
    /// When this sender was last sent a notice.
    noticed: u64,
}

/// What this process knows of one address it talks to.
#[derive(Default)]
struct Peer {
    epoch: Option<Epoch>,
    /// Payloads waiting for the epoch.
    waiting: VecDeque<Vec<u8>>,
    /// Payloads sent lately: (when, payload).
    sent: VecDeque<(u64, Vec<u8>)>,
    hello_at: u64,
    touched: u64,
}

/// The ciphers of one keyring: the primary's first, then the other keys'.
struct Ciphers {
    ring: Arc<Keyring>,
    all: Vec<XChaCha20Poly1305>,
}

impl Ciphers {
    fn of(ring: Arc<Keyring>) -> Self {
        Self {
            all: ring.keys().iter().map(aead).collect(),
            ring,
        }
    }
}

/// One process's sealing and opening (see the module's doc).
pub struct Session {
    /// Where the keyring comes from.
    auth: AuthContext,
    ciphers: Ciphers,
    me: SocketAddr,
    epoch: Epoch,
    last: u64,
    peers: HashMap<SocketAddr, Peer>,
    senders: HashMap<Epoch, Window>,
    counters: Arc<Counters>,
}

fn aead(key: &ClusterKey) -> XChaCha20Poly1305 {
    let k = blake3::derive_key("AwesomeDML 2026 UDP datagram AEAD", &key.udp);
    XChaCha20Poly1305::new(&k.into())
}

/// A new epoch: random, else (no entropy source) from the clock and the pid.
fn new_epoch() -> Epoch {
    let e = random::<EPOCH_LEN>().unwrap_or_else(|_| {
        let mut h = blake3::Hasher::new();
        h.update(&now_micros().to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.finalize().as_bytes()[..EPOCH_LEN]
            .try_into()
            .expect("a prefix of 32 bytes")
    });
    if e == UNKNOWN { [1; EPOCH_LEN] } else { e }
}

fn nonce(sender: &Epoch, seq: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..EPOCH_LEN].copy_from_slice(sender);
    n[EPOCH_LEN..EPOCH_LEN + 8].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

/// Associated data: the header and the receiver's address.
fn aad(head: &[u8], to: SocketAddr) -> Vec<u8> {
    let mut a = head.to_vec();
    a.extend_from_slice(to.to_string().as_bytes());
    a
}

impl Session {
    /// The session of the process at `me` (its advertised address), keyed
    /// with `auth`'s key; drops are counted in its counters.
    pub fn new(auth: &AuthContext, me: SocketAddr) -> Self {
        Self::with_epoch(auth, me, new_epoch())
    }

    /// [`Session::new`] with a given epoch (tests).
    pub fn with_epoch(auth: &AuthContext, me: SocketAddr, epoch: Epoch) -> Self {
        Self {
            ciphers: Ciphers::of(auth.keyring()),
            auth: auth.clone(),
            me,
            epoch,
            last: 0,
            peers: HashMap::new(),
            senders: HashMap::new(),
            counters: auth.counters.clone(),
        }
    }

    /// This process's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The ciphers of the context's current keyring (rebuilt after a
    /// rotation; otherwise one lock read and a pointer compare).
    fn ciphers(&mut self) -> &Ciphers {
        let ring = self.auth.keyring();
        if !Arc::ptr_eq(&ring, &self.ciphers.ring) {
            self.ciphers = Ciphers::of(ring);
        }
        &self.ciphers
    }

    /// The datagrams that carry `payload` to `to` now: it sealed, or (the
    /// receiver's epoch not known yet) a hello, the payload held meanwhile.
    pub fn seal(&mut self, to: SocketAddr, payload: &[u8], now: u64) -> Vec<Vec<u8>> {
        self.forget_idle(now);
        let peer = self.peers.entry(to).or_default();
        peer.touched = now;
        match peer.epoch {
            Some(e) => {
                push_bounded(&mut peer.sent, (now, payload.to_vec()));
                vec![self.seal_for(to, e, payload, now)]
            }
            None => {
                push_bounded(&mut peer.waiting, payload.to_vec());
                if now.saturating_sub(peer.hello_at) < HELLO_EVERY.as_micros() as u64
                    && peer.hello_at != 0
                {
                    return Vec::new();
                }
                peer.hello_at = now;
                vec![self.seal_for(to, UNKNOWN, &[], now)]
            }
        }
    }

    /// Seals `payload` for the run `receiver` of the process at `to`, whether
    /// or not this session knows it (tools and tests; [`Session::seal`]
    /// is the way to send).
    pub fn seal_for(
        &mut self,
        to: SocketAddr,
        receiver: Epoch,
        payload: &[u8],
        now: u64,
    ) -> Vec<u8> {
        self.last = (self.last + 1).max(now);
        let mut out = Vec::with_capacity(payload.len() + UDP_OVERHEAD);
        out.extend_from_slice(&UDP_MAGIC);
        out.extend_from_slice(&self.epoch);
        out.extend_from_slice(&receiver);
        out.extend_from_slice(&self.last.to_be_bytes());
        let mut body = payload.to_vec();
        let n = nonce(&self.epoch, self.last);
        let tag = self.ciphers().all[0]
            .encrypt_in_place_detached(&n, &aad(&out, to), &mut body)
            .expect("a datagram is far below the AEAD's length limit");
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a datagram from `from`; drops are counted.
    pub fn open(&mut self, from: SocketAddr, bytes: &[u8], now: u64) -> Opened {
        let mut o = self.check(from, bytes, now);
        if let Some(d) = o.dropped {
            let c = &self.counters;
            bump(match d {
                Drop::Malformed => &c.udp_malformed,
                Drop::Forged => &c.udp_forged,
                Drop::Replayed => &c.udp_replayed,
                Drop::Stale => &c.udp_stale,
            });
            o.payload = None;
        }
        o
    }

    /// [`Session::open`] without counting.
    pub fn check(&mut self, from: SocketAddr, bytes: &[u8], now: u64) -> Opened {
        let dropped = |d| Opened {
            dropped: Some(d),
            ..Opened::default()
        };
        let me = self.me;
        let opened = self
            .ciphers()
            .all
            .iter()
            .map(|c| unseal_with(c, me, bytes))
            .find(|r| r != &Err(Drop::Forged))
            .unwrap_or(Err(Drop::Forged));
        let (h, plain) = match opened {
            Ok(x) => x,
            Err(d) => return dropped(d),
        };
        let (sender, receiver, seq) = (h.sender, h.receiver, h.seq);
        self.forget_idle(now);
        if let Err(d) = self.fresh(sender, seq, now) {
            return dropped(d);
        }
        // Authentic and fresh: `from` runs with epoch `sender`.
        let mut out = Opened::default();
        let learned = self.learn(from, sender, now);
        if receiver != UNKNOWN && receiver != self.epoch {
            // For an earlier run of this process (or replayed after a restart).
            out.dropped = Some(Drop::Replayed);
        }
        if receiver != self.epoch && self.may_notice(sender, now) {
            out.replies.push(self.seal_for(from, sender, &[], now));
        }
        if out.dropped.is_none() {
            out.replies.extend(self.flush(from, learned, now));
            if !plain.is_empty() {
                out.payload = Some(plain);
            }
        }
        out
    }

    /// Records that `from` runs with epoch `e`; whether that is news, and
    /// whether it replaced an older epoch.
    fn learn(&mut self, from: SocketAddr, e: Epoch, now: u64) -> Learned {
        let peer = self.peers.entry(from).or_default();
        peer.touched = now;
        match peer.epoch.replace(e) {
            Some(old) if old == e => Learned::Known,
            Some(_) => Learned::Restarted,
            None => Learned::First,
        }
    }

    /// Payloads for `to` to send now that its epoch is known: those waiting,
    /// and after a restart those sent lately, sealed for its new run.
    fn flush(&mut self, to: SocketAddr, learned: Learned, now: u64) -> Vec<Vec<u8>> {
        let Some(peer) = self.peers.get_mut(&to) else {
            return Vec::new();
        };
        let Some(e) = peer.epoch else {
            return Vec::new();
        };
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        if learned == Learned::Restarted {
            let since = now.saturating_sub(RESEND_WITHIN.as_micros() as u64);
            payloads.extend(
                peer.sent
                    .iter()
                    .filter(|(at, _)| *at >= since)
                    .map(|(_, p)| p.clone()),
            );
        }
        payloads.extend(peer.waiting.drain(..));
        for p in &payloads {
            push_bounded(&mut peer.sent, (now, p.clone()));
        }
        payloads
            .iter()
            .map(|p| self.seal_for(to, e, p, now))
            .collect()
    }

    /// Whether `sender` may be sent a notice now (at most one per
    /// [`HELLO_EVERY`]).
    fn may_notice(&mut self, sender: Epoch, now: u64) -> bool {
        let Some(w) = self.senders.get_mut(&sender) else {
            return false;
        };
        if w.noticed != 0 && now.saturating_sub(w.noticed) < HELLO_EVERY.as_micros() as u64 {
            return false;
        }
        w.noticed = now;
        true
    }

    /// Takes `seq` from `sender`'s window, unless replayed or stale.
    fn fresh(&mut self, sender: Epoch, seq: u64, now: u64) -> Result<(), Drop> {
        let skew = MAX_CLOCK_SKEW.as_micros() as u64;
        let reorder = REORDER_WINDOW.as_micros() as u64;
        let Some(w) = self.senders.get_mut(&sender) else {
            if seq.abs_diff(now) > skew {
                return Err(Drop::Stale);
            }
            self.senders.insert(
                sender,
                Window {
                    newest: seq,
                    recent: VecDeque::from([seq]),
                    heard: now,
                    noticed: 0,
                },
            );
            return Ok(());
        };
        if seq > w.newest {
            if seq > now.saturating_add(skew) {
                return Err(Drop::Stale);
            }
            w.newest = seq;
            w.recent.push_back(seq);
            let floor = seq.saturating_sub(reorder);
            while w.recent.front().is_some_and(|&s| s < floor) || w.recent.len() > MAX_RECENT {
                w.recent.pop_front();
            }
        } else if seq < w.newest.saturating_sub(reorder)
            || w.recent.contains(&seq)
            || w.recent
                .front()
                .is_some_and(|&s| seq < s && w.recent.len() >= MAX_RECENT)
        {
            return Err(Drop::Replayed);
        } else {
            let at = w.recent.partition_point(|&s| s < seq);
            w.recent.insert(at, seq);
        }
        w.heard = now;
        Ok(())
    }

    fn forget_idle(&mut self, now: u64) {
        let idle = IDLE.as_micros() as u64;
        if self.senders.len() > 64 {
            self.senders
                .retain(|_, w| now.saturating_sub(w.heard) < idle);
        }
        if self.peers.len() > 64 {
            self.peers
                .retain(|_, p| now.saturating_sub(p.touched) < idle);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learned {
    First,
    Known,
    Restarted,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == HELD {
        q.pop_front();
    }
    q.push_back(v);
}

/// A datagram's header, as [`unseal`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub sender: Epoch,
    pub receiver: Epoch,
    pub seq: u64,
}

/// Verifies and decrypts a datagram addressed to `to` with `key`, with no
/// replay window (tests and tools that inspect captured traffic).
pub fn unseal(key: &ClusterKey, to: SocketAddr, bytes: &[u8]) -> Result<(Header, Vec<u8>), Drop> {
    unseal_with(&aead(key), to, bytes)
}

fn unseal_with(
    cipher: &XChaCha20Poly1305,
    to: SocketAddr,
    bytes: &[u8],
) -> Result<(Header, Vec<u8>), Drop> {
    if bytes.len() < UDP_OVERHEAD || bytes[..1] != UDP_MAGIC {
        return Err(Drop::Malformed);
    }
    let (head, rest) = bytes.split_at(UDP_HEAD_LEN);
    let (body, tag) = rest.split_at(rest.len() - UDP_TAG_LEN);
    let h = Header {
        sender: head[1..1 + EPOCH_LEN].try_into().expect("8 bytes"),
        receiver: head[1 + EPOCH_LEN..1 + 2 * EPOCH_LEN]
            .try_into()
            .expect("8 bytes"),
        seq: u64::from_be_bytes(head[1 + 2 * EPOCH_LEN..].try_into().expect("8 bytes")),
    };
    if h.sender == UNKNOWN || (h.receiver == UNKNOWN && !body.is_empty()) {
        return Err(Drop::Malformed);
    }
    let mut plain = body.to_vec();
    cipher
        .decrypt_in_place_detached(
            &nonce(&h.sender, h.seq),
            &aad(head, to),
            &mut plain,
            Tag::from_slice(tag),
        )
        .map_err(|_| Drop::Forged)?;
    Ok((h, plain))
}

#[cfg(test)]
mod tests {
    use super::super::KEY_LEN;
    use super::*;

    fn auth(b: u8) -> AuthContext {
        AuthContext::new(ClusterKey::from_bytes([b; KEY_LEN]))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const T0: u64 = 1_800_000_000_000_000;

    /// `a` sends `payload` to `b` until it is delivered (hello and notice
    /// first, if needed); returns the payload `b` got.
    fn deliver(a: &mut Session, b: &mut Session, payload: &[u8], now: u64) -> Vec<u8> {
        let mut to_b = a.seal(b.me, payload, now);
        for _ in 0..4 {
            let mut to_a = Vec::new();
            for d in to_b.drain(..) {
                let o = b.open(a.me, &d, now);
                assert_eq!(o.dropped, None);
                if let Some(p) = o.payload {
                    return p;
                }
                to_a.extend(o.replies);
            }
            for d in to_a {
                let o = a.open(b.me, &d, now);
                assert_eq!(o.dropped, None);
                to_b.extend(o.replies);
            }
        }
        panic!("not delivered")
    }

    #[test]
    fn a_payload_reaches_its_receiver_after_one_hello_and_is_encrypted() {
        let (mut a, mut b) = (
            Session::new(&auth(1), addr(1)),
            Session::new(&auth(1), addr(2)),
        );
        let first = a.seal(addr(2), b"secret marker", T0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].len(), UDP_OVERHEAD, "a hello carries nothing");
        let notice = b.open(addr(1), &first[0], T0).replies;
        let held: Vec<Vec<u8>> = notice
            .iter()
            .flat_map(|n| a.open(addr(2), n, T0).replies)
            .filter_map(|d| b.open(addr(1), &d, T0).payload)
            .collect();
        assert_eq!(held, vec![b"secret marker".to_vec()]);
        // Now known: one datagram, and the marker is not in it.
        let d = a.seal(addr(2), b"secret marker", T0 + 10);
        assert_eq!(d.len(), 1);
        assert!(!d[0].windows(13).any(|w| w == b"secret marker"));
        assert_eq!(
            b.open(addr(1), &d[0], T0 + 10).payload.unwrap(),
            b"secret marker"
        );
        // Once only.
        assert_eq!(
            b.open(addr(1), &d[0], T0 + 11).dropped,
            Some(Drop::Replayed)
        );
    }

    #[test]
    fn another_key_tampering_or_another_receiver_is_forgery_and_junk_is_malformed() {
        let (mut a, mut b) = (
            Session::new(&auth(1), addr(1)),
            Session::new(&auth(1), addr(2)),
        );
        deliver(&mut a, &mut b, b"x", T0);
        let d = a.seal(addr(2), b"hello b", T0 + 5).remove(0);
        // The same datagram replayed to another agent with the same key.
        let mut c = Session::new(&auth(1), addr(3));
        assert_eq!(c.open(addr(1), &d, T0 + 6).dropped, Some(Drop::Forged));
        let mut other = Session::new(&auth(2), addr(2));
        assert_eq!(other.open(addr(1), &d, T0 + 6).dropped, Some(Drop::Forged));
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 1;
            let o = b.check(addr(1), &t, T0 + 6);
            assert!(
                matches!(o.dropped, Some(Drop::Forged | Drop::Malformed)),
                "byte {i}: {o:?}"
            );
        }
        assert_eq!(b.check(addr(1), b"junk", T0).dropped, Some(Drop::Malformed));
        assert_eq!(b.open(addr(1), &d, T0 + 6).payload.unwrap(), b"hello b");
    }

    #[test]
    fn after_a_restart_old_datagrams_are_dropped_and_the_sender_seals_again() {
        let (mut a, mut b) = (
            Session::new(&auth(1), addr(1)),
            Session::new(&auth(1), addr(2)),
        );
        deliver(&mut a, &mut b, b"one", T0);
        let captured = a.seal(addr(2), b"two", T0 + 100).remove(0);
        assert_eq!(
            b.open(addr(1), &captured, T0 + 100).payload.unwrap(),
            b"two"
        );
        // b restarts: a new epoch at the same address.
        let mut b2 = Session::new(&auth(1), addr(2));
        let o = b2.open(addr(1), &captured, T0 + 200);
        assert_eq!(
            o.dropped,
            Some(Drop::Replayed),
            "a capture for the earlier run"
        );
        assert_eq!(o.payload, None);
        // Its notice makes `a` seal what it sent lately for the new run.
        assert_eq!(o.replies.len(), 1);
        let resent = a.open(addr(2), &o.replies[0], T0 + 201);
        assert_eq!(resent.dropped, None);
        let got: Vec<Vec<u8>> = resent
            .replies
            .iter()
            .filter_map(|d| b2.open(addr(1), d, T0 + 202).payload)
            .collect();
        assert!(got.contains(&b"two".to_vec()), "{got:?}");
        // And the capture stays dropped.
        assert_eq!(
            b2.open(addr(1), &captured, T0 + 300).dropped,
            Some(Drop::Replayed)
        );
    }

    #[test]
    fn reordering_inside_the_window_is_accepted_and_old_or_far_clocks_are_not() {
        let (mut a, mut b) = (
            Session::new(&auth(1), addr(1)),
            Session::new(&auth(1), addr(2)),
        );
        deliver(&mut a, &mut b, b"x", T0);
        let early = a.seal(addr(2), b"early", T0 + 1_000).remove(0);
        let late = a.seal(addr(2), b"late", T0 + 2_000).remove(0);
        assert_eq!(b.open(addr(1), &late, T0 + 2_000).payload.unwrap(), b"late");
        assert_eq!(
            b.open(addr(1), &early, T0 + 2_001).payload.unwrap(),
            b"early"
        );
        let old = a.seal(addr(2), b"old", T0 + 3_000).remove(0);
        let _ = a.seal(addr(2), b"new", T0 + 10_000_000);
        let newer = a.seal(addr(2), b"newer", T0 + 10_000_001).remove(0);
        assert!(b.open(addr(1), &newer, T0 + 10_000_001).payload.is_some());
        assert_eq!(
            b.open(addr(1), &old, T0 + 10_000_002).dropped,
            Some(Drop::Replayed)
        );
        // A new sender whose clock is far from ours.
        let mut far = Session::new(&auth(1), addr(4));
        let hello = far.seal(addr(2), b"y", T0 + 120_000_000).remove(0);
        assert_eq!(b.check(addr(4), &hello, T0).dropped, Some(Drop::Stale));
    }

    #[test]
    fn sessions_follow_a_rotation_sending_with_the_primary_and_opening_with_any_key() {
        use super::super::Keyring;
        let k = |b: u8| ClusterKey::from_bytes([b; KEY_LEN]);
        let (auth_a, auth_b) = (auth(1), auth(1));
        let (mut a, mut b) = (
            Session::new(&auth_a, addr(1)),
            Session::new(&auth_b, addr(2)),
        );
        deliver(&mut a, &mut b, b"before", T0);
        // Installed on b, then primary on a: b opens both keys.
        auth_b.set_keyring(Keyring::new(k(1), [k(2)]));
        auth_a.set_keyring(Keyring::new(k(2), [k(1)]));
        let d = a.seal(addr(2), b"with two", T0 + 10).remove(0);
        assert!(
            unseal(&k(2), addr(2), &d).is_ok(),
            "sealed with the new primary"
        );
        assert_eq!(b.open(addr(1), &d, T0 + 10).payload.unwrap(), b"with two");
        let back = b.seal(addr(1), b"with one", T0 + 20).remove(0);
        assert_eq!(
            a.open(addr(2), &back, T0 + 20).payload.unwrap(),
            b"with one"
        );
        // Key 1 removed from a: what b still seals with it is forgery there.
        auth_a.set_keyring(Keyring::new(k(2), []));
        let old = b.seal(addr(1), b"old key", T0 + 30).remove(0);
        assert_eq!(a.open(addr(2), &old, T0 + 30).dropped, Some(Drop::Forged));
        auth_b.set_keyring(Keyring::new(k(2), []));
        let new = b.seal(addr(1), b"new key", T0 + 40).remove(0);
        assert_eq!(a.open(addr(2), &new, T0 + 40).payload.unwrap(), b"new key");
    }

    #[test]
    fn hellos_are_paced_and_payloads_wait_for_the_epoch() {
        let mut a = Session::new(&auth(1), addr(1));
        assert_eq!(a.seal(addr(2), b"1", T0).len(), 1);
        assert!(
            a.seal(addr(2), b"2", T0 + 1_000).is_empty(),
            "a second hello at once"
        );
        assert_eq!(a.seal(addr(2), b"3", T0 + 300_000).len(), 1);
        let mut b = Session::new(&auth(1), addr(2));
        let hello = a.seal(addr(2), b"4", T0 + 600_000).remove(0);
        let o = b.open(addr(1), &hello, T0 + 600_000);
        assert_eq!((o.payload, o.replies.len()), (None, 1));
        let flushed = a.open(addr(2), &o.replies[0], T0 + 600_001).replies;
        let got: Vec<Vec<u8>> = flushed
            .iter()
            .filter_map(|d| b.open(addr(1), d, T0 + 600_002).payload)
            .collect();
        assert_eq!(
            got,
            vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec(), b"4".to_vec()]
        );
    }
}
