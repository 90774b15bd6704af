//! aic: run shell commands on machines you own from AI clients, through a
//! self-hosted relay, with the machine's operator in charge.
//!
//! Crate map:
//! - [`relay`]: HTTP server: REST API, MCP, agent WebSocket, store, access rules
//! - [`daemon`]: the agent: relay link, command lifecycle (admission, approval
//!   queue, traffic ring), executor, control socket, state file
//! - [`tui`]: the operator's console: control-socket client, CLI, sanitising
//! - [`protocol`]: wire types (relay <-> daemon, daemon <-> console) and session codes
//! - [`clock`]: wall-clock milliseconds, as the wire carries them
//! - [`config_file`]: config files: keys checked, errors naming file, key and expectation
//! - [`doctor`]: `doctor` reports: ok / problem lines, private-file and clock checks
//! - [`generate`]: shell completions and man pages from the clap definitions
//! - [`duration`]: human durations (90s, 1h) for flags
//! - [`logging`]: stderr logging that never carries command payloads
//! - [`shutdown`]: SIGINT/SIGTERM as a cancellation token for the binaries
//! - [`suggest`]: argument parsing that suggests the subcommand a typo meant
//!
//! `relay` and `daemon` never import each other; `tui` imports only
//! `protocol` and the small shared modules.
// Denied everywhere but `daemon::contain`, which runs a few system calls
// between fork and exec (`pre_exec`), where nothing else may run.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod config_file;
pub mod daemon;
pub mod doctor;
pub mod duration;
pub mod generate;
pub mod logging;
pub mod protocol;
pub mod relay;
pub mod shutdown;
pub mod suggest;
pub mod tui;

/// What `--version` shows: the crate version and the git revision it was built
/// from (`unknown` when built outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("AIC_GIT_REVISION"), ")");
