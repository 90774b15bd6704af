//! Logging for the binaries: stderr, filtered by `AIC_LOG`, and never the
//! payloads that some libraries log at their lower levels.

use tracing_subscriber::prelude::*;

/// Libraries that log whole messages (command text, output, codes) below
/// error level: rmcp its JSON-RPC, tungstenite its WebSocket frames.
const PAYLOAD_LOGGERS: [&str; 3] = ["rmcp", "tungstenite", "tokio_tungstenite"];

/// Whether log lines may carry colour codes: only on a terminal (a journal
/// or a file stores them as binary), and never with `NO_COLOR` set
/// (<https://no-color.org>: any non-empty value).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs to stderr at the `AIC_LOG` filter (default `info`). Whatever
/// `AIC_LOG` says, the payload loggers above only get their errors through.
pub fn init() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into());
    let no_payloads = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::ERROR || !PAYLOAD_LOGGERS.iter().any(|t| meta.target().starts_with(t))
    });
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(no_payloads);
    tracing_subscriber::registry().with(filter).with(stderr).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
