//! What the binaries share: SIGINT and SIGTERM as a cancelled token, and
//! running `main` with errors reported as one line.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Runs a binary's async `main` on a multi-threaded runtime; an error is
/// printed as one line (`NAME: what went wrong: why`) and exits with 1.
pub fn run_main(name: &str, main: impl std::future::Future<Output = anyhow::Result<()>>) -> std::process::ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!(e).context("cannot start the async runtime"))
        .and_then(|runtime| runtime.block_on(main));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
