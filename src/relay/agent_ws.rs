//! `GET /agent/ws`: where daemons dial in, say hello, and take commands.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::AppState;
use super::hub::{AgentConn, Frame};
use super::keys::{self, Digest};
use super::readahead::ReadAhead;
use crate::protocol::agent::{
    self, AgentInfo, AgentMessage, Credentials, HelloRefusal, MAX_FRAME, OUTPUT_CHUNK_LARGE, PROTOCOL_VERSION,
    RelayMessage, VersionProbe,
};
use crate::protocol::files::{FrameKind, HEADER_LEN, decode_frame};

/// What the WebSocket reads into at most per read, allocated per link when it
/// opens and kept while it lives: the library's default (128 KiB) made an
/// idle agent cost the relay 140 KiB (8 KiB now, all told; BENCHMARKS.md).
/// Longer frames (output) still arrive whole, in more reads, served from the
/// link's read-ahead ([`ReadAhead`]) while they flow, not one system call each.
const READ_BUFFER: usize = 2 * 1024;

/// Frames queued for a daemon that are written together at most.
const SEND_BATCH: usize = 16;

/// Bytes of queued frames gathered before a write even without a flush: a
/// batch of commands fits; file chunks (128 KiB) are written one by one.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// How long a fresh connection has to say hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the relay tries to send its answer to a daemon's close.
const CLOSE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What an unknown code is compared against: no token hashes to all zeros.
const NO_TOKEN: keys::Digest = [0; 32];

/// The one refusal for an unknown code and for a known code with a wrong token.
const NOT_ACCEPTED: &str = "this relay does not accept this code with this token: the relay's store was reset, the \
code was replaced, or this machine's state file was copied or damaged; register anew";

/// An agent link: the WebSocket over the upgraded connection, read ahead.
type WebSocket = WebSocketStream<ReadAhead<TokioIo<hyper::upgrade::Upgraded>>>;

/// Upgrades the request and hands the socket to [`run`]. The handshake is
/// checked (and refused) as axum checks it, but the socket is built here, so
/// that its reads go through a [`ReadAhead`].
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let client = state.config.proxies.client_ip(peer.ip(), &parts.headers);
    let on_upgrade = parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned();
    if let Err(rejection) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        return rejection.into_response();
    }
    let (Some(on_upgrade), Some(key)) = (on_upgrade, parts.headers.get(header::SEC_WEBSOCKET_KEY)) else {
        return (StatusCode::BAD_REQUEST, "the agent link is a WebSocket over HTTP/1.1").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    // Frames queued together are written together (`send_queued`), and
    // flushed before the link waits again: nothing stays in a write buffer.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH_BYTES);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let io = ReadAhead::new(TokioIo::new(upgraded));
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        if let Err(e) = run(state, socket, client).await {
            tracing::info!(%peer, "agent link ended: {e:#}");
        }
    });
    let switching = [
        (header::CONNECTION, axum::http::HeaderValue::from_static("upgrade")),
        (header::UPGRADE, axum::http::HeaderValue::from_static("websocket")),
    ];
    let accept = [(header::SEC_WEBSOCKET_ACCEPT, accept)];
    (StatusCode::SWITCHING_PROTOCOLS, switching, accept).into_response()
}

/// An accepted hello: who the agent is and the frame that answers it.
struct Accepted {
    agent_id: i64,
    code_hash: Digest,
    code_created_ms: i64,
    /// The `Registered` frame, encoded: the link's task need not keep the message.
    reply: Message,
}

async fn run(state: AppState, mut socket: WebSocket, client: IpAddr) -> anyhow::Result<()> {
    let first = match timeout(HELLO_TIMEOUT, socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => anyhow::bail!("closed before saying hello"),
        Err(_) => anyhow::bail!("no hello within {HELLO_TIMEOUT:?}"),
    };
    let hello = parse_hello(&first);
    // The hello's bytes share the read buffer's allocation: held, they would
    // keep it from being reused for the link's life.
    drop(first);
    let (info, credentials) = match hello {
        Ok(hello) => hello,
        Err((reason, message)) => return Box::pin(refuse(socket, reason, message)).await,
    };
    // Boxed, as is every step that waits on the store or NATS, and the
    // refusals: a task is as large as the largest future it may await, and
    // this one lives as long as the link.
    let accepted = match Box::pin(accept(&state, &info, credentials, client)).await? {
        Ok(accepted) => accepted,
        Err((reason, message)) => return Box::pin(refuse(socket, reason, message)).await,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = state.hub.connect(accepted.agent_id, info, accepted.code_created_ms, state.config.link_limits(), tx);
    // In the hub before the daemon hears it is accepted: a caller that uses
    // the code the moment the daemon shows it must find the link. What is
    // queued for it meanwhile goes out after the reply.
    state.hub.insert(accepted.code_hash, Arc::clone(&conn));
    if let Some(cluster) = &state.cluster {
        // Boxed (see above): inline, its NATS calls made every link's task
        // 4 KB larger, with or without a cluster.
        Box::pin(cluster.hold(accepted.code_hash, Arc::clone(&conn))).await;
    }

    let mut code_hash = accepted.code_hash;
    let result = match socket.send(accepted.reply).await {
        Ok(()) => {
            tracing::info!(agent = accepted.agent_id, host = %conn.info.hostname, "agent connected");
            pump(&state, &conn, &mut code_hash, &mut socket, &mut rx).await
        }
        Err(e) => Err(e.into()),
    };

    state.hub.remove(&code_hash, &conn);
    if let Some(cluster) = &state.cluster {
        cluster.release(&code_hash, conn.conn_id);
    }
    // Only now answer a close the daemon sent: a daemon that waits for the
    // answer has stopped when its machine shows offline.
    let _ = timeout(CLOSE_ANSWER_WAIT, socket.flush()).await;
    if let Err(e) = Box::pin(state.store.touch_agent(accepted.agent_id, super::now_ms(), &conn.info)).await
        && state.store.fault("recording an agent's disconnect", &e).is_none()
    {
        tracing::warn!("recording agent disconnect: {e:#}");
    }
    tracing::info!(agent = accepted.agent_id, "agent disconnected");
    result
}

/// Moves frames both ways until the link ends, the agent is replaced, or the relay shuts down.
async fn pump(
    state: &AppState,
    conn: &Arc<AgentConn>,
    code_hash: &mut Digest,
    socket: &mut WebSocket,
    rx: &mut mpsc::UnboundedReceiver<Frame>,
) -> anyhow::Result<()> {
    let mut last_rx = tokio::time::Instant::now();
    let silence = state.config.link_timeout;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return close(socket, "relay shutting down").await,
            _ = conn.replaced.cancelled() => return close(socket, "replaced by a newer connection of this agent").await,
            Some(frame) = rx.recv() => {
                // A daemon that stops reading must not make the relay queue for it forever.
                timeout(silence, send_queued(socket, frame, rx))
                    .await
                    .map_err(|_| anyhow::anyhow!("the daemon stopped reading"))??;
            }
            _ = tokio::time::sleep_until(last_rx + silence) => anyhow::bail!("silent for {silence:?}"),
            frame = socket.next() => {
                last_rx = tokio::time::Instant::now();
                match frame {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => on_text(state, conn, code_hash, &text).await,
                    Some(Ok(Message::Binary(bytes))) => on_binary(conn, bytes),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                }
            }
        }
    }
}

async fn on_text(state: &AppState, conn: &Arc<AgentConn>, code_hash: &mut Digest, text: &str) {
    match AgentMessage::decode(text) {
        Ok(AgentMessage::Operator { req, op }) => {
            // Boxed like every wait on the store (see `run`): rare, and large.
            let outcome = Box::pin(super::operator::handle(state, conn, code_hash, op)).await;
            conn.send(RelayMessage::OperatorReply { req, outcome });
        }
        Ok(AgentMessage::Ping { seq }) => {
            conn.send(RelayMessage::Pong { seq });
        }
        Ok(AgentMessage::TokenSaved) => {
            if let Err(e) = Box::pin(state.store.forget_previous_token(conn.agent_id)).await {
                tracing::warn!(agent = conn.agent_id, "forgetting the previous token: {e:#}");
            }
        }
        Ok(AgentMessage::Hello { .. }) => {
            conn.send(RelayMessage::Error { message: "hello was already accepted on this link".into() });
        }
        Ok(msg) => {
            if let Some(msg) = conn.files.dispatch(msg) {
                conn.dispatch(msg);
            }
        }
        Err(e) => {
            conn.send(RelayMessage::Error { message: e.to_string() });
        }
    }
}

/// A binary frame from the daemon: a command's output, or a file's bytes.
fn on_binary(conn: &Arc<AgentConn>, bytes: Bytes) {
    let routed = decode_frame(&bytes).and_then(|frame| match frame.kind {
        FrameKind::Stdout | FrameKind::Stderr => {
            conn.output_frame(&frame, payload(&bytes));
            Ok(())
        }
        FrameKind::FileData | FrameKind::FileEnd => conn.files.frame(conn, &bytes),
    });
    if let Err(e) = routed {
        conn.send(RelayMessage::Error { message: e.to_string() });
    }
}

/// An output frame's payload as the relay holds it until its caller takes
/// it: a full chunk shares the frame's allocation (no copy on the fast path);
/// anything shorter is copied out. The frame's bytes are a slice of the
/// WebSocket's read buffer, which may be up to twice [`MAX_FRAME`] long and
/// also held the frames read before it: a few bytes kept as a slice would
/// keep all of it, so a daemon could make the relay hold hundreds of times
/// what the command's credit and the link's budget count.
fn payload(frame: &Bytes) -> Bytes {
    let payload = frame.slice(HEADER_LEN..);
    if payload.len() >= OUTPUT_CHUNK_LARGE { payload } else { Bytes::copy_from_slice(&payload) }
}

type Refused = (HelloRefusal, String);

fn parse_hello(text: &str) -> Result<(AgentInfo, Option<Credentials>), Refused> {
    let probe: Option<VersionProbe> = serde_json::from_str(text).ok();
    let version = probe.and_then(|p| p.protocol);
    if version != Some(PROTOCOL_VERSION) {
        return Err((HelloRefusal::Version, agent::version_mismatch(version)));
    }
    match agent::decode::<AgentMessage>(text) {
        Ok(AgentMessage::Hello { agent, credentials, .. }) => Ok((agent.cleaned(), credentials)),
        Ok(_) => Err((HelloRefusal::Version, agent::version_mismatch(None))),
        Err(e) => Err((HelloRefusal::Version, format!("the hello could not be read: {e}"))),
    }
}

/// Registers a new agent, or checks a returning agent's token.
async fn accept(
    state: &AppState,
    info: &AgentInfo,
    credentials: Option<Credentials>,
    client: IpAddr,
) -> anyhow::Result<Result<Accepted, Refused>> {
    let now = super::now_ms();
    let Some(Credentials { code, token }) = credentials else {
        if !state.registrations.take(client, now) {
            let max = state.registrations.max();
            return Ok(Err((
                HelloRefusal::RateLimited,
                format!(
                    "this address registered {max} new machines today, the most this relay allows; try again tomorrow"
                ),
            )));
        }
        return register(state, info, now).await.map(Ok).or_else(|e| storage_refusal(state, e));
    };
    let code_hash = state.keys.code_hash(&code);
    let record = state.store.agent_by_code(&code_hash).await?;
    // An unknown code is checked against a token nobody holds, so that it
    // costs the same work as a known code with a wrong token; both get the
    // same refusal, which tells a guesser nothing about which codes exist.
    let (stored, stored_prev) = match &record {
        Some(r) => (r.token_hash.as_slice(), r.prev_token_hash.as_deref()),
        None => (&NO_TOKEN[..], Some(&NO_TOKEN[..])),
    };
    let presented = state.keys.token_hash(&token);
    let current = keys::digest_eq(&presented, stored);
    let previous = stored_prev.is_some_and(|prev| keys::digest_eq(&presented, prev));
    let Some(record) = record.filter(|_| current || previous) else {
        return Ok(Err((HelloRefusal::UnknownCode, NOT_ACCEPTED.into())));
    };
    // A store that cannot be written (a full or read-only disk) does not keep
    // a known machine out: what is not written now waits for its next link.
    let written = |what: &str, result: anyhow::Result<()>| {
        let failed = |e: anyhow::Error| {
            if state.store.fault(what, &e).is_none() {
                tracing::warn!(agent = record.id, "{what}: {e:#}");
            }
        };
        result.map_err(failed).is_ok()
    };
    written("recording the agent's return", state.store.touch_agent(record.id, now, info).await);
    written("recording the agent's return", state.store.mark_returned(record.id, now).await);
    // A new token on every connection, while nothing runs. The one just used
    // stays valid until the new one is used, so a daemon that dies before
    // saving the new token still gets back in; once it is used, any older
    // token is dead. If it cannot be saved, the daemon keeps the one it has.
    let token = keys::new_token();
    let rotated = state.store.rotate_token(record.id, &state.keys.token_hash(&token), &presented).await;
    let token = written("rotating the agent's token (it keeps its old one)", rotated).then_some(token);
    Ok(Ok(Accepted {
        agent_id: record.id,
        code_hash,
        code_created_ms: record.code_created_ms,
        reply: text(&RelayMessage::Registered { code, token, code_created_ms: record.code_created_ms as u64 }),
    }))
}

/// A registration the store could not save, refused in words that say why
/// (the daemon retries with backoff); any other error stays an error.
fn storage_refusal(state: &AppState, e: anyhow::Error) -> anyhow::Result<Result<Accepted, Refused>> {
    let Some(fault) = state.store.fault("registering an agent", &e) else { return Err(e) };
    let message = format!("the relay cannot register new machines right now: {}; its daemon retries", fault.says());
    Ok(Err((HelloRefusal::RateLimited, message)))
}

async fn register(state: &AppState, info: &AgentInfo, now: i64) -> anyhow::Result<Accepted> {
    let token = keys::new_token();
    let token_hash = state.keys.token_hash(&token);
    let (code, code_hash) = super::operator::unused_code(state).await?;
    let agent_id = state.store.insert_agent(&code_hash, &token_hash, now, info).await?;
    state.store.wrote();
    tracing::info!(agent = agent_id, host = %info.hostname, "agent registered");
    state.metrics.registered();
    Ok(Accepted {
        agent_id,
        code_hash,
        code_created_ms: now,
        reply: text(&RelayMessage::Registered { code, token: Some(token), code_created_ms: now as u64 }),
    })
}

async fn refuse(mut socket: WebSocket, reason: HelloRefusal, message: String) -> anyhow::Result<()> {
    // The reason, not the words: a refusal for a full disk is logged once, by the store.
    tracing::info!(?reason, "hello refused");
    socket.send(text(&RelayMessage::HelloRefused { reason, message })).await?;
    close(&mut socket, "hello refused").await
}

async fn close(socket: &mut WebSocket, why: &'static str) -> anyhow::Result<()> {
    let frame = CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::from_static(why) };
    let _ = socket.send(Message::Close(Some(frame))).await;
    Ok(())
}

/// Writes `first` and what is queued behind it (commands sent to this
/// daemon at the same moment) together: one write, one wake-up for the daemon.
async fn send_queued(
    socket: &mut WebSocket,
    first: Frame,
    rx: &mut mpsc::UnboundedReceiver<Frame>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let message = |frame| match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes.into()),
    };
    socket.feed(message(first)).await?;
    for _ in 1..SEND_BATCH {
        let Ok(frame) = rx.try_recv() else { break };
        socket.feed(message(frame)).await?;
    }
    socket.flush().await
}

fn text(msg: &RelayMessage) -> Message {
    Message::Text(agent::encode(msg).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// A short output payload owns its bytes: held by a caller that reads
    /// slowly, it must not keep the read buffer it came in (here 512 KiB).
    #[test]
    fn a_short_output_payload_does_not_keep_the_read_buffer_it_came_in() {
        let id = uuid::Uuid::new_v4();
        let mut buffer = crate::protocol::files::encode_frame(FrameKind::Stdout, id, 0, b"x");
        let frame_len = buffer.len();
        buffer.resize(MAX_FRAME, 0);
        let buffer = Bytes::from(buffer);
        let within = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
        let short = payload(&buffer.slice(..frame_len));
        assert_eq!(&short[..], b"x");
        assert!(!within(&short), "a one-byte payload keeps the whole read buffer alive");
        let full = buffer.slice(..HEADER_LEN + OUTPUT_CHUNK_LARGE);
        assert!(within(&payload(&full)), "a full chunk is handed on as it was read");
    }

    /// Every idle agent costs the relay its link's task, and tokio allocates
    /// a task as large as the largest future it may ever await: a step awaited
    /// inline in `run` grows every link by its size, whether it runs or not.
    /// The cluster's NATS calls once did (a debug build's `run` was 5.4 KB
    /// with them, under 2.5 KB boxed; 11.8 KiB per idle agent against 8 KiB,
    /// BENCHMARKS.md). What `run` awaits once or rarely is boxed; this keeps it so.
    #[test]
    fn the_link_task_stays_small() {
        let size = future_size(run);
        assert!(size <= 3 * 1024, "an agent link's task is {size} bytes: box what `run` awaits once or rarely");
    }
}
