//! The spawner: a real `aic-daemon` process forks each command's reaper from
//! a small process of its own, and falls back to forking itself when that
//! process is gone.

mod common;

use common::*;
use serde_json::json;

/// A process's parent and name, from /proc.
fn parent_and_name(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    Some((tail.split_whitespace().nth(1)?.parse().ok()?, name))
}

/// The daemon's spawner, a child of it named `aic-spawner`, as /proc shows it now.
fn find_spawner(daemon: &DaemonProcess) -> Option<i32> {
    let daemon = daemon.child.id()? as i32;
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(
        |&pid| {
            parent_and_name(pid).is_some_and(|(parent, name)| parent == daemon && name == "aic-spawner" && alive(pid))
        },
    )
}

/// The daemon's spawner, waited for (bounded): the forked spawner names
/// itself on its own time, which on a loaded machine may come after the
/// daemon is already online.
async fn spawner_of(daemon: &DaemonProcess) -> i32 {
    let mut found = None;
    eventually("the daemon runs a spawner", || {
        found = find_spawner(daemon);
        found.is_some()
    })
    .await;
    found.unwrap()
}

async fn pair(dir: &std::path::Path) -> (TestRelay, DaemonProcess) {
    let relay = TestRelay::start(&dir.join("relay")).await;
    let daemon = DaemonProcess::start(&relay.ws(), &dir.join("daemon"), &[]).await;
    (relay, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_under_a_reaper_the_spawner_forked_with_its_bytes_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    let spawner = spawner_of(&daemon).await;
    // $PPID is the command's reaper.
    let body = run(&relay.http(), daemon.code, r"echo $PPID; printf 'a\377\000b' >&2; exit 7").await;
    assert_eq!(body["exitCode"], 7, "{body}");
    let reaper: i32 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    use base64::Engine;
    let stderr = base64::engine::general_purpose::STANDARD.decode(body["stderrBase64"].as_str().unwrap()).unwrap();
    assert_eq!(stderr, b"a\xff\x00b");
    // The reaper goes once the command has (the answer may come first: it needs only the exit code);
    // a new one is the spawner's child while it runs.
    eventually("the reaper is gone", || !alive(reaper)).await;
    let body = run(&relay.http(), daemon.code, "cat /proc/$PPID/stat").await;
    let stat = body["stdout"].as_str().unwrap();
    let parent: i32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(parent, spawner, "the reaper is the spawner's child, not the daemon's: {stat}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_process_of_a_spawned_command_is_killed_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    spawner_of(&daemon).await;
    a_hang_up_kills_what_the_command_detached(&relay.http(), &daemon.code.to_string()).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_spawner_gone_commands_still_run_and_the_log_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    let spawner = spawner_of(&daemon).await;
    let pid = rustix::process::Pid::from_raw(spawner).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    for n in 0..3 {
        let body = run(&relay.http(), daemon.code, &format!("echo run {n}; exit {n}")).await;
        assert_eq!((body["stdout"].as_str(), body["exitCode"].as_i64()), (Some(&*format!("run {n}\n")), Some(n)));
    }
    let log = daemon.stop().await;
    assert_eq!(log.matches("the spawner process is gone").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_of_the_daemon_reaches_a_spawned_command() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    spawner_of(&daemon).await;
    // `ls` opens the directory it lists as 3.
    let body = run(&relay.http(), daemon.code, "ls /proc/self/fd").await;
    assert_eq!(body["stdout"], "0\n1\n2\n3\n", "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_command_at_its_timeout_ends_143_or_137_if_it_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    spawner_of(&daemon).await;
    let code = daemon.code.to_string();
    for (command, exit) in [("sleep 100", 143), ("trap '' TERM; sleep 100", 137)] {
        let (status, body) = exec(&relay.http(), json!({"code": code, "command": command, "timeout_ms": 1000})).await;
        assert_eq!(
            (status, body["timedOut"].as_bool(), body["exitCode"].as_i64()),
            (200, Some(true), Some(exit)),
            "{body}"
        );
    }
    let (status, body) = exec(&relay.http(), json!({"code": code, "command": "pwd", "cwd": "/no/such/dir"})).await;
    assert_eq!(status, 400, "{body}");
    daemon.stop().await;
}

/// Whether two processes share `what` (kcmp(2)); `None` where the kernel lacks kcmp.
fn shared(a: i32, b: i32, what: libc::c_long) -> Option<bool> {
    // SAFETY: kcmp only compares two processes' kernel objects.
    match unsafe { libc::syscall(libc::SYS_kcmp, a, b, what, 0, 0) } {
        -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) => None,
        -1 => panic!("kcmp({a}, {b}): {}", std::io::Error::last_os_error()),
        order => Some(order == 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_shares_the_spawners_memory_and_has_descriptors_of_its_own() {
    const KCMP_VM: libc::c_long = 1;
    const KCMP_FILES: libc::c_long = 2;
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    let spawner = spawner_of(&daemon).await;
    let body = json!({"code": daemon.code.to_string(), "command": "echo $PPID; sleep 100"});
    let request = client().post(format!("{}/api/v1/exec", relay.http())).header("accept", "text/event-stream");
    let mut resp = request.json(&body).send().await.unwrap();
    let reaper = first_line_number("the reaper's pid", &mut resp).await;
    assert_eq!(parent_and_name(reaper).map(|(parent, _)| parent), Some(spawner), "the reaper is the spawner's child");
    match shared(reaper, spawner, KCMP_VM) {
        None => eprintln!("skipped: this kernel has no kcmp(2)"),
        Some(vm) => {
            // A fork would copy the spawner's page tables for every command; the reaper shares them.
            assert!(vm, "the reaper {reaper} shares the spawner's memory");
            assert_eq!(shared(reaper, spawner, KCMP_FILES), Some(false), "its descriptor table is its own");
        }
    }
    drop(resp);
    daemon.stop().await;
}

/// Whether any process's command line holds `text` (its arguments joined by spaces).
fn a_process_runs(text: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<i32>().is_ok())).any(|e| {
        let pid: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        alive(pid) && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(text)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_start_the_spawner_lost_is_killed_and_the_caller_told() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    // The spawner ends right after the command's exec, before it answers.
    let envs = [(aic::daemon::spawner::TEST_LOSE_ENV, "1")];
    let daemon = DaemonProcess::start(&relay.ws(), &dir.path().join("daemon"), &envs).await;
    spawner_of(&daemon).await;
    // A duration of this run's own, so a sleep leaked by an earlier failed run is not taken for it.
    let sleep = format!("sleep {}", 90_000 + std::process::id());
    let command = format!("exec {sleep}");
    let (status, body) = exec(&relay.http(), json!({"code": daemon.code.to_string(), "command": command})).await;
    assert_ne!(status, 200, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("spawner ended")), "{body}");
    // It had started (its exec came first); the daemon killed it, pid unknown to the relay and caller.
    eventually("the lost command is killed", || !a_process_runs(&format!("{sleep} "))).await;
    // Later commands are forked by the daemon itself.
    let body = run(&relay.http(), daemon.code, "echo after").await;
    assert_eq!(body["stdout"], "after\n", "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_spawner_is_ended_after_the_start_limit_and_later_commands_run() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, daemon) = pair(dir.path()).await;
    let spawner = spawner_of(&daemon).await;
    let pid = rustix::process::Pid::from_raw(spawner).unwrap();
    // A command running as the daemon's user could do this.
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let command = "echo never";
    let (status, body) = exec(&relay.http(), json!({"code": daemon.code.to_string(), "command": command})).await;
    assert_ne!(status, 200, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("spawner ended")), "{body}");
    eventually("the stopped spawner is killed and reaped", || {
        !std::path::Path::new(&format!("/proc/{spawner}")).exists()
    })
    .await;
    let body = run(&relay.http(), daemon.code, "echo after").await;
    assert_eq!(body["stdout"], "after\n", "{body}");
    let log = daemon.stop().await;
    assert!(log.contains("did not answer a start within 10 s"), "{log}");
}
