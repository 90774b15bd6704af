//! What the console's main loop reacts to, on one channel, and what the
//! app asks the loop to do in return.

use crate::protocol::control::{self, Approval, Op, Reply, StatusInfo, TrafficEntry};

/// Everything the main loop waits for.
#[derive(Debug)]
pub enum Event {
    /// A modest periodic tick, so times and countdowns move.
    Tick,
    /// A key, a resize or another terminal event.
    Input(crossterm::event::Event),
    /// News from the daemon's socket.
    Daemon(DaemonMsg),
    /// SIGTERM or SIGHUP: leave cleanly.
    Terminate,
    /// The terminal cannot be read any more; the console cannot carry on.
    Fatal(String),
}

/// What the socket side tells the app.
#[derive(Debug)]
pub enum DaemonMsg {
    /// (Re)connected and subscribed; the state as it is now.
    Connected(Box<Snapshot>),
    /// A pushed event.
    Event(control::Event),
    /// The connection is gone or could not be made; it is retried.
    Down {
        /// Why, in words.
        reason: String,
    },
    /// The answer to an [`Action::Send`].
    Reply {
        /// What was asked.
        op: Op,
        /// The reply, or the error's message.
        result: Result<Reply, String>,
    },
}

/// The daemon's state when the console (re)connects.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Code, mode, relay link.
    pub status: StatusInfo,
    /// The traffic ring, oldest first.
    pub traffic: Vec<TrafficEntry>,
    /// Waiting commands, oldest first.
    pub approvals: Vec<Approval>,
}

/// What the app asks the main loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave the console.
    Quit,
    /// Send this request to the daemon; its reply comes back as [`DaemonMsg::Reply`].
    Send(Op),
    /// Put this text on the clipboard (OSC 52).
    Copy(String),
    /// Ring the terminal bell.
    Bell,
}
