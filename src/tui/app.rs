//! The console's state and how daemon news changes it. Pure: no I/O, no
//! clock; the main loop sets the time, feeds events and carries out the
//! [`Action`]s that come back. Keys are handled in `keys.rs`.

use std::collections::VecDeque;

use uuid::Uuid;

use super::event::{Action, DaemonMsg, Event, Snapshot};
use super::sanitize;
use super::theme::Theme;
use crate::protocol::control::{
    self, AccountChanged, Approval, CodeInfo, CommandState, Decision, JobTail, LinkState, LinkedAccount, Mode, Op,
    RING_LEN, RelayHealth, Reply, TrafficEntry, append_tail,
};
use crate::protocol::jobs::JobInfo;

/// How long a notice stays in view.
pub const NOTICE_MS: u64 = 6_000;

/// The four panes, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// Live command traffic and the selected command's output.
    Traffic,
    /// Commands waiting for y/N.
    Approvals,
    /// Accounts linked to this machine.
    Accounts,
    /// The relay link's health.
    Relay,
    /// Detached jobs and the selected one's output tail.
    Jobs,
}

impl Pane {
    /// All panes in tab order.
    pub const ALL: [Pane; 5] = [Pane::Traffic, Pane::Approvals, Pane::Accounts, Pane::Relay, Pane::Jobs];

    /// The pane's name on its tab.
    pub fn title(self) -> &'static str {
        match self {
            Pane::Traffic => "Traffic",
            Pane::Approvals => "Approvals",
            Pane::Accounts => "Accounts",
            Pane::Relay => "Relay",
            Pane::Jobs => "Jobs",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    /// The pane `step` tabs away, wrapping around.
    pub fn step(self, step: isize) -> Pane {
        Self::ALL[(self.index() as isize + step).rem_euclid(Self::ALL.len() as isize) as usize]
    }
}

/// The console's connection to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Connected and subscribed.
    Up,
    /// Lost or refused; being retried.
    Down {
        /// Why, in words.
        reason: String,
    },
}

/// Linked accounts, as far as the console knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accounts {
    /// Asked for, no answer yet.
    Loading,
    /// The list, in the order shown: active and pending, then blocked.
    Loaded(Vec<LinkedAccount>),
    /// The daemon could not get them (the relay link is down, say).
    Failed(String),
}

/// A dialog over the panes; it takes the keys while open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popup {
    /// Every key.
    Help,
    /// "Reset the code? y/N".
    ConfirmReset,
    /// A reset is on its way to the relay.
    Resetting,
    /// The reset's result: the new code.
    NewCode(String),
    /// Choose supervised, auto or disabled.
    ModePicker,
    /// "Cancel job …? y/N".
    ConfirmCancel(Uuid),
}

/// A one-line message about the last thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What to say (already safe to draw).
    pub text: String,
    /// Whether it reports a failure.
    pub error: bool,
    /// When it goes away (Unix ms).
    pub until_ms: u64,
}

/// Everything the console shows.
#[derive(Debug, Clone)]
pub struct App {
    /// Colours.
    pub theme: Theme,
    /// Ring the bell when a command starts waiting.
    pub bell: bool,
    /// The time the screen is drawn for (Unix ms), set by the main loop.
    pub now_ms: u64,
    /// The pane in view.
    pub pane: Pane,
    /// The connection to the daemon.
    pub link: Link,
    /// The session code, once the daemon has one.
    pub code: Option<String>,
    /// The daemon's mode.
    pub mode: Option<Mode>,
    /// The daemon's version.
    pub version: Option<String>,
    /// The relay link's health.
    pub relay: Option<RelayHealth>,
    /// Recent commands, oldest first, at most [`RING_LEN`].
    pub traffic: VecDeque<TrafficEntry>,
    /// Commands waiting for a decision, oldest first.
    pub approvals: Vec<Approval>,
    /// Approvals answered from here whose decision is on its way.
    pub deciding: Vec<Uuid>,
    /// Linked accounts.
    pub accounts: Accounts,
    /// The selected command; `None` follows the newest.
    pub sel_traffic: Option<Uuid>,
    /// The selected waiting command; `None` means the first.
    pub sel_approval: Option<Uuid>,
    /// Set when the selected waiting command went away and another took its
    /// place: y/n do nothing until the operator has seen the new one (the
    /// next tick, after a redraw) or moved the selection, so keys meant for
    /// one command never answer another.
    pub approval_hold: bool,
    /// Lines the selected waiting command's details are scrolled by.
    pub detail_scroll: u16,
    /// The selected account's position in the list.
    pub sel_account: usize,
    /// The machine's jobs, newest first, as last asked for (while the Jobs pane is in view).
    pub jobs: Vec<JobInfo>,
    /// The selected job; `None` means the newest.
    pub sel_job: Option<Uuid>,
    /// The end of the selected job's output, as last asked for.
    pub job_tail: Option<JobTail>,
    /// The open dialog.
    pub popup: Option<Popup>,
    /// The last message.
    pub notice: Option<Notice>,
}

impl App {
    /// A console that has not reached the daemon yet.
    pub fn new(theme: Theme, bell: bool) -> Self {
        Self {
            theme,
            bell,
            now_ms: 0,
            pane: Pane::Traffic,
            link: Link::Connecting,
            code: None,
            mode: None,
            version: None,
            relay: None,
            traffic: VecDeque::new(),
            approvals: Vec::new(),
            deciding: Vec::new(),
            accounts: Accounts::Loading,
            sel_traffic: None,
            sel_approval: None,
            approval_hold: false,
            detail_scroll: 0,
            sel_account: 0,
            jobs: Vec::new(),
            sel_job: None,
            job_tail: None,
            popup: None,
            notice: None,
        }
    }

    /// Reacts to one event; returns what the main loop should do.
    pub fn on_event(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Tick => {
                self.approval_hold = false;
                if self.notice.as_ref().is_some_and(|n| n.until_ms <= self.now_ms) {
                    self.notice = None;
                }
                self.refresh_jobs()
            }
            Event::Input(crossterm::event::Event::Key(key)) => self.handle_key(key),
            Event::Input(_) => Vec::new(),
            Event::Daemon(msg) => self.apply(msg),
            Event::Terminate => vec![Action::Quit],
            Event::Fatal(_) => vec![Action::Quit],
        }
    }

    /// Shows `text` for a few seconds.
    pub fn notify(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice { text: text.into(), error, until_ms: self.now_ms + NOTICE_MS });
    }

    /// Commands waiting for a decision.
    pub fn pending(&self) -> usize {
        self.approvals.len()
    }

    /// Position of the selected command, counted from the newest.
    pub fn traffic_index(&self) -> usize {
        let Some(id) = self.sel_traffic else { return 0 };
        self.traffic.iter().rev().position(|e| e.id == id).unwrap_or(0)
    }

    /// The selected command, if there are any.
    pub fn selected_traffic(&self) -> Option<&TrafficEntry> {
        self.traffic.iter().rev().nth(self.traffic_index())
    }

    /// Position of the selected waiting command.
    pub fn approval_index(&self) -> usize {
        self.sel_approval.and_then(|id| self.approvals.iter().position(|a| a.id == id)).unwrap_or(0)
    }

    /// The selected waiting command, if any.
    pub fn selected_approval(&self) -> Option<&Approval> {
        self.approvals.get(self.approval_index())
    }

    /// Position of the selected job.
    pub fn job_index(&self) -> usize {
        self.sel_job.and_then(|id| self.jobs.iter().position(|j| j.id == id)).unwrap_or(0)
    }

    /// The selected job, if any.
    pub fn selected_job(&self) -> Option<&JobInfo> {
        self.jobs.get(self.job_index())
    }

    /// While the Jobs pane is in view, the jobs and the selected one's tail
    /// are asked for again (each tick): jobs send no events of their own.
    pub fn refresh_jobs(&self) -> Vec<Action> {
        if self.pane != Pane::Jobs || self.link != Link::Up {
            return Vec::new();
        }
        let mut ask = vec![Action::Send(Op::Jobs)];
        ask.extend(self.selected_job().map(|j| Action::Send(Op::JobTail { job: j.id })));
        ask
    }

    /// The accounts as listed, when known.
    pub fn account_list(&self) -> &[LinkedAccount] {
        match &self.accounts {
            Accounts::Loaded(list) => list,
            _ => &[],
        }
    }

    /// The selected account, if any.
    pub fn selected_account(&self) -> Option<&LinkedAccount> {
        self.account_list().get(self.sel_account)
    }

    /// Applies news from the daemon.
    pub fn apply(&mut self, msg: DaemonMsg) -> Vec<Action> {
        match msg {
            DaemonMsg::Connected(snapshot) => self.connected(*snapshot),
            DaemonMsg::Event(event) => self.daemon_event(event),
            DaemonMsg::Down { reason } => {
                self.link = Link::Down { reason: sanitize::line(&reason) };
                Vec::new()
            }
            DaemonMsg::Reply { op, result } => self.reply(op, result),
        }
    }

    fn connected(&mut self, snapshot: Snapshot) -> Vec<Action> {
        let Snapshot { status, traffic, approvals } = snapshot;
        self.link = Link::Up;
        self.code = status.code.as_deref().map(sanitize::line);
        self.mode = Some(status.mode);
        self.version = Some(status.version);
        self.relay = Some(status.relay);
        let skip = traffic.len().saturating_sub(RING_LEN);
        self.traffic = traffic.into_iter().skip(skip).collect();
        if self.sel_traffic.is_some_and(|id| !self.traffic.iter().any(|e| e.id == id)) {
            self.sel_traffic = None;
        }
        self.approvals = approvals;
        self.deciding.retain(|id| self.approvals.iter().any(|a| a.id == *id));
        if self.popup == Some(Popup::Resetting) {
            self.popup = None;
        }
        vec![Action::Send(Op::Admins)]
    }

    fn daemon_event(&mut self, event: control::Event) -> Vec<Action> {
        use control::Event as E;
        match event {
            E::Traffic(entry) => self.record(entry),
            E::Output { command, text, .. } => {
                if let Some(entry) = self.traffic.iter_mut().rev().find(|e| e.id == command) {
                    entry.bytes += text.len() as u64;
                    append_tail(&mut entry.tail, &text);
                }
            }
            E::ApprovalQueued(approval) => {
                if !self.approvals.iter().any(|a| a.id == approval.id) {
                    self.approvals.push(approval);
                    if self.bell {
                        return vec![Action::Bell];
                    }
                }
            }
            E::ApprovalDecided { command, decision } => self.decided(command, decision),
            E::Relay(health) => {
                let was_up = self.relay.as_ref().is_some_and(|r| r.connected);
                let up = health.connected;
                self.relay = Some(health);
                // Accounts live on the relay: a list that failed for want of the link is asked for again.
                if up && !was_up && matches!(self.accounts, Accounts::Failed(_)) {
                    return vec![Action::Send(Op::Admins)];
                }
            }
            E::Accounts => return vec![Action::Send(Op::Admins)],
            E::CodeChanged(info) => self.code = info.code.as_deref().map(sanitize::line),
            E::ModeChanged { mode } => self.mode = Some(mode),
            E::Lagged { missed } => self
                .notify(format!("This console fell behind and missed {missed} events; it re-read the state."), false),
        }
        Vec::new()
    }

    fn record(&mut self, entry: TrafficEntry) {
        if let Some(slot) = self.traffic.iter_mut().rev().find(|e| e.id == entry.id) {
            *slot = entry;
            return;
        }
        if self.traffic.len() == RING_LEN
            && let Some(gone) = self.traffic.pop_front()
            && self.sel_traffic == Some(gone.id)
        {
            self.sel_traffic = None;
        }
        self.traffic.push_back(entry);
    }

    fn decided(&mut self, id: Uuid, decision: Decision) {
        let Some(at) = self.approvals.iter().position(|a| a.id == id) else { return };
        let ours = self.deciding.contains(&id);
        self.deciding.retain(|d| *d != id);
        let gone = self.approvals.remove(at);
        if self.sel_approval == Some(id) || (self.sel_approval.is_none() && at == 0) {
            // The next one in line takes the selection, but y/n wait until it has been seen.
            self.sel_approval = self.approvals.get(at.min(self.approvals.len().saturating_sub(1))).map(|a| a.id);
            self.detail_scroll = 0;
            self.approval_hold = !self.approvals.is_empty();
        }
        let what = match decision {
            Decision::Approved if !ours => "was approved from another console",
            Decision::Denied if !ours => "was denied from another console",
            Decision::TimedOut => "timed out: nobody answered in time",
            Decision::Withdrawn => "was withdrawn: its caller went away",
            _ => return,
        };
        self.notify(format!("{} {what}.", short(gone.id)), false);
    }

    fn reply(&mut self, op: Op, result: Result<Reply, String>) -> Vec<Action> {
        let result = result.map_err(|e| sanitize::line(&e));
        match (op, result) {
            (Op::Admins, Ok(Reply::Accounts(list))) => self.accounts_listed(list),
            (Op::Admins, Err(e)) => self.accounts = Accounts::Failed(e),
            (Op::Approve { command }, Ok(_)) => {
                self.notify(format!("Approved {}: it runs now.", short(command)), false)
            }
            (Op::Deny { command }, Ok(_)) => {
                self.notify(format!("Denied {}: its caller gets 403 denied.", short(command)), false)
            }
            (Op::Approve { command } | Op::Deny { command }, Err(e)) => {
                self.deciding.retain(|d| *d != command);
                self.notify(e, true);
            }
            (Op::SetMode { mode }, Ok(_)) => {
                self.mode = Some(mode);
                self.notify(format!("Mode is now {mode}."), false);
            }
            (Op::CodeReset, Ok(Reply::Code(CodeInfo { code: Some(code) }))) => {
                let code = sanitize::line(&code);
                self.code = Some(code.clone());
                self.popup = Some(Popup::NewCode(code));
            }
            (Op::CodeReset, Ok(_)) => self.reset_failed("the daemon's answer had no code".into()),
            (Op::CodeReset, Err(e)) => self.reset_failed(e),
            (Op::Jobs, Ok(Reply::Jobs(list))) => self.jobs = list,
            (Op::JobTail { .. }, Ok(Reply::JobTail(tail))) => self.job_tail = Some(tail),
            (Op::JobCancel { job }, Ok(_)) => {
                self.notify(format!("Cancelling job {}: SIGTERM, then SIGKILL after 2 s.", short(job)), false)
            }
            (_, Ok(Reply::Account(AccountChanged { account, state }))) => {
                let who =
                    self.account_list().iter().find(|a| a.id == account).map(|a| sanitize::line(&a.shown_email()));
                self.notify(format!("{} is now {state}.", who.unwrap_or_else(|| sanitize::line(&account))), false);
            }
            (_, Err(e)) => self.notify(e, true),
            (_, Ok(_)) => {}
        }
        Vec::new()
    }

    /// A fresh account list; the selection stays on the same account.
    fn accounts_listed(&mut self, list: Vec<LinkedAccount>) {
        // The list reorders (blocked accounts go last): keep the selection on the same account.
        let selected = self.selected_account().map(|a| a.id.clone());
        let mut ordered: Vec<_> = list.iter().filter(|a| a.state != LinkState::Blocked).cloned().collect();
        ordered.extend(list.into_iter().filter(|a| a.state == LinkState::Blocked));
        self.sel_account = selected
            .and_then(|id| ordered.iter().position(|a| a.id == id))
            .unwrap_or(self.sel_account)
            .min(ordered.len().saturating_sub(1));
        self.accounts = Accounts::Loaded(ordered);
    }

    fn reset_failed(&mut self, why: String) {
        self.popup = None;
        self.notify(format!("The code was not reset: {why}"), true);
    }
}

/// The first 8 characters of an id, as the console and CLI show ids.
pub fn short(id: Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// A state as the operator reads it: `exit 0`, `running`, `timed out`, ...
pub fn state_text(entry: &TrafficEntry) -> String {
    match (entry.state, entry.exit_code) {
        (CommandState::Exited, Some(code)) => format!("exit {code}"),
        (CommandState::Exited, None) => "exited".into(),
        (CommandState::Pending, _) => "pending".into(),
        (CommandState::Running, _) => "running".into(),
        (CommandState::TimedOut, _) => "timed out".into(),
        (CommandState::Denied, _) => "denied".into(),
        (CommandState::ApprovalTimeout, _) => "no answer".into(),
        (CommandState::Cancelled, _) => "cancelled".into(),
        (CommandState::Refused, _) => "refused".into(),
    }
}
