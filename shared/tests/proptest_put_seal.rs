//! Property tests of a sealed put's frame decoder (`dml_shared::auth::put_seal::Opener`):
//! an untouched put opens to exactly its bytes; any edit of its frames (a flipped bit, two
//! frames swapped, one dropped, repeated, cut or taken from another put) is refused with
//! an error, never a panic and never a different put's bytes; any bytes at all as frames
//! never open.

use dml_shared::auth::put_seal::{Opened, Opener, PutKey, PutSeal, SealError};
use proptest::collection::vec;
use proptest::prelude::*;

const KEY: PutKey = PutKey([7; 32]);

/// The sealed frames of a put of `pieces`, then the end frame.
fn sealed(plan: u64, version: u64, pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let s = PutSeal::new(&KEY, plan, version);
    let mut frames: Vec<Vec<u8>> = pieces.to_vec();
    for (i, f) in frames.iter_mut().enumerate() {
        s.seal(i as u64, false, f);
    }
    frames.push(s.end_frame(frames.len() as u64));
    frames
}

/// Opens `frames` as the put (`plan`, `version`): the bytes, or the first refusal.
fn open_all(plan: u64, version: u64, frames: &[Vec<u8>]) -> Result<Vec<u8>, SealError> {
    let mut o = Opener::new(PutSeal::new(&KEY, plan, version));
    let mut out = Vec::new();
    for f in frames {
        if let Opened::Data(b) = o.open(f.clone())? {
            out.extend_from_slice(&b);
        }
    }
    o.finish()?;
    Ok(out)
}

/// A piece of a file: never empty (an empty piece is not sent).
fn piece() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..200)
}

proptest! {
    #[test]
    fn an_untouched_put_opens_to_its_bytes(pieces in vec(piece(), 0..8), plan: u64, version: u64) {
        let frames = sealed(plan, version, &pieces);
        prop_assert_eq!(open_all(plan, version, &frames), Ok(pieces.concat()));
    }

    #[test]
    fn any_edit_of_the_frames_is_refused(
        pieces in vec(piece(), 1..8),
        op in 0u8..6,
        a: usize,
        b: usize,
        bit in 0u8..8,
    ) {
        let frames = sealed(1, 1, &pieces);
        let n = frames.len();
        let mut bad = frames.clone();
        match op {
            0 => {
                let f = &mut bad[a % n];
                let at = b % f.len();
                f[at] ^= 1 << bit;
            }
            1 => bad.swap(a % n, b % n),
            2 => {
                bad.remove(a % n);
            }
            3 => bad.insert(b % (n + 1), frames[a % n].clone()),
            4 => {
                let f = &mut bad[a % n];
                f.truncate(b % f.len());
            }
            _ => bad[a % n] = sealed(1, 2, &pieces)[a % n].clone(),
        }
        prop_assume!(bad != frames);
        prop_assert!(open_all(1, 1, &bad).is_err(), "op {} opened", op);
    }

    #[test]
    fn any_bytes_as_frames_never_open(frames in vec(vec(any::<u8>(), 0..64), 0..6)) {
        let mut o = Opener::new(PutSeal::new(&KEY, 1, 1));
        for f in frames {
            prop_assert!(o.open(f).is_err());
        }
        prop_assert_eq!(o.finish(), Err(SealError::Truncated));
    }
}
