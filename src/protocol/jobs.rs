//! Detached jobs on the wire: what the relay asks a daemon about them
//! ([`JobCall`], inside [`super::agent::RelayMessage::Job`]), what the daemon
//! answers ([`JobReply`]), and the job as callers and consoles see it
//! ([`JobInfo`]).
//!
//! Every call but `start` names the job's owner as the relay identified the
//! caller; the daemon answers only about jobs that owner started, so one
//! account never sees another's jobs.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::agent::ExecRequest;

/// Bytes of output one `output` call returns at most.
pub const OUTPUT_LIMIT: u64 = 256 * 1024;

/// What a request under an idempotency key runs as.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A job: output of both streams in one spool, the oldest dropped past the cap.
    #[default]
    Job,
    /// A `POST /api/v1/exec` sent with an idempotency key: stdout and stderr
    /// spooled apart, cut (and the command killed) at the cap, kept only as
    /// long as its key is remembered.
    Exec,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the operator's approval.
    Pending,
    /// Running.
    Running,
    /// Exited by itself (whatever its exit code).
    Exited,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled by its caller or the operator.
    Cancelled,
    /// Refused before it ran (denied, approval timed out, could not start).
    Refused,
    /// Its supervisor vanished without recording an end (the machine rebooted, say).
    Lost,
}

impl JobState {
    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// A job as its caller and the operator see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// The job's id.
    #[schema(value_type = String)]
    #[schemars(with = "String")]
    pub id: Uuid,
    /// Where it is in its life.
    pub state: JobState,
    /// A job, or an exec run under an idempotency key.
    #[serde(default)]
    pub kind: JobKind,
    /// The shell text.
    pub command: String,
    /// Its working directory, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Who started it, as the operator is shown (masked email or `anonymous`).
    pub who: String,
    /// When it was asked for (Unix ms).
    pub created_ms: u64,
    /// When it ended (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Run time so far, or in all once it ended.
    pub duration_ms: u64,
    /// Exit status once it exited (128 + N when killed by signal N).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Output bytes it wrote in all (stdout and stderr).
    pub output_bytes: u64,
    /// Oldest output bytes dropped to keep the spool under the cap: output
    /// starts at this offset now. The job kept running.
    pub dropped_bytes: u64,
    /// Output passed the cap of an exec and was cut; the command was killed.
    pub truncated: bool,
    /// Why it was refused, for programs (`denied`, `approval_timeout`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    #[schemars(with = "Option<String>")]
    pub refusal: Option<super::agent::Refusal>,
    /// Why it was refused or lost, in words; for a job that ran, that part
    /// of its output was lost (a full disk) and from which byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the relay asks a daemon about jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum JobCall {
    /// Start a job (or, under a key seen before, answer with the first one).
    Start {
        /// The command; its `id` becomes the job's.
        request: ExecRequest,
        /// Who may see the job later.
        owner: String,
        /// The caller's idempotency key, if any.
        key: Option<String>,
        /// Job or keyed exec.
        kind: JobKind,
    },
    /// The owner's jobs on this machine.
    List {
        /// Whose.
        owner: String,
    },
    /// One job.
    Status {
        /// Whose.
        owner: String,
        /// Which.
        id: Uuid,
    },
    /// Output from `offset`, waiting up to `wait_ms` for some when there is none yet.
    Output {
        /// Whose.
        owner: String,
        /// Which.
        id: Uuid,
        /// The first byte wanted (bytes count from the job's start).
        offset: u64,
        /// Most bytes wanted.
        limit: u64,
        /// How long to wait for output past `offset` (or the end) before answering empty.
        wait_ms: u64,
        /// Also standard error from this offset (an exec's spool keeps it apart).
        #[serde(default)]
        stderr_offset: Option<u64>,
    },
    /// Cancel a job: SIGTERM to its process group, SIGKILL after a grace.
    Cancel {
        /// Whose.
        owner: String,
        /// Which.
        id: Uuid,
    },
}

/// Why a daemon did not do what a [`JobCall`] asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRefusal {
    /// No such job for this owner.
    NotFound,
    /// The idempotency key was used for another command.
    Conflict,
    /// The machine already runs its maximum of jobs.
    Busy,
    /// The operator disabled remote commands.
    Disabled,
    /// The request is unusable (a missing `cwd`, say).
    BadRequest,
    /// The daemon could not do it (a full disk, say).
    Failed,
}

/// A daemon's answer to a [`JobCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum JobReply {
    /// To `start`: the job; `existing` when its key named an earlier one.
    Started {
        /// The job now.
        job: JobInfo,
        /// The key was seen before: this is the first request's job.
        existing: bool,
    },
    /// To `list`, newest first.
    List {
        /// The owner's jobs.
        jobs: Vec<JobInfo>,
    },
    /// To `status` and `cancel`.
    Job {
        /// The job now.
        job: JobInfo,
    },
    /// To `output`.
    Output {
        /// The job now.
        job: JobInfo,
        /// Where `data` starts: past `offset` when older output was dropped.
        offset: u64,
        /// The bytes, base64 in JSON.
        #[serde(with = "super::agent::base64_bytes")]
        data: Vec<u8>,
        /// Standard error from `stderr_offset`, when asked for.
        #[serde(default, with = "super::agent::base64_opt")]
        stderr: Option<Vec<u8>>,
    },
    /// It could not be done.
    Refused {
        /// Why, for the relay's program.
        reason: JobRefusal,
        /// What the caller should do, in words.
        message: String,
    },
}
