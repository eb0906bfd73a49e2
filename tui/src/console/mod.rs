//! The full-screen console (`dml` without a subcommand).
//!
//! Keys and mouse (a reader thread), ticks, telemetry frames and connection
//! changes (a [`follow`] task), and the results of actions are funnelled
//! into one [`app::Event`] channel; the loop applies each to the [`app::App`],
//! runs the [`app::Action`] it returns (through [`exec`], off the loop), and
//! redraws with [`draw::draw`]. The terminal is restored on exit and on panic.
//!
//! - [`app`]: events, state, actions (pure).
//! - [`layout`]: where the panes go (drawing and mouse hit-testing).
//! - [`panes`], [`draw`], [`fmt`]: the screen.
//! - [`follow`]: the telemetry subscription, leader following, failover.
//! - [`exec`]: actions through the client API, and `:` lines through the
//!   `dml` binary.
//! - [`line`]: the `:` line parsed and completed by the CLI's clap definition.
//! - [`synth`]: synthetic frames for tests and the bench.
//! - [`shot`]: one frame of the live console as SVG (`dml screenshot`).

pub mod app;
pub mod draw;
pub mod exec;
pub mod fmt;
pub mod follow;
pub mod layout;
pub mod line;
pub mod panes;
pub mod shot;
pub mod synth;

use anyhow::{Context, Result};
use app::{App, Event};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self as term, DisableMouseCapture, EnableMouseCapture};
use ratatui::crossterm::execute;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Time between two clock ticks (ages on screen).
const TICK: Duration = Duration::from_millis(250);
/// How long the input reader waits before checking whether to stop.
const INPUT_POLL: Duration = Duration::from_millis(100);
/// Events queued towards the loop.
const QUEUE: usize = 256;

pub use dml_shared::clock::unix_ms;

/// Opens the console on `agent` and runs it until the operator quits.
pub async fn run(agent: SocketAddr, dml: exec::Dml) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(crate::error::ClientError::NoTerminal.into());
    }
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));

    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    // ratatui's hook restores raw mode and the screen; release the mouse too.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        hook(info);
    }));
    let _ = execute!(std::io::stdout(), EnableMouseCapture);

    let input = {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || read_input(tx, stop))
    };
    let stream = tokio::spawn(follow::run(agent, tx.clone()));
    let ticker = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                if tx.send(Event::Tick(unix_ms())).await.is_err() {
                    break;
                }
            }
        })
    };
    let size = terminal
        .size()
        .map(|s| (s.width, s.height))
        .unwrap_or((80, 24));
    let app = App::new(agent, unix_ms(), size);
    let result = event_loop(&mut terminal, &mut rx, &tx, app, &dml).await;

    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    stream.abort();
    ticker.abort();
    let _ = input.join();
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    rx: &mut mpsc::Receiver<Event>,
    tx: &mpsc::Sender<Event>,
    mut app: App,
    dml: &exec::Dml,
) -> Result<()> {
    loop {
        terminal.draw(|f| draw::draw(f, &app))?;
        let Some(ev) = rx.recv().await else {
            return Ok(());
        };
        let mut next = Some(ev);
        // Apply everything already queued before drawing again.
        while let Some(ev) = next {
            if let Some(action) = app.handle(ev) {
                let (tx, agent, dml) = (tx.clone(), app.agent, dml.clone());
                tokio::spawn(async move {
                    let _ = tx.send(exec::run(&dml, agent, action).await).await;
                });
            }
            if app.quit {
                return Ok(());
            }
            next = rx.try_recv().ok();
        }
    }
}

/// Blocking input reader: runs on its own thread until `stop` or the channel closes.
fn read_input(tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match term::poll(INPUT_POLL) {
            Ok(true) => {
                let ev = match term::read() {
                    Ok(term::Event::Key(k)) => Event::Key(k),
                    Ok(term::Event::Mouse(m)) => Event::Mouse(m),
                    Ok(term::Event::Resize(w, h)) => Event::Resize(w, h),
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.blocking_send(ev).is_err() {
                    return;
                }
            }
            Ok(false) => {}
            Err(_) => return,
        }
    }
}
