//! The whole screen: status bar, the panes, the footer, and overlays (help,
//! the submit form, long results). Reads the [`App`]; changes nothing.

use super::app::{App, Health, Input, SUBMIT_FIELDS};
use super::fmt::age_ms;
use super::layout::{self, Pane};
use super::panes;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget};

/// Every key, as the help overlay lists it.
pub const KEYS: [(&str, &str); 21] = [
    ("?", "show or hide this help"),
    ("q, Ctrl-C", "quit"),
    ("Tab, l, →", "next pane"),
    ("Shift-Tab, h, ←", "previous pane"),
    ("j, ↓ / k, ↑", "move the selection down / up"),
    ("PgDn / PgUp", "move by ten rows"),
    ("g, Home / G, End", "first / last row"),
    ("/", "filter the focused pane (Enter keeps, Esc clears)"),
    ("o", "members or jobs pane: sort by the next column"),
    (":", "a dml command (:help); Tab completes, Up/Down recall"),
    (
        "+ / -",
        "models pane: batch size of the selected model up / down",
    ),
    ("b", "models pane: type a batch size"),
    ("s", "submit a job (model, images, dataset)"),
    (
        "Enter",
        "the selected job, member (log tail) or SDFS file in full",
    ),
    ("L", "membership: the selected member's log (200 lines)"),
    ("x", "jobs pane: cancel the selected running job"),
    ("e", "expand the focused pane / back"),
    (
        "Esc",
        "close a popup (↑↓ PgUp PgDn scroll it) or expanded view; clear filter",
    ),
    ("mouse click", "focus a pane and select a row"),
    ("mouse wheel", "scroll the pane under the pointer"),
    (
        "Enter / Ctrl-U",
        "run the command line or form / clear what is typed",
    ),
];

/// A message older than this gives way to the key hints.
const MESSAGE_MS: u64 = 15_000;
/// Without a frame for this long the connection shows as stale.
const STALE_MS: u64 = 3_000;

pub fn draw(f: &mut Frame, app: &App) {
    render(app, f.area(), f.buffer_mut());
}

/// Draws the whole screen into `buf` (tests and the bench call this directly).
pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let (status, _, footer) = layout::chrome(area);
    status_bar(app, status, buf);
    for (p, r) in app.pane_rects(area) {
        panes::render(app, p, r, buf);
    }
    footer_line(app, footer, buf);
    if let Some(Input::Submit(_)) = &app.input {
        submit_form(app, area, buf);
    }
    if let Some(m) = &app.message
        && let Some(d) = &m.detail
    {
        popup(d, m.scroll, area, buf);
    }
    if app.help {
        help(area, buf);
    }
}

fn status_bar(app: &App, area: Rect, buf: &mut Buffer) {
    let full = status_spans(app, false);
    let width: usize = full.iter().map(|s| s.width()).sum();
    let spans = if width <= usize::from(area.width) {
        full
    } else {
        status_spans(app, true)
    };
    Paragraph::new(Line::from(spans))
        .style(Style::new().bg(Color::Black))
        .render(area, buf);
}

/// The status bar's parts; `compact` for narrow terminals (connection health
/// must stay visible).
fn status_spans(app: &App, compact: bool) -> Vec<Span<'static>> {
    let sep = || Span::styled(" │ ", Style::new().fg(Color::DarkGray));
    let leader = app.frame.as_ref().and_then(|f| f.leader.as_ref());
    let (alive, total) = app.alive_total();
    let voters = leader.map_or(0, |l| l.voters.len());
    let mut spans = Vec::new();
    if compact {
        spans.push(Span::styled(" DML ", Style::new().black().on_cyan().bold()));
    } else {
        spans.push(Span::styled(
            " AwesomeDML ",
            Style::new().black().on_cyan().bold(),
        ));
        spans.push(Span::raw(format!(
            " cluster {total} nodes, {voters} voters"
        )));
        spans.push(sep());
    }
    spans.push(Span::raw(if compact { " ldr " } else { "leader " }));
    spans.push(match leader.and_then(|l| l.leader) {
        Some(l) => Span::styled(l.to_string(), Style::new().fg(Color::Magenta).bold()),
        None => Span::styled("none", Style::new().fg(Color::Red).bold()),
    });
    if let Some(ms) = leader.and_then(|l| l.unacked_ms) {
        spans.push(Span::styled(
            format!(" (no majority for {})", super::fmt::age_ms(ms)),
            Style::new().fg(Color::Red).bold(),
        ));
    }
    spans.push(sep());
    let color = if alive == total {
        Color::Green
    } else {
        Color::Yellow
    };
    spans.push(Span::styled(
        if compact {
            format!("{alive}/{total}")
        } else {
            format!("{alive}/{total} alive")
        },
        Style::new().fg(color),
    ));
    spans.push(sep());
    let term = leader.map_or(0, |l| l.term);
    spans.push(Span::raw(if compact {
        format!("t{term}")
    } else {
        format!("term {term}")
    }));
    spans.push(sep());
    spans.extend(connection(app));
    if app.read_only {
        spans.push(sep());
        spans.push(Span::styled(
            if compact { "ro" } else { "read-only" },
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    spans
}

/// The connection's health: agent, age of the last frame, drops, switches.
fn connection(app: &App) -> Vec<Span<'static>> {
    let age = app.last_frame_ms.map(|t| app.now_ms.saturating_sub(t));
    let dropped = app.frame.as_ref().map_or(0, |f| f.dropped);
    let mut v = match &app.health {
        Health::Connecting => vec![Span::styled(
            format!("◌ connecting to {}", app.agent),
            Style::new().fg(Color::Yellow).bold(),
        )],
        Health::Reconnecting { from, error } => vec![Span::styled(
            format!("◌ reconnecting to {}; lost {from}: {error}", app.agent),
            Style::new().fg(Color::Red).bold(),
        )],
        Health::Live if age.is_some_and(|a| a > STALE_MS) => vec![Span::styled(
            format!("● {} stale {}", app.agent, age_ms(age.unwrap_or(0))),
            Style::new().fg(Color::Yellow).bold(),
        )],
        Health::Live => vec![Span::styled(
            format!("● {} live", app.agent),
            Style::new().fg(Color::Green).bold(),
        )],
    };
    if dropped > 0 {
        v.push(Span::styled(
            format!(" {dropped} dropped"),
            Style::new().fg(Color::Yellow),
        ));
    }
    let failovers = app
        .switches
        .iter()
        .filter(|(from, to, why, _)| *why == "lost" && from != to)
        .count();
    if failovers > 0 {
        v.push(Span::styled(
            format!(" failovers: {failovers}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some((from, _, why, _)) = app.switches.last()
        && app.health == Health::Live
    {
        let why = if *why == "leader" {
            "following the leader"
        } else {
            "failed over"
        };
        v.push(Span::styled(
            format!(" (from {from}, {why})"),
            Style::new().fg(Color::DarkGray),
        ));
    }
    v
}

fn footer_line(app: &App, area: Rect, buf: &mut Buffer) {
    let line = match &app.input {
        Some(Input::Filter(t)) => Line::from(vec![
            Span::styled("/", Style::new().fg(Color::Yellow).bold()),
            Span::raw(t.clone()),
            Span::styled("█", Style::new().fg(Color::Yellow)),
            Span::styled(
                format!("  filter {} (Enter keeps, Esc clears)", app.focus.title()),
                Style::new().fg(Color::DarkGray),
            ),
        ]),
        Some(Input::Command(t)) => Line::from(vec![
            Span::styled(":", Style::new().fg(Color::Yellow).bold()),
            Span::raw(t.clone()),
            Span::styled("█", Style::new().fg(Color::Yellow)),
            Span::styled(
                "  e.g. ls NAME, put LOCAL NAME, submit-job MODEL N, set-batch-size MODEL N",
                Style::new().fg(Color::DarkGray),
            ),
        ]),
        Some(Input::BatchSize { model, text }) => Line::from(vec![
            Span::styled(
                format!("batch size of {model}: "),
                Style::new().fg(Color::Yellow).bold(),
            ),
            Span::raw(text.clone()),
            Span::styled("█", Style::new().fg(Color::Yellow)),
        ]),
        Some(Input::Submit(_)) => Line::from(Span::styled(
            "Tab next field, Enter submit, Esc cancel",
            Style::new().fg(Color::DarkGray),
        )),
        None => match &app.message {
            Some(m) if app.now_ms.saturating_sub(m.at_ms) < MESSAGE_MS || m.detail.is_some() => {
                let color = if m.ok { Color::Green } else { Color::Red };
                Line::from(Span::styled(m.text.clone(), Style::new().fg(color).bold()))
            }
            _ => hints(app),
        },
    };
    Paragraph::new(line).render(area, buf);
}

fn hints(app: &App) -> Line<'static> {
    let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Cyan).bold());
    let mut v = vec![
        key("?"),
        Span::raw(" help "),
        key("q"),
        Span::raw(" quit "),
        key("Tab"),
        Span::raw(" pane "),
        key("/"),
        Span::raw(" filter "),
        key(":"),
        Span::raw(" command "),
        key("s"),
        Span::raw(" submit "),
        key("e"),
        Span::raw(" expand"),
    ];
    if app.focus == Pane::Jobs {
        v.extend([
            key(" Enter"),
            Span::raw(" details "),
            key("x"),
            Span::raw(" cancel"),
        ]);
    }
    if app.focus == Pane::Models {
        v.extend([
            key(" +/-"),
            Span::raw(" batch "),
            key("b"),
            Span::raw(" set batch"),
        ]);
    }
    Line::from(v)
}

/// A centred rectangle of at most `w` x `h`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn help(area: Rect, buf: &mut Buffer) {
    let r = centered(area, 76, KEYS.len() as u16 + 4);
    Clear.render(r, buf);
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<17}"), Style::new().fg(Color::Cyan).bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(Span::styled(
        " any of ? q Esc closes",
        Style::new().fg(Color::DarkGray),
    )));
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .title(" Keys ")
                .border_style(Style::new().fg(Color::Cyan)),
        )
        .render(r, buf);
}

fn submit_form(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(Input::Submit(form)) = &app.input else {
        return;
    };
    let r = centered(area, 60, 7);
    Clear.render(r, buf);
    let values = [&form.model, &form.count, &form.dataset];
    let lines: Vec<Line> = SUBMIT_FIELDS
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (name, v))| {
            let focused = i == form.field;
            let style = if focused {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            Line::from(vec![
                Span::styled(format!(" {name:<8} "), Style::new().bold()),
                Span::styled(format!("{v}{}", if focused { "█" } else { "" }), style),
            ])
        })
        .collect();
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .title(" Submit a job (Enter submits, Esc cancels) ")
                .border_style(Style::new().fg(Color::Yellow)),
        )
        .render(r, buf);
}

/// `text` in a popup from row `scroll`; the title says where it is when
/// the text does not fit.
fn popup(text: &str, scroll: usize, area: Rect, buf: &mut Buffer) {
    let w = layout::popup_width(area.width);
    let rows = layout::wrap(text, usize::from(w.saturating_sub(2)));
    let (n, visible) = layout::popup_rows(text, (area.width, area.height));
    let first = scroll.min(n - visible);
    let title = if visible < n {
        format!(
            " rows {}-{} of {n}: ↑↓ PgUp PgDn g G; Esc closes ",
            first + 1,
            first + visible
        )
    } else {
        " result (Esc closes) ".to_string()
    };
    let r = centered(area, w, (visible as u16).saturating_add(2));
    Clear.render(r, buf);
    Paragraph::new(
        rows.into_iter()
            .skip(first)
            .take(visible)
            .map(Line::from)
            .collect::<Vec<_>>(),
    )
    .block(Block::bordered().title(title))
    .render(r, buf);
}
