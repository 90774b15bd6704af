//! The raw answer of `POST /api/v1/exec` (`Accept: application/octet-stream`):
//! the command's standard output, exactly, as the response body, streamed as
//! it arrives; no encoding, so no cost per byte beyond the copy. Standard error
//! is not sent (merge it with `2>&1` to have it). How the command ended goes in
//! HTTP trailers to a client that asks for them (`TE: trailers`); to any other
//! client, a command that did not succeed (nonzero exit, cut, timed out) ends
//! the body without its last chunk, so `curl` fails (exit 18) rather than
//! passing off part of an answer as all of it.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;

use super::error::ApiError;
use super::exec::{self, Outcome};
use super::hub::{Exec, ExecEvent};
use crate::protocol::agent::{ExitStatus, Stream};

/// The media type a caller asks for.
pub const MEDIA_TYPE: &str = "application/octet-stream";

/// Trailer: the exit status.
pub const EXIT_CODE: HeaderName = HeaderName::from_static("aic-exit-code");
/// Trailer: `true` when output passed the cap and the command was killed.
pub const TRUNCATED: HeaderName = HeaderName::from_static("aic-truncated");
/// Trailer: `true` when the timeout killed the command.
pub const TIMED_OUT: HeaderName = HeaderName::from_static("aic-timed-out");
/// Trailer: wall time on the machine, in milliseconds.
pub const DURATION_MS: HeaderName = HeaderName::from_static("aic-duration-ms");

/// Whether the caller asked for raw output (and not an event stream).
pub fn wanted(headers: &HeaderMap) -> bool {
    let accepts =
        |what: &str| headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(what));
    accepts(MEDIA_TYPE) && !accepts("text/event-stream")
}

/// Whether the caller reads trailers (`TE: trailers`).
pub fn reads_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
}

/// Waits until the machine starts the command (a refusal before that is an
/// HTTP error like any other), then answers with its output as the body.
pub async fn answer(mut exec: Exec, max_output: u64, trailers: bool) -> Result<Response, ApiError> {
    let mut outcome = Outcome::default();
    let first = loop {
        match exec.next().await {
            Some(ExecEvent::Started) => break None,
            Some(event @ ExecEvent::Output(..)) => break Some(event),
            event => {
                if exec::absorb(&mut outcome, event.clone(), max_output)? {
                    break event;
                }
            }
        }
    };
    let live = Live { exec, counted: 0, truncated: false, max_output, trailers, first, done: false };
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(live, Live::step));
    let mut response = Body::new(body).into_response();
    let head = response.headers_mut();
    head.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    head.insert(
        header::TRAILER,
        HeaderValue::from_static("aic-exit-code, aic-truncated, aic-timed-out, aic-duration-ms"),
    );
    Ok(response)
}

/// The body's state between chunks.
struct Live {
    exec: Exec,
    /// Output bytes of both streams so far, counted against the cap.
    counted: u64,
    /// Output passed the cap and was not all sent.
    truncated: bool,
    max_output: u64,
    /// The caller reads trailers: a failure is told there, not by cutting the body.
    trailers: bool,
    /// An event read while waiting for the start, not yet sent.
    first: Option<ExecEvent>,
    done: bool,
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

impl Live {
    /// The next piece of the body: output, then trailers or an error that cuts the body short.
    async fn step(mut self) -> Option<(Chunk, Self)> {
        loop {
            if self.done {
                return None;
            }
            let event = match self.first.take() {
                Some(event) => Some(event),
                None => self.exec.next().await,
            };
            match event {
                Some(ExecEvent::Output(stream, data)) => {
                    let room = self.max_output.saturating_sub(self.counted) as usize;
                    self.truncated |= data.len() > room;
                    let keep = data.len().min(room);
                    self.counted += keep as u64;
                    if stream == Stream::Stdout && keep > 0 {
                        let mut data = data;
                        data.truncate(keep);
                        return Some((Ok(Frame::data(data)), self));
                    }
                }
                Some(ExecEvent::Started) => {}
                Some(ExecEvent::Exit(exit)) => {
                    self.done = true;
                    let exit = ExitStatus { truncated: exit.truncated || self.truncated, ..exit };
                    let end = self.end(exit);
                    if end.is_err() {
                        // Once more round the server's loop first, so that what
                        // was sent goes out before the connection is cut.
                        tokio::task::yield_now().await;
                    }
                    return Some((end, self));
                }
                other => {
                    self.done = true;
                    let why = match exec::absorb(&mut Outcome::default(), other, self.max_output) {
                        Err(e) => e.message,
                        Ok(_) => "the command's output ended unexpectedly".into(),
                    };
                    tokio::task::yield_now().await;
                    return Some((Err(std::io::Error::other(why)), self));
                }
            }
        }
    }

    /// The end of the body for a command that exited: trailers, or a cut for a failure the caller would not see.
    fn end(&self, exit: ExitStatus) -> Chunk {
        let failed = exit.exit_code != 0 || exit.truncated || exit.timed_out;
        if failed && !self.trailers {
            return Err(std::io::Error::other(format!("the command exited {}", exit.exit_code)));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert(EXIT_CODE, HeaderValue::from(exit.exit_code));
        trailers.insert(TRUNCATED, HeaderValue::from_static(if exit.truncated { "true" } else { "false" }));
        trailers.insert(TIMED_OUT, HeaderValue::from_static(if exit.timed_out { "true" } else { "false" }));
        trailers.insert(DURATION_MS, HeaderValue::from(exit.duration_ms));
        Ok(Frame::trailers(trailers))
    }
}
