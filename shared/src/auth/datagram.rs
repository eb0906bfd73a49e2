//! Sealed UDP datagrams: [`Sealer`] seals, [`Opener`] verifies and drops replays (see `auth`).

use super::{AuthContext, ClusterKey, Counters, bump, ct_eq, now_micros, random};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::super::KEY_LEN;
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
}
