//! Logging for the binaries: stderr, filtered by `AIC_LOG`, and never the
//! payloads that some libraries log at their lower levels.

use tracing_subscriber::prelude::*;

/// Libraries that log whole messages (command text, output, codes) below
/// error level: rmcp its JSON-RPC, tungstenite its WebSocket frames.
const PAYLOAD_LOGGERS: [&str; 3] = ["rmcp", "tungstenite", "tokio_tungstenite"];

/// The filter without `--log-level` or `AIC_LOG`: info, but PostgreSQL's
/// notices (sqlx logs them at info) only from warnings up, since each relay
/// start draws "relation … already exists, skipping" for every table.
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Whether log lines may carry colour codes: only on a terminal (a journal
/// or a file stores them as binary), and never with `NO_COLOR` set
/// (<https://no-color.org>: any non-empty value).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Where the binaries log and how much: `--log-dir`, `--log-keep`, `--log-level`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log to daily files NAME.YYYY-MM-DD.log in this directory instead of stderr (created 0750 if missing).
    #[arg(long, env = "AIC_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<std::path::PathBuf>,

    /// Daily log files kept in --log-dir; older ones are deleted as days roll over.
    #[arg(long, env = "AIC_LOG_KEEP", value_name = "DAYS", default_value_t = 14)]
    pub log_keep: usize,

    /// What to log, e.g. info, debug or aic=debug,info [default: AIC_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Logs to stderr at `--log-level` when given, else the `AIC_LOG` filter
/// (default info, PostgreSQL notices only from warnings), or with `--log-dir` to daily files named after `name`.
/// Whatever the filter says, the payload loggers above only get their errors through.
pub fn init_with(name: &str, args: &LogArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::IsTerminal;
    let filter = match &args.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}; write e.g. info, debug or aic=debug"))?,
        None => tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into()),
    };
    let no_payloads = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::ERROR || !PAYLOAD_LOGGERS.iter().any(|t| meta.target().starts_with(t))
    });
    let Some(dir) = &args.log_dir else {
        let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
        let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
        tracing_subscriber::registry().with(filter).with(stderr.with_filter(no_payloads)).init();
        return Ok(());
    };
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
        .create(dir)
        .with_context(|| format!("creating the log dir {}", dir.display()))?;
    let files = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(name)
        .filename_suffix("log")
        .max_log_files(args.log_keep.max(1))
        .build(dir)
        .with_context(|| format!("opening a log file in {}", dir.display()))?;
    let layer = tracing_subscriber::fmt::layer().with_writer(files).with_ansi(false);
    tracing_subscriber::registry().with(filter).with(layer.with_filter(no_payloads)).init();
    Ok(())
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
