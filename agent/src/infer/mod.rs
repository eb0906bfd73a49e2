//! Inference on this agent: ONNX Runtime sessions and image preprocessing.
//!
//! - [`error`]: what can go wrong, in words an operator can act on.
//! - [`runtime`]: finding and loading ONNX Runtime, one session per model, top-5.
//! - [`preprocess`]: decode, resize, crop and normalise an image to CHW f32.

pub mod error;
pub mod preprocess;
pub mod runtime;
