//! On-disk file names for SDFS objects. Names are validated upstream, but the
//! encoding alone guarantees nothing escapes the store's directory: the result
//! has no `/`, no NUL, never starts with `.`, and fits a file-name limit.

/// Longest encoded name kept readable; longer ones become a hash.
const MAX_READABLE: usize = 160;

/// Bytes kept as they are; everything else becomes `%XX`.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Percent-encodes `name` (a leading `.` too), or, when that is too long for a
/// file name, `~` and the name's BLAKE3 hex (`~` is never produced otherwise).
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if is_plain(b) && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() || out.len() > MAX_READABLE {
        return format!("~{}", blake3::hash(name.as_bytes()).to_hex());
    }
    out
}

/// The data file's name for one version: `<encoded name>.v<version>`.
pub fn object_file(name: &str, version: u64) -> String {
    format!("{}.v{version}", encode_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_names_cannot_escape_the_directory() {
        for name in [
            "../../etc/passwd",
            "/abs",
            ".",
            "..",
            ".hidden",
            "a/b/c",
            "a\0b",
            "a\\b",
            "%2F",
            "",
            "ünï code",
            &"x".repeat(5000),
        ] {
            let f = object_file(name, 3);
            assert!(!f.contains('/') && !f.contains('\0'), "{name:?} -> {f}");
            assert!(!f.starts_with('.'), "{name:?} -> {f}");
            assert!(f.len() <= 255, "{name:?} -> {} bytes", f.len());
            let p = std::path::Path::new("/store").join(&f);
            assert_eq!(p.parent(), Some(std::path::Path::new("/store")));
        }
    }

    #[test]
    fn distinct_names_get_distinct_files() {
        let names = ["a/b", "a%2Fb", "a_b", "a.b", ".a", "%2Ea", "A/b"];
        let files: std::collections::BTreeSet<_> = names.iter().map(|n| encode_name(n)).collect();
        assert_eq!(files.len(), names.len());
        assert_eq!(encode_name("img_001.jpg"), "img_001.jpg");
        assert_eq!(encode_name("dir/x"), "dir%2Fx");
    }
}
