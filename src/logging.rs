//! Logging for the binaries: stderr, filtered by `AIC_LOG`, and never the
//! payloads that some libraries log at their lower levels.

use tracing_subscriber::prelude::*;

/// Libraries that log whole messages (command text, output, codes) below
/// error level: rmcp its JSON-RPC, tungstenite its WebSocket frames.
const PAYLOAD_LOGGERS: [&str; 3] = ["rmcp", "tungstenite", "tokio_tungstenite"];

/// Logs to stderr at the `AIC_LOG` filter (default `info`). Whatever
/// `AIC_LOG` says, the payload loggers above only get their errors through.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into());
    let no_payloads = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::ERROR || !PAYLOAD_LOGGERS.iter().any(|t| meta.target().starts_with(t))
    });
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(no_payloads);
    tracing_subscriber::registry().with(filter).with(stderr).init();
}
