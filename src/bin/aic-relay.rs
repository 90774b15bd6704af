//! `aic-relay`: the HTTP server AI clients call and daemons dial into.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use aic::relay::{self, AppState, keys::Keys, origin::PublicUrl};

/// The aic relay: AI clients run commands on machines through it (MCP at /mcp,
/// REST at /api/v1), and aic-daemon on each machine dials into it (WebSocket at /agent/ws).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on. Put a TLS-terminating proxy in front of it for anything but loopback.
    #[arg(long, env = "AIC_RELAY_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    listen: SocketAddr,

    /// The URL clients reach this relay at, e.g. https://relay.example.com [default: http://<listen address>].
    /// SKILL.md, the OpenAPI document and connect-lines name it; /mcp answers only for its host and loopback.
    #[arg(long, env = "AIC_RELAY_PUBLIC_URL", global = true)]
    public_url: Option<PublicUrl>,

    /// Where the database and the server secret live [default: /var/lib/aic-relay as root, else the user's data dir].
    #[arg(long, env = "AIC_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// How long after a code is made (or reset) it works without an account, e.g. 90s, 30m, 1h.
    #[arg(long, env = "AIC_RELAY_ANONYMOUS_WINDOW", default_value = "1h", value_parser = aic::duration::parse)]
    anonymous_window: Duration,

    /// Output bytes per command before it is cut (truncated: true) and killed.
    #[arg(long, env = "AIC_RELAY_MAX_OUTPUT", default_value_t = 1024 * 1024)]
    max_output: u64,

    /// Server secret as 64 hex digits, instead of the secret.key file in the data dir.
    #[arg(long, env = "AIC_RELAY_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print, for this relay's public URL, the line that adds it to each AI client
    /// (Claude Code, Codex, Gemini CLI, VS Code, Cursor, opencode) and a curl example.
    ConnectLines,
}

impl Args {
    /// The public URL given, or the one the listen address implies.
    fn public_url(&self) -> anyhow::Result<PublicUrl> {
        match &self.public_url {
            Some(url) => Ok(url.clone()),
            None => format!("http://{}", self.listen).parse().map_err(|e: String| anyhow::anyhow!(e)),
        }
    }
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/aic-relay"));
    }
    directories::ProjectDirs::from("", "", "aic-relay")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home directory to keep data in; pass --data-dir")
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aic-relay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aic-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::ConnectLines) = args.command {
        print!("{}", relay::discovery::connect_lines(&args.public_url()?));
        return Ok(());
    }
    aic::logging::init();

    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    let mut config = relay::Config::new(data_dir);
    config.anonymous_window = args.anonymous_window;
    config.max_output = args.max_output;
    config.public_url = args.public_url.clone();
    let secret = args.secret.as_deref().map(Keys::parse).transpose()?;

    let shutdown = aic::shutdown::on_signals()?;
    let state = AppState::open(config, secret, shutdown).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("binding {} (is another relay running there? pick another with --listen)", args.listen)
    })?;
    let public = match &args.public_url {
        Some(url) => url.to_string(),
        None => format!("http://{}", listener.local_addr()?),
    };
    tracing::info!(data_dir = %state.config.data_dir.display(), %public, "aic-relay listening on http://{}", listener.local_addr()?);
    relay::serve(listener, state).await?;
    tracing::info!("aic-relay stopped");
    Ok(())
}
