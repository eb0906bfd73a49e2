//! The envelope around every UDP datagram and TCP frame: a magic number, the
//! protocol version and the message kind, then a postcard payload.
//!
//! ```text
//! +--------+---------+------+------------------+
//! | 0xD3 4C| version | kind | postcard payload |
//! +--------+---------+------+------------------+
//! ```

use crate::error::{Error, Result};
use serde::{Serialize, de::DeserializeOwned};

/// "DL": first two bytes of every AwesomeDML packet.
pub const MAGIC: u16 = 0xD34C;
/// Bumped on every incompatible change of any payload.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 4;

/// What the payload is; the receiver refuses kinds it does not expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Membership protocol datagram (UDP).
    Gossip = 1,
    /// Agent API request (TCP).
    Request = 2,
    /// Agent API response (TCP).
    Response = 3,
}

/// Encodes `payload` behind an envelope of `kind`.
pub fn encode<T: Serialize>(kind: Kind, payload: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(kind as u8);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_io(payload, &mut out).expect("postcard into Vec");
    out
}

/// Checks the envelope and returns the payload bytes.
pub fn open(kind: Kind, bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            len: bytes.len(),
            need: HEADER_LEN,
        });
    }
    let magic = u16::from_be_bytes([bytes[0], bytes[1]]);
    if magic != MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(Error::BadVersion {
            found: bytes[2],
            supported: PROTOCOL_VERSION,
        });
    }
    if bytes[3] != kind as u8 {
        return Err(Error::BadKind {
            found: bytes[3],
            expected: kind as u8,
        });
    }
    Ok(&bytes[HEADER_LEN..])
}

/// Checks the envelope and decodes the payload. Trailing bytes are an error,
/// so a truncated-then-padded packet is never half-read.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T> {
    let payload = open(kind, bytes)?;
    let (value, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(Error::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_bad_headers() {
        let bytes = encode(Kind::Request, &(7u32, "x".to_string()));
        let back: (u32, String) = decode(Kind::Request, &bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));

        assert!(matches!(
            decode::<(u32, String)>(Kind::Response, &bytes),
            Err(Error::BadKind { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = 0;
        assert!(matches!(
            decode::<(u32, String)>(Kind::Request, &bad),
            Err(Error::BadMagic { .. })
        ));
        let mut bad = bytes.clone();
        bad[2] = 99;
        assert!(matches!(
            decode::<(u32, String)>(Kind::Request, &bad),
            Err(Error::BadVersion { found: 99, .. })
        ));
        assert!(matches!(
            decode::<(u32, String)>(Kind::Request, &bytes[..2]),
            Err(Error::Truncated { .. })
        ));
        assert!(decode::<(u32, String)>(Kind::Request, &bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<(u32, String)>(Kind::Request, &long).is_err());
    }
}
