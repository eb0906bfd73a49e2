//! Noise transport messages (AESGCM) sealed and opened with `ring` directly,
//! from the two cipher keys `snow` splits off at the end of the handshake.
//!
//! The messages are Noise's own (`ENCRYPT(k, n, "", plaintext)`: AES-256-GCM,
//! a 96-bit nonce of 32 zero bits and `n` big-endian, no associated data; a
//! test checks them against `snow`'s transport). Only the API differs: `snow`
//! copies every message into an initialized output before sealing or opening
//! it there, while here the caller seals bytes where they already lie (a get's
//! file chunk: no copy) and opens a message in memory of its choice, with the
//! tag apart (a reader's spare capacity: no zeroing).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// The AEAD tag of a transport message.
pub const TAG_LEN: usize = 16;

/// A message whose tag does not verify with the expected key and nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a transport message does not verify")]
pub struct Unverified;

/// The two directions' keys of one connection.
pub struct Transport {
    /// Boxed: the AES key schedules and GHASH tables are large.
    keys: Box<Keys>,
}

struct Keys {
    send: LessSafeKey,
    recv: LessSafeKey,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

/// Noise's AESGCM nonce for message `n`.
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

impl Transport {
    /// The keys of Noise's `Split()`: `(initiator to responder, responder to
    /// initiator)`, as `snow`'s `dangerously_get_raw_split` returns them.
    pub fn from_split(split: ([u8; 32], [u8; 32]), initiator: bool) -> Self {
        let (i_to_r, r_to_i) = (key(&split.0), key(&split.1));
        let (send, recv) = if initiator {
            (i_to_r, r_to_i)
        } else {
            (r_to_i, i_to_r)
        };
        Self {
            keys: Box::new(Keys { send, recv }),
        }
    }

    /// Encrypts `in_out` in place as message `n`; the tag goes after it.
    pub fn seal_in_place(&self, n: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .keys
            .send
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), in_out)
            .expect("a transport message is far below AES-GCM's length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts message `n`'s ciphertext in place, checking `tag`; on an
    /// error `in_out` holds no plaintext worth reading.
    pub fn open_in_place(
        &self,
        n: u64,
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Unverified> {
        self.keys
            .recv
            .open_in_place_separate_tag(nonce(n), Aad::empty(), Tag::from(*tag), in_out, 0..)
            .map(|_| ())
            .map_err(|_| Unverified)
    }

    /// Seals `payload` as message `n` into `out` (ciphertext and tag);
    /// returns its length. `out` must hold `payload.len() + TAG_LEN` bytes.
    pub fn write_message(&self, n: u64, payload: &[u8], out: &mut [u8]) -> usize {
        let len = payload.len();
        out[..len].copy_from_slice(payload);
        let tag = self.seal_in_place(n, &mut out[..len]);
        out[len..len + TAG_LEN].copy_from_slice(&tag);
        len + TAG_LEN
    }

    /// Opens message `n` (ciphertext and tag) into `out`; returns the
    /// payload's length. `out` must hold the ciphertext.
    pub fn read_message(
        &self,
        n: u64,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Unverified> {
        let Some(len) = message.len().checked_sub(TAG_LEN) else {
            return Err(Unverified);
        };
        let tag: &[u8; TAG_LEN] = message[len..].try_into().expect("TAG_LEN bytes");
        out[..len].copy_from_slice(&message[..len]);
        self.open_in_place(n, &mut out[..len], tag)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snow::{Builder, HandshakeState};

    const PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

    /// An initiator and a responder after a real NNpsk0 handshake.
    fn handshaken() -> (HandshakeState, HandshakeState) {
        let psk = [7u8; 32];
        let build = || Builder::new(PARAMS.parse().unwrap()).psk(0, &psk).unwrap();
        let mut i = build().build_initiator().unwrap();
        let mut r = build().build_responder().unwrap();
        let (mut m, mut p) = ([0u8; 128], [0u8; 128]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        (i, r)
    }

    #[test]
    fn messages_are_noise_transport_messages_both_ways() {
        let (mut i, r) = handshaken();
        let ours = Transport::from_split(i.dangerously_get_raw_split(), true);
        let snow = r.into_stateless_transport_mode().unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|x| x as u8).collect();
        let mut wire = vec![0u8; payload.len() + TAG_LEN];
        let mut out = vec![0u8; wire.len()];

        // Ours sealed, snow opens.
        let n = ours.write_message(5, &payload, &mut wire);
        let m = snow.read_message(5, &wire[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &payload[..]);

        // Snow sealed, ours opens.
        let n = snow.write_message(6, &payload, &mut wire).unwrap();
        let m = ours.read_message(6, &wire[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &payload[..]);
    }

    #[test]
    fn a_tampered_reordered_or_reflected_message_does_not_open() {
        let (mut i, mut r) = handshaken();
        let client = Transport::from_split(i.dangerously_get_raw_split(), true);
        let server = Transport::from_split(r.dangerously_get_raw_split(), false);
        let mut wire = [0u8; 64];
        let n = client.write_message(3, b"sealed bytes", &mut wire);
        let mut out = [0u8; 64];
        assert_eq!(server.read_message(3, &wire[..n], &mut out), Ok(12));
        assert_eq!(&out[..12], b"sealed bytes");
        // Another nonce (a replayed or reordered message).
        assert_eq!(
            server.read_message(4, &wire[..n], &mut out),
            Err(Unverified)
        );
        // Reflected back to its sender.
        assert_eq!(
            client.read_message(3, &wire[..n], &mut out),
            Err(Unverified)
        );
        // A flipped bit, in the ciphertext or the tag.
        for at in [0, n - 1] {
            let mut bad = wire;
            bad[at] ^= 1;
            assert_eq!(server.read_message(3, &bad[..n], &mut out), Err(Unverified));
        }
        // Shorter than a tag.
        assert_eq!(
            server.read_message(3, &wire[..5], &mut out),
            Err(Unverified)
        );
    }
}
