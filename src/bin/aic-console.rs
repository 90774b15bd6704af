//! `aic-console`: the operator's console for the aic daemon on this machine.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use aic::protocol::control::Mode;
use aic::tui::cli::{self, Command};
use aic::tui::config::ConsoleConfig;
use aic::tui::run::Settings;

/// Watch and steer the aic daemon on this machine: its session code, the
/// commands AI clients send, the approval queue, linked accounts and the
/// relay link. Talks to the daemon over its Unix socket.
///
/// With no subcommand in a terminal, opens the console; without a terminal,
/// prints the status.
#[derive(Parser, Debug)]
#[command(name = "aic-console", version = aic::VERSION)]
struct Args {
    /// The daemon's control socket [default: /run/aic-daemon/aic.sock if it exists, else $XDG_RUNTIME_DIR/aic-daemon.sock].
    #[arg(long, env = "AIC_SOCKET", global = true)]
    socket: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// The console's colour theme: dark, light, high-contrast, a name in ~/.config/aic-console/themes/, or a path to a .toml file.
    #[arg(long, value_name = "NAME|PATH")]
    theme: Option<String>,

    /// The console's settings file (keys: theme, bell) [default: ~/.config/aic-console/config.toml].
    #[arg(long, env = "AIC_CONSOLE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Session code, mode, relay link, queue and uptime.
    Status,
    /// Show the session code; `code reset` replaces it.
    Code {
        #[command(subcommand)]
        action: Option<CodeAction>,
    },
    /// Accounts linked to this machine; block, unblock or approve one.
    Admins {
        #[command(subcommand)]
        action: Option<AdminAction>,
    },
    /// Commands waiting for your approval.
    Approvals,
    /// Let a waiting command run (ID from `approvals`; a unique prefix is enough).
    Approve {
        /// The command's id.
        id: String,
    },
    /// Refuse a waiting command; its caller gets 403 denied.
    Deny {
        /// The command's id.
        id: String,
    },
    /// Show the mode, or set it: supervised (you approve each command), auto (they run at once), disabled (all refused).
    Mode {
        /// The new mode.
        mode: Option<Mode>,
    },
    /// Recent commands; with --follow, then a line per event as they happen.
    Traffic {
        /// Keep printing events until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Detached jobs on this machine (state, exit, runtime, output size, who, command); `jobs cancel ID` stops one.
    Jobs {
        #[command(subcommand)]
        action: Option<JobAction>,
    },
    /// Write shell completions or the man page into a directory (for packagers and installers).
    #[command(subcommand)]
    Generate(aic::generate::Generate),
}

#[derive(Subcommand, Debug)]
enum JobAction {
    /// Cancel a job: SIGTERM to its processes, SIGKILL after 2 s (ID from `jobs`; a unique prefix is enough).
    Cancel {
        /// The job's id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum CodeAction {
    /// Replace the code: the old one stops working at once and every link and block is cleared.
    Reset {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AdminAction {
    /// Block account N (its number in the list, or its id).
    Block {
        /// Number or id.
        n: String,
    },
    /// Unblock account N.
    Unblock {
        /// Number or id.
        n: String,
    },
    /// Approve account N's pending link.
    Approve {
        /// Number or id.
        n: String,
    },
}

fn command(sub: Option<Sub>) -> Command {
    match sub {
        None | Some(Sub::Status) => Command::Status,
        Some(Sub::Code { action: None }) => Command::Code,
        Some(Sub::Code { action: Some(CodeAction::Reset { yes }) }) => Command::CodeReset { yes },
        Some(Sub::Admins { action: None }) => Command::Admins,
        Some(Sub::Admins { action: Some(AdminAction::Block { n }) }) => Command::AdminBlock(n),
        Some(Sub::Admins { action: Some(AdminAction::Unblock { n }) }) => Command::AdminUnblock(n),
        Some(Sub::Admins { action: Some(AdminAction::Approve { n }) }) => Command::AdminApprove(n),
        Some(Sub::Approvals) => Command::Approvals,
        Some(Sub::Approve { id }) => Command::Approve(id),
        Some(Sub::Deny { id }) => Command::Deny(id),
        Some(Sub::Mode { mode }) => Command::Mode(mode),
        Some(Sub::Traffic { follow }) => Command::Traffic { follow },
        Some(Sub::Jobs { action: None }) => Command::Jobs,
        Some(Sub::Jobs { action: Some(JobAction::Cancel { id }) }) => Command::JobCancel(id),
        Some(Sub::Generate(_)) => unreachable!("main answers `generate` before any command"),
    }
}

/// Asks on the terminal; without one, the answer is no.
fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("aic-console: {question}\naic-console: no terminal to ask on; pass --yes to confirm");
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim_start().starts_with(['y', 'Y'])
}

/// The terminal console's settings from the flags and the settings file.
fn console_settings(socket: PathBuf, theme: Option<&str>, config: Option<PathBuf>) -> anyhow::Result<Settings> {
    let (path, required) = match config {
        Some(path) => (Some(path), true),
        None => (aic::tui::config::default_path(), false),
    };
    let config = match path {
        Some(path) => ConsoleConfig::load(&path, required)?,
        None => ConsoleConfig::default(),
    };
    Ok(Settings { socket, theme: config.theme(theme)?, bell: config.bell })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Args = aic::suggest::parse();
    if let Some(Sub::Generate(what)) = &args.command {
        return match aic::generate::run(what, Args::command()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aic-console: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let socket = args.socket.unwrap_or_else(aic::protocol::control::console_socket);
    // The console's own settings matter only when it opens (or was told of them):
    // a broken settings file never breaks a script's plain `aic-console`.
    let asked = args.theme.is_some() || args.config.is_some();
    if args.command.is_none() && (std::io::stdout().is_terminal() || asked) {
        let settings = match console_settings(socket.clone(), args.theme.as_deref(), args.config) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("aic-console: {e}");
                return ExitCode::FAILURE;
            }
        };
        if std::io::stdout().is_terminal() {
            return match aic::tui::run::run(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aic-console: {}", aic::tui::sanitize::block(&e.to_string()));
                    ExitCode::FAILURE
                }
            };
        }
    }
    let mut stdout = std::io::stdout();
    match cli::run(&socket, command(args.command), args.json, &mut stdout, &mut confirm).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Error text can come from the relay: shown, never acted on by the terminal.
            eprintln!("aic-console: {}", aic::tui::sanitize::block(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
