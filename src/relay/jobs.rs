//! Jobs through the relay: the caller's checks, the call to the machine's
//! daemon (which keeps the jobs, their output and the idempotency keys), and
//! the answers REST and MCP share. A machine held by another relay of a
//! cluster gets its calls through that relay. Also `POST /api/v1/exec` under an
//! `Idempotency-Key`: the command runs as a job the daemon remembers by the
//! key, so a retry (even through a restarted relay) gets the first request's
//! result instead of running it again. The relay stores nothing of a job.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::access::{self, Caller, Purpose};
use super::cluster::{Cluster, JobError};
use super::error::{ApiError, Reason};
use super::exec::{self, ExecParams, Outcome};
use super::hub::AgentConn;
use super::keys::Digest;
use crate::protocol::agent::{ExitStatus, Refusal};
use crate::protocol::jobs::{JobCall, JobInfo, JobKind, JobRefusal, JobReply, JobState, OUTPUT_LIMIT};

/// A job's timeout when the caller gives none.
pub const JOB_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest timeout a job may ask for.
pub const JOB_MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long the relay waits for a daemon's answer (on top of any wait the call asks for).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one `output` call waits for new output while following a job.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(10);
/// Longest idempotency key accepted, in bytes.
const MAX_KEY: usize = 255;

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"code": "AIC-7K3P-WX9M-RTBN", "command": "make -j8 2>&1"}))]
pub struct JobParams {
    /// Session code (or, for an account, an alias).
    pub code: String,
    /// Shell text, run with `sh -c`.
    pub command: String,
    /// Working directory on the machine.
    #[serde(default)]
    #[schema(nullable = false)]
    pub cwd: Option<String>,
    /// Kill the job after this many milliseconds (1 000 – 86 400 000; default 3 600 000).
    #[serde(default)]
    #[schema(minimum = 1000, maximum = 86400000, default = 3600000, nullable = false)]
    pub timeout_ms: Option<u64>,
    /// Run under a pseudo-terminal, stdout and stderr merged.
    #[serde(default)]
    pub pty: bool,
}

/// The answer to a job start.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStarted {
    /// True.
    pub ok: bool,
    /// The job's id, for status, output and cancel.
    #[schema(value_type = String)]
    #[schemars(with = "String")]
    pub job_id: uuid::Uuid,
    /// `pending` (waiting for the operator's approval) or `running`, or where
    /// the first request's job is now when `existing`.
    pub state: JobState,
    /// The Idempotency-Key named a job started before: no new one was started.
    pub existing: bool,
    /// The job.
    pub job: JobInfo,
}

/// One job.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct JobBody {
    /// True.
    pub ok: bool,
    /// The job.
    pub job: JobInfo,
}

/// The caller's jobs on a machine.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct JobList {
    /// True.
    pub ok: bool,
    /// Newest first.
    pub jobs: Vec<JobInfo>,
}

/// A page of a job's output.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOutput {
    /// True.
    pub ok: bool,
    /// Where `text` starts; past the asked offset when older output was dropped (see `job.droppedBytes`).
    pub offset: u64,
    /// Where the next page starts.
    pub next_offset: u64,
    /// The bytes as text (invalid UTF-8 replaced).
    pub text: String,
    /// The bytes exactly, present only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// The job has ended and this page reaches the end of its output.
    pub done: bool,
    /// The job.
    pub job: JobInfo,
}

/// How job calls reach a machine's daemon.
pub enum Link {
    /// Over its link, held by this relay.
    Here(Arc<AgentConn>),
    /// Through the cluster to the relay holding its link, found by its code's keyed hash.
    Cluster(Arc<Cluster>, Digest),
}

/// A machine a caller reached, and the caller as the daemon knows job owners.
pub struct Reached {
    /// The way to the daemon.
    pub link: Link,
    /// Whose jobs: the account, or for anonymous callers the holder of this code.
    pub owner: String,
}

/// Admits `caller` to `code` and names it as a job owner.
pub async fn reach(state: &AppState, caller: &Caller, code: &str, purpose: Purpose) -> Result<Reached, ApiError> {
    let target = access::admit(state, caller, code, purpose).await?;
    let owner = match &caller.account {
        Some(account) => format!("account:{}", account.id),
        // A code reset makes a new code with a new time: its holder is another.
        None => format!("anonymous:{}", target.code_created_ms),
    };
    let link = match (target.conn, &state.cluster) {
        (Some(conn), _) => Link::Here(conn),
        (None, Some(cluster)) => Link::Cluster(Arc::clone(cluster), target.code_hash),
        (None, None) => return Err(ApiError::agent_offline()),
    };
    Ok(Reached { link, owner })
}

/// Asks the daemon; its refusals become API errors.
pub async fn call(link: &Link, call: JobCall, wait: Duration) -> Result<JobReply, ApiError> {
    let reply = match link {
        Link::Here(conn) => conn.job(call, CALL_TIMEOUT + wait).await.ok_or_else(ApiError::agent_offline)?,
        Link::Cluster(cluster, code_hash) => {
            cluster.job(code_hash, call, CALL_TIMEOUT + wait).await.map_err(carried)?
        }
    };
    match reply {
        JobReply::Refused { reason, message } => Err(refusal(reason, &message)),
        reply => Ok(reply),
    }
}

/// A job call that did not come back through the cluster, as an API error.
fn carried(e: JobError) -> ApiError {
    let (answer, bytes, limit) = match e {
        JobError::Offline => return ApiError::agent_offline(),
        JobError::TooLarge { answer, bytes, limit } => (answer, bytes, limit),
    };
    let what = if answer { "the machine's answer" } else { "this request" };
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Reason::TooLarge,
        format!(
            "The machine is connected to another relay of this cluster, and {what} is {bytes} bytes, over the \
             {limit} bytes NATS carries between relays (its max_payload). Send a shorter command, or ask the \
             relay's operator to raise max_payload in nats-server's configuration."
        ),
    )
}

fn refusal(reason: JobRefusal, message: &str) -> ApiError {
    let message = super::error::machine_text(message, super::error::MAX_MACHINE_TEXT);
    let (status, reason) = match reason {
        JobRefusal::NotFound => (StatusCode::NOT_FOUND, Reason::NotFound),
        JobRefusal::Conflict => (StatusCode::CONFLICT, Reason::Conflict),
        JobRefusal::Busy => {
            let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited, message);
            err.retry_after = Some(30);
            return err;
        }
        JobRefusal::Disabled => (StatusCode::FORBIDDEN, Reason::Forbidden),
        JobRefusal::BadRequest => (StatusCode::BAD_REQUEST, Reason::BadRequest),
        JobRefusal::Failed => (StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal),
    };
    ApiError::new(status, reason, message)
}

/// The `Idempotency-Key` header, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().map(str::trim).unwrap_or_default();
    check_key(key).map(Some)
}

/// An idempotency key from a header or a tool argument: 1 to 255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<String, ApiError> {
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "the idempotency key must be 1 to {MAX_KEY} visible ASCII characters (a UUID is a good key); \
             send the same key again only to retry the same request"
        )));
    }
    Ok(key.to_owned())
}

/// Starts a job (or finds the one `key` started).
pub async fn start(
    state: &AppState,
    caller: &Caller,
    params: &JobParams,
    key: Option<String>,
) -> Result<JobStarted, ApiError> {
    let timeout = params.timeout_ms.map_or(JOB_DEFAULT_TIMEOUT, Duration::from_millis);
    if !(exec::MIN_TIMEOUT..=JOB_MAX_TIMEOUT).contains(&timeout) {
        return Err(ApiError::bad_request(format!(
            "timeout_ms of a job must be from {} to {} milliseconds (default {}); send a value in that range, or leave it out.",
            exec::MIN_TIMEOUT.as_millis(),
            JOB_MAX_TIMEOUT.as_millis(),
            JOB_DEFAULT_TIMEOUT.as_millis()
        )));
    }
    let as_exec = ExecParams {
        code: params.code.clone(),
        command: params.command.clone(),
        cwd: params.cwd.clone(),
        timeout_ms: None,
        pty: params.pty,
    };
    let mut request = exec::request(&as_exec, caller.requester(&state.keys), state.config.max_output)?;
    request.timeout_ms = timeout.as_millis() as u64;
    let reached = reach(state, caller, &params.code, Purpose::Use).await?;
    let start = JobCall::Start { request, owner: reached.owner, key, kind: JobKind::Job };
    match call(&reached.link, start, Duration::ZERO).await? {
        JobReply::Started { job, existing } => {
            Ok(JobStarted { ok: true, job_id: job.id, state: job.state, existing, job })
        }
        _ => Err(unexpected()),
    }
}

/// An answer of the wrong kind from a daemon.
pub fn unexpected() -> ApiError {
    tracing::warn!("a daemon answered a job call with a reply of another kind");
    ApiError::internal()
}

/// The caller's jobs on the machine.
pub async fn list(state: &AppState, caller: &Caller, code: &str) -> Result<JobList, ApiError> {
    let reached = reach(state, caller, code, Purpose::Look).await?;
    match call(&reached.link, JobCall::List { owner: reached.owner }, Duration::ZERO).await? {
        JobReply::List { jobs } => Ok(JobList { ok: true, jobs }),
        _ => Err(unexpected()),
    }
}

/// One of the caller's jobs (`cancel`: cancelled first).
pub async fn status(
    state: &AppState,
    caller: &Caller,
    code: &str,
    id: &str,
    cancel: bool,
) -> Result<JobBody, ApiError> {
    let id = job_id(id)?;
    let reached = reach(state, caller, code, Purpose::Look).await?;
    let owner = reached.owner;
    let asked = if cancel { JobCall::Cancel { owner, id } } else { JobCall::Status { owner, id } };
    match call(&reached.link, asked, Duration::ZERO).await? {
        JobReply::Job { job } => Ok(JobBody { ok: true, job }),
        _ => Err(unexpected()),
    }
}

/// A job id from a path or an argument.
pub fn job_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    id.trim().parse().map_err(|_| {
        ApiError::bad_request("the job id is not one: send the jobId a job start returned (a UUID)".to_owned())
    })
}

/// One page of output from `offset`, waiting up to `wait` for some.
pub async fn page(
    reached: &Reached,
    id: uuid::Uuid,
    offset: u64,
    limit: u64,
    wait: Duration,
) -> Result<JobOutput, ApiError> {
    let limit = limit.clamp(1, OUTPUT_LIMIT);
    let asked = JobCall::Output {
        owner: reached.owner.clone(),
        id,
        offset,
        limit,
        wait_ms: wait.as_millis() as u64,
        stderr_offset: None,
    };
    let JobReply::Output { job, offset, data, .. } = call(&reached.link, asked, wait).await? else {
        return Err(unexpected());
    };
    let next_offset = offset + data.len() as u64;
    let done = job.state.is_final() && next_offset >= job.output_bytes;
    let (text, base64) = exec::text_and_exact(&data);
    Ok(JobOutput { ok: true, offset, next_offset, text, base64, done, job })
}

/// Starts `params` as an exec the daemon remembers under `key`, or finds the
/// one the key started: the machine and the job to follow.
pub async fn exec_keyed(
    state: &AppState,
    caller: &Caller,
    params: &ExecParams,
    key: String,
) -> Result<(Reached, JobInfo), ApiError> {
    let request = exec::request(params, caller.requester(&state.keys), state.config.max_output)?;
    let reached = reach(state, caller, &params.code, Purpose::Use).await?;
    let start = JobCall::Start { request, owner: reached.owner.clone(), key: Some(key), kind: JobKind::Exec };
    match call(&reached.link, start, Duration::ZERO).await? {
        JobReply::Started { job, .. } => Ok((reached, job)),
        _ => Err(unexpected()),
    }
}

/// A keyed exec being followed: what was read so far.
pub struct Follow {
    /// The machine.
    pub reached: Reached,
    /// The job.
    pub id: uuid::Uuid,
    /// Standard output and error so far.
    pub outcome: Outcome,
}

impl Follow {
    /// Follows `job` from its start.
    pub fn new(reached: Reached, job: &JobInfo) -> Self {
        Self { reached, id: job.id, outcome: Outcome::default() }
    }

    /// New output (stdout, stderr), and the job once it has ended and all
    /// its output is read. A refused or lost exec is an error.
    pub async fn step(&mut self) -> Result<(Vec<u8>, Vec<u8>, Option<JobInfo>), ApiError> {
        let asked = JobCall::Output {
            owner: self.reached.owner.clone(),
            id: self.id,
            offset: self.outcome.stdout.len() as u64,
            limit: OUTPUT_LIMIT,
            wait_ms: FOLLOW_WAIT.as_millis() as u64,
            stderr_offset: Some(self.outcome.stderr.len() as u64),
        };
        let JobReply::Output { job, data, stderr, .. } = call(&self.reached.link, asked, FOLLOW_WAIT).await? else {
            return Err(unexpected());
        };
        let stderr = stderr.unwrap_or_default();
        self.outcome.stdout.extend_from_slice(&data);
        self.outcome.stderr.extend_from_slice(&stderr);
        let ended = job.state.is_final() && data.is_empty() && stderr.is_empty();
        if !ended {
            return Ok((data, stderr, None));
        }
        self.outcome.exit = ended_exit(&job)?;
        Ok((data, stderr, Some(job)))
    }

    /// Follows to the end.
    pub async fn collect(mut self) -> Result<Outcome, ApiError> {
        while self.step().await?.2.is_none() {}
        Ok(self.outcome)
    }
}

/// How an ended exec is reported: its exit, or the refusal it met.
fn ended_exit(job: &JobInfo) -> Result<ExitStatus, ApiError> {
    let message = job.message.clone().unwrap_or_default();
    match job.state {
        JobState::Refused => Err(ApiError::from_refusal(job.refusal.unwrap_or(Refusal::SpawnFailed), message)),
        JobState::Lost => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Internal,
            format!("the command's end was not recorded on the machine ({message}); check there before retrying"),
        )),
        _ => Ok(ExitStatus {
            exit_code: job.exit_code.unwrap_or(-1),
            duration_ms: job.duration_ms,
            truncated: job.truncated,
            timed_out: job.state == JobState::TimedOut,
        }),
    }
}
