//! Wire types shared by both ends of every link, and session codes.

pub mod agent;
mod code;
pub mod control;
pub mod files;
pub mod jobs;

pub use code::{ALPHABET, CodeError, SessionCode};
