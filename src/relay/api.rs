//! The REST API under `/api`: exec (buffered or SSE), status, health.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream as FuturesStream;
use serde_json::json;

use super::AppState;
use super::access::Caller;
use super::error::ApiError;
use super::exec::{self, ExecParams, ExecResult, Outcome};
use super::hub::{Exec, ExecEvent};
use super::status;
use crate::protocol::agent::Stream;

/// `POST /api/v1/exec`.
pub async fn exec(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params: ExecParams = parse_json(body)?;
    let running = exec::begin(&state, &Caller::anonymous(peer.ip()), &params).await?;
    let max_output = state.config.max_output;
    if wants_event_stream(&headers) {
        let sse = Sse::new(event_stream(running, max_output))
            .keep_alive(KeepAlive::new().interval(state.config.heartbeat).text("heartbeat"));
        return Ok(sse.into_response());
    }
    let outcome = exec::collect(running, max_output).await?;
    Ok(Json(ExecResult::from(&outcome)).into_response())
}

/// `GET /api/v1/status/{code}`.
pub async fn status(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let body = status::lookup(&state, &Caller::anonymous(peer.ip()), &code).await?;
    Ok(Json(body).into_response())
}

/// `GET /api/health`.
pub async fn health() -> Response {
    Json(json!({"ok": true, "version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        super::error::Reason::NotFound,
        "No such route. The API is POST /api/v1/exec, GET /api/v1/status/{code} and GET /api/health.",
    )
}

fn parse_json<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                super::error::Reason::TooLarge,
                "The request body is too large; send a shorter command (for long scripts, write them to a file on the machine first).",
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {rejection}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not the JSON this endpoint takes ({e}); send {{\"code\":\"AIC-XXXX-XXXX-XXXX\",\"command\":\"…\"}}"
        ))
    })
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
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
            let output = match &event {
                Some(ExecEvent::Output(stream, data)) => Some((*stream, data.clone())),
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

fn output_event(carry: &mut [Vec<u8>; 2], stream: Stream, data: &[u8]) -> Option<Event> {
    let buf = &mut carry[stream as usize];
    buf.extend_from_slice(data);
    let keep = exec::incomplete_utf8_tail(buf);
    let tail = buf.split_off(buf.len() - keep);
    let chunk = std::mem::replace(buf, tail);
    if chunk.is_empty() {
        return None;
    }
    let (text, exact) = exec::text_and_exact(&chunk);
    let name = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let mut body = json!({"stream": name, "text": text});
    if let Some(b64) = exact {
        body["base64"] = b64.into();
    }
    Some(Event::default().event("output").data(body.to_string()))
}
