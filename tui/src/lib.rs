//! `dml-tui`: the library half of the `dml` binary, so tests and the bench
//! can drive the console without a terminal.
//!
//! - [`console`]: the full-screen operator console (state, drawing, the
//!   telemetry subscription, actions).
//! - [`error`]: failures `dml` finds on its own side, with their kind.
//! - [`units`]: sizes, rates and durations as text, the same everywhere.

pub mod console;
pub mod error;
pub mod units;
