//! The log's writer: one event, one line. A field value may hold text a
//! client sent (a refused SDFS name). tracing-subscriber escapes ESC, DEL and
//! C1 in values; this escapes the other C0 controls, line breaks included,
//! so that no value can forge a log line or hide one. The newest lines are
//! also kept in memory ([`tail`]) for `dml logs` and the console.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Mutex;
use tracing_subscriber::fmt::MakeWriter;

/// Log lines kept in memory for [`tail`].
pub const TAIL_LINES: usize = 500;

/// The newest [`TAIL_LINES`] lines. Global, as the log itself is.
static TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The newest `n` log lines, oldest first, without colours.
pub fn tail(n: usize) -> Vec<String> {
    let kept = TAIL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    kept.iter()
        .skip(kept.len().saturating_sub(n))
        .cloned()
        .collect()
}

fn remember(buf: &[u8]) {
    let mut line = strip_colours(&String::from_utf8_lossy(buf));
    if line.ends_with('\n') {
        line.pop();
    }
    let mut kept = TAIL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if kept.len() == TAIL_LINES {
        kept.pop_front();
    }
    kept.push_back(line);
}

/// Drops SGR sequences (`ESC [ ... m`), the only escapes the formatter
/// writes. Too small a job for a crate.
fn strip_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes [`OneLine`] writers to stderr that also keep the line for [`tail`].
pub struct OneLineStderr;

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = OneLine<Tee>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(Tee)
    }
}

/// Stderr, with each write (one event) also kept for [`tail`].
pub struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        remember(buf);
        io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Writes each buffer (one formatted event) with its C0 controls but tab,
/// ESC (the colours of a terminal) and a final newline written as `\xNN`.
pub struct OneLine<W>(pub W);

fn escaped(b: u8) -> bool {
    b.is_ascii_control() && !matches!(b, b'\t' | 0x1b | 0x7f)
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, "\n"),
            None => (buf, ""),
        };
        if !body.iter().copied().any(escaped) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match escaped(b) {
                true => write!(out, "\\x{b:02x}")?,
                false => out.push(b),
            }
        }
        out.extend_from_slice(end.as_bytes());
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(s: &str) -> String {
        let mut w = OneLine(Vec::new());
        w.write_all(s.as_bytes()).unwrap();
        String::from_utf8(w.0).unwrap()
    }

    #[test]
    fn the_tail_keeps_the_newest_lines_without_colours() {
        for i in 0..TAIL_LINES + 3 {
            OneLine(Tee)
                .write_all(format!("\x1b[32mINFO\x1b[0m line {i}\n").as_bytes())
                .unwrap();
        }
        let last = tail(2);
        let n = TAIL_LINES + 2;
        assert_eq!(
            last,
            [format!("INFO line {}", n - 1), format!("INFO line {n}")]
        );
        assert_eq!(tail(10 * TAIL_LINES).len(), TAIL_LINES);
    }

    #[test]
    fn a_value_with_line_breaks_stays_on_its_events_line() {
        assert_eq!(
            through("WARN write failed name=a\nINFO forged\r\n"),
            "WARN write failed name=a\\x0aINFO forged\\x0d\n"
        );
        assert_eq!(through("plain\tline ünï\n"), "plain\tline ünï\n");
        // Colours are the formatter's own.
        assert_eq!(
            through("\x1b[32mINFO\x1b[0m x\n"),
            "\x1b[32mINFO\x1b[0m x\n"
        );
    }
}
