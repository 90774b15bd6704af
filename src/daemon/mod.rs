//! The daemon: dials the relay, owns the machine's session code, runs
//! commands.

pub mod executor;
pub mod link;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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
    /// Whether `Session:` has been printed by this process.
    pub announced: Arc<AtomicBool>,
}

impl Config {
    /// Defaults for everything but the relay and the state dir.
    pub fn new(relay: impl Into<String>, state_dir: PathBuf) -> Self {
        Self {
            relay: relay.into(),
            state_dir,
            mode: Mode::Auto,
            max_concurrent: 16,
            announced: Arc::default(),
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    link::check_relay_url(&config.relay)?;
    let file = state::StateFile::in_dir(&config.state_dir)?;
    let state = file.load()?;
    link::run(config, file, state, shutdown).await
}
