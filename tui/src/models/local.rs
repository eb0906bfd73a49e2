//! Where model files live on this machine: `DIR/fetched/` (downloaded,
//! pretrained), `DIR/built/` (built here, random weights) and the bundled
//! `assets/models/` of the project, looked up in that order.

use std::path::{Path, PathBuf};

/// Where a local model file came from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Fetched,
    Built,
    Bundled,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fetched => "fetched",
            Source::Built => "built",
            Source::Bundled => "bundled",
        }
    }

    /// How `models upload` describes it.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Fetched => "the fetched model (pretrained weights)",
            Source::Built => "the built model (random weights)",
            Source::Bundled => "the bundled model",
        }
    }
}

/// The three places model files are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDirs {
    pub fetched: PathBuf,
    pub built: PathBuf,
    pub bundled: PathBuf,
}

impl ModelDirs {
    /// `dir/fetched`, `dir/built` and `root/assets/models`.
    pub fn new(dir: &Path, root: &Path) -> Self {
        Self {
            fetched: dir.join("fetched"),
            built: dir.join("built"),
            bundled: root.join("assets").join("models"),
        }
    }

    /// `--dir` if given, else `.dml/models` under the project root.
    pub fn resolve(dir: Option<&Path>) -> Self {
        let root = project_root();
        let dir = dir.map_or_else(|| root.join(".dml").join("models"), Path::to_path_buf);
        Self::new(&dir, &root)
    }

    /// The best local copy of `file`: fetched, then built, then bundled.
    pub fn find(&self, file: &str) -> Option<(Source, PathBuf)> {
        [
            (Source::Fetched, &self.fetched),
            (Source::Built, &self.built),
            (Source::Bundled, &self.bundled),
        ]
        .into_iter()
        .map(|(s, d)| (s, d.join(file)))
        .find(|(_, p)| p.is_file())
    }

    /// Whether a fetched or built copy of `file` exists (bundled ones do not count).
    pub fn has_fetched_or_built(&self, file: &str) -> bool {
        matches!(self.find(file), Some((Source::Fetched | Source::Built, _)))
    }
}

/// The first ancestor of the `dml` executable's directory, then of the
/// current directory, that holds `marker` (a relative path).
pub fn find_up(marker: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let cwd = std::env::current_dir().ok();
    [exe, cwd]
        .into_iter()
        .flatten()
        .find_map(|start| find_up_from(&start, marker))
}

pub fn find_up_from(start: &Path, marker: &str) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join(marker).exists())
        .map(Path::to_path_buf)
}

/// The project checkout (holding `assets/models.toml`), else the current directory.
pub fn project_root() -> PathBuf {
    find_up("assets/models.toml").unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_looked_up_fetched_then_built_then_bundled() {
        let base = std::env::temp_dir().join(format!("dml-local-{}", std::process::id()));
        let dirs = ModelDirs::new(&base.join("m"), &base);
        for d in [&dirs.fetched, &dirs.built, &dirs.bundled] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(dirs.find("x.onnx"), None);
        std::fs::write(dirs.bundled.join("x.onnx"), b"b").unwrap();
        assert_eq!(dirs.find("x.onnx").unwrap().0, Source::Bundled);
        assert!(!dirs.has_fetched_or_built("x.onnx"));
        std::fs::write(dirs.built.join("x.onnx"), b"b").unwrap();
        assert_eq!(dirs.find("x.onnx").unwrap().0, Source::Built);
        assert!(dirs.has_fetched_or_built("x.onnx"));
        std::fs::write(dirs.fetched.join("x.onnx"), b"f").unwrap();
        let (s, p) = dirs.find("x.onnx").unwrap();
        assert_eq!((s, p), (Source::Fetched, dirs.fetched.join("x.onnx")));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn find_up_walks_to_the_ancestor_with_the_marker() {
        let base = std::env::temp_dir().join(format!("dml-up-{}", std::process::id()));
        let deep = base.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(base.join("a/.venv/bin")).unwrap();
        std::fs::write(base.join("a/.venv/bin/python"), b"").unwrap();
        assert_eq!(
            find_up_from(&deep, ".venv/bin/python"),
            Some(base.join("a"))
        );
        assert_eq!(find_up_from(&deep, "no/such/marker"), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
