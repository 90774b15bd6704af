//! `aic-daemon`: the agent on each machine. Dials the relay, owns the
//! machine's session code, runs commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use aic::daemon::{self, Mode};

/// The aic daemon: keeps an outbound link to an aic relay (no inbound port),
/// prints this machine's session code, and runs the commands sent with it.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon in the foreground (what the systemd unit starts).
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The relay's base URL: ws://127.0.0.1:8080 on loopback, wss://relay.example.com otherwise.
    #[arg(long, env = "AIC_RELAY_URL")]
    relay: String,

    /// Where the state file (code, agent token, mode) lives [default: /var/lib/aic-daemon as root, else the user's data dir].
    #[arg(long, env = "AIC_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// What to do with incoming commands: auto (run at once) or disabled (refuse all).
    #[arg(long, env = "AIC_MODE", default_value = "auto")]
    mode: Mode,

    /// Commands allowed to run at once; past it callers are told to retry.
    #[arg(long, env = "AIC_MAX_CONCURRENT", default_value_t = 16)]
    max_concurrent: usize,
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/aic-daemon"));
    }
    directories::ProjectDirs::from("", "", "aic-daemon")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home directory to keep state in; pass --state-dir")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Cli::parse().command;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => default_state_dir()?,
    };
    let mut config = daemon::Config::new(args.relay, state_dir);
    config.mode = args.mode;
    config.max_concurrent = args.max_concurrent.max(1);
    let shutdown = aic::shutdown::on_signals()?;
    let (status, _) = tokio::sync::watch::channel(daemon::LinkStatus::default());
    daemon::run(config, status, shutdown).await
}
