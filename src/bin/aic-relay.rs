//! `aic-relay`: the HTTP server AI clients call and daemons dial into.
// The doc comments on flags are clap's --help text, written for a terminal, not rustdoc.
#![allow(rustdoc::bare_urls, rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};

use aic::config_file::{ConfigError, ConfigFile};
use aic::relay::{self, AppState, keys::Keys, origin::PublicUrl};

/// The aic relay: AI clients run commands on machines through it (MCP at /mcp,
/// REST at /api/v1), and aic-daemon on each machine dials into it (WebSocket at /agent/ws).
#[derive(Parser, Debug)]
#[command(name = "aic-relay", version = aic::VERSION, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on. For anything but loopback, serve TLS (--tls-cert) or put a TLS-terminating proxy in front.
    #[arg(long, env = "AIC_RELAY_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    listen: SocketAddr,

    /// The URL clients reach this relay at, e.g. https://relay.example.com
    /// [default: http://<listen address>, or https:// with --tls-cert]. SKILL.md, the OpenAPI document and
    /// connect-lines name it; /mcp answers only for its host and loopback.
    #[arg(long, env = "AIC_RELAY_PUBLIC_URL", global = true)]
    public_url: Option<PublicUrl>,

    /// Where the database and the server secret live [default: /var/lib/aic-relay as root, else the user's data dir].
    #[arg(long, env = "AIC_RELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// Keep accounts, keys, links and machines in this PostgreSQL database (postgres://user:password@host/db)
    /// instead of the SQLite file in the data dir: what several relays behind one load balancer share (give them
    /// all the same --secret). Prefer the environment variable when the URL holds a password.
    #[arg(long, env = "AIC_RELAY_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,

    /// Route commands between relays through this NATS server (nats://host:4222): with --database-url, what
    /// makes this relay one of several behind a load balancer (see README, "Scaling out").
    #[arg(long, env = "AIC_RELAY_NATS_URL", global = true)]
    nats_url: Option<String>,

    /// How long after a code is made (or reset) it works without an account, e.g. 90s, 30m, 1h.
    #[arg(long, env = "AIC_RELAY_ANONYMOUS_WINDOW", default_value = "1h", value_parser = aic::duration::parse)]
    anonymous_window: Duration,

    /// Output bytes per command before it is cut (truncated: true) and killed.
    #[arg(long, env = "AIC_RELAY_MAX_OUTPUT", default_value_t = 1024 * 1024)]
    max_output: u64,

    /// Output bytes an MCP tool result gives the model at most: past it, the head and the tail of each stream
    /// and the count of bytes left out. REST answers keep the whole output up to --max-output.
    #[arg(long, env = "AIC_RELAY_MCP_OUTPUT_MAX", default_value_t = 32 * 1024)]
    mcp_output_max: usize,

    /// Largest file a pull or push moves through the relay, in bytes (413 past it); each daemon has its own cap too.
    #[arg(long, env = "AIC_RELAY_MAX_FILE", default_value_t = aic::protocol::files::DEFAULT_MAX_FILE)]
    max_file: u64,

    /// Largest file MCP remote_pull returns inside its result, in bytes; larger ones come as a one-use download link.
    #[arg(long, env = "AIC_RELAY_MCP_INLINE_MAX", default_value_t = 256 * 1024)]
    mcp_inline_max: usize,

    /// How long an MCP download or upload link works (once), e.g. 10m, 1h.
    #[arg(long, env = "AIC_RELAY_FILE_LINK_TTL", default_value = "1h", value_parser = aic::duration::parse)]
    file_link_ttl: Duration,

    /// MCP sessions one client address (IPv4, or IPv6 /64) may hold open; past it, its new clients are served
    /// without a session.
    #[arg(long, env = "AIC_RELAY_MCP_SESSIONS_PER_CLIENT", default_value_t = 100)]
    mcp_sessions_per_client: usize,

    /// Server secret as 64 hex digits, instead of the secret.key file in the data dir. Prefer the
    /// environment variable: a flag's value shows in `ps`.
    #[arg(long, env = "AIC_RELAY_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,

    /// Requests a minute per client address on /api/v1, /mcp and agent registration (429 past it); 0 turns limits off.
    #[arg(long, env = "AIC_RELAY_RATE_LIMIT", default_value_t = 120)]
    rate_limit: u32,

    /// A reverse proxy (address or network, e.g. 10.0.0.0/8) whose X-Forwarded-For names the client; repeatable.
    /// Without it, X-Forwarded-For is ignored.
    #[arg(long, env = "AIC_RELAY_TRUSTED_PROXY", value_delimiter = ',')]
    trusted_proxy: Vec<relay::limit::Cidr>,

    /// Serve HTTPS and WSS with this certificate chain (PEM, leaf first); read again on SIGHUP, so a renewal
    /// needs no restart. Needs --tls-key.
    #[arg(long, env = "AIC_RELAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "AIC_RELAY_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Connections held open at once (503 past it, logged once); keep it below LimitNOFILE.
    #[arg(long, env = "AIC_RELAY_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,

    /// Connections held open at once from one client address (429 past it); trusted proxies are not counted.
    #[arg(long, env = "AIC_RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: usize,

    /// Time a client has to send a request's headers, and to start its next request on a kept-alive connection.
    #[arg(long, env = "AIC_RELAY_HEADER_TIMEOUT", default_value = "30s", value_parser = aic::duration::parse)]
    header_timeout: Duration,

    /// New machines one client address may register a day (machines coming back are not counted); 0: no cap.
    #[arg(long, env = "AIC_RELAY_REGISTRATIONS_PER_DAY", default_value_t = 50)]
    registrations_per_day: u32,

    /// Commands in flight at once on one machine's link (429 past it); raise it with the daemon's --max-concurrent.
    #[arg(long, env = "AIC_RELAY_MAX_IN_FLIGHT", default_value_t = 64)]
    max_in_flight: usize,

    /// Serve GET /metrics (Prometheus text) on this address only, e.g. 127.0.0.1:9100, instead of beside the API.
    #[arg(long, env = "AIC_RELAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// SMTP server that sign-in links are mailed through: smtps://user:password@mail.example.com:465, or
    /// smtp://host:25 (add ?tls=required for STARTTLS). Without it no mail goes out, and `aic-relay
    /// login-link EMAIL` prints links. Prefer the environment variable: it holds a password.
    #[arg(long, env = "AIC_RELAY_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,

    /// The sender of sign-in mail, e.g. "aic relay <relay@example.com>" (needed with --smtp-url).
    #[arg(long, env = "AIC_RELAY_MAIL_FROM")]
    mail_from: Option<String>,

    #[command(flatten)]
    log: aic::logging::LogArgs,

    /// Print JSON instead of text (account and key commands).
    #[arg(long, global = true)]
    json: bool,

    /// Config file (TOML; its keys are the server settings but --secret and --log-*, with _ for -; see
    /// packaging/config/relay.toml). Flags and AIC_RELAY_* variables win over it [default:
    /// /etc/aic-relay/config.toml as root, else the user's config dir; a missing default file is fine].
    #[arg(long, env = "AIC_RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print, for this relay's public URL, the line that adds it to each AI client
    /// (Claude Code, Codex, Gemini CLI, VS Code, Cursor, opencode) and a curl example.
    ConnectLines,
    /// Accounts that use codes past their first hour (works while the relay runs).
    #[command(subcommand)]
    Account(AccountCmd),
    /// API keys of accounts (works while the relay runs).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Print a one-time sign-in link for EMAIL (valid 15 minutes; opening it signs that browser in,
    /// making the account if it is new), for a relay that sends no mail. It is printed here only, never logged.
    LoginLink {
        /// The address to sign in as.
        email: String,
    },
    /// Check the config, the data dir, the secret, the database, the listen address and the clock, each
    /// printed as ok or problem with what to do; exits non-zero when any check fails.
    Doctor,
    /// Write shell completions or the man page into a directory (for packagers and installers).
    #[command(subcommand)]
    Generate(aic::generate::Generate),
}

#[derive(clap::Subcommand, Debug)]
enum AccountCmd {
    /// Add an account and print its first API key (shown only once).
    Add {
        /// The account's email.
        email: String,
    },
    /// List accounts.
    List,
    /// Change an account's settings.
    Set {
        /// The account's email.
        email: String,
        /// Whether its API keys and OAuth tokens act only within 24 h of a web sign-in.
        #[arg(long, value_parser = ["on", "off"])]
        daily_reactivation: String,
    },
    /// Remove an account with its keys and links.
    Remove {
        /// The account's email.
        email: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum KeyCmd {
    /// Make another API key for an account (shown only once).
    Create {
        /// The account's email.
        email: String,
    },
    /// Revoke a key at once (by its id, the part after aic_, or the whole key).
    Revoke {
        /// The key's id.
        key_id: String,
    },
    /// List an account's keys.
    List {
        /// The account's email.
        email: String,
    },
}

/// Refuses an account, key or login-link command that would not meet the relay's own data: one that
/// made a new secret or SQLite file would hand out keys and links that no relay accepts.
fn check_relay_data(args: &Args, data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.display();
    let missing = |name: &str| match std::fs::metadata(data_dir.join(name)) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {dir}/{name} ({e}): run this as the relay's user, e.g. sudo -u aic-relay aic-relay --data-dir {dir} …"
        )),
    };
    if args.database_url.is_none() && missing(relay::store::DB_FILE)? {
        anyhow::bail!(
            "no relay database in {dir}: give the relay's data dir with --data-dir (or its --config file, or \
             --database-url for relays on PostgreSQL); a relay makes {} there when it first starts",
            relay::store::DB_FILE
        );
    }
    if args.secret.is_none() && missing(relay::keys::SECRET_FILE)? {
        anyhow::bail!(
            "no server secret: {dir}/{} does not exist and neither --secret nor AIC_RELAY_SECRET is set. Give the \
             secret the relays use (AIC_RELAY_SECRET) or the relay's --data-dir: keys and links made under another \
             secret would never work",
            relay::keys::SECRET_FILE
        );
    }
    Ok(())
}

/// Runs an account or key command against the data dir.
async fn admin(args: &Args, data_dir: PathBuf, command: &Command) -> anyhow::Result<()> {
    use aic::relay::accounts;
    check_relay_data(args, &data_dir)?;
    let secret = args.secret.as_deref().map(Keys::parse).transpose()?;
    let (store, keys) = relay::open_store(&data_dir, args.database_url.as_deref(), secret).await?;
    let now = relay::now_ms();
    let json = args.json;
    let show_key = |email: &str, key: &str| {
        if json {
            println!("{}", serde_json::json!({"email": email, "key": key}));
        } else {
            println!("API key for {email} (shown only now; store it safely):\n\n  {key}\n");
            println!("Use it as the header  Authorization: Bearer {key}");
        }
    };
    match command {
        Command::Account(AccountCmd::Add { email }) => {
            let key = accounts::add_account(&store, &keys, email, now).await?;
            show_key(&accounts::normalize_email(email)?, &key);
        }
        Command::Account(AccountCmd::List) => print_accounts(&accounts::list_accounts(&store).await?, json)?,
        Command::Account(AccountCmd::Set { email, daily_reactivation }) => {
            accounts::set_daily_reactivation(&store, email, daily_reactivation == "on").await?;
            if !json {
                println!("Daily re-activation is {daily_reactivation} for {email}.");
            }
        }
        Command::LoginLink { email } => login_link(args, &store, &keys, email, now).await?,
        Command::Account(AccountCmd::Remove { email }) => {
            accounts::remove_account(&store, email).await?;
            if !json {
                println!("Removed {email}, its keys and its links.");
            }
        }
        Command::Key(KeyCmd::Create { email }) => {
            let key = accounts::create_key(&store, &keys, email, now).await?;
            show_key(&accounts::normalize_email(email)?, &key);
        }
        Command::Key(KeyCmd::Revoke { key_id }) => {
            accounts::revoke_key(&store, key_id, now).await?;
            if !json {
                println!("Revoked; requests with it get 401 from now on.");
            }
        }
        Command::Key(KeyCmd::List { email }) => print_keys(&accounts::list_keys(&store, email).await?, json)?,
        Command::ConnectLines | Command::Doctor | Command::Generate(_) => {}
    }
    store.close().await;
    Ok(())
}

/// `login-link EMAIL`: a one-time sign-in link, printed here only; a note on stderr when it names the default URL.
async fn login_link(
    args: &Args,
    store: &relay::store::Store,
    keys: &Keys,
    email: &str,
    now: i64,
) -> anyhow::Result<()> {
    let email = relay::accounts::normalize_email(email)?;
    let token = relay::signin::create_link(store, keys, &email, None, "/dashboard", now).await?;
    let base = args.public_url()?;
    let url = base.join(&format!("/login/link?t={token}"));
    if args.json {
        println!("{}", serde_json::json!({"email": email, "url": url}));
    } else {
        println!("Sign-in link for {email} (works once, for 15 minutes; whoever opens it signs in):\n\n  {url}\n");
    }
    if args.public_url.is_none() {
        eprintln!(
            "aic-relay: the link names {base}, the default; if the relay is reached at another address, \
             run this again with its --public-url (or AIC_RELAY_PUBLIC_URL, or its --config file)"
        );
    }
    Ok(())
}

/// `account list`'s output.
fn print_accounts(list: &[aic::relay::accounts::AccountRow], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(list)?);
    } else if list.is_empty() {
        println!("No accounts yet; add one with `aic-relay account add EMAIL`.");
    } else {
        for a in list {
            println!(
                "{}  {} key(s), {} machine(s), since {}",
                a.email,
                a.keys,
                a.links,
                aic::duration::utc(a.created_at)
            );
        }
    }
    Ok(())
}

/// `key list`'s output.
fn print_keys(list: &[aic::relay::accounts::KeyRow], json: bool) -> anyhow::Result<()> {
    use aic::duration::utc;
    if json {
        println!("{}", serde_json::to_string(list)?);
    }
    for k in list.iter().filter(|_| !json) {
        let used = k.last_used_at.map_or_else(|| "never used".into(), |t| format!("last used {}", utc(t)));
        let revoked = k.revoked_at.map(|t| format!(", REVOKED {}", utc(t))).unwrap_or_default();
        println!("{}  created {}, {used}{revoked}", k.key_id, utc(k.created_at));
    }
    Ok(())
}

impl Args {
    /// The public URL given, or the one the listen address implies.
    fn public_url(&self) -> anyhow::Result<PublicUrl> {
        PublicUrl::given_or_listen(self.public_url.as_ref(), self.listen, self.tls_cert.is_some())
            .map_err(anyhow::Error::msg)
    }
}

/// The certificate from --tls-cert and --tls-key, read again whenever the relay gets SIGHUP.
/// SIGHUP is handled either way (`systemctl reload`), so it never stops a relay without TLS.
fn tls(args: &Args) -> anyhow::Result<Option<std::sync::Arc<relay::tls::Tls>>> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(relay::tls::Tls::load(cert, key)?)),
        (None, None) => None,
        _ => anyhow::bail!(
            "a TLS certificate and its key go together: give both --tls-cert and --tls-key (or tls_cert and tls_key in the config file)"
        ),
    };
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reloading = tls.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reloading.as_deref().map(relay::tls::Tls::reload) {
                None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                Some(Ok(())) => tracing::info!("SIGHUP: reloaded the TLS certificate"),
                Some(Err(e)) => tracing::error!("SIGHUP: kept the TLS certificate in use: {e:#}"),
            }
        }
    });
    Ok(tls)
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/aic-relay"));
    }
    directories::ProjectDirs::from("", "", "aic-relay")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home directory to keep data in; pass --data-dir")
}

/// Flags and `AIC_RELAY_*` variables, with the config file filling in what they leave at the default;
/// a problem with the file comes back beside them (for `doctor` to report).
fn parse_args() -> (Args, Result<PathBuf, ConfigError>) {
    let matches = aic::suggest::matches(Args::command());
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Command::Generate(_)) = args.command {
        return (args, Ok(PathBuf::new()));
    }
    let file = match &args.config {
        Some(path) => ConfigFile::read(path, false),
        None => match default_config_file() {
            Some(path) => ConfigFile::read(&path, true),
            None => Ok(ConfigFile::empty(Path::new("(none)"))),
        },
    };
    let applied = file.and_then(|file| args.apply_file(&file, &matches).map(|()| file.path().to_path_buf()));
    (args, applied)
}

/// `aic-relay doctor`: the config, then the relay's own checks.
async fn doctor(args: &Args, file: Result<PathBuf, ConfigError>) -> anyhow::Result<()> {
    use aic::doctor::{Problem, Report};
    let mut report = Report::new(std::io::stdout());
    let fix = "fix the file, variable or flag it names";
    let checked = file.map_err(|e| Problem::new(e, fix)).and_then(|path| {
        let data_dir = args.data_dir.clone().map_or_else(default_data_dir, Ok).map_err(|e| Problem::new(e, fix))?;
        Ok((path, data_dir))
    });
    match checked {
        Ok((path, data_dir)) => {
            let source = match path.exists() {
                true => path.display().to_string(),
                false => format!("no file at {}, so flags, variables and defaults", path.display()),
            };
            report.add("config", Ok(format!("{source} (listen {})", args.listen)));
            let shared = relay::doctor::Shared {
                database_url: args.database_url.as_deref(),
                nats_url: args.nats_url.as_deref(),
            };
            relay::doctor::run(&data_dir, shared, args.listen, args.secret.is_some(), &mut report).await;
        }
        Err(problem) => report.add("config", Err(problem)),
    }
    match report.problems() {
        0 => Ok(()),
        n => anyhow::bail!("{n} check(s) found a problem"),
    }
}

/// `/etc/aic-relay/config.toml` as root, else `config.toml` in the user's config dir.
fn default_config_file() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/etc/aic-relay/config.toml"));
    }
    directories::ProjectDirs::from("", "", "aic-relay").map(|d| d.config_dir().join("config.toml"))
}

/// The keys a relay config file may hold.
const FILE_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "data_dir",
    "database_url",
    "nats_url",
    "anonymous_window",
    "max_output",
    "rate_limit",
    "trusted_proxy",
    "metrics_listen",
    "tls_cert",
    "tls_key",
    "max_connections",
    "max_connections_per_ip",
    "header_timeout",
    "registrations_per_day",
    "mcp_output_max",
    "mcp_sessions_per_client",
    "max_file",
    "mcp_inline_max",
    "file_link_ttl",
    "max_in_flight",
    "smtp_url",
    "mail_from",
];

/// `value` (from the config file) into `slot`, unless the flag or its variable was given.
fn fill<T>(slot: &mut T, value: Option<T>, given: bool) {
    if let Some(value) = value
        && !given
    {
        *slot = value;
    }
}

impl Args {
    /// Takes each key of `file` whose flag was neither given nor set in the environment.
    /// Every key is checked, used or not.
    fn apply_file(&mut self, file: &ConfigFile, matches: &clap::ArgMatches) -> Result<(), ConfigError> {
        use clap::parser::ValueSource;
        file.check_keys(FILE_KEYS)?;
        let unset = |id: &str| matches!(matches.value_source(id), None | Some(ValueSource::DefaultValue));
        let address = "an address and port such as \"127.0.0.1:8080\"";
        if let Some(v) = file.parsed("listen", address, str::parse)?
            && unset("listen")
        {
            self.listen = v;
        }
        let url = "a URL such as \"https://relay.example.com\"";
        if let Some(v) = file.parsed("public_url", url, str::parse)?
            && unset("public_url")
        {
            self.public_url = Some(v);
        }
        if let Some(v) = file.string("data_dir", "a directory such as \"/var/lib/aic-relay\"")?
            && unset("data_dir")
        {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = file.string("database_url", "a URL such as \"postgres://aic@db.example.com/aic\"")?
            && unset("database_url")
        {
            self.database_url = Some(v);
        }
        if let Some(v) = file.string("nats_url", "a URL such as \"nats://127.0.0.1:4222\"")?
            && unset("nats_url")
        {
            self.nats_url = Some(v);
        }
        let duration = "a duration such as \"90s\", \"30m\" or \"1h\"";
        if let Some(v) = file.parsed("anonymous_window", duration, aic::duration::parse)?
            && unset("anonymous_window")
        {
            self.anonymous_window = v;
        }
        if let Some(v) = file.integer("max_output", "a number of bytes such as 1048576")?
            && unset("max_output")
        {
            self.max_output = v;
        }
        if let Some(v) = file.integer("rate_limit", "requests a minute as a whole number (0 turns limits off)")?
            && unset("rate_limit")
        {
            self.rate_limit = v;
        }
        let proxies = "a list of addresses or networks such as [\"127.0.0.1\", \"10.0.0.0/8\"]";
        if let Some(v) = file.list("trusted_proxy", proxies, str::parse)?
            && unset("trusted_proxy")
        {
            self.trusted_proxy = v;
        }
        if let Some(v) = file.parsed("metrics_listen", address, str::parse)?
            && unset("metrics_listen")
        {
            self.metrics_listen = Some(v);
        }
        self.apply_file_limits(file, &|id| !unset(id))
    }

    /// The config file's TLS files, connection limits, MCP sizes and mail.
    fn apply_file_limits(&mut self, file: &ConfigFile, given: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        let pem = "a PEM file such as \"/etc/aic-relay/fullchain.pem\"";
        let cert = file.string("tls_cert", pem)?.map(|p| Some(PathBuf::from(p)));
        fill(&mut self.tls_cert, cert, given("tls_cert"));
        let key = file.string("tls_key", pem)?.map(|p| Some(PathBuf::from(p)));
        fill(&mut self.tls_key, key, given("tls_key"));
        let count = "a whole number";
        fill(&mut self.max_connections, file.integer("max_connections", count)?, given("max_connections"));
        let per_ip = file.integer("max_connections_per_ip", count)?;
        fill(&mut self.max_connections_per_ip, per_ip, given("max_connections_per_ip"));
        let timeout = file.parsed("header_timeout", "a duration such as \"30s\"", aic::duration::parse)?;
        fill(&mut self.header_timeout, timeout, given("header_timeout"));
        let per_day = file.integer("registrations_per_day", "a whole number (0: no cap)")?;
        fill(&mut self.registrations_per_day, per_day, given("registrations_per_day"));
        let bytes = file.integer("mcp_output_max", "a number of bytes such as 32768")?;
        fill(&mut self.mcp_output_max, bytes, given("mcp_output_max"));
        let sessions = file.integer("mcp_sessions_per_client", count)?;
        fill(&mut self.mcp_sessions_per_client, sessions, given("mcp_sessions_per_client"));
        let max_file = file.integer("max_file", "a number of bytes such as 104857600")?;
        fill(&mut self.max_file, max_file, given("max_file"));
        let inline = file.integer("mcp_inline_max", "a number of bytes such as 262144")?;
        fill(&mut self.mcp_inline_max, inline, given("mcp_inline_max"));
        let ttl = file.parsed("file_link_ttl", "a duration such as \"10m\" or \"1h\"", aic::duration::parse)?;
        fill(&mut self.file_link_ttl, ttl, given("file_link_ttl"));
        fill(&mut self.max_in_flight, file.integer("max_in_flight", count)?, given("max_in_flight"));
        let smtp = file.string("smtp_url", "a URL such as \"smtps://user:password@mail.example.com:465\"")?;
        fill(&mut self.smtp_url, smtp.map(Some), given("smtp_url"));
        let from = file.string("mail_from", "a sender such as \"aic relay <relay@example.com>\"")?;
        fill(&mut self.mail_from, from.map(Some), given("mail_from"));
        Ok(())
    }
}

/// The file transfer settings: size cap, what MCP returns inline, link lifetime.
fn file_settings(config: &mut relay::Config, args: &Args) {
    config.max_file = args.max_file;
    config.mcp_inline_max = args.mcp_inline_max;
    config.file_link_ttl = args.file_link_ttl;
}

/// `--smtp-url` and `--mail-from`, which go together.
fn mail_config(args: &Args) -> anyhow::Result<Option<relay::mail::MailConfig>> {
    match (&args.smtp_url, &args.mail_from) {
        (Some(smtp_url), Some(from)) => {
            Ok(Some(relay::mail::MailConfig { smtp_url: smtp_url.clone(), from: from.clone() }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => {
            anyhow::bail!("--smtp-url needs --mail-from, the sender of sign-in mail (relay@example.com)")
        }
        (None, Some(_)) => anyhow::bail!("--mail-from needs --smtp-url, the server sign-in mail goes through"),
    }
}

/// Binds `--metrics-listen`, when given, and serves `/metrics` there until the relay stops.
async fn spawn_metrics(addr: Option<SocketAddr>, state: &AppState) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr} for /metrics"))?;
    tracing::info!("aic-relay metrics on http://{}/metrics", listener.local_addr()?);
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = relay::metrics::serve(listener, state).await {
            tracing::error!("serving /metrics: {e}");
        }
    });
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every agent holds a
/// socket, and the soft limit (often 1 024) would cap them far below what the
/// machine allows. `--max-connections` stays the relay's own cap.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        limit.current = Some(hard);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!("open files limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("could not raise the open files limit from {soft} to {hard}: {e}"),
        }
    }
}

fn main() -> std::process::ExitCode {
    aic::shutdown::run_main("aic-relay", run())
}

/// The server's settings, from the flags, the environment and the config file.
fn relay_config(args: &Args, data_dir: PathBuf) -> anyhow::Result<relay::Config> {
    let mut config = relay::Config::new(data_dir);
    config.database_url = args.database_url.clone();
    config.nats_url = args.nats_url.clone();
    config.anonymous_window = args.anonymous_window;
    config.max_output = args.max_output;
    file_settings(&mut config, args);
    config.mcp_output_max = args.mcp_output_max;
    config.mcp_sessions_per_client = args.mcp_sessions_per_client;
    config.public_url = args.public_url.clone();
    config.rate_limit = args.rate_limit;
    config.proxies = relay::limit::Proxies(args.trusted_proxy.clone());
    config.registrations_per_day = args.registrations_per_day;
    config.max_in_flight = args.max_in_flight;
    config.connections = relay::listen::ConnLimits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections,
        max_per_ip: args.max_connections_per_ip,
        write_stall: relay::listen::WRITE_STALL,
    };
    config.tls = tls(args)?;
    if args.header_timeout.is_zero() {
        anyhow::bail!("--header-timeout 0s would cut every connection off at once; give a time such as 30s");
    }
    config.metrics_separate = args.metrics_listen.is_some();
    config.mail = mail_config(args)?;
    Ok(config)
}

async fn run() -> anyhow::Result<()> {
    let (args, file) = parse_args();
    if let Some(Command::Doctor) = args.command {
        return doctor(&args, file).await;
    }
    file?;
    if let Some(Command::Generate(what)) = &args.command {
        return aic::generate::run(what, Args::command());
    }
    if let Some(Command::ConnectLines) = args.command {
        print!("{}", relay::discovery::connect_lines(&args.public_url()?));
        return Ok(());
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    if let Some(command) = &args.command {
        return admin(&args, data_dir, command).await;
    }
    aic::logging::init_with("aic-relay", &args.log)?;
    raise_nofile();
    let config = relay_config(&args, data_dir)?;
    let secret = args.secret.as_deref().map(Keys::parse).transpose()?;

    let shutdown = aic::shutdown::on_signals()?;
    let state = AppState::open(config, secret, shutdown).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("binding {} (is another relay running there? pick another with --listen)", args.listen)
    })?;
    spawn_metrics(args.metrics_listen, &state).await?;
    let local = listener.local_addr()?;
    let tls = state.config.tls.is_some();
    let public = PublicUrl::given_or_listen(args.public_url.as_ref(), local, tls).map_err(anyhow::Error::msg)?;
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(data_dir = %state.config.data_dir.display(), %public, "aic-relay listening on {scheme}://{local}");
    relay::serve(listener, state).await?;
    tracing::info!("aic-relay stopped");
    Ok(())
}
