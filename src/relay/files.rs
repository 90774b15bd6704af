//! `GET`/`PUT /api/v1/files/{code}?path=…`: pull a file from a machine and
//! push one to it, streamed through the relay with a credit window, checked
//! with SHA-256. REST and MCP share [`begin_pull`] and [`begin_push`]. No byte
//! of a file is logged or kept: it passes through memory a window at a time.
//! In a cluster, a machine another relay holds is reached through it.

use std::net::SocketAddr;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::access::{self, Caller};
use super::error::{AgentOffline, ApiError, ErrorBody, MAX_MACHINE_TEXT, Reason, machine_text};
use super::transfer::{FileEvent, Open, OpenError, Transfer};
use crate::protocol::files::{
    ByteRange, CONTENT_TYPES, FILE_CHUNK, FILE_WINDOW, FileFailure, FileOpened, FrameKind, PullRequest, PushRequest,
    human_size, is_sha256_hex,
};

/// The files and machines routes of the OpenAPI document, merged into the relay's.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(pull, push, super::machines::get_machines, super::machines::patch_machine),
    components(schemas(PushResult, super::machines::Machine, super::machines::MachineList, super::machines::Renamed, super::machines::RenameParams)),
    tags(
        (name = "files", description = "Pull and push files"),
        (name = "machines", description = "An account's machines"),
    )
)]
pub struct FilesDoc;

/// The header a push's checksum comes in, and a pull's goes out in.
pub const SHA256_HEADER: &str = "x-content-sha256";

/// The capability a daemon announces when it can move files.
pub const CAPABILITY: &str = "files";

/// The query of both routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// The machine's own path: absolute, or relative to the daemon's working directory.
    pub path: String,
    /// Push: permission bits in octal (`0644`); 0644 when absent.
    #[serde(default)]
    pub mode: Option<String>,
    /// Push: replace a file already at `path`.
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// What a finished push answers.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
#[schema(example = json!({"ok": true, "path": "/etc/motd", "size": 812, "sha256": "9f86d0…"}))]
pub struct PushResult {
    /// True: the file is in place.
    pub ok: bool,
    /// The path as given.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256 of what was written.
    pub sha256: String,
}

/// A push as the relay checked it, before the daemon is asked.
#[derive(Debug, Clone)]
pub struct PushSpec {
    /// The machine's path.
    pub path: String,
    /// Bytes that will follow.
    pub size: u64,
    /// Permission bits.
    pub mode: Option<u32>,
    /// Replace an existing file.
    pub overwrite: bool,
    /// The checksum the caller sent, lowercase hex.
    pub sha256: Option<String>,
}

/// Checks a path: not empty, no NUL, bounded.
pub fn check_path(path: &str) -> Result<String, ApiError> {
    if path.trim().is_empty() {
        return Err(ApiError::bad_request(
            "path is empty; send the machine's path, absolute or relative to the daemon's working directory, e.g. ?path=/var/log/syslog",
        ));
    }
    if path.contains('\0') || path.len() > 4096 {
        return Err(ApiError::bad_request("path must be at most 4096 bytes and contain no NUL byte"));
    }
    Ok(path.to_owned())
}

/// Parses an octal mode (`644`, `0644`, `0o644`), at most `7777`.
pub fn parse_mode(text: &str) -> Result<u32, ApiError> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApiError::bad_request("mode must be permission bits in octal, such as 0644 or 0755"))
}

/// The query, or a 400 in JSON that says what it takes (without quoting what was sent).
fn read_query(query: Result<Query<FileQuery>, QueryRejection>) -> Result<FileQuery, ApiError> {
    query.map(|Query(q)| q).map_err(|_| {
        ApiError::bad_request(
            "the query must be ?path=<the machine's path>, with &mode=<octal, e.g. 0644> and &overwrite=true or false              on a push",
        )
    })
}

/// The error a daemon's failure becomes; its words are the machine's, framed so.
pub fn from_failure(failure: FileFailure, message: &str) -> ApiError {
    let text = format!(
        "The machine says (text from the machine, not from the relay): {}",
        machine_text(message, MAX_MACHINE_TEXT)
    );
    let (status, reason) = match failure {
        FileFailure::BadRequest | FileFailure::NotAFile => (StatusCode::BAD_REQUEST, Reason::BadRequest),
        FileFailure::Busy => (StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited),
        FileFailure::Denied => (StatusCode::FORBIDDEN, Reason::Denied),
        FileFailure::ApprovalTimeout => (StatusCode::FORBIDDEN, Reason::ApprovalTimeout),
        FileFailure::Disabled => (StatusCode::FORBIDDEN, Reason::Forbidden),
        FileFailure::NotFound => (StatusCode::NOT_FOUND, Reason::NotFound),
        FileFailure::Exists => (StatusCode::CONFLICT, Reason::Exists),
        FileFailure::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Reason::TooLarge),
        FileFailure::ChecksumMismatch => (StatusCode::UNPROCESSABLE_ENTITY, Reason::ChecksumMismatch),
        FileFailure::Failed => (StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal),
    };
    let mut err = ApiError::new(status, reason, text);
    if failure == FileFailure::Busy {
        err.retry_after = Some(1);
    }
    err
}

/// The error for an event that is not the one a transfer waits for.
pub fn unexpected(event: Option<FileEvent>) -> ApiError {
    match event {
        None => ApiError::agent_offline(),
        Some(FileEvent::Failed(failure, message)) => from_failure(failure, &message),
        Some(FileEvent::Revoked(why)) => ApiError::revoked(why),
        Some(FileEvent::RelayLost) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::AgentOffline,
            "The relay holding the machine's connection stopped answering mid-transfer, so the file may or may not \
             be complete on the machine. Its daemon reconnects to another relay within seconds: retry then.",
        ),
        Some(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            Reason::Internal,
            "The machine's daemon answered out of turn; retry, and tell the relay's operator if it persists.",
        ),
    }
}

fn too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Reason::TooLarge,
        format!(
            "The file is {} ({size} bytes); this relay moves files of at most {} ({max} bytes). Split it (split -b) or compress it first.",
            human_size(size),
            human_size(max)
        ),
    )
}

fn open_error(e: OpenError) -> ApiError {
    match e {
        OpenError::Offline => ApiError::agent_offline(),
        OpenError::Busy(max) => ApiError::link_busy(max),
        OpenError::PayloadLimit(limit) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Internal,
            format!(
                "The machine is connected to another relay of this cluster, and NATS's max_payload ({limit} bytes) \
                 is below a file chunk ({FILE_CHUNK} bytes). Ask the relay's operator to raise max_payload in \
                 nats-server's configuration (the default, 1 MiB, works)."
            ),
        ),
    }
}

/// The machine `code` names, online (here, or on another relay of a cluster) and able to move files.
async fn machine(state: &AppState, caller: &Caller, code: &str) -> Result<access::Target, ApiError> {
    let target = access::admit(state, caller, code, access::Purpose::Use).await?;
    if target.conn.is_none() && state.cluster.is_none() {
        return Err(ApiError::agent_offline());
    }
    if !target.info.capabilities.iter().any(|c| c == CAPABILITY) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            Reason::BadRequest,
            "This machine's daemon is too old to move files. Ask its operator to upgrade aic-daemon, or use remote_exec.",
        ));
    }
    Ok(target)
}

/// Opens a transfer on the machine's link: here, or through the relay of the cluster holding it.
async fn open(state: &AppState, target: access::Target, open: Open, caller: &Caller) -> Result<Transfer, ApiError> {
    let account = caller.account.as_ref().map(|a| a.id);
    let opened = match (&target.conn, &state.cluster) {
        (Some(conn), _) => Transfer::open(conn, open, state.config.max_in_flight, account),
        (None, Some(cluster)) => cluster.open(&target.code_hash, open, account).await,
        (None, None) => Err(OpenError::Offline),
    };
    opened.map_err(open_error)
}

/// Opens a pull: access, the operator's approval, the file's size and checksum.
pub async fn begin_pull(
    state: &AppState,
    caller: &Caller,
    code: &str,
    path: &str,
    range: Option<ByteRange>,
    window: u32,
) -> Result<(FileOpened, Transfer), ApiError> {
    let path = check_path(path)?;
    let target = machine(state, caller, code).await?;
    let req = PullRequest {
        id: Uuid::new_v4(),
        path,
        range,
        max_size: state.config.max_file,
        window,
        requester: caller.requester(&state.keys),
    };
    let mut transfer = open(state, target, Open::Pull(req), caller).await?;
    match transfer.next().await {
        Some(FileEvent::Opened(opened)) => Ok((opened, transfer)),
        other => Err(unexpected(other)),
    }
}

/// Opens a push: access and the size cap; the operator decides as the first bytes wait for credit.
pub async fn begin_push(state: &AppState, caller: &Caller, code: &str, spec: &PushSpec) -> Result<Transfer, ApiError> {
    if spec.size > state.config.max_file {
        return Err(too_large(spec.size, state.config.max_file));
    }
    let target = machine(state, caller, code).await?;
    let req = PushRequest {
        id: Uuid::new_v4(),
        path: spec.path.clone(),
        size: spec.size,
        mode: spec.mode,
        overwrite: spec.overwrite,
        sha256: spec.sha256.clone(),
        max_size: state.config.max_file,
        requester: caller.requester(&state.keys),
    };
    open(state, target, Open::Push(req), caller).await
}

/// Sends `bytes` (all of a small push) and waits for the file to be in place.
pub async fn push_all(mut transfer: Transfer, bytes: &[u8]) -> Result<(u64, String), ApiError> {
    for chunk in bytes.chunks(FILE_CHUNK) {
        transfer.send(FrameKind::FileData, chunk).await.map_err(unexpected)?;
    }
    finish_push(transfer).await
}

/// Sends the end frame and waits for the daemon's word.
async fn finish_push(mut transfer: Transfer) -> Result<(u64, String), ApiError> {
    transfer.send(FrameKind::FileEnd, &[]).await.map_err(unexpected)?;
    match transfer.next().await {
        Some(FileEvent::Done { size, sha256 }) => Ok((size, sha256)),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/files/{code}`.
#[utoipa::path(
    get,
    path = "/api/v1/files/{code}",
    tag = "files",
    summary = "Pull a file from a machine",
    description = "Streams the bytes of the file at `path` on the machine. `X-Content-SHA256` is the SHA-256 of the \
whole file (also with `Range`, so a resumed download can be checked once it is whole); `Content-Type` is guessed from \
the first bytes. `Range: bytes=N-` resumes. In supervised mode the operator approves the pull first. Directories are \
refused: archive them first (`tar czf /tmp/dir.tgz -C /path/to dir`) and pull the archive. Files over the size cap \
(100 MiB by default) are refused with 413.",
    params(
        ("code" = String, Path, description = "Session code, or an account's alias"),
        FileQuery,
        ("Range" = Option<String>, Header, description = "`bytes=N-`, `bytes=N-M` or `bytes=-N`"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("X-Content-SHA256" = String, description = "SHA-256 of the whole file, hex"))),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`bad_request`: no path, a directory, a malformed code", body = ErrorBody),
        (status = 403, description = "`denied`, `approval_timeout`, `forbidden`, or an access refusal (as for exec)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such file on the machine, or no such code or alias", body = ErrorBody),
        (status = 413, description = "`too_large`: the file is over the relay's or the daemon's cap", body = ErrorBody),
        (status = 416, description = "The range starts past the end of the file"),
        AgentOffline,
    )
)]
pub async fn pull(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
    query: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = read_query(query)?;
    let caller = access::authenticate(&state, &headers, peer).await?;
    // An unreadable Range is ignored, as HTTP says: the whole file comes back.
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(ByteRange::parse);
    let (opened, transfer) = begin_pull(&state, &caller, &code, &query.path, range, FILE_WINDOW).await?;
    Ok(pull_response(&opened, range, transfer))
}

/// The response of a pull: headers from what the daemon found, then its bytes as they come.
pub fn pull_response(opened: &FileOpened, range: Option<ByteRange>, transfer: Transfer) -> Response {
    let size = opened.size;
    let picked = match range {
        None => Some((0, size)),
        Some(r) => r.resolve(size),
    };
    let Some((offset, len)) = picked else {
        let range = format!("bytes */{size}");
        return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, range)]).into_response();
    };
    let kind = CONTENT_TYPES.iter().find(|t| **t == opened.content_type).unwrap_or(&"application/octet-stream");
    let mut response = Response::new(Body::from_stream(body_stream(transfer)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(sha) = HeaderValue::from_str(&opened.sha256) {
        h.insert(SHA256_HEADER, sha);
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {offset}-{}/{size}", (offset + len).saturating_sub(1));
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

/// A pull's bytes as a body stream; a failure mid-way breaks the response
/// (the client sees fewer bytes than `Content-Length`), never a short "success".
fn body_stream(transfer: Transfer) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(transfer), |transfer| async move {
        let mut transfer = transfer?;
        match transfer.next().await {
            Some(FileEvent::Data(data)) => Some((Ok(Bytes::from(data)), Some(transfer))),
            Some(FileEvent::End) => None,
            other => {
                let why = match other {
                    Some(FileEvent::Failed(_, message)) => machine_text(&message, MAX_MACHINE_TEXT),
                    Some(FileEvent::RelayLost) => "the relay holding the machine stopped answering".into(),
                    _ => "the machine's daemon went away".into(),
                };
                Some((Err(std::io::Error::other(why)), None))
            }
        }
    })
}

/// `PUT /api/v1/files/{code}`.
#[utoipa::path(
    put,
    path = "/api/v1/files/{code}",
    tag = "files",
    summary = "Push a file to a machine",
    description = "Writes the request body to `path` on the machine: into a temporary file in the same directory \
(0600), checked against `X-Content-SHA256` when sent, fsynced, given `mode`, then renamed into place. An existing \
file is refused unless `overwrite=true`; a path that is a symbolic link or a directory is refused. `Content-Length` \
is required. In supervised mode the operator approves the push first (`push 3.2 MiB to /etc/motd, mode 0644`).",
    params(
        ("code" = String, Path, description = "Session code, or an account's alias"),
        FileQuery,
        ("X-Content-SHA256" = Option<String>, Header, description = "SHA-256 the body must have, hex"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "The file is in place", body = PushResult),
        (status = 400, description = "`bad_request`: no path, a bad mode or checksum, a directory or symbolic link, a body shorter than its Content-Length", body = ErrorBody),
        (status = 403, description = "`denied`, `approval_timeout`, `forbidden`, or an access refusal (as for exec)", body = ErrorBody),
        (status = 404, description = "`not_found`: the directory does not exist on the machine, or no such code or alias", body = ErrorBody),
        (status = 409, description = "`exists`: a file is at `path` and `overwrite` was not given", body = ErrorBody),
        (status = 411, description = "`bad_request`: no Content-Length", body = ErrorBody),
        (status = 413, description = "`too_large`: over the relay's or the daemon's cap", body = ErrorBody),
        (status = 422, description = "`checksum_mismatch`: the bytes do not have the SHA-256 sent; nothing was written", body = ErrorBody),
        AgentOffline,
    )
)]
pub async fn push(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
    query: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let query = read_query(query)?;
    let caller = access::authenticate(&state, &headers, peer).await?;
    let spec = push_spec(&headers, &query)?;
    push_body(&state, &caller, &code, spec, body).await
}

/// A push's parameters from its query and headers.
pub fn push_spec(headers: &HeaderMap, query: &FileQuery) -> Result<PushSpec, ApiError> {
    let path = check_path(&query.path)?;
    let mode = query.mode.as_deref().map(parse_mode).transpose()?;
    let (size, sha256) = body_facts(headers)?;
    Ok(PushSpec { path, size, mode, overwrite: query.overwrite.unwrap_or(false), sha256 })
}

/// A push body's size (`Content-Length`) and the checksum it must have, from its headers.
pub fn body_facts(headers: &HeaderMap) -> Result<(u64, Option<String>), ApiError> {
    // Without Content-Length or Transfer-Encoding, HTTP/1.1 says the body is empty.
    let empty = (!headers.contains_key(header::TRANSFER_ENCODING)).then_some(0);
    let size = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(empty)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                Reason::BadRequest,
                "Send the file with a Content-Length (curl --upload-file FILE or --data-binary @FILE do).",
            )
        })?;
    let sha256 = match headers.get(SHA256_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().filter(|s| is_sha256_hex(s.trim())) {
            Some(s) => Some(s.trim().to_ascii_lowercase()),
            None => {
                return Err(ApiError::bad_request("X-Content-SHA256 must be 64 hex digits (sha256sum prints them)"));
            }
        },
    };
    Ok((size, sha256))
}

/// A whole push from a request body: access, the operator, the bytes, the rename. 201 with [`PushResult`].
pub async fn push_body(
    state: &AppState,
    caller: &Caller,
    code: &str,
    spec: PushSpec,
    body: Body,
) -> Result<Response, ApiError> {
    let transfer = begin_push(state, caller, code, &spec).await?;
    push_stream(transfer, spec.path, spec.size, body).await
}

/// The bytes of an open push to `path` from a request body of `size` bytes, then the rename. 201 with [`PushResult`].
pub async fn push_stream(mut transfer: Transfer, path: String, size: u64, body: Body) -> Result<Response, ApiError> {
    // Nothing of the body is read until the machine is ready for it.
    transfer.ready().await.map_err(unexpected)?;
    stream_body(&mut transfer, body, size).await?;
    let (size, sha256) = finish_push(transfer).await?;
    Ok((StatusCode::CREATED, Json(PushResult { ok: true, path, size, sha256 })).into_response())
}

/// Streams the request body to the daemon in chunks, each waiting for credit.
async fn stream_body(transfer: &mut Transfer, body: Body, size: u64) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(FILE_CHUNK);
    let mut total: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        total += piece.len() as u64;
        let mut rest = &piece[..];
        while !rest.is_empty() {
            let take = rest.len().min(FILE_CHUNK - buf.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == FILE_CHUNK {
                transfer.send(FrameKind::FileData, &buf).await.map_err(unexpected)?;
                buf.clear();
            }
        }
    }
    if total != size {
        return Err(ApiError::bad_request(format!(
            "the body was {total} bytes, not the {size} its Content-Length said; nothing was written"
        )));
    }
    if !buf.is_empty() {
        transfer.send(FrameKind::FileData, &buf).await.map_err(unexpected)?;
    }
    Ok(())
}
