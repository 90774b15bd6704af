//! Detached jobs over the REST API: they outlive their caller, the relay and
//! the daemon; their output is paged and followed; they are capped, cancelled
//! and deleted after retention; other callers cannot see them; and a request
//! retried under one Idempotency-Key runs its command once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{DaemonProcess, TestDaemon, TestRelay, client, console, daemon_config, eventually, within};
use serde_json::{Value, json};

/// `POST /api/v1/jobs`: status and body.
async fn start(relay: &str, key: Option<&str>, auth: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(format!("{relay}/api/v1/jobs")).json(&body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    if let Some(auth) = auth {
        req = req.bearer_auth(auth);
    }
    let resp = within("job start", req.send()).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// A GET or DELETE on the jobs API: status and body.
async fn call(method: reqwest::Method, url: String, auth: Option<&str>) -> (u16, Value) {
    let mut req = client().request(method, url);
    if let Some(auth) = auth {
        req = req.bearer_auth(auth);
    }
    let resp = within("job call", req.send()).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn get(url: String) -> Value {
    let (status, body) = call(reqwest::Method::GET, url, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits (bounded) until the job is in a final state; returns it.
async fn ended(relay: &str, code: &str, id: &str) -> Value {
    within(&format!("job {id} to end"), async {
        loop {
            let job = get(format!("{relay}/api/v1/jobs/{code}/{id}")).await["job"].clone();
            if !["pending", "running"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A shell loop that waits for `file` to exist (the test's signal to go on).
fn until(file: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.05; done", file.display())
}

/// Reads an event stream to its end: (event, data) pairs.
async fn events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let text = within("event stream", resp.text()).await.unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let event = block.lines().find_map(|l| l.strip_prefix("event: ")).map(str::to_owned);
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(event), Some(data)) = (event, data) {
            out.push((event, serde_json::from_str(data).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_its_caller_the_relay_and_a_killed_daemon_and_is_followed_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let addr = relay.addr.to_string();
    let state = dir.path().join("daemon");
    let mut daemon = DaemonProcess::start(&relay.ws(), &state, &[]).await;
    let code = daemon.code.to_string();
    let command = format!("echo one; {}; echo two; exit 3", until(&go));
    let (status, body) =
        start(&relay.http(), None, None, json!({"code": code, "command": command, "timeout_ms": 120000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "running");
    let id = body["jobId"].as_str().unwrap().to_owned();
    // Its first line is written (the pages below read it) before anything restarts.
    let spool = state.join("jobs").join(&id).join("out.0");
    eventually("the job wrote its first line", || std::fs::read(&spool).is_ok_and(|b| b == b"one\n")).await;

    // The relay restarts, and the daemon is killed and started again.
    relay.stop().await;
    let relay = TestRelay::start_with(aic::relay::Config::new(dir.path().join("relay")), &addr).await;
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();
    let daemon = DaemonProcess::start(&relay.ws(), &state, &[]).await;
    assert_eq!(daemon.code.to_string(), code);

    let http = relay.http();
    let job = get(format!("{http}/api/v1/jobs/{code}/{id}")).await["job"].clone();
    assert_eq!(job["state"], "running", "{job}");
    let listed = get(format!("{http}/api/v1/jobs/{code}")).await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    // Output so far, by pages of 2 bytes.
    let page = get(format!("{http}/api/v1/jobs/{code}/{id}/output?offset=0&limit=2")).await;
    assert_eq!(
        (page["text"].as_str(), page["nextOffset"].as_u64(), page["done"].as_bool()),
        (Some("on"), Some(2), Some(false))
    );
    let page = get(format!("{http}/api/v1/jobs/{code}/{id}/output?offset=2")).await;
    assert_eq!(page["text"], "e\n");

    // Followed live from offset 4: the rest arrives, then the end.
    let follow =
        client().get(format!("{http}/api/v1/jobs/{code}/{id}/output?offset=4")).header("accept", "text/event-stream");
    let resp = within("follow", follow.send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::write(&go, "").unwrap();
    let events = events(resp).await;
    let text: String = events.iter().filter(|(e, _)| e == "output").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert_eq!(text, "two\n");
    let (last, end) = events.last().unwrap();
    assert_eq!(last, "end");
    assert_eq!((end["job"]["state"].as_str(), end["job"]["exitCode"].as_i64()), (Some("exited"), Some(3)), "{end}");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_drops_the_oldest_and_the_job_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Auto);
    config.job_output_cap = 1000;
    let mut daemon = TestDaemon::start_with(config).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    let (_, body) = start(&http, None, None, json!({"code": code, "command": "seq 1 1000; echo done"})).await;
    let id = body["jobId"].as_str().unwrap().to_owned();
    let job = ended(&http, &code, &id).await;
    let written = (1..=1000).map(|n: u32| n.to_string().len() as u64 + 1).sum::<u64>() + 5;
    assert_eq!((job["state"].as_str(), job["exitCode"].as_i64()), (Some("exited"), Some(0)));
    assert_eq!(job["outputBytes"], written);
    let dropped = job["droppedBytes"].as_u64().unwrap();
    assert!(dropped > 0 && written - dropped <= 1000, "{job}");
    let page = get(format!("{http}/api/v1/jobs/{code}/{id}/output?offset=0")).await;
    assert_eq!(page["offset"], dropped, "output starts at the oldest byte kept");
    assert!(page["text"].as_str().unwrap().ends_with("999\n1000\ndone\n"), "{page}");
    assert_eq!(page["done"], true);
    // On disk: 0700 directories and 0600 files, the spool within the cap.
    use std::os::unix::fs::PermissionsExt;
    let job_dir = dir.path().join("daemon/jobs").join(&id);
    for (path, _) in common::files_under(&job_dir) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    for d in [dir.path().join("daemon/jobs"), job_dir] {
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_killed_and_ended_jobs_are_deleted_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Auto);
    config.job_retention = Duration::from_millis(300);
    let mut daemon = TestDaemon::start_with(config).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    let (status, body) =
        start(&http, None, None, json!({"code": code, "command": "echo started; exec sleep 60"})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["jobId"].as_str().unwrap().to_owned();
    // Wait for its first output, so SIGTERM meets the sleep.
    eventually("the job wrote", || {
        dir.path().join("daemon/jobs").join(&id).join("out.0").metadata().is_ok_and(|m| m.len() > 0)
    })
    .await;
    let (status, body) = call(reqwest::Method::DELETE, format!("{http}/api/v1/jobs/{code}/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    let job = ended(&http, &code, &id).await;
    assert_eq!((job["state"].as_str(), job["exitCode"].as_i64()), (Some("cancelled"), Some(143)), "{job}");

    // Past retention, the job and its output are gone from the machine.
    let job_dir = dir.path().join("daemon/jobs").join(&id);
    eventually("the job's directory is deleted", || !job_dir.exists()).await;
    let (status, body) = call(reqwest::Method::GET, format!("{http}/api/v1/jobs/{code}/{id}"), None).await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("not_found")), "{body}");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_cannot_see_or_cancel_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let (alice, bob) = (relay.account("alice@example.com").await, relay.account("bob@example.com").await);
    let http = relay.http();
    let (status, body) = start(&http, None, Some(&alice), json!({"code": code, "command": "echo secret"})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["jobId"].as_str().unwrap();
    for who in [Some(bob.as_str()), None] {
        for (method, url) in [
            (reqwest::Method::GET, format!("{http}/api/v1/jobs/{code}/{id}")),
            (reqwest::Method::GET, format!("{http}/api/v1/jobs/{code}/{id}/output")),
            (reqwest::Method::DELETE, format!("{http}/api/v1/jobs/{code}/{id}")),
        ] {
            let (status, body) = call(method, url, who).await;
            assert_eq!(status, 404, "{body}");
            assert!(!body.to_string().contains("secret"), "{body}");
        }
        let (status, body) = call(reqwest::Method::GET, format!("{http}/api/v1/jobs/{code}"), who).await;
        assert_eq!((status, body["jobs"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    }
    let (status, body) =
        call(reqwest::Method::GET, format!("{http}/api/v1/jobs/{code}/{id}/output"), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_runs_the_command_once_even_across_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let addr = relay.addr.to_string();
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let count = dir.path().join("count");
    let command = format!("echo ran >> '{}'; echo out; echo err >&2; exit 4", count.display());
    let exec = |http: String, key: &'static str, command: String| {
        let code = code.clone();
        async move {
            let req = client().post(format!("{http}/api/v1/exec")).header("idempotency-key", key);
            let resp = within("exec", req.json(&json!({"code": code, "command": command})).send()).await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = exec(relay.http(), "key-1", command.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["stdout"].as_str(), first["stderr"].as_str(), first["exitCode"].as_i64()),
        (Some("out\n"), Some("err\n"), Some(4))
    );

    relay.stop().await;
    let relay = TestRelay::start_with(aic::relay::Config::new(dir.path().join("relay")), &addr).await;
    daemon.online().await;
    let (status, again) = exec(relay.http(), "key-1", command.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\n", "the command ran once");

    // The same key with another command is refused and runs nothing.
    let (status, body) = exec(relay.http(), "key-1", format!("echo ran >> '{}'", count.display())).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("conflict")), "{body}");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\n");

    // A retry on the event stream gets the same result event.
    let req = client().post(format!("{}/api/v1/exec", relay.http())).header("idempotency-key", "key-1");
    let resp = req
        .header("accept", "text/event-stream")
        .json(&json!({"code": code, "command": command}))
        .send()
        .await
        .unwrap();
    let events = events(resp).await;
    let (last, result) = events.last().unwrap();
    assert_eq!((last.as_str(), result), ("result", &first));

    // Jobs too: the second start answers with the first job.
    let job_cmd = format!("echo job >> '{}'", count.display());
    let (_, one) = start(&relay.http(), Some("key-2"), None, json!({"code": code, "command": job_cmd})).await;
    let (_, two) = start(&relay.http(), Some("key-2"), None, json!({"code": code, "command": job_cmd})).await;
    assert_eq!((one["existing"].as_bool(), two["existing"].as_bool()), (Some(false), Some(true)));
    assert_eq!(one["jobId"], two["jobId"]);
    ended(&relay.http(), &code, one["jobId"].as_str().unwrap()).await;
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\njob\n");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_job_waits_for_approval_and_the_console_lists_and_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    let socket = config.socket.clone();
    let mut daemon = TestDaemon::start_with(config).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    let (status, body) =
        start(&http, None, None, json!({"code": code, "command": "echo approved; exec sleep 60"})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("pending")), "{body}");
    let id = body["jobId"].as_str().unwrap().to_owned();

    let listed = console(&socket, &["jobs", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stdout);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!((listed[0]["id"].as_str(), listed[0]["state"].as_str()), (Some(id.as_str()), Some("pending")));
    let said = console(&socket, &["approve", &id[..8]]).await;
    assert_eq!(said.code, 0, "{}", said.stdout);
    within("the approved job's output", async {
        while get(format!("{http}/api/v1/jobs/{code}/{id}/output?offset=0")).await["text"] != "approved\n" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let shown = console(&socket, &["jobs"]).await;
    let text = shown.stdout;
    assert!(
        shown.code == 0 && text.contains(&id[..8]) && text.contains("running") && text.contains("exec sleep 60"),
        "{text}"
    );
    let said = console(&socket, &["jobs", "cancel", &id[..8]]).await;
    assert_eq!(said.code, 0, "{}", said.stdout);
    let job = ended(&http, &code, &id).await;
    assert_eq!((job["state"].as_str(), job["exitCode"].as_i64()), (Some("cancelled"), Some(143)), "{job}");
    daemon.stop().await;
    relay.stop().await;
}

/// One JSON-RPC request on an MCP session (`None`: opens one); the session and the response.
async fn mcp(http: &str, session: Option<&str>, body: Value) -> (Option<String>, Value) {
    let mut req = client()
        .post(format!("{http}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(session) = session {
        req = req.header("mcp-session-id", session);
    }
    let resp = within("POST /mcp", req.json(&body).send()).await.unwrap();
    let session = resp.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    let text = within("the /mcp body", resp.text()).await.unwrap();
    let data = text.lines().filter_map(|l| l.strip_prefix("data:")).find(|d| !d.trim().is_empty());
    (session, data.map_or(Value::Null, |d| serde_json::from_str(d.trim()).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_declares_mcp_tasks_gets_remote_exec_as_a_task_backed_by_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        "clientInfo": {"name": "tasks-test", "version": "0"}
    }});
    let (session, _) = mcp(&http, None, init).await;
    let session = session.expect("a session");
    mcp(&http, Some(&session), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let call = |id: u64, command: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "remote_exec", "arguments": {"code": code, "command": command}}})
    };
    let (_, answer) = mcp(&http, Some(&session), call(2, "sleep 0.3; echo task-out")).await;
    let result = &answer["result"];
    assert_eq!(result["resultType"], "task", "{answer}");
    let task = result["task"]["taskId"].as_str().or(result["taskId"].as_str()).expect("a task id").to_owned();
    let get =
        |id: u64, task: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tasks/get", "params": {"taskId": task}});
    let done = within("the task to end", async {
        for n in 10.. {
            let (_, answer) = mcp(&http, Some(&session), get(n, &task)).await;
            if answer["result"]["status"] != "working" {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unreachable!()
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(done["result"]["result"]["structuredContent"]["stdout"], "task-out\n", "{done}");

    // tasks/cancel stops the job.
    let (_, answer) = mcp(&http, Some(&session), call(3, "exec sleep 60")).await;
    let task = answer["result"]["task"]["taskId"].as_str().or(answer["result"]["taskId"].as_str()).unwrap().to_owned();
    let cancel = json!({"jsonrpc": "2.0", "id": 4, "method": "tasks/cancel", "params": {"taskId": task}});
    let (_, answer) = mcp(&http, Some(&session), cancel).await;
    assert!(answer["error"].is_null(), "{answer}");
    let status = within("the cancelled task to end", async {
        for n in 1000.. {
            let (_, answer) = mcp(&http, Some(&session), get(n, &task)).await;
            if answer["result"]["status"] != "working" {
                return answer["result"]["status"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unreachable!()
    })
    .await;
    assert_eq!(status, "cancelled");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_machines_maximum_a_job_start_is_refused_and_a_job_cannot_act_as_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Auto);
    config.max_jobs = 1;
    let socket = config.socket.clone();
    let mut daemon = TestDaemon::start_with(config).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    // The one job tries to switch supervision off through the control socket.
    let console = env!("CARGO_BIN_EXE_aic-console");
    let command = format!("'{console}' --socket '{}' mode disabled; echo rc=$?; exec sleep 60", socket.display());
    let (status, body) = start(&http, None, None, json!({"code": code, "command": command})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["jobId"].as_str().unwrap().to_owned();

    let (status, body) = start(&http, None, None, json!({"code": code, "command": "true"})).await;
    assert_eq!((status, body["reason"].as_str()), (429, Some("rate_limited")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("already runs 1 jobs"), "{body}");

    let text = within("the job's attempt", async {
        loop {
            let text = get(format!("{http}/api/v1/jobs/{code}/{id}/output")).await["text"].as_str().unwrap().to_owned();
            if text.contains("rc=") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(text.contains("refused") && text.contains("rc=1"), "{text}");
    assert_eq!(console_mode(&socket).await, "auto");
    call(reqwest::Method::DELETE, format!("{http}/api/v1/jobs/{code}/{id}"), None).await;
    ended(&http, &code, &id).await;
    daemon.stop().await;
    relay.stop().await;
}

async fn console_mode(socket: &Path) -> String {
    let said = console(socket, &["mode"]).await;
    assert_eq!(said.code, 0, "{}", said.stdout);
    said.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_the_same_key_attaches_to_the_live_output_of_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let (go, count) = (dir.path().join("go"), dir.path().join("count"));
    let command = format!("echo ran >> '{}'; echo first; {}; echo second", count.display(), until(&go));
    let body = json!({"code": code, "command": command});
    let send = || {
        client()
            .post(format!("{}/api/v1/exec", relay.http()))
            .header("idempotency-key", "attach-1")
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
    };
    // The first caller sees the first line, then its connection breaks.
    let mut first = within("first request", send()).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = within("first output", first.chunk()).await.unwrap().expect("more of the stream");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(first);

    // The retry attaches: the output so far, the rest as it comes, one result.
    let second = within("retry", send()).await.unwrap();
    std::fs::write(&go, "").unwrap();
    let events = events(second).await;
    let text: String = events.iter().filter(|(e, _)| e == "output").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert_eq!(text, "first\nsecond\n");
    let (last, result) = events.last().unwrap();
    assert_eq!((last.as_str(), result["exitCode"].as_i64()), ("result", Some(0)), "{result}");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\n", "the command ran once");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_supervisor_is_killed_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let http = relay.http();
    let (_, body) = start(&http, None, None, json!({"code": code, "command": "exec sleep 60"})).await;
    let id = body["jobId"].as_str().unwrap().to_owned();
    let pids: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("daemon/jobs").join(&id).join("pid")).unwrap()).unwrap();
    let (supervisor, group) = (pids["supervisor"].as_i64().unwrap() as i32, pids["group"].as_i64().unwrap() as i32);
    let kill = rustix::process::Signal::KILL;
    rustix::process::kill_process(rustix::process::Pid::from_raw(supervisor).unwrap(), kill).unwrap();
    rustix::process::kill_process_group(rustix::process::Pid::from_raw(group).unwrap(), kill).unwrap();
    let job = ended(&http, &code, &id).await;
    assert_eq!(job["state"], "lost", "{job}");
    assert!(job["message"].as_str().unwrap().contains("supervisor ended"), "{job}");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_remembers_idempotency_keys_across_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let state = dir.path().join("daemon");
    let mut daemon = TestDaemon::start(&relay.ws(), &state).await;
    let code = daemon.online().await.to_string();
    let count = dir.path().join("count");
    let body = json!({"code": code, "command": format!("echo ran >> '{}'", count.display())});
    let (_, first) = start(&relay.http(), Some("restart-key"), None, body.clone()).await;
    ended(&relay.http(), &code, first["jobId"].as_str().unwrap()).await;
    daemon.stop().await;
    let mut daemon = TestDaemon::start(&relay.ws(), &state).await;
    daemon.online().await;
    let (status, again) = start(&relay.http(), Some("restart-key"), None, body).await;
    assert_eq!((status, again["existing"].as_bool()), (200, Some(true)), "{again}");
    assert_eq!(again["jobId"], first["jobId"]);
    assert_eq!(again["job"]["state"], "exited");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "ran\n");
    daemon.stop().await;
    relay.stop().await;
}

/// An MCP session on `http` whose client declares the tasks extension.
async fn tasks_session(http: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        "clientInfo": {"name": "tasks-test", "version": "0"}
    }});
    let session = mcp(http, None, init).await.0.expect("a session");
    mcp(http, Some(&session), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    session
}

/// `tasks/get` of `task`: the whole JSON-RPC answer.
async fn task_get(http: &str, session: &str, task: &str) -> Value {
    let get = json!({"jsonrpc": "2.0", "id": 7, "method": "tasks/get", "params": {"taskId": task}});
    mcp(http, Some(session), get).await.1
}

/// Asserts that `answer` refuses `task` as an unknown task.
fn refused_as_unknown(answer: &Value, task: &str) {
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(answer["error"]["message"], format!("no task {task} on this relay"), "{answer}");
    assert!(answer["result"].is_null(), "{answer}");
}

/// `task` with its middle character changed to another base64url character.
fn tampered(task: &str) -> String {
    let mut bytes = task.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Asserts that `task` holds neither `code` nor its base64 in clear.
fn code_not_in(task: &str, code: &str) {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    assert!(!task.contains(code), "{task}");
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        for skip in 0..3 {
            // Only the characters that depend on the code's bytes alone.
            let aligned = engine.encode([&b"xx"[..skip], code.as_bytes()].concat());
            let part = &aligned[(8 * skip).div_ceil(6)..aligned.len() - 2];
            assert!(!task.contains(part), "{task} holds {part}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_task_outlives_a_relay_restart_and_a_garbled_or_foreign_id_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let relay = common::RelayProcess::start(&dir.path().join("relay"), &[], &[]).await;
    let addr = relay.addr.to_string();
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.to_string();
    let session = tasks_session(&relay.http()).await;
    let command = format!("{}; echo after-restart", until(&go));
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "remote_exec", "arguments": {"code": code, "command": command}}});
    let (_, answer) = mcp(&relay.http(), Some(&session), call).await;
    let result = &answer["result"];
    let task = result["task"]["taskId"].as_str().or(result["taskId"].as_str()).expect("a task id").to_owned();
    code_not_in(&task, &code);
    assert_eq!(task_get(&relay.http(), &session, &task).await["result"]["status"], "working");

    // The relay stops and starts again on the same data dir; the daemon comes back.
    relay.stop().await;
    daemon.offline().await;
    let relay = common::RelayProcess::start_on(&dir.path().join("relay"), &addr, &[], &[]).await;
    assert_eq!(daemon.online().await.to_string(), code);
    let http = relay.http();
    let session = tasks_session(&http).await;
    let answer = task_get(&http, &session, &task).await;
    assert_eq!(answer["result"]["status"], "working", "{answer}");
    std::fs::write(&go, "").unwrap();
    let done = within("the task to end", async {
        loop {
            let done = task_get(&http, &session, &task).await;
            if done["result"]["status"] != "working" {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(done["result"]["result"]["structuredContent"]["stdout"], "after-restart\n", "{done}");

    // Refused alike: an id never issued, one with a character changed, one cut
    // short, and one sealed under another secret (this relay's, at another).
    let other = TestRelay::start(&dir.path().join("other")).await;
    let other_session = tasks_session(&other.http()).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for bad in [unknown, tampered(&task), task[..task.len() - 4].to_owned()] {
        refused_as_unknown(&task_get(&http, &session, &bad).await, &bad);
    }
    refused_as_unknown(&task_get(&other.http(), &other_session, &task).await, &task);
    other.stop().await;
    daemon.stop().await;
    relay.stop().await;
}
