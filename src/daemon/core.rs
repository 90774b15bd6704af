//! The daemon's shared state: mode, code, approval queue, traffic ring and
//! relay health, plus the event bus consoles subscribe to. Cheap to clone.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::state::{State, StateFile};
use super::traffic::{self, Traffic};
use super::{Config, LinkStatus};
use crate::protocol::agent::{AgentMessage, Credentials, ExecRequest, OperatorOp, OperatorOutcome, Refusal};
use crate::protocol::control::{
    Approval, CodeInfo, CommandState, Decision, Event, Mode, RelayHealth, StatusInfo, TrafficEntry,
};

/// Events a slow subscriber may fall behind by before it is told it lagged.
const EVENT_BACKLOG: usize = 1024;
/// Round-trip samples kept.
const RTT_SAMPLES: usize = 60;
/// How long an operator request to the relay may take.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the relay, handed to the link, with where its answer goes.
pub type OperatorCall = (OperatorOp, oneshot::Sender<OperatorOutcome>);

/// Handle on the daemon's state.
#[derive(Clone)]
pub struct Daemon(Arc<Inner>);

/// What [`Daemon`] shares.
pub struct Inner {
    /// Settings.
    pub config: Config,
    file: StateFile,
    started: Instant,
    // The std Mutexes below are held for a few field updates at a time and
    // never across an `.await`.
    state: Mutex<State>,
    traffic: Mutex<Traffic>,
    approvals: Mutex<HashMap<Uuid, Waiting>>,
    health: Mutex<RelayHealth>,
    events: broadcast::Sender<Event>,
    /// The link's state for whoever started the daemon (tests, the binary).
    pub status: watch::Sender<LinkStatus>,
    operator: mpsc::Sender<OperatorCall>,
    /// Whether this process has printed the code yet.
    pub announced: AtomicBool,
}

struct Waiting {
    approval: Approval,
    answer: oneshot::Sender<bool>,
}

impl std::ops::Deref for Daemon {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Daemon {
    /// Builds the state from config and the saved state; returns the receiver
    /// of operator calls, which the relay link serves.
    pub fn new(
        config: Config,
        file: StateFile,
        mut state: State,
        status: watch::Sender<LinkStatus>,
    ) -> anyhow::Result<(Self, mpsc::Receiver<OperatorCall>)> {
        // The operator's saved choice stands across restarts; a mode given at
        // start applies on first start, or when it is stricter (a service
        // file's `--mode auto` never undoes an operator's `disabled`).
        match (config.mode, state.mode) {
            (Some(start), Some(saved)) if start.strictness() > saved.strictness() => {
                state.mode = Some(start);
                file.save(&state)?;
            }
            (Some(start), Some(saved)) if start != saved => {
                tracing::warn!(
                    "keeping the saved mode {saved}, not {start}: change it with `aic-console mode {start}`"
                );
            }
            (Some(start), None) => {
                state.mode = Some(start);
                file.save(&state)?;
            }
            _ => {}
        }
        let health = RelayHealth { url: config.relay.clone(), ..Default::default() };
        status.send_modify(|s| s.code = state.credentials.as_ref().map(|c| c.code));
        let (operator, calls) = mpsc::channel(16);
        let inner = Inner {
            config,
            file,
            started: Instant::now(),
            state: Mutex::new(state),
            traffic: Mutex::default(),
            approvals: Mutex::default(),
            health: Mutex::new(health),
            events: broadcast::channel(EVENT_BACKLOG).0,
            status,
            operator,
            announced: AtomicBool::new(false),
        };
        Ok((Self(Arc::new(inner)), calls))
    }

    fn emit(&self, event: Event) {
        // No subscribers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.state.lock().unwrap().mode.unwrap_or_default()
    }

    /// Changes the mode and saves it.
    pub fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap();
        let mut next = state.clone();
        next.mode = Some(mode);
        self.file.save(&next)?;
        *state = next;
        drop(state);
        tracing::info!(%mode, "mode changed");
        self.emit(Event::ModeChanged { mode });
        Ok(())
    }

    /// The state file's path, for messages that tell the operator what to do.
    pub fn state_path(&self) -> &std::path::Path {
        self.file.path()
    }

    /// The code and token, if registered.
    pub fn credentials(&self) -> Option<Credentials> {
        self.state.lock().unwrap().credentials.clone()
    }

    /// Saves new credentials; announces a changed code.
    pub fn set_credentials(&self, credentials: Option<Credentials>) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap();
        let old = state.credentials.as_ref().map(|c| c.code);
        let mut next = state.clone();
        next.credentials = credentials;
        self.file.save(&next)?;
        *state = next;
        let code = state.credentials.as_ref().map(|c| c.code);
        drop(state);
        if code != old {
            self.status.send_modify(|s| s.code = code);
            self.emit(Event::CodeChanged(CodeInfo { code: code.map(|c| c.to_string()) }));
        }
        Ok(())
    }

    /// The code as the console shows it.
    pub fn code_info(&self) -> CodeInfo {
        CodeInfo { code: self.credentials().map(|c| c.code.to_string()) }
    }

    /// The daemon at a glance.
    pub fn status_info(&self) -> StatusInfo {
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            code: self.code_info().code,
            mode: self.mode(),
            uptime_s: self.started.elapsed().as_secs(),
            pending: self.approvals.lock().unwrap().len(),
            running: self.traffic.lock().unwrap().running(),
            relay: self.health.lock().unwrap().clone(),
        }
    }

    /// The traffic ring.
    pub fn traffic(&self) -> Vec<TrafficEntry> {
        self.traffic.lock().unwrap().snapshot()
    }

    /// Commands waiting for a decision, oldest first.
    pub fn approvals(&self) -> Vec<Approval> {
        let mut list: Vec<_> = self.approvals.lock().unwrap().values().map(|w| w.approval.clone()).collect();
        list.sort_by_key(|a| a.at_ms);
        list
    }

    /// Records a command that has just arrived.
    pub fn record(&self, req: &ExecRequest, state: CommandState) {
        let entry = self.traffic.lock().unwrap().push(req, state, now_ms());
        self.emit(Event::Traffic(entry));
    }

    fn update(&self, id: Uuid, change: impl FnOnce(&mut TrafficEntry)) {
        let mut traffic = self.traffic.lock().unwrap();
        let Some(entry) = traffic.get_mut(id) else { return };
        change(entry);
        let entry = entry.clone();
        drop(traffic);
        self.emit(Event::Traffic(entry));
    }

    /// Marks a command whose caller went away.
    pub fn cancelled(&self, id: Uuid) {
        self.update(id, |e| e.state = CommandState::Cancelled);
    }

    /// Notes what a command's messages to the relay say about it.
    pub fn observe(&self, msg: &AgentMessage) {
        match msg {
            AgentMessage::Started { id } => self.update(*id, |e| e.state = CommandState::Running),
            AgentMessage::Output { id, stream, data } => {
                // On the exec path: only the end of the chunk is ever shown, so only it is decoded.
                let text = traffic::tail_text(data);
                let mut traffic = self.traffic.lock().unwrap();
                if let Some(entry) = traffic.get_mut(*id) {
                    entry.bytes += data.len() as u64;
                    traffic::append_tail(&mut entry.tail, &text);
                }
                drop(traffic);
                if self.events.receiver_count() > 0 {
                    self.emit(Event::Output { command: *id, stream: *stream, text });
                }
            }
            AgentMessage::Exit { id, exit_code, duration_ms, truncated, timed_out } => self.update(*id, |e| {
                e.state = if *timed_out { CommandState::TimedOut } else { CommandState::Exited };
                e.exit_code = Some(*exit_code);
                e.duration_ms = Some(*duration_ms);
                e.truncated = *truncated;
            }),
            AgentMessage::Refused { id, reason, .. } => self.update(*id, |e| {
                e.state = match reason {
                    Refusal::Denied => CommandState::Denied,
                    Refusal::ApprovalTimeout => CommandState::ApprovalTimeout,
                    _ => CommandState::Refused,
                }
            }),
            _ => {}
        }
    }

    /// Puts a command in the approval queue and waits for the operator, the
    /// approval timeout, or its caller going away, whichever comes first.
    pub async fn await_approval(&self, req: &ExecRequest, cancel: &CancellationToken) -> Decision {
        let (answer, mut decided) = oneshot::channel();
        let now = now_ms();
        let approval = Approval {
            id: req.id,
            at_ms: now,
            who: req.requester.who.clone(),
            ip: req.requester.ip.clone(),
            command: req.command.clone(),
            cwd: req.cwd.clone(),
            timeout_ms: req.timeout_ms,
            expires_at_ms: now + self.config.approval_timeout.as_millis() as u64,
        };
        self.approvals.lock().unwrap().insert(req.id, Waiting { approval: approval.clone(), answer });
        self.emit(Event::ApprovalQueued(approval));

        let mut decision = tokio::select! {
            answer = &mut decided => if answer == Ok(true) { Decision::Approved } else { Decision::Denied },
            _ = tokio::time::sleep(self.config.approval_timeout) => Decision::TimedOut,
            _ = cancel.cancelled() => Decision::Withdrawn,
        };
        if matches!(decision, Decision::TimedOut | Decision::Withdrawn)
            && self.approvals.lock().unwrap().remove(&req.id).is_none()
        {
            // An operator decided in the same instant: their word stands.
            decision = match decided.await {
                Ok(true) => Decision::Approved,
                _ => Decision::Denied,
            };
        }
        self.emit(Event::ApprovalDecided { command: req.id, decision });
        decision
    }

    /// An operator's answer for a waiting command. The first answer wins.
    pub fn decide(&self, id: Uuid, approve: bool) -> Result<(), String> {
        let waiting = self.approvals.lock().unwrap().remove(&id).ok_or_else(|| {
            format!(
                "no command {id} is waiting for approval: it was already decided, withdrawn by its caller, or timed out"
            )
        })?;
        waiting.answer.send(approve).map_err(|_| format!("command {id} was withdrawn by its caller"))
    }

    /// The link came up.
    pub fn link_up(&self) {
        let mut health = self.health.lock().unwrap();
        if health.connected_since_ms.is_some() || health.last_error.is_some() {
            health.reconnects += 1;
        }
        health.connected = true;
        health.connected_since_ms = Some(now_ms());
        let snapshot = health.clone();
        drop(health);
        self.status.send_modify(|s| s.connected = true);
        self.emit(Event::Relay(snapshot));
    }

    /// The link went down (or an attempt failed), for `why`.
    pub fn link_down(&self, why: Option<String>) {
        let mut health = self.health.lock().unwrap();
        let changed = health.connected || why.as_ref().is_some_and(|w| health.last_error.as_ref() != Some(w));
        health.connected = false;
        if why.is_some() {
            health.last_error = why;
        }
        let snapshot = health.clone();
        drop(health);
        self.status.send_modify(|s| s.connected = false);
        if changed {
            self.emit(Event::Relay(snapshot));
        }
    }

    /// A round trip to the relay took `rtt`.
    pub fn rtt_sample(&self, rtt: Duration) {
        let mut health = self.health.lock().unwrap();
        if health.rtt_ms.len() == RTT_SAMPLES {
            health.rtt_ms.remove(0);
        }
        health.rtt_ms.push(rtt.as_millis().min(u128::from(u32::MAX)) as u32);
        let snapshot = health.clone();
        drop(health);
        self.emit(Event::Relay(snapshot));
    }

    /// Asks the relay for something on the operator's behalf.
    pub async fn operator(&self, op: OperatorOp) -> Result<OperatorOutcome, String> {
        let down = || {
            "the daemon is not connected to the relay right now; try again once `aic-console status` shows it connected"
                .to_string()
        };
        if !self.health.lock().unwrap().connected {
            return Err(down());
        }
        let (tx, rx) = oneshot::channel();
        self.operator.send((op, tx)).await.map_err(|_| down())?;
        match tokio::time::timeout(OPERATOR_TIMEOUT, rx).await {
            Ok(Ok(OperatorOutcome::Failed { message })) => Err(message),
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(down()),
            Err(_) => Err("the relay did not answer within 10 s; try again".into()),
        }
    }

    /// Tells consoles that linked accounts changed.
    pub fn accounts_changed(&self) {
        self.emit(Event::Accounts);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
