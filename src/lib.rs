//! aic: run shell commands on machines you own from AI clients, through a
//! self-hosted relay, with the machine's operator in charge.
//!
//! Crate map:
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config_file; // config files: keys checked, errors naming file, key and expectation
pub mod daemon; // the agent: relay link, executor, approval queue, control socket, state file
pub mod doctor; // `doctor` reports: ok / problem lines, private-file and clock checks
pub mod duration; // human durations (90s, 1h) for flags
pub mod generate; // shell completions and man pages from the clap definitions
pub mod logging; // stderr logging that never carries command payloads
pub mod protocol; // wire types (relay <-> daemon) and session codes
pub mod relay; // HTTP server: REST API, agent WebSocket, store, access rules
pub mod shutdown;
pub mod tui; // the operator's console: control-socket client, CLI, sanitising // SIGINT/SIGTERM as a cancellation token for the binaries

/// What `--version` shows: the crate version and the git revision it was built
/// from (`unknown` when built outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("AIC_GIT_REVISION"), ")");
