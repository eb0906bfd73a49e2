//! The cluster key and everything it authenticates.
//!
//! - [`ClusterKey`]: 32 random bytes, kept hex-encoded in a file readable by
//!   its owner only (`dml keygen`). Separate subkeys for UDP and TCP are
//!   derived from it with BLAKE3's `derive_key`.
//! - [`install`] / [`installed`]: the process's key, set once at start; every
//!   connection and datagram of the process uses it.
//! - [`Sealer`] / [`Opener`]: UDP datagrams carry the sender's id (its
//!   address's hash and a random number of the sending process), a sequence
//!   number that is the sender's clock in microseconds, forced to grow, and a
//!   12-byte keyed-BLAKE3 tag. The opener drops forged, malformed, replayed
//!   and stale datagrams, each counted. Each process keeps its own window, so
//!   a restart after the sender's clock stepped back is not taken for a replay.
//! - [`handshake`]: the TCP handshake messages and per-connection keys; the
//!   framing of authenticated connections is in [`crate::conn`].
//! - [`counters`]: what was dropped, for `dml stats` and the metrics endpoint.

use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// Bytes of the tag of a TCP frame or handshake proof.
pub const TAG_LEN: usize = 16;
/// First byte of a sealed datagram.
pub const UDP_MAGIC: [u8; 1] = [0xD5];
/// Bytes of a sender id in a datagram: 4 of the address's hash, 4 random
/// ones of the sending process.
pub const SENDER_LEN: usize = 8;
/// Bytes before a datagram's payload: magic, sender id, sequence number.
pub const UDP_HEAD_LEN: usize = 1 + SENDER_LEN + 8;
/// Bytes of a datagram's tag: 96 bits, as in IPsec's truncated HMACs; a
/// forger gets one guess per datagram sent.
pub const UDP_TAG_LEN: usize = 12;
/// Bytes a sealed datagram adds.
pub const UDP_OVERHEAD: usize = UDP_HEAD_LEN + UDP_TAG_LEN;
/// How far a datagram's sequence (its sender's clock) may be from ours when
/// its sender is new to us; NTP keeps real clusters well inside this.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How far behind the newest datagram of a sender an older one may still
/// arrive (reordering), if it was not seen before.
pub const REORDER_WINDOW: Duration = Duration::from_secs(2);
/// Senders not heard from for this long are forgotten.
const SENDER_IDLE: Duration = Duration::from_secs(600);
/// Most sequence numbers remembered per sender inside the reorder window.
const MAX_RECENT: usize = 4096;

/// Why a key file's text is not a cluster key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    #[error("a cluster key is {want} hex digits, this has {len} characters")]
    Length { want: usize, len: usize },
    #[error("\"{pair}\" at offset {offset} is not a hex byte")]
    NotHex { pair: String, offset: usize },
}

/// The shared secret of one cluster. `Debug` shows only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    udp: [u8; KEY_LEN],
    tcp: [u8; KEY_LEN],
    fingerprint: [u8; 8],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    /// Derives the subkeys of a raw 32-byte secret.
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        let fp = blake3::derive_key("AwesomeDML 2026 cluster key fingerprint", &secret);
        Self {
            udp: blake3::derive_key("AwesomeDML 2026 UDP datagram tags", &secret),
            tcp: blake3::derive_key("AwesomeDML 2026 TCP handshake and frame tags", &secret),
            fingerprint: fp[..8].try_into().expect("8 of 32 bytes"),
        }
    }

    /// A new random secret, hex-encoded as a key file holds it.
    pub fn generate_hex() -> Result<String> {
        Ok(hex(&random::<KEY_LEN>()?))
    }

    /// Parses a key file's text: 64 hex digits, surrounding whitespace allowed.
    pub fn from_hex(text: &str) -> std::result::Result<Self, KeyTextError> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN {
            return Err(KeyTextError::Length {
                want: 2 * KEY_LEN,
                len: t.len(),
            });
        }
        let mut secret = [0u8; KEY_LEN];
        for (i, pair) in t.as_bytes().chunks(2).enumerate() {
            let s = String::from_utf8_lossy(pair);
            // from_str_radix alone would take a sign, as in "+0".
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(KeyTextError::NotHex {
                    pair: s.into_owned(),
                    offset: 2 * i,
                });
            }
            secret[i] = u8::from_str_radix(&s, 16).expect("two hex digits");
        }
        Ok(Self::from_bytes(secret))
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {mode:04o} lets other users read the cluster key; run `chmod 600 {}`",
                    path.display()
                )));
            }
        }
        if meta.len() > 1024 {
            return Err(bad(format!(
                "{} bytes is too long for a key file",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::from_hex(&text).map_err(|e| bad(e.to_string()))
    }

    /// Writes a new random key to `path` (mode 0600); refuses to replace an
    /// existing file unless `force`.
    pub fn write_new(path: &Path, force: bool) -> Result<Self> {
        use std::io::Write;
        let bad = |reason: String| Error::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let hex_key = Self::generate_hex()?;
        let key = Self::from_hex(&hex_key).map_err(|e| bad(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                bad("already exists; pass --force to replace it (every agent then needs the new key)".into())
            } else {
                bad(e.to_string())
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| bad(e.to_string()))?;
        }
        f.write_all(format!("{hex_key}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| bad(e.to_string()))?;
        Ok(key)
    }

    /// 16 hex digits that name the key without revealing it.
    pub fn fingerprint(&self) -> String {
        hex(&self.fingerprint)
    }

    pub(crate) fn tcp(&self) -> &[u8; KEY_LEN] {
        &self.tcp
    }
}

/// A cluster key with the counters of what it refused. Each agent has its
/// own (so agents sharing a process count apart); `dml` and an agent's
/// outgoing connections use the process's ([`install`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthContext {
    key: ClusterKey,
    counters: Arc<Counters>,
}

impl AuthContext {
    /// `key` with fresh counters.
    pub fn new(key: ClusterKey) -> Self {
        Self {
            key,
            counters: Arc::default(),
        }
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// What this context refused so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, shared with what counts into them.
    pub(crate) fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

static PROCESS: OnceLock<AuthContext> = OnceLock::new();

/// Sets the process's cluster key, which outgoing connections use.
/// Installing the same key again is a no-op; a different one is an error.
pub fn install(key: ClusterKey) -> Result<()> {
    let set = PROCESS.get_or_init(|| AuthContext::new(key.clone()));
    if set.key == key {
        Ok(())
    } else {
        Err(Error::KeyFile {
            path: "<process>".into(),
            reason: format!(
                "this process already uses cluster key {}, not {}",
                set.key.fingerprint(),
                key.fingerprint()
            ),
        })
    }
}

/// The process's cluster key and counters.
pub fn installed() -> Result<&'static AuthContext> {
    PROCESS.get().ok_or(Error::NoKey)
}

/// Counts of traffic dropped for authentication reasons, per [`AuthContext`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams whose tag did not verify (wrong key, forged, corrupted).
    pub udp_forged: AtomicU64,
    /// Datagrams too short or without the sealed-datagram magic.
    pub udp_malformed: AtomicU64,
    /// Datagrams already seen, or older than the reorder window.
    pub udp_replayed: AtomicU64,
    /// Datagrams from a new sender whose clock is too far from ours.
    pub udp_stale: AtomicU64,
    /// TCP connections refused in the handshake (wrong key or not ours).
    pub tcp_handshake_failed: AtomicU64,
    /// TCP frames whose tag did not verify; the connection is closed.
    pub tcp_forged: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub udp_forged: u64,
    pub udp_malformed: u64,
    pub udp_replayed: u64,
    pub udp_stale: u64,
    pub tcp_handshake_failed: u64,
    pub tcp_forged: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Dropped {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Dropped {
            udp_forged: g(&self.udp_forged),
            udp_malformed: g(&self.udp_malformed),
            udp_replayed: g(&self.udp_replayed),
            udp_stale: g(&self.udp_stale),
            tcp_handshake_failed: g(&self.tcp_handshake_failed),
            tcp_forged: g(&self.tcp_forged),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why [`Opener::open`] dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    Forged,
    Replayed,
    Stale,
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Drop::Malformed => "not a sealed AwesomeDML datagram",
            Drop::Forged => "authentication tag does not verify (wrong cluster key or forged)",
            Drop::Replayed => "replayed or too old",
            Drop::Stale => "sender clock too far from ours",
        })
    }
}

/// The id a sender puts in its datagrams: its address's hash, then `epoch`,
/// a number new to each sending process.
pub type SenderId = [u8; SENDER_LEN];

pub fn sender_id(addr: SocketAddr, epoch: [u8; 4]) -> SenderId {
    let h = blake3::hash(addr.to_string().as_bytes());
    let mut id = [0; SENDER_LEN];
    id[..4].copy_from_slice(&h.as_bytes()[..4]);
    id[4..].copy_from_slice(&epoch);
    id
}

/// A number for this process's datagrams: random, else (no entropy source)
/// from the clock and the process id.
fn epoch() -> [u8; 4] {
    random::<4>().unwrap_or_else(|_| {
        let mut h = blake3::Hasher::new();
        h.update(&now_micros().to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.finalize().as_bytes()[..4]
            .try_into()
            .expect("a prefix of 32 bytes")
    })
}

fn udp_tag(key: &ClusterKey, head: &[u8], payload: &[u8]) -> [u8; UDP_TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(&key.udp);
    h.update(head);
    h.update(payload);
    h.finalize().as_bytes()[..UDP_TAG_LEN]
        .try_into()
        .expect("a prefix of 32 bytes")
}

/// Seals this process's outgoing datagrams.
pub struct Sealer {
    key: ClusterKey,
    sender: SenderId,
    last: u64,
}

impl Sealer {
    pub fn new(key: ClusterKey, from: SocketAddr) -> Self {
        Self {
            key,
            sender: sender_id(from, epoch()),
            last: 0,
        }
    }

    /// `payload` framed as a sealed datagram.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        self.last = (self.last + 1).max(now_micros());
        let mut out = Vec::with_capacity(payload.len() + UDP_OVERHEAD);
        out.extend_from_slice(&UDP_MAGIC);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.last.to_be_bytes());
        let tag = udp_tag(&self.key, &out, payload);
        out.extend_from_slice(payload);
        out.extend_from_slice(&tag);
        out
    }
}

/// What one sender's datagrams have used up.
struct Window {
    newest: u64,
    /// Sequence numbers seen inside the reorder window, oldest first.
    recent: VecDeque<u64>,
    heard: u64,
}

/// Verifies incoming datagrams and remembers each sender's sequence numbers.
pub struct Opener {
    key: ClusterKey,
    senders: HashMap<SenderId, Window>,
    counters: Arc<Counters>,
}

impl Opener {
    /// Opens with `auth`'s key and counts drops in its counters.
    pub fn new(auth: &AuthContext) -> Self {
        Self {
            key: auth.key.clone(),
            senders: HashMap::new(),
            counters: auth.counters.clone(),
        }
    }

    /// The payload of an authentic, fresh datagram; anything else is counted
    /// and dropped.
    pub fn open<'a>(&mut self, bytes: &'a [u8]) -> std::result::Result<&'a [u8], Drop> {
        let r = self.check(bytes, now_micros());
        let c = &self.counters;
        match r {
            Err(Drop::Malformed) => bump(&c.udp_malformed),
            Err(Drop::Forged) => bump(&c.udp_forged),
            Err(Drop::Replayed) => bump(&c.udp_replayed),
            Err(Drop::Stale) => bump(&c.udp_stale),
            Ok(_) => {}
        }
        r
    }

    /// [`Opener::open`] against a given clock, without counting.
    pub fn check<'a>(&mut self, bytes: &'a [u8], now: u64) -> std::result::Result<&'a [u8], Drop> {
        if bytes.len() < UDP_OVERHEAD || bytes[..1] != UDP_MAGIC {
            return Err(Drop::Malformed);
        }
        let (head, rest) = bytes.split_at(UDP_HEAD_LEN);
        let (payload, tag) = rest.split_at(rest.len() - UDP_TAG_LEN);
        if !ct_eq(&udp_tag(&self.key, head, payload), tag) {
            return Err(Drop::Forged);
        }
        let sender: SenderId = head[1..1 + SENDER_LEN].try_into().expect("sender bytes");
        let seq = u64::from_be_bytes(head[1 + SENDER_LEN..].try_into().expect("8 bytes"));
        let skew = MAX_CLOCK_SKEW.as_micros() as u64;
        let reorder = REORDER_WINDOW.as_micros() as u64;
        if self.senders.len() > 64 {
            let idle = SENDER_IDLE.as_micros() as u64;
            self.senders
                .retain(|_, w| now.saturating_sub(w.heard) < idle);
        }
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
                },
            );
            return Ok(payload);
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
        Ok(payload)
    }
}

/// The TCP handshake. The client opens with [`HELLO_MAGIC`] and a random
/// nonce; the server answers with its nonce and a tag proving it holds the
/// key; the client's first bytes after that are its own proof. Both nonces
/// feed the per-direction frame keys, so frames of one connection mean
/// nothing on another.
pub mod handshake {
    use super::{ClusterKey, TAG_LEN, ct_eq, random};
    use crate::error::Result;

    /// First bytes of every authenticated connection (protocol 1).
    pub const HELLO_MAGIC: [u8; 4] = *b"DLA1";
    pub const NONCE_LEN: usize = 16;
    /// Client hello: magic and client nonce.
    pub const HELLO_LEN: usize = 4 + NONCE_LEN;
    /// Server reply: server nonce and server proof.
    pub const REPLY_LEN: usize = NONCE_LEN + TAG_LEN;

    pub type Nonce = [u8; NONCE_LEN];

    pub fn nonce() -> Result<Nonce> {
        random::<NONCE_LEN>()
    }

    pub fn hello(client: &Nonce) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&HELLO_MAGIC);
        out[4..].copy_from_slice(client);
        out
    }

    /// The client nonce of a hello, or `None` if it is not one.
    pub fn parse_hello(bytes: &[u8]) -> Option<Nonce> {
        if bytes.len() != HELLO_LEN || bytes[..4] != HELLO_MAGIC {
            return None;
        }
        bytes[4..].try_into().ok()
    }

    fn mac(key: &ClusterKey, label: &[u8], c: &Nonce, s: &Nonce) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(key.tcp());
        h.update(label);
        h.update(c);
        h.update(s);
        *h.finalize().as_bytes()
    }

    fn proof(key: &ClusterKey, label: &[u8], c: &Nonce, s: &Nonce) -> [u8; TAG_LEN] {
        mac(key, label, c, s)[..TAG_LEN]
            .try_into()
            .expect("16 of 32")
    }

    pub fn reply(key: &ClusterKey, c: &Nonce, s: &Nonce) -> [u8; REPLY_LEN] {
        let mut out = [0u8; REPLY_LEN];
        out[..super::handshake::NONCE_LEN].copy_from_slice(s);
        out[NONCE_LEN..].copy_from_slice(&proof(key, b"server proof", c, s));
        out
    }

    /// The server nonce of a reply whose proof verifies.
    pub fn check_reply(key: &ClusterKey, c: &Nonce, bytes: &[u8]) -> Option<Nonce> {
        if bytes.len() != REPLY_LEN {
            return None;
        }
        let s: Nonce = bytes[..NONCE_LEN].try_into().ok()?;
        ct_eq(&proof(key, b"server proof", c, &s), &bytes[NONCE_LEN..]).then_some(s)
    }

    pub fn client_proof(key: &ClusterKey, c: &Nonce, s: &Nonce) -> [u8; TAG_LEN] {
        proof(key, b"client proof", c, s)
    }

    pub fn check_client_proof(key: &ClusterKey, c: &Nonce, s: &Nonce, bytes: &[u8]) -> bool {
        bytes.len() == TAG_LEN && ct_eq(&client_proof(key, c, s), bytes)
    }

    /// Frame keys: (client to server, server to client).
    pub fn frame_keys(key: &ClusterKey, c: &Nonce, s: &Nonce) -> ([u8; 32], [u8; 32]) {
        (
            mac(key, b"client to server frames", c, s),
            mac(key, b"server to client frames", c, s),
        )
    }
}

/// Compares two tags in time independent of their contents (lengths are public).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn now_micros() -> u64 {
    crate::clock::unix_micros()
}

/// `N` bytes from the operating system's generator (`getrandom(2)`).
fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| Error::KeyFile {
        path: "the system's random generator".into(),
        reason: format!("cannot read random bytes: {e}"),
    })?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9000".parse().unwrap()
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_only_with_the_same_key() {
        let mut s = Sealer::new(key(1), addr());
        let mut o = Opener::new(&AuthContext::new(key(1)));
        let mut wrong = Opener::new(&AuthContext::new(key(2)));
        let p = s.seal(b"ping");
        assert_eq!(wrong.check(&p, now_micros()), Err(Drop::Forged));
        assert_eq!(o.check(&p, now_micros()), Ok(&b"ping"[..]));
        assert_eq!(o.check(&p, now_micros()), Err(Drop::Replayed));
        let q = s.seal(b"next");
        assert_eq!(o.check(&q, now_micros()), Ok(&b"next"[..]));
        assert_eq!(o.check(&p, now_micros()), Err(Drop::Replayed));
    }

    #[test]
    fn tampering_anywhere_is_forgery_and_junk_is_malformed() {
        let mut s = Sealer::new(key(1), addr());
        let p = s.seal(b"payload bytes");
        for i in 1..p.len() {
            let mut t = p.clone();
            t[i] ^= 0x40;
            assert_eq!(
                Opener::new(&AuthContext::new(key(1))).check(&t, now_micros()),
                Err(Drop::Forged),
                "byte {i}"
            );
        }
        let mut o = Opener::new(&AuthContext::new(key(1)));
        assert_eq!(o.check(&p[..10], now_micros()), Err(Drop::Malformed));
        assert_eq!(o.check(&[0u8; 60], now_micros()), Err(Drop::Malformed));
        assert_eq!(p.len(), b"payload bytes".len() + UDP_OVERHEAD);
    }

    #[test]
    fn reordering_inside_the_window_is_accepted_and_old_or_far_clocks_are_not() {
        let mut s = Sealer::new(key(1), addr());
        let (a, b) = (s.seal(b"a"), s.seal(b"b"));
        let mut o = Opener::new(&AuthContext::new(key(1)));
        let now = now_micros();
        assert!(o.check(&b, now).is_ok());
        assert!(
            o.check(&a, now).is_ok(),
            "an older datagram inside the window"
        );
        assert_eq!(o.check(&a, now), Err(Drop::Replayed));
        // A new receiver far in the future: the sender's clock is stale.
        let later = now + MAX_CLOCK_SKEW.as_micros() as u64 + 1_000_000;
        assert_eq!(
            Opener::new(&AuthContext::new(key(1))).check(&a, later),
            Err(Drop::Stale)
        );
        // Known sender, datagram older than the reorder window.
        let mut o = Opener::new(&AuthContext::new(key(1)));
        let old = s.seal(b"old");
        std::thread::sleep(Duration::from_millis(1));
        // The same process, later.
        let mut s2 = Sealer {
            last: now_micros() + REORDER_WINDOW.as_micros() as u64 + 10,
            ..s
        };
        assert!(o.check(&s2.seal(b"new"), now_micros()).is_ok());
        assert_eq!(o.check(&old, now_micros()), Err(Drop::Replayed));
    }

    #[test]
    fn a_restart_behind_its_old_clock_is_heard_and_old_datagrams_stay_replays() {
        let mut o = Opener::new(&AuthContext::new(key(1)));
        let now = now_micros();
        // The first process ran 30 s ahead (its clock was later stepped back).
        let mut first = Sealer {
            last: now + 30_000_000,
            ..Sealer::new(key(1), addr())
        };
        let old = first.seal(b"old");
        assert!(o.check(&old, now).is_ok());
        // Restarted at the same address with the true clock: a new window.
        let mut second = Sealer::new(key(1), addr());
        assert!(o.check(&second.seal(b"new"), now).is_ok());
        assert!(o.check(&second.seal(b"next"), now).is_ok());
        assert_eq!(o.check(&old, now), Err(Drop::Replayed));
    }

    #[test]
    fn key_text_round_trips_and_bad_text_is_named() {
        let text = ClusterKey::generate_hex().unwrap();
        let k = ClusterKey::from_hex(&format!(" {text}\n")).unwrap();
        assert_eq!(k.fingerprint().len(), 16);
        assert!(!format!("{k:?}").contains(&text));
        assert!(
            ClusterKey::from_hex("abc")
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
        let bad = format!("zz{}", &text[2..]);
        assert!(
            ClusterKey::from_hex(&bad)
                .unwrap_err()
                .to_string()
                .contains("\"zz\"")
        );
        let signed = format!("{}+0", &text[..62]);
        assert!(
            ClusterKey::from_hex(&signed)
                .unwrap_err()
                .to_string()
                .contains("\"+0\"")
        );
    }

    #[test]
    fn key_files_are_private_and_not_replaced_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dml-key-test-{}", std::process::id()));
        let path = dir.join("k");
        let _ = std::fs::remove_dir_all(&dir);
        let k = ClusterKey::write_new(&path, false).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap(), k);
        let e = ClusterKey::write_new(&path, false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let k2 = ClusterKey::write_new(&path, true).unwrap();
        assert_ne!(k, k2);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn handshake_proofs_bind_both_nonces_and_the_key() {
        use handshake::*;
        let (k, other) = (key(1), key(2));
        let (c, s) = (nonce().unwrap(), nonce().unwrap());
        let hello = hello(&c);
        assert_eq!(parse_hello(&hello), Some(c));
        assert_eq!(parse_hello(&hello[1..]), None);
        let r = reply(&k, &c, &s);
        assert_eq!(check_reply(&k, &c, &r), Some(s));
        assert_eq!(check_reply(&other, &c, &r), None);
        assert_eq!(check_reply(&k, &nonce().unwrap(), &r), None);
        let p = client_proof(&k, &c, &s);
        assert!(check_client_proof(&k, &c, &s, &p));
        assert!(!check_client_proof(&other, &c, &s, &p));
        assert_ne!(frame_keys(&k, &c, &s).0, frame_keys(&k, &c, &s).1);
    }
}
