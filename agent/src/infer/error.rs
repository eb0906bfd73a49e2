//! Inference errors, each phrased so an operator knows what to do next.

use std::path::PathBuf;

/// How to get a usable ONNX Runtime library.
pub const DYLIB_FIX: &str = "run `bash scripts/setup.sh` (installs onnxruntime into .venv) \
     or set inference.ort_dylib / ORT_DYLIB_PATH";

#[derive(Clone, Debug, thiserror::Error)]
pub enum InferError {
    /// No ONNX Runtime library in any of the places searched.
    #[error(
        "ONNX Runtime library (libonnxruntime.so) not found; looked in: {}; to fix: {DYLIB_FIX}",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    DylibNotFound { searched: Vec<PathBuf> },

    /// A configured library path (`from` names the setting) does not exist.
    #[error("{from} names \"{}\", which does not exist; to fix: {DYLIB_FIX}", path.display())]
    DylibMissing { from: &'static str, path: PathBuf },

    /// The library exists but cannot be used (not ONNX Runtime, wrong version, ...).
    #[error(
        "cannot load ONNX Runtime from \"{}\": {reason}; it must be onnxruntime 1.31 or newer: {DYLIB_FIX}",
        path.display()
    )]
    DylibLoad { path: PathBuf, reason: String },

    /// `init` was already called with another library in this process.
    #[error(
        "ONNX Runtime is already loaded from \"{}\" in this process; cannot switch to \"{}\"",
        loaded.display(),
        requested.display()
    )]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },

    #[error("ONNX Runtime is not loaded yet (runtime::init was not called or failed)")]
    NotInitialized,

    /// The ONNX file is missing, unreadable or not a valid model.
    #[error("model \"{model}\": cannot load \"{}\": {reason}", path.display())]
    ModelLoad {
        model: String,
        path: PathBuf,
        reason: String,
    },

    /// The model's inputs or outputs do not fit its registry entry.
    #[error("model \"{model}\": {reason}")]
    ModelContract { model: String, reason: String },

    /// A batch handed to the session has the wrong shape.
    #[error("model \"{model}\": batch shape {found} does not match the model ({expected})")]
    BatchShape {
        model: String,
        found: String,
        expected: String,
    },

    /// ONNX Runtime failed while running a batch.
    #[error("model \"{model}\": inference failed: {reason}")]
    Run { model: String, reason: String },

    /// The image bytes could not be decoded.
    #[error("cannot decode image: {reason}")]
    Decode { reason: String },

    /// The image decoded but is too large to preprocess.
    #[error("image is too large: {reason}")]
    TooLarge { reason: String },

    /// Resizing failed (should not happen for a decoded image).
    #[error("cannot resize image: {reason}")]
    Resize { reason: String },
}
