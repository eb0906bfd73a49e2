//! The log's writer: one event, one line. A field value may hold text a
//! client sent (a refused SDFS name). tracing-subscriber escapes ESC, DEL and
//! C1 in values; this escapes the other C0 controls, line breaks included,
//! so that no value can forge a log line or hide one.

use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Makes [`OneLine`] writers to stderr.
pub struct OneLineStderr;

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = OneLine<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(io::stderr())
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
