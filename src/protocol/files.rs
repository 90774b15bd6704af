//! File transfers between relay and daemon: the JSON requests that open and
//! close a transfer, and the binary WebSocket frames that carry its bytes.
//!
//! A binary frame is a fixed header followed by the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | kind ([`FrameKind`]) |
//! | 16 | transfer (or command) id, a UUID |
//! | 8 | sequence number, big-endian, from 0 per id (a file's data frames; a command's output frames, both streams) |
//! | rest | payload |
//!
//! Back-pressure is a credit window: the receiver of a transfer's bytes grants
//! the sender a number of chunks ([`FileCredit`](super::agent::RelayMessage::FileCredit)),
//! and the sender never has more than that in flight. A slow reader at one end
//! slows the file's reader at the other; nobody in between buffers more than a
//! window per transfer. A command's output ([`FrameKind::Stdout`],
//! [`FrameKind::Stderr`]) moves the same way, within
//! [`OutputCredit`](super::agent::RelayMessage::OutputCredit).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::agent::{Refusal, Requester};

/// Payload bytes in one data frame at most.
pub const FILE_CHUNK: usize = 128 * 1024;

/// Chunks a receiver grants at the start of a transfer; the most in flight.
pub const FILE_WINDOW: u32 = 8;

/// Default largest file a pull or push moves, in bytes (relay and daemon settings).
pub const DEFAULT_MAX_FILE: u64 = 100 * 1024 * 1024;

/// Length of a binary frame's header.
pub const HEADER_LEN: usize = 1 + 16 + 8;

/// What a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A chunk of a file's bytes.
    FileData = 1,
    /// The file's bytes are complete; the payload is empty.
    FileEnd = 2,
    /// A chunk of a command's standard output (the id is the command's).
    Stdout = 3,
    /// A chunk of a command's standard error (the id is the command's).
    Stderr = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::FileData),
            2 => Some(Self::FileEnd),
            3 => Some(Self::Stdout),
            4 => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// A decoded binary frame, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What it carries.
    pub kind: FrameKind,
    /// The transfer it belongs to.
    pub id: Uuid,
    /// Its place in the transfer, from 0.
    pub seq: u64,
    /// The bytes.
    pub payload: &'a [u8],
}

/// Why a binary frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header.
    #[error("binary frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// The kind byte is not one this end knows.
    #[error("binary frame of unknown kind {0}")]
    Kind(u8),
}

/// Encodes one frame.
pub fn encode_frame(kind: FrameKind, id: Uuid, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    write_header(&mut out, kind, id, seq);
    out.extend_from_slice(payload);
    out
}

/// Writes a frame's header into `head` ([`HEADER_LEN`] bytes), for a payload
/// already read in after it.
pub fn write_header(head: &mut [u8], kind: FrameKind, id: Uuid, seq: u64) {
    head[0] = kind as u8;
    head[1..17].copy_from_slice(id.as_bytes());
    head[17..HEADER_LEN].copy_from_slice(&seq.to_be_bytes());
}

/// Decodes one frame.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Short(bytes.len()));
    }
    let kind = FrameKind::from_byte(bytes[0]).ok_or(FrameError::Kind(bytes[0]))?;
    let id = Uuid::from_slice(&bytes[1..17]).expect("16 bytes make a UUID");
    let seq = u64::from_be_bytes(bytes[17..25].try_into().expect("8 bytes make a u64"));
    Ok(Frame { kind, id, seq, payload: &bytes[HEADER_LEN..] })
}

/// A byte range of a pull, as HTTP `Range: bytes=…` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "range", rename_all = "snake_case")]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last` (inclusive).
    From {
        /// First byte.
        first: u64,
        /// Last byte, inclusive; to the end when absent.
        last: Option<u64>,
    },
    /// `bytes=-n`: the last `n` bytes.
    Suffix {
        /// How many bytes at the end.
        len: u64,
    },
}

impl ByteRange {
    /// Parses a `Range` header value; `None` for anything but one `bytes=` range.
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| s.trim().parse::<u64>().ok();
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => Some(Self::Suffix { len: number(last)? }),
            (false, true) => Some(Self::From { first: number(first)?, last: None }),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                (last >= first).then_some(Self::From { first, last: Some(last) })
            }
            (true, true) => None,
        }
    }

    /// The offset and length this range picks from a file of `size` bytes;
    /// `None` when it picks nothing (HTTP 416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            Self::From { first, .. } if first >= size => None,
            Self::From { first, last } => Some((first, last.map_or(size, |l| l.min(size - 1) + 1) - first)),
            Self::Suffix { len: 0 } => None,
            Self::Suffix { len } => Some((size.saturating_sub(len), len.min(size))),
        }
    }
}

/// Asks the daemon for a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Chosen by the relay; names the transfer in every later message and frame.
    pub id: Uuid,
    /// The machine's own path: absolute, or relative to the daemon's working directory.
    pub path: String,
    /// Only these bytes; the whole file when absent.
    pub range: Option<ByteRange>,
    /// The relay's size cap; the daemon refuses a larger file (it has its own cap too).
    pub max_size: u64,
    /// Chunks the daemon may send before it hears more credit.
    pub window: u32,
    /// Who asked, shown to the operator.
    pub requester: Requester,
}

/// Asks the daemon to write a file; its bytes follow as data frames, within credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Chosen by the relay; names the transfer in every later message and frame.
    pub id: Uuid,
    /// The machine's own path: absolute, or relative to the daemon's working directory.
    pub path: String,
    /// Exactly how many bytes follow.
    pub size: u64,
    /// Permission bits of the new file (`0o644`); the daemon's default when absent.
    pub mode: Option<u32>,
    /// Replace a file that is already there.
    pub overwrite: bool,
    /// Lowercase hex SHA-256 the bytes must have, when the caller sent one.
    pub sha256: Option<String>,
    /// The relay's size cap.
    pub max_size: u64,
    /// Who asked, shown to the operator.
    pub requester: Requester,
}

/// A pulled file, as the daemon found it, before its bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOpened {
    /// The transfer.
    pub id: Uuid,
    /// The whole file's size.
    pub size: u64,
    /// The file's permission bits.
    pub mode: u32,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// A media type guessed from the first bytes (one of [`CONTENT_TYPES`]).
    pub content_type: String,
}

/// Why a transfer did not happen, or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFailure {
    /// The request is unusable (an empty or relative-looking path, a bad mode).
    BadRequest,
    /// The machine runs as many commands and transfers as it allows.
    Busy,
    /// The operator said no.
    Denied,
    /// Nobody answered the approval queue in time.
    ApprovalTimeout,
    /// The daemon is in disabled mode.
    Disabled,
    /// No such file, or its directory does not exist.
    NotFound,
    /// The path is a directory (or a push's path is a symbolic link).
    NotAFile,
    /// A push's path exists and `overwrite` was not given.
    Exists,
    /// Over the size cap.
    TooLarge,
    /// A push's bytes do not have the SHA-256 the caller sent; nothing was written.
    ChecksumMismatch,
    /// The file changed while it was read, or an I/O error.
    Failed,
}

impl From<Refusal> for FileFailure {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::BadRequest => Self::BadRequest,
            Refusal::Busy => Self::Busy,
            Refusal::Denied => Self::Denied,
            Refusal::ApprovalTimeout => Self::ApprovalTimeout,
            Refusal::Disabled => Self::Disabled,
            Refusal::SpawnFailed => Self::Failed,
        }
    }
}

/// The media types a pull may be labelled with; anything else is `application/octet-stream`.
pub const CONTENT_TYPES: &[&str] = &[
    "text/plain; charset=utf-8",
    "application/gzip",
    "application/zip",
    "application/pdf",
    "image/png",
    "image/jpeg",
    "application/x-xz",
    "application/zstd",
    "application/octet-stream",
];

/// Guesses a media type from a file's first bytes: a few magic numbers, else
/// text when they are UTF-8 without NUL bytes, else octet-stream.
pub fn sniff(head: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "application/gzip"),
        (b"PK\x03\x04", "application/zip"),
        (b"%PDF-", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\xfd7zXZ\x00", "application/x-xz"),
        (b"\x28\xb5\x2f\xfd", "application/zstd"),
    ];
    if let Some((_, kind)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return kind;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A character cut by the end of the sample is still text.
        Err(e) => e.error_len().is_none(),
    };
    if text && !head.contains(&0) { CONTENT_TYPES[0] } else { "application/octet-stream" }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` is a SHA-256 in hex (64 hex digits, any case).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A size for people: `812 B`, `3.2 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips_with_its_header() {
        let id = Uuid::new_v4();
        let bytes = encode_frame(FrameKind::FileData, id, 7, b"\x00\xffabc");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        assert_eq!(bytes[0], 1);
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(frame, Frame { kind: FrameKind::FileData, id, seq: 7, payload: b"\x00\xffabc" });
        let end = encode_frame(FrameKind::FileEnd, id, 8, &[]);
        assert_eq!(decode_frame(&end).unwrap().payload, b"");
    }

    #[test]
    fn short_and_unknown_frames_are_errors() {
        assert_eq!(decode_frame(&[1, 2, 3]), Err(FrameError::Short(3)));
        let mut bytes = encode_frame(FrameKind::FileEnd, Uuid::nil(), 0, &[]);
        bytes[0] = 99;
        assert_eq!(decode_frame(&bytes), Err(FrameError::Kind(99)));
    }

    #[test]
    fn ranges_parse_and_resolve_as_http_says() {
        let r = |s| ByteRange::parse(s);
        assert_eq!(r("bytes=10-").unwrap().resolve(100), Some((10, 90)));
        assert_eq!(r("bytes=10-19").unwrap().resolve(100), Some((10, 10)));
        assert_eq!(r("bytes=90-500").unwrap().resolve(100), Some((90, 10)));
        assert_eq!(r("bytes=-30").unwrap().resolve(100), Some((70, 30)));
        assert_eq!(r("bytes=-300").unwrap().resolve(100), Some((0, 100)));
        assert_eq!(r("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(r("bytes=-0").unwrap().resolve(100), None);
        for bad in ["", "bytes=", "bytes=-", "bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=x-"] {
            assert_eq!(r(bad), None, "{bad}");
        }
    }

    #[test]
    fn sniffing_tells_text_from_binary() {
        assert_eq!(sniff(b"hello\n"), "text/plain; charset=utf-8");
        assert_eq!(sniff("é".as_bytes().split_at(1).0), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"a\0b"), "application/octet-stream");
        assert_eq!(sniff(b"\x1f\x8b\x08\x00"), "application/gzip");
        assert_eq!(sniff(b"\xff\xfe\xfd"), "application/octet-stream");
        assert!(CONTENT_TYPES.contains(&sniff(b"%PDF-1.7")));
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(3_355_443), "3.2 MiB");
        assert_eq!(human_size(200 * 1024 * 1024), "200.0 MiB");
    }

    #[test]
    fn transfer_messages_round_trip_as_json() {
        use crate::protocol::agent::{AgentMessage, RelayMessage, decode, encode};
        let requester = Requester { who: "anonymous".into(), ip: "::1".into(), fingerprint: String::new() };
        let pull = RelayMessage::FilePull(PullRequest {
            id: Uuid::new_v4(),
            path: "/var/log/syslog".into(),
            range: Some(ByteRange::From { first: 10, last: None }),
            max_size: DEFAULT_MAX_FILE,
            window: FILE_WINDOW,
            requester,
        });
        assert_eq!(decode::<RelayMessage>(&encode(&pull)).unwrap(), pull);
        let failed = AgentMessage::FileFailed { id: Uuid::nil(), reason: FileFailure::Exists, message: "x".into() };
        let text = encode(&failed);
        assert!(text.contains(r#""type":"file_failed""#) && text.contains(r#""reason":"exists""#), "{text}");
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), failed);
    }

    proptest! {
        #[test]
        fn decoding_frames_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn frames_round_trip(seq in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let id = Uuid::new_v4();
            let bytes = encode_frame(FrameKind::FileData, id, seq, &payload);
            let frame = decode_frame(&bytes).unwrap();
            prop_assert_eq!((frame.id, frame.seq, frame.payload), (id, seq, &payload[..]));
        }
    }
}
