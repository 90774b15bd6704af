//! The real terminal: raw mode and the alternate screen while the console
//! runs, and always restored afterwards — on quit, on error (the guard's
//! drop) and on panic (a hook that restores before the panic is printed).

use std::io::{Stdout, Write};
use std::sync::Once;

use base64::Engine;
use crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// The terminal, set up for the console; dropping it restores the terminal.
pub struct TerminalGuard {
    /// What ratatui draws on.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, and hooks panics so they restore it first.
    pub fn enter() -> std::io::Result<Self> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let set_up = execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(std::io::stdout())));
        match set_up {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode and shows the cursor. Safe to call more than once.
pub fn restore() {
    let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

/// On a panic anywhere (the main loop or any task): restore the terminal,
/// print the panic as usual, and exit. A console whose terminal has been
/// given back cannot carry on drawing.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
            std::process::exit(101);
        }));
    });
}

/// The OSC 52 sequence that asks the terminal to put `text` on the clipboard.
/// Only for text the console itself owns (the session code), never for untrusted text.
pub fn osc52(text: &str) -> String {
    format!("\x1b]52;c;{}\x07", base64::engine::general_purpose::STANDARD.encode(text))
}

/// Writes raw bytes (OSC 52, the bell) to the terminal between frames.
pub fn emit(out: &mut impl Write, bytes: &str) {
    let _ = out.write_all(bytes.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn osc52_carries_the_text_in_base64() {
        assert_eq!(super::osc52("AIC-7K3P-WX9M-RTBN"), "\x1b]52;c;QUlDLTdLM1AtV1g5TS1SVEJO\x07");
    }
}
