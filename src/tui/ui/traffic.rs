//! The Traffic pane: one row per command, newest first, and below it the
//! selected command's live output tail.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::super::app::{App, short, state_text};
use super::super::cli::{clock, duration};
use super::super::sanitize;
use super::{bytes, pane_block, window};
use crate::protocol::control::{CommandState, TrafficEntry};

/// Draws the pane into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let [list, output] = Layout::vertical([Constraint::Percentage(55), Constraint::Min(4)]).areas(area);
    table(frame, list, app);
    tail(frame, output, app);
}

fn table(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let count = app.traffic.len();
    let block = pane_block(app, format!(" Traffic · {count} command{} ", if count == 1 { "" } else { "s" }));
    if app.traffic.is_empty() {
        let text = "No commands yet. They appear here as AI clients send them.";
        frame.render_widget(Paragraph::new(Span::styled(text, t.dim())).block(block), area);
        return;
    }
    // Only the rows in view are built: the ring holds up to 1 000.
    let rows_in_view = area.height.saturating_sub(3) as usize;
    let selected = app.traffic_index();
    let first = window(selected, app.traffic.len(), rows_in_view);
    let rows: Vec<Row> = app.traffic.iter().rev().skip(first).take(rows_in_view).map(|e| row(app, e)).collect();
    let header = Row::new(["time", "who", "state", "took", "bytes", "command"]).style(t.dim());
    let widths = [
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths).header(header).block(block).row_highlight_style(t.selected());
    let mut state = TableState::default().with_selected(Some(selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn row<'a>(app: &App, e: &TrafficEntry) -> Row<'a> {
    let t = &app.theme;
    let colour = match e.state {
        CommandState::Pending | CommandState::Running => t.warn,
        CommandState::Exited if e.exit_code == Some(0) => t.ok,
        CommandState::Cancelled => t.muted,
        _ => t.error,
    };
    let took = e.duration_ms.map(duration).unwrap_or_default();
    let size = format!("{}{}", bytes(e.bytes), if e.truncated { "+" } else { "" });
    Row::new([
        Cell::from(Span::styled(clock(e.at_ms), t.dim())),
        Cell::from(sanitize::line(&e.who)),
        Cell::from(Span::styled(state_text(e), t.coloured(colour))),
        Cell::from(took),
        Cell::from(size),
        Cell::from(sanitize::line(&e.command)),
    ])
}

fn tail(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(entry) = app.selected_traffic() else {
        frame.render_widget(pane_block(app, " Output "), area);
        return;
    };
    let title = format!(" Output · {} · {} ", short(entry.id), state_text(entry));
    let mut lines = vec![Line::from(vec![
        Span::styled("$ ", t.dim()),
        Span::raw(sanitize::line(&entry.command)),
        Span::styled(
            entry.cwd.as_deref().map(|c| format!("  (in {})", sanitize::line(c))).unwrap_or_default(),
            t.dim(),
        ),
    ])];
    let room = area.height.saturating_sub(3 + u16::from(entry.truncated)) as usize;
    if entry.tail.is_empty() {
        let hint = match entry.state {
            CommandState::Pending => "Waiting for approval: press A to answer it.",
            CommandState::Running => "(no output yet)",
            _ => "(no output)",
        };
        lines.push(Line::styled(hint, t.dim()));
    } else {
        let text = sanitize::block(&entry.tail);
        let all: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        let skip = all.len().saturating_sub(room);
        lines.extend(all[skip..].iter().map(|l| Line::raw(l.to_string())));
    }
    if entry.truncated {
        lines.push(Line::styled("(output was cut at the cap and the command killed)", t.coloured(t.warn)));
    }
    frame.render_widget(Paragraph::new(Text::from(lines)).block(pane_block(app, title)), area);
}
