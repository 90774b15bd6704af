//! The daemon's link to the relay: dial out, say hello, take commands,
//! stream their output back; reconnect with capped, jittered backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::state::{State, StateFile};
use super::{Config, LinkStatus, Mode, executor};
use crate::protocol::agent::{
    self, AgentInfo, AgentMessage, Credentials, ExecRequest, HelloRefusal, LINK_TIMEOUT, MAX_FRAME, PING_INTERVAL,
    PROTOCOL_VERSION, Refusal, RelayMessage,
};

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

/// Keeps a link to the relay up until `shutdown`.
pub async fn run(
    config: Config,
    file: StateFile,
    mut state: State,
    status: watch::Sender<LinkStatus>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    let limit = Arc::new(Semaphore::new(config.max_concurrent));
    loop {
        let attempt = tokio::select! {
            r = connect(&config, &file, &mut state, &limit, &status, &shutdown) => r,
            _ = shutdown.cancelled() => Ok(Ended::Shutdown),
        };
        status.send_modify(|s| s.connected = false);
        match attempt {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Reregister) => continue,
            Ok(Ended::Dropped { lasted }) => {
                tracing::warn!("relay link lost after {}s; reconnecting", lasted.as_secs());
                if lasted >= STABLE_LINK {
                    backoff = Backoff::default();
                }
            }
            Err(e) => tracing::warn!("relay link: {e:#}"),
        }
        let wait = backoff.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
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

/// Checks the relay URL's form, for a clear error at start.
pub fn check_relay_url(relay: &str) -> anyhow::Result<()> {
    agent_url(relay).map(drop)
}

async fn connect(
    config: &Config,
    file: &StateFile,
    state: &mut State,
    limit: &Arc<Semaphore>,
    status: &watch::Sender<LinkStatus>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let url = agent_url(&config.relay)?;
    let ws_config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(ws_config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;

    let hello =
        AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent: agent_info(), credentials: state.credentials.clone() };
    ws.send(Message::text(agent::encode(&hello))).await?;
    let reply = match timeout(HELLO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => agent::decode::<RelayMessage>(&text)?,
        Ok(other) => bail!("the relay closed the link before answering hello ({other:?})"),
        Err(_) => bail!("the relay did not answer hello within {HELLO_TIMEOUT:?}"),
    };
    match reply {
        RelayMessage::Registered { code, token, .. } => {
            if let Some(token) = token {
                state.credentials = Some(Credentials { code, token });
                file.save(state).context("saving the new code and token")?;
            }
            if status.borrow().code != Some(code) {
                // The operator's (and the journal's) way to learn the code.
                eprintln!("Registered with relay {}", config.relay);
                eprintln!("Session: {code}");
            }
        }
        RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, message } => {
            tracing::warn!("{message}");
            state.credentials = None;
            file.save(state)?;
            return Ok(Ended::Reregister);
        }
        RelayMessage::HelloRefused { message, .. } => {
            bail!("the relay refused this daemon: {message}")
        }
        other => bail!("unexpected first answer from the relay: {other:?}"),
    }
    tracing::info!("linked to {url}");
    let code = state.credentials.as_ref().map(|c| c.code);
    status.send_replace(LinkStatus { code, connected: true });

    let connected = Instant::now();
    let (out_tx, mut out_rx) = mpsc::channel::<AgentMessage>(64);
    let running: Arc<Mutex<HashMap<Uuid, CancellationToken>>> = Arc::default();
    let link_gone = CancellationToken::new();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut seq = 0u64;

    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                break Ended::Shutdown;
            }
            Some(msg) = out_rx.recv() => ws.send(Message::text(agent::encode(&msg))).await?,
            _ = ping.tick() => {
                seq += 1;
                ws.send(Message::text(agent::encode(&AgentMessage::Ping { seq }))).await?;
            }
            frame = timeout(LINK_TIMEOUT, ws.next()) => {
                let Ok(frame) = frame else { break Ended::Dropped { lasted: connected.elapsed() } };
                match frame {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break Ended::Dropped { lasted: connected.elapsed() },
                    Some(Ok(Message::Text(text))) => match agent::decode::<RelayMessage>(&text) {
                        Ok(RelayMessage::Exec(req)) => start(config, req, limit, &running, &link_gone, &out_tx),
                        Ok(RelayMessage::Cancel { id }) => {
                            if let Some(token) = running.lock().unwrap().get(&id) {
                                token.cancel();
                            }
                        }
                        Ok(RelayMessage::Ping { seq }) => ws.send(Message::text(agent::encode(&AgentMessage::Pong { seq }))).await?,
                        Ok(RelayMessage::Pong { .. }) => {}
                        Ok(RelayMessage::Error { message }) => tracing::warn!("the relay says: {message}"),
                        Ok(other) => tracing::warn!("unexpected message from the relay: {other:?}"),
                        Err(e) => tracing::warn!("{e}"),
                    },
                    Some(Ok(_)) => {}
                }
            }
        }
    };
    // Whoever asked for the running commands can no longer hear them.
    link_gone.cancel();
    Ok(ended)
}

/// Starts a command on its own task, unless the mode or the limit says no.
fn start(
    config: &Config,
    req: ExecRequest,
    limit: &Arc<Semaphore>,
    running: &Arc<Mutex<HashMap<Uuid, CancellationToken>>>,
    link_gone: &CancellationToken,
    out: &mpsc::Sender<AgentMessage>,
) {
    let id = req.id;
    let refuse = |reason, message: String| {
        let out = out.clone();
        tokio::spawn(async move {
            let _ = out.send(AgentMessage::Refused { id, reason, message }).await;
        });
    };
    if config.mode == Mode::Disabled {
        return refuse(Refusal::Disabled, "this machine's operator has disabled remote commands".into());
    }
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        let message = format!(
            "this machine is already running {} command(s), as many as its operator allows at once; retry when one has finished",
            config.max_concurrent
        );
        return refuse(Refusal::Busy, message);
    };
    let cancel = link_gone.child_token();
    running.lock().unwrap().insert(id, cancel.clone());
    let running = Arc::clone(running);
    let out = out.clone();
    tokio::spawn(async move {
        executor::run(req, out, cancel).await;
        running.lock().unwrap().remove(&id);
        drop(permit);
    });
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
    }
}
