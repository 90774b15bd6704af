//! Drawing the console from `&App`: header, tabs, the pane in view, the
//! footer with its keys, and any dialog. Drawing never changes the app.
//! Text that came from a command, its output or a caller goes through
//! [`super::sanitize`] before it reaches a widget.

mod accounts;
mod approvals;
mod header;
mod jobs;
mod popup;
mod relay;
mod traffic;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::app::{App, Link, Pane};
use super::keys::footer_keys;

/// Draws the whole console.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    frame.render_widget(Block::new().style(app.theme.text()), area);
    let down = matches!(app.link, Link::Down { .. });
    let [head, tabs, banner, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(u16::from(down)),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    header::status_line(frame, head, app);
    header::tabs(frame, tabs, app);
    if let Link::Down { reason } = &app.link {
        let style = app.theme.coloured(app.theme.error);
        frame.render_widget(Paragraph::new(Line::styled(format!(" {reason}"), style)), banner);
    }
    match app.pane {
        Pane::Traffic => traffic::draw(frame, body, app),
        Pane::Approvals => approvals::draw(frame, body, app),
        Pane::Accounts => accounts::draw(frame, body, app),
        Pane::Relay => relay::draw(frame, body, app),
        Pane::Jobs => jobs::draw(frame, body, app),
    }
    notice(frame, body, app);
    footer(frame, foot, app);
    popup::draw(frame, area, app);
}

/// The last message, on the bottom border of the pane.
fn notice(frame: &mut Frame, body: Rect, app: &App) {
    let Some(notice) = &app.notice else { return };
    if body.height < 2 || body.width < 6 {
        return;
    }
    let colour = if notice.error { app.theme.error } else { app.theme.ok };
    let text = format!(" {} ", notice.text);
    let width = (text.chars().count() as u16).min(body.width - 4);
    let at = Rect { x: body.x + 2, y: body.bottom() - 1, width, height: 1 };
    frame.render_widget(Paragraph::new(Span::styled(text, Style::new().fg(colour).bg(app.theme.bg))), at);
}

fn footer(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let mut spans = vec![Span::raw(" ")];
    let always = [("Tab", "pane"), ("?", "help"), ("q", "quit")];
    for (key, what) in footer_keys(app.pane).iter().chain(always.iter()) {
        spans.push(Span::styled(*key, theme.title()));
        spans.push(Span::styled(format!(" {what}  "), theme.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A bordered block titled `title`, in the theme's colours.
fn pane_block<'a>(app: &App, title: impl Into<Line<'a>>) -> Block<'a> {
    Block::bordered()
        .border_style(Style::new().fg(app.theme.border))
        .title(title.into().style(app.theme.title()))
        .style(app.theme.text())
}

/// The first row to show so that row `selected` of `len` is in a window of `height` rows.
fn window(selected: usize, len: usize, height: usize) -> usize {
    if height == 0 || len <= height {
        return 0;
    }
    selected.saturating_sub(height - 1).min(len - height)
}

/// A centred rectangle of at most `width` x `height` inside `area`.
fn centred(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height }
}

/// Output sizes: `0 B`, `512 B`, `1.5 KiB`, `3.2 MiB`.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time in ms.
fn date_time(ms: u64) -> String {
    crate::duration::date_time(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_the_selection_in_view() {
        assert_eq!(window(0, 100, 10), 0);
        assert_eq!(window(9, 100, 10), 0);
        assert_eq!(window(10, 100, 10), 1);
        assert_eq!(window(99, 100, 10), 90);
        assert_eq!(window(5, 3, 10), 0);
        assert_eq!(window(5, 30, 0), 0);
    }

    #[test]
    fn sizes_and_dates_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1_048_576), "3.0 MiB");
        assert_eq!(date_time(0), "1970-01-01 00:00");
        assert_eq!(date_time(1_763_778_000_000), "2025-11-22 02:20");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00");
    }
}
