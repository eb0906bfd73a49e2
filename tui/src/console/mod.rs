//! The full-screen console (`dml` without a subcommand).
//!
//! Keys (a reader thread), ticks and agent data (a [`follow::Follower`] task) are
//! funnelled into one [`app::Event`] channel; the loop applies each event to the
//! [`app::App`] and redraws with [`draw::draw`]. The terminal is restored on exit
//! and, through ratatui's hook, on panic.
//!
//! - [`app`]: events and state.
//! - [`follow`]: refreshing from an agent, failing over to another member.
//! - [`draw`]: the screen.

pub mod app;
pub mod draw;
pub mod follow;

use anyhow::{Context, Result, bail};
use app::{App, Event};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event as term;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Time between two refreshes from the agent.
const REFRESH: Duration = Duration::from_millis(500);
/// Time between two clock ticks (ages on screen).
const TICK: Duration = Duration::from_millis(250);
/// How long the key reader waits for input before checking whether to stop.
const KEY_POLL: Duration = Duration::from_millis(100);

pub async fn run(agent: SocketAddr) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the console needs a terminal; use a subcommand instead, e.g. `dml members`");
    }
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let stop = Arc::new(AtomicBool::new(false));

    let keys = {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || read_keys(tx, stop))
    };
    let fetcher = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut follower = follow::Follower::new(agent);
            let mut every = tokio::time::interval(REFRESH);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if tx
                    .send(Event::Data(Box::new(follower.poll().await)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            every.tick().await;
            if tx.send(Event::Tick(Instant::now())).await.is_err() {
                break;
            }
        }
    });

    let result = match ratatui::try_init() {
        Ok(mut terminal) => {
            event_loop(&mut terminal, &mut rx, App::new(agent, Instant::now())).await
        }
        Err(e) => Err(e).context("cannot set up the terminal"),
    };
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    fetcher.abort();
    ticker.abort();
    let _ = keys.join();
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    rx: &mut mpsc::Receiver<Event>,
    mut app: App,
) -> Result<()> {
    loop {
        terminal.draw(|f| draw::draw(f, &app))?;
        let Some(ev) = rx.recv().await else {
            return Ok(());
        };
        app.handle(ev);
        if app.quit {
            return Ok(());
        }
    }
}

/// Blocking key reader: runs on its own thread until `stop` or the channel closes.
fn read_keys(tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match term::poll(KEY_POLL) {
            Ok(true) => {
                if let Ok(term::Event::Key(k)) = term::read()
                    && tx.blocking_send(Event::Key(k)).is_err()
                {
                    return;
                }
            }
            Ok(false) => {}
            Err(_) => return,
        }
    }
}
