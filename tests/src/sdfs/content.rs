//! Test file contents: deterministic pseudo-random bytes, so every put of a test carries
//! distinct data that can be recognised again on any agent's disk.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Bytes written per `write` call by [`write_pattern_file`].
const WRITE_CHUNK: usize = 1 << 20;

/// splitmix64: tiny, fast, good enough to make every seed's bytes unique.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    SplitMix(seed).fill(&mut v);
    v
}

/// Printable text of about `len` bytes naming `label`, with no line that looks like
/// another's: for checking `get-versions --merge` output, whose delimiter lines are text.
pub fn text(label: &str, len: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut rng = SplitMix(
        label
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
    );
    let mut line = 0;
    while out.len() < len {
        out.push_str(&format!("{label} line {line} {:016x}\n", rng.next()));
        line += 1;
    }
    out.into_bytes()
}

/// Writes `bytes` to `path`, creating its parent directories.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create \"{}\"", p.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write \"{}\"", path.display()))
}

/// Writes `len` bytes of [`pattern`]`(seed, ..)` to `path` without holding them in memory
/// (the stream continues across chunks, so the file is not `pattern(seed, len)`).
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("cannot create \"{}\"", path.display()))?,
    );
    let mut rng = SplitMix(seed);
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(WRITE_CHUNK as u64)).expect("chunk fits usize");
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Whether two files hold the same bytes, compared a chunk at a time.
pub fn same_file_contents(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| {
        std::fs::File::open(p).with_context(|| format!("cannot open \"{}\"", p.display()))
    };
    let (fa, fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; WRITE_CHUNK], vec![0u8; WRITE_CHUNK]);
    loop {
        let n = read_full(&mut ra, &mut ba)?;
        let m = read_full(&mut rb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_repeat_by_seed() {
        assert_eq!(pattern(1, 100), pattern(1, 100));
        assert_ne!(pattern(1, 100), pattern(2, 100));
        assert_eq!(pattern(3, 13).len(), 13);
        let t = text("v1", 200);
        assert!(t.len() >= 200 && t.starts_with(b"v1 line 0 "));
    }
}
