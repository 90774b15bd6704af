//! The in-memory ring of recent commands that consoles show. Bounded in
//! entries and in bytes per entry; never written anywhere.

use std::collections::VecDeque;

use uuid::Uuid;

use crate::protocol::agent::ExecRequest;
use crate::protocol::control::{CommandState, RING_LEN, TAIL_BYTES, TrafficEntry};

/// Bytes of each command's text kept in the ring (the approval queue keeps it whole).
pub const COMMAND_BYTES: usize = 4096;

/// The ring.
#[derive(Debug, Default)]
pub struct Traffic {
    entries: VecDeque<TrafficEntry>,
}

impl Traffic {
    /// Records a command that has just arrived.
    pub fn push(&mut self, req: &ExecRequest, state: CommandState, at_ms: u64) -> TrafficEntry {
        if self.entries.len() == RING_LEN {
            self.entries.pop_front();
        }
        let entry = TrafficEntry {
            id: req.id,
            at_ms,
            who: req.requester.shown(),
            ip: req.requester.ip.clone(),
            command: cut(&req.command, COMMAND_BYTES),
            cwd: req.cwd.clone(),
            state,
            exit_code: None,
            duration_ms: None,
            bytes: 0,
            truncated: false,
            tail: String::new(),
        };
        self.entries.push_back(entry.clone());
        entry
    }

    /// The entry for `id`; recent ones are found first.
    pub fn get_mut(&mut self, id: Uuid) -> Option<&mut TrafficEntry> {
        self.entries.iter_mut().rev().find(|e| e.id == id)
    }

    /// All entries, oldest first.
    pub fn snapshot(&self) -> Vec<TrafficEntry> {
        self.entries.iter().cloned().collect()
    }

    /// Commands now running.
    pub fn running(&self) -> usize {
        self.entries.iter().filter(|e| e.state == CommandState::Running).count()
    }
}

/// The end of an output chunk as text: its last [`TAIL_BYTES`] bytes, from
/// the first whole character (invalid UTF-8 replaced).
pub fn tail_text(data: &[u8]) -> String {
    let mut start = data.len().saturating_sub(TAIL_BYTES);
    // Skip continuation bytes so the cut does not make a replacement character.
    let limit = (start + 3).min(data.len());
    while start < limit && data[start] & 0xC0 == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&data[start..]).into_owned()
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::agent::Requester;

    fn req(command: &str) -> ExecRequest {
        ExecRequest {
            id: Uuid::new_v4(),
            command: command.into(),
            cwd: None,
            timeout_ms: 1000,
            max_output: 1,
            pty: false,
            window: 0,
            chunk: 0,
            requester: Requester { who: "anonymous".into(), ip: "127.0.0.1".into(), fingerprint: String::new() },
        }
    }

    #[test]
    fn ring_keeps_the_last_thousand() {
        let mut t = Traffic::default();
        let first = req("first");
        t.push(&first, CommandState::Running, 0);
        for _ in 0..RING_LEN {
            t.push(&req("x"), CommandState::Running, 0);
        }
        assert_eq!(t.snapshot().len(), RING_LEN);
        assert!(t.get_mut(first.id).is_none());
    }

    #[test]
    fn a_chunks_tail_is_cut_on_a_character() {
        let chunk = "é".repeat(TAIL_BYTES).into_bytes();
        let text = tail_text(&chunk);
        assert!(text.len() <= TAIL_BYTES && !text.is_empty() && text.chars().all(|c| c == 'é'), "{}", text.len());
        assert_eq!(tail_text(b"short"), "short");
        assert_eq!(tail_text(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn commands_are_bounded_on_char_boundaries() {
        let mut t = Traffic::default();
        let long = "€".repeat(5000);
        let entry = t.push(&req(&long), CommandState::Pending, 0);
        assert!(entry.command.len() <= COMMAND_BYTES + 3 && entry.command.ends_with('…'));
    }
}
