//! Running one command for one caller: the request checks, the hand-off to
//! the daemon, and what comes back. REST (buffered and SSE) and MCP share it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::access::{self, Caller, Target};
use super::error::ApiError;
use super::hub::{Exec, ExecEvent, Issuer, Revocation, StartError};
use crate::protocol::agent::{ExecRequest, ExitStatus, Requester, Stream};

/// Timeout when the caller gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Shortest timeout a caller may ask for.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest timeout a caller may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest command text, in bytes: Linux takes at most 128 KiB, with its
/// closing NUL, as one argument (`sh -c <command>`), and fails the exec past it.
pub const MAX_COMMAND: usize = 128 * 1024 - 1;

/// The body of `POST /api/v1/exec`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"code": "AIC-7K3P-WX9M-RTBN", "command": "uname -a"}))]
pub struct ExecParams {
    /// Session code (or, for an account, an alias).
    pub code: String,
    /// Shell text, run with `sh -c`.
    pub command: String,
    /// Working directory on the machine.
    #[serde(default)]
    #[schema(nullable = false)]
    pub cwd: Option<String>,
    /// Kill the command after this many milliseconds (1 000 – 3 600 000; default 300 000). A value outside is refused.
    #[serde(default)]
    #[schema(minimum = 1000, maximum = 3600000, default = 300000, nullable = false)]
    pub timeout_ms: Option<u64>,
    /// Run under a pseudo-terminal, stdout and stderr merged.
    #[serde(default)]
    pub pty: bool,
}

/// Everything a finished command produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended, as the daemon said; `truncated` also when the relay cut output.
    pub exit: ExitStatus,
    /// Standard output bytes.
    pub stdout: Vec<u8>,
    /// Standard error bytes.
    pub stderr: Vec<u8>,
}

/// The JSON a finished command is reported as (buffered body, final SSE
/// event, and the MCP tool's structured result).
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"ok": true, "exitCode": 0, "durationMs": 214, "stdout": "Linux web 6.8.0\n", "stderr": "", "truncated": false, "timedOut": false}))]
pub struct ExecResult {
    /// True: the command ran (whatever its exit code).
    pub ok: bool,
    /// Exit status.
    pub exit_code: i32,
    /// Wall time on the machine.
    pub duration_ms: u64,
    /// Standard output as text (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error as text (invalid UTF-8 replaced).
    pub stderr: String,
    /// Standard output exactly, present only when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// Standard error exactly, present only when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// Output passed the cap: narrow the command and run it again.
    pub truncated: bool,
    /// The timeout killed the command.
    pub timed_out: bool,
}

impl Outcome {
    /// Output bytes still kept before `max_output` is reached.
    pub fn room(&self, max_output: u64) -> usize {
        (max_output as usize).saturating_sub(self.stdout.len() + self.stderr.len())
    }
}

impl From<&Outcome> for ExecResult {
    fn from(o: &Outcome) -> Self {
        let (stdout, stdout_base64) = text_and_exact(&o.stdout);
        let (stderr, stderr_base64) = text_and_exact(&o.stderr);
        Self {
            ok: true,
            exit_code: o.exit.exit_code,
            duration_ms: o.exit.duration_ms,
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
            truncated: o.exit.truncated,
            timed_out: o.exit.timed_out,
        }
    }
}

/// Text for reading, plus base64 of the exact bytes when the text had to replace some.
pub fn text_and_exact(bytes: &[u8]) -> (String, Option<String>) {
    use base64::Engine;
    match String::from_utf8_lossy(bytes) {
        std::borrow::Cow::Borrowed(text) => (text.to_owned(), None),
        std::borrow::Cow::Owned(text) => (text, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

/// Checks a request's fields and builds what the daemon is sent.
pub fn request(params: &ExecParams, requester: Requester, max_output: u64) -> Result<ExecRequest, ApiError> {
    if params.command.trim().is_empty() {
        return Err(ApiError::bad_request(
            "command is empty; send the shell text to run, e.g. {\"code\":\"AIC-…\",\"command\":\"uname -a\"}",
        ));
    }
    if params.command.len() > MAX_COMMAND {
        return Err(ApiError::bad_request(format!(
            "command is {} bytes; a machine runs at most {MAX_COMMAND} bytes (128 KiB, Linux's limit for one \
             argument to sh -c). Copy a long script to the machine in parts (e.g. appending with cat >> file) and run the file.",
            params.command.len()
        )));
    }
    if params.command.contains('\0') || params.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(ApiError::bad_request("command and cwd cannot contain NUL bytes"));
    }
    let timeout = params.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be from {} to {} milliseconds (default {}); send a value in that range, or leave it out.",
            MIN_TIMEOUT.as_millis(),
            MAX_TIMEOUT.as_millis(),
            DEFAULT_TIMEOUT.as_millis()
        )));
    }
    Ok(ExecRequest {
        id: Uuid::new_v4(),
        command: params.command.clone(),
        cwd: params.cwd.clone().filter(|c| !c.is_empty()),
        timeout_ms: timeout.as_millis() as u64,
        max_output,
        pty: params.pty,
        requester,
        // Set by the link it goes out on, from what its daemon speaks.
        window: 0,
        chunk: 0,
    })
}

/// From a caller's request to a command running on the machine: the field
/// checks, the access rules, the hand-off to the daemon. The REST API and the
/// MCP tool both come through here, so whatever is added here (accounts, rate
/// limits) applies to both alike.
pub async fn begin(state: &AppState, caller: &Caller, params: &ExecParams) -> Result<Exec, ApiError> {
    let begun = async {
        let request = request(params, caller.requester(&state.keys), state.config.max_output)?;
        let target = access::admit(state, caller, &params.code, access::Purpose::Use).await?;
        let issuer = Issuer { account: caller.account.as_ref().map(|a| a.id), code_created_ms: target.code_created_ms };
        start(state, target, request, issuer).await
    }
    .await;
    if begun.is_err() {
        state.metrics.exec_ended(super::metrics::ExecOutcome::Rejected, None);
    }
    begun
}

/// Sends the command to the target's daemon: over its link when this relay
/// holds it, else through the cluster to the relay that does.
pub async fn start(state: &AppState, target: Target, request: ExecRequest, issuer: Issuer) -> Result<Exec, ApiError> {
    let started = match (&target.conn, &state.cluster) {
        (None, Some(cluster)) => cluster.start(&target.code_hash, request, issuer).await,
        _ => target.online()?.start(request, issuer),
    };
    started.map_err(|e| match e {
        StartError::Offline => ApiError::agent_offline(),
        StartError::Busy(max) => ApiError::link_busy(max),
        StartError::CodeReset => ApiError::revoked(Revocation::CodeReset),
    })
}

/// Adds one event to `outcome`. `Ok(true)` when the command has finished.
/// Output past `max_output` is not kept, whatever the daemon sends.
pub fn absorb(outcome: &mut Outcome, event: Option<ExecEvent>, max_output: u64) -> Result<bool, ApiError> {
    match event {
        None => Err(ApiError::agent_offline()),
        Some(ExecEvent::Started) => Ok(false),
        Some(ExecEvent::Output(stream, data)) => {
            let keep = &data[..data.len().min(outcome.room(max_output))];
            match stream {
                Stream::Stdout => outcome.stdout.extend_from_slice(keep),
                Stream::Stderr => outcome.stderr.extend_from_slice(keep),
            }
            outcome.exit.truncated |= keep.len() < data.len();
            Ok(false)
        }
        Some(ExecEvent::Exit(exit)) => {
            let truncated = outcome.exit.truncated || exit.truncated;
            outcome.exit = ExitStatus { truncated, ..exit };
            Ok(true)
        }
        Some(ExecEvent::Refused(reason, message)) => Err(ApiError::from_refusal(reason, message)),
        Some(ExecEvent::Unanswered { timeout, started }) => Err(ApiError::machine_timeout(timeout, started)),
        Some(ExecEvent::Revoked(why)) => Err(ApiError::revoked(why)),
        Some(ExecEvent::RelayLost) => Err(ApiError::relay_lost()),
    }
}

/// Waits for the command to finish and gathers its output.
pub async fn collect(mut exec: Exec, max_output: u64) -> Result<Outcome, ApiError> {
    let mut outcome = Outcome::default();
    while !absorb(&mut outcome, exec.next().await, max_output)? {}
    Ok(outcome)
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that the
/// next chunk completes; live output holds them back so no character is split.
pub fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tail_is_held_back_only_when_incomplete() {
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail(&euro[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&[b'a', euro[0], euro[1]]), 2);
        assert_eq!(incomplete_utf8_tail(euro), 0);
        assert_eq!(incomplete_utf8_tail(&[0xff]), 0);
    }

    #[test]
    fn timeouts_outside_the_range_are_refused() {
        let req = |t| {
            let p = ExecParams { code: String::new(), command: "true".into(), cwd: None, timeout_ms: t, pty: false };
            let requester = Requester { who: "anonymous".into(), ip: "::1".into(), fingerprint: String::new() };
            request(&p, requester, 1).map(|r| r.timeout_ms)
        };
        assert_eq!(req(None), Ok(300_000));
        assert_eq!(req(Some(1_000)), Ok(1_000));
        assert_eq!(req(Some(3_600_000)), Ok(3_600_000));
        for wrong in [5, 999, 3_600_001] {
            let err = req(Some(wrong)).unwrap_err();
            assert!(err.message.starts_with("timeout_ms must be from 1000 to 3600000 milliseconds"), "{err:?}");
        }
    }

    #[test]
    fn output_past_the_cap_is_not_kept() {
        let mut o = Outcome::default();
        absorb(&mut o, Some(ExecEvent::Output(Stream::Stdout, vec![b'a'; 6].into())), 8).unwrap();
        absorb(&mut o, Some(ExecEvent::Output(Stream::Stderr, vec![b'b'; 6].into())), 8).unwrap();
        assert_eq!((o.stdout.len(), o.stderr.len(), o.exit.truncated), (6, 2, true));
    }
}
