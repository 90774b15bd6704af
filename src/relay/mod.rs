//! The relay: an HTTP server that AI clients call (REST, MCP) and daemons
//! dial into (WebSocket), with the store of agents behind it.
//!
//! [`serve`] takes a bound listener and a shutdown token, so tests run it on
//! port 0 and stop it without sleeping.

pub mod access;
pub mod accounts;
mod agent_ws;
mod api;
pub mod cluster;
pub mod discovery;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod files;
pub mod hub;
pub mod jobs;
mod jobs_rest;
pub mod keys;
pub mod limit;
pub mod links;
pub mod listen;
pub mod machines;
pub mod mail;
pub mod mask;
pub mod mcp;
pub mod metrics;
pub mod oauth;
mod operator;
pub mod origin;
pub mod presence;
pub mod raw;
mod readahead;
pub mod signin;
pub mod status;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, patch, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hub::Hub;
use keys::Keys;
use origin::{AllowedHosts, PublicUrl};
use store::Store;

/// Everything the relay is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database and the server secret live.
    pub data_dir: PathBuf,
    /// A PostgreSQL database several relays share (`postgres://…`), instead
    /// of the SQLite file in the data dir.
    pub database_url: Option<String>,
    /// The NATS server relays sharing `database_url` route commands through
    /// (`nats://…`); `None`: a relay on its own.
    pub nats_url: Option<String>,
    /// How long after a code is made it works without an account.
    pub anonymous_window: Duration,
    /// Output bytes per command before it is cut and killed.
    pub max_output: u64,
    /// Largest request body the API reads.
    pub max_body: usize,
    /// Interval of `: heartbeat` comments on event streams.
    pub heartbeat: Duration,
    /// The address clients reach the relay at; `None`: `http://` and the listen address.
    /// SKILL.md, the OpenAPI document and the MCP Host check go by it.
    pub public_url: Option<PublicUrl>,
    /// How often a running MCP `remote_exec` sends progress to a client that asked for it.
    pub progress_interval: Duration,
    /// Requests a minute per client address on the API, MCP and agent registration; 0 turns limits off.
    pub rate_limit: u32,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub proxies: limit::Proxies,
    /// Output bytes an MCP tool result carries at most (head and tail of each
    /// stream): what a model's context holds, well under the REST cap.
    pub mcp_output_max: usize,
    /// MCP sessions one client address (IPv4, or IPv6 /64) may hold open;
    /// past it, its new clients are served without a session.
    pub mcp_sessions_per_client: usize,
    /// How long past its timeout a started command may run without an exit
    /// before the relay answers 504 for the machine and cancels it.
    pub exec_grace: Duration,
    /// How long a command may wait for its machine to start it (the
    /// operator's approval, a busy machine) before the relay answers 504.
    pub start_allowance: Duration,
    /// Commands in flight per agent link at once; more are refused with 429.
    pub max_in_flight: usize,
    /// Output bytes held per agent link for all its commands in flight.
    pub max_link_buffer: u64,
    /// Header-read and idle timeout, and connection caps, of the listener.
    pub connections: listen::ConnLimits,
    /// New agent registrations per client address per UTC day; 0: no cap.
    pub registrations_per_day: u32,
    /// The certificate to serve HTTPS and WSS with; plain HTTP without one
    /// (behind a TLS-terminating proxy, or on loopback).
    pub tls: Option<Arc<tls::Tls>>,
    /// `/metrics` is served on a listener of its own (`--metrics-listen`), so not beside the API.
    pub metrics_separate: bool,
    /// Silence from a daemon after which its link counts as dead and is closed.
    pub link_timeout: Duration,
    /// Largest file a pull or push moves, in bytes (the daemon has its own cap too).
    pub max_file: u64,
    /// Largest file MCP `remote_pull` returns in its result (as text, or an
    /// embedded resource); larger ones come as a download link.
    pub mcp_inline_max: usize,
    /// How long an MCP download or upload link works (once).
    pub file_link_ttl: Duration,
    /// The SMTP server that sign-in links go out through; none: no mail
    /// (the operator prints links with `aic-relay login-link`).
    pub mail: Option<mail::MailConfig>,
    /// Where Client ID Metadata Documents may be fetched from.
    pub cimd: oauth::cimd::CimdPolicy,
}

impl Config {
    /// Defaults for everything but the data dir.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            nats_url: None,
            anonymous_window: Duration::from_secs(3600),
            max_output: 1024 * 1024,
            max_body: 256 * 1024,
            heartbeat: Duration::from_secs(15),
            public_url: None,
            progress_interval: Duration::from_secs(5),
            rate_limit: 120,
            proxies: limit::Proxies::default(),
            mcp_output_max: 32 * 1024,
            mcp_sessions_per_client: 100,
            exec_grace: Duration::from_secs(10),
            start_allowance: hub::START_ALLOWANCE,
            max_in_flight: 64,
            max_link_buffer: 32 * 1024 * 1024,
            connections: listen::ConnLimits {
                header_timeout: Duration::from_secs(30),
                max_connections: 4096,
                max_per_ip: 256,
                write_stall: listen::WRITE_STALL,
            },
            registrations_per_day: 50,
            tls: None,
            metrics_separate: false,
            link_timeout: crate::protocol::agent::LINK_TIMEOUT,
            max_file: crate::protocol::files::DEFAULT_MAX_FILE,
            mcp_inline_max: 256 * 1024,
            file_link_ttl: Duration::from_secs(3600),
            mail: None,
            cimd: oauth::cimd::CimdPolicy::default(),
        }
    }

    /// What each agent link may cost, from these settings.
    pub fn link_limits(&self) -> hub::LinkLimits {
        hub::LinkLimits {
            max_output: self.max_output,
            max_in_flight: self.max_in_flight,
            max_buffered: self.max_link_buffer,
            grace: self.exec_grace,
            start_allowance: self.start_allowance,
        }
    }
}

/// Shared state of a running relay; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] shares.
pub struct Inner {
    /// Settings.
    pub config: Config,
    /// Server secret for the keyed hashes.
    pub keys: Keys,
    /// Persistent store.
    pub store: Store,
    /// Connected agents.
    pub hub: Hub,
    /// Cancelled when the relay shuts down; agent links close on it.
    pub shutdown: CancellationToken,
    /// Last-used times waiting to be written.
    pub usage: accounts::Usage,
    /// Requests per client address.
    pub limiter: limit::RateLimiter,
    /// Agent registrations per client address today.
    pub registrations: limit::DailyCap,
    /// Counters for `/metrics`; the hub holds the same.
    pub metrics: Arc<metrics::Metrics>,
    /// MCP download and upload links not yet used.
    pub file_links: links::FileLinks,
    /// The queue sign-in mail goes out from.
    pub mailer: mail::Mailer,
    /// Sign-in links asked for, per client address and in all.
    pub signin_limits: web::Limits,
    /// The address clients reach the relay at, once it serves (refusals name its sign-in page).
    pub public: std::sync::OnceLock<PublicUrl>,
    /// Routing to the other relays of a cluster (`--nats-url`).
    pub cluster: Option<Arc<cluster::Cluster>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens the data dir (creating it, mode 0700), its secret and its database.
    /// `secret` overrides the secret file (from `AIC_RELAY_SECRET`).
    pub async fn open(config: Config, secret: Option<Keys>, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let (store, keys) = open_store(&config.data_dir, config.database_url.as_deref(), secret).await?;
        let limiter = limit::RateLimiter::new(config.rate_limit);
        let registrations = limit::DailyCap::new(config.registrations_per_day);
        let usage = accounts::Usage::default();
        let metrics = Arc::new(metrics::Metrics::default());
        let hub = Hub::with_metrics(Arc::clone(&metrics));
        let cluster = match (&config.nats_url, &config.database_url) {
            (None, _) => None,
            (Some(_), None) => anyhow::bail!(
                "--nats-url makes this relay one of several, which must share one store: give --database-url postgres://… too"
            ),
            (Some(url), Some(_)) => {
                Some(cluster::Cluster::connect(url, Arc::clone(&metrics), config.exec_grace).await?)
            }
        };
        let file_links = links::FileLinks::default();
        let mailer = mail::Mailer::start(config.mail.as_ref(), shutdown.clone())?;
        let (signin_limits, public) = (web::Limits::default(), std::sync::OnceLock::new());
        let inner = Inner {
            config,
            keys,
            store,
            hub,
            shutdown,
            usage,
            limiter,
            registrations,
            metrics,
            file_links,
            mailer,
            signin_limits,
            public,
            cluster,
        };
        Ok(Self(Arc::new(inner)))
    }
}

/// Opens the data dir (creating it, mode 0700), its secret and its database
/// (the SQLite file in it, or the PostgreSQL at `database_url`), for the
/// server or for the account commands beside it.
pub async fn open_store(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    secret: Option<Keys>,
) -> anyhow::Result<(Store, Keys)> {
    create_private_dir(data_dir)?;
    let keys = match secret {
        Some(keys) => keys,
        None => Keys::load_or_create(data_dir)?,
    };
    let store = match database_url {
        Some(url) => Store::connect(url).await?,
        None => Store::open(data_dir).await?,
    };
    Ok((store, keys))
}

/// The HTTP routes, for a relay reached at `public`.
pub fn router(state: AppState, public: PublicUrl) -> Router {
    let max_body = state.config.max_body;
    let _ = state.public.set(public.clone());
    let web = Arc::new(web::Web { state: state.clone(), public: public.clone() });
    let pages = web::router(Arc::clone(&web)).merge(oauth::router(web, state.config.cimd.clone()));
    let guard = oauth::Guard { state: state.clone(), public: public.clone() };
    let documents = discovery::Documents::new(&public);
    let skill = documents.clone();
    let allowed = Arc::new(AllowedHosts { hosts: public.allowed_hosts(), public });
    let endpoint = mcp::Endpoint::new(&state);
    let oauth_endpoint = endpoint.clone();
    let mcp_route = any(move |request| endpoint.clone().handle(request))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&allowed), origin::check_host));
    let mcp_oauth_route = any(move |request| oauth_endpoint.clone().handle(request))
        .layer(axum::middleware::from_fn_with_state(guard, oauth::require_token))
        .layer(axum::middleware::from_fn_with_state(allowed, origin::check_host));
    // Everything that touches a code (or registers one) counts against the
    // caller's budget: status and MCP too, or they are a code-guessing oracle.
    let limited = Router::new()
        .route("/api/v1/exec", post(api::exec).options(api::preflight("POST, OPTIONS")))
        .route("/api/v1/status/{code}", get(api::status).options(api::preflight("GET, OPTIONS")))
        .route("/api/v1/jobs", post(jobs_rest::start).options(api::preflight("POST, OPTIONS")))
        .route("/api/v1/jobs/{code}", get(jobs_rest::list).options(api::preflight("GET, OPTIONS")))
        .route(
            "/api/v1/jobs/{code}/{id}",
            get(jobs_rest::status).delete(jobs_rest::cancel).options(api::preflight("GET, DELETE, OPTIONS")),
        )
        .route("/api/v1/jobs/{code}/{id}/output", get(jobs_rest::output).options(api::preflight("GET, OPTIONS")))
        .route(
            "/api/v1/files/{code}",
            get(files::pull)
                .put(files::push)
                .options(api::preflight("GET, PUT, OPTIONS"))
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/files/link/{token}", get(links::download).put(links::upload).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/machines", get(machines::get_machines).options(api::preflight("GET, OPTIONS")))
        .route("/api/v1/machines/{alias}", patch(machines::patch_machine).options(api::preflight("PATCH, OPTIONS")))
        .route("/mcp", mcp_route)
        .route(oauth::MCP_PATH, mcp_oauth_route)
        .route("/agent/ws", get(agent_ws::upgrade))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit::middleware));
    let mut open = Router::new().route("/api/health", get(api::health));
    if !state.config.metrics_separate {
        open = open.route("/metrics", get(metrics::handler));
    }
    Router::new()
        .merge(limited)
        .merge(open)
        .merge(pages)
        .route("/openapi.json", get(move || async move { documents.openapi_response() }))
        .route("/skill/SKILL.md", get(move || async move { skill.skill_response() }))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` is cancelled, then drains and closes the store.
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let local = listener.local_addr().context("reading the listen address")?;
    let public = PublicUrl::given_or_listen(state.config.public_url.as_ref(), local, state.config.tls.is_some())
        .map_err(anyhow::Error::msg)?;
    let app = router(state.clone(), public);
    let housekeeper = tokio::spawn(housekeeping(state.clone()));
    tokio::spawn(cluster::share_limits(state.clone()));
    let config = &state.config;
    listen::serve(listener, app, config.connections, config.proxies.clone(), config.tls.clone(), shutdown).await;
    let _ = housekeeper.await;
    state.store.close().await;
    Ok(())
}

/// How often last-used times are written.
const USAGE_FLUSH: Duration = Duration::from_secs(30);

/// An agent unseen this long and linked to no account is forgotten: its
/// code stops working, and the daemon registers anew if it ever returns.
const STALE_AGENT: Duration = Duration::from_secs(90 * 86_400);

/// An agent that registered and never came back with its code, unseen this
/// long and linked to no account, is forgotten (registrations cost nothing
/// to make, so they must not pile up for 90 days).
const UNRETURNED_AGENT: Duration = Duration::from_secs(6 * 3600);

/// How often stale agents are looked for.
const STALE_SWEEP: Duration = Duration::from_secs(3600);

/// Writes last-used times every [`USAGE_FLUSH`] and once more at shutdown;
/// forgets stale agents at start and hourly.
async fn housekeeping(state: AppState) {
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        if last_sweep.is_none_or(|at| at.elapsed() >= STALE_SWEEP) {
            last_sweep = Some(std::time::Instant::now());
            forget_stale(&state).await;
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(USAGE_FLUSH) => false,
            _ = state.shutdown.cancelled() => true,
        };
        state.file_links.sweep();
        if let Err(e) = state.usage.flush(&state.store).await
            && state.store.fault("recording last-used times", &e).is_none()
        {
            tracing::warn!("recording last-used times: {e:#}");
        }
        if stop {
            return;
        }
    }
}

/// Forgets agents unseen for [`STALE_AGENT`], and registrations that never
/// came back within [`UNRETURNED_AGENT`]; agents online now count as seen.
async fn forget_stale(state: &AppState) {
    let now = now_ms();
    if let Err(e) = state.store.mark_seen(&state.hub.online_agents(), now).await {
        tracing::warn!("recording which agents are online: {e:#}");
        return;
    }
    match state.store.forget_stale_agents(now - STALE_AGENT.as_millis() as i64).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "forgot {n} agents unseen for {} days and linked to no account",
            STALE_AGENT.as_secs() / 86_400
        ),
        Err(e) => tracing::warn!("forgetting stale agents: {e:#}"),
    }
    match state.store.forget_unreturned_agents(now - UNRETURNED_AGENT.as_millis() as i64).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "forgot {n} agents that registered, never came back and were unseen for {} hours",
            UNRETURNED_AGENT.as_secs() / 3600
        ),
        Err(e) => tracing::warn!("forgetting registrations that never came back: {e:#}"),
    }
    match signin::sweep(&state.store, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} expired web sessions and old sign-in links"),
        Err(e) => tracing::warn!("deleting expired web sessions and sign-in links: {e:#}"),
    }
    match oauth::grants::sweep(&state.store, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} expired OAuth codes and tokens and unused client registrations"),
        Err(e) => tracing::warn!("deleting expired OAuth codes, tokens and registrations: {e:#}"),
    }
}

/// [`crate::clock::now_ms`] as the store's columns hold it.
pub fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// Creates the data dir 0700; one that other users can enter or read (an
/// existing dir, made with a looser mode) is made 0700, with a warning.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))?;
    let mode =
        std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
            format!(
                "the data dir {} is open to other users (mode {mode:03o}) and could not be made private: \
                 chmod 700 it, or pick another with --data-dir",
                dir.display()
            )
        })?;
        tracing::warn!("the data dir {} was open to other users (mode {mode:03o}); made it 0700", dir.display());
    }
    Ok(())
}
