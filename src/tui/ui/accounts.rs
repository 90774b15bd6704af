//! The Accounts pane: accounts linked to this machine on the relay, with
//! masked emails; block, unblock and approve pending links from here.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::super::app::{Accounts, App};
use super::super::cli::duration;
use super::super::sanitize;
use super::{date_time, pane_block, window};
use crate::protocol::control::{LinkState, LinkedAccount};

/// Draws the pane into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let message = |lines: Vec<Line<'static>>| Paragraph::new(lines).block(pane_block(app, " Accounts "));
    let list = match &app.accounts {
        Accounts::Loading => {
            frame.render_widget(message(vec![Line::styled("Asking the relay for linked accounts…", t.dim())]), area);
            return;
        }
        Accounts::Failed(why) => {
            let lines = vec![
                Line::styled(format!("Could not list linked accounts: {why}"), t.coloured(t.error)),
                Line::styled("The list comes back by itself when the relay link is up again.", t.dim()),
            ];
            frame.render_widget(message(lines), area);
            return;
        }
        Accounts::Loaded(list) if list.is_empty() => {
            let lines = vec![
                Line::raw("No accounts are linked to this machine."),
                Line::styled("An account links when it uses this machine's code with its API key.", t.dim()),
            ];
            frame.render_widget(message(lines), area);
            return;
        }
        Accounts::Loaded(list) => list,
    };
    let rows_in_view = area.height.saturating_sub(3) as usize;
    let first = window(app.sel_account, list.len(), rows_in_view);
    let rows: Vec<Row> =
        list.iter().enumerate().skip(first).take(rows_in_view).map(|(i, a)| row(app, i + 1, a)).collect();
    let header = Row::new(["#", "email", "alias", "state", "linked at", "last used"]).style(t.dim());
    let widths = [
        Constraint::Length(2),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(10),
    ];
    let title = format!(" Accounts · {} linked ", list.len());
    let table = Table::new(rows, widths).header(header).block(pane_block(app, title)).row_highlight_style(t.selected());
    let mut state = TableState::default().with_selected(Some(app.sel_account - first));
    frame.render_stateful_widget(table, area, &mut state);
}

/// Account `n` of the list as a row: its masked email and fingerprint, alias, state and times.
fn row(app: &App, n: usize, a: &LinkedAccount) -> Row<'static> {
    let t = &app.theme;
    let colour = match a.state {
        LinkState::Active => t.ok,
        LinkState::Pending => t.warn,
        LinkState::Blocked => t.error,
    };
    let used = match a.last_used_ms {
        Some(ms) => format!("{} ago", duration(app.now_ms.saturating_sub(ms))),
        None => "never".into(),
    };
    Row::new([
        Cell::from(Span::styled(format!("{n:>2}"), t.dim())),
        Cell::from(sanitize::line(&a.shown_email())),
        Cell::from(sanitize::line(&a.alias)),
        Cell::from(Span::styled(a.state.as_str(), t.coloured(colour))),
        Cell::from(date_time(a.linked_at_ms)),
        Cell::from(used),
    ])
}
