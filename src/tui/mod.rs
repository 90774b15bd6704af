//! The operator's console: a control-socket client, the command line built
//! on it, text sanitising for everything drawn from untrusted sources, and
//! the terminal console (app state, keys, drawing, themes, main loop).

pub mod app; // console state and how daemon news changes it
pub mod cli; // `aic-console` subcommands
pub mod client; // the control-socket client
pub mod config; // the console's settings file
pub mod event; // the one event enum of the main loop, and the app's actions
pub mod keys; // what each key does
pub mod run; // the main loop and the real terminal's tasks
pub mod sanitize; // untrusted text made safe to draw
pub mod socket; // the subscription task and per-request connections
pub mod term; // raw mode, alternate screen, restore on drop and panic, OSC 52
pub mod theme; // colour themes from TOML
pub mod ui; // drawing from &App
