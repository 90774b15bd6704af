//! The relay: an HTTP server that AI clients call (REST, MCP) and daemons
//! dial into (WebSocket), with the store of agents behind it.
//!
//! [`serve`] takes a bound listener and a shutdown token, so tests run it on
//! port 0 and stop it without sleeping.

pub mod access;
pub mod accounts;
mod agent_ws;
mod api;
pub mod discovery;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod hub;
pub mod keys;
pub mod limit;
pub mod mask;
pub mod mcp;
pub mod metrics;
mod operator;
pub mod origin;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
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
    /// `/metrics` is served on a listener of its own (`--metrics-listen`), so not beside the API.
    pub metrics_separate: bool,
}

impl Config {
    /// Defaults for everything but the data dir.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            anonymous_window: Duration::from_secs(3600),
            max_output: 1024 * 1024,
            max_body: 256 * 1024,
            heartbeat: Duration::from_secs(15),
            public_url: None,
            progress_interval: Duration::from_secs(5),
            rate_limit: 120,
            proxies: limit::Proxies::default(),
            metrics_separate: false,
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
    /// Counters for `/metrics`; the hub holds the same.
    pub metrics: Arc<metrics::Metrics>,
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
        let (store, keys) = open_store(&config.data_dir, secret).await?;
        let limiter = limit::RateLimiter::new(config.rate_limit);
        let usage = accounts::Usage::default();
        let metrics = Arc::new(metrics::Metrics::default());
        let hub = Hub::with_metrics(Arc::clone(&metrics));
        Ok(Self(Arc::new(Inner { config, keys, store, hub, shutdown, usage, limiter, metrics })))
    }
}

/// Opens the data dir (creating it, mode 0700), its secret and its database,
/// for the server or for the account commands beside it.
pub async fn open_store(data_dir: &std::path::Path, secret: Option<Keys>) -> anyhow::Result<(Store, Keys)> {
    create_private_dir(data_dir)?;
    let keys = match secret {
        Some(keys) => keys,
        None => Keys::load_or_create(data_dir)?,
    };
    Ok((Store::open(data_dir).await?, keys))
}

/// The HTTP routes, for a relay reached at `public`.
pub fn router(state: AppState, public: PublicUrl) -> Router {
    let max_body = state.config.max_body;
    let documents = discovery::Documents::new(&public);
    let skill = documents.clone();
    let allowed = Arc::new(AllowedHosts { hosts: public.allowed_hosts(), public });
    let endpoint = mcp::Endpoint::new(&state);
    let mcp_route = any(move |request| endpoint.clone().handle(request))
        .layer(axum::middleware::from_fn_with_state(allowed, origin::check_host));
    // Everything that touches a code (or registers one) counts against the
    // caller's budget: status and MCP too, or they are a code-guessing oracle.
    let limited = Router::new()
        .route("/api/v1/exec", post(api::exec))
        .route("/api/v1/status/{code}", get(api::status))
        .route("/mcp", mcp_route)
        .route("/agent/ws", get(agent_ws::upgrade))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit::middleware));
    let mut open = Router::new().route("/api/health", get(api::health));
    if !state.config.metrics_separate {
        open = open.route("/metrics", get(metrics::handler));
    }
    Router::new()
        .merge(limited)
        .merge(open)
        .route("/openapi.json", get(move || async move { documents.openapi_response() }))
        .route("/skill/SKILL.md", get(move || async move { skill.skill_response() }))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` is cancelled, then drains and closes the store.
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let public = match &state.config.public_url {
        Some(url) => url.clone(),
        None => {
            let local = listener.local_addr().context("reading the listen address")?;
            format!("http://{local}").parse().map_err(|e: String| anyhow::anyhow!(e))?
        }
    };
    let listener = listener.tap_io(|tcp| {
        // Requests and responses are small and written in pieces: without
        // this, Nagle plus delayed ACKs adds ~40 ms to a round trip.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    let app = router(state.clone(), public).into_make_service_with_connect_info::<SocketAddr>();
    let flusher = tokio::spawn(flush_usage(state.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving HTTP");
    let _ = flusher.await;
    state.store.close().await;
    served
}

/// How often last-used times are written.
const USAGE_FLUSH: Duration = Duration::from_secs(30);

/// An agent unseen this long and linked to no account is forgotten: its
/// code stops working, and the daemon registers anew if it ever returns.
const STALE_AGENT: Duration = Duration::from_secs(90 * 86_400);

/// How often stale agents are looked for.
const STALE_SWEEP: Duration = Duration::from_secs(86_400);

/// Writes last-used times every [`USAGE_FLUSH`] and once more at shutdown;
/// forgets stale agents at start and daily.
async fn flush_usage(state: AppState) {
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        if last_sweep.is_none_or(|at| at.elapsed() >= STALE_SWEEP) {
            last_sweep = Some(std::time::Instant::now());
            match state.store.forget_stale_agents(now_ms() - STALE_AGENT.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "forgot {n} agents unseen for {} days and linked to no account",
                    STALE_AGENT.as_secs() / 86_400
                ),
                Err(e) => tracing::warn!("forgetting stale agents: {e:#}"),
            }
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(USAGE_FLUSH) => false,
            _ = state.shutdown.cancelled() => true,
        };
        if let Err(e) = state.usage.flush(&state.store).await {
            tracing::warn!("recording last-used times: {e:#}");
        }
        if stop {
            return;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))
}
