//! The TCP handshake. The client opens with [`HELLO_MAGIC`] and a random
//! nonce; the server answers with its nonce and a tag proving it holds the
//! key; the client's first bytes after that are its own proof. Both nonces
//! feed the per-direction frame keys, so frames of one connection mean
//! nothing on another.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; super::super::KEY_LEN])
    }

    #[test]
    fn handshake_proofs_bind_both_nonces_and_the_key() {
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
