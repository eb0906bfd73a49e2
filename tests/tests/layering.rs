//! No import loops between modules: each crate's modules form a layered
//! graph, so a change to one layer never needs the layer above it.
//!
//! The test reads every `.rs` file under `shared/src`, `agent/src` and
//! `tui/src` (comments, code under `#[cfg(test)]` and `tests.rs` files aside), finds
//! every `crate::`, `super::` and `self::` path, and turns it into an edge
//! between the two sibling modules under their closest common parent
//! (`control::leader` using `crate::telemetry::Telemetry` is an edge
//! `control -> telemetry` at the crate root). A module using its own parent
//! or child is not an edge. Any cycle among siblings fails the test, named
//! with the files that make each edge.

use dml_tests::source::{product_code, rust_files, workspace};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate: `["control", "leader"]`; the root is empty.
type ModPath = Vec<String>;

/// The module a file defines: `src/control/mod.rs` and `src/control.rs` are
/// `control`; `src/lib.rs` and `src/main.rs` are the root; `src/bin/x.rs` is
/// its own root.
fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Some(parts)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path `code` names through `crate::`, `super::` or `self::`, as
/// written (brace groups of `use` expanded one level), e.g. `super::plans::Claimed`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|k| b[i..].starts_with(k.as_bytes()))
            .filter(|_| i == 0 || !is_ident(b[i - 1] as char) && b[i - 1] != b':');
        let Some(_) = starts else {
            i += 1;
            continue;
        };
        let mut j = i;
        while j < code.len() {
            let c = b[j] as char;
            if is_ident(c) || c == ':' {
                j += 1;
            } else {
                break;
            }
        }
        let head = code[i..j].trim_end_matches(':').to_string();
        if b[j..].starts_with(b"{") {
            let end = code[j..].find('}').map_or(code.len(), |e| j + e);
            for item in code[j + 1..end].split(',') {
                let item = item.trim();
                let name: String = item
                    .chars()
                    .take_while(|c| is_ident(*c) || *c == ':')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.push(format!("{head}::{name}"));
                }
            }
            out.push(head);
            i = end;
        } else {
            out.push(head);
            i = j;
        }
    }
    out
}

/// Resolves `path`, written in module `at`, to the longest known module it names.
fn resolve(at: &ModPath, path: &str, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut segs = path.split("::").filter(|s| !s.is_empty()).peekable();
    let mut base: ModPath = match segs.next()? {
        "crate" => Vec::new(),
        "self" => at.clone(),
        "super" => {
            let mut b = at.clone();
            b.pop()?;
            while segs.peek() == Some(&"super") {
                segs.next();
                b.pop()?;
            }
            b
        }
        _ => return None,
    };
    for s in segs {
        let mut next = base.clone();
        next.push(s.to_string());
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// The edge `a -> b` between siblings under their closest common parent,
/// or `None` when one contains the other.
fn sibling_edge(a: &ModPath, b: &ModPath) -> Option<(ModPath, ModPath)> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common == a.len() || common == b.len() {
        return None;
    }
    Some((a[..=common].to_vec(), b[..=common].to_vec()))
}

/// Every cycle's modules, found by a depth-first search from each node.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    fn walk(
        n: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
        found: &mut Vec<Vec<ModPath>>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            found.push(stack[i..].to_vec());
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            walk(m, edges, stack, done, found);
        }
        stack.pop();
        done.insert(n.clone());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        walk(n, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Import loops of the crate whose sources are under `src`, each with the
/// files that make its edges.
fn loops_in(src: &Path) -> Vec<String> {
    let files: Vec<(PathBuf, ModPath)> = rust_files(src)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .filter_map(|f| module_of(src, &f).map(|m| (f, m)))
        .collect();
    let modules: BTreeSet<ModPath> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    let mut why: BTreeMap<(ModPath, ModPath), BTreeSet<String>> = BTreeMap::new();
    for (file, at) in &files {
        let code = std::fs::read_to_string(file).unwrap();
        for p in paths(&product_code(&code)) {
            let Some(to) = resolve(at, &p, &modules) else {
                continue;
            };
            if let Some((a, b)) = sibling_edge(at, &to) {
                edges.entry(a.clone()).or_default().insert(b.clone());
                let rel = file.strip_prefix(workspace()).unwrap_or(file);
                why.entry((a, b))
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    cycles(&edges)
        .into_iter()
        .map(|c| {
            let mut text = Vec::new();
            for (i, a) in c.iter().enumerate() {
                let b = &c[(i + 1) % c.len()];
                let files: Vec<String> = why[&(a.clone(), b.clone())].iter().cloned().collect();
                text.push(format!(
                    "{} -> {} ({})",
                    a.join("::"),
                    b.join("::"),
                    files.join(", ")
                ));
            }
            text.join("; ")
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_loop_between_its_modules() {
    let mut loops = Vec::new();
    for krate in ["shared", "agent", "tui"] {
        for l in loops_in(&workspace().join(krate).join("src")) {
            loops.push(format!("{krate}: {l}"));
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_loop_finder_sees_a_loop_through_super_and_crate_paths() {
    let modules: BTreeSet<ModPath> = [vec![], vec!["a".into()], vec!["a".into(), "x".into()]]
        .into_iter()
        .chain([vec!["b".into()]])
        .collect();
    let ax: ModPath = vec!["a".into(), "x".into()];
    // `a::x` names `crate::b::Thing`: an edge a -> b at the root.
    let to = resolve(&ax, "crate::b::Thing", &modules).unwrap();
    assert_eq!(
        sibling_edge(&ax, &to),
        Some((vec!["a".into()], vec!["b".into()]))
    );
    // A child naming its parent is no edge.
    let up = resolve(&ax, "super::Inner", &modules).unwrap();
    assert_eq!(sibling_edge(&ax, &up), None);
    assert_eq!(
        paths("use super::{Inner, leader::Refusal};\nlet x = crate::b::f();"),
        vec![
            "super::Inner",
            "super::leader::Refusal",
            "super",
            "crate::b::f"
        ]
    );
    let mut edges = BTreeMap::new();
    edges.insert(
        vec!["a".to_string()],
        BTreeSet::from([vec!["b".to_string()]]),
    );
    edges.insert(
        vec!["b".to_string()],
        BTreeSet::from([vec!["a".to_string()]]),
    );
    assert_eq!(cycles(&edges).len(), 1);
}
