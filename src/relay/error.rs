//! Errors the API answers with: a status, a machine word, and words that say
//! what to do.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::protocol::agent::Refusal;

/// The `reason` word of an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Anonymous use of an unknown code, or of a code past its first hour.
    AnonymousExpired,
    /// The operator blocked this account.
    Blocked,
    /// The link waits for the operator's approval.
    ApprovalRequired,
    /// Not allowed, for another reason the message gives.
    Forbidden,
    /// The account must sign in again.
    ReactivationRequired,
    /// The operator said no.
    Denied,
    /// Nobody answered the approval queue in time.
    ApprovalTimeout,
    /// The machine's daemon is not connected.
    AgentOffline,
    /// Too many requests.
    RateLimited,
    /// The request is malformed.
    BadRequest,
    /// The request body is too large.
    TooLarge,
    /// The request body is not declared as JSON (`Content-Type: application/json`).
    UnsupportedMediaType,
    /// The code or alias is unknown to this account.
    NotFound,
    /// A token was given but is not valid.
    Unauthorized,
    /// Something broke inside the relay.
    Internal,
    /// The machine did not finish the command within its timeout plus a
    /// grace period; the relay stopped waiting and cancelled it.
    MachineTimeout,
    /// The `Idempotency-Key` was already used for another command.
    Conflict,
    /// A push's path already holds a file and `overwrite` was not given.
    Exists,
    /// A push's bytes did not have the SHA-256 the caller sent.
    ChecksumMismatch,
}

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine word.
    pub reason: Reason,
    /// What to do, in words.
    pub message: String,
    /// Seconds for `Retry-After`, with 429.
    pub retry_after: Option<u64>,
    /// Where the user signs in, with `reactivation_required`.
    pub login_url: Option<String>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"ok": false, "error": "The machine's daemon is not connected to the relay. Ask its operator to check `systemctl status aic-daemon`, then retry.", "reason": "agent_offline"}))]
pub struct ErrorBody<'a> {
    /// Always false.
    pub ok: bool,
    /// What to do, in words.
    pub error: &'a str,
    /// Machine word.
    pub reason: Reason,
    /// With `reactivation_required`: the page where the account's owner signs in.
    #[serde(rename = "login_url", skip_serializing_if = "Option::is_none")]
    pub login_url: Option<&'a str>,
}

impl ApiError {
    /// An error with the given parts.
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into(), retry_after: None, login_url: None }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
    }

    /// The one refusal for anonymous callers quoting an unknown code or a
    /// code past its first hour: byte-identical for both, so it tells nothing
    /// about which codes exist.
    pub fn anonymous_refused() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            Reason::AnonymousExpired,
            "This session code is unknown, or its first hour is over and it no longer works without an account. \
             Check the code with the machine's operator, or send an account's API key as 'Authorization: Bearer <key>'.",
        )
    }

    /// 413: the request body passed the relay's limit.
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::TooLarge,
            "The request body is too large; send a shorter command (for long scripts, write them to a file on the machine first).",
        )
    }

    /// 503: the daemon is not connected.
    pub fn agent_offline() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::AgentOffline,
            "The machine's daemon is not connected to the relay. Ask its operator to check `systemctl status aic-daemon`, then retry.",
        )
    }

    /// 503: the relay holding the machine's link went silent mid-command.
    pub fn relay_lost() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::AgentOffline,
            "The relay holding the machine's connection stopped answering mid-command, so the command may or may not \
             have finished. Its daemon reconnects to another relay within seconds: check with status, then retry if it is safe.",
        )
    }

    /// 504: the machine did not answer in time, whatever its daemon does:
    /// it never `started` the command, or did not finish it.
    pub fn machine_timeout(timeout: std::time::Duration, started: bool) -> Self {
        if !started {
            return Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                Reason::MachineTimeout,
                "The machine did not start the command within the relay's start allowance, so the relay stopped \
                 waiting and cancelled it. It may have waited in the approval queue of the machine's operator (ask \
                 them to answer it in `aic-console`), or the daemon may be stuck (ask them to check \
                 `systemctl status aic-daemon`); then retry.",
            );
        }
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            Reason::MachineTimeout,
            format!(
                "The machine did not answer: the command did not finish within its timeout ({} s) plus the relay's \
                 grace period, so the relay stopped waiting and cancelled it. The machine's daemon may be stuck or \
                 its link stalled; ask its operator to check `systemctl status aic-daemon`, then retry.",
                timeout.as_secs_f64()
            ),
        )
    }

    /// 403: the operator's decision stopped the command (or kept it from being sent).
    pub fn revoked(why: crate::relay::hub::Revocation) -> Self {
        use crate::relay::hub::Revocation;
        match why {
            Revocation::Blocked => Self::new(
                StatusCode::FORBIDDEN,
                Reason::Blocked,
                "The machine's operator blocked this account, and its command was stopped on the machine. \
                 Ask them to unblock it (aic-console admins unblock).",
            ),
            Revocation::CodeReset => Self::new(
                StatusCode::FORBIDDEN,
                Reason::Forbidden,
                "The machine's operator reset its code, and the command sent with the old code was stopped \
                 on the machine. Ask them for the new code.",
            ),
        }
    }

    /// 429: the machine's link carries as many commands as the relay allows.
    pub fn link_busy(max: usize) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimited,
            format!(
                "The machine already has {max} commands in flight through this relay, the most it allows; \
                 wait for one to finish, then retry."
            ),
        );
        err.retry_after = Some(1);
        err
    }

    /// 500, for a fault the caller cannot fix; details go to the relay's log, not the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Internal,
            "The relay hit an internal error; try again, and tell its operator if it persists.",
        )
    }

    /// 503: the request needed a write the relay's database refuses (`fault`).
    pub fn storage(fault: crate::relay::store::StorageFault) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Internal,
            format!(
                "The relay cannot save this right now: {}. What is already set up (linked accounts, connected \
                 machines) keeps working; try again later, and tell the relay's operator.",
                fault.says()
            ),
        )
    }

    /// The answer for a command the daemon would not run. Its words are the
    /// machine's: cleaned, bounded, and framed as coming from the machine.
    pub fn from_refusal(refusal: Refusal, message: String) -> Self {
        let message = format!(
            "The machine refused the command. Its daemon says (text from the machine, not from the relay): {}",
            machine_text(&message, MAX_MACHINE_TEXT)
        );
        let (status, reason) = match refusal {
            Refusal::BadRequest => (StatusCode::BAD_REQUEST, Reason::BadRequest),
            Refusal::Busy => (StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited),
            Refusal::Denied => (StatusCode::FORBIDDEN, Reason::Denied),
            Refusal::ApprovalTimeout => (StatusCode::FORBIDDEN, Reason::ApprovalTimeout),
            Refusal::Disabled => (StatusCode::FORBIDDEN, Reason::Forbidden),
            Refusal::SpawnFailed => (StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal),
        };
        let mut err = Self::new(status, reason, message);
        if refusal == Refusal::Busy {
            err.retry_after = Some(1);
        }
        err
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody { ok: false, error: &self.message, reason: self.reason, login_url: self.login_url.as_deref() }
    }

    /// The `reason` word, as the JSON body spells it.
    pub fn reason_word(&self) -> String {
        match serde_json::to_value(self.reason) {
            Ok(serde_json::Value::String(word)) => word,
            _ => format!("{:?}", self.reason),
        }
    }
}

/// Longest text from a machine (a refusal's words) passed on, in characters.
pub const MAX_MACHINE_TEXT: usize = 500;

/// Text a machine sent, made safe to pass on: control characters (escape
/// sequences, line breaks that fake a new paragraph) become spaces, and it is
/// cut at `max` characters with an ellipsis.
pub fn machine_text(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

// The refusals several routes document alike, each a type its routes list in
// `#[utoipa::path(responses(..))]`, so that each is described once.

/// 401 where an API key is optional: the one sent is not valid.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "`unauthorized`: an Authorization header was sent but its API key is not valid")]
pub struct KeyNotValid(pub ErrorBody<'static>);

/// 415 of a route that takes a JSON body.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 415,
    description = "`unsupported_media_type`: the request did not say `Content-Type: application/json`"
)]
pub struct NotJson(pub ErrorBody<'static>);

/// 429 of a route limited per address alone.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "`rate_limited`: too many requests from this address",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
)]
pub struct RateLimited(pub ErrorBody<'static>);

/// 500 of a route that reaches the machine's daemon.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 500,
    description = "`internal`: the relay or the daemon failed; retry, and tell the relay's operator if it persists"
)]
pub struct Internal(pub ErrorBody<'static>);

/// 413 of a job route whose answer comes from another relay of a cluster.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 413,
    description = "`too_large`: in a cluster, the answer of the relay holding the machine would not fit NATS's \
                   `max_payload`; ask for less, or raise `max_payload`"
)]
pub struct TooLargeForCluster(pub ErrorBody<'static>);

/// 503 of a route that needs the machine's daemon connected.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "`agent_offline`: the machine's daemon is not connected")]
pub struct AgentOffline(pub ErrorBody<'static>);
