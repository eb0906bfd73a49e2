//! Console state: the [`Event`]s that reach it, the [`App`] they update and
//! the [`Action`]s it asks the runtime to carry out. Nothing here does IO or
//! reads a clock: time arrives in [`Event::Tick`].

use super::layout::{self, Pane};
use super::line::Parsed;
use dml_shared::api::{MemberInfo, MemberState};
use dml_shared::infer::{JobInfo, JobState, ModelInfo, RateInfo};
use dml_shared::sdfs::{FileInfo, printable};
use dml_shared::telemetry::{Frame, TelemetryEvent};
use dml_shared::{ErrorKind, RemoteError};
use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::{Position, Rect};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

/// Rate samples kept per model (one per frame: 3 minutes at 2 Hz).
pub const HISTORY: usize = 360;
/// Event log lines kept.
pub const EVENT_LOG: usize = 1000;
/// What an agent's refusal of a read-only credential says (`dml_shared::access`).
const READ_ONLY_REFUSAL: &str = "a read-only credential cannot";
/// Log lines in a member's details (Enter).
pub const DETAIL_LOG_LINES: u32 = 8;
/// Log lines in a member's log view (`L`).
pub const LOG_VIEW_LINES: u32 = 200;
/// Rows moved by PageUp / PageDown.
const PAGE: usize = 10;

/// Everything that can change the console.
#[derive(Clone, Debug)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    /// The terminal's new size.
    Resize(u16, u16),
    /// The clock, Unix ms.
    Tick(u64),
    /// A telemetry frame from the agent the console is connected to.
    Frame(Box<Frame>),
    /// The connection changed.
    Conn(ConnEvent),
    /// An [`Action`] finished: what it was and its result or error.
    Done {
        what: String,
        result: Result<String, RemoteError>,
    },
    /// [`Action::Files`] answered: SDFS's files, by name.
    Files(Result<Vec<FileInfo>, RemoteError>),
}

/// What the stream task reports about the connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnEvent {
    Connecting(SocketAddr),
    Connected(SocketAddr),
    /// The agent stopped answering; the console tries `next`.
    Lost {
        from: SocketAddr,
        error: String,
        next: SocketAddr,
    },
    /// The connected agent is not the leader; the console moves to it.
    FollowLeader {
        from: SocketAddr,
        to: SocketAddr,
    },
}

/// Connection health for the status bar.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Connecting,
    Live,
    /// Reconnecting after losing `from`.
    Reconnecting {
        from: SocketAddr,
        error: String,
    },
}

/// What the runtime does for the app, through the same client API as `dml`.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    SetBatchSize {
        model: String,
        size: u32,
    },
    Submit {
        model: String,
        count: u32,
        dataset: String,
    },
    /// A `dml` command line typed after `:`, split into words.
    Command(Vec<String>),
    /// A details popup (`title`, `text`) completed with `more`.
    Details {
        title: String,
        text: String,
        more: More,
    },
    /// List SDFS's files for the SDFS pane's file view.
    Files,
}

/// What a details popup asks for after it opens.
#[derive(Clone, Debug, PartialEq)]
pub enum More {
    /// The newest lines of this agent's log.
    Log(SocketAddr),
    /// The job's per-worker progress, queue and compute time, and errors
    /// (`dml job`).
    Job(u64),
}

/// A line being typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Filter(String),
    Command(String),
    BatchSize { model: String, text: String },
    Submit(SubmitForm),
}

/// The `s` form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubmitForm {
    pub model: String,
    pub count: String,
    pub dataset: String,
    /// 0 model, 1 count, 2 dataset.
    pub field: usize,
}

/// Fields of the submit form.
pub const SUBMIT_FIELDS: [&str; 3] = ["model", "images", "dataset"];
/// Dataset the submit form proposes.
pub const DEFAULT_DATASET: &str = "datasets/sample/";

/// The result of the last action, shown in place.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub text: String,
    pub ok: bool,
    pub at_ms: u64,
    /// Longer output (several lines), shown in a popup until Esc.
    pub detail: Option<String>,
    /// The popup's first row shown (Up/Down, PageUp/PageDown, g/G).
    pub scroll: usize,
}

/// The console's whole state.
#[derive(Debug)]
pub struct App {
    /// The agent the console talks to (or is trying to reach).
    pub agent: SocketAddr,
    pub health: Health,
    /// Moves between agents, newest last: (from, to, why, when).
    pub switches: Vec<(SocketAddr, SocketAddr, &'static str, u64)>,
    pub frame: Option<Frame>,
    pub frames: u64,
    pub last_frame_ms: Option<u64>,
    pub events: VecDeque<TelemetryEvent>,
    /// Queries per second of each model, oldest first.
    pub history: BTreeMap<String, VecDeque<f64>>,
    pub focus: Pane,
    pub expanded: bool,
    pub help: bool,
    pub input: Option<Input>,
    /// The SDFS pane's file view (Enter on the pane), by name; `None`
    /// while it shows the nodes.
    pub files: Option<Vec<FileInfo>>,
    pub filters: [String; Pane::COUNT],
    pub selected: [usize; Pane::COUNT],
    pub message: Option<Message>,
    /// The agent refused a steering action for a read-only credential:
    /// later ones are refused here, with the same reason.
    pub read_only: bool,
    /// The membership pane's order (`o` cycles it).
    pub member_sort: MemberSort,
    /// The jobs pane's order (`o` cycles it).
    pub job_sort: JobSort,
    /// Command lines run from `:`, oldest first, and where Up/Down is in them.
    pub commands: Vec<String>,
    pub command_pos: Option<usize>,
    pub now_ms: u64,
    pub size: (u16, u16),
    pub quit: bool,
}

/// Orders of the membership pane: by address, else the largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberSort {
    Address,
    State,
    Cpu,
    Memory,
    Sdfs,
}

impl MemberSort {
    pub fn next(self) -> Self {
        match self {
            MemberSort::Address => MemberSort::State,
            MemberSort::State => MemberSort::Cpu,
            MemberSort::Cpu => MemberSort::Memory,
            MemberSort::Memory => MemberSort::Sdfs,
            MemberSort::Sdfs => MemberSort::Address,
        }
    }

    /// The column it sorts by, as the table's header names it.
    pub fn column(self) -> &'static str {
        match self {
            MemberSort::Address => "address",
            MemberSort::State => "state",
            MemberSort::Cpu => "cpu",
            MemberSort::Memory => "mem",
            MemberSort::Sdfs => "sdfs",
        }
    }
}

/// Orders of the jobs pane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSort {
    /// Newest first (by id).
    Newest,
    /// Running, then failed, cancelled, done.
    State,
    /// Least done first (the share of images with a result).
    Progress,
    /// By model name, then newest.
    Model,
}

impl JobSort {
    pub fn next(self) -> Self {
        match self {
            JobSort::Newest => JobSort::State,
            JobSort::State => JobSort::Progress,
            JobSort::Progress => JobSort::Model,
            JobSort::Model => JobSort::Newest,
        }
    }

    /// The column it sorts by, as the table's header names it.
    pub fn column(self) -> &'static str {
        match self {
            JobSort::Newest => "job",
            JobSort::State => "state",
            JobSort::Progress => "progress",
            JobSort::Model => "model",
        }
    }
}

impl App {
    pub fn new(agent: SocketAddr, now_ms: u64, size: (u16, u16)) -> Self {
        Self {
            agent,
            health: Health::Connecting,
            switches: Vec::new(),
            frame: None,
            frames: 0,
            last_frame_ms: None,
            events: VecDeque::new(),
            history: BTreeMap::new(),
            focus: Pane::Members,
            expanded: false,
            help: false,
            input: None,
            files: None,
            filters: Default::default(),
            selected: [0; Pane::COUNT],
            message: None,
            read_only: false,
            member_sort: MemberSort::Address,
            job_sort: JobSort::Newest,
            commands: Vec::new(),
            command_pos: None,
            now_ms,
            size,
            quit: false,
        }
    }

    /// Applies one event; returns what the runtime should do, if anything.
    pub fn handle(&mut self, event: Event) -> Option<Action> {
        match event {
            Event::Key(k) => return self.handle_key(k),
            Event::Mouse(m) => self.handle_mouse(m),
            Event::Resize(w, h) => self.size = (w, h),
            Event::Tick(ms) => self.now_ms = ms,
            Event::Frame(f) => self.handle_frame(*f),
            Event::Conn(c) => self.handle_conn(c),
            Event::Done { what, result } => self.handle_done(what, result),
            Event::Files(Ok(files)) => {
                self.say(
                    &format!(
                        "{} files: Enter shows one, / filters, Esc goes back",
                        files.len()
                    ),
                    true,
                );
                self.files = Some(files);
                self.selected[Pane::Sdfs as usize] = 0;
            }
            Event::Files(Err(e)) => self.say(&format!("cannot list files: {e}"), false),
        }
        None
    }

    fn handle_conn(&mut self, c: ConnEvent) {
        match c {
            ConnEvent::Connecting(a) => {
                self.agent = a;
                if !matches!(self.health, Health::Reconnecting { .. }) {
                    self.health = Health::Connecting;
                }
            }
            ConnEvent::Connected(a) => {
                self.agent = a;
                self.health = Health::Live;
            }
            ConnEvent::Lost { from, error, next } => {
                self.switches.push((from, next, "lost", self.now_ms));
                self.agent = next;
                self.health = Health::Reconnecting { from, error };
            }
            ConnEvent::FollowLeader { from, to } => {
                self.switches.push((from, to, "leader", self.now_ms));
                self.agent = to;
                self.health = Health::Connecting;
            }
        }
    }

    fn handle_frame(&mut self, mut f: Frame) {
        self.frames += 1;
        self.last_frame_ms = Some(self.now_ms);
        self.health = Health::Live;
        if f.resync {
            self.events.clear();
        }
        let last = self.events.back().map_or(0, |e| e.seq);
        for e in f.events.drain(..) {
            if f.resync || e.seq > last {
                self.events.push_back(e);
            }
        }
        while self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
        if let Some(Ok(rates)) = f.cluster.as_ref().map(|c| &c.rates) {
            for r in rates {
                let h = self.history.entry(r.model.clone()).or_default();
                h.push_back(r.queries_per_s);
                if h.len() > HISTORY {
                    h.pop_front();
                }
            }
        }
        self.frame = Some(f);
        for p in Pane::ALL {
            let n = self.rows(p);
            let s = &mut self.selected[p as usize];
            *s = (*s).min(n.saturating_sub(1));
        }
    }

    fn handle_done(&mut self, what: String, result: Result<String, RemoteError>) {
        // A log view opens at its newest line.
        let tail = what.split_whitespace().any(|w| w == "logs");
        if let Err(e) = &result
            && e.kind == ErrorKind::Refused
            && e.message.contains(READ_ONLY_REFUSAL)
        {
            self.read_only = true;
        }
        let (text, ok) = match result {
            Ok(t) => (t, true),
            Err(e) => (format!("{what}: {e}"), false),
        };
        let (first, detail) = match text.split_once('\n') {
            Some((first, _)) => (format!("{first} (Esc closes)"), Some(text.clone())),
            None => (text, None),
        };
        self.message = Some(Message {
            text: first,
            ok,
            at_ms: self.now_ms,
            scroll: if tail { usize::MAX } else { 0 },
            detail,
        });
    }

    fn handle_key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return None;
        }
        if self.input.is_some() {
            return self.handle_input_key(k);
        }
        if self.help {
            if matches!(k.code, KeyCode::Char('?' | 'q') | KeyCode::Esc) {
                self.help = false;
            }
            return None;
        }
        // An open popup takes Esc and its scroll keys.
        if let Some(m) = self.message.as_mut()
            && let Some(d) = &m.detail
        {
            let (rows, visible) = super::layout::popup_rows(d, self.size);
            let last = rows.saturating_sub(visible);
            let at = m.scroll.min(last);
            let to = match k.code {
                KeyCode::Esc => {
                    self.message = None;
                    return None;
                }
                KeyCode::Down | KeyCode::Char('j') => (at + 1).min(last),
                KeyCode::Up | KeyCode::Char('k') => at.saturating_sub(1),
                KeyCode::PageDown => (at + visible).min(last),
                KeyCode::PageUp => at.saturating_sub(visible),
                KeyCode::Home | KeyCode::Char('g') => 0,
                KeyCode::End | KeyCode::Char('G') => last,
                _ => usize::MAX,
            };
            if to != usize::MAX {
                m.scroll = to;
                return None;
            }
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Esc => {
                if self.expanded {
                    self.expanded = false;
                } else if self.focus == Pane::Sdfs
                    && self.files.is_some()
                    && self.filters[Pane::Sdfs as usize].is_empty()
                {
                    self.files = None;
                    self.selected[Pane::Sdfs as usize] = 0;
                } else {
                    self.filters[self.focus as usize].clear();
                }
            }
            KeyCode::Tab | KeyCode::Char('l') | KeyCode::Right => self.focus = self.focus.next(),
            KeyCode::BackTab | KeyCode::Char('h') | KeyCode::Left => {
                self.focus = self.focus.prev();
            }
            KeyCode::Char('j') | KeyCode::Down => self.move_selection(1),
            KeyCode::Char('k') | KeyCode::Up => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(PAGE as isize),
            KeyCode::PageUp => self.move_selection(-(PAGE as isize)),
            KeyCode::Home | KeyCode::Char('g') => self.selected[self.focus as usize] = 0,
            KeyCode::End | KeyCode::Char('G') => {
                self.selected[self.focus as usize] = self.rows(self.focus).saturating_sub(1);
            }
            KeyCode::Char('/') => {
                self.input = Some(Input::Filter(self.filters[self.focus as usize].clone()));
            }
            KeyCode::Char(':') => self.input = Some(Input::Command(String::new())),
            KeyCode::Char('e') => self.expanded = !self.expanded,
            KeyCode::Char('o') if self.focus == Pane::Members => {
                self.member_sort = self.member_sort.next();
                self.selected[Pane::Members as usize] = 0;
            }
            KeyCode::Char('o') if self.focus == Pane::Jobs => {
                self.job_sort = self.job_sort.next();
                self.selected[Pane::Jobs as usize] = 0;
            }
            KeyCode::Enter if self.focus == Pane::Jobs => return self.show_job(),
            KeyCode::Enter if self.focus == Pane::Members => return self.show_member(),
            KeyCode::Enter if self.focus == Pane::Sdfs && self.files.is_none() => {
                self.say("listing SDFS files…", true);
                return Some(Action::Files);
            }
            KeyCode::Enter if self.focus == Pane::Sdfs => self.show_file(),
            KeyCode::Char('L') if self.focus == Pane::Members => {
                let members = self.members();
                match members.get(self.selected[Pane::Members as usize]) {
                    Some(m) => {
                        let addr = m.id.addr.to_string();
                        return Some(Action::Command(
                            ["--agent", &addr, "logs", "-n", &LOG_VIEW_LINES.to_string()]
                                .map(String::from)
                                .to_vec(),
                        ));
                    }
                    None => self.say("no member selected", false),
                }
            }
            KeyCode::Char(c @ ('s' | '+' | '=' | '-' | 'b' | 'x'))
                if self.read_only
                    && (c == 's'
                        || (c == 'x' && self.focus == Pane::Jobs)
                        || self.focus == Pane::Models) =>
            {
                let what = match c {
                    's' => "submit jobs",
                    'x' => "cancel jobs",
                    _ => "change batch sizes",
                };
                self.say(
                    &format!("read-only credential: cannot {what} (needs an admin credential)"),
                    false,
                );
            }
            KeyCode::Char('x') if self.focus == Pane::Jobs => match self.selected_job() {
                Some(j) if j.state == JobState::Running => {
                    return Some(Action::Command(vec!["cancel".into(), j.id.to_string()]));
                }
                Some(j) => {
                    let msg = format!(
                        "job {} is {}: only a running job can be cancelled",
                        j.id,
                        j.state.as_str()
                    );
                    self.say(&msg, false);
                }
                None => self.say("no job selected", false),
            },
            KeyCode::Char('s') => {
                self.input = Some(Input::Submit(SubmitForm {
                    model: self
                        .selected_model()
                        .map(|m| m.name.clone())
                        .unwrap_or_default(),
                    count: "100".into(),
                    dataset: DEFAULT_DATASET.into(),
                    field: 0,
                }));
            }
            KeyCode::Char('+' | '=') if self.focus == Pane::Models => return self.bump_batch(1),
            KeyCode::Char('-') if self.focus == Pane::Models => return self.bump_batch(-1),
            KeyCode::Char('b') if self.focus == Pane::Models => {
                if let Some(m) = self.selected_model() {
                    self.input = Some(Input::BatchSize {
                        model: m.name.clone(),
                        text: m.batch_size.to_string(),
                    });
                } else {
                    self.say("no model selected: the leader reports no models yet", false);
                }
            }
            _ => {}
        }
        None
    }

    fn handle_input_key(&mut self, k: KeyEvent) -> Option<Action> {
        let input = self.input.as_mut().expect("checked by the caller");
        match k.code {
            KeyCode::Esc => {
                if matches!(input, Input::Filter(_)) {
                    self.filters[self.focus as usize].clear();
                }
                self.input = None;
                return None;
            }
            KeyCode::Enter => {
                let input = self.input.take().expect("checked above");
                return self.submit_input(input);
            }
            KeyCode::Up | KeyCode::Down if matches!(input, Input::Command(_)) => {
                let n = self.commands.len();
                self.command_pos = match (k.code, self.command_pos) {
                    (_, _) if n == 0 => None,
                    (KeyCode::Up, None) => Some(n - 1),
                    (KeyCode::Up, Some(p)) => Some(p.saturating_sub(1)),
                    (_, Some(p)) if p + 1 < n => Some(p + 1),
                    _ => None,
                };
                let line = self
                    .command_pos
                    .map_or_else(String::new, |p| self.commands[p].clone());
                self.input = Some(Input::Command(line));
                return None;
            }
            KeyCode::Tab if matches!(input, Input::Command(_)) => {
                let Input::Command(t) = input else {
                    unreachable!("matched above")
                };
                let (line, choices) = super::line::complete(t);
                *t = line;
                if !choices.is_empty() {
                    self.say(&choices.join(" "), true);
                }
                return None;
            }
            KeyCode::Tab | KeyCode::Down => {
                if let Input::Submit(f) = input {
                    f.field = (f.field + 1) % SUBMIT_FIELDS.len();
                }
                return None;
            }
            KeyCode::BackTab | KeyCode::Up => {
                if let Input::Submit(f) = input {
                    f.field = (f.field + SUBMIT_FIELDS.len() - 1) % SUBMIT_FIELDS.len();
                }
                return None;
            }
            _ => {}
        }
        let text = match input {
            Input::Filter(t) | Input::Command(t) => t,
            Input::BatchSize { text, .. } => text,
            Input::Submit(f) => match f.field {
                0 => &mut f.model,
                1 => &mut f.count,
                _ => &mut f.dataset,
            },
        };
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Backspace => {
                text.pop();
            }
            // Ctrl-U clears the line, as in a shell; other chords type nothing.
            KeyCode::Char('u') if ctrl => text.clear(),
            KeyCode::Char(c) if !ctrl && !k.modifiers.contains(KeyModifiers::ALT) => text.push(c),
            _ => {}
        }
        if let Some(Input::Filter(t)) = &self.input {
            self.filters[self.focus as usize] = t.clone();
            self.selected[self.focus as usize] = 0;
        }
        None
    }

    fn submit_input(&mut self, input: Input) -> Option<Action> {
        match input {
            Input::Filter(t) => {
                self.filters[self.focus as usize] = t;
                None
            }
            Input::Command(t) => match split_words(&t) {
                Ok(w) if w.is_empty() => None,
                Ok(w) => {
                    self.command_pos = None;
                    if self.commands.last() != Some(&t) {
                        self.commands.push(t.clone());
                    }
                    match super::line::parse(&w) {
                        Ok(Parsed::Run(w)) => {
                            self.say(&format!("running: dml {}", w.join(" ")), true);
                            Some(Action::Command(w))
                        }
                        Ok(Parsed::Show(text)) => {
                            self.handle_done(t, Ok(text));
                            None
                        }
                        Err(e) => {
                            self.say(&e.to_string(), false);
                            None
                        }
                    }
                }
                Err(e) => {
                    self.say(&e.to_string(), false);
                    None
                }
            },
            Input::BatchSize { model, text } => match text.trim().parse::<u32>() {
                Ok(size) if size >= 1 => Some(Action::SetBatchSize { model, size }),
                _ => {
                    self.say(
                        &format!("batch size \"{text}\" is not a whole number of at least 1"),
                        false,
                    );
                    None
                }
            },
            Input::Submit(f) => {
                let model = f.model.trim().to_string();
                if model.is_empty() {
                    self.say("submit: give a model name", false);
                    return None;
                }
                match f.count.trim().parse::<u32>() {
                    Ok(count) if count >= 1 => Some(Action::Submit {
                        model,
                        count,
                        dataset: f.dataset.trim().to_string(),
                    }),
                    _ => {
                        self.say(
                            &format!(
                                "submit: images \"{}\" is not a whole number of at least 1",
                                f.count
                            ),
                            false,
                        );
                        None
                    }
                }
            }
        }
    }

    fn bump_batch(&mut self, delta: i64) -> Option<Action> {
        let Some(m) = self.selected_model() else {
            self.say("no model selected: the leader reports no models yet", false);
            return None;
        };
        let max = i64::from(m.max_batch.max(1));
        let size = (i64::from(m.batch_size) + delta).clamp(1, max) as u32;
        if size == m.batch_size {
            self.say(
                &format!("{}: batch size stays {size} (1 to {max})", m.name),
                false,
            );
            return None;
        }
        Some(Action::SetBatchSize {
            model: m.name.clone(),
            size,
        })
    }

    /// The selected job in full, in a popup: why it stalled or failed, if it did.
    /// The selected job in full, then (the [`Action::Details`]) with its
    /// per-worker figures.
    fn show_job(&mut self) -> Option<Action> {
        let Some(j) = self.selected_job() else {
            self.say("no job selected", false);
            return None;
        };
        let mut text = format!(
            "job #{}: {} over {} images of \"{}\", {}\n{} done, {} errors, {} queries",
            j.id,
            j.model,
            j.images,
            j.dataset,
            j.state.as_str(),
            j.done,
            j.errors,
            j.queries
        );
        let why = match (j.state, &j.reason, &j.stalled) {
            (JobState::Failed, Some(r), _) => Some(("failed", r)),
            (JobState::Cancelled, Some(r), _) => Some(("cancelled", r)),
            (JobState::Running, _, Some(r)) => Some(("stalled", r)),
            _ => None,
        };
        if let Some((what, r)) = why {
            text.push_str(&format!("\n{what}: {r}"));
        }
        if let Some(o) = &j.output {
            text.push_str(&format!("\noutput: {o}"));
        }
        let (id, ok) = (j.id, why.is_none());
        let more = (More::Job(id), "workers: asking the leader…");
        self.details(format!("job #{id}"), text, ok, Some(more))
    }

    /// Opens a details popup at once and, given `more`, asks for it: the
    /// popup says it is waiting (its second part) until the answer
    /// replaces it.
    fn details(
        &mut self,
        title: String,
        mut text: String,
        ok: bool,
        more: Option<(More, &str)>,
    ) -> Option<Action> {
        let action = more.as_ref().map(|(more, _)| Action::Details {
            title: title.clone(),
            text: text.clone(),
            more: more.clone(),
        });
        if let Some((_, waiting)) = more {
            text.push_str(&format!("\n\n{waiting}"));
        }
        self.message = Some(Message {
            text: format!("{title} (Esc closes)"),
            ok,
            at_ms: self.now_ms,
            detail: Some(text),
            scroll: 0,
        });
        action
    }

    /// The selected member in full, in a popup: who probes it, when this
    /// agent last heard it, its process and store figures, older incarnations.
    /// The selected member in full, then (the [`Action::Details`]) with its
    /// log's tail.
    fn show_member(&mut self) -> Option<Action> {
        let members = self.members();
        let Some(m) = members.get(self.selected[Pane::Members as usize]).copied() else {
            self.say("no member selected", false);
            return None;
        };
        let mut text = format!(
            "{}: {}, incarnation {}, {}\nstarted {} UTC",
            m.id,
            m.state.as_str(),
            m.incarnation,
            self.role(m),
            super::fmt::clock(m.id.started)
        );
        let monitors: Vec<String> = m.monitors.iter().map(|n| n.addr.to_string()).collect();
        text.push_str(&format!("\nprobed by {}", monitors.join(", ")));
        match m.last_heard_ms {
            Some(ms) if m.monitors.iter().any(|n| n.addr == self.agent) => {
                text.push_str(&format!(
                    "\n{} last heard it {} ago",
                    self.agent,
                    super::fmt::age_ms(ms)
                ));
            }
            _ => text.push_str(&format!("\n{} does not probe it", self.agent)),
        }
        let f = self.frame.as_ref();
        match f.and_then(|f| f.nodes.iter().find(|n| n.addr == Some(m.id.addr) && m.state.is_live())) {
            Some(n) => text.push_str(&format!(
                "\ncpu {:.1}%, memory {}, SDFS {} in {} versions, {} queries running (figures {} old)",
                n.cpu_percent,
                super::fmt::bytes(n.rss_bytes),
                super::fmt::bytes(n.sdfs_bytes),
                n.sdfs_versions,
                n.queries_running,
                super::fmt::age_ms(n.age_ms)
            )),
            None => text.push_str("\nno process figures (not live, or not reported yet)"),
        }
        let older: Vec<String> = f
            .map(|f| {
                f.members
                    .iter()
                    .filter(|o| o.id.addr == m.id.addr && o.id.started != m.id.started)
                    .map(|o| format!("{} ({})", o.id, o.state.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !older.is_empty() {
            text.push_str(&format!("\nother incarnations: {}", older.join(", ")));
        }
        let ok = m.state.is_live();
        let more = ok.then_some((More::Log(m.id.addr), "log: asking the agent…"));
        self.details(format!("member {}", m.id.addr), text, ok, more)
    }

    fn say(&mut self, text: &str, ok: bool) {
        self.message = Some(Message {
            text: text.to_string(),
            ok,
            at_ms: self.now_ms,
            detail: None,
            scroll: 0,
        });
    }

    fn move_selection(&mut self, delta: isize) {
        let n = self.rows(self.focus);
        let s = &mut self.selected[self.focus as usize];
        *s = s.saturating_add_signed(delta).min(n.saturating_sub(1));
    }

    fn handle_mouse(&mut self, m: MouseEvent) {
        let area = Rect::new(0, 0, self.size.0, self.size.1);
        let Some((pane, rect)) = self
            .pane_rects(area)
            .into_iter()
            .find(|(_, r)| r.contains(Position::new(m.column, m.row)))
        else {
            return;
        };
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                self.focus = pane;
                // Rows start below the border and the header line.
                let first = rect.y + 1 + layout::header_rows(pane);
                if m.row >= first {
                    let row = usize::from(m.row - first);
                    let offset = layout::scroll_offset(
                        self.selected[pane as usize],
                        layout::body_rows(rect, pane),
                    );
                    let n = self.rows(pane);
                    if offset + row < n {
                        self.selected[pane as usize] = offset + row;
                    }
                }
            }
            MouseEventKind::ScrollDown => {
                self.focus = pane;
                self.move_selection(1);
            }
            MouseEventKind::ScrollUp => {
                self.focus = pane;
                self.move_selection(-1);
            }
            _ => {}
        }
    }

    /// Where the panes go on a screen of `area`.
    pub fn pane_rects(&self, area: Rect) -> Vec<(Pane, Rect)> {
        let rows = layout::Rows {
            members: self.frame.as_ref().map_or(0, |f| f.members.len()),
            models: self.models().len(),
            jobs: self.jobs().len(),
        };
        layout::panes_for(area, self.focus, self.expanded, rows)
    }

    /// Rows of a pane after its filter.
    pub fn rows(&self, p: Pane) -> usize {
        match p {
            Pane::Members => self.members().len(),
            Pane::Models => self.models().len(),
            Pane::Jobs => self.jobs().len(),
            Pane::Sdfs if self.files.is_some() => self.files_shown().len(),
            Pane::Sdfs => self.frame.as_ref().map_or(0, |f| f.nodes.len()),
            Pane::Events => self.event_lines().len(),
        }
    }

    fn filter(&self, p: Pane) -> String {
        self.filters[p as usize].to_lowercase()
    }

    /// Members after the filter, by address.
    pub fn members(&self) -> Vec<&MemberInfo> {
        let Some(f) = &self.frame else {
            return Vec::new();
        };
        let q = self.filter(Pane::Members);
        let mut v: Vec<&MemberInfo> = f
            .members
            .iter()
            .filter(|m| {
                q.is_empty()
                    || m.id.to_string().contains(&q)
                    || m.state.as_str().contains(&q)
                    || self.role(m).contains(&q)
            })
            .collect();
        v.sort_by_key(|m| (m.id.addr, m.id.started));
        let stats = |m: &MemberInfo| {
            f.nodes
                .iter()
                .find(|n| n.addr == Some(m.id.addr) && m.state.is_live())
        };
        // Stable: equal keys keep the address order.
        match self.member_sort {
            MemberSort::Address => {}
            MemberSort::State => v.sort_by_key(|m| m.state.as_str()),
            MemberSort::Cpu => v.sort_by(|a, b| {
                let cpu = |m| stats(m).map_or(-1.0, |n| n.cpu_percent);
                cpu(b).total_cmp(&cpu(a))
            }),
            MemberSort::Memory => {
                v.sort_by_key(|m| std::cmp::Reverse(stats(m).map(|n| n.rss_bytes)))
            }
            MemberSort::Sdfs => {
                v.sort_by_key(|m| std::cmp::Reverse(stats(m).map(|n| n.sdfs_bytes)))
            }
        }
        v
    }

    /// A member's role: leader, voter or member.
    pub fn role(&self, m: &MemberInfo) -> &'static str {
        let leader = self.frame.as_ref().and_then(|f| f.leader.as_ref());
        match leader {
            Some(l) if l.leader == Some(m.id.addr) && m.state.is_live() => "leader",
            Some(l) if l.voters.contains(&m.id.addr) => "voter",
            _ => "member",
        }
    }

    /// Models after the filter.
    pub fn models(&self) -> Vec<&ModelInfo> {
        let q = self.filter(Pane::Models);
        match self.frame.as_ref().and_then(|f| f.cluster.as_ref()) {
            Some(c) => match &c.models {
                Ok(m) => m.iter().filter(|m| m.name.contains(&q)).collect(),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    pub fn selected_model(&self) -> Option<&ModelInfo> {
        self.models()
            .get(self.selected[Pane::Models as usize])
            .copied()
    }

    pub fn rate(&self, model: &str) -> Option<&RateInfo> {
        let c = self.frame.as_ref()?.cluster.as_ref()?;
        c.rates.as_ref().ok()?.iter().find(|r| r.model == model)
    }

    /// Jobs after the filter, newest first.
    pub fn jobs(&self) -> Vec<&JobInfo> {
        let q = self.filter(Pane::Jobs);
        let Some(Ok(jobs)) = self
            .frame
            .as_ref()
            .and_then(|f| f.cluster.as_ref())
            .map(|c| &c.jobs)
        else {
            return Vec::new();
        };
        let mut v: Vec<&JobInfo> = jobs
            .iter()
            .filter(|j| {
                q.is_empty()
                    || j.model.contains(&q)
                    || j.state.as_str().contains(&q)
                    || format!("#{}", j.id).contains(&q)
            })
            .collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.id));
        let rank = |s: JobState| match s {
            JobState::Running => 0,
            JobState::Failed => 1,
            JobState::Cancelled => 2,
            JobState::Done => 3,
        };
        // Stable sorts: ties stay newest first.
        match self.job_sort {
            JobSort::Newest => {}
            JobSort::State => v.sort_by_key(|j| rank(j.state)),
            JobSort::Progress => v.sort_by(|a, b| {
                let done = |j: &JobInfo| f64::from(j.done) / f64::from(j.images.max(1));
                done(a).total_cmp(&done(b))
            }),
            JobSort::Model => v.sort_by(|a, b| a.model.cmp(&b.model)),
        }
        v
    }

    /// The file view's files after the SDFS pane's filter.
    pub fn files_shown(&self) -> Vec<&FileInfo> {
        let q = self.filter(Pane::Sdfs);
        self.files
            .iter()
            .flatten()
            .filter(|f| q.is_empty() || f.name.to_lowercase().contains(&q))
            .collect()
    }

    /// The selected file in full: every version, its size, checksum, age
    /// and holders.
    fn show_file(&mut self) {
        let files = self.files_shown();
        let Some(f) = files.get(self.selected[Pane::Sdfs as usize]).copied() else {
            self.say("no file selected", false);
            return;
        };
        let name = printable(&f.name).into_owned();
        let mut text = format!("{name}: {} versions, newest first", f.versions.len());
        for v in f.versions.iter().rev() {
            let holders: Vec<String> = v.replicas.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                "\nv{} {} committed {} UTC ({} ago), blake3 {}…\n  on {} holders: {}",
                v.version,
                super::fmt::bytes(v.size),
                super::fmt::clock(v.committed_ms),
                super::fmt::age_ms(self.now_ms.saturating_sub(v.committed_ms)),
                v.checksum[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                holders.len(),
                holders.join(", ")
            ));
        }
        self.details(format!("file {name}"), text, true, None);
    }

    pub fn selected_job(&self) -> Option<&JobInfo> {
        self.jobs().get(self.selected[Pane::Jobs as usize]).copied()
    }

    /// Event lines after the filter, newest first.
    pub fn event_lines(&self) -> Vec<&TelemetryEvent> {
        let q = self.filter(Pane::Events);
        self.events
            .iter()
            .rev()
            .filter(|e| {
                q.is_empty() || e.text.to_lowercase().contains(&q) || e.kind.as_str().contains(&q)
            })
            .collect()
    }

    /// Live and total members in the frame.
    /// (alive, total) over the current members: an agent that restarted is
    /// listed once per incarnation, and only its newest counts.
    pub fn alive_total(&self) -> (usize, usize) {
        self.frame.as_ref().map_or((0, 0), |f| {
            let mut newest: std::collections::HashMap<SocketAddr, &dml_shared::api::MemberInfo> =
                std::collections::HashMap::new();
            for m in &f.members {
                let e = newest.entry(m.id.addr).or_insert(m);
                if m.id.started > e.id.started {
                    *e = m;
                }
            }
            let live = newest
                .values()
                .filter(|m| m.state == MemberState::Alive)
                .count();
            (live, newest.len())
        })
    }
}

/// A command line with a quote left open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unclosed {quote} in \"{line}\"")]
pub struct UnclosedQuote {
    pub quote: char,
    pub line: String,
}

/// Splits a command line into words; single and double quotes group.
pub fn split_words(line: &str) -> Result<Vec<String>, UnclosedQuote> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(UnclosedQuote {
            quote: q,
            line: line.to_string(),
        });
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
