//! The daemon: dials the relay, owns the machine's session code, runs
//! commands, and serves the control socket its operator's console uses.

pub mod commands;
pub mod contain;
pub mod control;
pub mod doctor;
pub mod executor;
pub mod files;
pub mod jobs;
pub mod link;
pub mod notify;
pub mod pathwalk;
pub mod peer;
pub mod shared;
pub mod spawner;
pub mod starting;
pub mod state;
pub mod tls;
pub mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::commands::Commands;
pub use self::shared::Daemon;
use crate::protocol::SessionCode;
pub use crate::protocol::control::Mode;

/// Everything the daemon is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The relay's base URL (`ws://127.0.0.1:8080`, `wss://relay.example.com`).
    pub relay: String,
    /// Where the state file lives.
    pub state_dir: PathBuf,
    /// The control socket's path.
    pub socket: PathBuf,
    /// A mode given at start: used when none is saved, or when it is stricter
    /// than the saved one. The operator's choice otherwise stands.
    pub mode: Option<Mode>,
    /// Allow a plain `ws://` relay that is not on loopback.
    pub allow_insecure_relay: bool,
    /// Trust only this CA certificate (PEM) for the relay's TLS, instead of the public roots.
    pub ca_cert: Option<PathBuf>,
    /// Commands allowed to run (or wait for approval) at once.
    pub max_concurrent: usize,
    /// How long a command waits for the operator before it is refused.
    pub approval_timeout: Duration,
    /// How often the relay is pinged to measure round-trip time.
    pub ping_interval: Duration,
    /// Silence from the relay after which the link counts as dead and is dialled again.
    pub link_timeout: Duration,
    /// Jobs running or waiting for approval at once, at most.
    pub max_jobs: usize,
    /// Output bytes kept per job on disk; past it the oldest are dropped.
    pub job_output_cap: u64,
    /// How long an ended job's record and output are kept.
    pub job_retention: Duration,
    /// The program that supervises jobs (this daemon's binary, re-executed);
    /// `None`: the running executable.
    pub job_runner: Option<PathBuf>,
    /// Largest file a pull or push moves, in bytes (the relay has its own cap too).
    pub max_file: u64,
}

impl Config {
    /// Defaults for everything but the relay, the state dir and the socket.
    pub fn new(relay: impl Into<String>, state_dir: PathBuf, socket: PathBuf) -> Self {
        Self {
            relay: relay.into(),
            state_dir,
            socket,
            mode: None,
            allow_insecure_relay: false,
            ca_cert: None,
            max_concurrent: 16,
            approval_timeout: Duration::from_secs(600),
            ping_interval: crate::protocol::agent::PING_INTERVAL,
            link_timeout: crate::protocol::agent::LINK_TIMEOUT,
            max_file: crate::protocol::files::DEFAULT_MAX_FILE,
            max_jobs: 32,
            job_output_cap: 16 * 1024 * 1024,
            job_retention: Duration::from_secs(7 * 86_400),
            job_runner: None,
        }
    }

    /// What the job store is told.
    pub fn job_settings(&self) -> jobs::Settings {
        jobs::Settings {
            dir: self.state_dir.join("jobs"),
            runner: self.job_runner.clone().or_else(jobs::runner::default_runner),
            max_running: self.max_jobs.max(1),
            cap: self.job_output_cap.max(2),
            retention: self.job_retention,
        }
    }
}

/// The link as whoever started the daemon (tests, the binary) sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The machine's code, once the relay has given one.
    pub code: Option<SessionCode>,
    /// Whether the link to the relay is up.
    pub connected: bool,
    /// Whether an attempt to link has failed (or a link dropped): the daemon
    /// is retrying with backoff. Ready for systemd either way.
    pub retrying: bool,
}

/// Runs the daemon until `shutdown` is cancelled, publishing the link's
/// state on `status`. The control socket is bound before anything else, so a
/// second daemon on the same socket refuses to start.
pub async fn run(config: Config, status: watch::Sender<LinkStatus>, shutdown: CancellationToken) -> anyhow::Result<()> {
    link::check_relay_url(&config.relay, config.allow_insecure_relay)?;
    tls::connector(config.ca_cert.as_deref())?;
    let socket = control::ControlSocket::bind(&config.socket)?;
    let file = state::StateFile::in_dir(&config.state_dir)?;
    let saved = file.load()?;
    let (daemon, calls) = Daemon::new(config, file, saved, status)?;
    tracing::info!(mode = %daemon.mode(), socket = %socket.path().display(), "aic-daemon started");
    contain::init();
    let commands = Commands::new(daemon.clone());
    let sweeper = tokio::spawn(jobs::calls::sweep(commands.clone(), shutdown.clone()));
    let server = tokio::spawn(control::serve(socket, daemon.clone(), commands.clone(), shutdown.clone()));
    link::run(daemon, commands, calls, shutdown).await;
    server.await?;
    sweeper.await?;
    Ok(())
}
