//! Making text from commands, their output and their callers safe to put on
//! the operator's terminal: control characters become visible text, so an
//! escape sequence in a command can neither hide itself nor act.

/// Text for one line: every control character shown as caret notation
/// (`^[` for ESC), a newline as `↵`, a tab as a space.
pub fn line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('↵'),
            '\t' => out.push(' '),
            c => push_visible(&mut out, c),
        }
    }
    out
}

/// Text for a block: like [`line()`], but newlines stay and carriage returns go.
pub fn block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            '\r' => {}
            '\t' => out.push_str("    "),
            c => push_visible(&mut out, c),
        }
    }
    out
}

fn push_visible(out: &mut String, c: char) {
    match c as u32 {
        // C0 controls: ^@ .. ^_
        n @ 0..=0x1f => {
            out.push('^');
            out.push(char::from(b'@' + n as u8));
        }
        0x7f => out.push_str("^?"),
        // C1 controls (0x9b is a one-byte CSI on some terminals).
        n @ 0x80..=0x9f => out.push_str(&format!("\\u{{{n:x}}}")),
        // Bidirectional controls and line separators can make text read
        // differently from what runs.
        n if is_deceptive(n) => out.push_str(&format!("\\u{{{n:x}}}")),
        _ => out.push(c),
    }
}

/// Characters that reorder or break text on a terminal without being C0/C1
/// controls, or take no room at all (zero-width spaces and joiners, the soft
/// hyphen, the byte-order mark): `/etc/pass\u{200b}wd` must not read as
/// `/etc/passwd` in what the operator approves.
fn is_deceptive(n: u32) -> bool {
    matches!(
        n,
        0x00ad
            | 0x061c
            | 0x180e
            | 0x200b..=0x200f
            | 0x2028
            | 0x2029
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x2069
            | 0xfeff
    )
}

/// JSON text made safe for a terminal: serde_json escapes only U+0000–U+001F,
/// so DEL, the C1 controls (U+009B is a one-character CSI) and bidirectional
/// controls are escaped here as `\uXXXX`. The JSON means the same.
pub fn json(text: String) -> String {
    if !text.chars().any(|c| matches!(c as u32, 0x7f..=0x9f) || is_deceptive(c as u32)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        let n = c as u32;
        if matches!(n, 0x7f..=0x9f) || is_deceptive(n) {
            out.push_str(&format!("\\u{n:04x}"));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_text() {
        assert_eq!(line("echo \x1b]52;c;aGk=\x07 && \x1b[2J"), "echo ^[]52;c;aGk=^G && ^[[2J");
        assert_eq!(line("a\nb\tc\r"), "a↵b c^M");
        assert_eq!(line("x\u{9b}31m\u{7f}"), "x\\u{9b}31m^?");
        assert_eq!(line("safe \u{202e}txt.sh"), "safe \\u{202e}txt.sh");
        assert_eq!(line("/etc/pass\u{200b}wd\u{feff}"), "/etc/pass\\u{200b}wd\\u{feff}");
        assert_eq!(block("one\r\ntwo\x1b[1m"), "one\ntwo^[[1m");
    }

    #[test]
    fn json_output_escapes_what_serde_json_leaves_raw() {
        let raw = serde_json::to_string("a\u{9b}2J\u{7f}\u{202e}b").unwrap();
        let safe = json(raw);
        assert_eq!(safe, r#""a\u009b2J\u007f\u202eb""#);
        assert_eq!(serde_json::from_str::<String>(&safe).unwrap(), "a\u{9b}2J\u{7f}\u{202e}b");
    }

    #[test]
    fn nothing_left_can_start_a_sequence() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for text in [line(&all), block(&all)] {
            assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "a control character survived");
        }
    }
}
