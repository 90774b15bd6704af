//! The two top lines: session code, mode, daemon and relay state; then the
//! tabs, with the approvals badge that is visible from every pane.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::super::app::{App, Link, Pane};
use crate::protocol::control::Mode;

/// Code, mode, daemon, relay.
pub fn status_line(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let mut spans = vec![Span::raw(" ")];
    match &app.code {
        Some(code) => spans.push(Span::styled(code.clone(), t.title())),
        None => spans.push(Span::styled("no code yet", t.dim())),
    }
    spans.push(Span::styled("   mode ", t.dim()));
    match app.mode {
        Some(mode) => {
            let colour = match mode {
                Mode::Supervised => t.ok,
                Mode::Auto => t.warn,
                Mode::Disabled => t.error,
            };
            spans.push(Span::styled(mode.to_string(), t.coloured(colour)));
        }
        None => spans.push(Span::styled("?", t.dim())),
    }
    spans.push(Span::styled("   daemon ", t.dim()));
    match &app.link {
        Link::Up => spans.push(Span::styled("connected", t.coloured(t.ok))),
        Link::Connecting => spans.push(Span::styled("connecting…", t.coloured(t.warn))),
        Link::Down { .. } => spans.push(Span::styled("not running — reconnecting", t.coloured(t.error))),
    }
    // What the relay link is doing is known only through a connected daemon.
    if let (Some(relay), Link::Up) = (&app.relay, &app.link) {
        spans.push(Span::styled("   relay ", t.dim()));
        if relay.connected {
            let rtt = relay.rtt_ms.last().map(|r| format!(" {r} ms")).unwrap_or_default();
            spans.push(Span::styled(format!("up{rtt}"), t.coloured(t.ok)));
        } else {
            spans.push(Span::styled("DOWN", t.coloured(t.error)));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The tabs, and on the right how many commands wait for approval.
pub fn tabs(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let pending = app.pending();
    let badge = (pending > 0).then(|| format!(" {pending} waiting for approval — A "));
    let badge_width = badge.as_ref().map_or(0, |b| b.chars().count() as u16);
    let [left, right] = Layout::horizontal([Constraint::Min(0), Constraint::Length(badge_width)]).areas(area);
    let mut spans = vec![Span::raw(" ")];
    for (i, pane) in Pane::ALL.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled(" │ ", t.dim()));
        }
        let label = match pane {
            Pane::Approvals if pending > 0 => format!("{} {} ({pending})", i + 1, pane.title()),
            _ => format!("{} {}", i + 1, pane.title()),
        };
        spans.push(Span::styled(label, if pane == app.pane { t.selected() } else { t.text() }));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), left);
    if let Some(badge) = badge {
        frame.render_widget(Paragraph::new(Span::styled(badge, t.alert())), right);
    }
}
