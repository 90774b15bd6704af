//! The REST API under `/api`: exec (buffered or SSE), status, health. The
//! `#[utoipa::path]` on each handler is what `/openapi.json` is made from.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream as FuturesStream;
use serde::Serialize;

use super::AppState;
use super::access;
use super::error::{AgentOffline, ApiError, ErrorBody, Internal, KeyNotValid, NotJson, RateLimited};
use super::exec::{self, ExecParams, ExecResult, Outcome};
use super::hub::{Exec, ExecEvent};
use super::status::{self, StatusBody};
use crate::protocol::agent::Stream;

/// `POST /api/v1/exec`.
#[utoipa::path(
    post,
    path = "/api/v1/exec",
    tag = "exec",
    summary = "Run a command on a machine",
    description = "Runs `command` with `sh -c` on the machine whose daemon holds `code`. Buffered by default; with \
`Accept: text/event-stream` the answer streams: `: heartbeat` comments while it runs, `output` events \
(`OutputEvent`) as output arrives, then one `result` event whose data is the `ExecResult` (or the `ErrorBody` of a \
refusal that came after the stream opened). With `Accept: application/octet-stream` the body is the command's \
standard output, exactly, streamed as it arrives (standard error is not sent: merge it with `2>&1`); a client that \
sends `TE: trailers` gets how it ended in the trailers `aic-exit-code`, `aic-truncated`, `aic-timed-out` and \
`aic-duration-ms`; to any other client, a command that exits nonzero, is cut at the output cap or times out ends the \
body without its last chunk, so that `curl` fails (exit 18) instead of passing part of an answer off as all of it. A \
refusal before the command starts is the usual JSON error. A caller that disconnects has its command killed. \
With `Idempotency-Key`, the command runs as the daemon's job under that key instead: it is not killed when the \
caller goes away, and a retry of the same caller with the same key within 10 minutes (even through a restarted \
relay) gets the first request's result, waiting for it or following its live output, without running it again. \
Its output is then spooled on the machine until the key is forgotten. The same key with another command is a 409.",
    request_body(content = ExecParams, content_type = "application/json"),
    params(
        ("Accept" = Option<String>, Header, description = "`text/event-stream` to stream live output as events; `application/octet-stream` for standard output alone, raw"),
        ("TE" = Option<String>, Header, description = "`trailers`, with raw output: how the command ended comes in trailers"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters, e.g. a UUID: a retry with the same key never runs the command twice"),
    ),
    responses(
        (status = 200, description = "The command ran, whatever its exit code. On the event stream, `output` events carry an `OutputEvent` and the `result` event the same JSON object as the buffered body.",
            content((ExecResult = "application/json"), (String = "text/event-stream"), (Vec<u8> = "application/octet-stream"))),
        (status = 400, description = "`bad_request`: bad JSON, a missing field, an empty command, a malformed code, or a `cwd` that does not exist on the machine", body = ErrorBody),
        (status = 401, description = "`unauthorized`: an Authorization header was sent but its API key is not valid (mistyped or revoked)", body = ErrorBody),
        (status = 403, description = "`anonymous_expired`: without an account, the code is unknown or past its first hour (one identical answer for both); `approval_required`: the account's link waits for the operator; `blocked`: the operator blocked the account; `denied`, `approval_timeout`, `forbidden`: the machine's operator or mode refused the command", body = ErrorBody),
        (status = 404, description = "`not_found`: with an account, no machine has this code and none of the account's has this alias; or no such route", body = ErrorBody),
        (status = 409, description = "`conflict`: the Idempotency-Key was already used for another command", body = ErrorBody),
        (status = 413, description = "`too_large`: the request body is over the relay's limit (256 KiB by default)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this address, or the machine already runs its maximum of commands (the daemon's, or the relay's per-machine cap)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`machine_timeout`: the machine did not finish the command within its timeout plus the relay's grace period; the relay cancelled it", body = ErrorBody),
        NotJson, Internal, AgentOffline,
    )
)]
pub async fn exec(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    version: Version,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let params: ExecParams = parse_json(body)?;
    let key = super::jobs::idempotency_key(&headers)?;
    let raw = super::raw::wanted(&headers);
    if raw && key.is_some() {
        return Err(ApiError::bad_request(
            "raw output (Accept: application/octet-stream) is not available with an Idempotency-Key; ask for \
             application/json or text/event-stream",
        ));
    }
    // Over HTTP/1.0 a body ends when the connection closes, so the cut that
    // tells a failed command would read as a whole answer.
    if raw && version < Version::HTTP_11 {
        return Err(ApiError::bad_request(
            "raw output (Accept: application/octet-stream) needs HTTP/1.1 or later, where a failed command's \
             body visibly ends short; over HTTP/1.0 ask for application/json or text/event-stream",
        ));
    }
    let caller = access::authenticate(&state, &headers, peer).await?;
    if let Some(key) = key {
        return super::jobs_rest::exec_keyed(&state, &caller, &params, key, wants_event_stream(&headers)).await;
    }
    let running = exec::begin(&state, &caller, &params).await?;
    let max_output = state.config.max_output;
    if raw {
        return super::raw::answer(running, max_output, super::raw::reads_trailers(&headers)).await;
    }
    if wants_event_stream(&headers) {
        let sse = Sse::new(event_stream(running, max_output))
            .keep_alive(KeepAlive::new().interval(state.config.heartbeat).text("heartbeat"));
        return Ok(sse.into_response());
    }
    let outcome = exec::collect(running, max_output).await?;
    Ok(Json(ExecResult::from(&outcome)).into_response())
}

/// `GET /api/v1/status/{code}`.
#[utoipa::path(
    get,
    path = "/api/v1/status/{code}",
    tag = "status",
    summary = "Look up a machine",
    description = "Whether the machine's daemon is online, what it said about the machine, and how long its code still works without an account.",
    params(("code" = String, Path, description = "Session code (any case, dashes optional)", example = "AIC-7K3P-WX9M-RTBN")),
    responses(
        (status = 200, description = "The machine", body = StatusBody),
        (status = 400, description = "`bad_request`: a malformed code", body = ErrorBody),
        (status = 403, description = "`anonymous_expired`: without an account, the code is unknown or past its first hour (one identical answer for both); `approval_required` or `blocked` for an account", body = ErrorBody),
        (status = 404, description = "`not_found`: with an account, no such code or alias; or no such route (for example nothing after `/status/`)", body = ErrorBody),
        (status = 500, description = "`internal`: the relay failed; retry, and tell its operator if it persists", body = ErrorBody),
        KeyNotValid, RateLimited,
    )
)]
pub async fn status(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    let body = status::lookup(&state, &caller, &code).await?;
    Ok(Json(body).into_response())
}

/// The `health` body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"ok": true, "version": "0.1.0"}))]
pub struct HealthBody {
    /// Always true: the relay answers.
    ok: bool,
    /// The relay's version.
    version: &'static str,
}

/// `GET /api/health`.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "health",
    summary = "Is the relay up",
    responses((status = 200, description = "The relay answers", body = HealthBody))
)]
pub async fn health() -> Response {
    Json(HealthBody { ok: true, version: env!("CARGO_PKG_VERSION") }).into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        super::error::Reason::NotFound,
        "No such route. The API is POST /api/v1/exec, GET /api/v1/status/{code}, /api/v1/jobs… and GET /api/health \
         (described at GET /openapi.json); MCP clients use /mcp, and GET /skill/SKILL.md explains both to a model.",
    )
}

/// Refuses a body not declared as JSON. A web page on another origin can
/// send a "simple" cross-site POST only as form data or text/plain; asking
/// for `application/json` makes the browser ask first (a preflight), which
/// the relay does not allow.
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = declared.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        super::error::Reason::UnsupportedMediaType,
        "Send the body as JSON with the header 'Content-Type: application/json' (curl: -H 'content-type: application/json').",
    ))
}

/// `OPTIONS` on an API route whose methods are `allow` (`"GET, OPTIONS"`):
/// a CORS preflight, answered deliberately with no `Access-Control-Allow-*`
/// headers, so browsers refuse cross-origin calls (the API is for programs
/// and AI clients, not for other sites' pages). `Allow` names the route's
/// methods, as an `OPTIONS` answer should.
pub fn preflight(allow: &'static str) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move || {
        std::future::ready((StatusCode::NO_CONTENT, [(header::ALLOW, allow), (header::VARY, "Origin")]).into_response())
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {rejection}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not the JSON this endpoint takes ({}); send {{\"code\":\"AIC-XXXX-XXXX-XXXX\",\"command\":\"…\"}}",
            body_error(&e)
        ))
    })
}

/// What is wrong with a body and where, without quoting any of it back (a
/// missing field is named: the name is ours, not the caller's).
fn body_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field `") {
        return text;
    }
    let kind = text.split(['"', '`']).next().unwrap_or_default().trim_end().trim_end_matches(':');
    format!("{kind} at line {} column {}", e.line(), e.column())
}

pub(super) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/event-stream"))
}

/// Live output as `output` events, then one `result` event with the same
/// JSON a buffered call returns (or the error body).
fn event_stream(exec: Exec, max_output: u64) -> impl FuturesStream<Item = Result<Event, Infallible>> {
    struct Live {
        exec: Exec,
        outcome: Outcome,
        /// Bytes held back per stream so a character split across chunks arrives whole.
        carry: [Vec<u8>; 2],
        done: bool,
    }
    let live = Live { exec, outcome: Outcome::default(), carry: [Vec::new(), Vec::new()], done: false };
    futures_util::stream::unfold(live, move |mut live| async move {
        loop {
            if live.done {
                return None;
            }
            let event = live.exec.next().await;
            // Live output stops where the result's output is cut.
            let room = live.outcome.room(max_output);
            let output = match &event {
                Some(ExecEvent::Output(stream, data)) => Some((*stream, data[..data.len().min(room)].to_vec())),
                _ => None,
            };
            let step = exec::absorb(&mut live.outcome, event, max_output);
            if let Some((stream, data)) = output {
                if let Some(ev) = output_event(&mut live.carry, stream, &data) {
                    return Some((Ok(ev), live));
                }
                continue;
            }
            match step {
                Ok(false) => continue,
                Ok(true) => {
                    live.done = true;
                    let data = serde_json::to_string(&ExecResult::from(&live.outcome)).unwrap_or_default();
                    return Some((Ok(Event::default().event("result").data(data)), live));
                }
                Err(err) => {
                    live.done = true;
                    let data = serde_json::to_string(&err.body()).unwrap_or_default();
                    return Some((Ok(Event::default().event("result").data(data)), live));
                }
            }
        }
    })
}

pub(super) fn output_event(carry: &mut [Vec<u8>; 2], stream: Stream, data: &[u8]) -> Option<Event> {
    let buf = &mut carry[stream as usize];
    buf.extend_from_slice(data);
    let keep = exec::incomplete_utf8_tail(buf);
    let tail = buf.split_off(buf.len() - keep);
    let chunk = std::mem::replace(buf, tail);
    if chunk.is_empty() {
        return None;
    }
    // Valid UTF-8 (the usual case) becomes the text without a copy.
    let (text, base64) = match String::from_utf8(chunk) {
        Ok(text) => (text, None),
        Err(e) => exec::text_and_exact(e.as_bytes()),
    };
    let stream = match stream {
        Stream::Stdout => OutputStream::Stdout,
        Stream::Stderr => OutputStream::Stderr,
    };
    let data = serde_json::to_string(&OutputEvent { stream, text, base64 }).unwrap_or_default();
    Some(Event::default().event("output").data(data))
}

/// The data of an `output` event on the exec event stream.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"stream": "stdout", "text": "tick 1\n"}))]
pub struct OutputEvent {
    /// Which stream the chunk came from.
    stream: OutputStream,
    /// The chunk as text (invalid UTF-8 replaced); a character split across writes arrives whole.
    text: String,
    /// The chunk exactly, present only when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// Standard output or standard error.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}
