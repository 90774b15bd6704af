//! What must never be written down: command text, command output, codes and
//! tokens in plain text.

mod common;

use common::*;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_text_and_output_reach_no_file_and_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_dir, daemon_dir) = (dir.path().join("relay"), dir.path().join("daemon"));
    // Debug logging on both sides, to catch a leak at any level a user might turn on.
    let log = [("AIC_LOG", "debug")];
    let relay = RelayProcess::start(&relay_dir, &[], &log).await;
    let daemon = DaemonProcess::start(&relay.ws(), &daemon_dir, &log).await;

    let canary = format!("canary-{}", uuid::Uuid::new_v4());
    let out_canary = canary.to_uppercase();
    let command = format!("echo {canary} | tr a-z A-Z; echo {canary} >&2");
    let body = run(&relay.http(), daemon.code, &command).await;
    assert_eq!(body["stdout"], format!("{out_canary}\n"));
    let resp = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"code": daemon.code.to_string(), "command": command, "pty": true}))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains(&out_canary));

    let code = daemon.code.to_string();
    let daemon_log = daemon.stop().await;
    let relay_log = relay.stop().await;

    for (name, log) in [("relay", &relay_log), ("daemon", &daemon_log)] {
        assert!(!log.contains(&canary), "{name}'s stderr holds the command:\n{log}");
        assert!(!log.contains(&out_canary), "{name}'s stderr holds the output:\n{log}");
    }
    assert!(!relay_log.contains(&code), "the relay logged the code:\n{relay_log}");
    for (path, bytes) in files_under(&relay_dir).into_iter().chain(files_under(&daemon_dir)) {
        assert!(!contains(&bytes, canary.as_bytes()), "{} holds the command", path.display());
        assert!(!contains(&bytes, out_canary.as_bytes()), "{} holds the output", path.display());
    }
    for (path, bytes) in files_under(&relay_dir) {
        assert!(!contains(&bytes, code.as_bytes()), "{} holds the code in plain text", path.display());
        assert!(!contains(&bytes, &code.as_bytes()[4..]), "{} holds the code in plain text", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let state = std::fs::metadata(dir.path().join("daemon/state.json")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::metadata(dir.path().join("relay/secret.key")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    let data_dir = std::fs::metadata(dir.path().join("relay")).unwrap();
    assert_eq!(data_dir.permissions().mode() & 0o777, 0o700);
    daemon.stop().await;
}

/// POSTs a JSON-RPC message to `/mcp`; returns the session id it answered with and the body.
async fn mcp_post(http: &str, session: Option<&str>, body: serde_json::Value) -> (Option<String>, String) {
    let mut request =
        client().post(format!("{http}/mcp")).header("accept", "application/json, text/event-stream").json(&body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let resp = within("POST /mcp", request.send()).await.unwrap();
    let session = resp.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    (session, within("the /mcp body", resp.text()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_leave_no_command_output_or_code_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // The MCP library logs whole messages at trace; asking for them must not get them.
    let log = [("AIC_LOG", "trace,rmcp=trace")];
    let relay = RelayProcess::start(&dir.path().join("relay"), &[], &log).await;
    let daemon = DaemonProcess::start(&relay.ws(), &dir.path().join("daemon"), &[]).await;
    let canary = format!("canary-{}", uuid::Uuid::new_v4());
    let out_canary = canary.to_uppercase();
    let code = daemon.code.to_string();
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "remote_exec",
        "arguments": {"code": code, "command": format!("echo {canary} | tr a-z A-Z")}
    }});

    let (_, body) = mcp_post(&relay.http(), None, call.clone()).await;
    assert!(body.contains(&out_canary), "stateless call ran: {body}");
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}
    }});
    let (session, _) = mcp_post(&relay.http(), None, init).await;
    let session = session.expect("a session");
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    mcp_post(&relay.http(), Some(&session), initialized).await;
    let (_, body) = mcp_post(&relay.http(), Some(&session), call).await;
    assert!(body.contains(&out_canary), "call in a session ran: {body}");

    daemon.stop().await;
    let relay_log = relay.stop().await;
    assert!(relay_log.contains("listening"), "the log is there to check: {relay_log}");
    assert!(!relay_log.contains(&canary), "the relay logged the command:\n{relay_log}");
    assert!(!relay_log.contains(&out_canary), "the relay logged the output:\n{relay_log}");
    assert!(!relay_log.contains(&code), "the relay logged the code:\n{relay_log}");
}

/// Everything in the files of `dir`, as text (nothing while `dir` is not there yet).
fn read_all(dir: &std::path::Path) -> String {
    if !dir.exists() {
        return String::new();
    }
    files_under(dir).into_iter().map(|(_, bytes)| String::from_utf8_lossy(&bytes).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_files_hold_no_command_output_code_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_logs, daemon_logs) = (dir.path().join("relay-logs"), dir.path().join("daemon-logs"));
    let mut relay = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"));
    relay.args(["--listen", "127.0.0.1:0", "--log-level", "debug", "--data-dir"]).arg(dir.path().join("relay"));
    let relay = relay.arg("--log-dir").arg(&relay_logs).kill_on_drop(true).spawn().unwrap();
    // The relay logs to its file only; its address is read from there.
    eventually("the relay's log names its address", || read_all(&relay_logs).contains("listening on http://")).await;
    let text = read_all(&relay_logs);
    let at = text.find("listening on http://").unwrap() + "listening on http://".len();
    let addr = text[at..].split_whitespace().next().unwrap().to_string();

    let state = dir.path().join("daemon");
    let args = ["--mode", "auto", "--log-level", "debug", "--log-dir", daemon_logs.to_str().unwrap()];
    let daemon = DaemonProcess::start_with_args(&format!("ws://{addr}"), &state, &args, &[]).await;
    let canary = format!("canary-{}", uuid::Uuid::new_v4());
    let body = run(&format!("http://{addr}"), daemon.code, &format!("echo {canary} | tr a-z A-Z")).await;
    assert_eq!(body["stdout"], format!("{}\n", canary.to_uppercase()));
    let code = daemon.code.to_string();
    let stderr = daemon.stop().await;
    terminate(&relay);

    let token = std::fs::read_to_string(state.join("state.json")).unwrap();
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    let token = token["credentials"]["token"].as_str().expect("the agent token").to_string();
    let (relay_text, daemon_text) = (read_all(&relay_logs), read_all(&daemon_logs));
    assert!(daemon_text.contains("linked to"), "the daemon's log file lacks its log lines:\n{daemon_text}");
    assert!(!stderr.contains("linked to"), "with --log-dir, logs still went to stderr:\n{stderr}");
    for (name, text) in [("relay", &relay_text), ("daemon", &daemon_text)] {
        for secret in [canary.as_str(), &canary.to_uppercase(), &code, &code[4..], &token] {
            assert!(!text.contains(secret), "{name}'s log file holds {secret}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_contents_reach_no_log_and_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_dir, daemon_dir) = (dir.path().join("relay"), dir.path().join("daemon"));
    let log = [("AIC_LOG", "debug")];
    let relay = RelayProcess::start(&relay_dir, &[], &log).await;
    let daemon = DaemonProcess::start(&relay.ws(), &daemon_dir, &log).await;

    let canary = format!("file-canary-{}", uuid::Uuid::new_v4());
    let path = dir.path().join("pushed.txt");
    let url = format!("{}/api/v1/files/{}?path={}", relay.http(), daemon.code, path.display());
    let pushed = client().put(&url).body(canary.clone()).send().await.unwrap();
    assert_eq!(pushed.status(), 201);
    let pulled = client().get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(pulled, canary);

    let daemon_log = daemon.stop().await;
    let relay_log = relay.stop().await;
    for (name, log) in [("relay", &relay_log), ("daemon", &daemon_log)] {
        assert!(!log.contains(&canary), "{name}'s stderr holds the file's contents:\n{log}");
    }
    for (path, bytes) in files_under(&relay_dir).into_iter().chain(files_under(&daemon_dir)) {
        assert!(!contains(&bytes, canary.as_bytes()), "{} holds the file's contents", path.display());
    }
}
