//! The REST routes of jobs (`/api/v1/jobs…`), and the event streams that
//! follow a job's output, or a keyed exec's, until it ends.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream as FuturesStream;
use serde::Deserialize;

use super::AppState;
use super::access::{self, Purpose};
use super::api;
use super::error::{
    AgentOffline, ApiError, ErrorBody, Internal, KeyNotValid, NotJson, RateLimited, TooLargeForCluster,
};
use super::exec::{self, ExecResult};
use super::jobs::{self, Follow, JobBody, JobList, JobOutput, JobParams, JobStarted, Reached};
use crate::protocol::agent::Stream;
use crate::protocol::jobs::OUTPUT_LIMIT;

/// `POST /api/v1/jobs`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    summary = "Start a detached job",
    description = "Starts `command` with `sh -c` on the machine, detached from this request: the answer comes at \
once with the job's id, and the job keeps running when the caller goes away, the relay restarts or the machine's \
daemon restarts. In supervised mode the job waits (`pending`) for the operator's approval. Its output is spooled on \
the machine (in the daemon's state directory, capped: past the cap the oldest output is dropped and the job keeps \
running) and kept until the machine's retention period ends (7 days by default); the relay stores none of it. \
With `Idempotency-Key`, a repeated request of the same caller within 10 minutes answers with the first request's job \
(`existing: true`) instead of starting another; the same key with another command is refused with 409.",
    request_body(content = JobParams, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters, e.g. a UUID")),
    responses(
        (status = 200, description = "The job (started, or found by its key)", body = JobStarted),
        (status = 400, description = "`bad_request`: bad JSON, an empty command, a bad timeout or key, a malformed code, or a `cwd` that does not exist", body = ErrorBody),
        (status = 401, description = "`unauthorized`: the API key is not valid", body = ErrorBody),
        (status = 403, description = "`anonymous_expired`, `approval_required`, `blocked`, or `forbidden` (the machine's mode is disabled)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such machine for this account", body = ErrorBody),
        (status = 409, description = "`conflict`: the Idempotency-Key was used for another command", body = ErrorBody),
        (status = 413, description = "`too_large`: the request body is over the relay's limit, or, in a cluster, the job would not fit NATS's `max_payload`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests, or the machine runs its maximum of jobs (32 by default)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        NotJson, Internal, AgentOffline,
    )
)]
pub async fn start(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    api::require_json(&headers)?;
    let params: JobParams = api::parse_json(body)?;
    let key = jobs::idempotency_key(&headers)?;
    let caller = access::authenticate(&state, &headers, peer).await?;
    Ok(Json(jobs::start(&state, &caller, &params, key).await?).into_response())
}

/// The refusals of a look-up of the caller's jobs on a machine, one job's or all.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "only described in /openapi.json; the routes answer with `ApiError`")]
pub enum JobLookupRefusals {
    #[response(status = 400, description = "`bad_request`: a malformed code, job id or query")]
    BadRequest(ErrorBody<'static>),
    #[response(
        status = 403,
        description = "`anonymous_expired`: without an account, the code is unknown or past its first hour; \
`approval_required` or `blocked` for an account"
    )]
    Forbidden(ErrorBody<'static>),
    #[response(
        status = 404,
        description = "`not_found`: no such machine for this account, or no such job of this caller (another \
caller's job is not shown); or no such route"
    )]
    NotFound(ErrorBody<'static>),
}

/// `GET /api/v1/jobs/{code}`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{code}",
    tag = "jobs",
    summary = "List your jobs on a machine",
    description = "The jobs this caller started on the machine (an account's, or for anonymous callers those \
started with this code), newest first, until the machine's retention deletes them.",
    params(("code" = String, Path, description = "Session code or alias")),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        JobLookupRefusals, KeyNotValid, RateLimited, Internal, AgentOffline, TooLargeForCluster,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    Ok(Json(jobs::list(&state, &caller, &code).await?).into_response())
}

/// `GET /api/v1/jobs/{code}/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{code}/{id}",
    tag = "jobs",
    summary = "A job's state",
    description = "State, exit code, start, duration and output size of one of the caller's jobs.",
    params(("code" = String, Path, description = "Session code or alias"), ("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        JobLookupRefusals, KeyNotValid, RateLimited, Internal, AgentOffline, TooLargeForCluster,
    )
)]
pub async fn status(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((code, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    Ok(Json(jobs::status(&state, &caller, &code, &id, false).await?).into_response())
}

/// `DELETE /api/v1/jobs/{code}/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{code}/{id}",
    tag = "jobs",
    summary = "Cancel a job",
    description = "A pending job is withdrawn; a running one's process group gets SIGTERM, then SIGKILL after 2 s. \
The answer shows the job as it is at once; its end follows in its status.",
    params(("code" = String, Path, description = "Session code or alias"), ("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        JobLookupRefusals, KeyNotValid, RateLimited, Internal, AgentOffline, TooLargeForCluster,
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((code, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    Ok(Json(jobs::status(&state, &caller, &code, &id, true).await?).into_response())
}

/// The query of an output request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OutputQuery {
    /// The first byte wanted, counted from the job's start (default 0).
    #[serde(default)]
    offset: u64,
    /// Most bytes wanted (default and most: 262 144).
    limit: Option<u64>,
}

/// `GET /api/v1/jobs/{code}/{id}/output`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{code}/{id}/output",
    tag = "jobs",
    summary = "Read or follow a job's output",
    description = "Output bytes from `offset` (stdout and stderr as they came, in one stream). Page with \
`nextOffset` until `done`. With `Accept: text/event-stream` the answer follows the job live: `output` events \
(`{offset, text, base64?}`) as output arrives, `: heartbeat` comments, then one `end` event with the job.",
    params(
        ("code" = String, Path, description = "Session code or alias"),
        ("id" = String, Path, description = "The job's id"),
        OutputQuery,
        ("Accept" = Option<String>, Header, description = "`text/event-stream` to follow live"),
    ),
    responses(
        (status = 200, description = "A page of output, or the event stream", content((JobOutput = "application/json"), (String = "text/event-stream"))),
        JobLookupRefusals, KeyNotValid, RateLimited, Internal, AgentOffline, TooLargeForCluster,
    )
)]
pub async fn output(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((code, id)): Path<(String, String)>,
    query: Result<Query<OutputQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request("offset and limit must be whole numbers of bytes, e.g. ?offset=0&limit=65536")
    })?;
    let caller = access::authenticate(&state, &headers, peer).await?;
    let id = jobs::job_id(&id)?;
    let reached = jobs::reach(&state, &caller, &code, Purpose::Look).await?;
    let limit = query.limit.unwrap_or(OUTPUT_LIMIT);
    if api::wants_event_stream(&headers) {
        // The first page answers at once, so a wrong id is a 404, not an empty stream.
        let first = jobs::page(&reached, id, query.offset, limit, std::time::Duration::ZERO).await?;
        let sse = Sse::new(follow_job(reached, id, first))
            .keep_alive(KeepAlive::new().interval(state.config.heartbeat).text("heartbeat"));
        return Ok(sse.into_response());
    }
    let page = jobs::page(&reached, id, query.offset, limit, std::time::Duration::ZERO).await?;
    Ok(Json(page).into_response())
}

/// `output` events from `first` on, then one `end` event with the job.
fn follow_job(
    reached: Reached,
    id: uuid::Uuid,
    first: JobOutput,
) -> impl FuturesStream<Item = Result<Event, Infallible>> {
    struct Live {
        reached: Reached,
        page: Option<JobOutput>,
        next: u64,
        /// Bytes of a character split across pages, held for the next.
        carry: Vec<u8>,
        /// The job, once its last output is out: the `end` event comes next.
        end: Option<JobBody>,
        done: bool,
    }
    let live = Live { reached, next: first.next_offset, page: Some(first), carry: Vec::new(), end: None, done: false };
    futures_util::stream::unfold(live, move |mut live| async move {
        loop {
            if let Some(body) = live.end.take() {
                live.done = true;
                let data = serde_json::to_string(&body).unwrap_or_default();
                return Some((Ok(Event::default().event("end").data(data)), live));
            }
            if live.done {
                return None;
            }
            let page = match live.page.take() {
                Some(page) => page,
                None => match jobs::page(&live.reached, id, live.next, OUTPUT_LIMIT, jobs::FOLLOW_WAIT).await {
                    Ok(page) => page,
                    Err(err) => {
                        live.done = true;
                        let data = serde_json::to_string(&err.body()).unwrap_or_default();
                        return Some((Ok(Event::default().event("end").data(data)), live));
                    }
                },
            };
            live.next = page.next_offset;
            let bytes = match &page.base64 {
                Some(b64) => decode(b64),
                None => page.text.clone().into_bytes(),
            };
            let event = output_event(&mut live.carry, page.offset, &bytes, page.done);
            if page.done {
                live.end = Some(JobBody { ok: true, job: page.job });
            }
            if let Some(event) = event {
                return Some((Ok(event), live));
            }
        }
    })
}

fn decode(b64: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()
}

/// One `output` event for `data` (read from `offset`), holding back the
/// start of a character the next page completes (all of it when `last`).
fn output_event(carry: &mut Vec<u8>, offset: u64, data: &[u8], last: bool) -> Option<Event> {
    let start = offset.saturating_sub(carry.len() as u64);
    carry.extend_from_slice(data);
    let keep = if last { 0 } else { exec::incomplete_utf8_tail(carry) };
    let tail = carry.split_off(carry.len() - keep);
    let chunk = std::mem::replace(carry, tail);
    if chunk.is_empty() {
        return None;
    }
    let (text, base64) = exec::text_and_exact(&chunk);
    let mut body = serde_json::json!({"offset": start, "text": text});
    if let Some(b64) = base64 {
        body["base64"] = b64.into();
    }
    Some(Event::default().event("output").data(body.to_string()))
}

/// `POST /api/v1/exec` with an `Idempotency-Key`: the first request's result,
/// buffered or as an event stream.
pub async fn exec_keyed(
    state: &AppState,
    caller: &access::Caller,
    params: &exec::ExecParams,
    key: String,
    stream: bool,
) -> Result<Response, ApiError> {
    let (reached, job) = jobs::exec_keyed(state, caller, params, key).await?;
    let follow = Follow::new(reached, &job);
    if stream {
        let sse = Sse::new(follow_exec(follow))
            .keep_alive(KeepAlive::new().interval(state.config.heartbeat).text("heartbeat"));
        return Ok(sse.into_response());
    }
    let outcome = follow.collect().await?;
    Ok(Json(ExecResult::from(&outcome)).into_response())
}

/// A keyed exec's output as the exec event stream has it: `output` events,
/// then one `result` event.
fn follow_exec(follow: Follow) -> impl FuturesStream<Item = Result<Event, Infallible>> {
    let live = (follow, [Vec::new(), Vec::new()], Vec::<Event>::new(), false);
    futures_util::stream::unfold(live, |(mut follow, mut carry, mut queued, mut done)| async move {
        loop {
            if let Some(event) = queued.pop() {
                return Some((Ok(event), (follow, carry, queued, done)));
            }
            if done {
                return None;
            }
            let (result, out, err) = match follow.step().await {
                Ok((out, err, ended)) => (ended.map(|_| Ok(ExecResult::from(&follow.outcome))), out, err),
                Err(err) => (Some(Err(err)), Vec::new(), Vec::new()),
            };
            if let Some(result) = result {
                done = true;
                let data = match result {
                    Ok(body) => serde_json::to_string(&body),
                    Err(err) => serde_json::to_string(&err.body()),
                };
                queued.push(Event::default().event("result").data(data.unwrap_or_default()));
            }
            // Popped from the end: stderr's event after stdout's, the result last.
            queued.extend(api::output_event(&mut carry, Stream::Stderr, &err));
            queued.extend(api::output_event(&mut carry, Stream::Stdout, &out));
        }
    })
}
