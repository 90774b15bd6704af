//! A job's files in its directory under the state dir: the record the daemon
//! writes when the job is asked for (`job.json`), the supervisor's process
//! ids (`pid`), how it ended (`end.json`, written once, atomically, by the
//! supervisor or by the daemon for a job that never ran) and the operator's
//! or caller's cancel (`cancel`). Directories are 0700, files 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::protocol::agent::Refusal;
use crate::protocol::jobs::JobKind;

/// The static part of a job, written once when it is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The job's id (also its directory's name).
    pub id: Uuid,
    /// Job or keyed exec.
    pub kind: JobKind,
    /// Shell text, run by `sh -c`.
    pub command: String,
    /// Working directory; the supervisor's own when absent.
    pub cwd: Option<String>,
    /// Kill the process group after this long.
    pub timeout_ms: u64,
    /// Run under a pseudo-terminal.
    pub pty: bool,
    /// Spool bytes kept at most.
    pub cap: u64,
    /// Who may see it (the relay's word for the caller).
    pub owner: String,
    /// Who asked, as the operator is shown.
    pub who: String,
    /// The caller's address as the relay saw it.
    pub ip: String,
    /// SHA-256 of the caller's idempotency key (hex), never the key itself.
    pub key_hash: Option<String>,
    /// When it was asked for (Unix ms).
    pub created_ms: u64,
}

/// How a job ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// When (Unix ms).
    pub ended_ms: u64,
    /// When its process started (Unix ms), if it did.
    pub started_ms: Option<u64>,
    /// Exit status (128 + N when killed by signal N); `None` when it never ran.
    pub exit_code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// An exec's output passed the cap and was cut.
    pub truncated: bool,
    /// Cancelled by its caller or the operator.
    pub cancelled: bool,
    /// Refused before it ran, and why.
    pub refusal: Option<Refusal>,
    /// Refused or lost: what happened, in words.
    pub message: Option<String>,
}

/// What the supervisor writes just before it starts its command (`group`
/// 0: not yet known) and again once the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    /// The supervisor process.
    pub supervisor: i32,
    /// The command's process group (= its `sh`'s pid); 0 until it runs.
    pub group: i32,
    /// When it started (Unix ms).
    pub started_ms: u64,
}

/// `job.json`.
pub const RECORD: &str = "job.json";
/// `end.json`.
pub const END: &str = "end.json";
/// `pid`.
pub const PIDS: &str = "pid";
/// `cancel`: present once the job was cancelled.
pub const CANCEL: &str = "cancel";

/// Makes `dir` (and its parents) with mode 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for appending, created 0600.
pub fn private_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Writes `value` as JSON to `dir/name` atomically: a 0600 temp file,
/// fsync, rename. A reader sees the old file or the whole new one.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Reads `dir/name` as JSON; `None` when it is absent or unreadable.
pub fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether process `pid` exists and has not exited (a zombie nobody reaped,
/// as under a container's init that does not reap, counts as gone).
pub fn alive(pid: i32) -> bool {
    let exists = rustix::process::Pid::from_raw(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

/// Sends `signal` to process group `group`; a group that is gone is fine.
pub fn signal_group(group: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(group) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether any process is left in group `group`.
pub fn group_alive(group: i32) -> bool {
    rustix::process::Pid::from_raw(group).is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok())
}
