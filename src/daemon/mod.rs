//! The daemon: dials the relay, owns the machine's session code, runs
//! commands.

pub mod executor;
pub mod link;
pub mod state;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::protocol::SessionCode;

/// What the daemon does with an incoming command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Runs at once.
    Auto,
    /// Refuses every command.
    Disabled,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!("unknown mode {other:?}; use auto or disabled")),
        }
    }
}

/// Everything the daemon is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The relay's base URL (`ws://127.0.0.1:8080`, `wss://relay.example.com`).
    pub relay: String,
    /// Where the state file lives.
    pub state_dir: PathBuf,
    /// The mode given on the command line; otherwise the saved one, else auto.
    pub mode: Mode,
    /// Commands allowed to run at once.
    pub max_concurrent: usize,
}

impl Config {
    /// Defaults for everything but the relay and the state dir.
    pub fn new(relay: impl Into<String>, state_dir: PathBuf) -> Self {
        Self { relay: relay.into(), state_dir, mode: Mode::Auto, max_concurrent: 16 }
    }
}

/// The link as the rest of the daemon (and tests) see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The machine's code, once the relay has given one.
    pub code: Option<SessionCode>,
    /// Whether the link to the relay is up.
    pub connected: bool,
}

/// Runs the daemon until `shutdown` is cancelled, publishing the link's
/// state on `status`.
pub async fn run(config: Config, status: watch::Sender<LinkStatus>, shutdown: CancellationToken) -> anyhow::Result<()> {
    link::check_relay_url(&config.relay)?;
    let file = state::StateFile::in_dir(&config.state_dir)?;
    let state = file.load()?;
    link::run(config, file, state, status, shutdown).await
}
