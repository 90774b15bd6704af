//! What each key does, in each pane and dialog. The footer and the help
//! screen list the same keys from [`footer_keys`] and [`HELP`].

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Link, Pane, Popup, short};
use super::event::Action;
use crate::protocol::control::{LinkState, Mode, Op};

/// Rows a page key moves.
const PAGE: isize = 10;

/// Every key, for the help screen: (key, what it does), grouped by a `""` key line.
pub const HELP: &[(&str, &str)] = &[
    ("", "Everywhere"),
    ("Tab / Shift-Tab", "next / previous pane"),
    ("1 2 3 4 5", "Traffic, Approvals, Accounts, Relay, Jobs"),
    ("A", "jump to Approvals"),
    ("↑ ↓  j k", "move the selection"),
    ("PgUp PgDn  g G", "move by a page, to the newest / oldest"),
    ("m", "change the mode: supervised, auto, disabled"),
    ("c", "copy the session code (OSC 52)"),
    ("R", "reset the session code (asks first)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
    ("", "Approvals"),
    ("y", "approve the selected command: it runs"),
    ("n", "deny it: the caller gets 403 denied"),
    ("PgUp PgDn", "scroll a long command"),
    ("", "Accounts"),
    ("b / u", "block / unblock the selected account"),
    ("a", "approve its pending link"),
    ("", "Jobs"),
    ("x", "cancel the selected job (asks first)"),
];

/// The keys that work in `pane`, for the footer.
pub fn footer_keys(pane: Pane) -> &'static [(&'static str, &'static str)] {
    match pane {
        Pane::Traffic => &[("↑↓", "select"), ("A", "approvals"), ("m", "mode"), ("c", "copy code"), ("R", "reset")],
        Pane::Approvals => &[("y", "approve"), ("n", "deny"), ("↑↓", "select"), ("m", "mode")],
        Pane::Accounts => &[("b", "block"), ("u", "unblock"), ("a", "approve link"), ("↑↓", "select")],
        Pane::Relay => &[("m", "mode"), ("c", "copy code"), ("R", "reset code")],
        Pane::Jobs => &[("↑↓", "select"), ("x", "cancel job"), ("m", "mode")],
    }
}

impl App {
    /// Handles one key press; returns what the main loop should do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'C')) {
            return vec![Action::Quit];
        }
        if let Some(popup) = self.popup.clone() {
            return self.popup_key(popup, key.code);
        }
        match key.code {
            KeyCode::Char('q') => return vec![Action::Quit],
            KeyCode::Char('?') => self.popup = Some(Popup::Help),
            KeyCode::Tab => {
                self.pane = self.pane.step(1);
                return self.refresh_jobs();
            }
            KeyCode::BackTab => {
                self.pane = self.pane.step(-1);
                return self.refresh_jobs();
            }
            KeyCode::Char(c @ '1'..='5') => {
                self.pane = Pane::ALL[c as usize - '1' as usize];
                return self.refresh_jobs();
            }
            KeyCode::Char('A') => self.pane = Pane::Approvals,
            KeyCode::Char('m') => self.popup = Some(Popup::ModePicker),
            KeyCode::Char('R') => self.popup = Some(Popup::ConfirmReset),
            KeyCode::Char('c') => return self.copy_code(),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            // In Approvals, the page keys scroll a long command's details instead.
            KeyCode::PageUp if self.pane == Pane::Approvals => {
                self.detail_scroll = self.detail_scroll.saturating_sub(5)
            }
            KeyCode::PageDown if self.pane == Pane::Approvals => {
                self.detail_scroll = self.detail_scroll.saturating_add(5)
            }
            KeyCode::PageUp => self.move_selection(-PAGE),
            KeyCode::PageDown => self.move_selection(PAGE),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            code => return self.pane_key(code),
        }
        Vec::new()
    }

    fn popup_key(&mut self, popup: Popup, code: KeyCode) -> Vec<Action> {
        match popup {
            Popup::NewCode(_) if code == KeyCode::Char('c') => return self.copy_code(),
            Popup::Help | Popup::NewCode(_) => self.popup = None,
            Popup::ConfirmReset if matches!(code, KeyCode::Char('y' | 'Y')) => {
                self.popup = Some(Popup::Resetting);
                return vec![Action::Send(Op::CodeReset)];
            }
            Popup::ConfirmReset => {
                self.popup = None;
                self.notify("The code was not reset.", false);
            }
            // The relay answers within seconds; until then keys wait (Ctrl-C still quits).
            Popup::Resetting => {}
            Popup::ConfirmCancel(job) => {
                self.popup = None;
                if matches!(code, KeyCode::Char('y' | 'Y')) {
                    return vec![Action::Send(Op::JobCancel { job })];
                }
                self.notify(format!("Job {} was not cancelled.", short(job)), false);
            }
            Popup::ModePicker => {
                self.popup = None;
                let mode = match code {
                    KeyCode::Char('s') => Mode::Supervised,
                    KeyCode::Char('a') => Mode::Auto,
                    KeyCode::Char('d') => Mode::Disabled,
                    _ => return Vec::new(),
                };
                if self.mode != Some(mode) {
                    return vec![Action::Send(Op::SetMode { mode })];
                }
            }
        }
        Vec::new()
    }

    fn pane_key(&mut self, code: KeyCode) -> Vec<Action> {
        let KeyCode::Char(c) = code else { return Vec::new() };
        match (self.pane, c) {
            (Pane::Approvals, 'y' | 'n') => self.decide(c == 'y'),
            (Pane::Accounts, 'b' | 'u' | 'a') => self.account_key(c),
            (Pane::Jobs, 'x') => {
                match self.selected_job().filter(|j| !j.state.is_final()) {
                    Some(job) => self.popup = Some(Popup::ConfirmCancel(job.id)),
                    None => self.notify("No running or waiting job is selected.", false),
                }
                Vec::new()
            }
            (_, 'y' | 'n') if self.pending() > 0 => {
                self.notify("y and n answer in the Approvals pane: press A to go there.", false);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn decide(&mut self, approve: bool) -> Vec<Action> {
        if self.approval_hold {
            self.notify(
                "The command you were looking at was answered elsewhere; read this one, then press y or n.",
                false,
            );
            return Vec::new();
        }
        let Some(approval) = self.selected_approval() else {
            self.notify("Nothing is waiting for approval.", false);
            return Vec::new();
        };
        let command = approval.id;
        if self.deciding.contains(&command) {
            return Vec::new();
        }
        if self.link != Link::Up {
            self.notify("The daemon is not connected; the answer cannot be sent.", true);
            return Vec::new();
        }
        self.sel_approval = Some(command);
        self.deciding.push(command);
        self.notify(format!("{} {}…", if approve { "Approving" } else { "Denying" }, short(command)), false);
        vec![Action::Send(if approve { Op::Approve { command } } else { Op::Deny { command } })]
    }

    fn account_key(&mut self, key: char) -> Vec<Action> {
        let Some(account) = self.selected_account() else {
            self.notify("No account is selected.", false);
            return Vec::new();
        };
        let (account, state) = (account.id.clone(), account.state);
        let op = match (key, state) {
            ('b', LinkState::Blocked) | ('u', LinkState::Active | LinkState::Pending) => {
                self.notify(format!("That account is already {state}."), false);
                return Vec::new();
            }
            ('a', s) if s != LinkState::Pending => {
                self.notify("Only a pending link can be approved.", false);
                return Vec::new();
            }
            ('b', _) => Op::AdminBlock { account },
            ('u', _) => Op::AdminUnblock { account },
            _ => Op::AdminApprove { account },
        };
        vec![Action::Send(op)]
    }

    fn copy_code(&mut self) -> Vec<Action> {
        match self.code.clone() {
            Some(code) => {
                self.notify("Copied the session code (OSC 52: your terminal must allow it).", false);
                vec![Action::Copy(code)]
            }
            None => {
                self.notify("There is no session code yet.", false);
                Vec::new()
            }
        }
    }

    fn move_selection(&mut self, by: isize) {
        let moved = |at: usize, len: usize| (at as isize).saturating_add(by).clamp(0, len.max(1) as isize - 1) as usize;
        match self.pane {
            Pane::Traffic => {
                let at = moved(self.traffic_index(), self.traffic.len());
                // The newest row is "follow the newest": new commands take the selection.
                self.sel_traffic = if at == 0 { None } else { self.traffic.iter().rev().nth(at).map(|e| e.id) };
            }
            Pane::Approvals => {
                let at = moved(self.approval_index(), self.approvals.len());
                self.sel_approval = self.approvals.get(at).map(|a| a.id);
                self.detail_scroll = 0;
                // Moving the selection is looking at it.
                self.approval_hold = false;
            }
            Pane::Accounts => self.sel_account = moved(self.sel_account, self.account_list().len()),
            Pane::Jobs => {
                let at = moved(self.job_index(), self.jobs.len());
                self.sel_job = self.jobs.get(at).map(|j| j.id);
            }
            Pane::Relay => {}
        }
    }
}
