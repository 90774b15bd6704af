//! The operator's console: a control-socket client, the command line built
//! on it, and text sanitising for everything drawn from untrusted sources.

pub mod cli;
pub mod client;
pub mod sanitize;
