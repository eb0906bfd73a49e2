//! Property tests of the keyring file decoder (`dml_shared::keyring::file`): every keyring
//! round-trips through its file text; any text, and any edit of a valid file, decodes or
//! is refused with an error that names what was wrong, never a panic; and no secret is in
//! an error.

use dml_shared::auth::{ClusterKey, KEY_LEN, Keyring};
use dml_shared::keyring::file::{KeyringFileError, decode, encode};
use dml_shared::keyring::{KeyringState, MAX_KEYS};
use proptest::collection::vec;
use proptest::prelude::*;

fn state() -> impl Strategy<Value = KeyringState> {
    (
        any::<u64>(),
        vec(any::<[u8; KEY_LEN]>(), 1..=MAX_KEYS),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(version, secrets, primary)| {
            let keys: Vec<ClusterKey> = secrets.into_iter().map(ClusterKey::from_bytes).collect();
            let primary = keys[primary.index(keys.len())].clone();
            KeyringState::from_keyring(version, &Keyring::new(primary, keys))
        })
}

/// An error's text names a field or the syntax problem, and holds none of `secrets`.
fn check_error(e: &KeyringFileError, secrets: &[String]) {
    let text = e.to_string();
    assert!(!text.is_empty());
    match e {
        KeyringFileError::Key { field, .. } => {
            assert!(field == "primary" || field.starts_with("keys["), "{field}")
        }
        KeyringFileError::Syntax(_) | KeyringFileError::Invalid(_) => {}
    }
    for s in secrets {
        assert!(!text.contains(s.as_str()), "a secret in the error: {text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_keyring_round_trips_through_its_file(s in state()) {
        prop_assert_eq!(decode(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn any_text_decodes_or_is_refused_without_a_panic(text in "\\PC{0,300}") {
        if let Err(e) = decode(&text) {
            check_error(&e, &[]);
        }
    }

    #[test]
    fn an_edited_file_decodes_to_a_valid_keyring_or_names_the_fault(
        s in state(),
        edits in vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6),
    ) {
        let mut chars: Vec<char> = encode(&s).chars().collect();
        for (at, c, how) in edits {
            if chars.is_empty() {
                break;
            }
            let i = at.index(chars.len());
            match how {
                0 => chars[i] = c,
                1 => chars.insert(i, c),
                _ => {
                    chars.remove(i);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        match decode(&text) {
            Ok(k) => prop_assert!(k.check().is_ok()),
            Err(e) => {
                let secrets: Vec<String> = s.keys.iter().map(|k| k.key().to_hex()).collect();
                check_error(&e, &secrets)
            }
        }
    }
}
