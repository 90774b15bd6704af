//! Load benchmark for the terminal console (not a test): the console's real
//! main loop, headless, with 1 000 commands in the ring and one command's
//! output streaming at 100 lines a second. Reports the CPU the process used
//! and its resident memory over the run. See BENCHMARKS.md.
//!
//!     cargo run --release --example console_load -- [SECONDS] [test|sink]
//!
//! `test` draws on ratatui's TestBackend; `sink` encodes every frame as the
//! escape sequences a real terminal gets (crossterm) and throws them away.

use std::time::{Duration, Instant};

use aic::protocol::agent::Stream;
use aic::protocol::control::{self, CommandState, Mode, Op, RelayHealth, StatusInfo, TrafficEntry};
use aic::tui::app::App;
use aic::tui::event::{DaemonMsg, Event, Snapshot};
use aic::tui::run::{Effects, event_loop};
use aic::tui::theme::Theme;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use ratatui::layout::Rect;
use ratatui::{TerminalOptions, Viewport};
use tokio::sync::mpsc;
use uuid::Uuid;

const RING: usize = 1000;
const LINES_PER_SECOND: u64 = 100;
const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;

struct NoEffects;

impl Effects for NoEffects {
    fn send(&mut self, _: Op) {}
    fn copy(&mut self, _: &str) {}
    fn bell(&mut self) {}
}

/// User plus system CPU time of this process, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A `VmRSS`-style line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ring() -> Vec<TrafficEntry> {
    (0..RING)
        .map(|n| TrafficEntry {
            id: Uuid::from_u128(n as u128 + 1),
            at_ms: 1_763_805_600_000 + n as u64 * 1000,
            who: "lu****@wear****.com".into(),
            ip: "203.0.113.7".into(),
            command: format!("make -C /srv/app test TEST=case_{n}"),
            cwd: Some("/srv/app".into()),
            state: if n == RING - 1 { CommandState::Running } else { CommandState::Exited },
            exit_code: (n != RING - 1).then_some(0),
            duration_ms: Some(1234),
            bytes: 4096,
            truncated: false,
            tail: "ok: case passed in 12 ms\n".repeat(160),
        })
        .collect()
}

async fn run<B: Backend>(mut terminal: Terminal<B>, seconds: u64) {
    let mut app = App::new(Theme::default(), false);
    let status = StatusInfo {
        version: "bench".into(),
        code: Some("AIC-7K3P-WX9M-RTBN".into()),
        mode: Mode::Supervised,
        uptime_s: 0,
        pending: 0,
        running: 1,
        relay: RelayHealth { connected: true, rtt_ms: vec![12; 60], ..Default::default() },
    };
    app.apply(DaemonMsg::Connected(Box::new(Snapshot { status, traffic: ring(), approvals: Vec::new() })));
    let streaming = Uuid::from_u128(RING as u128);

    let (tx, mut events) = mpsc::channel(1024);
    let producer = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / LINES_PER_SECOND));
        let mut rss = Vec::new();
        for line in 0..seconds * LINES_PER_SECOND {
            every.tick().await;
            let text = format!("{line:>8} 2025-11-22T10:00:00Z worker[42]: processed batch {line} in 3 ms, 0 errors\n");
            let output = control::Event::Output { command: streaming, stream: Stream::Stdout, text };
            let _ = tx.send(Event::Daemon(DaemonMsg::Event(output))).await;
            if line % LINES_PER_SECOND == 0 {
                let _ = tx.send(Event::Tick).await;
                rss.push(status_kib("VmRSS:"));
            }
        }
        let _ = tx.send(Event::Terminate).await;
        rss
    });

    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let exit = event_loop(&mut terminal, &mut app, &mut events, &mut NoEffects, aic::clock::now_ms).await;
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    assert!(exit.is_ok(), "the loop failed");
    let rss = producer.await.unwrap_or_default();
    let frames = terminal.get_frame().count();

    println!("ring: {RING} commands; output: {LINES_PER_SECOND} lines/s for {seconds} s; screen {WIDTH}x{HEIGHT}");
    println!("frames drawn: {frames} ({:.1}/s)", frames as f64 / wall.as_secs_f64());
    println!(
        "CPU: {:.2} s over {:.1} s wall = {:.2}% of one core",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    let (first, last) = (rss.get(1).copied().unwrap_or(0), rss.last().copied().unwrap_or(0));
    println!(
        "RSS: {first} KiB after 1 s, {last} KiB at the end, {} KiB at most (VmHWM); samples each second: {rss:?}",
        status_kib("VmHWM:")
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let area = Rect::new(0, 0, WIDTH, HEIGHT);
    match args.next().as_deref() {
        Some("sink") => {
            let backend = CrosstermBackend::new(std::io::sink());
            let terminal = Terminal::with_options(backend, TerminalOptions { viewport: Viewport::Fixed(area) });
            run(terminal.expect("a terminal on a sink"), seconds).await;
        }
        _ => run(Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("a test terminal"), seconds).await,
    }
}
