//! The Jobs pane: one row per detached job, newest first (state, who,
//! runtime, output size, command), and below it the selected job's output tail.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::super::app::{App, short};
use super::super::cli::duration;
use super::super::sanitize;
use super::{bytes, pane_block, window};
use crate::protocol::jobs::{JobInfo, JobState};

/// Draws the pane into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let [list, output] = Layout::vertical([Constraint::Percentage(55), Constraint::Min(4)]).areas(area);
    table(frame, list, app);
    tail(frame, output, app);
}

/// A job's state as the operator reads it.
fn state_text(job: &JobInfo) -> String {
    match (job.state, job.exit_code) {
        (JobState::Exited, Some(code)) => format!("exit {code}"),
        (state, _) => {
            serde_json::to_value(state).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default()
        }
    }
}

fn table(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let count = app.jobs.len();
    let block = pane_block(app, format!(" Jobs · {count} job{} ", if count == 1 { "" } else { "s" }));
    if app.jobs.is_empty() {
        let text = "No jobs. AI clients start them for long work (remote_job_start, POST /api/v1/jobs).";
        frame.render_widget(Paragraph::new(Span::styled(text, t.dim())).block(block), area);
        return;
    }
    let rows_in_view = area.height.saturating_sub(3) as usize;
    let selected = app.job_index();
    let first = window(selected, count, rows_in_view);
    let rows: Vec<Row> = app.jobs.iter().skip(first).take(rows_in_view).map(|j| row(app, j)).collect();
    let header = Row::new(["id", "who", "state", "runtime", "output", "command"]).style(t.dim());
    let widths = [
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths).header(header).block(block).row_highlight_style(t.selected());
    let mut state = TableState::default().with_selected(Some(selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn row<'a>(app: &App, j: &JobInfo) -> Row<'a> {
    let t = &app.theme;
    let colour = match j.state {
        JobState::Pending | JobState::Running => t.warn,
        JobState::Exited if j.exit_code == Some(0) => t.ok,
        JobState::Cancelled => t.muted,
        _ => t.error,
    };
    let size = format!("{}{}", bytes(j.output_bytes), if j.dropped_bytes > 0 { "+" } else { "" });
    Row::new([
        Cell::from(Span::styled(short(j.id), t.dim())),
        Cell::from(sanitize::line(&j.who)),
        Cell::from(Span::styled(state_text(j), t.coloured(colour))),
        Cell::from(duration(j.duration_ms)),
        Cell::from(size),
        Cell::from(sanitize::line(&j.command)),
    ])
}

fn tail(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(job) = app.selected_job() else {
        frame.render_widget(pane_block(app, " Output "), area);
        return;
    };
    let title = format!(" Output · {} · {} ", short(job.id), state_text(job));
    let mut lines = vec![Line::from(vec![Span::styled("$ ", t.dim()), Span::raw(sanitize::line(&job.command))])];
    let room = area.height.saturating_sub(3 + u16::from(job.dropped_bytes > 0)) as usize;
    let text = app.job_tail.as_ref().filter(|tail| tail.job == job.id).map(|tail| sanitize::block(&tail.tail));
    match text.as_deref() {
        None | Some("") => {
            let hint = if job.state == JobState::Pending {
                "Waiting for approval: press A to answer it."
            } else {
                "(no output yet)"
            };
            lines.push(Line::styled(hint, t.dim()));
        }
        Some(text) => {
            let all: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
            let skip = all.len().saturating_sub(room);
            lines.extend(all[skip..].iter().map(|l| Line::raw(l.to_string())));
        }
    }
    if job.dropped_bytes > 0 {
        let note = format!("(the oldest {} were dropped at the cap; the job ran on)", bytes(job.dropped_bytes));
        lines.push(Line::styled(note, t.coloured(t.warn)));
    }
    frame.render_widget(Paragraph::new(Text::from(lines)).block(pane_block(app, title)), area);
}
