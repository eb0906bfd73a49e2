//! Inference errors.
