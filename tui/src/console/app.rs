//! Console state: the [`Event`]s that reach it and the [`App`] they update.
//! Drawing only reads an `App`; nothing here does IO.

use dml_shared::api::{IdInfo, MemberInfo, Stats};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::net::SocketAddr;
use std::time::Instant;

/// Everything that can change the console.
#[derive(Debug)]
pub enum Event {
    /// A key press from the terminal.
    Key(KeyEvent),
    /// The clock moved on (ages on screen are recomputed).
    Tick(Instant),
    /// The result of one refresh from the agent being followed.
    Data(Box<Poll>),
}

/// What an agent said in one refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub id: IdInfo,
    pub members: Vec<MemberInfo>,
    pub stats: Stats,
}

/// One refresh: which agent was asked, and what came back.
#[derive(Debug)]
pub struct Poll {
    pub agent: SocketAddr,
    pub at: Instant,
    pub result: Result<Snapshot, String>,
    /// Set when the follower moved to another agent during this refresh.
    pub switched_from: Option<SocketAddr>,
}

/// The console's whole state.
#[derive(Debug)]
pub struct App {
    /// The agent currently followed.
    pub agent: SocketAddr,
    /// Last good answer and when it arrived.
    pub snapshot: Option<(Snapshot, Instant)>,
    /// Why the last refresh failed, while it keeps failing.
    pub error: Option<String>,
    /// The latest failover, for the status line.
    pub last_switch: Option<(SocketAddr, SocketAddr)>,
    pub now: Instant,
    pub quit: bool,
}

impl App {
    pub fn new(agent: SocketAddr, now: Instant) -> Self {
        Self {
            agent,
            snapshot: None,
            error: None,
            last_switch: None,
            now,
            quit: false,
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Key(k) => self.handle_key(k),
            Event::Tick(now) => self.now = now,
            Event::Data(p) => self.handle_poll(*p),
        }
    }

    fn handle_key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
        if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
            self.quit = true;
        }
    }

    fn handle_poll(&mut self, p: Poll) {
        self.now = self.now.max(p.at);
        if let Some(from) = p.switched_from {
            self.last_switch = Some((from, p.agent));
        }
        self.agent = p.agent;
        match p.result {
            Ok(s) => {
                self.snapshot = Some((s, p.at));
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Milliseconds since the shown data arrived.
    pub fn data_age_ms(&self) -> Option<u128> {
        self.snapshot
            .as_ref()
            .map(|(_, at)| self.now.saturating_duration_since(*at).as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::NodeId;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn snapshot(port: u16) -> Snapshot {
        Snapshot {
            id: IdInfo {
                id: NodeId::new(addr(port), 1),
                incarnation: 0,
                joined: true,
            },
            members: vec![],
            stats: Stats::default(),
        }
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_other_keys_do_not() {
        let t = Instant::now();
        for (code, mods, quits) in [
            (KeyCode::Char('q'), KeyModifiers::NONE, true),
            (KeyCode::Esc, KeyModifiers::NONE, true),
            (KeyCode::Char('c'), KeyModifiers::CONTROL, true),
            (KeyCode::Char('c'), KeyModifiers::NONE, false),
            (KeyCode::Down, KeyModifiers::NONE, false),
        ] {
            let mut app = App::new(addr(8001), t);
            app.handle(Event::Key(KeyEvent::new(code, mods)));
            assert_eq!(app.quit, quits, "{code:?} {mods:?}");
        }
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_data_and_shows_the_error() {
        let t = Instant::now();
        let mut app = App::new(addr(8001), t);
        app.handle(Event::Data(Box::new(Poll {
            agent: addr(8001),
            at: t,
            result: Ok(snapshot(8001)),
            switched_from: None,
        })));
        app.handle(Event::Data(Box::new(Poll {
            agent: addr(8001),
            at: t + Duration::from_millis(500),
            result: Err("connection refused".into()),
            switched_from: None,
        })));
        assert_eq!(app.snapshot.as_ref().unwrap().0, snapshot(8001));
        assert_eq!(app.error.as_deref(), Some("connection refused"));
        app.handle(Event::Tick(t + Duration::from_millis(1200)));
        assert_eq!(app.data_age_ms(), Some(1200));
    }

    #[test]
    fn a_failover_moves_the_app_to_the_new_agent() {
        let t = Instant::now();
        let mut app = App::new(addr(8001), t);
        app.handle(Event::Data(Box::new(Poll {
            agent: addr(8004),
            at: t,
            result: Ok(snapshot(8004)),
            switched_from: Some(addr(8001)),
        })));
        assert_eq!(app.agent, addr(8004));
        assert_eq!(app.last_switch, Some((addr(8001), addr(8004))));
        assert_eq!(app.error, None);
    }
}
