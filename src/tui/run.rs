//! The console's main loop: terminal input, a modest tick and daemon news
//! arrive as [`Event`]s on one channel; the app turns them into state and
//! [`Action`]s; the screen is redrawn when something changed, at most once
//! per [`FRAME`]. Generic over the ratatui backend so tests and the load
//! benchmark drive it headless.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::app::App;
use super::event::{Action, Event};
use super::theme::Theme;
use super::{socket, term, ui};
use crate::protocol::control::Op;

/// Set (to anything) only by the test that checks the terminal is restored on a panic.
pub const TEST_PANIC_ENV: &str = "AIC_CONSOLE_TEST_PANIC";

/// How often times and countdowns move when nothing else happens.
pub const TICK: Duration = Duration::from_secs(1);
/// Shortest time between two redraws: a burst of output costs one frame, not one per line.
pub const FRAME: Duration = Duration::from_millis(50);
/// Events waiting for the loop; past it, the socket task waits (and the daemon reports a lag).
const QUEUE: usize = 1024;

/// What the console needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Colours.
    pub theme: Theme,
    /// Ring the bell when a command starts waiting for approval.
    pub bell: bool,
}

/// Side effects the app asks for, carried out by the loop's owner.
pub trait Effects {
    /// Sends a request to the daemon; its reply comes back as an event.
    fn send(&mut self, op: Op);
    /// Puts the session code on the clipboard.
    fn copy(&mut self, text: &str);
    /// Rings the bell.
    fn bell(&mut self);
}

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The operator quit (or a signal asked the console to).
    Quit,
    /// The terminal could not be read; the message says why.
    Fatal(String),
}

/// Runs the loop until the app quits. `clock` gives the time in Unix ms.
pub async fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    events: &mut mpsc::Receiver<Event>,
    effects: &mut dyn Effects,
    clock: fn() -> u64,
) -> Result<Exit, B::Error> {
    let mut dirty = true;
    let mut next_frame = Instant::now();
    loop {
        if dirty && Instant::now() >= next_frame {
            app.now_ms = clock();
            terminal.draw(|frame| ui::draw(frame, app))?;
            dirty = false;
            next_frame = Instant::now() + FRAME;
        }
        let event = if dirty {
            tokio::select! {
                event = events.recv() => event,
                _ = tokio::time::sleep_until(next_frame) => continue,
            }
        } else {
            events.recv().await
        };
        let Some(event) = event else { return Ok(Exit::Quit) };
        if let Event::Fatal(why) = &event {
            return Ok(Exit::Fatal(why.clone()));
        }
        app.now_ms = clock();
        for action in app.on_event(event) {
            match action {
                Action::Quit => return Ok(Exit::Quit),
                Action::Send(op) => effects.send(op),
                Action::Copy(text) => effects.copy(&text),
                Action::Bell => effects.bell(),
            }
        }
        dirty = true;
    }
}

/// The real console: takes over the terminal, runs until the operator
/// quits, and gives the terminal back as it found it.
pub async fn run(settings: Settings) -> std::io::Result<()> {
    let (tx, mut events) = mpsc::channel(QUEUE);
    let mut guard = term::TerminalGuard::enter()?;
    // A panic in any of these ends the process through the hook term.rs installs.
    tokio::spawn(input(tx.clone()));
    tokio::spawn(ticks(tx.clone()));
    tokio::spawn(socket::watch(settings.socket.clone(), tx.clone()));
    tokio::spawn(signals(tx.clone()));
    if std::env::var_os(TEST_PANIC_ENV).is_some() {
        // A deliberate bug, once the console is up, for tests/console_tui.rs.
        tokio::spawn(async { panic!("{TEST_PANIC_ENV} is set: panicking on purpose") });
    }
    let mut effects = Live { socket: settings.socket, tx, out: std::io::stdout() };
    let mut app = App::new(settings.theme, settings.bell);
    let exit = event_loop(&mut guard.terminal, &mut app, &mut events, &mut effects, crate::clock::now_ms).await;
    drop(guard);
    match exit? {
        Exit::Quit => Ok(()),
        Exit::Fatal(why) => Err(std::io::Error::other(why)),
    }
}

struct Live {
    socket: PathBuf,
    tx: mpsc::Sender<Event>,
    out: std::io::Stdout,
}

impl Effects for Live {
    fn send(&mut self, op: Op) {
        socket::request(self.socket.clone(), op, self.tx.clone());
    }

    fn copy(&mut self, text: &str) {
        term::emit(&mut self.out, &term::osc52(text));
    }

    fn bell(&mut self) {
        term::emit(&mut self.out, "\x07");
    }
}

async fn input(tx: mpsc::Sender<Event>) {
    let mut stream = crossterm::event::EventStream::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => Event::Input(event),
            Err(e) => Event::Fatal(format!("reading the terminal failed: {e}")),
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

async fn ticks(tx: mpsc::Sender<Event>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if tx.send(Event::Tick).await.is_err() {
            return;
        }
    }
}

async fn signals(tx: mpsc::Sender<Event>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::hangup()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(Event::Terminate).await;
}
