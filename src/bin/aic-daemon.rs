//! `aic-daemon`: the agent on each machine. Dials the relay, owns the
//! machine's session code, runs commands, serves the console's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aic::config_file::ConfigFile;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use aic::daemon::{self, Mode};

/// The aic daemon: keeps an outbound link to an aic relay (no inbound port),
/// prints this machine's session code, runs the commands sent with it, and
/// lets the operator watch and approve them with aic-console.
///
/// Settings come from flags, then AIC_* environment variables, then the
/// config file, then defaults.
#[derive(Parser, Debug)]
#[command(name = "aic-daemon", version = aic::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon in the foreground (what the systemd unit starts).
    Run(RunArgs),
    /// Check the config, the state file, the relay, the control socket and the clock, each printed as ok or
    /// problem with what to do; exits non-zero when any check fails. Takes the same settings as `run`.
    Doctor(RunArgs),
    /// Write shell completions or the man page into a directory (for packagers and installers).
    #[command(subcommand)]
    Generate(aic::generate::Generate),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The relay's base URL: ws://127.0.0.1:8080 on loopback, wss://relay.example.com otherwise.
    #[arg(long, env = "AIC_RELAY_URL")]
    relay: Option<String>,

    /// Where the state file (code, agent token, mode) lives [default: /var/lib/aic-daemon as root, else the user's data dir].
    #[arg(long, env = "AIC_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// The control socket aic-console talks to [default: /run/aic-daemon/aic.sock as root, else $XDG_RUNTIME_DIR/aic-daemon.sock].
    #[arg(long, env = "AIC_SOCKET")]
    socket: Option<PathBuf>,

    /// supervised (every command waits for the operator's y/N), auto (run at once) or disabled (refuse all).
    /// Used on first start, or when stricter than the mode last set with aic-console, which otherwise stays
    /// [default: supervised].
    #[arg(long, env = "AIC_MODE")]
    mode: Option<Mode>,

    /// Allow a plain ws:// or http:// relay that is not on loopback (the agent token then crosses the network
    /// unencrypted; only for networks you trust).
    #[arg(long, env = "AIC_INSECURE_RELAY")]
    insecure_relay: bool,

    /// Trust only this CA certificate (PEM) for the relay's TLS, e.g. for a relay with a self-signed
    /// certificate [default: the public certificate authorities].
    #[arg(long, env = "AIC_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Commands allowed to run or wait for approval at once; past it callers are told to retry [default: 16].
    #[arg(long, env = "AIC_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,

    /// How long a command waits for the operator before it is refused, e.g. 90s, 10m [default: 10m].
    #[arg(long, env = "AIC_APPROVAL_TIMEOUT", value_parser = aic::duration::parse)]
    approval_timeout: Option<Duration>,

    /// Detached jobs running or waiting for approval at once; past it a job start is refused [default: 32].
    #[arg(long, env = "AIC_MAX_JOBS")]
    max_jobs: Option<usize>,

    /// Output bytes kept on disk per job; past it the oldest output is dropped and the job runs on
    /// [default: 16777216].
    #[arg(long, env = "AIC_JOB_OUTPUT_CAP")]
    job_output_cap: Option<u64>,

    /// How long an ended job's record and output are kept in the state dir, e.g. 7d, 12h [default: 7d].
    #[arg(long, env = "AIC_JOB_RETENTION", value_parser = aic::duration::parse)]
    job_retention: Option<Duration>,
    /// Largest file a pull or push moves, in bytes; the relay has its own cap [default: 104857600, 100 MiB].
    #[arg(long, env = "AIC_MAX_FILE")]
    max_file: Option<u64>,

    #[command(flatten)]
    log: aic::logging::LogArgs,

    /// Config file (TOML; its keys are the settings above but --log-*, with _ for -; see
    /// packaging/config/daemon.toml) [default: /etc/aic-daemon/config.toml as root, else the user's config dir; a missing default file is fine].
    #[arg(long, env = "AIC_CONFIG")]
    config: Option<PathBuf>,
}

/// The keys a daemon config file may hold.
const FILE_KEYS: &[&str] = &[
    "relay",
    "state_dir",
    "socket",
    "mode",
    "insecure_relay",
    "ca_cert",
    "max_concurrent",
    "approval_timeout",
    "max_jobs",
    "job_output_cap",
    "job_retention",
    "max_file",
];

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn default_dir(system: &str, pick: fn(&directories::ProjectDirs) -> &Path) -> anyhow::Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from(system));
    }
    directories::ProjectDirs::from("", "", "aic-daemon")
        .map(|d| pick(&d).to_path_buf())
        .context("no home directory to keep state in; pass --state-dir")
}

fn load_file(explicit: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let file = match explicit {
        Some(path) => ConfigFile::read(path, false)?,
        None => ConfigFile::read(&default_dir("/etc/aic-daemon", |d| d.config_dir())?.join("config.toml"), true)?,
    };
    file.check_keys(FILE_KEYS)?;
    refuse_if_others_can_change("config file", file.path())?;
    Ok(file)
}

/// The daemon (often root) obeys its config file (its relay, its mode) and
/// its CA file (which relay it trusts). One another user could change would
/// let them point it at their relay in `auto` mode, so it is refused, the
/// way sshd refuses such files.
fn refuse_if_others_can_change(what: &str, path: &Path) -> anyhow::Result<()> {
    match daemon::pathwalk::changeable_by_others(path) {
        Ok(Some(why)) => anyhow::bail!(
            "the {what}: {why}; this daemon would obey whoever changes it. Make it root's (or yours) and not writable by others: chown root {0}; chmod go-w {0} and its directory",
            path.display()
        ),
        // A file that cannot be looked at is reported where it is read.
        Ok(None) | Err(_) => Ok(()),
    }
}

fn config(args: RunArgs) -> anyhow::Result<daemon::Config> {
    let file = load_file(args.config.as_deref())?;
    let relay = args.relay.or(file.string("relay", "a URL such as \"wss://relay.example.com\"")?).context(
        "no relay given: pass --relay wss://relay.example.com (or set AIC_RELAY_URL, or `relay` in the config file)",
    )?;
    let dir = "a directory such as \"/var/lib/aic-daemon\"";
    let state_dir = match args.state_dir.or(file.string("state_dir", dir)?.map(PathBuf::from)) {
        Some(dir) => dir,
        None => default_dir("/var/lib/aic-daemon", |d| d.data_dir())?,
    };
    let socket_path = file.string("socket", "a path such as \"/run/aic-daemon/aic.sock\"")?.map(PathBuf::from);
    let socket = args.socket.or(socket_path).unwrap_or_else(|| aic::protocol::control::default_socket(is_root()));
    let mut config = daemon::Config::new(relay, state_dir, socket);
    let insecure = file.boolean("insecure_relay")?;
    config.allow_insecure_relay = args.insecure_relay || insecure.unwrap_or(false);
    let ca_cert = file.string("ca_cert", "a PEM file such as \"/etc/aic-daemon/relay-ca.pem\"")?.map(PathBuf::from);
    config.ca_cert = args.ca_cert.or(ca_cert);
    if let Some(ca) = &config.ca_cert {
        refuse_if_others_can_change("CA file", ca)?;
    }
    let mode = file.parsed("mode", "one of \"supervised\", \"auto\", \"disabled\"", str::parse::<Mode>)?;
    config.mode = args.mode.or(mode);
    let count = "a whole number of commands, at least 1";
    if let Some(n) = args.max_concurrent.or(file.integer("max_concurrent", count)?) {
        config.max_concurrent = n.max(1);
    }
    let timeout = file.parsed("approval_timeout", "a duration such as \"90s\" or \"10m\"", aic::duration::parse)?;
    if let Some(d) = args.approval_timeout.or(timeout) {
        config.approval_timeout = d;
    }
    jobs_config(&mut config, &file, args.max_jobs, args.job_output_cap, args.job_retention)?;
    if let Some(n) = args.max_file.or(file.integer("max_file", "a number of bytes such as 104857600")?) {
        config.max_file = n;
    }
    Ok(config)
}

/// The job settings, from flags, then the file.
fn jobs_config(
    config: &mut daemon::Config,
    file: &ConfigFile,
    max_jobs: Option<usize>,
    cap: Option<u64>,
    retention: Option<Duration>,
) -> anyhow::Result<()> {
    if let Some(n) = max_jobs.or(file.integer("max_jobs", "a whole number of jobs, at least 1")?) {
        config.max_jobs = n.max(1);
    }
    if let Some(n) = cap.or(file.integer("job_output_cap", "a whole number of bytes, such as 16777216")?) {
        config.job_output_cap = n.max(2);
    }
    let kept = file.parsed("job_retention", "a duration such as \"7d\" or \"12h\"", aic::duration::parse)?;
    if let Some(d) = retention.or(kept) {
        config.job_retention = d;
    }
    Ok(())
}

/// `aic-daemon doctor`: the config, then the daemon's own checks.
async fn doctor(args: RunArgs) -> anyhow::Result<()> {
    let mut report = aic::doctor::Report::new(std::io::stdout());
    match config(args) {
        Ok(config) => {
            report.add("config", Ok(format!("relay {}", config.relay)));
            daemon::doctor::run(&config, &mut report).await;
        }
        Err(e) => report
            .add("config", Err(aic::doctor::Problem::new(format!("{e:#}"), "fix the file, variable or flag it names"))),
    }
    match report.problems() {
        0 => Ok(()),
        n => anyhow::bail!("{n} check(s) found a problem"),
    }
}

fn main() -> std::process::ExitCode {
    // The job supervisor: the daemon re-executes itself for each job (hidden; no runtime, no logging).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(daemon::jobs::runner::SUBCOMMAND) {
        return daemon::jobs::runner::main(&args[2..]);
    }
    // Before the runtime or any thread exists: the process that forks each command's reaper.
    if args.get(1).map(String::as_str) == Some("run") {
        daemon::spawner::start();
    }
    aic::shutdown::run_main("aic-daemon", run())
}

async fn run() -> anyhow::Result<()> {
    let args = match aic::suggest::parse::<Cli>().command {
        Command::Run(args) => args,
        Command::Doctor(args) => return doctor(args).await,
        Command::Generate(what) => return aic::generate::run(&what, Cli::command()),
    };
    aic::logging::init_with("aic-daemon", &args.log)?;
    let config = config(args)?;
    let shutdown = aic::shutdown::on_signals()?;
    let (status, watcher) = tokio::sync::watch::channel(daemon::LinkStatus::default());
    tokio::spawn(daemon::notify::follow(watcher));
    daemon::run(config, status, shutdown).await
}
