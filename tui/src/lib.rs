//! `dml-tui`: the library half of the `dml` binary, so tests and the bench
//! can drive the console without a terminal.
//!
//! - [`console`]: the full-screen operator console (state, drawing, the
//!   telemetry subscription, actions).
//! - [`error`]: failures `dml` finds on its own side, with their kind.

pub mod console;
pub mod error;
