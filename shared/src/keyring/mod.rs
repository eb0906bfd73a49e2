//! `dml keyring`: the cluster's keys as they rotate (see docs/PROTOCOL.md,
//! "Key rotation").
//!
//! - [`KeyringState`]: a versioned keyring with its secrets, as the control
//!   plane commits it, agents fetch it and keep it in their data directory.
//! - [`KeyringRequest`]: what `dml keyring` asks an agent (`Request::Keyring`).
//! - [`KeyringCommand`]: what an agent asks the leader
//!   (`ControlRequest::Keyring`).
//! - [`file`]: the agent's keyring file in its data directory.
//!
//! Keys are named by fingerprint; a secret crosses the wire only inside
//! [`KeySecret`] (its `Debug` shows the fingerprint), and only on encrypted
//! connections: agents refuse keyring requests when `security.encrypt_tcp`
//! is off.

pub mod file;

use crate::auth::{ClusterKey, KEY_LEN, Keyring, Role};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Most keys a keyring holds (a rotation needs two; the rest is slack).
pub const MAX_KEYS: usize = 16;

/// A cluster key's secret on the wire or on disk. `Debug` shows only its
/// fingerprint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySecret([u8; KEY_LEN]);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySecret({})", self.key().fingerprint())
    }
}

impl KeySecret {
    pub fn of(key: &ClusterKey) -> Self {
        Self(key.secret_bytes())
    }

    pub fn key(&self) -> ClusterKey {
        ClusterKey::from_bytes(self.0)
    }
}

/// A keyring as the cluster commits it: its version (0: never changed,
/// every agent uses its `security.key_file` key), the primary and every
/// installed key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringState {
    pub version: u64,
    pub primary: KeySecret,
    /// Every installed key, the primary among them.
    pub keys: Vec<KeySecret>,
}

/// What is wrong with a keyring, in an operator's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyringInvalid(pub String);

impl KeyringState {
    /// `ring` as version `version`.
    pub fn from_keyring(version: u64, ring: &Keyring) -> Self {
        Self {
            version,
            primary: KeySecret::of(ring.primary()),
            keys: ring.keys().iter().map(KeySecret::of).collect(),
        }
    }

    /// The keys to install: send with the primary, accept them all.
    pub fn to_keyring(&self) -> Keyring {
        Keyring::new(self.primary.key(), self.keys.iter().map(KeySecret::key))
    }

    /// What is wrong with it, in an operator's words.
    pub fn check(&self) -> Result<(), KeyringInvalid> {
        if self.keys.is_empty() || self.keys.len() > MAX_KEYS {
            return Err(KeyringInvalid(format!(
                "a keyring holds 1 to {MAX_KEYS} keys, this one {}",
                self.keys.len()
            )));
        }
        if !self.keys.contains(&self.primary) {
            return Err(KeyringInvalid(format!(
                "the primary key {} is not among the installed keys",
                self.primary.key().fingerprint()
            )));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if self.keys[..i].contains(k) {
                return Err(KeyringInvalid(format!(
                    "key {} is installed twice",
                    k.key().fingerprint()
                )));
            }
        }
        Ok(())
    }

    /// Fingerprints only: what an agent says of its keyring.
    pub fn summary(&self) -> LocalKeyring {
        LocalKeyring {
            version: self.version,
            primary: self.primary.key().fingerprint(),
            keys: self.keys.iter().map(|k| k.key().fingerprint()).collect(),
        }
    }
}

/// `dml keyring`, sent to any agent (`Request::Keyring`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyringRequest {
    /// The cluster's keys, and on how many live agents each is installed
    /// and primary.
    List,
    /// Add `key` on every agent.
    Install { key: KeySecret },
    /// Make the key of this fingerprint the primary everywhere; refused
    /// while a live agent lacks it.
    Use { fingerprint: String },
    /// Remove the key of this fingerprint everywhere; refused for the
    /// primary, and while a live agent still sends with it.
    Remove { fingerprint: String },
    /// This agent's own keyring, fingerprints only (agent to agent).
    Local,
}

impl KeyringRequest {
    /// The role it needs, and what it does in words (`crate::access`).
    pub fn needs(&self) -> (Role, &'static str) {
        match self {
            KeyringRequest::List => (Role::Admin, "list the keyring"),
            KeyringRequest::Install { .. } => (Role::Admin, "install a key"),
            KeyringRequest::Use { .. } => (Role::Admin, "change the primary key"),
            KeyringRequest::Remove { .. } => (Role::Admin, "remove a key"),
            KeyringRequest::Local => (Role::Peer, "read an agent's keyring"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyringResponse {
    List(KeyringList),
    Changed(Changed),
    Local(LocalKeyring),
}

/// A committed keyring change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// The key installed, made primary or removed.
    pub fingerprint: String,
    /// The keyring's version now.
    pub version: u64,
    /// False if it was so already (nothing committed).
    pub changed: bool,
}

/// One agent's keyring, by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalKeyring {
    pub version: u64,
    pub primary: String,
    pub keys: Vec<String>,
}

/// `dml keyring list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringList {
    /// The committed version (0: never changed).
    pub version: u64,
    /// The committed keys, the primary first, then keys that some agent
    /// still holds although the cluster removed them.
    pub keys: Vec<KeyListing>,
    /// Live agents asked.
    pub agents: u32,
    /// Agents that did not answer, and why.
    pub unreachable: Vec<(SocketAddr, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyListing {
    pub fingerprint: String,
    /// The committed primary.
    pub primary: bool,
    /// Committed (installed in the cluster's keyring), or only left on agents.
    pub committed: bool,
    /// Live agents that hold it.
    pub installed_on: u32,
    /// Live agents that send with it.
    pub primary_on: u32,
}

/// What an agent asks the leader (`ControlRequest::Keyring`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyringCommand {
    /// The committed keyring, unless its version is `have`. Carries secrets:
    /// agents only.
    Fetch { have: u64 },
    /// Commit the keyring with `key` added.
    Install { key: KeySecret },
    /// Commit the keyring with this key primary.
    Use { fingerprint: String },
    /// Commit the keyring without this key.
    Remove { fingerprint: String },
}

impl KeyringCommand {
    /// The role it needs, and what it does in words (`crate::access`).
    pub fn needs(&self) -> (Role, &'static str) {
        match self {
            KeyringCommand::Fetch { .. } => (Role::Peer, "fetch the keyring's secrets"),
            KeyringCommand::Install { .. } => (Role::Admin, "install a key"),
            KeyringCommand::Use { .. } => (Role::Admin, "change the primary key"),
            KeyringCommand::Remove { .. } => (Role::Admin, "remove a key"),
        }
    }

    /// Whether repeating it after an unknown outcome is harmless (a removal
    /// repeated finds the key gone).
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, KeyringCommand::Remove { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyringAnswer {
    /// The committed keyring; `None` if the version asked for is current.
    Ring(Option<KeyringState>),
    Changed(Changed),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn a_state_round_trips_through_a_keyring_and_debug_hides_secrets() {
        let ring = Keyring::new(key(2), [key(1), key(2)]);
        let s = KeyringState::from_keyring(3, &ring);
        assert_eq!(s.keys.len(), 2);
        assert_eq!(s.to_keyring(), ring);
        s.check().unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains(&key(2).to_hex()), "{debug}");
        assert!(debug.contains(&key(2).fingerprint()), "{debug}");
    }

    #[test]
    fn a_bad_state_is_named() {
        let mut s = KeyringState::from_keyring(1, &Keyring::new(key(1), []));
        s.primary = KeySecret::of(&key(9));
        assert!(s.check().unwrap_err().0.contains("not among"));
        s.primary = KeySecret::of(&key(1));
        s.keys.push(KeySecret::of(&key(1)));
        assert!(s.check().unwrap_err().0.contains("twice"));
        s.keys.clear();
        assert!(s.check().unwrap_err().0.contains("1 to 16"));
    }
}
