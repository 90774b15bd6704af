//! The daemon's control socket: newline-delimited JSON between the daemon
//! and its consoles. Requests carry an `id` and an `op`; every request gets
//! one reply with the same `id`; after `subscribe`, events are pushed too.
//! docs/control-protocol.md describes it for people.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::agent::Stream;

/// Longest request line the daemon reads; a longer one ends that client's connection.
pub const MAX_LINE: usize = 64 * 1024;

/// The socket of the daemon that runs as root (the systemd service).
pub const SYSTEM_SOCKET: &str = "/run/aic-daemon/aic.sock";

/// The socket a daemon uses when none is given: the system one for root,
/// else one in the user's runtime dir.
pub fn default_socket(is_root: bool) -> PathBuf {
    if is_root { PathBuf::from(SYSTEM_SOCKET) } else { user_socket() }
}

/// The socket a console dials when none is given: the system daemon's if
/// there is one, else the user's own daemon's. A system socket this user may
/// not even look at still counts as there, so that the console says
/// "permission denied" and how to join group `aic` rather than "not running".
pub fn console_socket() -> PathBuf {
    let system = PathBuf::from(SYSTEM_SOCKET);
    let there =
        std::fs::symlink_metadata(&system).map_or_else(|e| e.kind() == std::io::ErrorKind::PermissionDenied, |_| true);
    if there { system } else { user_socket() }
}

/// `$XDG_RUNTIME_DIR/aic-daemon.sock`, or a private dir under the temp dir without one.
pub fn user_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("aic-daemon.sock"),
        _ => std::env::temp_dir().join(format!("aic-daemon-{}", rustix::process::geteuid().as_raw())).join("aic.sock"),
    }
}

/// What the daemon does with an incoming command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every command waits in the approval queue for the operator's y/N.
    #[default]
    Supervised,
    /// Commands run at once (still shown live).
    Auto,
    /// Every command is refused.
    Disabled,
}

impl Mode {
    /// How much the mode holds back: disabled > supervised > auto.
    pub fn strictness(self) -> u8 {
        match self {
            Self::Auto => 0,
            Self::Supervised => 1,
            Self::Disabled => 2,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Supervised => "supervised",
            Self::Auto => "auto",
            Self::Disabled => "disabled",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "supervised" => Ok(Self::Supervised),
            "auto" => Ok(Self::Auto),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!("unknown mode {other:?}; use supervised, auto or disabled")),
        }
    }
}

/// A request from a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations a console can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Daemon, link and queue at a glance: [`StatusInfo`].
    Status,
    /// The traffic ring, oldest first: `Vec<TrafficEntry>`.
    Traffic,
    /// Commands waiting for a decision: `Vec<Approval>`.
    Approvals,
    /// Run a waiting command.
    Approve {
        /// The command's id.
        command: Uuid,
    },
    /// Refuse a waiting command; its caller gets 403 `denied`.
    Deny {
        /// The command's id.
        command: Uuid,
    },
    /// Change the mode (kept across restarts).
    SetMode {
        /// The new mode.
        mode: Mode,
    },
    /// The session code: [`CodeInfo`].
    Code,
    /// Ask the relay for a new code; the old one stops working at once.
    CodeReset,
    /// Accounts linked to this machine on the relay: `Vec<LinkedAccount>`.
    Admins,
    /// Block a linked account.
    AdminBlock {
        /// Its id.
        account: String,
    },
    /// Unblock a linked account.
    AdminUnblock {
        /// Its id.
        account: String,
    },
    /// Approve a pending link.
    AdminApprove {
        /// Its id.
        account: String,
    },
    /// Push [`Event`]s on this connection from now on.
    Subscribe,
    /// Every job on this machine, newest first: `Vec<JobInfo>`.
    Jobs,
    /// Cancel a job: `JobInfo`.
    JobCancel {
        /// The job's id.
        job: Uuid,
    },
    /// The end of a job's output: [`JobTail`].
    JobTail {
        /// The job's id.
        job: Uuid,
    },
}

impl Op {
    /// Whether the request acts as the operator (changes the mode, decides a
    /// command, changes an account's link, resets the code) rather than looks.
    pub fn is_operator_action(&self) -> bool {
        !matches!(
            self,
            Op::Status
                | Op::Traffic
                | Op::Approvals
                | Op::Code
                | Op::Admins
                | Op::Subscribe
                | Op::Jobs
                | Op::JobTail { .. }
        )
    }
}

impl Op {
    /// Reads the `result` of a reply to this op: a reply carries no tag, so
    /// what it is follows from what was asked.
    pub fn read_reply(&self, result: serde_json::Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value as read;
        Ok(match self {
            Self::Status => Reply::Status(read(result)?),
            Self::Traffic => Reply::Traffic(read(result)?),
            Self::Approvals => Reply::Approvals(read(result)?),
            Self::Approve { .. } | Self::Deny { .. } => Reply::Decided(read(result)?),
            Self::SetMode { .. } => Reply::Mode(read(result)?),
            Self::Code | Self::CodeReset => Reply::Code(read(result)?),
            Self::Admins => Reply::Accounts(read(result)?),
            Self::AdminBlock { .. } | Self::AdminUnblock { .. } | Self::AdminApprove { .. } => {
                Reply::Account(read(result)?)
            }
            Self::Subscribe => Reply::Subscribed(read(result)?),
            Self::Jobs => Reply::Jobs(read(result)?),
            Self::JobCancel { .. } => Reply::Job(read(result)?),
            Self::JobTail { .. } => Reply::JobTail(read(result)?),
        })
    }
}

/// The `result` of a successful reply, one variant per kind of op. On the
/// wire it is the variant's content alone (no tag); [`Op::read_reply`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// To `status`.
    Status(StatusInfo),
    /// To `traffic`: the ring, oldest first.
    Traffic(Vec<TrafficEntry>),
    /// To `approvals`: waiting commands, oldest first.
    Approvals(Vec<Approval>),
    /// To `approve` and `deny`.
    Decided(Decided),
    /// To `set_mode`.
    Mode(ModeInfo),
    /// To `code` and `code_reset` (the new code).
    Code(CodeInfo),
    /// To `admins`.
    Accounts(Vec<LinkedAccount>),
    /// To `admin_block`, `admin_unblock` and `admin_approve`.
    Account(AccountChanged),
    /// To `subscribe`.
    Subscribed(Subscribed),
    /// To `jobs`: every job, newest first.
    Jobs(Vec<super::jobs::JobInfo>),
    /// To `job_cancel`: the job as it is now.
    Job(super::jobs::JobInfo),
    /// To `job_tail`.
    JobTail(JobTail),
}

/// Wraps each kind of reply's content in a [`Reply`], and takes it out again
/// (the reply back when it is another kind).
macro_rules! reply_content {
    ($($variant:ident($content:ty)),* $(,)?) => {$(
        impl From<$content> for Reply {
            fn from(content: $content) -> Self {
                Reply::$variant(content)
            }
        }

        impl TryFrom<Reply> for $content {
            type Error = Reply;
            fn try_from(reply: Reply) -> Result<Self, Reply> {
                match reply {
                    Reply::$variant(content) => Ok(content),
                    other => Err(other),
                }
            }
        }
    )*};
}

reply_content!(
    Status(StatusInfo),
    Traffic(Vec<TrafficEntry>),
    Approvals(Vec<Approval>),
    Decided(Decided),
    Mode(ModeInfo),
    Code(CodeInfo),
    Accounts(Vec<LinkedAccount>),
    Account(AccountChanged),
    Subscribed(Subscribed),
    Jobs(Vec<super::jobs::JobInfo>),
    Job(super::jobs::JobInfo),
    JobTail(JobTail),
);

/// The end of a job's output, for the console's Jobs pane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTail {
    /// The job's id.
    pub job: Uuid,
    /// Its last [`TAIL_BYTES`] bytes of output as text (invalid UTF-8 replaced).
    pub tail: String,
}

/// A waiting command the operator has just decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The command's id.
    pub command: Uuid,
    /// `approved` or `denied`.
    pub decision: Decision,
}

/// The mode now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeInfo {
    /// The mode.
    pub mode: Mode,
}

/// A linked account whose state the operator has just changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountChanged {
    /// The account link's id.
    pub account: String,
    /// Its state now.
    pub state: LinkState,
}

/// Events follow on this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// Always true.
    pub subscribed: bool,
}

/// What the daemon writes to a console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer: a [`Reply`], read back with [`Op::read_reply`].
        result: serde_json::Value,
    },
    /// Request `id` failed (or, with no id, the line could not be read).
    Error {
        /// The request's id, when it could be read.
        id: Option<u64>,
        /// What went wrong and what to do.
        message: String,
    },
    /// Something happened (after `subscribe`).
    Event(Event),
}

/// Things that happen, pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A command arrived or changed state; the entry is its whole current record.
    Traffic(TrafficEntry),
    /// A chunk of a command's output.
    Output {
        /// The command's id.
        command: Uuid,
        /// Which pipe.
        stream: Stream,
        /// The chunk as text (invalid UTF-8 replaced).
        text: String,
    },
    /// A command waits for a decision.
    ApprovalQueued(Approval),
    /// A waiting command was decided or went away.
    ApprovalDecided {
        /// The command's id.
        command: Uuid,
        /// What became of it.
        decision: Decision,
    },
    /// The relay link changed or measured a round trip.
    Relay(RelayHealth),
    /// Linked accounts changed on the relay.
    Accounts,
    /// The session code changed.
    CodeChanged(CodeInfo),
    /// The mode changed.
    ModeChanged {
        /// The new mode.
        mode: Mode,
    },
    /// This subscriber fell behind and missed events; it should re-read the state.
    Lagged {
        /// How many events were missed.
        missed: u64,
    },
}

/// What became of a command that waited for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The operator said yes.
    Approved,
    /// The operator said no.
    Denied,
    /// Nobody decided in time.
    TimedOut,
    /// Its caller went away first.
    Withdrawn,
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Waiting for the operator.
    Pending,
    /// Running.
    Running,
    /// Finished by itself (see `exit_code`).
    Exited,
    /// Killed by its timeout.
    TimedOut,
    /// The operator said no.
    Denied,
    /// Nobody decided in time.
    ApprovalTimeout,
    /// Its caller went away before it ended.
    Cancelled,
    /// Never ran (mode disabled, busy, bad cwd, spawn failure).
    Refused,
}

/// Commands the traffic ring keeps (the daemon's, and the console's copy).
pub const RING_LEN: usize = 1000;
/// Bytes of each command's output a [`TrafficEntry::tail`] keeps (its end).
pub const TAIL_BYTES: usize = 4096;

/// Appends `text` to a [`TrafficEntry::tail`], keeping its last [`TAIL_BYTES`] bytes.
pub fn append_tail(tail: &mut String, text: &str) {
    tail.push_str(text);
    if tail.len() > TAIL_BYTES {
        let mut start = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail.drain(..start);
    }
}

/// One command in the traffic ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficEntry {
    /// The command's id.
    pub id: Uuid,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
    /// Who asked: a masked account email, or `anonymous`.
    pub who: String,
    /// The caller's IP as the relay saw it.
    pub ip: String,
    /// The command (long ones are cut in the ring).
    pub command: String,
    /// Its working directory, if given.
    pub cwd: Option<String>,
    /// Where it is in its life.
    pub state: CommandState,
    /// Exit status once it has exited.
    pub exit_code: Option<i32>,
    /// Run time once it has ended.
    pub duration_ms: Option<u64>,
    /// Output bytes so far.
    pub bytes: u64,
    /// Output was cut at the cap.
    pub truncated: bool,
    /// The end of its output, at most [`TAIL_BYTES`] (see [`append_tail`]).
    pub tail: String,
}

/// A command waiting for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The command's id; `approve`/`deny` take it.
    pub id: Uuid,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
    /// Who asked.
    pub who: String,
    /// The caller's IP.
    pub ip: String,
    /// The whole command.
    pub command: String,
    /// Its working directory, if given.
    pub cwd: Option<String>,
    /// Its timeout once running.
    pub timeout_ms: u64,
    /// When it is refused if nobody decides (Unix ms).
    pub expires_at_ms: u64,
    /// The code it came with, masked (`AIC-****-****-RTBN`); a code reset
    /// drops every entry that came with the old code. Empty from older daemons.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
}

/// The link to the relay, as the operator watches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHealth {
    /// Whether the link is up.
    pub connected: bool,
    /// The relay's URL.
    pub url: String,
    /// Since when the link is up (Unix ms).
    pub connected_since_ms: Option<u64>,
    /// Recent round-trip times in ms, oldest first (at most 60).
    pub rtt_ms: Vec<u32>,
    /// How many times the link has been re-established.
    pub reconnects: u64,
    /// The last thing that went wrong with the link.
    pub last_error: Option<String>,
}

/// The session code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeInfo {
    /// The code; absent until the relay has given one.
    pub code: Option<String>,
}

/// The daemon at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The daemon's version.
    pub version: String,
    /// The session code.
    pub code: Option<String>,
    /// The mode.
    pub mode: Mode,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Commands waiting for approval.
    pub pending: usize,
    /// Commands running.
    pub running: usize,
    /// The relay link.
    pub relay: RelayHealth,
}

/// The state of an account's link to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The account may use the machine.
    Active,
    /// Made after the code's first hour: waits for the operator.
    Pending,
    /// The operator blocked the account.
    Blocked,
}

impl LinkState {
    /// The word stored and shown (the same as on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Pending => "pending",
            Self::Blocked => "blocked",
        }
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account linked to this machine, as the relay shows it to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedAccount {
    /// Stable id, for block/unblock/approve.
    pub id: String,
    /// The email, masked (`lu****@wear****.com`); the full one never leaves the relay.
    pub email: String,
    /// The name the account uses for this machine.
    pub alias: String,
    /// Whether it may use the machine.
    pub state: LinkState,
    /// When the link was made (Unix ms).
    pub linked_at_ms: u64,
    /// When the account last used this machine (Unix ms).
    pub last_used_ms: Option<u64>,
    /// A short stable tag the relay derives from the account, shown beside
    /// the masked email so two accounts that mask alike can be told apart.
    /// Empty from relays that predate it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

impl LinkedAccount {
    /// The masked email with the account's fingerprint beside it, when the relay sent one.
    pub fn shown_email(&self) -> String {
        match self.fingerprint.as_str() {
            "" => self.email.clone(),
            tag => format!("{} #{tag}", self.email),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_bounded_on_char_boundaries() {
        let mut tail = String::new();
        for _ in 0..3000 {
            append_tail(&mut tail, "é");
        }
        assert!(tail.len() <= TAIL_BYTES && tail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn requests_are_flat_json() {
        let req: Request = serde_json::from_str(r#"{"id":4,"op":"set_mode","mode":"auto"}"#).unwrap();
        assert_eq!(req, Request { id: 4, op: Op::SetMode { mode: Mode::Auto } });
        assert_eq!(serde_json::to_string(&Request { id: 1, op: Op::Status }).unwrap(), r#"{"id":1,"op":"status"}"#);
    }

    #[test]
    fn replies_keep_their_untagged_json_and_read_back_by_op() {
        let command = Uuid::nil();
        let cases = [
            (Op::Deny { command }, Reply::Decided(Decided { command, decision: Decision::Denied })),
            (Op::SetMode { mode: Mode::Auto }, Reply::Mode(ModeInfo { mode: Mode::Auto })),
            (Op::Approvals, Reply::Approvals(Vec::new())),
            (Op::Admins, Reply::Accounts(Vec::new())),
            (
                Op::AdminBlock { account: "7".into() },
                Reply::Account(AccountChanged { account: "7".into(), state: LinkState::Blocked }),
            ),
            (Op::Subscribe, Reply::Subscribed(Subscribed { subscribed: true })),
        ];
        let wire = [
            r#"{"command":"00000000-0000-0000-0000-000000000000","decision":"denied"}"#,
            r#"{"mode":"auto"}"#,
            "[]",
            "[]",
            r#"{"account":"7","state":"blocked"}"#,
            r#"{"subscribed":true}"#,
        ];
        for ((op, reply), json) in cases.into_iter().zip(wire) {
            assert_eq!(serde_json::to_string(&reply).unwrap(), json);
            assert_eq!(op.read_reply(serde_json::from_str(json).unwrap()).unwrap(), reply);
        }
        assert!(Op::Status.read_reply(serde_json::json!({"mode": "auto"})).is_err());
    }

    #[test]
    fn events_are_tagged() {
        let frame = ServerFrame::Event(Event::ModeChanged { mode: Mode::Disabled });
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"event","event":"mode_changed","mode":"disabled"}"#
        );
    }

    #[test]
    fn modes_parse_in_any_case_with_a_hint() {
        assert_eq!("Auto".parse::<Mode>(), Ok(Mode::Auto));
        assert!("yolo".parse::<Mode>().unwrap_err().contains("supervised, auto or disabled"));
    }
}
