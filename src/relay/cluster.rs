//! Several relays as one (`--nats-url`, beside a shared `--database-url`):
//! each relay holds the WebSocket links of some machines, and a command for a
//! machine held by another relay goes there over NATS.
//!
//! The relay holding a link answers on `aic.agent.<hash>`, a subject derived
//! from the code's keyed hash (never the code), as a queue subscription, so
//! one relay answers even while a machine moves between relays. A caller's
//! relay sends an `Ask` there as a NATS request: no responders means the
//! machine is offline, at once. Output comes back on the caller's own inbox
//! in sequenced frames under NATS's payload limit, at most [`WINDOW`] frames
//! ahead of the caller's acknowledgements (core NATS has no flow control and
//! drops on a slow consumer, so the holder never runs ahead), with heartbeats
//! both ways: a holder silent for [`SILENCE`] fails the caller's request; a
//! caller silent as long gets its command cancelled. Which machines some
//! relay holds is noted in a JetStream KV bucket ([`super::presence`]), for
//! status and listing. Job calls go the same way, one request and one
//! answer each, under NATS's payload limit. File transfers go as output does
//! ([`RemoteTransfer`]), and so do one-use file links kept by another relay
//! ([`LinkUse`]). Only the exec request, its output frames, job calls and their
//! answers carry command text or output, only transfer frames carry file
//! bytes, and nothing in NATS keeps them (no JetStream stream holds them).

mod files;
mod links;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::{AgentConn, Exec, ExecEvent, ExecLink, Issuer, Progress, Revocation, StartError};
use super::keys::Digest;
use super::metrics::Metrics;
use super::presence::{self, Presence};
use crate::protocol::agent::{ExecRequest, ExitStatus, Refusal, Stream};
use crate::protocol::jobs::{JobCall, JobReply};

pub use files::RemoteTransfer;
pub use links::LinkUse;

/// Output frames a holder sends past the caller's last acknowledgement at most.
pub const WINDOW: u64 = 16;
/// Output bytes per frame at most: well under NATS's default 1 MiB payload limit.
pub const CHUNK: usize = 64 * 1024;
/// How often each side says it is still there.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// Silence from the other side after which a command is given up.
pub const SILENCE: Duration = Duration::from_secs(12);
/// How long a command's request waits for the holding relay's answer. A
/// machine no relay holds is refused long before: NATS says at once that the
/// subject has no responders.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the wait it gives its daemon a job call waits for the holding relay.
const JOB_MARGIN: Duration = Duration::from_secs(5);
/// How long a status lookup waits for the holding relay (without presence in KV).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The queue group all relays' agent subscriptions join.
const QUEUE: &str = "aic-relays";
/// Where relays tell each other the requests and registrations they let through.
const LIMITS_SUBJECT: &str = "aic.limits";
/// How often they do: the lag before a client's requests on one relay count on the others.
pub const LIMITS_EVERY: Duration = Duration::from_millis(500);

/// What one relay let through since it last said, per client network.
#[derive(Serialize, Deserialize)]
struct Spent {
    /// The relay that says it, which ignores its own message.
    from: String,
    /// Requests on the rate-limited routes.
    requests: Vec<(std::net::IpAddr, u32)>,
    /// New agent registrations.
    registrations: Vec<(std::net::IpAddr, u32)>,
}

/// What a caller's relay asks the relay holding a machine's link.
#[derive(Serialize, Deserialize)]
enum Ask {
    /// Is the machine's link held? (status)
    Probe,
    /// An account was linked to the machine on another relay: tell its operator.
    AccountsChanged,
    /// Run this command; send its frames to `frames`.
    Exec {
        /// The command, as the daemon is sent it.
        request: Box<ExecRequest>,
        /// Who started it.
        issuer: Issuer,
        /// The caller's inbox for output frames.
        frames: String,
    },
    /// Carry this job call to the daemon (the caller's relay checked access).
    Job {
        /// The call, with the owner the caller's relay named.
        call: Box<JobCall>,
        /// How long the daemon may take to answer, in milliseconds.
        within_ms: u64,
    },
    /// Open this file transfer (the caller's relay checked access); send its frames to `frames`.
    Transfer {
        /// The pull or push.
        open: Box<super::transfer::Open>,
        /// The account that asked, if any: blocking it stops the transfer.
        account: Option<i64>,
        /// The caller's inbox for frames.
        frames: String,
    },
}

/// The holding relay's answer to an [`Ask`].
#[derive(Serialize, Deserialize)]
enum Answer {
    /// The link is held here.
    Here,
    /// The command was handed to the daemon; acknowledge frames on `acks`.
    Accepted {
        /// The holder's inbox for acknowledgements and cancels.
        acks: String,
    },
    /// The command could not be handed over.
    NotStarted(StartError),
    /// The file transfer could not be handed over.
    NotOpened(super::transfer::OpenError),
    /// The daemon's answer to a job call; `None` when it gave none in time
    /// or the link went away.
    Job(Option<Box<JobReply>>),
    /// The daemon's answer to a job call, `bytes` long, exceeds NATS's payload `limit`.
    TooLarge {
        /// The answer's size.
        bytes: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
}

/// Why a job call came back with no answer through the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobError {
    /// No relay holds the machine's link (or it let go, its daemon did not
    /// answer in time, or NATS is down).
    Offline,
    /// The call (`answer` false) or its answer exceeds NATS's payload limit.
    TooLarge {
        /// Whether it is the answer that does not fit.
        answer: bool,
        /// Its size.
        bytes: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
}

/// A command's event as a frame carries it (output goes as raw bytes).
#[derive(Serialize, Deserialize)]
enum Wire {
    Started,
    Exit(ExitStatus),
    Refused(Refusal, String),
    Unanswered {
        timeout_ms: u64,
        #[serde(default)]
        started: bool,
    },
    Revoked(Revocation),
    /// The daemon's link went away.
    Lost,
}

/// Frame kinds: the first byte of a frame, then the stream byte and the sequence number.
const OUTPUT: u8 = b'o';
const EVENT: u8 = b'e';
const BEAT: u8 = b'h';
/// Acknowledgement kinds, caller to holder.
const ACK: u8 = b'a';
const CANCEL: u8 = b'c';

/// The NATS subject a machine's link answers on: a hash of its code's keyed hash.
pub fn subject(code_hash: &Digest) -> String {
    let digest = sha2::Sha256::new().chain_update(b"aic nats subject\0").chain_update(code_hash).finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("aic.agent.{hex}")
}

/// This relay's part in the cluster.
pub struct Cluster {
    /// The NATS connection; it reconnects (and resubscribes) by itself.
    client: Client,
    /// The subscriptions held for this relay's links, by code hash, with the link's id.
    held: Mutex<HashMap<Digest, (u64, CancellationToken)>>,
    /// Where commands run for other relays' callers are counted.
    metrics: Arc<Metrics>,
    /// How long past its timeout a command may run (the links' grace).
    grace: Duration,
    /// This relay among the others, for the limits it shares and the presence it notes.
    instance: String,
    /// Which machines the relays hold; `None` when NATS has no JetStream,
    /// and status then asks the holding relay.
    presence: Option<Presence>,
}

impl Cluster {
    /// Connects to NATS at `url`.
    pub async fn connect(url: &str, metrics: Arc<Metrics>, grace: Duration) -> anyhow::Result<Arc<Self>> {
        let client = async_nats::ConnectOptions::new()
            .name("aic-relay")
            .request_timeout(Some(ASK_TIMEOUT))
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}; is nats-server running there?"))?;
        let instance = uuid::Uuid::new_v4().to_string();
        let presence = Presence::open(&client)
            .await
            .map_err(|e| {
                tracing::warn!(
                    "no presence bucket in NATS ({e}; run nats-server with -js): status and listing ask the \
                     holding relay instead"
                )
            })
            .ok();
        Ok(Arc::new(Self { client, held: Mutex::default(), metrics, grace, instance, presence }))
    }

    /// Answers for `conn` on its code's subject, and notes it in the presence
    /// bucket, until [`Cluster::release`] (or a newer hold).
    pub async fn hold(self: &Arc<Self>, code_hash: Digest, conn: Arc<AgentConn>) {
        let subscriber = match self.client.queue_subscribe(subject(&code_hash), QUEUE.into()).await {
            Ok(s) => s,
            Err(e) => return tracing::error!(agent = conn.agent_id, "subscribing for the agent on NATS: {e}"),
        };
        let _ = self.client.flush().await;
        // Noted before the daemon hears it is accepted, as the hub has it.
        let key = presence::key(&code_hash);
        let revision = self.note_present(&key).await;
        let stop = CancellationToken::new();
        let old = self.held.lock().unwrap().insert(code_hash, (conn.conn_id, stop.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        tokio::spawn(Arc::clone(self).listen(subscriber, conn, stop, (key, revision)));
    }

    /// Stops answering for the link `conn_id` on `code_hash` (gone, or moved to a new code).
    pub fn release(&self, code_hash: &Digest, conn_id: u64) {
        let mut held = self.held.lock().unwrap();
        if held.get(code_hash).is_some_and(|(id, _)| *id == conn_id)
            && let Some((_, stop)) = held.remove(code_hash)
        {
            stop.cancel();
        }
    }

    /// Answers asks for `conn` and keeps its presence entry (`key`, at the
    /// revision noted last) fresh, until `stop`; then deletes the entry.
    async fn listen(
        self: Arc<Self>,
        mut subscriber: Subscriber,
        conn: Arc<AgentConn>,
        stop: CancellationToken,
        (key, mut revision): (String, Option<u64>),
    ) {
        let mut refresh = tokio::time::interval_at(Instant::now() + presence::REFRESH, presence::REFRESH);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = refresh.tick() => revision = self.note_present(&key).await.or(revision),
                msg = subscriber.next() => match msg {
                    Some(msg) => { tokio::spawn(Arc::clone(&self).answer(Arc::clone(&conn), msg)); }
                    None => break,
                },
            }
        }
        let _ = subscriber.unsubscribe().await;
        if let (Some(presence), Some(revision)) = (&self.presence, revision) {
            presence.forget(&key, revision).await;
        }
    }

    /// Notes (again) that this relay holds the machine behind `key`: the entry's revision.
    async fn note_present(&self, key: &str) -> Option<u64> {
        self.presence.as_ref()?.note(key, &self.instance).await
    }

    /// One ask from another relay, for the link `conn`.
    async fn answer(self: Arc<Self>, conn: Arc<AgentConn>, msg: async_nats::Message) {
        let Ok(ask) = serde_json::from_slice::<Ask>(&msg.payload) else { return };
        let Some(reply) = msg.reply else {
            if let Ask::AccountsChanged = ask {
                conn.send(crate::protocol::agent::RelayMessage::AccountsChanged);
            }
            return;
        };
        let (request, issuer, frames) = match ask {
            Ask::Probe => return self.publish(reply.to_string(), json(&Answer::Here)).await,
            Ask::AccountsChanged => return,
            Ask::Job { call, within_ms } => {
                let answer = conn.job(*call, Duration::from_millis(within_ms)).await;
                return self.publish(reply.to_string(), fit(answer, self.client.server_info().max_payload)).await;
            }
            Ask::Transfer { open, account, frames } => {
                let ask = files::TransferAsk { open: *open, account, frames };
                return self.serve_transfer(&conn, ask, reply.to_string()).await;
            }
            Ask::Exec { request, issuer, frames } => (request, issuer, frames),
        };
        let exec = match conn.start(*request, issuer) {
            Ok(exec) => exec,
            Err(e) => return self.publish(reply.to_string(), json(&Answer::NotStarted(e))).await,
        };
        let acks_subject = self.client.new_inbox();
        let Ok(acks) = self.client.subscribe(acks_subject.clone()).await else { return };
        self.publish(reply.to_string(), json(&Answer::Accepted { acks: acks_subject })).await;
        self.stream(exec, frames, acks).await;
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!("publishing on NATS: {e}");
        }
    }

    /// Sends a command's events to the caller's relay as frames, within the
    /// credit its acknowledgements give, until the command ends or the caller
    /// cancels or goes silent (dropping `exec` then cancels it on the machine).
    async fn stream(&self, mut exec: Exec, frames: String, mut acks: Subscriber) {
        let (mut seq, mut acked, mut heard) = (0u64, 0u64, Instant::now());
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                event = exec.next(), if within_window(seq, acked) => {
                    let last = !matches!(event, Some(ExecEvent::Started | ExecEvent::Output(..)));
                    for frame in encode(event, &mut seq) {
                        self.publish(frames.clone(), frame).await;
                    }
                    if last {
                        let _ = self.client.flush().await;
                        return;
                    }
                }
                ack = acks.next() => match ack.as_ref().map(|m| m.payload.as_ref()) {
                    Some([ACK, n @ ..]) => {
                        acked = acked_now(acked, number(n), seq);
                        heard = Instant::now();
                    }
                    Some([CANCEL, ..]) | None => return,
                    Some(_) => {}
                },
                _ = beat.tick() => {
                    if heard.elapsed() > SILENCE {
                        tracing::warn!("the caller's relay went silent; cancelling its command");
                        return;
                    }
                    self.publish(frames.clone(), vec![BEAT, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
                }
            }
        }
    }

    /// Sends a command to the relay holding the machine's link; its events
    /// arrive on the returned handle as if the link were here.
    pub async fn start(&self, code_hash: &Digest, request: ExecRequest, issuer: Issuer) -> Result<Exec, StartError> {
        let (id, timeout) = (request.id, Duration::from_millis(request.timeout_ms));
        let frames_subject = self.client.new_inbox();
        let frames = self.client.subscribe(frames_subject.clone()).await.map_err(|e| nats_down(&e))?;
        let ask = json(&Ask::Exec { request: Box::new(request), issuer, frames: frames_subject });
        let reply = self.client.request(subject(code_hash), ask.into()).await.map_err(|e| request_failed(&e))?;
        let acks = match serde_json::from_slice::<Answer>(&reply.payload) {
            Ok(Answer::Accepted { acks }) => acks,
            Ok(Answer::NotStarted(e)) => return Err(e),
            _ => return Err(StartError::Offline),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let ends =
            Ends { tx, cancel: cancel.clone(), progress: Arc::clone(&progress), metrics: Arc::clone(&self.metrics) };
        tokio::spawn(receive(self.client.clone(), frames, acks, ends));
        let link = ExecLink::Remote(cancel.drop_guard(), progress);
        Ok(Exec::new(id, rx, timeout, super::hub::START_ALLOWANCE, self.grace, Arc::clone(&self.metrics), link))
    }

    /// Sends a job call to the relay holding the machine's link, whose daemon
    /// gets `within` to answer it, as over a link held here.
    pub async fn job(&self, code_hash: &Digest, call: JobCall, within: Duration) -> Result<JobReply, JobError> {
        let ask = json(&Ask::Job { call: Box::new(call), within_ms: within.as_millis() as u64 });
        let limit = self.client.server_info().max_payload;
        if limit > 0 && ask.len() > limit {
            return Err(JobError::TooLarge { answer: false, bytes: ask.len(), limit });
        }
        let request = async_nats::Request::new().payload(ask.into()).timeout(Some(within + JOB_MARGIN));
        let reply = self.client.send_request(subject(code_hash), request).await.map_err(|e| {
            request_failed(&e);
            JobError::Offline
        })?;
        match serde_json::from_slice::<Answer>(&reply.payload) {
            Ok(Answer::Job(Some(reply))) => Ok(*reply),
            Ok(Answer::TooLarge { bytes, limit }) => Err(JobError::TooLarge { answer: true, bytes, limit }),
            _ => Err(JobError::Offline),
        }
    }

    /// Tells the relay holding the machine's link that its accounts changed (a new link).
    pub async fn accounts_changed(&self, code_hash: &Digest) {
        self.publish(subject(code_hash), json(&Ask::AccountsChanged)).await;
    }

    /// Whether some relay holds the link of the machine behind `code_hash`:
    /// its presence entry or, if the bucket cannot be read, whether a holder answers.
    pub async fn online(&self, code_hash: &Digest) -> bool {
        if let Some(presence) = &self.presence
            && let Some(held) = presence.held(&presence::key(code_hash)).await
        {
            return held;
        }
        let ask = self.client.request(subject(code_hash), json(&Ask::Probe).into());
        match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
            Ok(Ok(reply)) => matches!(serde_json::from_slice(&reply.payload), Ok(Answer::Here)),
            _ => false,
        }
    }
}

/// Shares the rate limits and registration caps with the other relays until
/// shutdown: what this relay let through goes out every [`LIMITS_EVERY`], and
/// what the others did is charged here, so a client spread over N relays does
/// not get N budgets.
pub async fn share_limits(state: super::AppState) {
    let Some(cluster) = state.cluster.clone() else { return };
    state.limiter.share();
    state.registrations.share();
    let mut heard = match cluster.client.subscribe(LIMITS_SUBJECT).await {
        Ok(s) => s,
        Err(e) => return tracing::error!("subscribing to the shared rate limits on NATS: {e}"),
    };
    let mut tick = tokio::time::interval(LIMITS_EVERY);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let requests = state.limiter.take_counts();
                let registrations = state.registrations.take_counts();
                if !requests.is_empty() || !registrations.is_empty() {
                    let spent = Spent { from: cluster.instance.clone(), requests, registrations };
                    cluster.publish(LIMITS_SUBJECT.into(), json(&spent)).await;
                }
            }
            msg = heard.next() => {
                let Some(msg) = msg else { return };
                let Ok(spent) = serde_json::from_slice::<Spent>(&msg.payload) else { continue };
                if spent.from == cluster.instance {
                    continue;
                }
                let now = super::now_ms();
                spent.requests.into_iter().for_each(|(ip, n)| state.limiter.charge(ip, n));
                spent.registrations.into_iter().for_each(|(ip, n)| state.registrations.charge(ip, n, now));
            }
        }
    }
}

fn nats_down(e: &dyn std::fmt::Display) -> StartError {
    tracing::warn!("routing a command through NATS: {e}");
    StartError::Offline
}

fn request_failed(e: &async_nats::RequestError) -> StartError {
    if e.kind() != async_nats::RequestErrorKind::NoResponders {
        tracing::warn!("routing a command through NATS: {e}");
    }
    StartError::Offline
}

/// A daemon's answer to a job call as a payload of at most `limit` bytes:
/// output cut short when it would not fit (the caller reads on from where it
/// ends, as after any page), else, for an answer that cannot be cut, its size.
fn fit(reply: Option<JobReply>, limit: usize) -> Vec<u8> {
    let mut answer = Answer::Job(reply.map(Box::new));
    loop {
        let payload = json(&answer);
        if limit == 0 || payload.len() <= limit {
            return payload;
        }
        let too_large = || json(&Answer::TooLarge { bytes: payload.len(), limit });
        let Answer::Job(Some(reply)) = &mut answer else { return too_large() };
        let JobReply::Output { data, stderr, .. } = reply.as_mut() else { return too_large() };
        let mut none = Vec::new();
        let stderr = stderr.as_mut().unwrap_or(&mut none);
        let longer = if data.len() >= stderr.len() { &mut *data } else { &mut *stderr };
        // Base64 carries 3 bytes in 4 characters.
        let cut = (payload.len() - limit).div_ceil(4) * 3 + 3;
        longer.truncate(longer.len().saturating_sub(cut));
        if data.is_empty() && stderr.is_empty() {
            return too_large();
        }
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("cluster messages serialize")
}

fn number(bytes: &[u8]) -> u64 {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// What the sender may count as acknowledged once the receiver says `said`:
/// never past what was `sent`, whatever a peer claims, so a window stays a window.
fn acked_now(acked: u64, said: u64, sent: u64) -> u64 {
    acked.max(said.min(sent))
}

/// Whether the sender may send more, having `sent` with `acked` acknowledged.
fn within_window(sent: u64, acked: u64) -> bool {
    sent < acked.saturating_add(WINDOW)
}

/// An acknowledgement of `n` events (or chunks) taken, caller to holder.
fn acknowledgement(n: u64) -> Vec<u8> {
    let mut payload = vec![ACK];
    payload.extend_from_slice(&n.to_be_bytes());
    payload
}

/// A frame: kind, stream, sequence number, body.
fn frame(kind: u8, stream: u8, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&[kind, stream]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An event as frames (output split under [`CHUNK`]), numbered on from `seq`.
fn encode(event: Option<ExecEvent>, seq: &mut u64) -> Vec<Vec<u8>> {
    let mut next = || {
        *seq += 1;
        *seq
    };
    let wire = match event {
        Some(ExecEvent::Output(stream, data)) => {
            let stream = stream as u8;
            return data.chunks(CHUNK).map(|part| frame(OUTPUT, stream, next(), part)).collect();
        }
        Some(ExecEvent::Started) => Wire::Started,
        Some(ExecEvent::Exit(exit)) => Wire::Exit(exit),
        Some(ExecEvent::Refused(reason, message)) => Wire::Refused(reason, message),
        Some(ExecEvent::Unanswered { timeout, started }) => {
            Wire::Unanswered { timeout_ms: timeout.as_millis() as u64, started }
        }
        Some(ExecEvent::Revoked(why)) => Wire::Revoked(why),
        None | Some(ExecEvent::RelayLost) => Wire::Lost,
    };
    vec![frame(EVENT, 0, next(), &json(&wire))]
}

/// A frame back into an event: `Some(None)` for a heartbeat, `None` for a frame that makes no sense.
fn decode(payload: &[u8]) -> Option<(u64, Option<ExecEvent>)> {
    let (&[kind, stream], rest) = payload.split_first_chunk::<2>()?;
    let seq = number(rest);
    let body = rest.get(8..)?;
    let event = match kind {
        BEAT => return Some((0, None)),
        OUTPUT => ExecEvent::Output(
            if stream == 1 { Stream::Stderr } else { Stream::Stdout },
            axum::body::Bytes::copy_from_slice(body),
        ),
        EVENT => match serde_json::from_slice(body).ok()? {
            Wire::Started => ExecEvent::Started,
            Wire::Exit(exit) => ExecEvent::Exit(exit),
            Wire::Refused(reason, message) => ExecEvent::Refused(reason, message),
            Wire::Unanswered { timeout_ms, started } => {
                ExecEvent::Unanswered { timeout: Duration::from_millis(timeout_ms), started }
            }
            Wire::Revoked(why) => ExecEvent::Revoked(why),
            Wire::Lost => ExecEvent::RelayLost,
        },
        _ => return None,
    };
    Some((seq, Some(event)))
}

/// The caller's side of a remote command, as [`receive`] serves it.
struct Ends {
    /// Where its events go.
    tx: mpsc::UnboundedSender<ExecEvent>,
    /// Cancelled when the caller drops its [`Exec`].
    cancel: CancellationToken,
    /// How many events the caller took: acknowledged as they are taken, so
    /// the holding relay runs at most a window ahead of the caller, not of this relay.
    progress: Arc<Progress>,
    /// Where output held for the caller is counted.
    metrics: Arc<Metrics>,
}

/// The caller's side of a remote command: frames in, events out, acknowledgements back.
async fn receive(client: Client, mut frames: Subscriber, acks: String, ends: Ends) {
    let ack = |n: u64| client.publish(acks.clone(), acknowledgement(n).into());
    let (mut got, mut acked, mut heard) = (0u64, 0u64, Instant::now());
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = ends.cancel.cancelled() => {
                let _ = client.publish(acks.clone(), vec![CANCEL].into()).await;
                return;
            }
            _ = ends.progress.moved.notified() => {
                let taken = ends.progress.taken.load(std::sync::atomic::Ordering::Relaxed);
                if taken >= acked + WINDOW / 2 {
                    acked = taken;
                    let _ = ack(taken).await;
                }
            }
            msg = frames.next() => {
                heard = Instant::now();
                let Some((seq, event)) = msg.and_then(|m| decode(&m.payload)) else {
                    let _ = ends.tx.send(ExecEvent::RelayLost);
                    return;
                };
                let Some(event) = event else { continue };
                if Some(seq) != got.checked_add(1) {
                    tracing::warn!("a frame of a command's output was lost between relays");
                    let _ = ends.tx.send(ExecEvent::RelayLost);
                    return;
                }
                got = seq;
                let last = !matches!(event, ExecEvent::Started | ExecEvent::Output(..));
                deliver(&ends, event);
                if last {
                    return;
                }
            }
            _ = beat.tick() => {
                if heard.elapsed() > SILENCE {
                    let _ = ends.tx.send(ExecEvent::RelayLost);
                    return;
                }
                acked = ends.progress.taken.load(std::sync::atomic::Ordering::Relaxed);
                let _ = ack(acked).await;
            }
        }
    }
}

/// Hands an event to the caller, counting its output as held until taken.
fn deliver(ends: &Ends, event: ExecEvent) {
    let held = match &event {
        ExecEvent::Output(_, data) => data.len(),
        _ => 0,
    };
    ends.metrics.hold(held);
    if ends.tx.send(event).is_err() {
        ends.metrics.release(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_acknowledgement_never_goes_past_what_was_sent() {
        assert_eq!(acked_now(2, u64::MAX, 5), 5, "an ack of u64::MAX counts as what was sent");
        assert_eq!(acked_now(2, 4, 5), 4);
        assert_eq!(acked_now(4, 1, 5), 4, "an older ack takes nothing back");
        assert!(within_window(5, acked_now(0, u64::MAX, 5)), "no overflow past the window");
        assert!(!within_window(WINDOW + 5, acked_now(0, u64::MAX, 5)), "the holder waits for the caller");
        assert!(!within_window(u64::MAX, u64::MAX), "the window saturates rather than wraps");
    }

    #[test]
    fn frames_carry_events_and_output_in_order() {
        let mut seq = 0;
        let big = vec![7u8; CHUNK * 2 + 5];
        let frames = encode(Some(ExecEvent::Output(Stream::Stderr, big.clone().into())), &mut seq);
        assert_eq!(frames.len(), 3);
        let mut back = Vec::new();
        for (n, f) in frames.iter().enumerate() {
            assert!(f.len() <= CHUNK + 10);
            let (s, event) = decode(f).unwrap();
            assert_eq!(s, n as u64 + 1);
            let Some(ExecEvent::Output(Stream::Stderr, data)) = event else { panic!("not output") };
            back.extend(data);
        }
        assert_eq!(back, big);
        let exit = ExitStatus { exit_code: 3, ..ExitStatus::default() };
        let frames = encode(Some(ExecEvent::Exit(exit)), &mut seq);
        assert_eq!(decode(&frames[0]).unwrap(), (4, Some(ExecEvent::Exit(exit))));
        assert_eq!(decode(&encode(None, &mut seq)[0]).unwrap(), (5, Some(ExecEvent::RelayLost)));
    }

    fn output(data: usize, stderr: Option<usize>) -> JobReply {
        let job = serde_json::from_value(serde_json::json!({"id": uuid::Uuid::nil(), "state": "running",
            "command": "x".repeat(1000), "who": "anonymous", "createdMs": 1, "durationMs": 2, "outputBytes": 3,
            "droppedBytes": 0, "truncated": false}))
        .unwrap();
        JobReply::Output { job, offset: 5, data: vec![b'd'; data], stderr: stderr.map(|n| vec![b'e'; n]) }
    }

    fn back(payload: &[u8]) -> JobReply {
        let Ok(Answer::Job(Some(reply))) = serde_json::from_slice(payload) else { panic!("not a job answer") };
        *reply
    }

    #[test]
    fn job_answers_are_cut_to_the_payload_limit() {
        let full = output(256 * 1024, Some(256 * 1024));
        assert_eq!(back(&fit(Some(full.clone()), 1024 * 1024)), full, "an answer that fits goes whole");
        for (data, stderr, limit) in [(256 * 1024, Some(256 * 1024), 400_000), (300_000, None, 100_000)] {
            let payload = fit(Some(output(data, stderr)), limit);
            assert!(payload.len() <= limit, "{} > {limit}", payload.len());
            let JobReply::Output { offset, data: d, stderr: e, .. } = back(&payload) else { panic!("not output") };
            assert_eq!(offset, 5);
            assert!(!d.is_empty() && d.len() < data && d.iter().all(|b| *b == b'd'), "{}", d.len());
            assert_eq!(e.is_some(), stderr.is_some());
            assert!(e.is_none_or(|e| !e.is_empty() && e.iter().all(|b| *b == b'e')));
        }
        let JobReply::Output { job, .. } = output(0, None) else { unreachable!() };
        let payload = fit(Some(JobReply::List { jobs: vec![job; 200] }), 100_000);
        let Ok(Answer::TooLarge { bytes, limit }) = serde_json::from_slice(&payload) else { panic!("not too large") };
        assert!(bytes > limit && limit == 100_000, "{bytes} {limit}");
        assert!(matches!(serde_json::from_slice(&fit(None, 100)), Ok(Answer::Job(None))));
    }

    #[test]
    fn subjects_name_no_code() {
        let a = subject(&[1; 32]);
        assert!(a.starts_with("aic.agent.") && a.len() == "aic.agent.".len() + 32, "{a}");
        assert_ne!(a, subject(&[2; 32]));
        assert!(!a.contains("0101"), "the code hash itself is not in the subject");
    }
}
