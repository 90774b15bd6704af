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
