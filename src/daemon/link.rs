//! The daemon's link to the relay: dial out, say hello, take commands,
//! stream their output back; reconnect with capped, jittered backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::core::{Daemon, OperatorCall};
use super::executor::{self, Outbox};
use crate::protocol::agent::{
    self, AgentInfo, AgentMessage, Credentials, ExecRequest, HelloRefusal, LINK_TIMEOUT, MAX_FRAME, OperatorOutcome,
    PROTOCOL_VERSION, Refusal, RelayMessage,
};
use crate::protocol::control::{CommandState, Decision, Mode};

/// First wait before reconnecting.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A link that lasted this long resets the backoff.
const STABLE_LINK: Duration = Duration::from_secs(60);
/// How long the relay has to answer a hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a link ended.
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The relay forgot our code; register again at once.
    Reregister,
    /// The link dropped after working for `lasted`.
    Dropped { lasted: Duration },
}

/// Commands in flight on this daemon, by id, so that a cancel can reach them.
type Running = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

/// Commands still running at shutdown get this long to be killed.
const DRAIN: Duration = Duration::from_secs(5);

/// Keeps a link to the relay up until `shutdown`; then kills what still runs.
pub async fn run(daemon: Daemon, mut calls: mpsc::Receiver<OperatorCall>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    link_loop(&daemon, &mut calls, &tasks, &shutdown).await;
    daemon.link_down(None);
    // Each command's token was cancelled with its link: wait for the kills.
    tasks.close();
    if timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!("some commands did not end within {DRAIN:?} of shutdown");
    }
}

async fn link_loop(
    daemon: &Daemon,
    calls: &mut mpsc::Receiver<OperatorCall>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    let limit = Arc::new(Semaphore::new(daemon.config.max_concurrent));
    loop {
        let attempt = tokio::select! {
            r = connect(daemon, &limit, calls, tasks, shutdown) => r,
            _ = shutdown.cancelled() => Ok(Ended::Shutdown),
        };
        match attempt {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Reregister) => continue,
            Ok(Ended::Dropped { lasted }) => {
                tracing::warn!("relay link lost after {}s; reconnecting", lasted.as_secs());
                daemon.link_down(Some("the link dropped".into()));
                if lasted >= STABLE_LINK {
                    backoff = Backoff::default();
                }
            }
            Err(e) => {
                tracing::warn!("relay link: {e:#}");
                daemon.link_down(Some(format!("{e:#}")));
            }
        }
        let wait = backoff.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn agent_url(relay: &str) -> anyhow::Result<String> {
    let base = relay.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        bail!("--relay must start with ws://, wss://, http:// or https:// (got {relay:?})");
    };
    Ok(format!("{base}/agent/ws"))
}

/// Checks the relay URL at start: its form, and that the agent token never
/// crosses a network unencrypted (plain `ws://` only on loopback, unless allowed).
pub fn check_relay_url(relay: &str, allow_insecure: bool) -> anyhow::Result<()> {
    let url = agent_url(relay)?;
    let Some(rest) = url.strip_prefix("ws://") else { return Ok(()) };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_insecure {
        bail!(
            "refusing to send this machine's agent token unencrypted to {host}: use wss:// (or https://), or pass --insecure-relay on a network you trust"
        );
    }
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Dials and says hello; on success the relay has accepted this daemon.
async fn hello(daemon: &Daemon) -> anyhow::Result<Result<Ws, Ended>> {
    let url = agent_url(&daemon.config.relay)?;
    let ws_config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME));
    let connector = super::tls::connector(daemon.config.ca_cert.as_deref())?;
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(&url, Some(ws_config), true, connector)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let hello =
        AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent: agent_info(), credentials: daemon.credentials() };
    ws.send(Message::text(agent::encode(&hello))).await?;
    let reply = match timeout(HELLO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => agent::decode::<RelayMessage>(&text)?,
        Ok(_) => bail!("the relay closed the link before answering hello"),
        Err(_) => bail!("the relay did not answer hello within {HELLO_TIMEOUT:?}"),
    };
    match reply {
        RelayMessage::Registered { code, token, .. } => {
            let previous = daemon.credentials().map(|c| c.code);
            if let Some(token) = token {
                daemon.set_credentials(Some(Credentials { code, token })).context("saving the new code and token")?;
                // Only now may the relay forget the token this link was opened with.
                ws.send(Message::text(agent::encode(&AgentMessage::TokenSaved))).await?;
            }
            let first = !daemon.announced.swap(true, std::sync::atomic::Ordering::Relaxed);
            if first || previous != Some(code) {
                announce(daemon, &code.to_string());
            }
            tracing::info!("linked to {url}");
            Ok(Ok(ws))
        }
        RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, message } => {
            tracing::warn!("{message}");
            daemon.set_credentials(None)?;
            Ok(Err(Ended::Reregister))
        }
        RelayMessage::HelloRefused { reason: HelloRefusal::BadToken, message } => bail!(
            "the relay refused this machine's agent token ({message}). To start over as a new machine with a new code: stop aic-daemon, move {} away, and start it again",
            daemon.state_path().display()
        ),
        RelayMessage::HelloRefused { message, .. } => bail!("the relay refused this daemon: {message}"),
        other => bail!("unexpected first answer from the relay: a {} message", other.kind()),
    }
}

/// Prints the code where the operator (and the journal) will see it.
fn announce(daemon: &Daemon, code: &str) {
    eprintln!("Registered with relay {}", daemon.config.relay);
    eprintln!("Session: {code}");
}

async fn connect(
    daemon: &Daemon,
    limit: &Arc<Semaphore>,
    calls: &mut mpsc::Receiver<OperatorCall>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let mut ws = match hello(daemon).await? {
        Ok(ws) => ws,
        Err(ended) => return Ok(ended),
    };
    daemon.link_up();
    let connected = Instant::now();
    let (out_tx, mut out_rx) = mpsc::channel::<AgentMessage>(64);
    let running: Running = Arc::default();
    let link_gone = CancellationToken::new();
    // However this function ends (an error, or being dropped at shutdown),
    // the commands its link carried are killed: nobody can hear them now.
    let _kill_on_exit = link_gone.clone().drop_guard();
    let mut last_rx = Instant::now();
    let mut ping = tokio::time::interval(daemon.config.ping_interval);
    let mut last_ping: Option<(u64, Instant)> = None;
    let mut waiting: HashMap<u64, oneshot::Sender<OperatorOutcome>> = HashMap::new();
    let mut next_req = 0u64;

    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                break Ended::Shutdown;
            }
            Some(msg) = out_rx.recv() => ws.send(Message::text(agent::encode(&msg))).await?,
            Some((op, reply)) = calls.recv() => {
                if reply.is_closed() {
                    // The operator was already told it failed: do not do it late.
                    continue;
                }
                next_req += 1;
                waiting.insert(next_req, reply);
                ws.send(Message::text(agent::encode(&AgentMessage::Operator { req: next_req, op }))).await?;
            }
            _ = ping.tick() => {
                let seq = last_ping.map_or(1, |(s, _)| s + 1);
                last_ping = Some((seq, Instant::now()));
                ws.send(Message::text(agent::encode(&AgentMessage::Ping { seq }))).await?;
            }
            _ = tokio::time::sleep_until(last_rx + LINK_TIMEOUT) => {
                tracing::warn!("nothing from the relay for {LINK_TIMEOUT:?}");
                break Ended::Dropped { lasted: connected.elapsed() };
            }
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { break Ended::Dropped { lasted: connected.elapsed() } };
                last_rx = Instant::now();
                let text = match frame {
                    Message::Text(text) => text,
                    Message::Close(_) => break Ended::Dropped { lasted: connected.elapsed() },
                    _ => continue,
                };
                match agent::decode::<RelayMessage>(&text) {
                    Ok(RelayMessage::Exec(req)) => start(daemon, req, limit, &running, &link_gone, &out_tx, tasks),
                    Ok(RelayMessage::Cancel { id }) => {
                        if let Some(token) = running.lock().unwrap().get(&id) {
                            token.cancel();
                        }
                    }
                    Ok(RelayMessage::Ping { seq }) => {
                        ws.send(Message::text(agent::encode(&AgentMessage::Pong { seq }))).await?;
                    }
                    Ok(RelayMessage::Pong { seq }) => {
                        if let Some((sent_seq, at)) = last_ping && sent_seq == seq {
                            daemon.rtt_sample(at.elapsed());
                        }
                    }
                    Ok(RelayMessage::OperatorReply { req, outcome }) => {
                        if let OperatorOutcome::CodeReset { code, .. } = &outcome
                            && let Some(creds) = daemon.credentials()
                        {
                            daemon.set_credentials(Some(Credentials { code: *code, token: creds.token }))?;
                            announce(daemon, &code.to_string());
                        }
                        if let Some(reply) = waiting.remove(&req) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Ok(RelayMessage::AccountsChanged) => daemon.accounts_changed(),
                    Ok(RelayMessage::Error { message }) => tracing::warn!("the relay says: {message}"),
                    Ok(other) => tracing::warn!("unexpected {} message from the relay", other.kind()),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    };
    Ok(ended)
}

/// Takes a command on its own task: the mode, the limit and (supervised)
/// the operator decide whether it runs.
fn start(
    daemon: &Daemon,
    req: ExecRequest,
    limit: &Arc<Semaphore>,
    running: &Running,
    link_gone: &CancellationToken,
    out: &mpsc::Sender<AgentMessage>,
    tasks: &TaskTracker,
) {
    let id = req.id;
    let mode = daemon.mode();
    let outbox = Outbox::new(daemon.clone(), out.clone());
    let permit = Arc::clone(limit).try_acquire_owned();
    let initial = match (&permit, mode) {
        (Err(_), _) | (_, Mode::Disabled) => CommandState::Refused,
        (Ok(_), Mode::Supervised) => CommandState::Pending,
        (Ok(_), Mode::Auto) => CommandState::Running,
    };
    daemon.record(&req, initial);
    let cancel = link_gone.child_token();
    running.lock().unwrap().insert(id, cancel.clone());
    let running = Arc::clone(running);
    let daemon = daemon.clone();
    let max = daemon.config.max_concurrent;
    tasks.spawn(async move {
        match permit {
            Ok(permit) => handle(&daemon, req, mode, &outbox, &cancel, permit).await,
            Err(_) => {
                let message = format!(
                    "this machine is already running {max} command(s), as many as its operator allows at once; retry when one has finished"
                );
                outbox.refuse(id, Refusal::Busy, message).await;
            }
        }
        running.lock().unwrap().remove(&id);
    });
}

async fn handle(
    daemon: &Daemon,
    req: ExecRequest,
    mode: Mode,
    outbox: &Outbox,
    cancel: &CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let id = req.id;
    match mode {
        Mode::Disabled => {
            let message = "this machine's operator has disabled remote commands (aic-console mode disabled)".into();
            return outbox.refuse(id, Refusal::Disabled, message).await;
        }
        Mode::Auto => {}
        Mode::Supervised => match daemon.await_approval(&req, cancel).await {
            Decision::Approved => {}
            Decision::Denied => {
                let message = "the machine's operator denied this command".into();
                return outbox.refuse(id, Refusal::Denied, message).await;
            }
            Decision::TimedOut => {
                let message = format!(
                    "the machine's operator did not answer within {}; ask them to watch aic-console, then retry",
                    human(daemon.config.approval_timeout)
                );
                return outbox.refuse(id, Refusal::ApprovalTimeout, message).await;
            }
            Decision::Withdrawn => return daemon.cancelled(id),
        },
    }
    if cancel.is_cancelled() {
        // Approved in the same instant its caller left: nobody would hear it.
        return daemon.cancelled(id);
    }
    executor::run(req, outbox, cancel).await;
    if cancel.is_cancelled() {
        daemon.cancelled(id);
    }
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// What this machine tells the relay about itself.
pub fn agent_info() -> AgentInfo {
    AgentInfo {
        hostname: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec!["pty".into()],
    }
}

/// Capped exponential backoff with jitter: each wait is drawn from the upper
/// half of the current step, so daemons that lost the same relay spread out.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: BACKOFF_START }
    }
}

impl Backoff {
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_CAP);
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        step.mul_f64(0.5 + 0.5 * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_under_it() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..20).map(|_| b.next_wait()).collect();
        assert!(waits[0] <= BACKOFF_START);
        assert!(waits.iter().all(|w| *w <= BACKOFF_CAP));
        assert!(waits[19] >= BACKOFF_CAP / 2);
    }

    #[test]
    fn relay_urls() {
        assert_eq!(agent_url("ws://127.0.0.1:8080/").unwrap(), "ws://127.0.0.1:8080/agent/ws");
        assert_eq!(agent_url("https://relay.example.com").unwrap(), "wss://relay.example.com/agent/ws");
        assert!(agent_url("relay.example.com").unwrap_err().to_string().contains("must start with"));
        for ok in
            ["ws://127.0.0.1:8080", "ws://localhost:1", "ws://[::1]:9", "wss://relay.example.com", "https://r.example"]
        {
            check_relay_url(ok, false).unwrap();
        }
        for plain in ["ws://relay.example.com", "http://10.0.0.5:8080", "ws://[2001:db8::1]:80"] {
            let err = check_relay_url(plain, false).unwrap_err().to_string();
            assert!(err.contains("unencrypted") && err.contains("--insecure-relay"), "{err}");
            check_relay_url(plain, true).unwrap();
        }
    }
}
