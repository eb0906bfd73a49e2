//! The progress bar SDFS transfers show on a terminal (never under `--json`).

use dml_shared::sdfs_client::{Phase, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

/// Transfers smaller than this finish too fast for a bar to help.
pub const LARGE_FILE_BYTES: u64 = 8 << 20;
/// Bulk commands show a bar from this many files on.
pub const MANY_FILES: u64 = 2;

const BYTES_TEMPLATE: &str =
    "{msg:>10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}";
const FILES_TEMPLATE: &str = "{msg:>10} [{bar:40}] {pos}/{len} files, {elapsed}";
const WAIT_TEMPLATE: &str = "{msg:>10} {spinner} {binary_total_bytes} sent; the replicas store it and the leader commits ({elapsed})";
/// Redraw period of the spinner while nothing moves.
const SPINNER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// A bar created at the first report that deserves one.
pub struct Bar {
    enabled: bool,
    bar: OnceLock<ProgressBar>,
    phase: Mutex<Option<Phase>>,
}

/// Printed on stderr (terminal or not) when a put's commit or a delete goes
/// unconfirmed.
const SETTLING_NOTICE: &str = "the leader appended the change but a majority of the voters has not confirmed it; waiting for its outcome";

impl Bar {
    /// A bar drawn on stderr when it is a terminal and the output is not JSON.
    pub fn for_terminal(json: bool) -> Self {
        Self::new(!json && std::io::stderr().is_terminal())
    }

    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            bar: OnceLock::new(),
            phase: Mutex::new(None),
        }
    }

    /// Takes one progress report.
    pub fn update(&self, p: Progress) {
        // The client reports it once per put or delete that goes unconfirmed.
        if p.phase == Phase::Settling {
            match self.bar.get() {
                Some(b) => b.suspend(|| eprintln!("{SETTLING_NOTICE}")),
                None => eprintln!("{SETTLING_NOTICE}"),
            }
        }
        if !self.enabled {
            return;
        }
        let bar = match self.bar.get() {
            Some(b) => b,
            None if wants_bar(p) => self.bar.get_or_init(|| ProgressBar::new(p.total)),
            None => return,
        };
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *phase != Some(p.phase) {
            *phase = Some(p.phase);
            let template = match p.phase {
                Phase::Files => FILES_TEMPLATE,
                Phase::Committing | Phase::Settling => WAIT_TEMPLATE,
                _ => BYTES_TEMPLATE,
            };
            if matches!(p.phase, Phase::Committing | Phase::Settling) {
                bar.enable_steady_tick(SPINNER_TICK);
            } else {
                bar.disable_steady_tick();
            }
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(phase_label(p.phase));
            bar.set_length(p.total);
            bar.reset();
        }
        bar.set_position(p.done.min(p.total));
    }

    /// Removes the bar, if one was drawn, before the summary is printed.
    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}

/// Whether a report is about a transfer large enough to show.
pub fn wants_bar(p: Progress) -> bool {
    match p.phase {
        Phase::Files => p.total >= MANY_FILES,
        _ => p.total >= LARGE_FILE_BYTES,
    }
}

pub fn phase_label(p: Phase) -> &'static str {
    match p {
        Phase::Sending => "sending",
        Phase::Receiving => "receiving",
        Phase::Committing => "committing",
        Phase::Settling => "settling",
        Phase::Files => "files",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(phase: Phase, done: u64, total: u64) -> Progress {
        Progress { phase, done, total }
    }

    #[test]
    fn only_large_transfers_get_a_bar() {
        assert!(!wants_bar(p(Phase::Sending, 0, LARGE_FILE_BYTES - 1)));
        assert!(wants_bar(p(Phase::Sending, 0, LARGE_FILE_BYTES)));
        assert!(!wants_bar(p(Phase::Files, 0, 1)));
        assert!(wants_bar(p(Phase::Files, 0, 5)));
    }

    #[test]
    fn a_disabled_bar_draws_nothing() {
        let b = Bar::new(false);
        b.update(p(Phase::Sending, 1, 1 << 30));
        assert!(b.bar.get().is_none());
        b.finish();
    }

    #[test]
    fn the_bar_follows_phases_and_clamps_its_position() {
        let b = Bar::new(true);
        b.update(p(Phase::Receiving, 5, 1 << 30));
        let bar = b.bar.get().unwrap();
        assert_eq!(bar.position(), 5);
        assert_eq!(bar.message(), "receiving");
        b.update(p(Phase::Sending, 1 << 31, 1 << 30));
        assert_eq!(bar.position(), 1 << 30);
        assert_eq!(bar.message(), "sending");
        b.finish();
    }
}
