//! Dialogs drawn over the panes: help, the code-reset question and its
//! answer, and the mode picker.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

use super::super::app::{App, Popup};
use super::super::keys::HELP;
use super::{centred, pane_block};

/// Draws the open dialog, if any.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(popup) = &app.popup else { return };
    let (title, width, lines) = contents(app, popup);
    let paragraph = Paragraph::new(lines).wrap(Wrap { trim: false });
    let height = paragraph.line_count(width - 4) as u16 + 2;
    let at = centred(area, width, height);
    frame.render_widget(Clear, at);
    frame.render_widget(paragraph.block(pane_block(app, title).padding(ratatui::widgets::Padding::horizontal(1))), at);
}

/// The question before a job is cancelled.
fn cancel_lines(app: &App, job: uuid::Uuid) -> Vec<Line<'static>> {
    let t = &app.theme;
    vec![
        Line::raw(format!("Cancel job {}?", super::super::app::short(job))),
        Line::raw(""),
        Line::raw("Its processes get SIGTERM, then SIGKILL after 2 s."),
        Line::raw(""),
        Line::from(vec![
            Span::styled(" y ", t.alert()),
            Span::raw(" cancel it    "),
            Span::styled("any other key keeps it running (N)", t.dim()),
        ]),
    ]
}

/// A dialog's title, width and lines.
fn contents(app: &App, popup: &Popup) -> (&'static str, u16, Vec<Line<'static>>) {
    let t = &app.theme;
    let key = |k: &'static str| Span::styled(format!(" {k} "), t.alert());
    match popup {
        Popup::Help => (" Keys ", 70, help(app)),
        Popup::ConfirmReset => (
            " Reset the code? ",
            56,
            vec![
                Line::raw("Reset the session code?"),
                Line::raw(""),
                Line::raw("The current code stops working at once, and every linked account and block is cleared."),
                Line::raw(""),
                Line::from(vec![
                    key("y"),
                    Span::raw(" reset it    "),
                    Span::styled("any other key keeps it (N)", t.dim()),
                ]),
            ],
        ),
        Popup::Resetting => (" Reset the code ", 44, vec![Line::raw("Asking the relay for a new code…")]),
        Popup::ConfirmCancel(job) => (" Cancel the job? ", 56, cancel_lines(app, *job)),
        Popup::NewCode(code) => (
            " New session code ",
            48,
            vec![
                Line::raw("The new session code is"),
                Line::raw(""),
                Line::styled(format!("    {code}"), t.title()),
                Line::raw(""),
                Line::raw("The old code no longer works."),
                Line::raw(""),
                Line::from(vec![key("c"), Span::raw(" copy it    "), Span::styled("any other key closes", t.dim())]),
            ],
        ),
        Popup::ModePicker => {
            let now = app.mode.map(|m| format!(" (now {m})")).unwrap_or_default();
            (
                " Mode ",
                58,
                vec![
                    Line::raw(format!("Choose the daemon's mode{now}:")),
                    Line::raw(""),
                    Line::from(vec![key("s"), Span::raw(" supervised: you approve each command")]),
                    Line::from(vec![key("a"), Span::raw(" auto: commands run at once")]),
                    Line::from(vec![key("d"), Span::raw(" disabled: every command is refused")]),
                    Line::raw(""),
                    Line::styled("Any other key leaves it as it is.", t.dim()),
                ],
            )
        }
    }
}

/// The keys, by pane.
fn help(app: &App) -> Vec<Line<'static>> {
    let t = &app.theme;
    HELP.iter()
        .map(|(k, what)| match *k {
            "" => Line::styled(*what, t.title()),
            _ => Line::from(vec![Span::styled(format!("  {k:<17}"), t.title()), Span::raw(*what)]),
        })
        .chain([Line::raw(""), Line::styled("Any key closes this help.", t.dim())])
        .collect()
}
