//! Inference on this agent: the worker that runs leased queries, and its
//! tools (ONNX Runtime sessions, image preprocessing, SDFS reads).
//!
//! - [`compute`]: low-priority threads for decoding and ONNX Runtime.
//! - [`error`]: what can go wrong, in words an operator can act on.
//! - [`runtime`]: finding and loading ONNX Runtime, one session per model, top-5.
//! - [`preprocess`]: decode, resize, crop and normalise an image to CHW f32.
//! - [`figures`]: C1 counters and the C2 histogram of the queries this worker ran (Prometheus).
//! - [`fetch`]: one committed SDFS version into memory, own copy first.
//! - [`slots`]: turns at ONNX Runtime shared by the agents of one host.
//! - [`worker`]: the lease / prepare / run / report loop.

pub mod compute;
pub mod error;
pub mod fetch;
pub mod figures;
pub mod preprocess;
pub mod runtime;
pub mod slots;
pub mod worker;
