//! The five panes, each drawn from an [`App`] into a buffer area.

use super::app::App;
use super::fmt::{age_ms, bytes, clock, spark};
use super::layout::{self, Pane};
use dml_shared::api::MemberState;
use dml_shared::infer::{JobInfo, JobState};
use dml_shared::sdfs::printable;
use dml_shared::telemetry::EventKind;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Cell, Paragraph, Row, Table, Widget};

/// Why a pane of leader figures is empty.
const NO_DATA: &str = "no data";

pub fn state_color(s: MemberState) -> Color {
    match s {
        MemberState::Alive => Color::Green,
        MemberState::Suspect => Color::Yellow,
        MemberState::Failed => Color::Red,
        MemberState::Left => Color::DarkGray,
    }
}

fn kind_color(k: EventKind) -> Color {
    match k {
        EventKind::Join | EventKind::Refuted | EventKind::Rejoin => Color::Green,
        EventKind::Leave => Color::DarkGray,
        EventKind::Failure => Color::Red,
        EventKind::Suspect => Color::Yellow,
        EventKind::LeaderChange => Color::Magenta,
        EventKind::Repair => Color::Cyan,
        EventKind::JobStart | EventKind::JobFinish => Color::Blue,
        EventKind::Info => Color::Reset,
    }
}

/// A pane's frame: title with filter and counts; highlighted when focused.
fn block(app: &App, p: Pane, extra: String) -> Block<'static> {
    let focused = app.focus == p;
    let filter = &app.filters[p as usize];
    let mut title = format!(" {} ", p.title());
    if !extra.is_empty() {
        title.push_str(&format!("{extra} "));
    }
    if !filter.is_empty() {
        title.push_str(&format!("/{filter} "));
    }
    let style = if focused {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(style)
        .title(Span::styled(title, style))
}

fn selected_style(app: &App, p: Pane) -> Style {
    if app.focus == p {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    }
}

/// The rows of a list that fit, scrolled so the selection shows: (offset, count).
fn window(app: &App, p: Pane, area: Rect, total: usize) -> (usize, usize) {
    let visible = layout::body_rows(area, p);
    let off = layout::scroll_offset(app.selected[p as usize], visible);
    (off, visible.min(total.saturating_sub(off)))
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied())
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

/// The text shown in place of leader figures that are missing.
fn no_data(app: &App, why: Option<&str>) -> String {
    match why {
        Some(e) => format!("{NO_DATA}: {e}"),
        None if app.frame.is_none() => format!("{NO_DATA}: waiting for the first frame"),
        None => format!("{NO_DATA}: the leader's figures have not arrived yet"),
    }
}

pub fn members(app: &App, area: Rect, buf: &mut Buffer) {
    let all = app.members();
    let (alive, total) = app.alive_total();
    let b = block(
        app,
        Pane::Members,
        format!(
            "{alive}/{total} alive, {} shown, by {} (o)",
            all.len(),
            app.member_sort.column()
        ),
    );
    let (off, n) = window(app, Pane::Members, area, all.len());
    let wide = area.width >= 110;
    let nodes = app.frame.as_ref().map(|f| &f.nodes[..]).unwrap_or_default();
    let rows = all.iter().enumerate().skip(off).take(n).map(|(i, m)| {
        let st = nodes
            .iter()
            .find(|s| s.addr == Some(m.id.addr) && m.state.is_live());
        // Narrow: the incarnation's start time (UTC) stands for the id; the
        // address has its own column.
        let mut cells = vec![Cell::from(if wide {
            m.id.to_string()
        } else {
            clock(m.id.started)
        })];
        if !wide {
            cells.push(Cell::from(m.id.addr.to_string()));
        }
        cells.extend([
            Cell::from(Span::styled(
                m.state.as_str(),
                Style::new().fg(state_color(m.state)),
            )),
            Cell::from(m.incarnation.to_string()),
            // Only the members this agent probes are heard from on a schedule;
            // for the others the last contact (their join) says nothing.
            Cell::from(
                m.last_heard_ms
                    .filter(|_| m.monitors.iter().any(|n| n.addr == app.agent))
                    .map_or_else(|| "-".into(), age_ms),
            ),
            Cell::from(match app.role(m) {
                "leader" => Span::styled("leader", Style::new().fg(Color::Magenta).bold()),
                r => Span::raw(r),
            }),
            Cell::from(st.map_or_else(|| "-".into(), |s| format!("{:.1}%", s.cpu_percent))),
            Cell::from(st.map_or_else(|| "-".into(), |s| bytes(s.rss_bytes))),
            Cell::from(st.map_or_else(|| "-".into(), |s| bytes(s.sdfs_bytes))),
            Cell::from(st.map_or_else(|| "-".into(), |s| s.queries_running.to_string())),
        ]);
        let mut row = Row::new(cells);
        if i == app.selected[Pane::Members as usize] {
            row = row.style(selected_style(app, Pane::Members));
        }
        if m.id.addr == app.agent {
            row = row.style(Style::new().underlined());
            if i == app.selected[Pane::Members as usize] {
                row = row.style(selected_style(app, Pane::Members).underlined());
            }
        }
        row
    });
    let (head, widths): (Vec<&'static str>, Vec<Constraint>) = if wide {
        (
            vec![
                "node", "state", "inc", "heard", "role", "cpu", "mem", "sdfs", "q",
            ],
            vec![
                Constraint::Length(30),
                Constraint::Length(7),
                Constraint::Length(4),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(3),
            ],
        )
    } else {
        (
            vec![
                "started", "address", "state", "inc", "heard", "role", "cpu", "mem", "sdfs", "q",
            ],
            vec![
                Constraint::Length(8),
                Constraint::Length(15),
                Constraint::Length(7),
                Constraint::Length(3),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(2),
            ],
        )
    };
    Table::new(rows, widths)
        .header(header(&head))
        .column_spacing(1)
        .block(b)
        .render(area, buf);
}

pub fn models(app: &App, area: Rect, buf: &mut Buffer) {
    let cluster = app.frame.as_ref().and_then(|f| f.cluster.as_ref());
    let b = block(app, Pane::Models, String::new());
    let models = app.models();
    let err = cluster.and_then(|c| c.models.as_ref().err());
    if models.is_empty() {
        let text = match (cluster, err) {
            (_, Some(e)) => no_data(app, Some(&e.message)),
            (Some(_), None) if app.filters[Pane::Models as usize].is_empty() => {
                "no models registered".into()
            }
            (Some(_), None) => "no model matches the filter".into(),
            (None, None) => no_data(app, None),
        };
        Paragraph::new(text).block(b).render(area, buf);
        return;
    }
    let latency = cluster.and_then(|c| c.latency.as_ref().ok());
    let (off, n) = window(app, Pane::Models, area, models.len());
    let cols = model_columns(area.width.saturating_sub(2));
    let spark_width = cols
        .iter()
        .find(|(c, _)| *c == Col::Spark)
        .map_or(0, |(_, w)| usize::from(*w));
    let rows = models.iter().enumerate().skip(off).take(n).map(|(i, m)| {
        let r = app.rate(&m.name);
        let l = latency.and_then(|l| l.iter().find(|l| l.model == m.name));
        let hist: Vec<f64> = app
            .history
            .get(&m.name)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        let ms = |f: fn(&dml_shared::infer::LatencyInfo) -> f64| {
            l.map_or_else(|| "-".into(), |l| format!("{:.0}", f(l)))
        };
        let cells = cols.iter().map(|(c, _)| match c {
            Col::Name => Cell::from(m.name.clone()),
            // The batch dispatched now, "4/8" when a p99 target chose below the largest.
            Col::Batch if m.effective_batch != m.batch_size => {
                Cell::from(format!("{}/{}", m.effective_batch, m.batch_size))
            }
            Col::Batch => Cell::from(m.batch_size.to_string()),
            Col::Rate => {
                Cell::from(r.map_or_else(|| "-".into(), |r| format!("{:.1}", r.queries_per_s)))
            }
            Col::Spark => Cell::from(Span::styled(
                spark(&hist, spark_width),
                Style::new().fg(Color::Cyan),
            )),
            Col::Count => Cell::from(r.map_or_else(|| "-".into(), |r| r.queries_total.to_string())),
            Col::Avg => Cell::from(ms(|l| l.mean_ms)),
            Col::Queue => Cell::from(ms(|l| l.queue.mean_ms)),
            Col::Work => Cell::from(ms(|l| l.compute.mean_ms)),
            Col::Std => Cell::from(ms(|l| l.stddev_ms)),
            Col::P50 => Cell::from(ms(|l| l.p50_ms)),
            Col::P90 => Cell::from(ms(|l| l.p90_ms)),
            Col::P95 => Cell::from(ms(|l| l.p95_ms)),
            Col::P99 => Cell::from(ms(|l| l.p99_ms)),
        });
        let mut row = Row::new(cells.collect::<Vec<_>>());
        if i == app.selected[Pane::Models as usize] {
            row = row.style(selected_style(app, Pane::Models));
        }
        row
    });
    let head: Vec<&'static str> = cols.iter().map(|(c, _)| c.title()).collect();
    let widths: Vec<Constraint> = cols.iter().map(|(_, w)| Constraint::Length(*w)).collect();
    Table::new(rows, widths)
        .header(header(&head))
        .column_spacing(1)
        .block(b)
        .render(area, buf);
}

/// Columns of the models table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Name,
    Batch,
    Rate,
    Spark,
    Count,
    Avg,
    /// C2's mean queue time (waiting on the worker).
    Queue,
    /// C2's mean compute time.
    Work,
    Std,
    P50,
    P90,
    P95,
    P99,
}

impl Col {
    fn title(self) -> &'static str {
        match self {
            Col::Name => "model",
            Col::Batch => "batch",
            Col::Rate => "q/s",
            Col::Spark => "rate",
            Col::Count => "count",
            Col::Avg => "avg",
            Col::Queue => "queue",
            Col::Work => "work",
            Col::Std => "std",
            Col::P50 => "p50",
            Col::P90 => "p90",
            Col::P95 => "p95",
            Col::P99 => "p99",
        }
    }
}

/// The models table's columns that fit in `width`, in display order: the
/// essentials first, then C2 figures by priority; the sparkline takes what is left.
fn model_columns(width: u16) -> Vec<(Col, u16)> {
    const SPARK_MIN: u16 = 6;
    const SPARK_MAX: u16 = 30;
    let mut cols = vec![
        (Col::Name, 11),
        (Col::Batch, 5),
        (Col::Spark, SPARK_MIN),
        (Col::Count, 6),
        (Col::Avg, 4),
        (Col::P99, 4),
    ];
    let used = |c: &[(Col, u16)]| c.iter().map(|(_, w)| w + 1).sum::<u16>();
    for (extra, w) in [
        (Col::Queue, 5),
        (Col::Work, 5),
        (Col::Std, 4),
        (Col::P50, 4),
        (Col::P95, 4),
        (Col::P90, 4),
        (Col::Rate, 4),
    ] {
        if used(&cols) + w < width {
            cols.push((extra, w));
        }
    }
    let order = [
        Col::Name,
        Col::Batch,
        Col::Rate,
        Col::Spark,
        Col::Count,
        Col::Avg,
        Col::Queue,
        Col::Work,
        Col::Std,
        Col::P50,
        Col::P90,
        Col::P95,
        Col::P99,
    ];
    cols.sort_by_key(|(c, _)| order.iter().position(|o| o == c));
    let spare = width.saturating_sub(used(&cols));
    if let Some((_, w)) = cols.iter_mut().find(|(c, _)| *c == Col::Spark) {
        *w = (SPARK_MIN + spare).min(SPARK_MAX);
    }
    cols
}

/// Why a running job makes no progress, if the leader knows.
pub fn stalled(j: &JobInfo) -> Option<&str> {
    j.stalled
        .as_deref()
        .filter(|_| j.state == JobState::Running)
}

/// `s` cut to `room` columns, with an ellipsis when cut.
fn truncate(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        return s.to_string();
    }
    let mut t: String = s.chars().take(room.saturating_sub(1)).collect();
    if room > 0 {
        t.push('…');
    }
    t
}

pub fn jobs(app: &App, area: Rect, buf: &mut Buffer) {
    let cluster = app.frame.as_ref().and_then(|f| f.cluster.as_ref());
    let jobs = app.jobs();
    let stalls = jobs.iter().filter(|j| stalled(j).is_some()).count();
    let mut extra = format!("by {} (o)", app.job_sort.column());
    if stalls > 0 {
        extra.push_str(&format!(", {stalls} stalled (Enter: why)"));
    }
    let b = block(app, Pane::Jobs, extra);
    if jobs.is_empty() {
        let text = match cluster.map(|c| &c.jobs) {
            Some(Err(e)) => no_data(app, Some(&e.message)),
            Some(Ok(_)) => "no jobs; press s to submit one".into(),
            None => no_data(app, None),
        };
        Paragraph::new(text).block(b).render(area, buf);
        return;
    }
    let placement = cluster.and_then(|c| c.placement.as_ref().ok());
    let (off, n) = window(app, Pane::Jobs, area, jobs.len());
    let inner = area.width.saturating_sub(2);
    // Leave room after the gauge for at least a worker count.
    let gauge_w = usize::from(inner / 4)
        .min(usize::from(inner).saturating_sub(37 + 11))
        .clamp(6, 30);
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:<5} {:<10} {:<8} {:<gauge_w$} {:>9}  workers (queries)",
            "job", "model", "state", "progress", "done"
        ),
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
    ))];
    for (i, j) in jobs.iter().enumerate().skip(off).take(n) {
        let frac = if j.images == 0 {
            1.0
        } else {
            f64::from(j.done) / f64::from(j.images)
        };
        let filled = ((frac * gauge_w as f64).round() as usize).min(gauge_w);
        let stall = stalled(j);
        let color = match j.state {
            JobState::Running if stall.is_some() => Color::Yellow,
            JobState::Running => Color::Blue,
            JobState::Done => Color::Green,
            JobState::Failed => Color::Red,
            JobState::Cancelled => Color::Magenta,
        };
        // Job, model, state, gauge and counts take this much of the line.
        let room = usize::from(inner).saturating_sub(37 + gauge_w);
        // A stalled job says why in place of its workers; the model is in its column.
        let why = stall.map(|s| {
            let prefix = format!("no worker can run {}: ", j.model);
            truncate(s.strip_prefix(&prefix).unwrap_or(s), room)
        });
        let workers = placement
            .and_then(|p| p.iter().find(|p| p.job == j.id))
            .map(|p| {
                let all = p
                    .workers
                    .iter()
                    .map(|(a, q)| format!("{}×{q}", a.port()))
                    .collect::<Vec<_>>()
                    .join(" ");
                if all.chars().count() <= room {
                    all
                } else {
                    format!("{} workers", p.workers.len())
                }
            })
            .unwrap_or_default();
        let mut line = Line::from(vec![
            Span::raw(format!("{:<5} {:<10.10} ", format!("#{}", j.id), j.model)),
            Span::styled(format!("{:<8} ", j.state.as_str()), Style::new().fg(color)),
            Span::styled("█".repeat(filled), Style::new().fg(color)),
            Span::styled(
                "░".repeat(gauge_w - filled),
                Style::new().fg(Color::DarkGray),
            ),
            Span::raw(format!(" {:>4}/{:<4} ", j.done, j.images)),
            match why {
                Some(why) => Span::styled(why, Style::new().fg(Color::Yellow).bold()),
                None => Span::raw(workers),
            },
        ]);
        if i == app.selected[Pane::Jobs as usize] {
            line = line.style(selected_style(app, Pane::Jobs));
        }
        lines.push(line);
    }
    Paragraph::new(lines).block(b).render(area, buf);
}

/// Re-replication: the ETA first (it survives a narrow pane), then what is
/// left, the rate and the copies running. With no repair running, the
/// balancer's moves take the line; with both, a short note of them ends it.
fn repair_line(h: &dml_shared::telemetry::SdfsHealth) -> Line<'static> {
    let (r, b) = (&h.repair, &h.balance);
    let balancing = b.pending_moves > 0 || b.in_flight > 0;
    if r.pending_copies == 0 && r.in_flight == 0 {
        if balancing {
            return Line::from(vec![
                Span::styled("balance: ", Style::new().fg(Color::Cyan).bold()),
                Span::raw(format!(
                    "{} moves left ({}), {} running, {} done ({})",
                    b.pending_moves,
                    bytes(b.pending_bytes),
                    b.in_flight,
                    b.moved,
                    bytes(b.moved_bytes),
                )),
            ]);
        }
        return Line::from(format!("{} copies each; no repair running", h.replicas));
    }
    let eta = r
        .eta()
        .map_or_else(|| "--".to_string(), crate::units::duration);
    let mut spans = vec![
        Span::styled(
            format!("repair ETA {eta}: "),
            Style::new().fg(Color::Yellow).bold(),
        ),
        Span::raw(format!(
            "{} left ({}), {}/s ({}), {} running",
            r.pending_copies,
            bytes(r.pending_bytes),
            r.copies_per_sec,
            crate::units::rate(r.bytes_per_sec as f64),
            r.in_flight,
        )),
    ];
    if balancing {
        spans.push(Span::styled(
            format!("; balance {} moves waiting", b.pending_moves),
            Style::new().fg(Color::Cyan),
        ));
    }
    Line::from(spans)
}

pub fn sdfs(app: &App, area: Rect, buf: &mut Buffer) {
    let b = block(app, Pane::Sdfs, String::new());
    let health = app
        .frame
        .as_ref()
        .and_then(|f| f.cluster.as_ref())
        .map(|c| &c.sdfs);
    let mut lines: Vec<Line> = match health {
        Some(Ok(h)) => {
            let mut health = vec![if h.under_replicated == 0 {
                Span::styled("all fully replicated", Style::new().fg(Color::Green))
            } else {
                Span::styled(
                    format!("{} under-replicated: ", h.under_replicated),
                    Style::new().fg(Color::Yellow).bold(),
                )
            }];
            let sample = h
                .under_replicated_sample
                .iter()
                .map(|(n, v, have)| format!("{n} v{v} ({have}/{})", h.replicas))
                .collect::<Vec<_>>()
                .join(", ");
            health.push(Span::styled(sample, Style::new().fg(Color::Yellow)));
            vec![
                Line::from(format!(
                    "{} files, {} versions, {}",
                    h.files,
                    h.versions,
                    bytes(h.bytes)
                )),
                repair_line(h),
                Line::from(health),
            ]
        }
        Some(Err(e)) => vec![
            Line::from(no_data(app, Some(&e.message))),
            Line::default(),
            Line::default(),
        ],
        None => vec![
            Line::from(no_data(app, None)),
            Line::default(),
            Line::default(),
        ],
    };
    if app.files.is_some() {
        file_rows(app, area, &mut lines);
        let b = block(app, Pane::Sdfs, "files: Enter details, Esc nodes".into());
        Paragraph::new(lines).block(b).render(area, buf);
        return;
    }
    let nodes = app.frame.as_ref().map(|f| &f.nodes[..]).unwrap_or_default();
    // Narrow panes drop the age column and the address's room.
    let narrow = area.width < 46;
    let row = |node: &str, versions: &str, size: &str, age: &str| {
        if narrow {
            format!("{node:<15} {versions:>5} {size:>8}")
        } else {
            format!("{node:<21} {versions:>8} {size:>8} {age:>6}")
        }
    };
    lines.push(Line::from(Span::styled(
        row(
            "node",
            if narrow { "vers" } else { "versions" },
            "bytes",
            "age",
        ),
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
    )));
    let (off, n) = window(app, Pane::Sdfs, area, nodes.len());
    for (i, s) in nodes.iter().enumerate().skip(off).take(n) {
        let mut line = Line::from(row(
            &s.addr.map_or_else(|| "?".into(), |a| a.to_string()),
            &s.sdfs_versions.to_string(),
            &bytes(s.sdfs_bytes),
            &age_ms(s.age_ms),
        ));
        if i == app.selected[Pane::Sdfs as usize] {
            line = line.style(selected_style(app, Pane::Sdfs));
        }
        lines.push(line);
    }
    Paragraph::new(lines).block(b).render(area, buf);
}

/// The SDFS pane's file view: a name, its versions and newest size per row.
fn file_rows(app: &App, area: Rect, lines: &mut Vec<Line>) {
    let files = app.files_shown();
    let width = usize::from(area.width.saturating_sub(2));
    let name_w = width.saturating_sub(19).max(8);
    let row =
        |name: &str, versions: &str, size: &str| format!("{name:<name_w$} {versions:>8} {size:>9}");
    lines.push(Line::from(Span::styled(
        row("file", "versions", "newest"),
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
    )));
    let (off, n) = window(app, Pane::Sdfs, area, files.len());
    for (i, f) in files.iter().enumerate().skip(off).take(n) {
        let name: String = printable(&f.name).chars().take(name_w).collect();
        let newest = f.versions.last().map_or(0, |v| v.size);
        let mut line = Line::from(row(&name, &f.versions.len().to_string(), &bytes(newest)));
        if i == app.selected[Pane::Sdfs as usize] {
            line = line.style(selected_style(app, Pane::Sdfs));
        }
        lines.push(line);
    }
}

pub fn events(app: &App, area: Rect, buf: &mut Buffer) {
    let all = app.event_lines();
    let b = block(app, Pane::Events, format!("{} lines", all.len()));
    let (off, n) = window(app, Pane::Events, area, all.len());
    let lines: Vec<Line> = all
        .iter()
        .enumerate()
        .skip(off)
        .take(n)
        .map(|(i, e)| {
            let mut line = Line::from(vec![
                Span::styled(clock(e.unix_ms), Style::new().fg(Color::DarkGray)),
                Span::raw(" "),
                Span::styled(
                    format!("{:<8}", e.kind.as_str()),
                    Style::new().fg(kind_color(e.kind)),
                ),
                Span::raw(" "),
                // An agent's text, shown raw on the terminal: nothing in it may steer it.
                Span::raw(printable(&e.text).into_owned()),
            ]);
            if i == app.selected[Pane::Events as usize] {
                line = line.style(selected_style(app, Pane::Events));
            }
            line
        })
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::from("no events yet")]
    } else {
        lines
    };
    Paragraph::new(lines).block(b).render(area, buf);
}

/// Draws pane `p`.
pub fn render(app: &App, p: Pane, area: Rect, buf: &mut Buffer) {
    match p {
        Pane::Members => members(app, area, buf),
        Pane::Models => models(app, area, buf),
        Pane::Jobs => jobs(app, area, buf),
        Pane::Sdfs => sdfs(app, area, buf),
        Pane::Events => events(app, area, buf),
    }
}
