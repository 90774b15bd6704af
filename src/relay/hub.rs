//! The agents connected right now, and the commands in flight on each.
//!
//! Output is routed by command id to the one caller that issued it; nothing
//! else ever sees it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::Digest;
use super::metrics::{ExecOutcome, Metrics};
use crate::protocol::agent::{AgentInfo, AgentMessage, ExecRequest, Refusal, RelayMessage, Stream};

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
    /// When the current code was made (Unix ms); a code reset changes it.
    code_created_ms: AtomicI64,
    /// Frames for the daemon; the connection's task writes them out.
    tx: mpsc::UnboundedSender<RelayMessage>,
    /// Callers waiting on their commands' events.
    pending: Mutex<HashMap<Uuid, Waiter>>,
    /// Output bytes forwarded per command at most (plus one chunk): a daemon
    /// that ignores the cap cannot make the relay hold more.
    max_output: u64,
    /// Cancelled when a newer connection of the same agent replaces this one.
    pub replaced: CancellationToken,
    /// The hub's counters, for the commands run over this connection.
    metrics: Arc<Metrics>,
}

/// A caller waiting on one command.
struct Waiter {
    tx: mpsc::UnboundedSender<ExecEvent>,
    /// Output bytes forwarded so far.
    bytes: u64,
    /// Whether `Started` was forwarded (a second one is dropped).
    started: bool,
}

/// What a caller hears about its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// It passed the daemon's checks and runs.
    Started,
    /// A chunk of output.
    Output(Stream, Vec<u8>),
    /// It finished.
    Exit {
        /// Exit status (128 + signal when killed).
        exit_code: i32,
        /// Wall time.
        duration_ms: u64,
        /// Output was cut at the cap and the command killed.
        truncated: bool,
        /// The timeout killed it.
        timed_out: bool,
    },
    /// It never ran.
    Refused(Refusal, String),
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
        max_output: u64,
        tx: mpsc::UnboundedSender<RelayMessage>,
    ) -> Arc<AgentConn> {
        Arc::new(AgentConn {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            agent_id,
            info,
            code_created_ms: AtomicI64::new(code_created_ms),
            tx,
            pending: Mutex::default(),
            max_output,
            replaced: CancellationToken::new(),
            metrics: Arc::clone(&self.metrics),
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
    pub fn start(self: &Arc<Self>, request: ExecRequest) -> Option<Exec> {
        let id = request.id;
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.lock().unwrap().insert(id, Waiter { tx, bytes: 0, started: false });
        if self.tx.send(RelayMessage::Exec(request)).is_err() {
            self.pending.lock().unwrap().remove(&id);
            return None;
        }
        Some(Exec { id, rx, conn: Arc::clone(self), finished: false, started: Instant::now() })
    }

    /// Queues a frame for the daemon. False when the link is gone.
    pub fn send(&self, msg: RelayMessage) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Routes a command's event from the daemon to its caller. Events for
    /// commands nobody waits for any more are dropped.
    pub fn dispatch(&self, msg: AgentMessage) {
        let (id, event, last) = match msg {
            AgentMessage::Started { id } => (id, ExecEvent::Started, false),
            AgentMessage::Output { id, stream, data } => (id, ExecEvent::Output(stream, data), false),
            AgentMessage::Exit { id, exit_code, duration_ms, truncated, timed_out } => {
                (id, ExecEvent::Exit { exit_code, duration_ms, truncated, timed_out }, true)
            }
            AgentMessage::Refused { id, reason, message } => (id, ExecEvent::Refused(reason, message), true),
            AgentMessage::Hello { .. }
            | AgentMessage::Ping { .. }
            | AgentMessage::Pong { .. }
            | AgentMessage::TokenSaved
            | AgentMessage::Operator { .. } => return,
        };
        let mut pending = self.pending.lock().unwrap();
        let Some(waiter) = pending.get_mut(&id) else { return };
        match &event {
            ExecEvent::Started if waiter.started => return,
            ExecEvent::Started => waiter.started = true,
            ExecEvent::Output(..) if waiter.bytes >= self.max_output => return,
            ExecEvent::Output(_, data) => waiter.bytes += data.len() as u64,
            _ => {}
        }
        let sender = if last { pending.remove(&id).map(|w| w.tx) } else { Some(waiter.tx.clone()) };
        drop(pending);
        if let Some(sender) = sender {
            let _ = sender.send(event);
        }
    }

    /// Ends every caller's wait: the link is gone. Their receivers see the end
    /// of the channel, which they report as the agent going offline.
    fn fail_all(&self) {
        self.pending.lock().unwrap().clear();
    }
}

/// A command in flight, seen from the caller's side.
pub struct Exec {
    id: Uuid,
    rx: mpsc::UnboundedReceiver<ExecEvent>,
    conn: Arc<AgentConn>,
    finished: bool,
    /// When it was handed to the daemon, for the latency metric.
    started: Instant,
}

impl Exec {
    /// The next event; `None` when the agent's link went away mid-command.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        let event = self.rx.recv().await;
        let metrics = &self.conn.metrics;
        match &event {
            Some(ExecEvent::Started) => return event,
            Some(ExecEvent::Output(_, data)) => {
                metrics.streamed(data.len());
                return event;
            }
            Some(ExecEvent::Exit { exit_code, truncated, timed_out, .. }) => {
                let outcome = ExecOutcome::of_exit(*exit_code, *truncated, *timed_out);
                metrics.exec_ended(outcome, Some(self.started.elapsed()));
            }
            Some(ExecEvent::Refused(..)) => metrics.exec_ended(ExecOutcome::Refused, None),
            None => metrics.exec_ended(ExecOutcome::Lost, None),
        }
        self.finished = true;
        event
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.metrics.exec_ended(ExecOutcome::Cancelled, None);
            self.conn.pending.lock().unwrap().remove(&self.id);
            self.conn.send(RelayMessage::Cancel { id: self.id });
        }
    }
}
