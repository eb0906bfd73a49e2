//! The TCP handshake: Noise `NNpsk0` through the `snow` crate, with a
//! pre-shared key derived from the cluster key ([`ClusterKey::noise_psk`]).
//! No socket here: these functions turn bytes into bytes, so the fuzz
//! targets reach every decoder; [`crate::conn`] moves them.
//!
//! ```text
//! client -> server  hello   "DLN2" | Noise msg 1 (-> psk, e; payload: protection)   53 bytes
//! server -> client  reply   status 0 | Noise msg 2 (<- e, ee; payload: protection)  50 bytes
//!                           or status 1 alone: the hello does not verify (wrong key)
//! client -> server  confirm Noise transport message 0, empty                         16 bytes
//! ```
//!
//! Both parties prove the key: the server by decrypting the hello (the PSK
//! is mixed in before its payload), the client by decrypting the reply. The
//! confirm shows the server that the hello is not a replay (a replayer
//! cannot compute `ee`) before the connection takes an API slot. Each side
//! says which [`Protection`] it wants; both must agree, else both fail with
//! an error naming `security.encrypt_tcp`. The refusal status is not
//! authenticated: forging it only breaks a handshake, as closing would.

use super::transport::Transport;
use super::{ClusterKey, Role};
use snow::HandshakeState;

/// First bytes of every connection (protocol 2: Noise). Protocol 1 sent
/// [`OLD_HELLO_MAGIC`].
pub const HELLO_MAGIC: [u8; 4] = *b"DLN2";
/// The hand-written handshake of protocol 1, refused with a clear error.
pub const OLD_HELLO_MAGIC: [u8; 4] = *b"DLA1";
/// The Noise protocol: no static keys, the PSK in the first message; X25519,
/// AES-256-GCM (ring, with AES-NI where the CPU has it) and SHA-256.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound into both handshake messages (Noise prologue): another program's
/// Noise handshake with the same key cannot be taken for ours.
const PROLOGUE: &[u8] = b"AwesomeDML 2026 TCP protocol 2";
/// An ephemeral X25519 public key.
const DH_LEN: usize = 32;
/// The AEAD tag of a Noise message.
pub const NOISE_TAG_LEN: usize = 16;
/// Bytes of a handshake payload: the [`Protection`] byte.
const PAYLOAD_LEN: usize = 1;
/// Noise message 1 or 2: an ephemeral key and the encrypted payload.
const NOISE_MSG_LEN: usize = DH_LEN + PAYLOAD_LEN + NOISE_TAG_LEN;
/// Client hello: magic and Noise message 1.
pub const HELLO_LEN: usize = HELLO_MAGIC.len() + NOISE_MSG_LEN;
/// Server reply after its status byte: Noise message 2.
pub const REPLY_BODY_LEN: usize = NOISE_MSG_LEN;
/// Reply status: Noise message 2 follows.
pub const STATUS_OK: u8 = 0;
/// Reply status: the hello did not verify with the server's key; nothing follows.
pub const STATUS_WRONG_KEY: u8 = 1;
/// The client's confirm: an empty transport message.
pub const CONFIRM_LEN: usize = NOISE_TAG_LEN;
/// Largest Noise message (its length travels in two bytes).
pub const MAX_NOISE_MSG: usize = 65535;

/// What protects a connection's bytes after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Every byte in Noise transport messages (TCP with `security.encrypt_tcp`).
    Encrypted,
    /// Frames in clear with a keyed-BLAKE3 tag, bulk data raw: the local
    /// socket (peer credentials checked), and TCP with `encrypt_tcp = false`.
    Authenticated,
}

impl Protection {
    fn byte(self) -> u8 {
        match self {
            Protection::Encrypted => 1,
            Protection::Authenticated => 0,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Protection::Encrypted),
            0 => Some(Protection::Authenticated),
            _ => None,
        }
    }

    /// The value of `security.encrypt_tcp` that asks for this protection.
    pub fn setting(self) -> bool {
        self == Protection::Encrypted
    }
}

/// Why a handshake message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("its first bytes are not an AwesomeDML hello")]
    NotHello,
    #[error(
        "it speaks the handshake of AwesomeDML protocol 1 (DLA1); this agent speaks protocol 2 (Noise): upgrade it"
    )]
    OldProtocol,
    #[error("it does not hold cluster key {fingerprint}")]
    WrongKey { fingerprint: String },
    #[error("a handshake message of {len} bytes is malformed")]
    Malformed { len: usize },
    /// The two ends disagree on `security.encrypt_tcp`.
    #[error(
        "security.encrypt_tcp is {ours} here and {theirs} at the other end; both ends must have the same setting"
    )]
    ProtectionMismatch { ours: bool, theirs: bool },
    #[error("the Noise library refused: {0}")]
    Noise(String),
}

type HsResult<T> = std::result::Result<T, HandshakeError>;

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

fn builder(key: &ClusterKey) -> HsResult<snow::Builder<'_>> {
    let params = NOISE_PARAMS.parse().map_err(noise)?;
    snow::Builder::new(params)
        .psk(0, key.noise_psk())
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(noise)
}

/// An established session: the transport keys, and the handshake hash,
/// unique to this connection (both ephemeral keys are in it).
pub struct Session {
    pub transport: Transport,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

fn session(mut hs: HandshakeState) -> HsResult<Session> {
    if !hs.is_handshake_finished() {
        return Err(HandshakeError::Noise(
            "the handshake is not finished".into(),
        ));
    }
    let hash = hs
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::Noise("the handshake hash is not 32 bytes".into()))?;
    // Noise's Split(), sealed and opened with ring directly (see `transport`).
    let initiator = hs.is_initiator();
    let transport = Transport::from_split(hs.dangerously_get_raw_split(), initiator);
    Ok(Session { transport, hash })
}

/// The client between its hello and the server's reply.
pub struct Initiator {
    hs: HandshakeState,
    fingerprint: String,
    protection: Protection,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Initiator({:?})", self.protection)
    }
}

/// The client's hello, asking for `protection`.
pub fn hello(key: &ClusterKey, protection: Protection) -> HsResult<(Initiator, [u8; HELLO_LEN])> {
    let mut hs = builder(key)?.build_initiator().map_err(noise)?;
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(&HELLO_MAGIC);
    let n = hs
        .write_message(&[protection.byte()], &mut out[4..])
        .map_err(noise)?;
    debug_assert_eq!(n, NOISE_MSG_LEN);
    let fingerprint = key.fingerprint();
    Ok((
        Initiator {
            hs,
            fingerprint,
            protection,
        },
        out,
    ))
}

/// Whether the first four bytes of a connection open a hello: `Ok` for
/// ours, which the server then reads to [`HELLO_LEN`].
pub fn check_magic(first: &[u8]) -> HsResult<()> {
    if first == HELLO_MAGIC {
        Ok(())
    } else if first == OLD_HELLO_MAGIC {
        Err(HandshakeError::OldProtocol)
    } else {
        Err(HandshakeError::NotHello)
    }
}

fn payload_protection(payload: &[u8], len: usize) -> HsResult<Protection> {
    match payload {
        [b] => Protection::from_byte(*b).ok_or(HandshakeError::Malformed { len }),
        _ => Err(HandshakeError::Malformed { len }),
    }
}

/// The server's answer to a hello.
#[derive(Debug)]
pub enum Answer {
    /// Send `reply`; then, if `session` is `Ok`, wait for the confirm.
    Reply {
        reply: [u8; 1 + REPLY_BODY_LEN],
        session: HsResult<Session>,
        /// The candidate the hello verified with, and its role.
        key: Box<ClusterKey>,
        role: Role,
    },
    /// Send the one-byte `reply` (a wrong-key status, or nothing for junk)
    /// and close: `error` says why.
    Refuse {
        reply: Option<u8>,
        error: HandshakeError,
    },
}

/// The server's side: reads a whole hello (magic included) and answers it,
/// with `protection` for this connection. The hello may use any of the
/// `candidates` (installed keys and client credentials); each is tried in
/// turn, which costs a hash and a one-byte AEAD open each (no DH before a
/// key matches), as memberlist tries each key of its keyring.
pub fn respond(candidates: &[(ClusterKey, Role)], hello: &[u8], protection: Protection) -> Answer {
    let refuse = |reply, error| Answer::Refuse { reply, error };
    if hello.len() != HELLO_LEN {
        return refuse(None, HandshakeError::Malformed { len: hello.len() });
    }
    if let Err(e) = check_magic(&hello[..4]) {
        return refuse(None, e);
    }
    let mut payload = [0u8; NOISE_MSG_LEN];
    let mut matched = None;
    for (key, role) in candidates {
        let mut hs = match builder(key).and_then(|b| b.build_responder().map_err(noise)) {
            Ok(hs) => hs,
            Err(e) => return refuse(None, e),
        };
        if let Ok(n) = hs.read_message(&hello[4..], &mut payload) {
            matched = Some((hs, n, key, *role));
            break;
        }
    }
    let Some((mut hs, n, key, role)) = matched else {
        return refuse(
            Some(STATUS_WRONG_KEY),
            HandshakeError::WrongKey {
                fingerprint: candidates
                    .first()
                    .map_or_else(|| "(none)".into(), |(k, _)| k.fingerprint()),
            },
        );
    };
    let theirs = match payload_protection(&payload[..n], hello.len()) {
        Ok(p) => p,
        Err(e) => return refuse(None, e),
    };
    let mut reply = [0u8; 1 + REPLY_BODY_LEN];
    reply[0] = STATUS_OK;
    if let Err(e) = hs.write_message(&[protection.byte()], &mut reply[1..]) {
        return refuse(None, noise(e));
    }
    let session = if theirs == protection {
        session(hs)
    } else {
        Err(HandshakeError::ProtectionMismatch {
            ours: protection.setting(),
            theirs: theirs.setting(),
        })
    };
    Answer::Reply {
        reply,
        session,
        key: Box::new(key.clone()),
        role,
    }
}

impl Initiator {
    /// Checks the reply's body (after [`STATUS_OK`]) and returns the session
    /// and the confirm to send.
    pub fn finish(mut self, body: &[u8]) -> HsResult<(Session, [u8; CONFIRM_LEN])> {
        let wrong_key = || HandshakeError::WrongKey {
            fingerprint: self.fingerprint.clone(),
        };
        if body.len() != REPLY_BODY_LEN {
            return Err(HandshakeError::Malformed { len: body.len() });
        }
        let mut payload = [0u8; NOISE_MSG_LEN];
        let n = self
            .hs
            .read_message(body, &mut payload)
            .map_err(|_| wrong_key())?;
        let theirs = payload_protection(&payload[..n], body.len())?;
        if theirs != self.protection {
            return Err(HandshakeError::ProtectionMismatch {
                ours: self.protection.setting(),
                theirs: theirs.setting(),
            });
        }
        let s = session(self.hs)?;
        let mut confirm = [0u8; CONFIRM_LEN];
        s.transport.write_message(0, &[], &mut confirm);
        Ok((s, confirm))
    }

    /// The refusal of a reply whose status is not [`STATUS_OK`].
    pub fn refused(&self, status: u8) -> HandshakeError {
        if status == STATUS_WRONG_KEY {
            HandshakeError::WrongKey {
                fingerprint: self.fingerprint.clone(),
            }
        } else {
            HandshakeError::Malformed { len: 1 }
        }
    }
}

/// The server's check of the client's confirm (transport message 0).
pub fn check_confirm(s: &Session, bytes: &[u8]) -> bool {
    let mut out = [0u8; CONFIRM_LEN];
    bytes.len() == CONFIRM_LEN && s.transport.read_message(0, bytes, &mut out) == Ok(0)
}

/// Frame keys of an [`Protection::Authenticated`] connection: (client to
/// server, server to client), keyed with the cluster key over the handshake
/// hash, so they differ on every connection.
pub fn frame_keys(key: &ClusterKey, hash: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mac = |label: &[u8]| {
        let mut h = blake3::Hasher::new_keyed(key.tcp());
        h.update(label);
        h.update(hash);
        *h.finalize().as_bytes()
    };
    (
        mac(b"client to server frames"),
        mac(b"server to client frames"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; super::super::KEY_LEN])
    }

    fn run(
        client: &ClusterKey,
        server: &ClusterKey,
        cp: Protection,
        sp: Protection,
    ) -> (HsResult<Session>, HsResult<Session>) {
        let (init, hello) = hello(client, cp).unwrap();
        match respond(&[(server.clone(), Role::Peer)], &hello, sp) {
            Answer::Refuse { reply, error } => {
                let c = match reply {
                    Some(status) => init.refused(status),
                    None => HandshakeError::Malformed { len: 0 },
                };
                (Err(c), Err(error))
            }
            Answer::Reply { reply, session, .. } => {
                assert_eq!(reply[0], STATUS_OK);
                let c = init.finish(&reply[1..]);
                let s = match (session, &c) {
                    (Ok(s), Ok((_, confirm))) => {
                        assert!(check_confirm(&s, confirm));
                        assert!(!check_confirm(&s, &[0; CONFIRM_LEN]));
                        Ok(s)
                    }
                    (s, _) => s,
                };
                (c.map(|(s, _)| s), s)
            }
        }
    }

    #[test]
    fn both_ends_derive_the_same_keys_and_hash_from_one_key() {
        let k = key(1);
        let (c, s) = run(&k, &k, Protection::Encrypted, Protection::Encrypted);
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.hash, s.hash);
        let mut msg = [0u8; 64];
        let n = c.transport.write_message(1, b"secret", &mut msg);
        assert!(!msg[..n].windows(6).any(|w| w == b"secret"));
        let mut out = [0u8; 64];
        let m = s.transport.read_message(1, &msg[..n], &mut out).unwrap();
        assert_eq!(&out[..m], b"secret");
        // Another nonce (a replay or a reorder) does not verify.
        assert!(s.transport.read_message(2, &msg[..n], &mut out).is_err());
        let (up, down) = frame_keys(&k, &c.hash);
        assert_ne!(up, down);
        let (c2, _) = run(&k, &k, Protection::Encrypted, Protection::Encrypted);
        assert_ne!(
            c2.unwrap().hash,
            c.hash,
            "every connection has its own keys"
        );
    }

    #[test]
    fn a_keyring_accepts_each_installed_key_and_names_the_role_it_matched() {
        let ring = super::super::Keyring::new(key(1), [key(2)]);
        for (client, want) in [
            (key(1), Role::Peer),
            (key(2), Role::Peer),
            (key(2).credential(Role::Admin), Role::Admin),
            (key(1).credential(Role::ReadOnly), Role::ReadOnly),
        ] {
            let (init, h) = hello(&client, Protection::Encrypted).unwrap();
            let Answer::Reply {
                reply, key, role, ..
            } = respond(ring.candidates(), &h, Protection::Encrypted)
            else {
                panic!("{client:?} refused");
            };
            assert_eq!((role, &*key), (want, &client));
            assert!(init.finish(&reply[1..]).is_ok());
        }
        // A removed key, and a credential of a key not installed, are refused.
        for client in [key(3), key(3).credential(Role::Admin)] {
            let (_, h) = hello(&client, Protection::Encrypted).unwrap();
            assert!(matches!(
                respond(ring.candidates(), &h, Protection::Encrypted),
                Answer::Refuse {
                    reply: Some(STATUS_WRONG_KEY),
                    ..
                }
            ));
        }
        // Credentials are keys of their own, unlike each other and the peer key.
        let k = key(1);
        let roles = [Role::Peer, Role::Admin, Role::ReadOnly].map(|r| k.credential(r));
        assert!(roles[0] != roles[1] && roles[1] != roles[2] && roles[0] != roles[2]);
        assert!(Role::Peer.allows(Role::Admin) && !Role::ReadOnly.allows(Role::Admin));
    }

    #[test]
    fn a_wrong_key_is_refused_on_both_sides_with_its_fingerprint() {
        let (c, s) = run(
            &key(1),
            &key(2),
            Protection::Encrypted,
            Protection::Encrypted,
        );
        assert_eq!(
            c.unwrap_err(),
            HandshakeError::WrongKey {
                fingerprint: key(1).fingerprint()
            }
        );
        assert!(matches!(s.unwrap_err(), HandshakeError::WrongKey { .. }));
    }

    #[test]
    fn a_protection_mismatch_names_the_setting_on_both_sides() {
        let (c, s) = run(
            &key(1),
            &key(1),
            Protection::Authenticated,
            Protection::Encrypted,
        );
        let (c, s) = (c.unwrap_err().to_string(), s.unwrap_err().to_string());
        assert!(
            c.contains("security.encrypt_tcp is false here and true"),
            "{c}"
        );
        assert!(
            s.contains("security.encrypt_tcp is true here and false"),
            "{s}"
        );
    }

    #[test]
    fn the_old_handshake_and_junk_are_told_apart() {
        assert_eq!(check_magic(b"DLA1"), Err(HandshakeError::OldProtocol));
        assert_eq!(check_magic(b"GET "), Err(HandshakeError::NotHello));
        assert_eq!(check_magic(&HELLO_MAGIC), Ok(()));
        let (_, mut h) = hello(&key(1), Protection::Encrypted).unwrap();
        h[10] ^= 1;
        assert!(matches!(
            respond(&[(key(1), Role::Peer)], &h, Protection::Encrypted),
            Answer::Refuse {
                reply: Some(STATUS_WRONG_KEY),
                ..
            }
        ));
    }
}
