//! ONNX Runtime loading and sessions.
