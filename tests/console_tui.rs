//! The real `aic-console` in a pseudo-terminal, its screen read with vt100,
//! against a real relay and daemon: what the operator sees, the keys they
//! press, what the REST caller gets, and the terminal given back afterwards.

mod common;

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde_json::json;

/// What the console asked of the terminal besides drawing.
#[derive(Default)]
struct Seen {
    bells: usize,
    clipboard: Vec<String>,
    titles: usize,
}

impl vt100::Callbacks for Seen {
    fn audible_bell(&mut self, _: &mut vt100::Screen) {
        self.bells += 1;
    }
    fn copy_to_clipboard(&mut self, _: &mut vt100::Screen, _ty: &[u8], data: &[u8]) {
        let text = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
        self.clipboard.push(String::from_utf8_lossy(&text).into());
    }
    fn set_window_title(&mut self, _: &mut vt100::Screen, _title: &[u8]) {
        self.titles += 1;
    }
}

type Screen = Arc<Mutex<vt100::Parser<Seen>>>;

/// `aic-console` running in a pseudo-terminal.
struct Console {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    screen: Screen,
    /// Set once the reader has met the pty's end: everything the console
    /// wrote before it exited is on the screen.
    drained: Arc<AtomicBool>,
}

impl Console {
    /// Starts the console on `socket` at `cols` x `rows`, with its settings in `config_home`.
    fn start(socket: &Path, config_home: &Path, cols: u16, rows: u16) -> Self {
        Self::start_with(socket, config_home, cols, rows, &[])
    }

    /// [`Console::start`] with extra environment variables.
    fn start_with(socket: &Path, config_home: &Path, cols: u16, rows: u16, envs: &[(&str, &str)]) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })
            .expect("open a pseudo-terminal");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_aic-console"));
        cmd.arg("--socket");
        cmd.arg(socket);
        cmd.env("TERM", "xterm-256color");
        cmd.env("XDG_CONFIG_HOME", config_home);
        cmd.env_remove("AIC_CONSOLE_CONFIG");
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let child = pair.slave.spawn_command(cmd).expect("spawn aic-console");
        drop(pair.slave);
        let size = |n: u16| NonZeroU16::new(n).unwrap();
        let screen: Screen =
            Arc::new(Mutex::new(vt100::Parser::new_with_callbacks(size(rows), size(cols), 0, Seen::default())));
        let mut reader = pair.master.try_clone_reader().unwrap();
        let (feed, drained) = (screen.clone(), Arc::new(AtomicBool::new(false)));
        let at_end = drained.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
            at_end.store(true, Ordering::Release);
        });
        let keys = pair.master.take_writer().unwrap();
        Self { child, master: pair.master, keys, screen, drained }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(self.screen.lock().unwrap().callbacks())
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits (bounded) until the screen shows `text`; returns the screen.
    async fn shows(&self, text: &str) -> String {
        self.until(text, |screen| screen.contains(text)).await
    }

    /// Waits (bounded) until the screen shows every one of `texts`: a frame
    /// drawn in part may hold the first and not yet the rest, so whatever a
    /// test checks on a screen is waited for, not asserted on the first look.
    async fn shows_all(&self, texts: &[&str]) -> String {
        self.until(&format!("{texts:?}"), |screen| texts.iter().all(|text| screen.contains(text))).await
    }

    /// A screen is taken once two looks 20 ms apart agree: the pty can hand
    /// over a frame in several reads, and a half-drawn frame may already
    /// hold the text looked for.
    async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            let screen = self.contents();
            if check(&screen) && screen == last {
                return screen;
            }
            last = screen;
            if tokio::time::Instant::now() > deadline {
                panic!("the console never showed {what:?}; the screen:\n{last}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for the console to exit and for the reader to have
    /// taken all it wrote (its last bytes give the terminal back); returns
    /// its exit code.
    async fn exit_code(&mut self) -> u32 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap()
                && self.drained.load(Ordering::Acquire)
            {
                return status.exit_code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aic-console did not exit, or its pty did not end:\n{}",
                self.contents()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the terminal is back to how a shell wants it: main screen, echo, line editing.
    fn restored(&self) -> bool {
        use nix::sys::termios::LocalFlags;
        let termios = self.master.get_termios().expect("the pty's settings");
        let cooked = termios.local_flags.contains(LocalFlags::ECHO | LocalFlags::ICANON);
        cooked && !self.screen.lock().unwrap().screen().alternate_screen()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_approves_a_rest_command_with_y_and_the_caller_gets_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    // Supervised: the daemon's default mode.
    let daemon = TestDaemon::start_with(daemon_config(&relay.ws(), &dir.path().join("daemon"))).await;
    let code = daemon.code().to_string();
    let mut console = Console::start(&dir.path().join("daemon/aic.sock"), dir.path(), 100, 30);
    console.shows(&code).await;
    console.shows_all(&["daemon connected", "mode supervised"]).await;

    // A command whose text tries to set the clipboard, retitle and clear the terminal.
    let command = "printf 'approved-output\\n' # \x1b]52;c;aGFja2Vk\x07 \x1b]2;pwned\x07 \x1b[2J";
    let http = relay.http();
    let caller = tokio::spawn(async move { exec(&http, json!({"code": code, "command": command})).await });
    console.shows("1 waiting for approval").await;
    assert!(console.seen(|s| s.bells) >= 1, "a new approval rings the bell");

    console.press("A");
    console
        .shows_all(&[
            "Waiting command 1 of 1",
            "From      anonymous (127.0.0.1)",
            "Cwd       (the daemon's working directory)",
            // The command shows as visible text.
            "printf 'approved-output\\n' # ^[]52;c;aGFja2Vk^G ^[]2;pwned^G ^[[2J",
        ])
        .await;
    assert!(console.seen(|s| s.clipboard.is_empty() && s.titles == 0), "the command's sequences did nothing");
    assert!(!caller.is_finished(), "the caller waits for the operator");

    console.press("y");
    let (status, body) = within("the approved command", caller).await.unwrap();
    assert_eq!((status, body["stdout"].as_str()), (200, Some("approved-output\n")), "{body}");
    console.press("1");
    // The selected command's end and output tail, and nothing left waiting.
    let done = |s: &str| s.contains("exit 0") && s.contains("approved-output") && !s.contains("waiting for approval");
    console.until("the approved command's exit and output, nothing waiting", done).await;

    // c copies the session code with OSC 52.
    console.press("c");
    console.shows("Copied the session code").await;
    assert_eq!(console.seen(|s| s.clipboard.clone()), vec![daemon.code().to_string()]);

    console.press("q");
    assert_eq!(console.exit_code().await, 0);
    assert!(console.restored(), "the terminal is restored after q");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_waits_out_a_daemon_restart_resizes_and_restores_the_terminal_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let state = dir.path().join("daemon");
    let daemon = TestDaemon::start_with(daemon_config(&relay.ws(), &state)).await;
    let mut console = Console::start(&state.join("aic.sock"), dir.path(), 100, 30);
    console.shows("daemon connected").await;

    daemon.stop().await;
    console.shows("daemon not running — reconnecting").await;
    // The first retry finds no socket and says so, with what to do.
    console.shows("aic-daemon is not running: there is no socket").await;
    let daemon = TestDaemon::start_with(daemon_config(&relay.ws(), &state)).await;
    console.shows("daemon connected").await;

    // 80x24 is usable: the header, the tabs and the footer all fit.
    console.master.resize(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 }).unwrap();
    console.screen.lock().unwrap().set_size(NonZeroU16::new(24).unwrap(), NonZeroU16::new(80).unwrap());
    let fits = |s: &str| {
        s.lines().nth(1).is_some_and(|tabs| tabs.contains("4 Relay"))
            && s.lines().nth(23).is_some_and(|footer| footer.contains("q quit"))
    };
    console.until("a redraw at 80x24 with the tabs and the footer", fits).await;

    terminate_pid(console.child.process_id().unwrap());
    assert_eq!(console.exit_code().await, 0);
    assert!(console.restored(), "the terminal is restored after SIGTERM");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_restores_the_terminal_before_the_message_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let env = [(aic::tui::run::TEST_PANIC_ENV, "1"), ("RUST_BACKTRACE", "0")];
    let mut console = Console::start_with(&dir.path().join("none.sock"), dir.path(), 100, 30, &env);
    assert_eq!(console.exit_code().await, 101, "a panic ends the console");
    assert!(console.restored(), "the terminal is restored after a panic");
    // The panic message is printed on the main screen.
    console.shows_all(&["panicking on purpose", "panicked"]).await;
}

fn terminate_pid(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[tokio::test]
async fn a_broken_theme_is_refused_with_its_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let theme = dir.path().join("mine.toml");
    std::fs::write(&theme, "accent = \"blurple\"\n").unwrap();
    let run = |args: Vec<std::ffi::OsString>| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-console"))
            .args(args)
            .env("XDG_CONFIG_HOME", dir.path())
            .env_remove("AIC_CONSOLE_CONFIG")
            .output()
    };
    let out = within("aic-console", run(vec!["--theme".into(), theme.clone().into()])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}: key 'accent': unknown colour \"blurple\"", theme.display())), "{stderr}");

    // The same theme named in the settings file; a relative path starts at the file's directory.
    std::fs::create_dir_all(dir.path().join("aic-console")).unwrap();
    let settings = dir.path().join("aic-console/config.toml");
    std::fs::write(&settings, "theme = \"../mine.toml\"\n").unwrap();
    let out = within("aic-console", run(vec!["--config".into(), settings.into()])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key 'accent': unknown colour \"blurple\""));

    let out = within("aic-console", run(vec!["--theme".into(), "nope".into()])).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown theme 'nope'"));
}
