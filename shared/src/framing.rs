//! Length-prefixed TCP frames: a big-endian `u32` length, then that many bytes.
//! The length is checked against a hard maximum before anything is allocated.

use crate::error::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default hard limit on one frame (16 MiB); bulk data travels in many frames.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Reads one frame. `Ok(None)` means the peer closed cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
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
}
