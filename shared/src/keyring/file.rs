//! An agent's keyring file, `<data_dir>/keyring.toml` (mode 0600): the
//! version, the primary and every installed key, hex-encoded as key files
//! hold them.
//!
//! ```toml
//! version = 2
//! primary = "<64 hex digits>"
//! keys = ["<64 hex digits>", "<64 hex digits>"]
//! ```

use super::{KeySecret, KeyringState};
use crate::auth::{ClusterKey, KeyTextError};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Name of the file in the agent's data directory.
pub const FILE_NAME: &str = "keyring.toml";
/// Longest keyring file read (16 keys take under 2 KiB).
pub const MAX_FILE_LEN: u64 = 64 * 1024;

/// Why a keyring file's text is not a keyring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringFileError {
    #[error("not a keyring (TOML with version, primary and keys): {0}")]
    Syntax(String),
    #[error("{field}: {reason}")]
    Key { field: String, reason: KeyTextError },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Text {
    version: u64,
    primary: String,
    keys: Vec<String>,
}

/// Parses a keyring file's text.
pub fn decode(text: &str) -> std::result::Result<KeyringState, KeyringFileError> {
    let t: Text = toml::from_str(text).map_err(|e| KeyringFileError::Syntax(where_(&e, text)))?;
    let key = |field: String, hex: &str| {
        ClusterKey::from_hex(hex)
            .map(|k| KeySecret::of(&k))
            .map_err(|reason| KeyringFileError::Key { field, reason })
    };
    let state = KeyringState {
        version: t.version,
        primary: key("primary".into(), &t.primary)?,
        keys: t
            .keys
            .iter()
            .enumerate()
            .map(|(i, h)| key(format!("keys[{i}]"), h))
            .collect::<std::result::Result<_, _>>()?,
    };
    state.check().map_err(|e| KeyringFileError::Invalid(e.0))?;
    Ok(state)
}

/// The file's text for `state`.
pub fn encode(state: &KeyringState) -> String {
    let t = Text {
        version: state.version,
        primary: state.primary.key().to_hex(),
        keys: state.keys.iter().map(|k| k.key().to_hex()).collect(),
    };
    let body = toml::to_string(&t).expect("strings and an integer serialize");
    format!(
        "# AwesomeDML keyring, written by the agent (`dml keyring`); secret: keep it mode 0600.\n{body}"
    )
}

/// The line and message of a TOML error, without the excerpt of the file
/// toml's `Display` quotes: that line may hold a secret.
fn where_(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |t| t.matches('\n').count())
                + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::KeyFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads the keyring file at `path`; `None` if there is none. Refuses a
/// file that other users can read, or that is not a keyring.
pub fn load(path: &Path) -> Result<Option<KeyringState>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(path, e.to_string())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(
                path,
                format!(
                    "mode {mode:04o} lets other users read the cluster's keys; run `chmod 600 {}`",
                    path.display()
                ),
            ));
        }
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(bad(
            path,
            format!("{} bytes is too long for a keyring file", meta.len()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    decode(&text)
        .map(Some)
        .map_err(|e| bad(path, e.to_string()))
}

/// Writes `state` to `path` (mode 0600) through a temporary file and a
/// rename, so a crash leaves the old file or the new one.
pub fn save(path: &Path, state: &KeyringState) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("toml.tmp");
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(encode(state).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| bad(path, format!("cannot write the keyring: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KEY_LEN, Keyring};

    fn state(n: u8, version: u64) -> KeyringState {
        let keys: Vec<ClusterKey> = (1..=n)
            .map(|b| ClusterKey::from_bytes([b; KEY_LEN]))
            .collect();
        KeyringState::from_keyring(version, &Keyring::new(keys[n as usize - 1].clone(), keys))
    }

    #[test]
    fn a_keyring_file_round_trips_and_bad_files_are_named() {
        let s = state(2, 7);
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        let e = decode("version = 1\nprimary = \"ab\"\nkeys = []\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "primary: a cluster key is 64 hex digits, this has 2 characters"
        );
        let mut text = encode(&s);
        text.push_str("extra = 1\n");
        assert!(decode(&text).unwrap_err().to_string().contains("extra"));
        let zz = encode(&s).replacen("keys = [\"", "keys = [\"zz", 1);
        assert!(
            decode(&zz)
                .unwrap_err()
                .to_string()
                .starts_with("keys[0]: ")
        );
        let only_primary = format!(
            "version = 1\nprimary = \"{}\"\nkeys = [\"{}\"]\n",
            ClusterKey::from_bytes([5; KEY_LEN]).to_hex(),
            ClusterKey::from_bytes([6; KEY_LEN]).to_hex()
        );
        assert!(
            decode(&only_primary)
                .unwrap_err()
                .to_string()
                .contains("not among")
        );
    }

    #[test]
    fn a_keyring_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dml-keyring-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &state(1, 1)).unwrap();
        save(&path, &state(3, 2)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state(3, 2)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "version = \"x\"").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("not a keyring"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
