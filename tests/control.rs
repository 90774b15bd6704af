//! The operator's side: the control socket, the approval queue and the
//! `aic-console` command line, against a real relay and daemon.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aic::daemon::Mode;
use aic::protocol::control::{Decision, Event, Op};
use aic::tui::client::Client;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Setup {
    dir: tempfile::TempDir,
    relay: TestRelay,
    daemon: TestDaemon,
}

impl Setup {
    async fn supervised(approval_timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = TestRelay::start(&dir.path().join("relay")).await;
        let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
        config.approval_timeout = approval_timeout;
        let daemon = TestDaemon::start_with(config).await;
        Self { dir, relay, daemon }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("daemon/aic.sock")
    }

    async fn subscribed(&self) -> Client {
        let mut client = Client::connect(&self.socket()).await.unwrap();
        client.call(Op::Subscribe).await.unwrap();
        client
    }

    /// Starts an exec in the background; returns its eventual (status, body).
    fn exec(&self, command: &str) -> tokio::task::JoinHandle<(u16, Value)> {
        let http = self.relay.http();
        let body = json!({"code": self.daemon.code().to_string(), "command": command});
        tokio::spawn(async move { exec(&http, body).await })
    }
}

/// Waits for the next event matching `pick`.
async fn wait_event<T>(client: &mut Client, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    within("an event", async {
        loop {
            if let Some(found) = pick(&client.next_event().await.unwrap()) {
                return found;
            }
        }
    })
    .await
}

async fn queued(client: &mut Client) -> uuid::Uuid {
    wait_event(client, |e| match e {
        Event::ApprovalQueued(a) => Some(a.id),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_commands_wait_until_the_operator_approves() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut watcher = s.subscribed().await;
    let call = s.exec("echo approved; pwd >/dev/null");
    let id = queued(&mut watcher).await;

    let listed = console(&s.socket(), &["approvals", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let list: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.to_string());
    assert_eq!(list[0]["command"], "echo approved; pwd >/dev/null");
    assert_eq!(list[0]["who"], "anonymous");
    assert_eq!(list[0]["ip"], "127.0.0.1");
    assert!(!call.is_finished(), "the caller is still waiting");

    let human = console(&s.socket(), &["approvals"]).await;
    assert!(human.stdout.contains("command: echo approved; pwd >/dev/null"), "{}", human.stdout);

    // A unique prefix of the id is enough.
    let approved = console(&s.socket(), &["approve", &id.to_string()[..8]]).await;
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    assert!(approved.stdout.starts_with("Approved "), "{}", approved.stdout);
    let (status, body) = within("the approved command", call).await.unwrap();
    assert_eq!((status, body["stdout"].as_str()), (200, Some("approved\n")));

    let traffic = console(&s.socket(), &["traffic"]).await;
    assert!(traffic.stdout.contains("[exit 0"), "{}", traffic.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_commands_get_403_denied_and_never_run() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let marker = s.dir.path().join("ran");
    let mut watcher = s.subscribed().await;
    let call = s.exec(&format!("touch {}", marker.display()));
    let id = queued(&mut watcher).await;
    let denied = console(&s.socket(), &["deny", &id.to_string(), "--json"]).await;
    assert_eq!(denied.code, 0, "{}", denied.stderr);
    assert_eq!(serde_json::from_str::<Value>(&denied.stdout).unwrap()["decision"], "denied");
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body["reason"].as_str()), (403, Some("denied")));
    assert!(body["error"].as_str().unwrap().contains("operator denied"));
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_commands_time_out_with_403() {
    let s = Setup::supervised(Duration::from_millis(300)).await;
    let (status, body) = s.exec("echo late").await.unwrap();
    assert_eq!((status, body["reason"].as_str()), (403, Some("approval_timeout")));
    assert!(body["error"].as_str().unwrap().contains("did not answer"), "{body}");
    let left = console(&s.socket(), &["approvals"]).await;
    assert_eq!(left.stdout.trim(), "No commands are waiting for approval.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_sees_the_one_decision_that_wins() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let (mut a, mut b) = (s.subscribed().await, s.subscribed().await);
    let call = s.exec("echo once");
    let id = queued(&mut a).await;
    assert_eq!(queued(&mut b).await, id);

    let mut deciders = Vec::new();
    for op in [Op::Approve { command: id }, Op::Deny { command: id }] {
        let socket = s.socket();
        deciders.push(tokio::spawn(async move { Client::connect(&socket).await.unwrap().call(op).await }));
    }
    let results: Vec<_> = futures_util::future::join_all(deciders).await.into_iter().map(|r| r.unwrap()).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one decision wins: {results:?}");
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap().to_string();
    assert!(loser.contains("already decided"), "{loser}");

    let decided = |e: &Event| match e {
        Event::ApprovalDecided { command, decision } if *command == id => Some(*decision),
        _ => None,
    };
    let (da, db) = (wait_event(&mut a, decided).await, wait_event(&mut b, decided).await);
    assert_eq!(da, db);
    let (status, _) = call.await.unwrap();
    assert_eq!(status, if da == Decision::Approved { 200 } else { 403 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_takes_its_approval_entry_away() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut watcher = s.subscribed().await;
    let call = s.exec("echo never");
    let id = queued(&mut watcher).await;
    call.abort();
    let decision = wait_event(&mut watcher, |e| match e {
        Event::ApprovalDecided { command, decision } if *command == id => Some(*decision),
        _ => None,
    })
    .await;
    assert_eq!(decision, Decision::Withdrawn);
    let left = console(&s.socket(), &["approvals", "--json"]).await;
    assert_eq!(left.stdout.trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_changes_apply_at_once_and_survive_a_restart() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let shown = console(&s.socket(), &["mode"]).await;
    assert_eq!(shown.stdout.trim(), "supervised");
    let set = console(&s.socket(), &["mode", "disabled"]).await;
    assert_eq!((set.code, set.stdout.trim()), (0, "Mode is now disabled."));

    let (status, body) = s.exec("echo no").await.unwrap();
    assert_eq!((status, body["reason"].as_str()), (403, Some("forbidden")));
    assert!(body["error"].as_str().unwrap().contains("disabled"), "{body}");

    let Setup { dir, relay, daemon } = s;
    daemon.stop().await;
    // A service file's `--mode auto` does not undo the operator's `disabled`.
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(Mode::Auto);
    let daemon = TestDaemon::start_with(config).await;
    let s = Setup { dir, relay, daemon };
    assert_eq!(console(&s.socket(), &["mode", "--json"]).await.stdout.trim(), r#"{"mode":"disabled"}"#);

    assert_eq!(console(&s.socket(), &["--json", "mode", "auto"]).await.code, 0);
    let (status, body) = s.exec("echo yes").await.unwrap();
    assert_eq!((status, body["stdout"].as_str()), (200, Some("yes\n")));
    let bad = console(&s.socket(), &["mode", "yolo"]).await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("supervised, auto or disabled"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_code_report_the_daemon() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let code = s.daemon.code().to_string();
    let status = console(&s.socket(), &["status"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains(&format!("Session:  {code}")), "{}", status.stdout);
    assert!(status.stdout.contains("Mode:     supervised"));
    assert!(status.stdout.contains(&format!("connected to {}", s.relay.ws())), "{}", status.stdout);
    let json: Value = serde_json::from_str(&console(&s.socket(), &["status", "--json"]).await.stdout).unwrap();
    assert_eq!(json["relay"]["connected"], true);
    assert_eq!(json["code"], code);
    assert_eq!(console(&s.socket(), &["code"]).await.stdout.trim(), code);
    // Bare `aic-console` with no terminal prints the status too.
    assert!(console(&s.socket(), &[]).await.stdout.contains(&code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_reset_needs_confirmation_and_kills_the_old_code() {
    let mut s = Setup::supervised(Duration::from_secs(600)).await;
    let old = s.daemon.code();
    let refused = console(&s.socket(), &["code", "reset"]).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert_eq!(s.daemon.code(), old);

    let reset = console(&s.socket(), &["code", "reset", "--yes"]).await;
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    let new: aic::protocol::SessionCode =
        reset.stdout.lines().next().unwrap().strip_prefix("New session code: ").unwrap().parse().unwrap();
    assert_ne!(new, old);
    within("the daemon to take the new code", s.daemon.status.wait_for(|st| st.code == Some(new))).await.unwrap();
    assert_eq!(console(&s.socket(), &["code"]).await.stdout.trim(), new.to_string());

    let unknown = aic::protocol::SessionCode::generate();
    let (old_status, old_body) = exec(&s.relay.http(), json!({"code": old.to_string(), "command": "true"})).await;
    let (unknown_status, unknown_body) =
        exec(&s.relay.http(), json!({"code": unknown.to_string(), "command": "true"})).await;
    assert_eq!((old_status, &old_body), (unknown_status, &unknown_body), "the old code is refused like an unknown one");
    assert_eq!(console(&s.socket(), &["mode", "auto"]).await.code, 0);
    assert_eq!(run(&s.relay.http(), new, "echo new").await["stdout"], "new\n");
    // The new code survives a daemon restart.
    let Setup { dir, relay, daemon } = s;
    daemon.stop().await;
    s = Setup {
        daemon: TestDaemon::start_with(daemon_config(&relay.ws(), &dir.path().join("daemon"))).await,
        dir,
        relay,
    };
    assert_eq!(s.daemon.code(), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = console(&dir.path().join("none.sock"), &["status"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("aic-daemon is not running") && missing.stderr.contains("systemctl start aic-daemon")
    );

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let left = console(&stale, &["status"]).await;
    assert!(left.stderr.contains("left over"), "{}", left.stderr);
    // The socket flag works after the subcommand too.
    let after = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-console"))
        .args(["status", "--socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&after.stderr).contains("none.sock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_refuses_and_a_stale_one_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let state = dir.path().join("daemon");
    std::fs::create_dir_all(&state).unwrap();
    // Left over from a daemon that died: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(state.join("aic.sock")).unwrap());
    let first = TestDaemon::start(&relay.ws(), &state).await;

    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-daemon"))
        .args(["run", "--relay", &relay.ws(), "--state-dir"])
        .arg(dir.path().join("other"))
        .arg("--socket")
        .arg(state.join("aic.sock"))
        .output();
    let second = within("the second daemon", second).await.unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another aic-daemon is already running"), "{stderr}");
    assert!(console(&state.join("aic.sock"), &["status"]).await.code == 0, "the first daemon is untouched");

    first.stop().await;
    assert!(!state.join("aic.sock").exists(), "the socket is removed at shutdown");
}

fn make_traversable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `aic-console` as uid/gid 65534 (nobody), with no groups.
async fn console_as_nobody(socket: &Path) -> Console {
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", env!("CARGO_BIN_EXE_aic-console"), "status"])
        .arg("--socket")
        .arg(socket)
        .output();
    within("aic-console as nobody", out).await.unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_are_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let s = Setup::supervised(Duration::from_secs(600)).await;
    for dir in [s.dir.path(), &s.dir.path().join("daemon")] {
        make_traversable(dir);
    }
    // The socket's mode keeps them out...
    let by_mode = console_as_nobody(&s.socket()).await;
    assert_eq!(by_mode.code, 1, "{}", by_mode.stdout);
    assert!(by_mode.stderr.contains("permission denied") && by_mode.stderr.contains("group aic"), "{}", by_mode.stderr);
    // ...and were the mode loosened, the peer check still would.
    std::fs::set_permissions(s.socket(), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let by_peer = console_as_nobody(&s.socket()).await;
    assert_eq!(by_peer.code, 1, "{}", by_peer.stdout);
    assert!(by_peer.stderr.contains("permission denied: uid 65534"), "{}", by_peer.stderr);
    assert!(by_peer.stdout.is_empty());
    assert_eq!(console(&s.socket(), &["status"]).await.code, 0, "root still gets in");
}

/// Sends raw bytes on a fresh connection and returns the lines that come back until it closes or goes quiet.
async fn raw(socket: &Path, bytes: &[u8], expect_lines: usize) -> Vec<Value> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let _ = write.write_all(bytes).await;
    let mut lines = BufReader::new(read).lines();
    let mut out = Vec::new();
    while out.len() < expect_lines {
        match within("a reply", lines.next_line()).await {
            Ok(Some(line)) => out.push(serde_json::from_str(&line).unwrap()),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_socket_hurts_only_its_sender() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut bystander = Client::connect(&s.socket()).await.unwrap();

    let replies =
        raw(&s.socket(), b"garbage\n{\"id\":7,\"op\":\"launch\"}\n\xff\xfe\n{\"id\":8,\"op\":\"code\"}\n", 4).await;
    assert_eq!(replies[0]["type"], "error");
    assert!(replies[0]["message"].as_str().unwrap().contains("unreadable request"));
    assert_eq!(replies[1]["type"], "error");
    assert_eq!(replies[1]["id"], 7, "the error names the request when it can");
    assert_eq!(replies[2]["type"], "error");
    assert_eq!(replies[3]["type"], "reply", "the connection carries on after garbage");
    assert_eq!(replies[3]["id"], 8);

    // A half line, then the client goes away.
    raw(&s.socket(), b"{\"id\":1,\"op\":", 0).await;
    // A 10 MB line gets an error and that connection is closed.
    let big = vec![b'x'; 10 * 1024 * 1024];
    let replies = raw(&s.socket(), &big, 2).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0]["message"].as_str().unwrap().contains("longer than 64 KiB"));

    let status = bystander.call(Op::Status).await.unwrap();
    assert_eq!(status["mode"], "supervised", "other clients carry on");
    assert_eq!(console(&s.socket(), &["mode", "--json"]).await.stdout.trim(), r#"{"mode":"supervised"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follow_prints_a_line_per_event() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-console"))
        .args(["traffic", "--follow"])
        .env("AIC_SOCKET", s.socket())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let header = within("the follow header", lines.next_line()).await.unwrap().unwrap();
    assert_eq!(header, "-- following; Ctrl-C to stop --");
    let mut watcher = s.subscribed().await;
    let call = s.exec("echo followed\u{1b}[2J");
    let id = queued(&mut watcher).await;
    let mut seen = String::new();
    within("the follow output", async {
        while !seen.contains("waiting for approval") {
            seen.push_str(&lines.next_line().await.unwrap().unwrap());
            seen.push('\n');
        }
    })
    .await;
    assert!(seen.contains(&id.to_string()[..8]), "{seen}");
    assert!(seen.contains("echo followed^[[2J"), "escape sequences are shown, not sent: {seen}");
    assert!(!seen.contains('\u{1b}'));
    call.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_command_cannot_act_as_the_operator() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut watcher = s.subscribed().await;
    let console_bin = env!("CARGO_BIN_EXE_aic-console");
    let socket = s.socket().display().to_string();
    // Once approved, the command tries to switch supervision off and to approve
    // whatever comes next; it may still look.
    let command = format!(
        "export AIC_SOCKET={socket}; {console_bin} mode auto; echo mode=$?; \
         {console_bin} deny 00000000; echo deny=$?; {console_bin} status >/dev/null; echo status=$?"
    );
    let call = s.exec(&command);
    let id = queued(&mut watcher).await;
    assert_eq!(console(&s.socket(), &["approve", &id.to_string()]).await.code, 0);
    let (status, body) = within("the approved command", call).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "mode=1\ndeny=1\nstatus=0\n", "{body}");
    let stderr = body["stderr"].as_str().unwrap();
    assert!(stderr.contains("refused: process") && stderr.contains("operator's own terminal"), "{stderr}");
    // Supervision is still on: the next command waits for the operator again.
    assert_eq!(console(&s.socket(), &["mode"]).await.stdout.trim(), "supervised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_command_leaves_behind_cannot_act_as_the_operator_either() {
    // The command ends at once; what it leaves in the background tries later.
    a_later_attempt_is_refused(|attempt| format!("( {attempt} ) >/dev/null 2>&1 &")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_detached_itself_cannot_act_as_the_operator_either() {
    // A double fork into a session and process group of its own, whose parent is gone by the time it tries.
    a_later_attempt_is_refused(|attempt| format!("setsid -f sh -c '{attempt}' >/dev/null 2>&1")).await;
}

/// Approves a command that leaves behind, as `detach` makes it do, a shell
/// script that tries `aic-console mode auto` once the command has ended (the
/// test opens its gate once the caller has the answer): the attempt is
/// refused and supervision stays on.
async fn a_later_attempt_is_refused(detach: impl Fn(&str) -> String) {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut watcher = s.subscribed().await;
    let (out, gate) = (s.dir.path().join("attempt.out"), s.dir.path().join("gate"));
    let attempt = format!(
        "while [ ! -e {gate} ]; do sleep 0.02; done; AIC_SOCKET={socket} {console_bin} mode auto >{out} 2>&1; echo rc=$? >>{out}",
        gate = gate.display(),
        socket = s.socket().display(),
        console_bin = env!("CARGO_BIN_EXE_aic-console"),
        out = out.display()
    );
    let call = s.exec(&detach(&attempt));
    let id = queued(&mut watcher).await;
    assert_eq!(console(&s.socket(), &["approve", &id.to_string()]).await.code, 0);
    let (status, body) = within("the approved command", call).await.unwrap();
    assert_eq!(status, 200, "{body}");
    std::fs::write(&gate, "").unwrap();
    let done = || std::fs::read_to_string(&out).is_ok_and(|t| t.contains("rc="));
    eventually("the later attempt", done).await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("rc=1") && text.contains("refused: process"), "{text}");
    assert_eq!(console(&s.socket(), &["mode"]).await.stdout.trim(), "supervised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_shows_the_code_it_came_with_and_a_code_reset_drops_it() {
    let s = Setup::supervised(Duration::from_secs(600)).await;
    let mut watcher = s.subscribed().await;
    let old = s.daemon.code().to_string();
    let call = s.exec("echo never");
    queued(&mut watcher).await;
    let listed = console(&s.socket(), &["approvals"]).await.stdout;
    let masked = format!("AIC-****-****-{}", &old[old.len() - 4..]);
    assert!(listed.contains(&format!("with code {masked}")), "{listed}");
    assert!(!listed.contains(&old), "the code itself is not shown: {listed}");
    let json = console(&s.socket(), &["--json", "approvals"]).await.stdout;
    assert!(json.contains(&format!("\"code\":\"{masked}\"")), "{json}");

    assert_eq!(console(&s.socket(), &["code", "reset", "--yes"]).await.code, 0);
    let (status, body) = within("the queued caller's answer", call).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("reset its code"), "{body}");
    let listed = console(&s.socket(), &["approvals"]).await.stdout;
    assert_eq!(listed.trim(), "No commands are waiting for approval.");
}

/// `clone3`'s arguments (linux/sched.h), up to `set_tid`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Starts `sleep 600` as a child of this process with the pid `pid` (root
/// only: clone3's set_tid), or says why it could not.
fn sleep_with_pid(pid: i32) -> Result<i32, std::io::Error> {
    let (program, arg) = (c"/bin/sleep", c"600");
    let argv = [program.as_ptr(), arg.as_ptr(), std::ptr::null()];
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child only execs (all
    // it needs was allocated before) or exits.
    let got = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, std::mem::size_of::<CloneArgs>()) };
    match got {
        0 => unsafe {
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        },
        -1 => Err(std::io::Error::last_os_error()),
        child => Ok(child as i32),
    }
}

/// A child of this test, killed and reaped when dropped.
struct KilledOnDrop(i32);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // SAFETY: a child of this test, killed and reaped.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Whether this kernel tells a Unix socket's peer by pidfd (Linux 6.5).
fn peer_pidfds() -> bool {
    use std::os::fd::AsRawFd;
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (mut fd, mut len) = (-1 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    // SAFETY: SO_PEERPIDFD (77) writes one int.
    let got = unsafe { libc::getsockopt(a.as_raw_fd(), libc::SOL_SOCKET, 77, (&raw mut fd).cast(), &mut len) };
    if got == 0 {
        // SAFETY: the descriptor the call just made.
        unsafe { libc::close(fd) };
    }
    got == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_pid_another_process_took_cannot_act_as_the_operator() {
    if !rustix::process::geteuid().is_root() || !peer_pidfds() {
        eprintln!("skipped: needs root (to choose a pid) and Linux 6.5 (SO_PEERPIDFD)");
        return;
    }
    let s = Setup::supervised(Duration::from_secs(600)).await;
    // The client connects, leaves its connection to a child and exits.
    let script = "import os, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  if os.fork() == 0:\n    \
                      sys.stdin.readline()\n    \
                      s.sendall(b'{\"id\":1,\"op\":\"set_mode\",\"mode\":\"auto\"}\\n')\n    \
                      sys.stdout.write(s.makefile().readline())\n    \
                      sys.stdout.flush()\n\
                  os._exit(0)\n";
    let mut client = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(s.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut go, answer) = (client.stdin.take().unwrap(), client.stdout.take().unwrap());
    let pid = client.id() as i32;
    assert!(client.wait().unwrap().success());
    // Its pid goes to a process the daemon would take for the operator.
    let _taker = match sleep_with_pid(pid) {
        Ok(taker) => KilledOnDrop(taker),
        Err(e) => {
            eprintln!("skipped: could not start a process with pid {pid}: {e}");
            return;
        }
    };
    let said = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        go.write_all(b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(answer).read_line(&mut line).unwrap();
        line
    });
    let said = within("the daemon's answer", said).await.unwrap();
    let said: Value = serde_json::from_str(&said).unwrap_or_else(|_| panic!("not JSON: {said}"));
    assert_eq!(said["type"], "error", "{said}");
    assert!(said["message"].as_str().unwrap().contains("exited after it connected"), "{said}");
    assert_eq!(console(&s.socket(), &["mode"]).await.stdout.trim(), "supervised");
}
