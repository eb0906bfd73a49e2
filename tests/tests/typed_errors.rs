//! Errors keep their type: no `Result<_, String>` in product code.
//!
//! The test reads every `.rs` file under `shared/src`, `agent/src` and
//! `tui/src` (comments, code under `#[cfg(test)]` and `tests.rs` files
//! aside), finds every `Result<..>` whose error type is `String`, and fails
//! naming each one as `file:line: text`. A `thiserror` enum of the module,
//! `dml_shared::Error` or `RemoteError` says what went wrong instead.

use dml_tests::source::{product_code, rust_files, workspace};

/// The generic arguments of the `<` at `open` (top level, trimmed) and the
/// index of its closing `>`; an arrow `->` inside is not a bracket, and a
/// comma inside a tuple or array does not split.
fn generic_args(code: &str, open: usize) -> Option<(Vec<String>, usize)> {
    let b = code.as_bytes();
    let (mut depth, mut parens, mut start, mut args) = (0usize, 0usize, open + 1, Vec::new());
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'<' => depth += 1,
            b'>' if i > 0 && b[i - 1] == b'-' => {}
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    args.push(code[start..i].trim().to_string());
                    return Some((args, i));
                }
            }
            b'(' | b'[' => parens += 1,
            b')' | b']' => parens = parens.saturating_sub(1),
            b',' if depth == 1 && parens == 0 => {
                args.push(code[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The 1-based lines of `code` that name a `Result` whose error is `String`.
fn string_results(code: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("Result<").map(|i| from + i) {
        let open = at + "Result".len();
        from = open + 1;
        let Some((args, _)) = generic_args(code, open) else {
            break;
        };
        // A trailing comma leaves an empty last argument.
        let args: Vec<String> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let is_string = |a: &str| matches!(a, "String" | "std::string::String");
        if args.len() == 2 && is_string(&args[1]) {
            lines.push(code[..at].matches('\n').count() + 1);
        }
    }
    lines
}

#[test]
fn no_product_code_returns_a_string_as_its_error() {
    let root = workspace();
    let mut found = Vec::new();
    for dir in ["shared/src", "agent/src", "tui/src"] {
        for f in rust_files(&root.join(dir)) {
            let rel = f.strip_prefix(&root).unwrap();
            if f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = product_code(&text);
            let source: Vec<&str> = text.lines().collect();
            for line in string_results(&code) {
                found.push(format!(
                    "{}:{line}: {}",
                    rel.display(),
                    source[line - 1].trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Result<_, String> in product code; give the error a type:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_finder_sees_string_errors_however_the_result_is_written() {
    let code = "fn a() -> Result<Vec<u8>, String> {}\n\
                fn b() -> std::result::Result<\n  (u8, Vec<u8>),\n  String,\n> {}\n\
                fn c() -> Option<Result<impl Fn() -> u8, std::string::String>> {}\n\
                fn d() -> Result<HashMap<String, String>> {}\n\
                fn e() -> Result<String, Error> {}\n\
                fn f() -> io::Result<String> {}";
    assert_eq!(string_results(code), vec![1, 2, 6]);
    let tests = "fn ok() {}\n#[cfg(test)]\nfn t() -> Result<(), String> {}";
    assert!(string_results(&product_code(tests)).is_empty());
    let comment = "// fn old() -> Result<(), String>\nfn new() {}";
    assert!(string_results(&product_code(comment)).is_empty());
}
