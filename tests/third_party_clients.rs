//! The relay as third-party MCP clients see it: the official MCP Python SDK
//! (pinned in tests/clients/requirements.txt, installed by `.ci/run`) drives
//! the real `aic-relay` and `aic-daemon` binaries through
//! tests/clients/python_sdk.py, and this test asserts on what it reports.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The Python of the SDK's virtualenv: `AIC_MCP_PYTHON`, else where `.ci/run` makes it.
fn sdk_python() -> Option<PathBuf> {
    let path = match std::env::var_os("AIC_MCP_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/aic-ci/mcp-python/bin/python"),
    };
    path.exists().then_some(path)
}

/// Whether this is a CI run, where a missing client is a failure rather than a skip.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// What the script printed, by step (steps run once per connection mode repeat).
fn steps(stdout: &str) -> HashMap<String, Vec<Value>> {
    let mut steps: HashMap<String, Vec<Value>> = HashMap::new();
    for line in stdout.lines() {
        let step: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: a line that is not JSON: {line}"));
        steps.entry(step["step"].as_str().unwrap().to_owned()).or_default().push(step);
    }
    steps
}

/// The one or more reports of `step`.
fn all<'a>(steps: &'a HashMap<String, Vec<Value>>, step: &str) -> &'a [Value] {
    steps.get(step).unwrap_or_else(|| panic!("the script never reported {step}: {steps:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_uses_every_tool_and_closes_cleanly() {
    let Some(python) = sdk_python() else {
        assert!(!under_ci(), "the MCP Python SDK virtualenv is missing; .ci/run creates it (or set AIC_MCP_PYTHON)");
        eprintln!(
            "\n*** SKIPPED the_official_python_sdk_uses_every_tool_and_closes_cleanly: no MCP Python SDK virtualenv \
(run the venv step of .ci/run, or set AIC_MCP_PYTHON). Under CI this fails. ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&dir.path().join("relay"), &[], &[("AIC_LOG", "info")]).await;
    let daemon = DaemonProcess::start(&relay.ws(), &dir.path().join("daemon"), &[]).await;
    let pid_file = dir.path().join("pid");
    let key = account_key(&dir.path().join("relay")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_sdk.py");
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .arg(format!("{}/mcp", relay.http()))
        .arg(daemon.code.to_string())
        .arg(&pid_file)
        .arg(&key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the script finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let steps = steps(&stdout);

    // The session closed during `sleep 60`: its process is gone within 1 s.
    let pid = all(&steps, "sleeping")[0]["pid"].as_i64().unwrap() as i32;
    let closed = std::time::Instant::now();
    while alive(pid) {
        assert!(closed.elapsed() < Duration::from_secs(1), "the closed session's `sleep` (pid {pid}) still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // DELETE answered 200 or 204: the SDK warned about nothing.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(all(&steps, "warnings")[0]["warnings"], json!([]), "{stdout}\n{stderr}");

    // Each connection mode's keyed remote_exec ran once, though it was sent twice.
    let count = std::fs::read_to_string(format!("{}.count", pid_file.display())).unwrap();
    assert_eq!(count, "once\nonce\n");
    check_connections(&steps);
    check_tools(all(&steps, "tools"));
    check_calls(&steps);
    check_machines(&steps);

    let log = relay.stop().await;
    assert!(!log.contains('\u{1b}'), "no colour codes when stderr is not a terminal:\n{log}");
    assert!(!log.contains("ERROR"), "closing a session with a call running logs no error:\n{log}");
    daemon.stop().await;
}

/// Modern clients discover the server (`server/discover`, no session); legacy ones initialize.
fn check_connections(steps: &HashMap<String, Vec<Value>>) {
    let connected = all(steps, "connected");
    assert_eq!(connected[0]["mode"], "auto");
    assert_eq!(connected[0]["protocol"], "2026-07-28", "server/discover answered: {connected:?}");
    assert_eq!(connected[1]["mode"], "legacy");
    assert!(connected[1]["protocol"].as_str().unwrap() < "2026-07-28", "{connected:?}");
}

/// Every tool has every hint, and schemas with no null-typed optional field and no foreign format.
fn check_tools(lists: &[Value]) {
    const FORMATS: [&str; 5] = ["uint", "int32", "int64", "uint32", "uint64"];
    for list in lists {
        let tools = list["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 10, "{list}");
        for tool in tools {
            for hint in ["readOnlyHint", "destructiveHint", "openWorldHint", "idempotentHint"] {
                assert!(tool["annotations"][hint].is_boolean(), "{} lacks {hint}", tool["name"]);
            }
            let schemas = format!("{}{}", tool["inputSchema"], tool["outputSchema"]);
            assert!(!schemas.contains("\"null\""), "{}: null in a schema: {schemas}", tool["name"]);
            for format in FORMATS {
                assert!(!schemas.contains(&format!("\"format\":\"{format}\"")), "{}: format {format}", tool["name"]);
            }
        }
        let exec = tools.iter().find(|t| t["name"] == "remote_exec").unwrap();
        let timeout = &exec["inputSchema"]["properties"]["timeout_ms"];
        assert_eq!(
            (&timeout["type"], &timeout["minimum"], &timeout["maximum"], &timeout["default"]),
            (&json!("integer"), &json!(1000), &json!(3_600_000), &json!(300_000))
        );
    }
}

/// What each call returned, in both connection modes.
fn check_calls(steps: &HashMap<String, Vec<Value>>) {
    for step in ["timeout_number", "timeout_string"] {
        for report in all(steps, step) {
            assert_eq!(report["is_error"], false, "{report}");
            assert_eq!(report["structured"]["stdout"], "hi\n", "{report}");
        }
    }
    let refusals = [
        ("wrong_type", "Refused (bad_request): timeout_ms must be a whole number of milliseconds from 1000 to 3600000"),
        (
            "out_of_range",
            "Refused (bad_request): timeout_ms must be a whole number of milliseconds from 1000 to 3600000",
        ),
        ("missing_field", "Refused (bad_request): command is missing; send the shell text to run"),
    ];
    for (step, words) in refusals {
        for report in all(steps, step) {
            assert_eq!(report["is_error"], true, "{report}");
            assert!(report["text"].as_str().unwrap().starts_with(words), "{step}: {report}");
        }
    }
    for report in all(steps, "truncated") {
        let structured = &report["structured"];
        assert_eq!((&structured["truncated"], &report["is_error"]), (&json!(true), &json!(false)));
        assert!(structured["stdoutOmitted"].as_u64().unwrap() > 900_000, "{}", structured["note"]);
        // About 32 KiB of output, in the text and in the structured content, once each.
        for size in ["text_bytes", "structured_bytes"] {
            let bytes = report[size].as_u64().unwrap();
            assert!((32 * 1024..40 * 1024).contains(&bytes), "{size}: {bytes}");
        }
        let text = report["text"].as_str().unwrap();
        assert_eq!(text.matches(structured["stdout"].as_str().unwrap()).count(), 1);
    }
    for report in all(steps, "status") {
        assert_eq!((&report["is_error"], &report["structured"]["online"]), (&json!(false), &json!(true)));
    }
    check_jobs(steps);
}

/// A job started and read to its end by offset; a keyed remote_exec sent twice gives one result.
fn check_jobs(steps: &HashMap<String, Vec<Value>>) {
    for report in all(steps, "job_started") {
        assert_eq!(
            (&report["is_error"], &report["structured"]["state"]),
            (&json!(false), &json!("running")),
            "{report}"
        );
    }
    for report in all(steps, "job_output") {
        assert_eq!(
            (&report["text"], &report["state"], &report["exit_code"]),
            (&json!("job-out\njob-end\n"), &json!("exited"), &json!(0))
        );
    }
    let (first, again) = (all(steps, "keyed_first"), all(steps, "keyed_again"));
    assert_eq!(first.len(), 2);
    for (first, again) in first.iter().zip(again) {
        assert_eq!(first["structured"]["stdout"], "ran\n", "{first}");
        assert_eq!(first["structured"], again["structured"]);
    }
}

/// An account's API key, made with `aic-relay account add` beside the running relay.
async fn account_key(data_dir: &std::path::Path) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["--json", "--data-dir"])
        .arg(data_dir)
        .args(["account", "add", "sdk@example.com"])
        .output();
    let out = within("aic-relay account add", out).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    added["key"].as_str().unwrap().to_owned()
}

/// `list_machines`: a 401 refusal in words without an account, the linked machine with one.
fn check_machines(steps: &HashMap<String, Vec<Value>>) {
    let refused = &all(steps, "machines_anonymous")[0];
    assert_eq!(refused["is_error"], true, "{refused}");
    assert!(refused["text"].as_str().unwrap().starts_with("Refused (unauthorized): Listing machines needs an account"));
    let listed = &all(steps, "machines")[0];
    assert_eq!(listed["is_error"], false, "{listed}");
    let machine = &listed["structured"]["machines"][0];
    assert_eq!((machine["online"].as_bool(), machine["link"].as_str()), (Some(true), Some("active")), "{listed}");
    assert_eq!(machine["hostname"].as_str(), Some(aic::daemon::link::agent_info().hostname.as_str()));
}
