//! Where ONNX Runtime's shared library lies on this host: a virtualenv's `onnxruntime`
//! wheel (`.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`) above the
//! running executable or the working directory. The agent loads it from there; `dml
//! cluster up` uploads it to hosts that have none.

use std::path::{Path, PathBuf};

/// Where pip puts the library inside a virtualenv, below `lib/python3*/`.
const VENV_CAPI: &str = "site-packages/onnxruntime/capi";
/// The library's file name, before any version suffix.
pub const DYLIB_PREFIX: &str = "libonnxruntime.so";

/// The first library found in a `.venv` of an ancestor of the running executable, then of
/// the working directory; else the patterns searched.
pub fn search_venvs() -> Result<PathBuf, Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let mut searched: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let venv_lib = dir.join(".venv").join("lib");
        let pattern = venv_lib.join(format!("python3*/{VENV_CAPI}/{DYLIB_PREFIX}*"));
        if searched.contains(&pattern) {
            continue;
        }
        searched.push(pattern);
        if let Some(found) = find_in_venv_lib(&venv_lib) {
            return Ok(found);
        }
    }
    Err(searched)
}

/// `venv_lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`,
/// the last in name order if there are several.
pub fn find_in_venv_lib(venv_lib: &Path) -> Option<PathBuf> {
    let sorted_entries = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let name_starts = |p: &Path, prefix: &str| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
    };
    let mut found = None;
    for py in sorted_entries(venv_lib) {
        if !name_starts(&py, "python3") {
            continue;
        }
        for lib in sorted_entries(&py.join(VENV_CAPI)) {
            if name_starts(&lib, DYLIB_PREFIX) && lib.is_file() {
                found = Some(lib);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venv_layout_is_searched() {
        let dir = std::env::temp_dir().join(format!("dml-venv-{}", std::process::id()));
        let capi = dir.join(".venv/lib/python3.11").join(VENV_CAPI);
        std::fs::create_dir_all(&capi).unwrap();
        assert_eq!(find_in_venv_lib(&dir.join(".venv/lib")), None);
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"x").unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"x").unwrap();
        assert_eq!(
            find_in_venv_lib(&dir.join(".venv/lib")),
            Some(capi.join("libonnxruntime.so.1.31.1"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
