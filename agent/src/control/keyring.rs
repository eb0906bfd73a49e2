//! The leader's side of `dml keyring` (pure): each change becomes one
//! `Op::SetKeyring` of the whole new keyring, applied only if the committed
//! version is still the one it was computed from; a fetch answers with the
//! committed keyring when the asker's version differs. Before the first
//! change (version 0) the leader's own keyring (its `security.key_file`
//! key, which every agent shares) is the one changed.

use super::error::ControlError;
use super::types::Op;
use dml_shared::auth::{ClusterKey, Keyring};
use dml_shared::keyring::{
    Changed, KeySecret, KeyringAnswer, KeyringCommand, KeyringState, MAX_KEYS,
};

/// What the leader does with a keyring request (`serve.rs` turns it into
/// its `Step`).
#[derive(Debug)]
pub enum Step {
    Reply(Result<KeyringAnswer, ControlError>),
    /// Append `op`; once it applies, answer that `fingerprint` changed.
    Append {
        op: Op,
        fingerprint: String,
    },
}

fn reply(a: KeyringAnswer) -> Step {
    Step::Reply(Ok(a))
}

fn unchanged(fingerprint: String, version: u64) -> Step {
    reply(KeyringAnswer::Changed(Changed {
        fingerprint,
        version,
        changed: false,
    }))
}

/// Serves `cmd` against the committed keyring (`None`: version 0) and, for
/// version 0, the leader's own keyring `seed`.
pub fn serve(
    committed: Option<&KeyringState>,
    seed: Option<&Keyring>,
    cmd: KeyringCommand,
) -> Step {
    let version = committed.map_or(0, |k| k.version);
    if let KeyringCommand::Fetch { have } = cmd {
        let ring = committed.filter(|_| have != version).cloned();
        return reply(KeyringAnswer::Ring(ring));
    }
    let current = match (committed, seed) {
        (Some(k), _) => k.to_keyring(),
        (None, Some(seed)) => seed.clone(),
        (None, None) => {
            return Step::Reply(Err(ControlError::Rejected(
                "this leader holds no keyring to change".into(),
            )));
        }
    };
    let find = |fp: &str| -> Result<ClusterKey, ControlError> {
        let fp = fp.trim().to_ascii_lowercase();
        current
            .keys()
            .iter()
            .find(|k| k.fingerprint() == fp)
            .cloned()
            .ok_or_else(|| ControlError::NoSuchKey {
                fingerprint: fp,
                installed: current.keys().iter().map(|k| k.fingerprint()).collect(),
            })
    };
    let primary = current.primary().clone();
    let (fingerprint, next) = match cmd {
        KeyringCommand::Fetch { .. } => unreachable!("answered above"),
        KeyringCommand::Install { key } => {
            let key = key.key();
            let fp = key.fingerprint();
            if current.keys().contains(&key) {
                return unchanged(fp, version);
            }
            if current.keys().len() >= MAX_KEYS {
                return Step::Reply(Err(ControlError::Rejected(format!(
                    "the keyring already holds {MAX_KEYS} keys; remove one first"
                ))));
            }
            let others = current.keys().iter().cloned().chain([key]);
            (fp, Keyring::new(primary, others))
        }
        KeyringCommand::Use { fingerprint } => {
            let key = match find(&fingerprint) {
                Ok(k) => k,
                Err(e) => return Step::Reply(Err(e)),
            };
            let fp = key.fingerprint();
            if key == primary {
                return unchanged(fp, version);
            }
            (fp, Keyring::new(key, current.keys().iter().cloned()))
        }
        KeyringCommand::Remove { fingerprint } => {
            let key = match find(&fingerprint) {
                Ok(k) => k,
                Err(e) => return Step::Reply(Err(e)),
            };
            let fp = key.fingerprint();
            if key == primary {
                return Step::Reply(Err(ControlError::Rejected(format!(
                    "key {fp} is the primary: agents send with it; make another key primary \
                     (`dml keyring use`) before removing it"
                ))));
            }
            let others = current.keys().iter().filter(|k| **k != key).cloned();
            (fp, Keyring::new(primary, others))
        }
    };
    let ring = KeyringState {
        version: version + 1,
        primary: KeySecret::of(next.primary()),
        keys: next.keys().iter().map(KeySecret::of).collect(),
    };
    Step::Append {
        op: Op::SetKeyring {
            base: version,
            ring,
        },
        fingerprint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::MetaState;
    use crate::control::types::{Applied, Command};
    use dml_shared::auth::KEY_LEN;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    /// Serves `cmd` and applies what it appends; the error or the fingerprint.
    fn step(s: &mut MetaState, seed: &Keyring, cmd: KeyringCommand) -> Result<String, String> {
        match serve(s.keyring.as_ref(), Some(seed), cmd) {
            Step::Append { op, fingerprint } => match s.apply(&Command { now_ms: 1, op }) {
                Applied::Version(_) => Ok(fingerprint),
                other => Err(format!("{other:?}")),
            },
            Step::Reply(Ok(KeyringAnswer::Changed(c))) => {
                Ok(format!("unchanged {}", c.fingerprint))
            }
            Step::Reply(Err(e)) => Err(e.to_string()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn install_use_remove_rotate_the_committed_keyring() {
        let seed = Keyring::new(key(1), []);
        let mut s = MetaState::default();
        let (k1, k2) = (key(1).fingerprint(), key(2).fingerprint());
        let install = KeyringCommand::Install {
            key: KeySecret::of(&key(2)),
        };
        assert_eq!(step(&mut s, &seed, install.clone()), Ok(k2.clone()));
        assert_eq!(s.keyring_version(), 1);
        assert_eq!(step(&mut s, &seed, install), Ok(format!("unchanged {k2}")));
        let remove = KeyringCommand::Remove {
            fingerprint: k1.clone(),
        };
        let e = step(&mut s, &seed, remove);
        assert!(e.unwrap_err().contains("is the primary"));
        let e = step(
            &mut s,
            &seed,
            KeyringCommand::Use {
                fingerprint: "00ff".into(),
            },
        );
        let e = e.unwrap_err();
        assert!(
            e.contains("\"00ff\"") && e.contains(&k1) && e.contains(&k2),
            "{e}"
        );
        let up = k2.to_ascii_uppercase();
        assert_eq!(
            step(&mut s, &seed, KeyringCommand::Use { fingerprint: up }),
            Ok(k2.clone())
        );
        let remove = KeyringCommand::Remove {
            fingerprint: k1.clone(),
        };
        assert_eq!(step(&mut s, &seed, remove), Ok(k1));
        let ring = s.keyring.clone().unwrap();
        assert_eq!(
            (ring.version, ring.to_keyring()),
            (3, Keyring::new(key(2), []))
        );
        // A fetch answers only an agent whose version differs.
        let fetch = |have| match serve(s.keyring.as_ref(), None, KeyringCommand::Fetch { have }) {
            Step::Reply(Ok(KeyringAnswer::Ring(r))) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(fetch(3), None);
        assert_eq!(fetch(1), Some(ring));
    }

    #[test]
    fn a_change_computed_from_an_old_version_is_rejected() {
        let seed = Keyring::new(key(1), []);
        let mut s = MetaState::default();
        let a = serve(
            None,
            Some(&seed),
            KeyringCommand::Install {
                key: KeySecret::of(&key(2)),
            },
        );
        let b = serve(
            None,
            Some(&seed),
            KeyringCommand::Install {
                key: KeySecret::of(&key(3)),
            },
        );
        for (st, want) in [(a, true), (b, false)] {
            let Step::Append { op, .. } = st else {
                panic!()
            };
            let applied = s.apply(&Command { now_ms: 1, op });
            assert_eq!(matches!(applied, Applied::Version(1)), want, "{applied:?}");
        }
        assert_eq!(s.keyring.unwrap().keys.len(), 2);
    }
}
