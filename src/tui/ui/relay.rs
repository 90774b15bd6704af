//! The Relay pane: the daemon's link to the relay, its round trips as a
//! sparkline, reconnects and the last error.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline, Wrap};

use super::super::app::{App, Link};
use super::super::cli::{clock, duration};
use super::super::sanitize;
use super::pane_block;

/// Draws the pane into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(relay) = &app.relay else {
        let text = Line::styled("Waiting for the daemon to say how its relay link is.", t.dim());
        frame.render_widget(Paragraph::new(text).block(pane_block(app, " Relay ")), area);
        return;
    };
    let [facts, chart] = Layout::vertical([Constraint::Length(8), Constraint::Min(3)]).areas(area);
    let label = |name: &'static str| Span::styled(format!("{name:<12}"), t.dim());
    let state = match (relay.connected, relay.connected_since_ms) {
        (true, Some(since)) => Span::styled(
            format!("connected since {} ({})", clock(since), duration(app.now_ms.saturating_sub(since))),
            t.coloured(t.ok),
        ),
        (true, None) => Span::styled("connected", t.coloured(t.ok)),
        (false, _) => Span::styled("NOT connected; the daemon keeps retrying", t.coloured(t.error)),
    };
    let stale = if app.link == Link::Up { "" } else { "  (as last seen: the daemon is not reachable)" };
    let rtt = &relay.rtt_ms;
    let rtt_text = match (rtt.last(), rtt.iter().min(), rtt.iter().max()) {
        (Some(last), Some(min), Some(max)) => {
            let avg = rtt.iter().map(|&r| u64::from(r)).sum::<u64>() / rtt.len() as u64;
            format!("last {last} ms · min {min} · avg {avg} · max {max} ({} samples)", rtt.len())
        }
        _ => "no samples yet".into(),
    };
    let lines = vec![
        Line::from(vec![label("URL"), Span::raw(sanitize::line(&relay.url)), Span::styled(stale, t.dim())]),
        Line::from(vec![label("State"), state]),
        Line::from(vec![label("Reconnects"), Span::raw(relay.reconnects.to_string())]),
        Line::from(vec![
            label("Last error"),
            match &relay.last_error {
                Some(e) => Span::styled(sanitize::line(e), t.coloured(t.error)),
                None => Span::styled("none", t.dim()),
            },
        ]),
        Line::from(vec![label("Round trip"), Span::raw(rtt_text)]),
        Line::from(vec![
            label("Daemon"),
            Span::raw(app.version.as_deref().map(|v| format!("aic-daemon {}", sanitize::line(v))).unwrap_or_default()),
        ]),
    ];
    let block = pane_block(app, " Relay ");
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block), facts);
    let data: Vec<u64> = rtt.iter().map(|&r| u64::from(r)).collect();
    let spark = Sparkline::default()
        .data(&data)
        .style(t.coloured(t.sparkline))
        .block(pane_block(app, " Round trips, oldest to newest (ms) "));
    frame.render_widget(spark, chart);
}
