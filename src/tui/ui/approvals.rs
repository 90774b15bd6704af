//! The Approvals pane: commands waiting for y/N, oldest first, and the whole
//! of the selected one (command, cwd, requester, deadline) before any key.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};

use super::super::app::{App, short};
use super::super::cli::{clock, duration};
use super::super::sanitize;
use super::{pane_block, window};
use crate::protocol::control::{Approval, Mode};

/// Draws the pane into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    if app.approvals.is_empty() {
        let mut lines = vec![Line::styled("Nothing is waiting for approval.", t.text())];
        let why = match app.mode {
            Some(Mode::Auto) => Some("The daemon is in auto mode: commands run without asking (m changes it)."),
            Some(Mode::Disabled) => Some("The daemon is in disabled mode: every command is refused (m changes it)."),
            _ => Some("In supervised mode each command waits here for y (run it) or n (refuse it)."),
        };
        lines.extend(why.map(|w| Line::styled(w, t.dim())));
        frame.render_widget(Paragraph::new(lines).block(pane_block(app, " Approvals ")), area);
        return;
    }
    let list_height = (app.approvals.len() as u16 + 3).min(area.height / 3).max(4);
    let [list, detail] = Layout::vertical([Constraint::Length(list_height), Constraint::Min(5)]).areas(area);
    table(frame, list, app);
    if let Some(approval) = app.selected_approval() {
        details(frame, detail, app, approval);
    }
}

fn table(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let rows_in_view = area.height.saturating_sub(3) as usize;
    let selected = app.approval_index();
    let first = window(selected, app.approvals.len(), rows_in_view);
    let rows: Vec<Row> = app.approvals[first..]
        .iter()
        .take(rows_in_view)
        .map(|a| {
            let left = if app.deciding.contains(&a.id) {
                Span::styled("answered…", t.dim())
            } else {
                Span::styled(duration(a.expires_at_ms.saturating_sub(app.now_ms)), t.coloured(t.warn))
            };
            Row::new([
                Cell::from(Span::styled(short(a.id), t.dim())),
                Cell::from(sanitize::line(&a.who)),
                Cell::from(left),
                Cell::from(sanitize::line(&a.command)),
            ])
        })
        .collect();
    let header = Row::new(["id", "from", "expires", "command"]).style(t.dim());
    let widths = [Constraint::Length(8), Constraint::Length(16), Constraint::Length(9), Constraint::Fill(1)];
    let title = format!(" Approvals · {} waiting ", app.approvals.len());
    let table = Table::new(rows, widths).header(header).block(pane_block(app, title)).row_highlight_style(t.selected());
    let mut state = TableState::default().with_selected(Some(selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn details(frame: &mut Frame, area: Rect, app: &App, a: &Approval) {
    let t = &app.theme;
    let label = |name: &'static str| Span::styled(format!("{name:<10}"), t.dim());
    let now = app.now_ms;
    let cwd = match &a.cwd {
        Some(cwd) => Span::raw(sanitize::line(cwd)),
        None => Span::styled("(the daemon's working directory)", t.dim()),
    };
    let mut lines = vec![
        Line::from(vec![label("From"), Span::raw(format!("{} ({})", sanitize::line(&a.who), sanitize::line(&a.ip)))]),
        Line::from(vec![label("Code"), Span::raw(code_shown(&a.code))]),
        Line::from(vec![
            label("Arrived"),
            Span::raw(format!("{} ({} ago)", clock(a.at_ms), duration(now.saturating_sub(a.at_ms)))),
        ]),
        Line::from(vec![
            label("Expires"),
            Span::raw(format!(
                "in {}; then the caller gets 403 approval_timeout",
                duration(a.expires_at_ms.saturating_sub(now))
            )),
        ]),
        Line::from(vec![label("Cwd"), cwd]),
    ];
    // A file transfer has no timeout (0): it runs until done or cancelled.
    if a.timeout_ms > 0 {
        lines.push(Line::from(vec![label("Timeout"), Span::raw(format!("{} once it runs", duration(a.timeout_ms)))]));
    }
    lines.push(Line::from(label("Command")));
    // Every line of the command, each made safe: a CR or an escape shows instead of acting.
    lines.extend(a.command.split('\n').map(|l| Line::styled(format!("  {}", sanitize::line(l)), t.title())));
    let paragraph = Paragraph::new(Text::from(lines)).wrap(Wrap { trim: false });
    let total = paragraph.line_count(area.width.saturating_sub(2));
    let visible = area.height.saturating_sub(2) as usize;
    let most = total.saturating_sub(visible);
    let scroll = (app.detail_scroll as usize).min(most);
    let mut keys = vec![
        Span::styled(" y ", t.alert()),
        Span::styled(" approve: it runs  ", t.text()),
        Span::styled(" n ", t.alert()),
        Span::styled(" deny ", t.text()),
    ];
    if scroll < most {
        keys.insert(0, Span::styled(" PgDn: more of it below ", t.coloured(t.warn)));
    }
    let title = format!(" Waiting command {} of {} ", app.approval_index() + 1, app.approvals.len());
    let block = pane_block(app, title).title_bottom(Line::from(keys).right_aligned());
    frame.render_widget(paragraph.scroll((scroll as u16, 0)).block(block), area);
}

/// The code a command came with; a reset drops it from the queue.
fn code_shown(code: &str) -> String {
    match code {
        "" => "(the daemon did not say)".into(),
        code => format!("{} (a code reset drops it)", sanitize::line(code)),
    }
}
