//! The daemon's shared state: the state file (mode, code and token), relay
//! health and the event bus consoles subscribe to. Cheap to clone. What
//! happens to commands lives in [`super::commands`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::state::{State, StateFile};
use super::{Config, LinkStatus};
use crate::clock::now_ms;
use crate::protocol::agent::{Credentials, OperatorOp, OperatorOutcome};
use crate::protocol::control::{CodeInfo, Event, Mode, RelayHealth, StatusInfo};

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
struct Inner {
    /// Settings.
    config: Config,
    /// Where mode and credentials are saved.
    file: StateFile,
    /// When the daemon started, for its uptime.
    started: Instant,
    // The std Mutexes below are held for a few field updates at a time and
    // never across an `.await`.
    /// Mode and credentials, as last saved.
    state: Mutex<State>,
    /// The link as consoles see it.
    health: Mutex<RelayHealth>,
    /// What consoles subscribe to.
    events: broadcast::Sender<Event>,
    /// The link's state for whoever started the daemon (tests, the binary).
    status: watch::Sender<LinkStatus>,
    /// Operator requests for the link to carry to the relay.
    operator: mpsc::Sender<OperatorCall>,
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
            health: Mutex::new(health),
            events: broadcast::channel(EVENT_BACKLOG).0,
            status,
            operator,
        };
        Ok((Self(Arc::new(inner)), calls))
    }

    /// Its settings.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Tells subscribed consoles.
    pub(super) fn emit(&self, event: Event) {
        // No subscribers is fine: nobody is watching.
        let _ = self.0.events.send(event);
    }

    /// Whether any console is subscribed (output events are built only then).
    pub(super) fn watched(&self) -> bool {
        self.0.events.receiver_count() > 0
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.events.subscribe()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.0.state.lock().unwrap().mode.unwrap_or_default()
    }

    /// Changes the mode and saves it.
    pub fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        let mut state = self.0.state.lock().unwrap();
        let mut next = state.clone();
        next.mode = Some(mode);
        self.0.file.save(&next)?;
        *state = next;
        drop(state);
        // Loud in the journal: a switch to auto means commands stop waiting for the operator.
        match mode {
            Mode::Auto => tracing::warn!("mode changed to auto: commands now run without the operator's approval"),
            _ => tracing::warn!(%mode, "mode changed"),
        }
        self.emit(Event::ModeChanged { mode });
        Ok(())
    }

    /// The state file's path, for messages that tell the operator what to do.
    pub fn state_path(&self) -> &std::path::Path {
        self.0.file.path()
    }

    /// The code and token, if registered.
    pub fn credentials(&self) -> Option<Credentials> {
        self.0.state.lock().unwrap().credentials.clone()
    }

    /// Saves new credentials; announces a changed code.
    pub fn set_credentials(&self, credentials: Option<Credentials>) -> anyhow::Result<()> {
        let mut state = self.0.state.lock().unwrap();
        let old = state.credentials.as_ref().map(|c| c.code);
        let mut next = state.clone();
        next.credentials = credentials;
        self.0.file.save(&next)?;
        *state = next;
        let code = state.credentials.as_ref().map(|c| c.code);
        drop(state);
        if code != old {
            self.0.status.send_modify(|s| s.code = code);
            self.emit(Event::CodeChanged(CodeInfo { code: code.map(|c| c.to_string()) }));
        }
        Ok(())
    }

    /// The code as the console shows it.
    pub fn code_info(&self) -> CodeInfo {
        CodeInfo { code: self.credentials().map(|c| c.code.to_string()) }
    }

    /// The daemon at a glance, given the commands waiting and running.
    pub fn status_info(&self, pending: usize, running: usize) -> StatusInfo {
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            code: self.code_info().code,
            mode: self.mode(),
            uptime_s: self.0.started.elapsed().as_secs(),
            pending,
            running,
            relay: self.0.health.lock().unwrap().clone(),
        }
    }

    /// The link came up.
    pub fn link_up(&self) {
        let mut health = self.0.health.lock().unwrap();
        if health.connected_since_ms.is_some() || health.last_error.is_some() {
            health.reconnects += 1;
        }
        health.connected = true;
        health.connected_since_ms = Some(now_ms());
        let snapshot = health.clone();
        drop(health);
        self.0.status.send_modify(|s| s.connected = true);
        self.emit(Event::Relay(snapshot));
    }

    /// The link went down (or an attempt failed), for `why`.
    pub fn link_down(&self, why: Option<String>) {
        let mut health = self.0.health.lock().unwrap();
        let changed = health.connected || why.as_ref().is_some_and(|w| health.last_error.as_ref() != Some(w));
        health.connected = false;
        if why.is_some() {
            health.last_error = why;
        }
        let snapshot = health.clone();
        drop(health);
        self.0.status.send_modify(|s| {
            s.connected = false;
            s.retrying = true;
        });
        if changed {
            self.emit(Event::Relay(snapshot));
        }
    }

    /// A round trip to the relay took `rtt`.
    pub fn rtt_sample(&self, rtt: Duration) {
        let mut health = self.0.health.lock().unwrap();
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
        if !self.0.health.lock().unwrap().connected {
            return Err(down());
        }
        let (tx, rx) = oneshot::channel();
        self.0.operator.send((op, tx)).await.map_err(|_| down())?;
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
