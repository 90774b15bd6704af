//! The relay <-> daemon protocol over the agent WebSocket: one JSON text frame
//! per message, one enum per direction.
//!
//! The daemon speaks first with [`AgentMessage::Hello`]; the relay answers with
//! [`RelayMessage::Registered`] or [`RelayMessage::HelloRefused`]. After that the
//! relay sends commands and the daemon streams their output back, keyed by the
//! command's id.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SessionCode;
pub use super::control::LinkedAccount;
use super::files::{FileFailure, FileOpened, PullRequest, PushRequest};

/// Version of this protocol. Both ends must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WebSocket message either end accepts. Output chunks are much
/// smaller ([`OUTPUT_CHUNK`]); the room left is for a long command line.
pub const MAX_FRAME: usize = 512 * 1024;

/// Bytes of output the daemon reads and forwards at a time: a pipe's
/// default capacity, so one read takes what a writer could put in it.
pub const OUTPUT_CHUNK: usize = 64 * 1024;

/// Largest output frame payload a relay takes from a daemon it did not give
/// a chunk size ([`ExecRequest::chunk`]): such a daemon sends at most
/// [`OUTPUT_CHUNK`]; the room is for daemons that read more at a time.
pub const OUTPUT_FRAME_MAX: usize = 128 * 1024;

/// Bytes of output a daemon that says [`CAP_OUTPUT_CHUNK`] reads and sends
/// at a time when the relay asks ([`ExecRequest::chunk`]): a quarter as many
/// frames, reads and wake-ups per byte as [`OUTPUT_CHUNK`].
pub const OUTPUT_CHUNK_LARGE: usize = 256 * 1024;

/// Output bytes a relay lets one command's daemon send ahead of its caller,
/// whatever the chunk size: what the relay holds per command at most.
pub const OUTPUT_HELD: usize = 1024 * 1024;

/// Output chunks of [`OUTPUT_CHUNK`] a relay lets one command's daemon send
/// ahead of its caller ([`ExecRequest::window`]): [`OUTPUT_HELD`] bytes.
pub const OUTPUT_WINDOW: u32 = (OUTPUT_HELD / OUTPUT_CHUNK) as u32;

/// The hello capability of a daemon that sends output as binary frames
/// within credit when the relay asks (a nonzero [`ExecRequest::window`]).
pub const CAP_OUTPUT_FRAMES: &str = "output_frames";

/// The hello capability of a daemon that reads and sends output in chunks of
/// the size the relay asks for ([`ExecRequest::chunk`]).
pub const CAP_OUTPUT_CHUNK: &str = "output_chunk";

/// How often the daemon pings the relay to measure round-trip time.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A link that has been silent this long is considered dead by either end.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(45);

/// What the daemon tells about its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct AgentInfo {
    /// The machine's host name; also the alias an account link gets.
    pub hostname: String,
    /// Operating system, as Rust names it (`linux`, `macos`).
    pub os: String,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The daemon's version.
    pub version: String,
    /// Optional features this daemon supports, such as `pty`.
    pub capabilities: Vec<String>,
}

/// Proof that a daemon already holds a code: the agent token minted with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The code the daemon was given.
    pub code: SessionCode,
    /// The agent token minted with it.
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output (and all output of a PTY command).
    Stdout,
    /// Standard error.
    Stderr,
}

/// Who asked for a command, as the operator is shown it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// A masked account email, or `anonymous`.
    pub who: String,
    /// The caller's IP address as the relay saw it.
    pub ip: String,
    /// A short stable tag of the caller's account, derived by the relay, so
    /// two accounts whose masked emails look alike can be told apart. Empty
    /// for anonymous callers and from relays that predate it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

impl Requester {
    /// Who, as the operator sees it: the masked email and, when the relay
    /// sent one, the account's fingerprint (`a****@exam****.com #1a2b3c4d`),
    /// the same way the linked-accounts list shows them.
    pub fn shown(&self) -> String {
        match self.fingerprint.as_str() {
            "" => self.who.clone(),
            tag => format!("{} #{tag}", self.who),
        }
    }
}

/// How a command ended: declared once, carried from the executor through the
/// relay to the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit status; 128 + N when killed by signal N.
    pub exit_code: i32,
    /// Wall time from start to exit.
    pub duration_ms: u64,
    /// Output passed the cap and was cut; the process group was killed.
    pub truncated: bool,
    /// The timeout passed and the process group was killed.
    pub timed_out: bool,
}

/// Messages from the daemon to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message: protocol version, machine info, and credentials unless registering anew.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// What the daemon tells about its machine.
        agent: AgentInfo,
        /// The code and token from an earlier registration; `None` asks for a new code.
        credentials: Option<Credentials>,
    },
    /// The command has passed the daemon's checks (and approval) and is running.
    Started {
        /// The command's id.
        id: Uuid,
    },
    /// A chunk of a command's output, bytes carried exactly.
    Output {
        /// The command's id.
        id: Uuid,
        /// Which pipe it came from.
        stream: Stream,
        /// The bytes, base64 in JSON.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The command has finished; no more messages follow for its id.
    Exit {
        /// The command's id.
        id: Uuid,
        /// How it ended.
        #[serde(flatten)]
        exit: ExitStatus,
    },
    /// The command never ran.
    Refused {
        /// The command's id.
        id: Uuid,
        /// Why, for the caller's program.
        reason: Refusal,
        /// What the caller should do, in words.
        message: String,
    },
    /// Round-trip probe; the relay answers with the same `seq`.
    Ping {
        /// Echoed back in the pong.
        seq: u64,
    },
    /// Answer to a relay ping.
    Pong {
        /// The ping's `seq`.
        seq: u64,
    },
    /// The token from [`RelayMessage::Registered`] is saved: the relay may forget the one before it.
    TokenSaved,
    /// The answer to a [`RelayMessage::Job`] call.
    JobReply {
        /// The call's `req`.
        req: u64,
        /// What came of it.
        reply: super::jobs::JobReply,
    },
    /// The operator asks the relay for something; answered by [`RelayMessage::OperatorReply`].
    Operator {
        /// Chosen by the daemon; echoed in the reply.
        req: u64,
        /// What the operator wants.
        op: OperatorOp,
    },
    /// A pulled file is open; its bytes follow as data frames, then an end frame.
    FileOpened(FileOpened),
    /// The daemon may be sent this many more data frames of a push.
    FileCredit {
        /// The transfer.
        id: Uuid,
        /// More chunks granted.
        chunks: u32,
    },
    /// A pushed file is in place.
    FileDone {
        /// The transfer.
        id: Uuid,
        /// Bytes written.
        size: u64,
        /// Lowercase hex SHA-256 of what was written.
        sha256: String,
    },
    /// A transfer did not happen, or stopped; nothing more follows for its id.
    FileFailed {
        /// The transfer.
        id: Uuid,
        /// Why, for the caller's program.
        reason: FileFailure,
        /// What the caller should do, in words.
        message: String,
    },
}

/// What a machine's operator may ask of the relay about that machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OperatorOp {
    /// Replace the code: the old one stops working at once, links and blocks are cleared.
    ResetCode,
    /// The accounts linked to this machine.
    ListAccounts,
    /// Block a linked account.
    Block {
        /// The account link's id (`account` on the wire).
        #[serde(rename = "account")]
        link: String,
    },
    /// Unblock a linked account.
    Unblock {
        /// The account link's id (`account` on the wire).
        #[serde(rename = "account")]
        link: String,
    },
    /// Approve a pending link.
    Approve {
        /// The account link's id (`account` on the wire).
        #[serde(rename = "account")]
        link: String,
    },
}

/// The relay's answer to an [`OperatorOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OperatorOutcome {
    /// The code was replaced.
    CodeReset {
        /// The new code.
        code: SessionCode,
        /// When it was made (Unix ms).
        code_created_ms: u64,
    },
    /// The linked accounts.
    Accounts {
        /// Masked as the operator may see them.
        accounts: Vec<LinkedAccount>,
    },
    /// Done.
    Done,
    /// It could not be done; the message says why.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// Why the daemon did not run a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The request itself is unusable (a missing `cwd`, say).
    BadRequest,
    /// The daemon runs as many commands as it allows at once.
    Busy,
    /// The operator said no.
    Denied,
    /// Nobody answered the approval queue in time.
    ApprovalTimeout,
    /// The daemon is in disabled mode.
    Disabled,
    /// The command could not be started.
    SpawnFailed,
}

/// Messages from the relay to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMessage {
    /// The hello was accepted. `token` is set when a new one was minted and
    /// must be saved before it is next needed.
    Registered {
        /// The machine's code.
        code: SessionCode,
        /// A newly minted agent token, if any.
        token: Option<String>,
        /// Unix time (ms) the code was made; anonymous use is allowed for a while after it.
        code_created_ms: u64,
    },
    /// The hello was not accepted; the relay closes the link after this.
    HelloRefused {
        /// Why, for the daemon's program.
        reason: HelloRefusal,
        /// What happened, in words, for the operator.
        message: String,
    },
    /// Run a command.
    Exec(ExecRequest),
    /// A call about detached jobs; answered by [`AgentMessage::JobReply`] with the same `req`.
    Job {
        /// Chosen by the relay; echoed in the reply.
        req: u64,
        /// What is asked.
        call: super::jobs::JobCall,
    },
    /// Stop a command: its caller has gone.
    Cancel {
        /// The command's id.
        id: Uuid,
    },
    /// Round-trip probe; the daemon answers with the same `seq`.
    Ping {
        /// Echoed back in the pong.
        seq: u64,
    },
    /// Answer to a daemon ping.
    Pong {
        /// The ping's `seq`.
        seq: u64,
    },
    /// The answer to an [`AgentMessage::Operator`] request.
    OperatorReply {
        /// The request's `req`.
        req: u64,
        /// What came of it.
        outcome: OperatorOutcome,
    },
    /// The accounts linked to this machine changed (a pending link appeared, say).
    AccountsChanged,
    /// The relay could not understand a message; the text says what was wrong.
    Error {
        /// What was wrong.
        message: String,
    },
    /// Send a file's bytes.
    FilePull(PullRequest),
    /// Write a file; its bytes follow as data frames, within the daemon's credit.
    FilePush(PushRequest),
    /// The daemon may send this many more data frames of a pull.
    FileCredit {
        /// The transfer.
        id: Uuid,
        /// More chunks granted.
        chunks: u32,
    },
    /// The daemon may send this many more output frames of a command: its
    /// caller took that many.
    OutputCredit {
        /// The command.
        id: Uuid,
        /// More chunks granted.
        chunks: u32,
    },
}

/// Why the relay refused a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloRefusal {
    /// The two ends speak different protocol versions.
    Version,
    /// The relay does not accept this code with this token (its store was
    /// reset, or the token is wrong or stale): register anew. A relay answers
    /// this for an unknown code and a wrong token alike, so that the answer
    /// does not tell which codes exist.
    UnknownCode,
    /// The token does not match the code (older relays; now [`Self::UnknownCode`]).
    BadToken,
    /// This address made too many registrations today: try again tomorrow.
    RateLimited,
}

impl RelayMessage {
    /// The message's kind, for logs that must not carry its contents (tokens, commands).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::HelloRefused { .. } => "hello_refused",
            Self::Exec(_) => "exec",
            Self::Job { .. } => "job",
            Self::Cancel { .. } => "cancel",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::OperatorReply { .. } => "operator_reply",
            Self::AccountsChanged => "accounts_changed",
            Self::Error { .. } => "error",
            Self::FilePull(_) => "file_pull",
            Self::FilePush(_) => "file_push",
            Self::FileCredit { .. } => "file_credit",
            Self::OutputCredit { .. } => "output_credit",
        }
    }
}

impl AgentInfo {
    /// The info with every field made safe to store, log and show: no
    /// control characters, bounded lengths. A daemon's word is not trusted.
    pub fn cleaned(mut self) -> Self {
        fn clean(text: &str) -> String {
            text.chars().filter(|c| !c.is_control()).take(64).collect()
        }
        self.hostname = clean(&self.hostname);
        self.os = clean(&self.os);
        self.arch = clean(&self.arch);
        self.version = clean(&self.version);
        self.capabilities = self.capabilities.iter().take(16).map(|c| clean(c)).collect();
        self
    }
}

/// One command for the daemon to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Chosen by the relay; names the command in every later message.
    pub id: Uuid,
    /// Shell text, run by `sh -c`.
    pub command: String,
    /// Working directory; the daemon's own when absent.
    pub cwd: Option<String>,
    /// Kill the process group after this long.
    pub timeout_ms: u64,
    /// Kill the process group once this many output bytes have been sent.
    pub max_output: u64,
    /// Run under a pseudo-terminal (stdout and stderr merged).
    #[serde(default)]
    pub pty: bool,
    /// Who asked, shown to the operator.
    pub requester: Requester,
    /// Output chunks the daemon may send as binary frames
    /// ([`FrameKind::Stdout`](super::files::FrameKind::Stdout)) before it hears
    /// more [`RelayMessage::OutputCredit`]; 0 (absent: a relay that predates
    /// frames, or a daemon without [`CAP_OUTPUT_FRAMES`]) asks for JSON
    /// [`AgentMessage::Output`] messages, unpaced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub window: u32,
    /// Bytes of output the daemon reads and sends per frame, at most
    /// [`OUTPUT_CHUNK_LARGE`]; 0 (absent: a relay that predates it, or a
    /// daemon without [`CAP_OUTPUT_CHUNK`]) means [`OUTPUT_CHUNK`]. The
    /// relay's window counts chunks of this size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk: u32,
}

impl ExecRequest {
    /// Bytes of output to read and send at a time, as asked and bounded.
    pub fn output_chunk(&self) -> usize {
        match self.chunk {
            0 => OUTPUT_CHUNK,
            n => (n as usize).clamp(4096, OUTPUT_CHUNK_LARGE),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Reads only the version of a hello, so that a peer of another version is
/// told so instead of getting a parse error about fields it does not know.
#[derive(Deserialize)]
pub struct VersionProbe {
    /// Present in every hello of every version.
    pub protocol: Option<u32>,
}

/// A message that could not be decoded. Its text never quotes the message:
/// serde_json's own errors do (`invalid type: string "…"`), and a message can
/// carry command text or output, which must not reach a log.
#[derive(Debug, thiserror::Error)]
#[error("unreadable message: {}", describe(.0))]
pub struct DecodeError(#[from] serde_json::Error);

/// What went wrong and where, cut before the first quoted value.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let kind = text.split(['"', '`']).next().unwrap_or_default().trim_end().trim_end_matches(':');
    format!("{kind} (line {}, column {})", e.line(), e.column())
}

/// Encodes a message as the text of one frame.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol messages always serialize")
}

/// Decodes one frame's text.
pub fn decode<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    Ok(serde_json::from_str(text)?)
}

impl AgentMessage {
    /// Decodes one frame from a daemon, as [`decode`] does. The two
    /// messages every command sends, `started` and `exit`, are read straight
    /// into their fields when the frame opens with its type, as this crate
    /// writes them: serde reads an internally tagged enum by first copying
    /// the whole frame into an intermediate tree to find the tag. Any other
    /// frame, or one the short way cannot read, goes the derived way, which
    /// also words the errors.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        match decode_common(text) {
            Some(msg) => Ok(msg),
            None => decode(text),
        }
    }
}

/// `started` and `exit` read without serde's buffering of tagged enums;
/// `None` for anything else. The `type` field is skipped as unknown.
fn decode_common(text: &str) -> Option<AgentMessage> {
    #[derive(Deserialize)]
    struct Started {
        id: Uuid,
    }
    #[derive(Deserialize)]
    struct Exit {
        id: Uuid,
        exit_code: i32,
        duration_ms: u64,
        truncated: bool,
        timed_out: bool,
    }
    if text.starts_with(r#"{"type":"started","#) {
        let Started { id } = serde_json::from_str(text).ok()?;
        return Some(AgentMessage::Started { id });
    }
    if text.starts_with(r#"{"type":"exit","#) {
        let Exit { id, exit_code, duration_ms, truncated, timed_out } = serde_json::from_str(text).ok()?;
        return Some(AgentMessage::Exit { id, exit: ExitStatus { exit_code, duration_ms, truncated, timed_out } });
    }
    None
}

/// The text a version mismatch is refused with, naming both versions.
pub fn version_mismatch(theirs: Option<u32>) -> String {
    match theirs {
        Some(v) => format!(
            "protocol version mismatch: this relay speaks version {PROTOCOL_VERSION}, the daemon speaks version {v}; upgrade the older of the two"
        ),
        None => format!(
            "the first message must be a hello carrying the protocol version (this relay speaks version {PROTOCOL_VERSION})"
        ),
    }
}

pub(crate) mod base64_opt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)).transpose()
    }
}

pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn output_carries_arbitrary_bytes_exactly() {
        let data = vec![0, 0xff, 0xfe, b'\n', 0x80, b'a'];
        let msg = AgentMessage::Output { id: Uuid::nil(), stream: Stream::Stderr, data: data.clone() };
        let text = encode(&msg);
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), msg);
    }

    #[test]
    fn exit_keeps_its_flat_wire_form() {
        let exit = ExitStatus { exit_code: 3, duration_ms: 12, truncated: true, timed_out: false };
        let text = encode(&AgentMessage::Exit { id: Uuid::nil(), exit });
        assert_eq!(
            text,
            r#"{"type":"exit","id":"00000000-0000-0000-0000-000000000000","exit_code":3,"duration_ms":12,"truncated":true,"timed_out":false}"#
        );
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), AgentMessage::Exit { id: Uuid::nil(), exit });
    }

    #[test]
    fn started_and_exit_read_the_short_way_as_the_derived_way_in_any_field_order() {
        let id = Uuid::new_v4();
        let exit = ExitStatus { exit_code: -9, duration_ms: u64::MAX, truncated: false, timed_out: true };
        let derived = |text: &str| decode::<AgentMessage>(text).map_err(|e| e.to_string());
        let short = |text: &str| AgentMessage::decode(text).map_err(|e| e.to_string());
        for msg in [AgentMessage::Started { id }, AgentMessage::Exit { id, exit }] {
            let text = encode(&msg);
            assert!(decode_common(&text).is_some(), "{text}");
            assert_eq!(short(&text), Ok(msg));
        }
        for text in [
            format!(r#"{{"id":"{id}","type":"started"}}"#),
            format!(r#"{{"type":"started","id":"{id}","later":[1,{{"x":null}}]}}"#),
            format!(
                r#"{{"exit_code":1,"type":"exit","id":"{id}","duration_ms":2,"truncated":true,"timed_out":false}}"#
            ),
            format!(r#"{{"type":"exit","id":"{id}","exit_code":1,"duration_ms":2,"truncated":true}}"#),
            r#"{"type":"started","id":"rm -rf /srv/secret-project"}"#.into(),
            r#"{"type":"exit","id":"00000000-0000-0000-0000-000000000000","exit_code":"x"}"#.into(),
            r#"{"type":"started","#.into(),
        ] {
            assert_eq!(short(&text), derived(&text), "{text}");
        }
    }

    #[test]
    fn unknown_and_malformed_messages_are_errors() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"type":"launch_missiles"}"#,
            r#"{"type":"output","id":"x"}"#,
            r#"{"type":"output","id":"00000000-0000-0000-0000-000000000000","stream":"stdout","data":"!!"}"#,
        ] {
            let err = decode::<AgentMessage>(bad).unwrap_err();
            assert!(err.to_string().starts_with("unreadable message"), "{bad}: {err}");
        }
    }

    #[test]
    fn decode_errors_never_quote_the_message() {
        let secret = "rm -rf /srv/secret-project";
        for bad in [
            format!(r#"{{"type":"exit","id":"{secret}"}}"#),
            format!(r#"{{"type":"{secret}"}}"#),
            format!(r#"{{"type":"ping","seq":"{secret}"}}"#),
        ] {
            let err = decode::<AgentMessage>(&bad).unwrap_err().to_string();
            assert!(!err.contains("secret-project"), "{err}");
            assert!(err.contains("column"), "{err}");
        }
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let text = version_mismatch(Some(7));
        assert!(text.contains("version 1") && text.contains("version 7"), "{text}");
        let probe: VersionProbe = serde_json::from_str(r#"{"type":"hello","protocol":7,"whatever":[]}"#).unwrap();
        assert_eq!(probe.protocol, Some(7));
    }

    #[test]
    fn credentials_debug_hides_the_token() {
        let c = Credentials { code: SessionCode::generate(), token: "s3cret".into() };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(s in "\\PC{0,200}") {
            let _ = decode::<AgentMessage>(&s);
            let _ = AgentMessage::decode(&s);
            let _ = decode::<RelayMessage>(&s);
        }

        #[test]
        fn output_round_trips(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let msg = AgentMessage::Output { id: Uuid::new_v4(), stream: Stream::Stdout, data };
            prop_assert_eq!(decode::<AgentMessage>(&encode(&msg)).unwrap(), msg);
        }
    }
}
