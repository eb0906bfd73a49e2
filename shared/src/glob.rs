//! SDFS name globs (`ls-all`): compiled once through `globset`, capped in
//! length so matching stays cheap however many names there are.

/// Longest glob accepted (bytes): matching stays cheap however many names
/// there are.
pub const MAX_GLOB_LEN: usize = 1024;

/// A shell-style glob over whole SDFS names (`*`, `?`, `[..]`, `{a,b}`;
/// `*` also crosses `/`), compiled once.
#[derive(Clone, Debug)]
pub struct Glob {
    matcher: globset::GlobMatcher,
    /// What every matching name starts with (see [`Glob::literal_prefix`]).
    prefix: String,
}

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
        Ok(Self {
            matcher: glob.compile_matcher(),
            prefix: literal_prefix(pattern),
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    /// The literal text before the glob's first wildcard (`*`, `?`, `[`,
    /// `{`), escapes resolved: every matching name starts with it, so a
    /// listing looks only at that range of sorted names (`dir/*` reads `dir/`).
    pub fn literal_prefix(&self) -> &str {
        &self.prefix
    }
}

fn literal_prefix(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' | '{' | ']' | '}' | ',' => break,
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// Whether `name` matches `pattern` (see [`Glob`]); a bad glob matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).is_ok_and(|g| g.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_prefix_stops_at_the_first_wildcard() {
        for (pattern, prefix) in [
            ("dir/*", "dir/"),
            ("data/00042/00421*", "data/00042/00421"),
            ("*", ""),
            ("a?c", "a"),
            ("img_[0-9].jpg", "img_"),
            ("{a,b}/x", ""),
            ("plain/name", "plain/name"),
            ("star\\*/x*", "star*/x"),
        ] {
            let g = Glob::new(pattern).unwrap();
            assert_eq!(g.literal_prefix(), prefix, "{pattern}");
        }
        // What matches starts with the prefix.
        let g = Glob::new("star\\*/x*").unwrap();
        assert!(g.is_match("star*/xy"));
    }
}
