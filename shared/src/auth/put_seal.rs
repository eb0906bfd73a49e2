//! End-to-end sealing of an SDFS put's data frames (an encrypted TCP put).
//!
//! The client draws a fresh key per put ([`PutKey::generate`]) and sends it
//! inside the write request, which travels in the connection's Noise
//! messages like every request. It seals each data frame once with
//! AES-256-GCM under that key; every hop of the replica chain forwards the
//! sealed frames as it received them, outside its own connection's Noise
//! messages, and opens a copy to store. The frames end with an end frame: no
//! bytes, only its tag.
//!
//! ```text
//! frame      ciphertext | tag (16)            (the end frame: tag only)
//! nonce      frame index (u64 BE) | 0 (4)     (unique: one key per put)
//! aad        CONTEXT | plan (u64 BE) | version (u64 BE) | index (u64 BE) | last (1)
//! ```
//!
//! A frame moved, dropped, repeated, taken from another put or changed does
//! not open ([`Opener`] counts the index itself), and a put cut short lacks
//! its end frame.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use serde::{Deserialize, Serialize};

/// Bytes of a per-put key.
pub const KEY_LEN: usize = 32;
/// Bytes of a sealed frame's tag (the whole of the end frame).
pub const TAG_LEN: usize = 16;
/// Binds the associated data to this use.
const CONTEXT: &[u8] = b"AwesomeDML 2026 SDFS put frame";

/// A put's key. Never written to disk or logged (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutKey(..)")
    }
}

impl PutKey {
    /// A fresh key from the OS's random source.
    pub fn generate() -> std::io::Result<Self> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(std::io::Error::other)?;
        Ok(Self(k))
    }
}

/// Why a put's frames were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "data frame {index} does not verify under the put's key (tampered, reordered, replayed from another put or cut short)"
    )]
    Unverified { index: u64 },
    #[error("data frame {index} is {len} bytes, shorter than its 16-byte tag")]
    Short { index: u64, len: usize },
    #[error("a data frame came after the put's end frame")]
    AfterEnd,
    #[error("the put's data frames ended without their sealed end frame (truncated)")]
    Truncated,
}

/// Seals and opens the frames of one put.
pub struct PutSeal {
    /// Boxed: the AES key schedule and GHASH tables are large.
    key: Box<LessSafeKey>,
    plan: u64,
    version: u64,
}

impl std::fmt::Debug for PutSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PutSeal(plan {}, v{})", self.plan, self.version)
    }
}

fn nonce(index: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

impl PutSeal {
    /// The frames of the put `plan` of `version` under `key`.
    pub fn new(key: &PutKey, plan: u64, version: u64) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, &key.0).expect("a 32-byte AES-256 key");
        Self {
            key: Box::new(LessSafeKey::new(key)),
            plan,
            version,
        }
    }

    fn aad(&self, index: u64, last: bool) -> [u8; CONTEXT.len() + 25] {
        let mut a = [0u8; CONTEXT.len() + 25];
        let (c, rest) = a.split_at_mut(CONTEXT.len());
        c.copy_from_slice(CONTEXT);
        rest[..8].copy_from_slice(&self.plan.to_be_bytes());
        rest[8..16].copy_from_slice(&self.version.to_be_bytes());
        rest[16..24].copy_from_slice(&index.to_be_bytes());
        rest[24] = last as u8;
        a
    }

    /// Seals `frame`'s bytes in place as frame `index` and appends the tag.
    pub fn seal(&self, index: u64, last: bool, frame: &mut Vec<u8>) {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(index), Aad::from(self.aad(index, last)), frame)
            .expect("a frame is far below AES-GCM's length limit");
        frame.extend_from_slice(tag.as_ref());
    }

    /// The end frame after `frames` data frames.
    pub fn end_frame(&self, frames: u64) -> Vec<u8> {
        let mut f = Vec::with_capacity(TAG_LEN);
        self.seal(frames, true, &mut f);
        f
    }

    /// Opens sealed `frame` (ciphertext and tag) in place as frame `index`;
    /// on success it holds the plain bytes. On an error it holds nothing
    /// worth reading.
    pub fn open(&self, index: u64, last: bool, frame: &mut Vec<u8>) -> Result<(), SealError> {
        let Some(n) = frame.len().checked_sub(TAG_LEN) else {
            return Err(SealError::Short {
                index,
                len: frame.len(),
            });
        };
        let tag: [u8; TAG_LEN] = frame[n..].try_into().expect("TAG_LEN bytes");
        let aad = Aad::from(self.aad(index, last));
        let ok = self
            .key
            .open_in_place_separate_tag(nonce(index), aad, Tag::from(tag), &mut frame[..n], 0..)
            .is_ok();
        frame.truncate(n);
        if ok {
            Ok(())
        } else {
            Err(SealError::Unverified { index })
        }
    }
}

/// What [`Opener::open`] found in a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The next plain bytes.
    Data(Vec<u8>),
    /// The end frame: every frame before it verified, none is missing.
    End,
}

/// Opens a put's frames in the order they must come: each data frame has the
/// next index, the end frame (tag only) has the last flag, and nothing
/// follows it.
#[derive(Debug)]
pub struct Opener {
    seal: PutSeal,
    next: u64,
    ended: bool,
}

impl Opener {
    pub fn new(seal: PutSeal) -> Self {
        Self {
            seal,
            next: 0,
            ended: false,
        }
    }

    /// Whether a sealed frame of `len` bytes is the end frame.
    pub fn is_end(len: usize) -> bool {
        len <= TAG_LEN
    }

    /// Opens the next frame in place.
    pub fn open(&mut self, mut frame: Vec<u8>) -> Result<Opened, SealError> {
        if self.ended {
            return Err(SealError::AfterEnd);
        }
        let last = Self::is_end(frame.len());
        self.seal.open(self.next, last, &mut frame)?;
        self.next += 1;
        if last {
            self.ended = true;
            Ok(Opened::End)
        } else {
            Ok(Opened::Data(frame))
        }
    }

    /// Checks that the end frame came (at the end of the stream).
    pub fn finish(&self) -> Result<(), SealError> {
        if self.ended {
            Ok(())
        } else {
            Err(SealError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three sealed data frames and the end frame of a put.
    fn put(key: &PutKey, plan: u64, version: u64) -> Vec<Vec<u8>> {
        let s = PutSeal::new(key, plan, version);
        let mut frames: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for (i, f) in frames.iter_mut().enumerate() {
            s.seal(i as u64, false, f);
        }
        frames.push(s.end_frame(3));
        frames
    }

    fn open_all(
        key: &PutKey,
        plan: u64,
        version: u64,
        frames: &[Vec<u8>],
    ) -> Result<Vec<u8>, SealError> {
        let mut o = Opener::new(PutSeal::new(key, plan, version));
        let mut out = Vec::new();
        for f in frames {
            match o.open(f.clone())? {
                Opened::Data(b) => out.extend_from_slice(&b),
                Opened::End => {}
            }
        }
        o.finish()?;
        Ok(out)
    }

    #[test]
    fn a_put_opens_whole_and_in_order() {
        let key = PutKey::generate().unwrap();
        let frames = put(&key, 7, 2);
        let got = open_all(&key, 7, 2, &frames).unwrap();
        let want: Vec<u8> = (0..3u8).flat_map(|i| vec![i; 1000 + i as usize]).collect();
        assert_eq!(got, want);
        assert!(
            frames[0][..1000] != [0u8; 1000][..],
            "the bytes are encrypted"
        );
        assert_eq!(format!("{key:?}"), "PutKey(..)", "the key is not logged");
    }

    #[test]
    fn tampered_reordered_truncated_or_foreign_frames_are_refused() {
        let key = PutKey::generate().unwrap();
        let frames = put(&key, 7, 2);
        let unverified = |index| Err(SealError::Unverified { index });

        let mut bad = frames.clone();
        bad[1][10] ^= 1;
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(1));
        let mut bad = frames.clone();
        *bad[2].last_mut().unwrap() ^= 1;
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(2), "the tag");

        let mut bad = frames.clone();
        bad.swap(0, 1);
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(0), "reordered");
        let mut bad = frames.clone();
        bad.remove(1);
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(1), "dropped");
        let mut bad = frames.clone();
        bad.insert(1, frames[0].clone());
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(1), "replayed");

        // Cut short: without the end frame.
        assert_eq!(
            open_all(&key, 7, 2, &frames[..3]),
            Err(SealError::Truncated)
        );
        // The real end frame after a dropped data frame.
        let s = PutSeal::new(&key, 7, 2);
        let mut cut = frames[..2].to_vec();
        cut.push(s.end_frame(3));
        assert_eq!(open_all(&key, 7, 2, &cut), unverified(2));
        // A data frame sealed with the last flag does not pass as data.
        let mut bad = frames.clone();
        bad[2] = vec![2u8; 1002];
        s.seal(2, true, &mut bad[2]);
        assert_eq!(open_all(&key, 7, 2, &bad), unverified(2));
        // After the end, nothing.
        let mut bad = frames.clone();
        bad.push(frames[0].clone());
        assert_eq!(open_all(&key, 7, 2, &bad), Err(SealError::AfterEnd));
        // Short of a tag.
        let mut o = Opener::new(PutSeal::new(&key, 7, 2));
        assert_eq!(
            o.open(vec![1, 2, 3]),
            Err(SealError::Short { index: 0, len: 3 })
        );

        // Another put: another key, plan or version.
        let other = PutKey::generate().unwrap();
        assert_eq!(open_all(&other, 7, 2, &frames), unverified(0));
        assert_eq!(open_all(&key, 8, 2, &frames), unverified(0));
        assert_eq!(open_all(&key, 7, 3, &frames), unverified(0));
    }

    #[test]
    fn an_empty_put_is_its_end_frame() {
        let key = PutKey::generate().unwrap();
        let s = PutSeal::new(&key, 1, 1);
        assert_eq!(open_all(&key, 1, 1, &[s.end_frame(0)]), Ok(vec![]));
    }
}
