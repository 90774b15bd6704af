//! The agents connected right now, and the commands in flight on each.
//!
//! Output is routed by command id to the one caller that issued it; nothing
//! else ever sees it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::Digest;
use super::metrics::{ExecOutcome, Metrics};
use crate::protocol::agent::{
    self, AgentInfo, AgentMessage, CAP_OUTPUT_CHUNK, CAP_OUTPUT_FRAMES, ExecRequest, ExitStatus, OUTPUT_CHUNK_LARGE,
    OUTPUT_FRAME_MAX, OUTPUT_HELD, OUTPUT_WINDOW, Refusal, RelayMessage, Stream,
};
use crate::protocol::files::{Frame as WireFrame, FrameKind};
use crate::protocol::jobs::{JobCall, JobReply};

/// A frame for the daemon, already encoded: text (JSON) or bulk bytes (see
/// [`crate::protocol::files`]). The queue holds encoded frames
/// rather than [`RelayMessage`] (160 bytes) because an unbounded channel
/// allocates its first block of 32 slots up front: 5 KiB per idle agent, against 1 KiB.
pub enum Frame {
    /// A JSON message.
    Text(String),
    /// A binary frame of a file transfer.
    Binary(Vec<u8>),
}

// The maps below are only touched for a moment (insert, remove, lookup) and
// never across an `.await`, so a std Mutex is cheaper than tokio's.

/// All connected agents, keyed by the keyed hash of their code.
#[derive(Default)]
pub struct Hub {
    agents: Mutex<HashMap<Digest, Arc<AgentConn>>>,
    next_conn: AtomicU64,
    /// Where commands' outcomes, latency and bytes are counted.
    metrics: Arc<Metrics>,
}

/// One live agent connection.
pub struct AgentConn {
    /// Tells this connection apart from an earlier or later one of the same agent.
    pub conn_id: u64,
    /// The agent's row in the store.
    pub agent_id: i64,
    /// What the daemon said about its machine.
    pub info: AgentInfo,
    /// The daemon sends output as binary frames within credit when asked
    /// ([`CAP_OUTPUT_FRAMES`]); else as JSON messages. `max_buffered` bounds both.
    framed: bool,
    /// The daemon reads and sends output in chunks of the size asked
    /// ([`CAP_OUTPUT_CHUNK`]): it is asked for [`OUTPUT_CHUNK_LARGE`].
    sized: bool,
    /// When the current code was made (Unix ms); a code reset changes it.
    code_created_ms: AtomicI64,
    /// Frames for the daemon; the connection's task writes them out.
    tx: mpsc::UnboundedSender<Frame>,
    /// File transfers in flight on this link.
    pub files: super::transfer::Transfers,
    /// Callers waiting on their commands' events.
    pending: Mutex<HashMap<Uuid, Waiter>>,
    /// What this link may make the relay hold and how long its commands may take.
    limits: LinkLimits,
    /// Cancelled when a newer connection of the same agent replaces this one.
    pub replaced: CancellationToken,
    /// The hub's counters, for the commands run over this connection.
    metrics: Arc<Metrics>,
    /// Calls about jobs waiting for the daemon's reply, by request number.
    job_calls: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<JobReply>>>,
    /// The last job call's request number.
    next_job: AtomicU64,
}

/// A caller waiting on one command.
struct Waiter {
    tx: mpsc::UnboundedSender<ExecEvent>,
    /// Output bytes forwarded so far.
    bytes: u64,
    /// Output bytes forwarded that the caller has not taken yet: what the
    /// relay holds for it ([`Exec::next`] subtracts what it hands over).
    held: u64,
    /// The daemon's output window, when it sends output as binary frames.
    credit: Option<Credit>,
    /// Whether `Started` was forwarded (a second one is dropped).
    started: bool,
    /// Output was dropped because the link's buffer budget ran out; the
    /// command was cancelled and its result says truncated.
    cut: bool,
    /// The account that started it, if any: blocking it stops the command.
    account: Option<i64>,
}

/// One command's output window, when its daemon sends binary frames: the
/// relay holds at most `window` chunks of at most `chunk` bytes for it
/// ([`OUTPUT_HELD`] from a daemon that reads the chunk it is asked for; an
/// older daemon's frames may run to [`OUTPUT_FRAME_MAX`], though it reads
/// [`agent::OUTPUT_CHUNK`]), and a caller that stops reading stops the
/// daemon reading the command's pipes.
struct Credit {
    /// Frames the daemon may send ahead of the caller.
    window: u32,
    /// The longest frame payload it may send.
    chunk: usize,
    /// Frames the daemon may still send.
    allowance: u32,
    /// The sequence number its next output frame must carry.
    next_seq: u64,
    /// Frames the caller took since the daemon was last granted more.
    taken: u32,
}

impl Credit {
    /// Spends one frame's credit; false when `seq` is out of order or no credit is left.
    fn spend(&mut self, seq: u64, len: usize) -> bool {
        if self.allowance == 0 || seq != self.next_seq || len > self.chunk {
            return false;
        }
        self.allowance -= 1;
        self.next_seq += 1;
        true
    }
}

/// Who started a command, so the operator's later decisions reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issuer {
    /// The caller's account; `None` for anonymous callers.
    pub account: Option<i64>,
    /// When the code the caller quoted was made (Unix ms): a command whose
    /// code was reset after its access check is not sent.
    pub code_created_ms: i64,
}

/// Why the relay stopped a command its daemon had not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revocation {
    /// The operator blocked the account that started it.
    Blocked,
    /// The operator reset the code it was started with.
    CodeReset,
}

/// What one agent link may cost the relay, whatever its daemon does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Output bytes forwarded per command at most (plus one chunk): a daemon
    /// that ignores the cap cannot make the relay hold more.
    pub max_output: u64,
    /// Commands in flight on the link at once; more are refused with 429.
    pub max_in_flight: usize,
    /// Output bytes held (received, not yet taken by their callers) for all
    /// of the link's commands together; past it, output is dropped and the
    /// command that ran over is cancelled. A daemon that sends binary frames
    /// is also held to [`OUTPUT_HELD`] bytes per command by its credit (64
    /// commands' windows would be 64 MiB, twice the default budget).
    pub max_buffered: u64,
    /// How long past its timeout a started command may go without an exit
    /// before the relay answers for the machine (504) and cancels it.
    pub grace: Duration,
    /// How long a command may wait for the daemon's `started` (normally
    /// [`START_ALLOWANCE`]); its timeout only counts once it started.
    pub start_allowance: Duration,
}

/// Longest a command may wait for the daemon's `started` (the operator's
/// approval, a busy machine) before the relay stops waiting for it.
pub const START_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Why a command could not be handed to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StartError {
    /// The link is gone.
    Offline,
    /// The link already carries its maximum of commands.
    Busy(usize),
    /// The code was reset after the caller's access check.
    CodeReset,
}

/// What a caller hears about its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// It passed the daemon's checks and runs.
    Started,
    /// A chunk of output (a daemon's frame is handed on as it was read, not copied).
    Output(Stream, Bytes),
    /// It finished.
    Exit(ExitStatus),
    /// It never ran.
    Refused(Refusal, String),
    /// The machine did not finish it within its timeout plus the grace (or
    /// did not start it within the link's start allowance); the relay stopped
    /// waiting and cancels it.
    Unanswered {
        /// The command's timeout.
        timeout: Duration,
        /// Whether the machine had started it (else the start allowance ran out).
        started: bool,
    },
    /// The operator's decision stopped it; the daemon was told to cancel it.
    Revoked(Revocation),
    /// The relay holding the machine's link (another relay of a cluster)
    /// stopped answering mid-command.
    RelayLost,
}

impl Hub {
    /// An empty hub counting into `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self { metrics, ..Self::default() }
    }

    /// How many agents are connected.
    pub fn online(&self) -> usize {
        self.agents.lock().unwrap().len()
    }

    /// Makes a connection record for an agent that has just said hello.
    pub fn connect(
        &self,
        agent_id: i64,
        info: AgentInfo,
        code_created_ms: i64,
        limits: LinkLimits,
        tx: mpsc::UnboundedSender<Frame>,
    ) -> Arc<AgentConn> {
        Arc::new(AgentConn {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            agent_id,
            framed: info.capabilities.iter().any(|c| c == CAP_OUTPUT_FRAMES),
            sized: info.capabilities.iter().any(|c| c == CAP_OUTPUT_CHUNK),
            info,
            code_created_ms: AtomicI64::new(code_created_ms),
            tx,
            files: super::transfer::Transfers::default(),
            pending: Mutex::default(),
            limits,
            replaced: CancellationToken::new(),
            metrics: Arc::clone(&self.metrics),
            job_calls: Mutex::default(),
            next_job: AtomicU64::new(0),
        })
    }

    /// Makes `conn` the live connection for `code_hash`; an older one is told to close.
    pub fn insert(&self, code_hash: Digest, conn: Arc<AgentConn>) {
        let old = self.agents.lock().unwrap().insert(code_hash, conn);
        if let Some(old) = old {
            old.replaced.cancel();
            old.fail_all();
        }
    }

    /// Forgets `conn` if it is still the live connection for `code_hash`.
    pub fn remove(&self, code_hash: &Digest, conn: &AgentConn) {
        let mut agents = self.agents.lock().unwrap();
        if agents.get(code_hash).is_some_and(|c| c.conn_id == conn.conn_id) {
            agents.remove(code_hash);
        }
        drop(agents);
        conn.fail_all();
    }

    /// Moves `conn` from its old code to a new one (a code reset): the old
    /// code stops reaching it at once.
    pub fn rekey(&self, old: &Digest, new: Digest, conn: &Arc<AgentConn>, code_created_ms: i64) {
        let mut agents = self.agents.lock().unwrap();
        if agents.get(old).is_some_and(|c| c.conn_id == conn.conn_id) {
            agents.remove(old);
        }
        conn.code_created_ms.store(code_created_ms, Ordering::Relaxed);
        agents.insert(new, Arc::clone(conn));
    }

    /// The store ids of the agents connected right now.
    pub fn online_agents(&self) -> Vec<i64> {
        self.agents.lock().unwrap().values().map(|c| c.agent_id).collect()
    }

    /// The live connection for a code, if its agent is online.
    pub fn get(&self, code_hash: &Digest) -> Option<Arc<AgentConn>> {
        self.agents.lock().unwrap().get(code_hash).cloned()
    }
}

impl AgentConn {
    /// When the current code was made (Unix ms).
    pub fn code_created_ms(&self) -> i64 {
        self.code_created_ms.load(Ordering::Relaxed)
    }

    /// Sends a command to the daemon; events arrive on the returned handle.
    /// Dropping the handle before the command ends cancels it on the machine.
    pub fn start(self: &Arc<Self>, mut request: ExecRequest, issuer: Issuer) -> Result<Exec, StartError> {
        let id = request.id;
        let credit = self.framed.then(|| self.credit(&mut request));
        let timeout = Duration::from_millis(request.timeout_ms);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut pending = self.pending.lock().unwrap();
            // Checked under the lock a reset's revocation takes: a command
            // either sees the new code time here or is swept by the reset.
            if issuer.code_created_ms != self.code_created_ms() {
                return Err(StartError::CodeReset);
            }
            if pending.len() >= self.limits.max_in_flight {
                return Err(StartError::Busy(self.limits.max_in_flight));
            }
            let account = issuer.account;
            pending.insert(id, Waiter { tx, bytes: 0, held: 0, credit, started: false, cut: false, account });
        }
        if !self.send(RelayMessage::Exec(request)) {
            self.pending.lock().unwrap().remove(&id);
            return Err(StartError::Offline);
        }
        // The timeout counts from `started` (see `Exec::note`), not before.
        let link = ExecLink::Local(Arc::clone(self));
        let (allowance, grace) = (self.limits.start_allowance, self.limits.grace);
        Ok(Exec::new(id, rx, timeout, allowance, grace, Arc::clone(&self.metrics), link))
    }

    /// The output window of a command about to be sent, told to its daemon
    /// in `request`: large chunks to a daemon that reads them.
    fn credit(&self, request: &mut ExecRequest) -> Credit {
        let (window, chunk, max) = if self.sized {
            let window = (OUTPUT_HELD / OUTPUT_CHUNK_LARGE) as u32;
            (window, OUTPUT_CHUNK_LARGE as u32, OUTPUT_CHUNK_LARGE)
        } else {
            (OUTPUT_WINDOW, 0, OUTPUT_FRAME_MAX)
        };
        (request.window, request.chunk) = (window, chunk);
        Credit { window, chunk: max, allowance: window, next_seq: 0, taken: 0 }
    }

    /// How many commands (and, separately, transfers) this link carries at once at most.
    pub fn max_in_flight(&self) -> usize {
        self.limits.max_in_flight
    }

    /// Queues a frame for the daemon. False when the link is gone.
    pub fn send(&self, msg: RelayMessage) -> bool {
        self.tx.send(Frame::Text(agent::encode(&msg))).is_ok()
    }

    /// Queues an encoded binary frame for the daemon. False when the link is gone.
    pub fn send_frame(&self, frame: Vec<u8>) -> bool {
        self.tx.send(Frame::Binary(frame)).is_ok()
    }

    /// Asks the daemon about jobs. `None` when the link went away, or no
    /// reply came `within`.
    pub async fn job(&self, call: JobCall, within: Duration) -> Option<JobReply> {
        let req = self.next_job.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.job_calls.lock().unwrap().insert(req, tx);
        let reply = if self.send(RelayMessage::Job { req, call }) {
            tokio::time::timeout(within, rx).await.ok().and_then(Result::ok)
        } else {
            None
        };
        self.job_calls.lock().unwrap().remove(&req);
        reply
    }

    /// Routes a command's event from the daemon to its caller. Events for
    /// commands nobody waits for any more are dropped.
    pub fn dispatch(&self, msg: AgentMessage) {
        let (id, event, last) = match msg {
            AgentMessage::JobReply { req, reply } => {
                if let Some(waiter) = self.job_calls.lock().unwrap().remove(&req) {
                    let _ = waiter.send(reply);
                }
                return;
            }
            AgentMessage::Started { id } => (id, ExecEvent::Started, false),
            AgentMessage::Output { id, stream, data } => return self.output(id, stream, data.into(), None),
            AgentMessage::Exit { id, exit } => (id, ExecEvent::Exit(exit), true),
            AgentMessage::Refused { id, reason, message } => (id, ExecEvent::Refused(reason, message), true),
            AgentMessage::Hello { .. }
            | AgentMessage::Ping { .. }
            | AgentMessage::Pong { .. }
            | AgentMessage::TokenSaved
            | AgentMessage::Operator { .. }
            | AgentMessage::FileOpened(_)
            | AgentMessage::FileCredit { .. }
            | AgentMessage::FileDone { .. }
            | AgentMessage::FileFailed { .. } => return,
        };
        let mut pending = self.pending.lock().unwrap();
        let Some(waiter) = pending.get_mut(&id) else { return };
        let event = match event {
            ExecEvent::Started if waiter.started => return,
            ExecEvent::Started => {
                waiter.started = true;
                ExecEvent::Started
            }
            ExecEvent::Exit(mut exit) => {
                exit.truncated |= waiter.cut;
                ExecEvent::Exit(exit)
            }
            other => other,
        };
        let sender = if last { pending.remove(&id).map(|w| w.tx) } else { Some(waiter.tx.clone()) };
        drop(pending);
        if let Some(sender) = sender {
            let _ = sender.send(event);
        }
    }

    /// Routes a binary frame of a command's output from the daemon; `payload`
    /// is the frame's payload, sharing the frame's allocation.
    pub fn output_frame(&self, frame: &WireFrame<'_>, payload: Bytes) {
        let stream = match frame.kind {
            FrameKind::Stdout => Stream::Stdout,
            FrameKind::Stderr => Stream::Stderr,
            FrameKind::FileData | FrameKind::FileEnd => return,
        };
        self.output(frame.id, stream, payload, Some(frame.seq));
    }

    /// Routes a chunk of a command's output to its caller: from a JSON
    /// message (`seq` is `None`) to a command sent without credit, or a
    /// binary frame (the next in order, within the command's credit) to one
    /// sent with it; the link's `max_buffered` bounds both. A chunk past
    /// either, or of the other kind, cancels the command, which ends truncated.
    fn output(&self, id: Uuid, stream: Stream, data: Bytes, seq: Option<u64>) {
        let len = data.len();
        let mut pending = self.pending.lock().unwrap();
        let held: u64 = pending.values().map(|w| w.held).sum();
        let Some(waiter) = pending.get_mut(&id) else { return };
        // A JSON chunk for a command with credit would be held outside its
        // window, and, once taken, would earn the daemon credit for frames.
        let paced = match (seq, waiter.credit.as_mut()) {
            (Some(seq), Some(credit)) => credit.spend(seq, len),
            (None, None) => true,
            (Some(_), None) | (None, Some(_)) => false,
        };
        let within = paced && held + len as u64 <= self.limits.max_buffered;
        if waiter.cut || waiter.bytes >= self.limits.max_output {
            return;
        }
        if !within {
            waiter.cut = true;
            drop(pending);
            self.send(RelayMessage::Cancel { id });
            return;
        }
        waiter.bytes += len as u64;
        waiter.held += len as u64;
        let tx = waiter.tx.clone();
        drop(pending);
        self.metrics.hold(len);
        if tx.send(ExecEvent::Output(stream, data)).is_err() {
            self.metrics.release(len);
        }
    }

    /// The caller took `bytes` of a command's output: the relay holds that
    /// much less for it, and once it took half a window of frames the daemon
    /// may send as many more.
    fn took(&self, id: Uuid, bytes: usize) {
        let mut pending = self.pending.lock().unwrap();
        let Some(waiter) = pending.get_mut(&id) else { return };
        waiter.held = waiter.held.saturating_sub(bytes as u64);
        let Some(credit) = waiter.credit.as_mut() else { return };
        credit.taken += 1;
        if credit.taken < credit.window.div_ceil(2) {
            return;
        }
        let chunks = std::mem::take(&mut credit.taken);
        credit.allowance += chunks;
        drop(pending);
        self.send(RelayMessage::OutputCredit { id, chunks });
    }

    /// Stops the commands of `account` (all commands when `None`): the daemon
    /// is told to cancel each, and each caller hears why. How many were stopped.
    pub fn revoke(&self, why: Revocation, account: Option<i64>) -> usize {
        let mut pending = self.pending.lock().unwrap();
        let ids: Vec<Uuid> =
            pending.iter().filter(|(_, w)| account.is_none() || w.account == account).map(|(id, _)| *id).collect();
        let waiters: Vec<Waiter> = ids.iter().filter_map(|id| pending.remove(id)).collect();
        drop(pending);
        for (id, waiter) in ids.iter().zip(waiters) {
            self.send(RelayMessage::Cancel { id: *id });
            let _ = waiter.tx.send(ExecEvent::Revoked(why));
        }
        ids.len() + self.files.revoke(self, why, account)
    }

    /// Ends every caller's wait: the link is gone. Their receivers see the end
    /// of the channel, which they report as the agent going offline.
    fn fail_all(&self) {
        self.pending.lock().unwrap().clear();
        self.job_calls.lock().unwrap().clear();
        self.files.fail_all();
    }
}

/// Where a command in flight runs.
pub enum ExecLink {
    /// On a link this relay holds.
    Local(Arc<AgentConn>),
    /// Through another relay of the cluster; dropping the guard tells it to
    /// cancel, and the progress tells it how far the caller has read.
    Remote(tokio_util::sync::DropGuard, Arc<Progress>),
}

/// How many events the caller of a command run through another relay has
/// taken: that relay sends only so far ahead of it.
#[derive(Default)]
pub struct Progress {
    /// Events taken so far.
    pub taken: AtomicU64,
    /// Woken at each one.
    pub moved: tokio::sync::Notify,
}

/// A command in flight, seen from the caller's side.
pub struct Exec {
    id: Uuid,
    rx: mpsc::UnboundedReceiver<ExecEvent>,
    /// The link it runs on, to cancel it there.
    link: ExecLink,
    /// Where its outcome is counted.
    metrics: Arc<Metrics>,
    /// How long past its timeout the relay waits for its exit.
    grace: Duration,
    finished: bool,
    /// Whether the daemon said it started (the deadline then counts the timeout).
    running: bool,
    /// The command's timeout, as sent to the daemon.
    timeout: Duration,
    /// When the relay stops waiting: the start allowance until the daemon
    /// says it started, then the timeout plus the link's grace from then.
    deadline: tokio::time::Instant,
    /// When it was handed to the daemon, for the latency metric.
    started: Instant,
}

impl Exec {
    /// A command handed to `link`, whose events arrive on `rx`: the relay
    /// waits `allowance` for it to start, then its `timeout` and `grace`.
    pub fn new(
        id: Uuid,
        rx: mpsc::UnboundedReceiver<ExecEvent>,
        timeout: Duration,
        allowance: Duration,
        grace: Duration,
        metrics: Arc<Metrics>,
        link: ExecLink,
    ) -> Self {
        let deadline = tokio::time::Instant::now() + allowance;
        Self {
            id,
            rx,
            link,
            metrics,
            grace,
            finished: false,
            running: false,
            timeout,
            deadline,
            started: Instant::now(),
        }
    }

    /// The next event; `None` when the agent's link went away mid-command,
    /// [`ExecEvent::Unanswered`] once the deadline passes (the command is
    /// cancelled on the machine when this handle is dropped).
    pub async fn next(&mut self) -> Option<ExecEvent> {
        let Ok(event) = tokio::time::timeout_at(self.deadline, self.rx.recv()).await else {
            return Some(ExecEvent::Unanswered { timeout: self.timeout, started: self.running });
        };
        self.note(event.as_ref());
        self.took(event.as_ref());
        event
    }

    /// Tells whoever holds this command's output that the caller took `event`.
    fn took(&self, event: Option<&ExecEvent>) {
        let bytes = match event {
            Some(ExecEvent::Output(_, data)) => data.len(),
            _ => 0,
        };
        match &self.link {
            ExecLink::Local(conn) if bytes > 0 => conn.took(self.id, bytes),
            ExecLink::Local(_) => {}
            ExecLink::Remote(_, progress) => {
                progress.taken.fetch_add(1, Ordering::Relaxed);
                progress.moved.notify_one();
            }
        }
        // Last, so that whoever sees the gauge fall sees the link's budget freed too.
        self.metrics.release(bytes);
    }

    /// Moves the deadline when the command starts, marks its end, and counts both for `/metrics`.
    fn note(&mut self, event: Option<&ExecEvent>) {
        let metrics = &self.metrics;
        match event {
            Some(ExecEvent::Started) => {
                self.running = true;
                self.deadline = tokio::time::Instant::now() + self.timeout + self.grace;
                return;
            }
            Some(ExecEvent::Output(_, data)) => {
                metrics.streamed(data.len());
                return;
            }
            Some(ExecEvent::Exit(exit)) => {
                let outcome = ExecOutcome::of_exit(exit.exit_code, exit.truncated, exit.timed_out);
                metrics.exec_ended(outcome, Some(self.started.elapsed()));
            }
            Some(ExecEvent::Refused(..)) => metrics.exec_ended(ExecOutcome::Refused, None),
            Some(ExecEvent::Revoked(_)) => metrics.exec_ended(ExecOutcome::Cancelled, None),
            // Made by `next` at the deadline, never sent by the daemon: the
            // command is not over, so dropping the Exec cancels and counts it.
            Some(ExecEvent::Unanswered { .. }) => return,
            None | Some(ExecEvent::RelayLost) => metrics.exec_ended(ExecOutcome::Lost, None),
        }
        self.finished = true;
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // What the caller never took is no longer held.
        self.rx.close();
        while let Ok(event) = self.rx.try_recv() {
            if let ExecEvent::Output(_, data) = event {
                self.metrics.release(data.len());
            }
        }
        if !self.finished {
            self.metrics.exec_ended(ExecOutcome::Cancelled, None);
            if let ExecLink::Local(conn) = &self.link {
                conn.pending.lock().unwrap().remove(&self.id);
                conn.send(RelayMessage::Cancel { id: self.id });
            }
        }
    }
}
