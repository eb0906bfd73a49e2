//! SDFS name globs (`ls-all`): compiled once through `globset`, capped in
//! length so matching stays cheap however many names there are.

/// Longest glob accepted (bytes): matching stays cheap however many names
/// there are.
pub const MAX_GLOB_LEN: usize = 1024;

/// A shell-style glob over whole SDFS names (`*`, `?`, `[..]`, `{a,b}`;
/// `*` also crosses `/`), compiled once.
#[derive(Clone, Debug)]
pub struct Glob(globset::GlobMatcher);

/// Why a glob was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadGlob {
    #[error("the glob is {len} bytes long; at most {MAX_GLOB_LEN} are allowed")]
    TooLong { len: usize },
    #[error("bad glob \"{pattern}\": {reason}")]
    Syntax { pattern: String, reason: String },
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, BadGlob> {
        if pattern.len() > MAX_GLOB_LEN {
            return Err(BadGlob::TooLong { len: pattern.len() });
        }
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| BadGlob::Syntax {
                pattern: pattern.chars().take(80).collect(),
                reason: e.kind().to_string(),
            })?;
        Ok(Self(glob.compile_matcher()))
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

/// Whether `name` matches `pattern` (see [`Glob`]); a bad glob matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).is_ok_and(|g| g.is_match(name))
}
