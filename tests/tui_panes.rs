//! The console's panes as the operator sees them: a headless App drawn on
//! a TestBackend, driven by daemon news and key presses, checked against
//! insta snapshots (tests/snapshots/). Also the rule that nothing from a
//! command, its output or a caller reaches the terminal as a control sequence.

use aic::protocol::agent::Stream;
use aic::protocol::control::{
    AccountChanged, Approval, CodeInfo, CommandState, Decided, Decision, Event as DaemonEvent, JobTail, LinkState,
    LinkedAccount, Mode, Op, RelayHealth, Reply, StatusInfo, TrafficEntry,
};
use aic::protocol::jobs::{JobInfo, JobKind, JobState};
use aic::tui::app::{Accounts, App, Link, Pane, Popup};
use aic::tui::event::{Action, DaemonMsg, Event, Snapshot};
use aic::tui::theme::Theme;
use aic::tui::ui;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use insta::assert_snapshot;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use uuid::Uuid;

/// 2025-11-22 10:00:00 UTC: the time every screen here is drawn at.
const NOW: u64 = 1_763_805_600_000;

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn entry(n: u8, command: &str, state: CommandState, exit: Option<i32>, tail: &str) -> TrafficEntry {
    TrafficEntry {
        id: id(n),
        at_ms: NOW - 60_000 + u64::from(n) * 1000,
        who: if n.is_multiple_of(2) { "lu****@wear****.com".into() } else { "anonymous".into() },
        ip: "203.0.113.7".into(),
        command: command.into(),
        cwd: (n == 3).then(|| "/srv/app".into()),
        state,
        exit_code: exit,
        duration_ms: exit.map(|_| 1200 * u64::from(n)),
        bytes: tail.len() as u64,
        truncated: false,
        tail: tail.into(),
    }
}

fn approval(n: u8, command: &str) -> Approval {
    Approval {
        id: id(n),
        at_ms: NOW - 30_000,
        who: "anonymous".into(),
        ip: "127.0.0.1".into(),
        command: command.into(),
        cwd: (n == 10).then(|| "/var/www".into()),
        timeout_ms: 300_000,
        expires_at_ms: NOW + 570_000,
        code: "AIC-****-****-RTBN".into(),
    }
}

fn relay() -> RelayHealth {
    RelayHealth {
        connected: true,
        url: "wss://relay.example.com".into(),
        connected_since_ms: Some(NOW - 3_723_000),
        rtt_ms: vec![12, 14, 11, 30, 13, 12, 55, 12, 13, 14, 12, 11],
        reconnects: 2,
        last_error: Some("connection reset by peer".into()),
    }
}

fn status(mode: Mode) -> StatusInfo {
    StatusInfo {
        version: "0.1.0".into(),
        code: Some("AIC-7K3P-WX9M-RTBN".into()),
        mode,
        uptime_s: 3600,
        pending: 0,
        running: 0,
        relay: relay(),
    }
}

/// An app connected to a daemon with `traffic` and `approvals`.
fn connected(traffic: Vec<TrafficEntry>, approvals: Vec<Approval>) -> App {
    let mut app = App::new(Theme::default(), true);
    app.now_ms = NOW;
    let actions =
        app.apply(DaemonMsg::Connected(Box::new(Snapshot { status: status(Mode::Supervised), traffic, approvals })));
    assert_eq!(actions, vec![Action::Send(Op::Admins)], "a fresh connection asks for the accounts");
    app
}

fn busy_traffic() -> Vec<TrafficEntry> {
    vec![
        entry(1, "uname -a", CommandState::Exited, Some(0), "Linux web 6.1.0 x86_64 GNU/Linux\n"),
        entry(2, "cat /etc/shadow", CommandState::Denied, None, ""),
        entry(
            3,
            "make test",
            CommandState::Exited,
            Some(2),
            "cc -o app main.c\nmain.c:3: error: expected ';'\nmake: *** [app] Error 2\n",
        ),
        entry(4, "sleep 999", CommandState::TimedOut, Some(143), ""),
        entry(
            5,
            "tail -f /var/log/syslog",
            CommandState::Running,
            None,
            "Nov 22 09:59:58 web sshd[1]: ok\nNov 22 09:59:59 web cron[2]: tick\n",
        ),
        entry(6, "rm -rf /tmp/cache", CommandState::Pending, None, ""),
    ]
}

fn key(app: &mut App, code: KeyCode) -> Vec<Action> {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn press(app: &mut App, c: char) -> Vec<Action> {
    key(app, KeyCode::Char(c))
}

fn screen(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app)).unwrap();
    terminal
}

fn text(terminal: &Terminal<TestBackend>) -> String {
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn traffic_before_the_daemon_answers() {
    let mut app = App::new(Theme::default(), true);
    app.now_ms = NOW;
    assert_snapshot!("traffic_connecting", screen(&app, 80, 24).backend());
}

#[test]
fn traffic_shows_every_state_and_the_newest_commands_output() {
    let app = connected(busy_traffic(), vec![approval(6, "rm -rf /tmp/cache")]);
    assert_snapshot!("traffic_live", screen(&app, 80, 24).backend());
}

#[test]
fn traffic_selection_moves_with_keys_and_output_streams_in() {
    let mut app = connected(busy_traffic(), Vec::new());
    // Down twice: from the newest (pending) to the running tail -f, then to the timed-out sleep.
    press(&mut app, 'j');
    app.apply(DaemonMsg::Event(DaemonEvent::Output {
        command: id(5),
        stream: Stream::Stdout,
        text: "Nov 22 10:00:00 web kernel: eth0 up\n".into(),
    }));
    assert_snapshot!("traffic_running_selected", screen(&app, 80, 24).backend());
    press(&mut app, 'j');
    assert_eq!(app.selected_traffic().map(|e| e.id), Some(id(4)));
    // A new command does not steal a selection the operator made...
    app.apply(DaemonMsg::Event(DaemonEvent::Traffic(entry(7, "df -h", CommandState::Running, None, ""))));
    assert_eq!(app.selected_traffic().map(|e| e.id), Some(id(4)));
    // ...but at the top, the selection follows the newest.
    key(&mut app, KeyCode::Home);
    app.apply(DaemonMsg::Event(DaemonEvent::Traffic(entry(8, "free -m", CommandState::Running, None, ""))));
    assert_eq!(app.selected_traffic().map(|e| e.id), Some(id(8)));
}

#[test]
fn approvals_show_the_whole_command_before_y_or_n() {
    let long = "set -e\ncd /var/www && git pull --ff-only && ./deploy.sh --restart --notify ops@example.com";
    let mut app = connected(Vec::new(), vec![approval(10, long), approval(11, "systemctl restart nginx")]);
    press(&mut app, 'A');
    assert_eq!(app.pane, Pane::Approvals);
    assert_snapshot!("approvals_waiting", screen(&app, 80, 24).backend());

    let actions = press(&mut app, 'y');
    assert_eq!(actions, vec![Action::Send(Op::Approve { command: id(10) })]);
    assert!(press(&mut app, 'y').is_empty(), "a second y on the same command sends nothing");
    assert_snapshot!("approvals_answered", screen(&app, 80, 24).backend());

    app.apply(DaemonMsg::Reply {
        op: Op::Approve { command: id(10) },
        result: Ok(Reply::Decided(Decided { command: id(10), decision: Decision::Approved })),
    });
    app.apply(DaemonMsg::Event(DaemonEvent::ApprovalDecided { command: id(10), decision: Decision::Approved }));
    assert_eq!(app.selected_approval().map(|a| a.id), Some(id(11)), "the next one in line is selected");
    // A key that was meant for the command just answered (a double tap, a
    // held key) does not answer the one that took its place.
    assert!(press(&mut app, 'y').is_empty(), "y right after the selection moved does nothing");
    assert!(app.notice.as_ref().unwrap().text.contains("read this one"), "{:?}", app.notice);
    app.on_event(Event::Tick);
    assert_eq!(press(&mut app, 'n'), vec![Action::Send(Op::Deny { command: id(11) })]);
}

#[test]
fn approvals_when_nothing_waits() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, '2');
    assert_snapshot!("approvals_empty", screen(&app, 80, 24).backend());
    press(&mut app, 'y');
    assert_eq!(app.notice.as_ref().map(|n| n.text.as_str()), Some("Nothing is waiting for approval."));
}

#[test]
fn a_new_approval_rings_the_bell_and_is_visible_from_every_pane() {
    let mut app = connected(busy_traffic(), Vec::new());
    press(&mut app, '4');
    let actions = app.apply(DaemonMsg::Event(DaemonEvent::ApprovalQueued(approval(12, "reboot"))));
    assert_eq!(actions, vec![Action::Bell]);
    let terminal = screen(&app, 80, 24);
    let top = text(&terminal);
    assert!(top.lines().nth(1).unwrap().contains("2 Approvals (1)"), "{top}");
    assert!(top.lines().nth(1).unwrap().contains("1 waiting for approval — A"), "{top}");
    // The badge is drawn in the theme's alert colours.
    let buffer = terminal.backend().buffer();
    let badge_x = (0..80).find(|&x| buffer[(x, 1)].symbol() == "1" && buffer[(x + 1, 1)].symbol() == " " && x > 40);
    assert_eq!(buffer[(badge_x.unwrap(), 1)].bg, app.theme.alert_bg);
    // y elsewhere points the way instead of acting.
    assert!(press(&mut app, 'y').is_empty());
    assert!(app.notice.as_ref().unwrap().text.contains("press A"));
    let mut quiet = App::new(Theme::default(), false);
    assert!(quiet.apply(DaemonMsg::Event(DaemonEvent::ApprovalQueued(approval(12, "reboot")))).is_empty());
}

fn accounts() -> Vec<LinkedAccount> {
    let account = |id: &str, email: &str, alias: &str, state: LinkState, used: Option<u64>| LinkedAccount {
        id: id.into(),
        email: email.into(),
        alias: alias.into(),
        state,
        linked_at_ms: NOW - 86_400_000 * 3,
        last_used_ms: used,
        fingerprint: String::new(),
    };
    vec![
        account("a1", "lu****@wear****.com", "web", LinkState::Active, Some(NOW - 300_000)),
        account("a2", "ma****@exam****.org", "web-2", LinkState::Blocked, None),
        account("a3", "ci****@buil****.io", "build", LinkState::Pending, None),
    ]
}

#[test]
fn accounts_list_block_unblock_and_approve() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, '3');
    assert_snapshot!("accounts_loading", screen(&app, 80, 24).backend());
    app.apply(DaemonMsg::Reply { op: Op::Admins, result: Ok(Reply::Accounts(accounts())) });
    assert_snapshot!("accounts_listed", screen(&app, 80, 24).backend());

    assert_eq!(press(&mut app, 'b'), vec![Action::Send(Op::AdminBlock { account: "a1".into() })]);
    assert!(press(&mut app, 'a').is_empty(), "an active link needs no approval");
    press(&mut app, 'j');
    assert_eq!(press(&mut app, 'a'), vec![Action::Send(Op::AdminApprove { account: "a3".into() })]);
    press(&mut app, 'j');
    assert_eq!(press(&mut app, 'u'), vec![Action::Send(Op::AdminUnblock { account: "a2".into() })]);
    app.apply(DaemonMsg::Reply {
        op: Op::AdminUnblock { account: "a2".into() },
        result: Ok(Reply::Account(AccountChanged { account: "a2".into(), state: LinkState::Active })),
    });
    assert_eq!(app.notice.as_ref().unwrap().text, "ma****@exam****.org is now active.");
    // The daemon says accounts changed: the console asks again.
    assert_eq!(app.apply(DaemonMsg::Event(DaemonEvent::Accounts)), vec![Action::Send(Op::Admins)]);

    // The list comes back reordered (a2, now active, moves up): the selection stays on a2,
    // so a second key acts on the account the operator chose, not on whoever took its row.
    let mut reordered = accounts();
    reordered[1].state = LinkState::Active;
    app.apply(DaemonMsg::Reply { op: Op::Admins, result: Ok(Reply::Accounts(reordered)) });
    assert_eq!(app.selected_account().map(|a| a.id.as_str()), Some("a2"));
    assert_eq!(press(&mut app, 'b'), vec![Action::Send(Op::AdminBlock { account: "a2".into() })]);
}

#[test]
fn accounts_say_why_they_are_missing() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, '3');
    let why =
        "the daemon is not connected to the relay right now; try again once `aic-console status` shows it connected";
    app.apply(DaemonMsg::Reply { op: Op::Admins, result: Err(why.into()) });
    assert_eq!(app.accounts, Accounts::Failed(why.into()));
    assert_snapshot!("accounts_failed", screen(&app, 80, 24).backend());
    // When the relay link comes back, the console asks again by itself.
    let down = RelayHealth { connected: false, ..relay() };
    assert!(app.apply(DaemonMsg::Event(DaemonEvent::Relay(down))).is_empty());
    assert_eq!(app.apply(DaemonMsg::Event(DaemonEvent::Relay(relay()))), vec![Action::Send(Op::Admins)]);
    app.apply(DaemonMsg::Reply { op: Op::Admins, result: Ok(Reply::Accounts(Vec::new())) });
    assert_snapshot!("accounts_empty", screen(&app, 80, 24).backend());
}

#[test]
fn relay_health_with_round_trips() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, '4');
    assert_snapshot!("relay_up", screen(&app, 80, 24).backend());
    let down =
        RelayHealth { connected: false, connected_since_ms: None, last_error: Some("dns error".into()), ..relay() };
    app.apply(DaemonMsg::Event(DaemonEvent::Relay(down)));
    assert_snapshot!("relay_down", screen(&app, 80, 24).backend());
}

#[test]
fn a_stopped_daemon_is_reported_and_a_new_connection_recovers() {
    let mut app = connected(busy_traffic(), Vec::new());
    app.apply(DaemonMsg::Down {
        reason: "aic-daemon is not running: there is no socket at /run/aic-daemon/aic.sock. Start it".into(),
    });
    assert!(matches!(app.link, Link::Down { .. }));
    assert_snapshot!("daemon_down", screen(&app, 80, 24).backend());
    assert!(press(&mut app, 'A').is_empty());
    app.apply(DaemonMsg::Connected(Box::new(Snapshot {
        status: status(Mode::Auto),
        traffic: busy_traffic(),
        approvals: Vec::new(),
    })));
    assert_eq!(app.link, Link::Up);
    assert!(text(&screen(&app, 80, 24)).lines().next().unwrap().contains("mode auto   daemon connected"));
}

#[test]
fn help_lists_the_keys() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, '?');
    assert_snapshot!("help", screen(&app, 80, 24).backend());
    press(&mut app, 'x');
    assert_eq!(app.popup, None);
}

#[test]
fn code_reset_asks_first_and_shows_the_new_code() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, 'R');
    assert_snapshot!("reset_confirm", screen(&app, 80, 24).backend());
    assert!(press(&mut app, 'n').is_empty(), "N keeps the code");
    assert_eq!(app.popup, None);

    press(&mut app, 'R');
    assert_eq!(press(&mut app, 'y'), vec![Action::Send(Op::CodeReset)]);
    assert_eq!(app.popup, Some(Popup::Resetting));
    assert!(press(&mut app, 'q').is_empty(), "keys wait while the relay answers");
    app.apply(DaemonMsg::Reply {
        op: Op::CodeReset,
        result: Ok(Reply::Code(CodeInfo { code: Some("AIC-NEW0-CODE-2345".into()) })),
    });
    assert_snapshot!("reset_done", screen(&app, 80, 24).backend());
    assert_eq!(press(&mut app, 'c'), vec![Action::Copy("AIC-NEW0-CODE-2345".into())]);
    press(&mut app, 'x');
    assert_eq!(app.popup, None);

    press(&mut app, 'R');
    press(&mut app, 'y');
    let refused = "the daemon is not connected to the relay right now";
    app.apply(DaemonMsg::Reply { op: Op::CodeReset, result: Err(refused.into()) });
    assert_eq!(app.popup, None);
    assert_eq!(app.notice.as_ref().unwrap().text, format!("The code was not reset: {refused}"));
    assert_eq!(app.code.as_deref(), Some("AIC-NEW0-CODE-2345"));
}

#[test]
fn the_mode_is_picked_by_letter() {
    let mut app = connected(Vec::new(), Vec::new());
    press(&mut app, 'm');
    assert_snapshot!("mode_picker", screen(&app, 80, 24).backend());
    assert_eq!(press(&mut app, 'a'), vec![Action::Send(Op::SetMode { mode: Mode::Auto })]);
    press(&mut app, 'm');
    assert!(press(&mut app, 's').is_empty(), "already supervised: nothing to send");
    press(&mut app, 'm');
    assert!(key(&mut app, KeyCode::Esc).is_empty());
    app.apply(DaemonMsg::Event(DaemonEvent::ModeChanged { mode: Mode::Disabled }));
    assert!(text(&screen(&app, 80, 24)).contains("mode disabled"));
}

#[test]
fn keys_switch_panes_copy_and_quit() {
    let mut app = connected(Vec::new(), Vec::new());
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.pane, Pane::Approvals);
    key(&mut app, KeyCode::BackTab);
    // Going to the Jobs pane asks for the jobs at once.
    assert_eq!(key(&mut app, KeyCode::BackTab), vec![Action::Send(Op::Jobs)]);
    assert_eq!(app.pane, Pane::Jobs);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.pane, Pane::Relay);
    assert_eq!(press(&mut app, 'c'), vec![Action::Copy("AIC-7K3P-WX9M-RTBN".into())]);
    assert_eq!(press(&mut app, 'q'), vec![Action::Quit]);
    assert_eq!(app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), vec![Action::Quit]);
    assert_eq!(app.on_event(Event::Terminate), vec![Action::Quit]);
}

/// The sanitising rule: a command, its output and its caller are drawn as
/// visible text; nothing that could act on the terminal reaches the screen.
#[test]
fn a_file_transfer_waiting_for_approval_shows_no_timeout() {
    let mut transfer = approval(2, "push /etc/motd (12 bytes)");
    transfer.timeout_ms = 0;
    let mut app = connected(Vec::new(), vec![transfer, approval(3, "true")]);
    press(&mut app, 'A');
    let shown = text(&screen(&app, 80, 24));
    assert!(shown.contains("push /etc/motd") && !shown.contains("Timeout"), "{shown}");
    press(&mut app, 'j');
    assert!(text(&screen(&app, 80, 24)).contains("Timeout"), "a command's timeout is still shown");
}

#[test]
fn control_sequences_from_commands_output_and_callers_are_shown_not_sent() {
    let hostile = "echo \x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J\rdone \u{9b}31m \u{202e}gpj.sh";
    let mut traffic = entry(1, hostile, CommandState::Running, None, "out \x1b[31mred\x1b[0m \x1b]0;title\x07\n");
    traffic.who = "evil\x1b[8m".into();
    traffic.cwd = Some("/tmp/\x1b[2J".into());
    let mut waiting = approval(2, hostile);
    waiting.who = "anon\x1b[5m".into();
    waiting.cwd = Some("/srv\x07".into());
    let mut app = connected(vec![traffic], vec![waiting]);
    app.apply(DaemonMsg::Event(DaemonEvent::Output {
        command: id(1),
        stream: Stream::Stdout,
        text: "\x1b[2Jboom\n".into(),
    }));

    for pane in ['1', '2'] {
        press(&mut app, pane);
        let terminal = screen(&app, 120, 30);
        let shown = text(&terminal);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reached the screen:\n{shown}"
        );
        assert!(shown.contains("echo ^[]52;c;cm0gLXJmIH4=^G ^[[2J^Mdone \\u{9b}31m \\u{202e}gpj.sh"), "{shown}");
        if pane == '1' {
            assert!(shown.contains("out ^[[31mred^[[0m ^[]0;title^G"), "{shown}");
            assert!(shown.contains("^[[2Jboom") && shown.contains("evil^[[8m") && shown.contains("(in /tmp/^[[2J)"));
        } else {
            assert!(shown.contains("anon^[[5m"), "{shown}");
            assert!(shown.contains("/srv^G"), "{shown}");
        }
    }
    press(&mut app, '1');
    assert_snapshot!("hostile_traffic", screen(&app, 120, 30).backend());
}

#[test]
fn small_and_odd_sizes_draw_without_panicking() {
    let mut app = connected(busy_traffic(), vec![approval(6, "x")]);
    for pane in ['1', '2', '3', '4', '?'] {
        press(&mut app, pane);
        for (w, h) in [(80, 24), (20, 5), (1, 1), (200, 60), (80, 8)] {
            screen(&app, w, h);
        }
        key(&mut app, KeyCode::Esc);
    }
}

#[test]
fn the_ring_stays_bounded() {
    let mut app = connected(Vec::new(), Vec::new());
    for n in 0..1500u32 {
        let mut e = entry(1, "true", CommandState::Exited, Some(0), "");
        e.id = Uuid::from_u128(u128::from(n) + 1);
        app.apply(DaemonMsg::Event(DaemonEvent::Traffic(e)));
    }
    assert_eq!(app.traffic.len(), 1000);
    for _ in 0..100 {
        app.apply(DaemonMsg::Event(DaemonEvent::Output {
            command: Uuid::from_u128(1500),
            stream: Stream::Stdout,
            text: "x".repeat(1000),
        }));
    }
    assert!(app.traffic.back().unwrap().tail.len() <= 4096);
}

fn job(n: u8, state: JobState, exit: Option<i32>, command: &str) -> JobInfo {
    JobInfo {
        id: id(n),
        state,
        kind: JobKind::Job,
        command: command.into(),
        cwd: None,
        who: if n.is_multiple_of(2) { "lu****@wear****.com".into() } else { "anonymous".into() },
        created_ms: NOW - 600_000,
        ended_ms: exit.map(|_| NOW - 60_000),
        duration_ms: 540_000 / u64::from(n),
        exit_code: exit,
        output_bytes: 70_000 * u64::from(n),
        dropped_bytes: if n == 1 { 4096 } else { 0 },
        truncated: false,
        refusal: None,
        message: None,
    }
}

#[test]
fn jobs_show_state_runtime_size_and_the_selected_tail_and_x_cancels_after_y() {
    let mut app = connected(Vec::new(), Vec::new());
    assert_eq!(press(&mut app, '5'), vec![Action::Send(Op::Jobs)]);
    let jobs = vec![job(1, JobState::Running, None, "make -j8 2>&1"), job(2, JobState::Exited, Some(0), "cargo test")];
    app.apply(DaemonMsg::Reply { op: Op::Jobs, result: Ok(Reply::Jobs(jobs)) });
    // Each tick asks again, for the list and the selected job's tail.
    assert_eq!(app.on_event(Event::Tick), vec![Action::Send(Op::Jobs), Action::Send(Op::JobTail { job: id(1) })]);
    let tail = JobTail { job: id(1), tail: "CC foo.o\nCC bar.o\n\u{1b}[31mLD app\n".into() };
    app.apply(DaemonMsg::Reply { op: Op::JobTail { job: id(1) }, result: Ok(Reply::JobTail(tail)) });
    assert_snapshot!("jobs_running", screen(&app, 80, 24).backend());

    press(&mut app, 'x');
    assert_eq!(app.popup, Some(Popup::ConfirmCancel(id(1))));
    assert_snapshot!("jobs_cancel_confirm", screen(&app, 80, 24).backend());
    assert_eq!(press(&mut app, 'n'), vec![]);
    assert_eq!(app.popup, None);
    press(&mut app, 'x');
    assert_eq!(press(&mut app, 'y'), vec![Action::Send(Op::JobCancel { job: id(1) })]);
    // An ended job cannot be cancelled.
    key(&mut app, KeyCode::Down);
    assert_eq!(press(&mut app, 'x'), vec![]);
    assert_eq!(app.popup, None);
}
