//! Where each pane goes for a terminal size; shared by drawing and by mouse
//! hit-testing, so a click lands on the row it shows.

use ratatui::layout::{Constraint, Direction, Layout, Rect};

/// The console's panes, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pane {
    Members = 0,
    Models = 1,
    Jobs = 2,
    Sdfs = 3,
    Events = 4,
}

impl Pane {
    pub const COUNT: usize = 5;
    pub const ALL: [Pane; Pane::COUNT] = [
        Pane::Members,
        Pane::Models,
        Pane::Jobs,
        Pane::Sdfs,
        Pane::Events,
    ];

    pub fn next(self) -> Pane {
        Pane::ALL[(self as usize + 1) % Pane::COUNT]
    }

    pub fn prev(self) -> Pane {
        Pane::ALL[(self as usize + Pane::COUNT - 1) % Pane::COUNT]
    }

    pub fn title(self) -> &'static str {
        match self {
            Pane::Members => "Membership",
            Pane::Models => "Models (C1 C2 C3)",
            Pane::Jobs => "Jobs & placement (C5)",
            Pane::Sdfs => "SDFS",
            Pane::Events => "Events",
        }
    }
}

/// Terminals at least this wide put the panes in two columns.
pub const WIDE: u16 = 150;
/// Smallest membership pane (border, header and a few rows).
const MIN_MEMBER_PANE: u16 = 6;
/// Lines of the SDFS pane above its per-node table.
pub const SDFS_SUMMARY: u16 = 3;

/// Status bar, body and footer (key hints, input or the last result).
pub fn chrome(area: Rect) -> (Rect, Rect, Rect) {
    let v = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .split(area);
    (v[0], v[1], v[2])
}

/// Rows the panes would show, so that each takes the height it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub members: usize,
    pub models: usize,
    pub jobs: usize,
}

impl Rows {
    /// As many as fit: every pane at its largest share.
    pub const MANY: Rows = Rows {
        members: usize::MAX,
        models: usize::MAX,
        jobs: usize::MAX,
    };
}

/// Each pane's rectangle; with `expanded`, only the focused one.
pub fn panes(area: Rect, focus: Pane, expanded: bool) -> Vec<(Pane, Rect)> {
    panes_for(area, focus, expanded, Rows::MANY)
}

/// [`panes`] sized to their content: the membership, models and jobs panes
/// take the rows they need (within their share, never less than a few), and
/// give the rest to the events and SDFS panes.
pub fn panes_for(area: Rect, focus: Pane, expanded: bool, rows: Rows) -> Vec<(Pane, Rect)> {
    let members = rows.members;
    let (_, body, _) = chrome(area);
    if expanded {
        return vec![(focus, body)];
    }
    let split = |dir: Direction, c: &[Constraint], r: Rect| {
        Layout::default()
            .direction(dir)
            .constraints(c.to_vec())
            .split(r)
    };
    use Constraint::{Length, Min, Percentage};
    // Border and header around the member rows; never less than a few rows.
    let needed = |share: u16| {
        let cap = body.height * share / 100;
        let want = u16::try_from(members.saturating_add(3)).unwrap_or(u16::MAX);
        Length(want.clamp(MIN_MEMBER_PANE.min(cap), cap))
    };
    // Border and header around `n` rows, within `share` percent of the body.
    let fit = |n: usize, share: u16| {
        let cap = body.height * share / 100;
        let want = u16::try_from(n.saturating_add(3)).unwrap_or(u16::MAX);
        Length(want.clamp(MIN_MEMBER_PANE.min(cap), cap))
    };
    if body.width >= WIDE {
        let cols = split(Direction::Horizontal, &[Percentage(55), Min(0)], body);
        let left = split(Direction::Vertical, &[needed(65), Min(0)], cols[0]);
        let right = split(
            Direction::Vertical,
            &[fit(rows.models, 35), fit(rows.jobs, 35), Min(0)],
            cols[1],
        );
        vec![
            (Pane::Members, left[0]),
            (Pane::Models, right[0]),
            (Pane::Jobs, right[1]),
            (Pane::Sdfs, right[2]),
            (Pane::Events, left[1]),
        ]
    } else {
        let rows = split(
            Direction::Vertical,
            &[needed(40), fit(rows.models.max(rows.jobs), 30), Min(0)],
            body,
        );
        let mid = split(Direction::Horizontal, &[Percentage(55), Min(0)], rows[1]);
        let bottom = split(Direction::Horizontal, &[Percentage(45), Min(0)], rows[2]);
        vec![
            (Pane::Members, rows[0]),
            (Pane::Models, mid[0]),
            (Pane::Jobs, mid[1]),
            (Pane::Sdfs, bottom[0]),
            (Pane::Events, bottom[1]),
        ]
    }
}

/// Lines inside a pane's border above its first selectable row.
pub fn header_rows(p: Pane) -> u16 {
    match p {
        Pane::Members | Pane::Models | Pane::Jobs => 1,
        Pane::Sdfs => SDFS_SUMMARY + 1,
        Pane::Events => 0,
    }
}

/// Selectable rows that fit in a pane's rectangle.
pub fn body_rows(r: Rect, p: Pane) -> usize {
    usize::from(r.height.saturating_sub(2 + header_rows(p)))
}

/// First row shown so that `selected` is visible among `visible` rows.
pub fn scroll_offset(selected: usize, visible: usize) -> usize {
    if visible == 0 || selected < visible {
        0
    } else {
        selected + 1 - visible
    }
}

/// The popup's width on a screen `width` columns wide.
pub fn popup_width(width: u16) -> u16 {
    width.saturating_sub(8)
}

/// A popup of `text` on a `size` screen: its rows, and how many fit.
pub fn popup_rows(text: &str, size: (u16, u16)) -> (usize, usize) {
    let rows = wrap(text, usize::from(popup_width(size.0).saturating_sub(2))).len();
    (rows, rows.min(usize::from(size.1.saturating_sub(2))))
}

/// `text` in rows of at most `width` columns, broken at spaces where it can (so a
/// popup is as tall as its text).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let cols = |s: &str| ratatui::text::Span::raw(s).width();
    let mut rows = Vec::new();
    for line in text.lines() {
        let mut row = String::new();
        let mut start = true;
        for word in line.split(' ') {
            if !start && cols(&row) + 1 + cols(word) > width {
                rows.push(std::mem::take(&mut row));
                start = true;
            }
            if !start {
                row.push(' ');
            }
            // A word longer than a row is cut.
            for c in word.chars() {
                row.push(c);
                if cols(&row) > width {
                    row.pop();
                    rows.push(std::mem::replace(&mut row, c.to_string()));
                }
            }
            start = false;
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_tile_the_body_without_overlap_at_both_sizes() {
        for (w, h) in [(80, 24), (200, 60), (160, 48)] {
            let area = Rect::new(0, 0, w, h);
            let ps = panes(area, Pane::Members, false);
            assert_eq!(ps.len(), Pane::COUNT);
            let cells: u32 = ps.iter().map(|(_, r)| r.area()).sum();
            assert_eq!(cells, u32::from(w) * u32::from(h - 2), "{w}x{h}");
            for (i, (_, a)) in ps.iter().enumerate() {
                for (_, b) in &ps[i + 1..] {
                    assert!(!a.intersects(*b), "{a:?} and {b:?} overlap at {w}x{h}");
                }
                assert!(a.height >= 5, "pane too small at {w}x{h}: {a:?}");
            }
        }
    }

    #[test]
    fn a_small_cluster_leaves_its_spare_rows_to_the_other_panes() {
        let area = Rect::new(0, 0, 200, 60);
        let members = |n| {
            let rows = Rows {
                members: n,
                ..Rows::MANY
            };
            panes_for(area, Pane::Members, false, rows)[0].1.height
        };
        assert_eq!(members(10), 13);
        assert_eq!(members(1000), 37);
        assert_eq!(members(0), 6);
    }

    #[test]
    fn few_models_and_jobs_leave_their_rows_to_sdfs() {
        let area = Rect::new(0, 0, 160, 48);
        let few = Rows {
            members: 10,
            models: 3,
            jobs: 2,
        };
        let height = |rows, p| {
            panes_for(area, Pane::Members, false, rows)
                .into_iter()
                .find(|(q, _)| *q == p)
                .unwrap()
                .1
                .height
        };
        assert_eq!(height(few, Pane::Models), 6);
        assert_eq!(height(few, Pane::Jobs), 6);
        assert!(height(few, Pane::Sdfs) > height(Rows::MANY, Pane::Sdfs) + 10);
    }

    #[test]
    fn expanded_gives_the_focused_pane_the_whole_body() {
        let ps = panes(Rect::new(0, 0, 80, 24), Pane::Jobs, true);
        assert_eq!(ps, vec![(Pane::Jobs, Rect::new(0, 1, 80, 22))]);
    }

    #[test]
    fn scrolling_keeps_the_selection_on_screen() {
        assert_eq!(scroll_offset(3, 10), 0);
        assert_eq!(scroll_offset(10, 10), 1);
        assert_eq!(scroll_offset(999, 20), 980);
        assert_eq!(scroll_offset(5, 0), 0);
    }

    #[test]
    fn tab_order_wraps_both_ways() {
        assert_eq!(Pane::Events.next(), Pane::Members);
        assert_eq!(Pane::Members.prev(), Pane::Events);
    }
}
