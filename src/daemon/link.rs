//! The daemon's link to the relay: dial out, say hello, take commands,
//! stream their output back; reconnect with capped, jittered backoff.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::commands::{Commands, Outbox};
use super::files::{FileOutbox, Files, Outgoing};
use super::shared::{Daemon, OperatorCall};
use crate::protocol::agent::{
    self, AgentInfo, AgentMessage, CAP_OUTPUT_CHUNK, CAP_OUTPUT_FRAMES, Credentials, HelloRefusal, MAX_FRAME,
    OperatorOutcome, PROTOCOL_VERSION, RelayMessage,
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

/// Messages queued for the relay that are written together at most: the
/// other sources (files, pings) wait for no longer than this many.
const SEND_BATCH: usize = 16;

/// How long a stopping daemon waits for the relay to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Commands still running at shutdown get this long to be killed.
const DRAIN: Duration = Duration::from_secs(5);

/// Keeps a link to the relay up until `shutdown`; then kills what still runs.
pub async fn run(
    daemon: Daemon,
    commands: Commands,
    mut calls: mpsc::Receiver<OperatorCall>,
    shutdown: CancellationToken,
) {
    link_loop(&daemon, &commands, &mut calls, &shutdown).await;
    daemon.link_down(None);
    // Each command's token was cancelled with its link: wait for the kills.
    if !commands.drain(DRAIN).await {
        tracing::warn!("some commands did not end within {DRAIN:?} of shutdown");
    }
}

async fn link_loop(
    daemon: &Daemon,
    commands: &Commands,
    calls: &mut mpsc::Receiver<OperatorCall>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    // Whether this process has printed the code yet.
    let mut announced = false;
    loop {
        // `connect` watches `shutdown` itself: dropped from outside, the
        // link would end without its closing handshake.
        match connect(daemon, commands, calls, &mut announced, shutdown).await {
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
async fn hello(daemon: &Daemon, announced: &mut bool) -> anyhow::Result<Result<Ws, Ended>> {
    let url = agent_url(&daemon.config().relay)?;
    let ws_config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME));
    let connector = super::tls::connector(daemon.config().ca_cert.as_deref())?;
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
            let first = !std::mem::replace(announced, true);
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
    eprintln!("Registered with relay {}", daemon.config().relay);
    eprintln!("Session: {code}");
}

/// One link's life: hello, then serve it until it ends.
async fn connect(
    daemon: &Daemon,
    commands: &Commands,
    calls: &mut mpsc::Receiver<OperatorCall>,
    announced: &mut bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let hello = tokio::select! {
        hello = hello(daemon, announced) => hello?,
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
    };
    let ws = match hello {
        Ok(ws) => ws,
        Err(ended) => return Ok(ended),
    };
    daemon.link_up();
    let (out, mut outgoing) = mpsc::channel::<Outgoing>(64);
    let (files_out, mut files_outgoing) = mpsc::channel::<Outgoing>(64);
    let mut link = Link {
        daemon,
        commands,
        files: Files::new(commands.clone(), daemon.config().max_file),
        files_out,
        ws,
        out,
        gone: CancellationToken::new(),
        last_ping: None,
        waiting: HashMap::new(),
        next_req: 0,
    };
    // However this function ends (an error, or being dropped at shutdown),
    // the commands its link carried are killed: nobody can hear them now.
    let _kill_on_exit = link.gone.clone().drop_guard();
    link.serve(&mut outgoing, &mut files_outgoing, calls, shutdown).await
}

/// A link that said hello and was accepted.
struct Link<'a> {
    /// Credentials, health and the event bus.
    daemon: &'a Daemon,
    /// Where commands go.
    commands: &'a Commands,
    /// Where file transfers go.
    files: Files,
    /// Transfers' messages and frames on their way to the relay, in order per transfer.
    files_out: FileOutbox,
    /// The WebSocket.
    ws: Ws,
    /// Commands' messages and output frames on their way to the relay, in order per command.
    out: Outbox,
    /// Cancelled when this link ends, and with it every command it carried.
    gone: CancellationToken,
    /// The last ping sent: its sequence number and when.
    last_ping: Option<(u64, Instant)>,
    /// Operator requests sent to the relay, awaiting replies, by request number.
    waiting: HashMap<u64, oneshot::Sender<OperatorOutcome>>,
    /// The last request number used.
    next_req: u64,
}

impl Link<'_> {
    /// Carries messages both ways until the link ends.
    async fn serve(
        &mut self,
        outgoing: &mut mpsc::Receiver<Outgoing>,
        files_outgoing: &mut mpsc::Receiver<Outgoing>,
        calls: &mut mpsc::Receiver<OperatorCall>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Ended> {
        let connected = Instant::now();
        let dropped = || Ended::Dropped { lasted: connected.elapsed() };
        let mut last_rx = Instant::now();
        let mut ping = tokio::time::interval(self.daemon.config().ping_interval);
        let silence = self.daemon.config().link_timeout;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.close().await;
                    return Ok(Ended::Shutdown);
                }
                Some(out) = outgoing.recv() => self.send_queued(out, outgoing).await?,
                Some(out) = files_outgoing.recv() => self.forward(out).await?,
                Some(call) = calls.recv() => self.operator(call).await?,
                _ = ping.tick() => self.ping().await?,
                _ = tokio::time::sleep_until(last_rx + silence) => {
                    tracing::warn!("nothing from the relay for {silence:?}");
                    return Ok(dropped());
                }
                frame = self.ws.next() => {
                    let Some(Ok(frame)) = frame else { return Ok(dropped()) };
                    last_rx = Instant::now();
                    match frame {
                        Message::Text(text) => self.dispatch(&text).await?,
                        Message::Binary(bytes) => {
                            if let Err(e) = self.files.frame(&bytes) {
                                tracing::warn!("{e}");
                            }
                        }
                        Message::Close(_) => return Ok(dropped()),
                        _ => {}
                    }
                }
            }
        }
    }

    /// The closing handshake: the relay answers once it has let this link
    /// go, so the machine shows offline the moment the daemon has stopped.
    /// A relay that does not answer gets [`CLOSE_WAIT`].
    async fn close(&mut self) {
        let handshake = async {
            self.ws.close(None).await?;
            while self.ws.next().await.transpose()?.is_some() {}
            anyhow::Ok(())
        };
        match timeout(CLOSE_WAIT, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("closing the relay link: {e:#}"),
            Err(_) => tracing::debug!("the relay did not answer the close within {CLOSE_WAIT:?}"),
        }
    }

    /// Sends a transfer's message or frame.
    async fn forward(&mut self, out: Outgoing) -> anyhow::Result<()> {
        Ok(self.ws.send(wire(out)).await?)
    }

    /// Sends `first` and what is queued behind it (a command's `started`
    /// and `exit`, say) in one write: one wake-up for the relay, not one each.
    async fn send_queued(&mut self, first: Outgoing, outgoing: &mut mpsc::Receiver<Outgoing>) -> anyhow::Result<()> {
        self.ws.feed(wire(first)).await?;
        for _ in 1..SEND_BATCH {
            let Ok(out) = outgoing.try_recv() else { break };
            self.ws.feed(wire(out)).await?;
        }
        Ok(self.ws.flush().await?)
    }

    async fn send(&mut self, msg: &AgentMessage) -> anyhow::Result<()> {
        Ok(self.ws.send(Message::text(agent::encode(msg))).await?)
    }

    /// Sends an operator request to the relay; its reply is matched by number.
    async fn operator(&mut self, (op, reply): OperatorCall) -> anyhow::Result<()> {
        if reply.is_closed() {
            // The operator was already told it failed: do not do it late.
            return Ok(());
        }
        self.next_req += 1;
        self.waiting.insert(self.next_req, reply);
        self.send(&AgentMessage::Operator { req: self.next_req, op }).await
    }

    async fn ping(&mut self) -> anyhow::Result<()> {
        let seq = self.last_ping.map_or(1, |(s, _)| s + 1);
        self.last_ping = Some((seq, Instant::now()));
        self.send(&AgentMessage::Ping { seq }).await
    }

    /// Acts on one message from the relay.
    async fn dispatch(&mut self, text: &str) -> anyhow::Result<()> {
        match agent::decode::<RelayMessage>(text) {
            Ok(RelayMessage::Exec(req)) => self.commands.submit(req, self.out.clone(), &self.gone),
            Ok(RelayMessage::Job { req, call }) => self.commands.job_call(req, call, self.out.clone()),
            Ok(RelayMessage::Cancel { id }) => {
                self.commands.cancel(id);
            }
            Ok(RelayMessage::FilePull(req)) => self.files.pull(req, self.files_out.clone(), &self.gone),
            Ok(RelayMessage::FilePush(req)) => self.files.push(req, self.files_out.clone(), &self.gone),
            Ok(RelayMessage::FileCredit { id, chunks }) => self.files.credit(id, chunks),
            Ok(RelayMessage::OutputCredit { id, chunks }) => self.commands.credit(id, chunks),
            Ok(RelayMessage::Ping { seq }) => self.send(&AgentMessage::Pong { seq }).await?,
            Ok(RelayMessage::Pong { seq }) => {
                if let Some((sent_seq, at)) = self.last_ping
                    && sent_seq == seq
                {
                    self.daemon.rtt_sample(at.elapsed());
                }
            }
            Ok(RelayMessage::OperatorReply { req, outcome }) => self.operator_reply(req, outcome)?,
            Ok(RelayMessage::AccountsChanged) => self.daemon.accounts_changed(),
            Ok(RelayMessage::Error { message }) => tracing::warn!("the relay says: {message}"),
            Ok(other) => tracing::warn!("unexpected {} message from the relay", other.kind()),
            Err(e) => tracing::warn!("{e}"),
        }
        Ok(())
    }

    /// Hands a reply to whoever asked; a new code is saved first.
    fn operator_reply(&mut self, req: u64, outcome: OperatorOutcome) -> anyhow::Result<()> {
        if let OperatorOutcome::CodeReset { code, .. } = &outcome
            && let Some(creds) = self.daemon.credentials()
        {
            self.daemon.set_credentials(Some(Credentials { code: *code, token: creds.token }))?;
            announce(self.daemon, &code.to_string());
            // The relay cancels them too; this holds even if it did not.
            self.commands.withdraw_other_codes(&code.masked());
        }
        if let Some(reply) = self.waiting.remove(&req) {
            let _ = reply.send(outcome);
        }
        Ok(())
    }
}

/// A command's or a transfer's message or frame as the WebSocket carries it.
fn wire(out: Outgoing) -> Message {
    match out {
        Outgoing::Message(msg) => Message::text(agent::encode(&msg)),
        Outgoing::Frame(bytes) => Message::binary(bytes),
    }
}

/// What this machine tells the relay about itself.
pub fn agent_info() -> AgentInfo {
    AgentInfo {
        hostname: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec![
            "pty".into(),
            "jobs".into(),
            "files".into(),
            CAP_OUTPUT_FRAMES.into(),
            CAP_OUTPUT_CHUNK.into(),
        ],
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
