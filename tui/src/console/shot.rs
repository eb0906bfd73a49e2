//! Screenshots of the live console: the same [`App`] and [`draw::draw`] as the
//! full-screen console, fed by the same telemetry subscription for a while,
//! drawn once into an off-screen buffer and written as SVG (`dml screenshot`).
//! The README's picture is made this way, so it shows the real console.

use super::app::{App, Event};
use super::{draw, follow, unix_ms};
use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// Follows `agent`'s telemetry for `settle`, then draws one frame of `size`.
pub async fn capture(agent: SocketAddr, size: (u16, u16), settle: Duration) -> Result<Buffer> {
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let stream = tokio::spawn(follow::run(agent, tx));
    let mut app = App::new(agent, unix_ms(), size);
    let deadline = tokio::time::Instant::now() + settle;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        // The clock moves as in the console, so a frame's age is its own.
        let _ = app.handle(Event::Tick(unix_ms()));
        // Actions are the operator's; a screenshot takes none.
        let _ = app.handle(ev);
    }
    stream.abort();
    let _ = app.handle(Event::Tick(unix_ms()));
    let mut term =
        Terminal::new(TestBackend::new(size.0, size.1)).context("off-screen terminal")?;
    term.draw(|f| draw::draw(f, &app))?;
    Ok(term.backend().buffer().clone())
}

/// A colour as SVG takes it; `None` for the terminal's default.
fn rgb(c: Color, fg: bool) -> Option<&'static str> {
    // xterm's palette, the one most terminals start from.
    Some(match c {
        Color::Reset => return None,
        Color::Black => "#000000",
        Color::Red => "#cd0000",
        Color::Green => "#00cd00",
        Color::Yellow => "#cdcd00",
        Color::Blue => "#3b78ff",
        Color::Magenta => "#cd00cd",
        Color::Cyan => "#00cdcd",
        Color::Gray => "#e5e5e5",
        Color::DarkGray => "#7f7f7f",
        Color::LightRed => "#ff5555",
        Color::LightGreen => "#55ff55",
        Color::LightYellow => "#ffff55",
        Color::LightBlue => "#8fb0ff",
        Color::LightMagenta => "#ff55ff",
        Color::LightCyan => "#55ffff",
        Color::White => "#ffffff",
        _ if fg => "#d0d0d0",
        _ => return None,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The buffer as an SVG picture of a dark terminal: one `<text>` per row,
/// a `<tspan>` per run of cells with one style, a `<rect>` per background run.
pub fn svg(buf: &Buffer) -> String {
    const W: f64 = 8.4;
    const H: f64 = 17.0;
    let area = buf.area;
    let (cols, rows) = (area.width, area.height);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\" \
         font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"14\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#1e1e1e\"/>\n",
        f64::from(cols) * W,
        f64::from(rows) * H
    );
    for y in 0..rows {
        let mut x = 0;
        while x < cols {
            let bg = buf[(x, y)].bg;
            let start = x;
            while x < cols && buf[(x, y)].bg == bg {
                x += 1;
            }
            if let Some(fill) = rgb(bg, false) {
                let _ = writeln!(
                    out,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{H}\" fill=\"{fill}\"/>",
                    f64::from(start) * W,
                    f64::from(y) * H,
                    f64::from(x - start) * W
                );
            }
        }
        let _ = write!(
            out,
            "<text y=\"{:.1}\" xml:space=\"preserve\">",
            f64::from(y) * H + H * 0.78
        );
        let mut x = 0;
        while x < cols {
            let cell = &buf[(x, y)];
            let (fg, bold) = (cell.fg, cell.modifier.contains(Modifier::BOLD));
            let start = x;
            let mut text = String::new();
            while x < cols
                && buf[(x, y)].fg == fg
                && buf[(x, y)].modifier.contains(Modifier::BOLD) == bold
            {
                text.push_str(buf[(x, y)].symbol());
                x += 1;
            }
            if text.trim().is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "<tspan x=\"{:.1}\" fill=\"{}\"{}>{}</tspan>",
                f64::from(start) * W,
                rgb(fg, true).unwrap_or("#d0d0d0"),
                if bold { " font-weight=\"bold\"" } else { "" },
                escape(&text)
            );
        }
        out.push_str("</text>\n");
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::layout::Rect;
    use ratatui::style::Style;

    #[test]
    fn cells_become_escaped_styled_runs_in_place() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 12, 2));
        buf.set_string(0, 0, "a<b", Style::default().fg(Color::Red));
        buf.set_string(4, 1, "ok", Style::default().bg(Color::Blue));
        let s = svg(&buf);
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        assert!(s.contains("fill=\"#cd0000\">a&lt;b</tspan>"), "{s}");
        assert!(s.contains("<rect x=\"33.6\" y=\"17.0\""), "{s}");
        assert_eq!(s.matches("<text").count(), 2);
    }
}
