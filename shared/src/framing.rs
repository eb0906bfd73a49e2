//! Length-prefixed TCP frames: a big-endian `u32` length, then that many bytes.
//! The length is checked against a hard maximum before anything is allocated.

use crate::error::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default hard limit on one frame (16 MiB); bulk data travels in many frames.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Reads one frame. `Ok(None)` means the peer closed cleanly between frames;
/// a close inside the length prefix or the body is an error. The buffer grows
/// with the bytes that actually arrive, so a peer announcing a large frame and
/// sending nothing costs no memory.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    let read = r.take(len as u64).read_to_end(&mut buf).await?;
    if read < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(buf))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], max: usize) -> Result<()> {
    if bytes.len() > max {
        return Err(Error::FrameTooLarge {
            len: bytes.len(),
            max,
        });
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused_before_reading() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello", 64).await.unwrap();
        assert_eq!(read_frame(&mut b, 64).await.unwrap().unwrap(), b"hello");

        a.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 64).await,
            Err(Error::FrameTooLarge {
                len: 1_000_000,
                max: 64
            })
        ));
        assert!(write_frame(&mut a, &[0u8; 65], 64).await.is_err());
        drop(a);
        assert!(read_frame(&mut b, 64).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_close_inside_a_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b, 64).await.is_err());
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(read_frame(&mut b, 64).await.is_err());
    }
}
