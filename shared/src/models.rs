//! The model registry (`assets/models.toml`): each model's ONNX file,
//! preprocessing and labels. Agents and `dml` use the built-in copy unless
//! `inference.registry` names another file.

pub use crate::error::UnknownModel;
use crate::error::{Error, Result};
use crate::infer::MAX_BATCH;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

const BUILTIN_TOML: &str = include_str!("../../assets/models.toml");
const BUILTIN_LABELS: &str = include_str!("../../assets/imagenet_labels.txt");
const BUILTIN_LABELS_NAME: &str = "imagenet_labels.txt";

/// One model, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// File name of the ONNX file (no directory).
    pub file: String,
    /// Side of the square input, in pixels.
    pub input_size: u32,
    /// The shorter side is resized to this before the centre crop.
    pub resize: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Class names, one per output index.
    pub labels: Arc<Vec<String>>,
    /// Default batch size (C3 changes it cluster-wide).
    pub batch: u32,
    pub max_batch: u32,
    /// Public address and SHA-256 (hex) for `dml models fetch`.
    pub url: Option<String>,
    pub sha256: Option<String>,
}

impl ModelSpec {
    /// The model's SDFS name.
    pub fn sdfs_name(&self) -> String {
        format!("models/{}.onnx", self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Registry {
    pub models: Vec<ModelSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    file: String,
    input_size: u32,
    resize: u32,
    mean: [f32; 3],
    std: [f32; 3],
    labels: String,
    batch: u32,
    max_batch: u32,
    url: Option<String>,
    sha256: Option<String>,
}

impl Registry {
    /// The registry compiled into the binaries (`assets/models.toml`).
    pub fn builtin() -> Self {
        Self::parse("<built-in>", BUILTIN_TOML, |name| {
            if name == BUILTIN_LABELS_NAME {
                Ok(BUILTIN_LABELS.to_string())
            } else {
                Err(std::io::Error::other("not built in; use a registry file"))
            }
        })
        .expect("the built-in model registry is valid")
    }

    /// Reads a registry file; labels files are relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Registry {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&shown, &text, |name| {
            std::fs::read_to_string(dir.join(name))
        })
    }

    /// Parses and checks registry text; `labels` reads a labels file by name.
    pub fn parse(
        path: &str,
        text: &str,
        labels: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self> {
        let err = |reason: String| Error::Registry {
            path: path.to_string(),
            reason,
        };
        let raw: RawRegistry = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if raw.model.is_empty() {
            return Err(err("no [[model]] entries".into()));
        }
        let mut models: Vec<ModelSpec> = Vec::new();
        for m in raw.model {
            let bad = |what: String| err(format!("model \"{}\": {what}", m.name));
            validate_model_name(&m.name).map_err(|e| err(e.to_string()))?;
            if models.iter().any(|x| x.name == m.name) {
                return Err(bad("is listed twice".into()));
            }
            if m.file.is_empty() || m.file.contains('/') || m.file.contains('\\') {
                return Err(bad(format!(
                    "file \"{}\" must be a plain file name",
                    m.file
                )));
            }
            if !(8..=2048).contains(&m.input_size) {
                return Err(bad(format!(
                    "input_size {} must be between 8 and 2048",
                    m.input_size
                )));
            }
            if m.resize < m.input_size || m.resize > 4096 {
                return Err(bad(format!(
                    "resize {} must be between input_size ({}) and 4096",
                    m.resize, m.input_size
                )));
            }
            if m.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(bad(format!("std {:?} must be positive", m.std)));
            }
            if m.mean.iter().any(|s| !s.is_finite()) {
                return Err(bad(format!("mean {:?} must be finite", m.mean)));
            }
            if m.max_batch == 0 || m.max_batch > MAX_BATCH {
                return Err(bad(format!(
                    "max_batch {} must be between 1 and {MAX_BATCH}",
                    m.max_batch
                )));
            }
            if m.batch == 0 || m.batch > m.max_batch {
                return Err(bad(format!(
                    "batch {} must be between 1 and max_batch ({})",
                    m.batch, m.max_batch
                )));
            }
            if let Some(h) = &m.sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(bad(format!("sha256 \"{h}\" must be 64 hex digits")));
            }
            let text =
                labels(&m.labels).map_err(|e| bad(format!("labels file \"{}\": {e}", m.labels)))?;
            let list: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
            if list.is_empty() || list.iter().any(|l| l.is_empty()) {
                return Err(bad(format!(
                    "labels file \"{}\" must have one non-empty line per class",
                    m.labels
                )));
            }
            models.push(ModelSpec {
                name: m.name,
                file: m.file,
                input_size: m.input_size,
                resize: m.resize,
                mean: m.mean,
                std: m.std,
                labels: Arc::new(list),
                batch: m.batch,
                max_batch: m.max_batch,
                url: m.url,
                sha256: m.sha256.map(|h| h.to_ascii_lowercase()),
            });
        }
        Ok(Self { models })
    }

    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model, or an error listing the known ones.
    pub fn require(&self, name: &str) -> std::result::Result<&ModelSpec, UnknownModel> {
        self.get(name).ok_or_else(|| UnknownModel {
            name: name.chars().take(80).collect(),
            known: self.models.iter().map(|m| m.name.clone()).collect(),
        })
    }
}

/// A model name as typed by a user, in the registry's spelling: names are
/// lowercase, so `ResNet50` and `InceptionV3` (the course project's
/// spelling) name `resnet50` and `inceptionv3`. Text that is no model name
/// in any case is kept as typed, for the error to quote.
pub fn model_key(typed: &str) -> String {
    let lower = typed.to_ascii_lowercase();
    if validate_model_name(&lower).is_ok() {
        lower
    } else {
        typed.to_string()
    }
}

/// Model names: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub fn validate_model_name(name: &str) -> crate::Result<()> {
    let bad = |reason: &str| {
        Err(crate::Error::BadModelName {
            name: name.chars().take(80).collect(),
            reason: reason.into(),
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("a model name has 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return bad("a model name uses only a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_taken_in_any_case_and_bad_ones_kept_as_typed() {
        assert_eq!(model_key("ResNet50"), "resnet50");
        assert_eq!(model_key("InceptionV3"), "inceptionv3");
        assert_eq!(model_key("tiny"), "tiny");
        assert_eq!(model_key("Bad!"), "Bad!");
    }

    #[test]
    fn builtin_registry_has_the_three_models() {
        let r = Registry::builtin();
        let rn = r.get("resnet50").unwrap();
        assert_eq!((rn.input_size, rn.resize), (224, 256));
        let inc = r.get("inceptionv3").unwrap();
        assert_eq!((inc.input_size, inc.resize), (299, 342));
        assert_eq!(rn.labels.len(), 1000);
        assert_eq!(rn.labels[0], "tench, Tinca tinca");
        assert!(r.get("tiny").is_some());
        assert_eq!(rn.sdfs_name(), "models/resnet50.onnx");
    }

    fn parse(text: &str) -> Result<Registry> {
        Registry::parse("t.toml", text, |_| Ok("a\nb\n".into()))
    }

    const OK: &str = "[[model]]\nname = \"m\"\nfile = \"m.onnx\"\ninput_size = 32\nresize = 36\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\nlabels = \"l.txt\"\nbatch = 2\nmax_batch = 8\n";

    #[test]
    fn bad_entries_are_named() {
        assert!(parse(OK).is_ok());
        let cases = [
            (OK.replace("batch = 2", "batch = 0"), "batch 0"),
            (OK.replace("resize = 36", "resize = 8"), "resize 8"),
            (OK.replace("name = \"m\"", "name = \"M!\""), "model name"),
            (
                OK.replace("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]"),
                "std",
            ),
            (
                OK.replace("file = \"m.onnx\"", "file = \"../m.onnx\""),
                "plain file name",
            ),
            (format!("{OK}{OK}"), "listed twice"),
            (
                OK.replace("max_batch = 8", "max_batch = 8\ncolour = 1"),
                "unknown field",
            ),
            ("".to_string(), "no [[model]]"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(e.contains("t.toml"), "{e}");
        }
    }

    #[test]
    fn unknown_model_lists_known_ones() {
        let e = Error::from(Registry::builtin().require("vgg").unwrap_err());
        assert_eq!(e.kind(), crate::ErrorKind::NotFound);
        let e = e.to_string();
        assert!(
            e.contains("unknown model \"vgg\"") && e.contains("resnet50"),
            "{e}"
        );
    }
}
