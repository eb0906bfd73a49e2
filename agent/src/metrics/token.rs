//! The endpoint's optional bearer token (`metrics.token_file`): read once at
//! start from a file only its owner can read, and checked on each request
//! in constant time.

use hyper::header::HeaderValue;
use std::path::Path;
use subtle::ConstantTimeEq;

/// Longest token file accepted.
const MAX_FILE: u64 = 4096;

/// Why a token file was refused, naming the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("metrics.token_file \"{path}\": {reason}")]
pub struct TokenFileError {
    pub path: String,
    pub reason: String,
}

/// A bearer token. Only its BLAKE3 hash is kept: comparing hashes in
/// constant time hides both the token's bytes and its length.
#[derive(Clone)]
pub struct Token {
    hash: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a token file's text is not a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadToken(pub String);

impl From<String> for BadToken {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// What a request's `Authorization` header amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Granted,
    /// No bearer credentials at all.
    Missing,
    /// Bearer credentials that do not match.
    Wrong,
}

impl Token {
    /// The token `text` (surrounding whitespace dropped): visible ASCII
    /// only, at least 16 characters.
    pub fn new(text: &str) -> Result<Self, BadToken> {
        let t = text.trim();
        if t.is_empty() {
            return Err(BadToken(
                "the file is empty; put a token in it (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token holds {c:?}; only visible ASCII characters are allowed"
            )
            .into());
        }
        if t.len() < 16 {
            return Err(format!(
                "the token has {} characters; at least 16 are needed",
                t.len()
            )
            .into());
        }
        Ok(Self {
            hash: *blake3::hash(t.as_bytes()).as_bytes(),
        })
    }

    /// Reads the token file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let bad = |reason: String| TokenFileError {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {mode:04o} lets other users read the token; run `chmod 600 {}`",
                    path.display()
                )));
            }
        }
        if meta.len() > MAX_FILE {
            return Err(bad(format!(
                "{} bytes is too long for a token file (at most {MAX_FILE})",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::new(&text).map_err(|e| bad(e.0))
    }

    /// Checks an `Authorization` header: `Bearer <token>`, the scheme in any
    /// case (RFC 7235).
    pub fn check(&self, header: Option<&HeaderValue>) -> Check {
        let Some(given) = header
            .map(HeaderValue::as_bytes)
            .and_then(|h| h.split_at_checked(7))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, t)| t.trim_ascii())
        else {
            return Check::Missing;
        };
        let hash = blake3::hash(given);
        if bool::from(hash.as_bytes().ct_eq(&self.hash)) {
            Check::Granted
        } else {
            Check::Wrong
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123";

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn only_the_bearer_token_itself_is_granted() {
        let t = Token::new(&format!("  {T}\n")).unwrap();
        assert_eq!(
            t.check(Some(&header(&format!("Bearer {T}")))),
            Check::Granted
        );
        assert_eq!(
            t.check(Some(&header(&format!("bearer {T}")))),
            Check::Granted
        );
        assert_eq!(t.check(None), Check::Missing);
        assert_eq!(
            t.check(Some(&header(&format!("Basic {T}")))),
            Check::Missing
        );
        assert_eq!(t.check(Some(&header("Bearer"))), Check::Missing);
        assert_eq!(
            t.check(Some(&header(&format!("Bearer {T}x")))),
            Check::Wrong
        );
        assert_eq!(t.check(Some(&header(&T[1..]))), Check::Missing);
        assert_eq!(t.check(Some(&header("Bearer "))), Check::Wrong);
        assert!(!format!("{t:?}").contains(T));
    }

    #[test]
    fn a_token_is_long_visible_ascii() {
        assert!(Token::new("").unwrap_err().0.contains("empty"));
        assert!(Token::new("short").unwrap_err().0.contains("at least 16"));
        assert!(
            Token::new("0123456789 abcdef")
                .unwrap_err()
                .0
                .contains("' '")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_refused_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dml-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, T).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::load(&p).unwrap_err().to_string();
        assert!(e.starts_with("metrics.token_file \""), "{e}");
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Token::load(&p).unwrap();
        assert_eq!(
            t.check(Some(&header(&format!("Bearer {T}")))),
            Check::Granted
        );
        let e = Token::load(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
