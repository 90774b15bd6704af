//! Remote exec end to end: a real relay and daemon on loopback, driven
//! through the REST API as a client would.

mod common;

use common::*;
use serde_json::json;

async fn pair() -> (tempfile::TempDir, TestRelay, TestDaemon) {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    (dir, relay, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_stdout_stderr_and_exit_code() {
    let (_dir, relay, daemon) = pair().await;
    let body = run(&relay.http(), daemon.code(), "echo out; echo err >&2; exit 3").await;
    assert_eq!(body["ok"], true);
    assert_eq!(body["exitCode"], 3);
    assert_eq!(body["stdout"], "out\n");
    assert_eq!(body["stderr"], "err\n");
    assert_eq!(body["truncated"], false);
    assert_eq!(body["timedOut"], false);
    assert!(body["durationMs"].is_u64());
    assert!(body.get("stdoutBase64").is_none(), "valid UTF-8 needs no base64: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_is_accepted_in_any_case_without_dashes() {
    let (_dir, relay, daemon) = pair().await;
    let loose = daemon.code().to_string().to_lowercase().replace('-', "");
    let (status, body) = exec(&relay.http(), json!({"code": loose, "command": "echo hi"})).await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("hi\n")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_output_arrives_exactly_in_base64() {
    use base64::Engine;
    let (_dir, relay, daemon) = pair().await;
    let body = run(&relay.http(), daemon.code(), r"printf 'a\377\000b'; printf '\300' >&2").await;
    assert_eq!(body["stdout"], "a\u{fffd}\u{0}b");
    let exact = base64::engine::general_purpose::STANDARD.decode(body["stdoutBase64"].as_str().unwrap()).unwrap();
    assert_eq!(exact, b"a\xff\x00b");
    let exact = base64::engine::general_purpose::STANDARD.decode(body["stderrBase64"].as_str().unwrap()).unwrap();
    assert_eq!(exact, b"\xc0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_is_honoured_and_a_missing_one_is_a_clear_error() {
    let (dir, relay, daemon) = pair().await;
    let code = daemon.code().to_string();
    let cwd = dir.path().canonicalize().unwrap();
    let (status, body) = exec(&relay.http(), json!({"code": code, "command": "pwd", "cwd": cwd})).await;
    assert_eq!(status, 200);
    assert_eq!(body["stdout"], format!("{}\n", cwd.display()));

    let (status, body) = exec(&relay.http(), json!({"code": code, "command": "pwd", "cwd": "/no/such/dir"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "bad_request");
    assert!(body["error"].as_str().unwrap().contains("\"/no/such/dir\" does not exist"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_get_a_non_interactive_environment() {
    let (_dir, relay, daemon) = pair().await;
    let body = run(
        &relay.http(),
        daemon.code(),
        "echo $DEBIAN_FRONTEND $CI $TERM $PAGER $SYSTEMD_PAGER $GIT_TERMINAL_PROMPT; read x; echo read=$?",
    )
    .await;
    assert_eq!(body["stdout"], "noninteractive true dumb cat cat 0\nread=1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let (_dir, relay, daemon) = pair().await;
    let (status, body) = exec(
        &relay.http(),
        json!({"code": daemon.code().to_string(), "command": "echo $$; sleep 100 & sleep 100", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timedOut"], true);
    assert_eq!(body["exitCode"], 128 + 15, "killed by SIGTERM");
    let pgid: i32 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    eventually("no process left in the command's group", || group_members(pgid).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_capped_at_one_mebibyte_and_the_command_killed() {
    let (_dir, relay, daemon) = pair().await;
    // `yes` never ends by itself: only the cap stops it.
    let body = run(&relay.http(), daemon.code(), "yes aic").await;
    assert_eq!(body["truncated"], true);
    assert_eq!(body["timedOut"], false);
    let stdout = body["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 1024 * 1024);
    assert!(stdout.starts_with("aic\naic\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_mode_gives_the_command_a_terminal() {
    let (_dir, relay, daemon) = pair().await;
    let (status, body) = exec(
        &relay.http(),
        json!({"code": daemon.code().to_string(), "command": "test -t 1 && echo tty", "pty": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "tty\r\n");
    let body = run(&relay.http(), daemon.code(), "test -t 1 && echo tty || echo pipe").await;
    assert_eq!(body["stdout"], "pipe\n");
}

/// Reads the rest of an SSE response after `text`, the part already read,
/// into (event name or ":comment", data) pairs.
async fn sse_events(mut text: String, resp: reqwest::Response) -> Vec<(String, String)> {
    text.push_str(&within("the event stream to end", resp.text()).await.unwrap());
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let (mut name, mut data) = (String::new(), String::new());
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                name = format!(":{}", c.trim());
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.into();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        events.push((name, data));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_sends_heartbeats_output_then_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.heartbeat = std::time::Duration::from_millis(50);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;

    // The command goes on once the test has seen its first line and a heartbeat after it.
    let gate = dir.path().join("gate");
    let command = format!(
        "echo one; while [ ! -e {} ]; do sleep 0.02; done; echo two >&2; printf '\\342\\202'; printf '\\254'",
        gate.display()
    );
    let mut resp = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .header("accept", "text/event-stream")
        .json(&json!({"code": daemon.code().to_string(), "command": command}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    within("a heartbeat after the first line", async {
        while !seen.split_once(r#""text":"one\n""#).is_some_and(|(_, after)| after.contains(": heartbeat")) {
            seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().expect("more of the stream")));
        }
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let events = sse_events(seen, resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"result"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "result").count(), 1);
    assert!(names.contains(&":heartbeat"), "{names:?}");

    let outputs: Vec<serde_json::Value> =
        events.iter().filter(|(n, _)| n == "output").map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    // Each stream in order (the two pipes are read side by side, so their
    // events may interleave either way).
    let texts = |stream: &str| -> Vec<String> {
        outputs.iter().filter(|o| o["stream"] == stream).map(|o| o["text"].as_str().unwrap().to_owned()).collect()
    };
    let stdout = texts("stdout");
    assert_eq!(stdout[0], "one\n");
    // A character split across two writes arrives whole.
    assert_eq!(stdout[1..].concat(), "€");
    assert_eq!(texts("stderr"), ["two\n"]);
    assert!(outputs.iter().all(|o| o.get("base64").is_none()), "{outputs:?}");

    let result: serde_json::Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(result["stdout"], "one\n€");
    assert_eq!(result["stderr"], "two\n");
    assert_eq!(result["exitCode"], 0);
    // The heartbeat comes before the output that follows the wait.
    let first_heartbeat = names.iter().position(|n| *n == ":heartbeat").unwrap();
    assert!(first_heartbeat < names.iter().rposition(|n| *n == "output").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_expired_codes_get_byte_identical_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.anonymous_window = std::time::Duration::ZERO;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let unknown = aic::protocol::SessionCode::generate().to_string();
    let expired = daemon.code().to_string();

    let raw = |code: String| {
        let http = relay.http();
        async move {
            let exec = client()
                .post(format!("{http}/api/v1/exec"))
                .json(&json!({"code": code, "command": "echo should-not-run"}))
                .send()
                .await
                .unwrap();
            let exec = (exec.status().as_u16(), exec.bytes().await.unwrap());
            let status = client().get(format!("{http}/api/v1/status/{code}")).send().await.unwrap();
            let status = (status.status().as_u16(), status.bytes().await.unwrap());
            (exec, status)
        }
    };
    let (a, b) = (raw(unknown).await, raw(expired).await);
    assert_eq!(a, b, "refusals must not tell which codes exist");
    assert_eq!(a.0.0, 403);
    let body: serde_json::Value = serde_json::from_slice(&a.0.1).unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["reason"], "anonymous_expired");
    assert!(body["error"].as_str().unwrap().contains("Authorization: Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_online_agent_info_and_fresh_minutes() {
    let (_dir, relay, daemon) = pair().await;
    let code = daemon.code().to_string();
    let body: serde_json::Value = client()
        .get(format!("{}/api/v1/status/{}", relay.http(), code.to_lowercase()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["code"], code);
    assert_eq!(body["online"], true);
    assert_eq!(body["agentInfo"]["os"], std::env::consts::OS);
    assert_eq!(body["agentInfo"]["capabilities"], json!(["pty", "jobs", "files", "output_frames", "output_chunk"]));
    assert!(body["freshMinutes"].as_u64().unwrap() >= 58, "{body}");

    daemon.stop().await;
    let body: serde_json::Value =
        client().get(format!("{}/api/v1/status/{code}", relay.http())).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["online"], false);
    let (status, body) = exec(&relay.http(), json!({"code": code, "command": "true"})).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("agent_offline")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors() {
    let (_dir, relay, daemon) = pair().await;
    let url = format!("{}/api/v1/exec", relay.http());
    let send = |body: Vec<u8>| {
        let url = url.clone();
        async move {
            let resp = client().post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = send(b"{not json".to_vec()).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("bad_request")));
    assert!(body["error"].as_str().unwrap().contains("is not the JSON"), "{body}");

    let (status, body) = send(br#"{"code":"AIC-7K3P-WX9M-RTBN"}"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("missing field `command`"), "{body}");

    let (status, body) = send(br#"{"code":"AIC-7K3P-WX9M-RTBI","command":"true"}"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("never contain I, L, O or U"), "{body}");

    let code = daemon.code().to_string();
    let (status, body) = send(serde_json::to_vec(&json!({"code": code, "command": "  "})).unwrap()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("command is empty"), "{body}");

    let huge = "x".repeat(300 * 1024);
    let (status, body) = send(serde_json::to_vec(&json!({"code": code, "command": huge})).unwrap()).await;
    assert_eq!((status, body["reason"].as_str()), (413, Some("too_large")));

    let resp = client().get(format!("{}/nope", relay.http())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["reason"], "not_found");

    // The relay is none the worse for any of it.
    assert_eq!(run(&relay.http(), daemon.code(), "echo fine").await["stdout"], "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers() {
    let (_dir, relay, _daemon) = pair().await;
    let body: serde_json::Value =
        client().get(format!("{}/api/health", relay.http())).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_keeps_the_code_and_the_daemon_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let addr = relay.addr.to_string();
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.code();

    relay.stop().await;
    daemon.offline().await;
    let relay = TestRelay::start_with(aic::relay::Config::new(dir.path().join("relay")), &addr).await;
    assert_eq!(daemon.online().await, code);
    assert_eq!(run(&relay.http(), code, "echo back").await["stdout"], "back\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restart_keeps_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.code();
    daemon.stop().await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    assert_eq!(daemon.code(), code);
    assert_eq!(run(&relay.http(), code, "echo same").await["stdout"], "same\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_never_see_each_others_commands() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let a = DaemonProcess::start(&relay.ws(), &dir.path().join("a"), &[]).await;
    let b = DaemonProcess::start(&relay.ws(), &dir.path().join("b"), &[]).await;
    assert_ne!(a.code, b.code);
    for (daemon, pid) in [(&a, a.child.id().unwrap()), (&b, b.child.id().unwrap())] {
        for _ in 0..5 {
            // The command's parent is its reaper, forked by the daemon's spawner, the daemon's child.
            let command = "spawner=$(cut -d' ' -f4 /proc/$PPID/stat); cut -d' ' -f4 /proc/$spawner/stat";
            let body = run(&relay.http(), daemon.code, command).await;
            assert_eq!(body["stdout"], format!("{pid}\n"), "the command ran on the daemon its code names");
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_only_their_own_output() {
    let (_dir, relay, daemon) = pair().await;
    let code = daemon.code();
    let calls = (0..4).map(|i| {
        let http = relay.http();
        async move {
            let cmd = format!("for n in $(seq 200); do echo caller-{i}; done; sleep 0.05; echo caller-{i} >&2");
            (i, run(&http, code, &cmd).await)
        }
    });
    for (i, body) in futures_util::future::join_all(calls).await {
        assert_eq!(body["stdout"], format!("caller-{i}\n").repeat(200));
        assert_eq!(body["stderr"], format!("caller-{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_has_its_command_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.heartbeat = std::time::Duration::from_millis(100);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;

    // Streaming caller: learns the pid from the first output event, then goes.
    let (pid, body) = start_sleeper(&relay, daemon.code()).await;
    assert!(alive(pid));
    drop(body);
    eventually("the streaming caller's command is killed", || !alive(pid)).await;

    // Buffered caller on a raw socket: the command reports its pid through a file.
    let pid_file = dir.path().join("pid");
    let cmd = format!("echo $$ > {}; exec sleep 100", pid_file.display());
    let req_body = json!({"code": daemon.code().to_string(), "command": cmd}).to_string();
    let mut sock = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let request = format!(
        "POST /api/v1/exec HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{req_body}",
        req_body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut sock, request.as_bytes()).await.unwrap();
    let mut pid = None;
    eventually("the buffered command starts", || {
        pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
        pid.is_some()
    })
    .await;
    let pid = pid.unwrap();
    assert!(alive(pid));
    drop(sock);
    eventually("the buffered caller's command is killed", || !alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_the_output_is_killed_at_the_timeout() {
    let (_dir, relay, daemon) = pair().await;
    let (status, body) = exec(
        &relay.http(),
        json!({"code": daemon.code().to_string(), "command": "echo $$; sleep 100 &", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timedOut"], true, "{body}");
    let pgid: i32 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    eventually("no process left in the command's group", || group_members(pgid).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_with_its_output_redirected_keeps_running() {
    let (_dir, relay, daemon) = pair().await;
    let body = run(&relay.http(), daemon.code(), "sleep 100 >/dev/null 2>&1 & echo $!").await;
    assert_eq!(body["timedOut"], false);
    let pid: i32 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(alive(pid), "a server started with & and its output redirected is left running");
    let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_detached_itself_is_killed_at_the_timeout_too() {
    let (_dir, relay, daemon) = pair().await;
    // A double fork into a session of its own, deaf to SIGTERM, holding none of the output.
    let command = "(setsid sh -c 'trap \"\" TERM; exec sleep 300' >/dev/null 2>&1 & echo $!); sleep 100";
    let (status, body) =
        exec(&relay.http(), json!({"code": daemon.code().to_string(), "command": command, "timeout_ms": 2000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timedOut"], true, "{body}");
    let pid: i32 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    eventually("the detached `sleep 300` is killed with its command", || !alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_takes_a_detached_process_with_it() {
    let (_dir, relay, daemon) = pair().await;
    a_hang_up_kills_what_the_command_detached(&relay.http(), &daemon.code().to_string()).await;
}

/// Starts `echo $$; exec sleep 100` through an event stream and returns the pid once it runs.
async fn start_sleeper(relay: &TestRelay, code: aic::protocol::SessionCode) -> (i32, reqwest::Response) {
    let mut resp = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .header("accept", "text/event-stream")
        .json(&json!({"code": code.to_string(), "command": "echo $$; exec sleep 100"}))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    let pid = within("the pid", async {
        loop {
            seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().unwrap()));
            if let Some(start) = seen.find("\"text\":\"") {
                let rest = &seen[start + 8..];
                if let Some(end) = rest.find("\\n") {
                    return rest[..end].parse().unwrap();
                }
            }
        }
    })
    .await;
    (pid, resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_die_with_the_link_that_carried_them() {
    let (_dir, relay, mut daemon) = pair().await;
    let (pid, _resp) = start_sleeper(&relay, daemon.code()).await;
    assert!(alive(pid));
    relay.stop().await;
    daemon.offline().await;
    eventually("the command is killed when its link goes", || !alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_kills_its_commands_first() {
    let (_dir, relay, daemon) = pair().await;
    let (pid, _resp) = start_sleeper(&relay, daemon.code()).await;
    daemon.stop().await;
    eventually("the command is killed at shutdown", || !alive(pid)).await;
}
