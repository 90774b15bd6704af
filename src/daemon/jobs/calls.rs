//! The relay's calls about jobs, answered: start (through the same
//! admission as a command: mode, the approval queue, the traffic ring, and
//! the machine's cap on running jobs), list, status, output and cancel, each
//! only for the owner that started the job. Idempotency keys are remembered
//! here, in the jobs' records, so a relay restart forgets none.

use std::time::Duration;

use sha2::Digest;

use super::record::{End, Record};
use super::{Jobs, runner};
use crate::clock::now_ms;
use crate::daemon::commands::Commands;
use crate::protocol::agent::{ExecRequest, Refusal};
use crate::protocol::control::{CommandState, Decision, Mode};
use crate::protocol::jobs::{JobCall, JobInfo, JobKind, JobRefusal, JobReply, JobState, OUTPUT_LIMIT};

/// Longest a caller's `output` call waits for new output.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting `output` call looks at the spool again.
const OUTPUT_POLL: Duration = Duration::from_millis(100);

/// Answers one call.
pub async fn answer(commands: &Commands, call: JobCall) -> JobReply {
    let jobs = commands.jobs();
    match call {
        JobCall::Start { request, owner, key, kind } => start(commands, request, owner, key, kind).await,
        JobCall::List { owner } => JobReply::List { jobs: jobs.list(Some(&owner)) },
        JobCall::Status { owner, id } => match jobs.record(id, Some(&owner)) {
            Some(r) => JobReply::Job { job: jobs.info(&r) },
            None => not_found(id),
        },
        JobCall::Output { owner, id, offset, limit, wait_ms, stderr_offset } => {
            let Some(r) = jobs.record(id, Some(&owner)) else { return not_found(id) };
            let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
            output(jobs, &r, (offset, stderr_offset), limit.min(OUTPUT_LIMIT), wait).await
        }
        JobCall::Cancel { owner, id } => match jobs.record(id, Some(&owner)) {
            Some(r) => {
                jobs.cancel(id);
                JobReply::Job { job: jobs.info(&r) }
            }
            None => not_found(id),
        },
    }
}

fn not_found(id: uuid::Uuid) -> JobReply {
    refused(
        JobRefusal::NotFound,
        format!(
            "no job {id} of yours on this machine: check the id (remote_job_list / GET /api/v1/jobs/{{code}}); \
             ended jobs are deleted after the machine's retention period"
        ),
    )
}

fn refused(reason: JobRefusal, message: impl Into<String>) -> JobReply {
    JobReply::Refused { reason, message: message.into() }
}

/// SHA-256 of an idempotency key, hex: the key itself is never written.
fn key_hash(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a job, or answers with the one its key already started.
async fn start(
    commands: &Commands,
    request: ExecRequest,
    owner: String,
    key: Option<String>,
    kind: JobKind,
) -> JobReply {
    let jobs = commands.jobs();
    let key_hash = key.as_deref().map(key_hash);
    if let Some(hash) = &key_hash
        && let Some(first) = jobs.keyed(&owner, hash)
    {
        if first.command != request.command {
            return refused(
                JobRefusal::Conflict,
                "this Idempotency-Key was already used within the last 10 minutes for another command; \
                 send a new key for a new command",
            );
        }
        return JobReply::Started { job: jobs.info(&first), existing: true };
    }
    if let Err((reason, message)) = admissible(commands, &request) {
        return refused(reason, message);
    }
    let record = Record {
        id: request.id,
        kind,
        command: request.command.clone(),
        cwd: request.cwd.clone(),
        timeout_ms: request.timeout_ms,
        pty: request.pty,
        cap: if kind == JobKind::Exec { request.max_output } else { jobs.settings().cap },
        owner,
        who: request.requester.shown(),
        ip: request.requester.ip.clone(),
        key_hash,
        created_ms: now_ms(),
    };
    if let Err(e) = jobs.create(record.clone()) {
        return refused(JobRefusal::Failed, format!("the daemon could not write the job's record: {e}"));
    }
    let supervised = commands.daemon().mode() == Mode::Supervised;
    commands.job_arrived(&request, if supervised { CommandState::Pending } else { CommandState::Running });
    if supervised {
        let waiting = jobs.wait_for_approval(record.id);
        let commands = commands.clone();
        tokio::spawn(async move { approve_then_launch(&commands, request, waiting).await });
    } else {
        launch(commands, &record).await;
    }
    JobReply::Started { job: jobs.info(&record), existing: false }
}

/// The mode and the machine's cap on jobs; the directory must exist.
fn admissible(commands: &Commands, request: &ExecRequest) -> Result<(), (JobRefusal, String)> {
    let jobs = commands.jobs();
    if commands.daemon().mode() == Mode::Disabled {
        let message = "this machine's operator has disabled remote commands (aic-console mode disabled)";
        return Err((JobRefusal::Disabled, message.into()));
    }
    let max = jobs.settings().max_running;
    if jobs.active() >= max {
        let message =
            format!("this machine already runs {max} jobs, as many as its operator allows; retry when one has ended");
        return Err((JobRefusal::Busy, message));
    }
    if let Some(cwd) = &request.cwd
        && !std::path::Path::new(cwd).is_dir()
    {
        let message =
            format!("cwd {cwd:?} does not exist on this machine (or is not a directory); pick an existing directory");
        return Err((JobRefusal::BadRequest, message));
    }
    Ok(())
}

/// Waits for the operator, then starts the job or records the refusal.
async fn approve_then_launch(commands: &Commands, request: ExecRequest, waiting: tokio_util::sync::CancellationToken) {
    let jobs = commands.jobs();
    let decision = commands.job_approval(&request, &waiting).await;
    if decision == Decision::Approved {
        jobs.set_starting(request.id, true);
    }
    jobs.approval_over(request.id);
    let (refusal, message) = match decision {
        Decision::Approved => {
            if let Some(record) = jobs.record(request.id, None) {
                launch(commands, &record).await;
            }
            return;
        }
        Decision::Withdrawn => {
            jobs.end_unrun(request.id, End { cancelled: true, ..End::default() });
            return commands.job_ended(&jobs.info_of(request.id));
        }
        Decision::TimedOut => (Refusal::ApprovalTimeout, "the machine's operator did not answer in time"),
        Decision::Denied => (Refusal::Denied, "the machine's operator denied this job"),
    };
    jobs.end_unrun(request.id, End { refusal: Some(refusal), message: Some(message.into()), ..End::default() });
    commands.job_ended(&jobs.info_of(request.id));
}

/// Starts the supervisor; a failure is recorded as the job's end.
async fn launch(commands: &Commands, record: &Record) {
    let jobs = commands.jobs();
    let dir = jobs.dir(record.id);
    jobs.set_starting(record.id, true);
    let started = match &jobs.settings().runner {
        Some(runner) => runner::launch(runner, &dir, record.id).await,
        None => Err(anyhow::anyhow!("the daemon cannot find its own program to supervise jobs with")),
    };
    if let Err(e) = started {
        tracing::warn!("job {} could not be started: {e:#}", record.id);
        let message = format!("the job could not be started: {e:#}");
        jobs.end_unrun(
            record.id,
            End { refusal: Some(Refusal::SpawnFailed), message: Some(message), ..End::default() },
        );
    }
    jobs.set_starting(record.id, false);
    commands.job_ended_or_running(&jobs.info(record));
}

/// Output from the offsets, waiting up to `wait` for some (or the end).
async fn output(
    jobs: &Jobs,
    r: &Record,
    (offset, err_offset): (u64, Option<u64>),
    limit: u64,
    wait: Duration,
) -> JobReply {
    let dir = jobs.dir(r.id);
    let until = tokio::time::Instant::now() + wait;
    loop {
        // The state first: output read after it is complete when it is final.
        let job = jobs.info(r);
        let (start, data) = super::spool::read(&dir, offset, limit);
        let stderr = err_offset.map(|o| super::spool::read_err(&dir, o, limit));
        let some = !data.is_empty() || stderr.as_ref().is_some_and(|e| !e.is_empty());
        if some || job.state.is_final() || tokio::time::Instant::now() >= until {
            return JobReply::Output { job, offset: start, data, stderr };
        }
        tokio::time::sleep(OUTPUT_POLL).await;
    }
}

impl Jobs {
    /// Job `id` as callers see it (a default for one already deleted).
    pub fn info_of(&self, id: uuid::Uuid) -> JobInfo {
        match self.record(id, None) {
            Some(r) => self.info(&r),
            None => JobInfo {
                id,
                state: JobState::Lost,
                kind: JobKind::Job,
                command: String::new(),
                cwd: None,
                who: String::new(),
                created_ms: 0,
                ended_ms: None,
                duration_ms: 0,
                exit_code: None,
                output_bytes: 0,
                dropped_bytes: 0,
                truncated: false,
                refusal: None,
                message: None,
            },
        }
    }
}

/// Every [`super::SWEEP_INTERVAL`] until `shutdown`: reports jobs that
/// ended to the traffic ring and consoles, and deletes those past retention.
pub async fn sweep(commands: Commands, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let jobs = commands.jobs().clone();
        let ended = tokio::task::spawn_blocking(move || jobs.sweep()).await.unwrap_or_default();
        for job in &ended {
            commands.job_ended(job);
        }
        tokio::select! {
            _ = tokio::time::sleep(super::SWEEP_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
