//! The cluster key and everything it authenticates.
//!
//! - [`ClusterKey`]: 32 random bytes, kept hex-encoded in a file readable by
//!   its owner only (`dml keygen`). Separate subkeys for UDP and TCP are
//!   derived from it with BLAKE3's `derive_key`.
//! - [`Keyring`]: the keys a process accepts, and the primary it sends
//!   with; rotated at run time (`dml keyring`). [`Role`]: what a key lets a
//!   connection do: a cluster key is a peer's, and client credentials
//!   (admin, read-only) are derived from it ([`ClusterKey::credential`]).
//! - [`install`] / [`installed`]: the process's keyring, set at start; every
//!   outgoing connection and datagram of the process uses its primary.
//! - [`Session`]: UDP datagrams encrypted with XChaCha20-Poly1305, bound to
//!   their receiver's address and run; forged, malformed, replayed and stale
//!   ones are dropped and counted (see `datagram.rs`).
//! - [`handshake`]: the TCP handshake (Noise `NNpsk0` with a PSK derived
//!   from the cluster key); the encryption and framing of connections is in
//!   [`crate::conn`]. [`set_encrypt_tcp`]: the process's
//!   `security.encrypt_tcp`.
//! - [`counters`]: what was dropped, for `dml stats` and the metrics endpoint.

mod datagram;
pub mod handshake;
pub mod put_seal;
pub mod transport;

pub use datagram::*;

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// Bytes of the tag of a TCP frame or handshake proof.
pub const TAG_LEN: usize = 16;
/// Why a key file's text is not a cluster key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    #[error("a cluster key is {want} hex digits, this has {len} characters")]
    Length { want: usize, len: usize },
    #[error("\"{pair}\" at offset {offset} is not a hex byte")]
    NotHex { pair: String, offset: usize },
}

/// The shared secret of one cluster. `Debug` shows only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    secret: [u8; KEY_LEN],
    udp: [u8; KEY_LEN],
    tcp: [u8; KEY_LEN],
    noise_psk: [u8; KEY_LEN],
    fingerprint: [u8; 8],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    /// Derives the subkeys of a raw 32-byte secret.
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        let fp = blake3::derive_key("AwesomeDML 2026 cluster key fingerprint", &secret);
        Self {
            secret,
            udp: blake3::derive_key("AwesomeDML 2026 UDP datagram tags", &secret),
            tcp: blake3::derive_key("AwesomeDML 2026 TCP handshake and frame tags", &secret),
            noise_psk: blake3::derive_key("AwesomeDML 2026 TCP Noise pre-shared key", &secret),
            fingerprint: fp[..8].try_into().expect("8 of 32 bytes"),
        }
    }

    /// A new random secret, hex-encoded as a key file holds it.
    pub fn generate_hex() -> Result<String> {
        Ok(hex(&random::<KEY_LEN>()?))
    }

    /// Parses a key file's text: 64 hex digits, surrounding whitespace allowed.
    pub fn from_hex(text: &str) -> std::result::Result<Self, KeyTextError> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN {
            return Err(KeyTextError::Length {
                want: 2 * KEY_LEN,
                len: t.len(),
            });
        }
        let mut secret = [0u8; KEY_LEN];
        for (i, pair) in t.as_bytes().chunks(2).enumerate() {
            let s = String::from_utf8_lossy(pair);
            // from_str_radix alone would take a sign, as in "+0".
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(KeyTextError::NotHex {
                    pair: s.into_owned(),
                    offset: 2 * i,
                });
            }
            secret[i] = u8::from_str_radix(&s, 16).expect("two hex digits");
        }
        Ok(Self::from_bytes(secret))
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {mode:04o} lets other users read the cluster key; run `chmod 600 {}`",
                    path.display()
                )));
            }
        }
        if meta.len() > 1024 {
            return Err(bad(format!(
                "{} bytes is too long for a key file",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::from_hex(&text).map_err(|e| bad(e.to_string()))
    }

    /// Writes a new random key to `path` (mode 0600); refuses to replace an
    /// existing file unless `force`.
    pub fn write_new(path: &Path, force: bool) -> Result<Self> {
        use std::io::Write;
        let bad = |reason: String| Error::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let hex_key = Self::generate_hex()?;
        let key = Self::from_hex(&hex_key).map_err(|e| bad(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                bad("already exists; pass --force to replace it (every agent then needs the new key)".into())
            } else {
                bad(e.to_string())
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| bad(e.to_string()))?;
        }
        f.write_all(format!("{hex_key}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| bad(e.to_string()))?;
        Ok(key)
    }

    /// 16 hex digits that name the key without revealing it.
    pub fn fingerprint(&self) -> String {
        hex(&self.fingerprint)
    }

    pub(crate) fn tcp(&self) -> &[u8; KEY_LEN] {
        &self.tcp
    }

    /// The Noise pre-shared key of the TCP handshake.
    pub(crate) fn noise_psk(&self) -> &[u8; KEY_LEN] {
        &self.noise_psk
    }

    /// The client credential of `role` derived from this peer key: a key
    /// of its own (a key file like any other), from which neither the peer
    /// key nor another role's credential can be computed. Agents derive it
    /// too, so it needs no distribution; it is valid while this key is
    /// installed. [`Role::Peer`] is this key itself.
    pub fn credential(&self, role: Role) -> ClusterKey {
        let label = match role {
            Role::Peer => return self.clone(),
            Role::Admin => "AwesomeDML 2026 admin client credential",
            Role::ReadOnly => "AwesomeDML 2026 read-only client credential",
        };
        Self::from_bytes(blake3::derive_key(label, &self.secret))
    }

    /// The raw secret (a keyring's wire and file forms).
    pub(crate) fn secret_bytes(&self) -> [u8; KEY_LEN] {
        self.secret
    }

    /// Hex text of this key as a key file holds it.
    pub fn to_hex(&self) -> String {
        hex(&self.secret)
    }
}

/// What the key a connection authenticated with lets it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A client that may only read: members, ls, get, jobs, rates, the console.
    ReadOnly,
    /// A client that may also write: put, delete, submit, batch sizes, keyring.
    Admin,
    /// An agent (a cluster key): also Raft, SDFS chains and forwarded requests.
    Peer,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Admin => "admin",
            Role::Peer => "peer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The cluster keys a process holds: it sends with the primary and accepts
/// every installed key, as memberlist's keyring does. Immutable; a rotation
/// swaps in a new one ([`AuthContext::set_keyring`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    primary: ClusterKey,
    /// Every installed key, the primary first.
    keys: Vec<ClusterKey>,
    /// What a handshake may match: each key and its client credentials.
    candidates: Vec<(ClusterKey, Role)>,
}

impl Keyring {
    /// A keyring of `primary` and the `others` (duplicates dropped).
    pub fn new(primary: ClusterKey, others: impl IntoIterator<Item = ClusterKey>) -> Self {
        let mut keys = vec![primary.clone()];
        for k in others {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let candidates = keys
            .iter()
            .flat_map(|k| [Role::Peer, Role::Admin, Role::ReadOnly].map(|r| (k.credential(r), r)))
            .collect();
        Self {
            primary,
            keys,
            candidates,
        }
    }

    pub fn primary(&self) -> &ClusterKey {
        &self.primary
    }

    /// Every installed key, the primary first.
    pub fn keys(&self) -> &[ClusterKey] {
        &self.keys
    }

    /// The keys (and client credentials) an accepted handshake may use.
    pub fn candidates(&self) -> &[(ClusterKey, Role)] {
        &self.candidates
    }
}

/// A cluster key with the counters of what it refused. Each agent has its
/// own (so agents sharing a process count apart); `dml` and an agent's
/// outgoing connections use the process's ([`install`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthContext {
    keyring: Arc<RwLock<Arc<Keyring>>>,
    counters: Arc<Counters>,
    /// `security.encrypt_tcp` for this context; `None` follows the
    /// process's ([`set_encrypt_tcp`]).
    encrypt_tcp: Option<bool>,
}

impl AuthContext {
    /// `key` with fresh counters.
    pub fn new(key: ClusterKey) -> Self {
        Self {
            keyring: Arc::new(RwLock::new(Arc::new(Keyring::new(key, [])))),
            counters: Arc::default(),
            encrypt_tcp: None,
        }
    }

    /// A context with fresh counters that shares this one's keyring: a
    /// rotation through either is seen by both (an agent and its process).
    pub fn sharing_keyring(&self) -> Self {
        Self {
            keyring: self.keyring.clone(),
            counters: Arc::default(),
            encrypt_tcp: self.encrypt_tcp,
        }
    }

    /// This context with its own `security.encrypt_tcp` (an agent's
    /// accepted connections), instead of the process's.
    pub fn with_encrypt_tcp(mut self, on: bool) -> Self {
        self.encrypt_tcp = Some(on);
        self
    }

    /// Whether this context's TCP connections are encrypted.
    pub fn encrypt_tcp(&self) -> bool {
        self.encrypt_tcp
            .unwrap_or_else(|| ENCRYPT_TCP.load(Ordering::Relaxed))
    }

    /// The primary key, which this context sends with.
    pub fn key(&self) -> ClusterKey {
        self.keyring().primary.clone()
    }

    /// The installed keys.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the installed keys (a rotation step), for every context
    /// sharing this one's keyring.
    pub fn set_keyring(&self, ring: Keyring) {
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    /// What this context refused so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, shared with what counts into them.
    pub(crate) fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

static PROCESS: OnceLock<AuthContext> = OnceLock::new();
/// The process's `security.encrypt_tcp`.
static ENCRYPT_TCP: AtomicBool = AtomicBool::new(true);

/// Sets the process's `security.encrypt_tcp` (default true): whether its TCP
/// connections are encrypted, or only authenticated (for side-by-side
/// measurement; both ends must agree). The local socket is never encrypted.
pub fn set_encrypt_tcp(on: bool) {
    ENCRYPT_TCP.store(on, Ordering::Relaxed);
}

/// Sets the process's cluster key, which outgoing connections use.
/// Installing the same key again is a no-op; a different one is an error.
pub fn install(key: ClusterKey) -> Result<()> {
    let set = PROCESS.get_or_init(|| AuthContext::new(key.clone()));
    if set.keyring().keys.contains(&key) {
        Ok(())
    } else {
        Err(Error::KeyFile {
            path: "<process>".into(),
            reason: format!(
                "this process already uses cluster key {}, not {}",
                set.key().fingerprint(),
                key.fingerprint()
            ),
        })
    }
}

/// The process's cluster key and counters.
pub fn installed() -> Result<&'static AuthContext> {
    PROCESS.get().ok_or(Error::NoKey)
}

/// Counts of traffic dropped for authentication reasons, per [`AuthContext`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams whose tag did not verify (wrong key, forged, corrupted).
    pub udp_forged: AtomicU64,
    /// Datagrams too short or without the sealed-datagram magic.
    pub udp_malformed: AtomicU64,
    /// Datagrams already seen, or older than the reorder window.
    pub udp_replayed: AtomicU64,
    /// Datagrams from a new sender whose clock is too far from ours.
    pub udp_stale: AtomicU64,
    /// TCP connections refused in the handshake (wrong key or not ours).
    pub tcp_handshake_failed: AtomicU64,
    /// TCP frames (or Noise transport messages) whose tag did not verify;
    /// the connection is closed.
    pub tcp_forged: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub udp_forged: u64,
    pub udp_malformed: u64,
    pub udp_replayed: u64,
    pub udp_stale: u64,
    pub tcp_handshake_failed: u64,
    pub tcp_forged: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Dropped {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Dropped {
            udp_forged: g(&self.udp_forged),
            udp_malformed: g(&self.udp_malformed),
            udp_replayed: g(&self.udp_replayed),
            udp_stale: g(&self.udp_stale),
            tcp_handshake_failed: g(&self.tcp_handshake_failed),
            tcp_forged: g(&self.tcp_forged),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Compares two tags in time independent of their contents (lengths are public).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn now_micros() -> u64 {
    crate::clock::unix_micros()
}

/// `N` bytes from the operating system's generator (`getrandom(2)`).
fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| Error::KeyFile {
        path: "the system's random generator".into(),
        reason: format!("cannot read random bytes: {e}"),
    })?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips_and_bad_text_is_named() {
        let text = ClusterKey::generate_hex().unwrap();
        let k = ClusterKey::from_hex(&format!(" {text}\n")).unwrap();
        assert_eq!(k.fingerprint().len(), 16);
        assert!(!format!("{k:?}").contains(&text));
        assert!(
            ClusterKey::from_hex("abc")
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
        let bad = format!("zz{}", &text[2..]);
        assert!(
            ClusterKey::from_hex(&bad)
                .unwrap_err()
                .to_string()
                .contains("\"zz\"")
        );
        let signed = format!("{}+0", &text[..62]);
        assert!(
            ClusterKey::from_hex(&signed)
                .unwrap_err()
                .to_string()
                .contains("\"+0\"")
        );
    }

    #[test]
    fn key_files_are_private_and_not_replaced_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dml-key-test-{}", std::process::id()));
        let path = dir.join("k");
        let _ = std::fs::remove_dir_all(&dir);
        let k = ClusterKey::write_new(&path, false).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap(), k);
        let e = ClusterKey::write_new(&path, false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let k2 = ClusterKey::write_new(&path, true).unwrap();
        assert_ne!(k, k2);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
