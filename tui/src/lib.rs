//! `dml-tui`: the library half of the `dml` binary, so tests and the bench
//! can drive the console without a terminal.
//!
//! - [`cli`]: the command line (clap), shared by the binary and the
//!   console's `:` line.
//! - [`console`]: the full-screen operator console (state, drawing, the
//!   telemetry subscription, actions).
//! - [`error`]: failures `dml` finds on its own side, with their kind.
//! - [`units`]: sizes, rates and durations as text, the same everywhere.

pub mod cli;
pub mod console;
pub mod error;
pub mod units;
