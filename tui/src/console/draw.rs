//! Drawing the console from an [`App`]: header, membership table, stats panel,
//! key help. Reads state only.

use super::app::App;
use crate::report;
use dml_shared::NodeId;
use dml_shared::api::MemberState;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use std::net::IpAddr;

/// Width of the stats panel, in columns.
const STATS_WIDTH: u16 = 40;

pub fn state_style(s: MemberState) -> Style {
    let color = match s {
        MemberState::Alive => Color::Green,
        MemberState::Suspect => Color::Yellow,
        MemberState::Failed => Color::Red,
        MemberState::Left => Color::DarkGray,
    };
    Style::default().fg(color)
}

/// A node as `:port` when it is on the followed agent's host, else `ip:port`.
fn short(id: &NodeId, local: IpAddr) -> String {
    if id.addr.ip() == local {
        format!(":{}", id.addr.port())
    } else {
        id.addr.to_string()
    }
}

pub fn draw(frame: &mut Frame, app: &App) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [members, stats] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(STATS_WIDTH)]).areas(body);
    draw_header(frame, app, header);
    draw_members(frame, app, members);
    draw_stats(frame, app, stats);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" q", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw("/"),
            Span::styled("Esc", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" quit   refresh every 500 ms; follows another member if this agent stops"),
        ])),
        footer,
    );
}

fn draw_header(frame: &mut Frame, app: &App, area: Rect) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut first = vec![
        Span::styled("AwesomeDML", bold),
        Span::raw("  agent "),
        Span::styled(app.agent.to_string(), bold),
    ];
    if let Some((s, _)) = &app.snapshot {
        let live = s.members.iter().filter(|m| m.state.is_live()).count();
        first.push(Span::raw(format!(
            "  id {}  inc {}{}  {live} live of {} known",
            s.id.id,
            s.id.incarnation,
            if s.id.joined { "" } else { "  NOT JOINED" },
            s.members.len()
        )));
    }
    let second = match (&app.error, app.data_age_ms()) {
        (Some(e), _) => Line::from(Span::styled(
            format!("no answer: {e}"),
            Style::default().fg(Color::Red),
        )),
        (None, Some(age)) => {
            let mut spans = vec![Span::raw(format!("updated {age} ms ago"))];
            if let Some((from, to)) = app.last_switch {
                spans.push(Span::styled(
                    format!("  (switched from {from} to {to})"),
                    Style::default().fg(Color::Yellow),
                ));
            }
            Line::from(spans)
        }
        (None, None) => Line::from("connecting..."),
    };
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

fn draw_members(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title(" Members ");
    let Some((s, _)) = &app.snapshot else {
        frame.render_widget(Paragraph::new("no data yet").block(block), area);
        return;
    };
    let local = app.agent.ip();
    let rows = report::sorted(&s.members).into_iter().map(|m| {
        let monitors: Vec<String> = m.monitors.iter().map(|x| short(x, local)).collect();
        let mut id_style = Style::default();
        if m.id == s.id.id {
            id_style = id_style.add_modifier(Modifier::BOLD);
        }
        Row::new(vec![
            Cell::from(Span::styled(m.id.to_string(), id_style)),
            Cell::from(Span::styled(m.state.as_str(), state_style(m.state))),
            Cell::from(m.incarnation.to_string()),
            Cell::from(report::last_heard(m.last_heard_ms)),
            Cell::from(if monitors.is_empty() {
                "-".to_string()
            } else {
                monitors.join(" ")
            }),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(30),
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(["ID", "STATE", "INC", "LAST HEARD", "MONITORS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    frame.render_widget(table, area);
}

fn draw_stats(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title(" Stats ");
    let lines: Vec<Line> = match &app.snapshot {
        None => vec![Line::from("no data yet")],
        Some((s, _)) => report::stats_lines(&s.stats)
            .into_iter()
            .map(|(k, v)| {
                Line::from(vec![
                    Span::styled(format!("{k}: "), Style::default().fg(Color::Cyan)),
                    Span::raw(v),
                ])
            })
            .collect(),
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::app::{Event, Poll, Snapshot};
    use dml_shared::api::{IdInfo, MemberInfo, Stats};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    fn id(port: u16) -> NodeId {
        NodeId::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            1_764_150_000_000 + u64::from(port),
        )
    }

    fn screen(app: &App) -> (String, ratatui::buffer::Buffer) {
        let mut t = Terminal::new(TestBackend::new(120, 20)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let text = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        (text, buf)
    }

    fn app_with_members() -> App {
        let t = Instant::now();
        let mut app = App::new(id(8001).addr, t);
        let members = vec![
            MemberInfo {
                id: id(8001),
                state: MemberState::Alive,
                incarnation: 0,
                last_heard_ms: None,
                monitors: vec![id(8002), id(8003)],
            },
            MemberInfo {
                id: id(8002),
                state: MemberState::Suspect,
                incarnation: 3,
                last_heard_ms: Some(1500),
                monitors: vec![id(8001), id(8003)],
            },
        ];
        app.handle(Event::Data(Box::new(Poll {
            agent: id(8001).addr,
            at: t,
            result: Ok(Snapshot {
                id: IdInfo {
                    id: id(8001),
                    incarnation: 0,
                    joined: true,
                },
                members,
                stats: Stats {
                    refuted: 4,
                    ..Stats::default()
                },
            }),
            switched_from: None,
        })));
        app.handle(Event::Tick(t + Duration::from_millis(250)));
        app
    }

    #[test]
    fn screen_shows_members_with_colored_states_and_stats() {
        let (text, buf) = screen(&app_with_members());
        assert!(text.contains("127.0.0.1:8002#1764150008002"), "{text}");
        assert!(text.contains("1500 ms"), "{text}");
        assert!(text.contains(":8001 :8003"), "{text}");
        assert!(text.contains("refuted (false positives): 4"), "{text}");
        assert!(text.contains("updated 250 ms ago"), "{text}");
        assert!(text.contains("2 live of 2 known"), "{text}");
        // The "suspect" cell is yellow.
        let (y, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("suspect"))
            .expect("a suspect row");
        let x = line.find("suspect").unwrap() as u16;
        assert_eq!(buf[(x, y as u16)].fg, Color::Yellow);
        let alive_y = text.lines().position(|l| l.contains(" alive ")).unwrap();
        let alive_x = text.lines().nth(alive_y).unwrap().find(" alive ").unwrap() as u16 + 1;
        assert_eq!(buf[(alive_x, alive_y as u16)].fg, Color::Green);
    }

    #[test]
    fn screen_shows_the_error_and_the_failover() {
        let mut app = app_with_members();
        app.handle(Event::Data(Box::new(Poll {
            agent: id(8002).addr,
            at: app.now,
            result: Err("cannot reach agent at 127.0.0.1:8002: connection refused".into()),
            switched_from: None,
        })));
        let (text, _) = screen(&app);
        assert!(
            text.contains("no answer: cannot reach agent at 127.0.0.1:8002"),
            "{text}"
        );
        app.handle(Event::Data(Box::new(Poll {
            agent: id(8002).addr,
            at: app.now,
            result: Ok(app.snapshot.clone().unwrap().0),
            switched_from: Some(id(8001).addr),
        })));
        let (text, _) = screen(&app);
        assert!(
            text.contains("switched from 127.0.0.1:8001 to 127.0.0.1:8002"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_app_draws_without_data() {
        let app = App::new(id(8001).addr, Instant::now());
        let (text, _) = screen(&app);
        assert!(text.contains("connecting..."), "{text}");
        assert!(text.contains("no data yet"), "{text}");
    }
}
