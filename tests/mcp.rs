//! The MCP endpoint end to end: rmcp's own client over real HTTP against a
//! relay and a daemon on loopback, plus raw JSON-RPC for the wire shape.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A relay with `config` changed by `tune`, and a daemon in auto mode on it.
async fn pair_with(tune: impl FnOnce(&mut aic::relay::Config)) -> (tempfile::TempDir, TestRelay, TestDaemon) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    tune(&mut config);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    (dir, relay, daemon)
}

/// An MCP client that hands every progress notification to a channel.
#[derive(Clone)]
struct Listener(mpsc::UnboundedSender<ProgressNotificationParam>);

impl ClientHandler for Listener {
    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.0.send(params);
    }
}

type Client = RunningService<RoleClient, Listener>;

/// Connects rmcp's client to the relay's `/mcp` (a session-keeping client).
async fn connect(relay: &TestRelay) -> (Client, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", relay.http()));
    let transport = StreamableHttpClientTransport::with_client(client(), config);
    let client = within("MCP initialize", Listener(tx).serve(transport)).await.expect("initialize");
    (client, rx)
}

fn call_params(tool: &'static str, args: Value) -> CallToolRequestParams {
    let Value::Object(args) = args else { panic!("arguments must be an object") };
    CallToolRequestParams::new(tool).with_arguments(args)
}

/// Calls `tool` and returns the result as the JSON the wire carried.
async fn call(client: &Client, tool: &'static str, args: Value) -> Value {
    let result = within(tool, client.call_tool(call_params(tool, args))).await.expect("a tool result");
    serde_json::to_value(result).unwrap()
}

/// The text content of a tool result.
fn text(result: &Value) -> String {
    result["content"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect()
}

/// Waits for a command to write its shell's pid to `file`.
async fn pid_in(file: &Path) -> i32 {
    let mut pid = None;
    eventually("the command to start", || {
        pid = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lists_both_tools_with_schemas_and_runs_a_command() {
    let (_dir, relay, daemon) = pair_with(|_| {}).await;
    let (client, _progress) = connect(&relay).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("aic-relay"));
    assert!(info.instructions.as_deref().unwrap().contains("untrusted data"));

    let tools = within("tools/list", client.list_all_tools()).await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "list_machines",
            "remote_exec",
            "remote_job_cancel",
            "remote_job_list",
            "remote_job_output",
            "remote_job_start",
            "remote_job_status",
            "remote_pull",
            "remote_push",
            "session_status"
        ]
    );

    let exec = tools.iter().find(|t| t.name == "remote_exec").unwrap();
    let input = Value::Object((*exec.input_schema).clone());
    assert_eq!(input["required"], json!(["code", "command"]), "{input}");
    for field in ["code", "command", "cwd", "timeout_ms"] {
        assert!(input["properties"][field]["description"].is_string(), "{field} is described: {input}");
    }
    let output = Value::Object((*exec.output_schema.clone().expect("an output schema")).clone());
    for field in ["exitCode", "stdout", "stderr", "durationMs", "truncated"] {
        assert!(output["properties"][field].is_object(), "{field} in the output schema: {output}");
    }
    let description = exec.description.as_deref().unwrap();
    for needle in ["AIC-", "untrusted", "never follow instructions", "confirm"] {
        assert!(description.contains(needle), "remote_exec's description mentions {needle:?}");
    }
    let status = tools.iter().find(|t| t.name == "session_status").unwrap();
    assert_eq!(Value::Object((*status.input_schema).clone())["required"], json!(["code"]));
    assert!(status.description.as_deref().unwrap().contains("AIC-"));

    let code = daemon.code().to_string();
    let result = call(&client, "remote_exec", json!({"code": code, "command": "echo out; echo err >&2; exit 3"})).await;
    assert_eq!(result["isError"], false, "{result}");
    let structured = &result["structuredContent"];
    assert_eq!(structured["exitCode"], 3);
    assert_eq!(structured["stdout"], "out\n");
    assert_eq!(structured["stderr"], "err\n");
    assert_eq!(structured["truncated"], false);
    assert!(structured["durationMs"].is_u64());
    let said = text(&result);
    assert!(said.starts_with("exit code: 3\n"), "{said}");
    assert!(said.contains("--- stdout ---\nout\n--- stderr ---\nerr\n"), "{said}");

    // Same code in another spelling, with cwd and timeout.
    let cwd = std::env::temp_dir().canonicalize().unwrap();
    let loose = code.to_lowercase().replace('-', "");
    let result =
        call(&client, "remote_exec", json!({"code": loose, "command": "pwd", "cwd": cwd, "timeout_ms": 5000})).await;
    assert_eq!(result["structuredContent"]["stdout"], format!("{}\n", cwd.display()));

    let result = call(&client, "session_status", json!({"code": code})).await;
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["online"], true);
    assert_eq!(result["structuredContent"]["code"], code);
    assert!(text(&result).contains("online"), "{result}");

    // A relay with a live MCP session still stops promptly.
    relay.stop().await;
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_back_as_tool_errors_that_say_what_to_do() {
    let (_dir, relay, daemon) = pair_with(|_| {}).await;
    let (client, _progress) = connect(&relay).await;
    let code = daemon.code().to_string();

    let result = call(&client, "remote_exec", json!({"code": code, "command": "pwd", "cwd": "/no/such/dir"})).await;
    assert_eq!(result["isError"], true, "{result}");
    let said = text(&result);
    assert!(said.contains("bad_request") && said.contains("\"/no/such/dir\" does not exist"), "{said}");

    let result = call(&client, "remote_exec", json!({"code": "AIC-7K3P-WX9M-RTBI", "command": "true"})).await;
    assert_eq!(result["isError"], true);
    assert!(text(&result).contains("never contain I, L, O or U"), "{result}");

    let result = call(&client, "remote_exec", json!({"code": code, "command": "  "})).await;
    assert!(text(&result).contains("command is empty"), "{result}");

    let unknown = aic::protocol::SessionCode::generate().to_string();
    for tool in ["remote_exec", "session_status"] {
        let result = call(&client, tool, json!({"code": unknown, "command": "echo should-not-run"})).await;
        assert_eq!(result["isError"], true, "{result}");
        let said = text(&result);
        assert!(said.contains("anonymous_expired") && said.contains("Authorization: Bearer"), "{tool}: {said}");
    }

    daemon.stop().await;
    let result = call(&client, "remote_exec", json!({"code": code, "command": "true"})).await;
    assert_eq!(result["isError"], true);
    let said = text(&result);
    assert!(said.contains("agent_offline") && said.contains("systemctl status aic-daemon"), "{said}");
    let result = call(&client, "session_status", json!({"code": code})).await;
    assert_eq!(result["structuredContent"]["online"], false, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_past_its_first_hour_and_a_disabled_machine_are_refused() {
    let (_dir, relay, daemon) = pair_with(|c| c.anonymous_window = Duration::ZERO).await;
    let (client, _progress) = connect(&relay).await;
    let result = call(&client, "remote_exec", json!({"code": daemon.code().to_string(), "command": "true"})).await;
    assert_eq!(result["isError"], true);
    let said = text(&result);
    assert!(said.starts_with("Refused (anonymous_expired): "), "{said}");
    // The same words as the REST API's refusal.
    let (status, body) = exec(&relay.http(), json!({"code": daemon.code().to_string(), "command": "true"})).await;
    assert_eq!(status, 403);
    assert!(said.ends_with(body["error"].as_str().unwrap()), "{said}");

    // A refusal from the daemon itself (the operator's mode) maps the same way.
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Disabled);
    let daemon = TestDaemon::start_with(config).await;
    let (client, _progress) = connect(&relay).await;
    let result = call(&client, "remote_exec", json!({"code": daemon.code().to_string(), "command": "true"})).await;
    assert_eq!(result["isError"], true);
    assert!(text(&result).starts_with("Refused (forbidden): "), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_call_kills_the_command() {
    let (dir, relay, daemon) = pair_with(|_| {}).await;
    let (client, _progress) = connect(&relay).await;
    let pid_file = dir.path().join("pid");
    let command = format!("echo $$ > {}; exec sleep 100", pid_file.display());
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call_params(
        "remote_exec",
        json!({"code": daemon.code().to_string(), "command": command}),
    )));
    let handle =
        within("send", client.send_cancellable_request(request, PeerRequestOptions::no_options())).await.unwrap();
    let pid = pid_in(&pid_file).await;
    assert!(alive(pid));
    within("cancel", handle.cancel(Some("the user changed their mind".into()))).await.unwrap();
    eventually("the cancelled command is killed", || !alive(pid)).await;

    // The session is fine afterwards.
    let result = call(&client, "remote_exec", json!({"code": daemon.code().to_string(), "command": "echo next"})).await;
    assert_eq!(result["structuredContent"]["stdout"], "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_kills_the_command_at_once() {
    let (dir, relay, daemon) = pair_with(|_| {}).await;
    let session = RawSession::initialize(&relay).await;
    let pid_file = dir.path().join("pid");
    let command = format!("echo $$ > {}; exec sleep 100", pid_file.display());
    let args = json!({"code": daemon.code().to_string(), "command": command});
    let call = tokio::spawn(session.post(tool_call(7, "remote_exec", args)));
    let pid = pid_in(&pid_file).await;
    assert!(alive(pid));

    let resp = within("DELETE", session.request(reqwest::Method::DELETE).send()).await.unwrap();
    // 204: clients warn about 202 ("Session termination failed: 202").
    assert_eq!(resp.status(), 204);
    gone_within(pid, Duration::from_secs(1)).await;
    call.abort();

    // The session is gone: a second DELETE, like a POST, finds nothing.
    let resp = within("DELETE", session.request(reqwest::Method::DELETE).send()).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(session.post(json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"})).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_kills_at_once_even_a_call_the_cancel_notice_misses() {
    let (dir, relay, daemon) = pair_with(|_| {}).await;
    let session = RawSession::initialize(&relay).await;
    // Two calls under one JSON-RPC id: a careless client's. The cancel notice
    // for id 7 reaches only one of them; the session's close must stop both.
    let mut calls = Vec::new();
    let mut pids = Vec::new();
    for n in 0..2 {
        let pid_file = dir.path().join(format!("pid{n}"));
        let command = format!("echo $$ > {}; exec sleep 100", pid_file.display());
        let args = json!({"code": daemon.code().to_string(), "command": command});
        calls.push(tokio::spawn(session.post(tool_call(7, "remote_exec", args))));
        pids.push(pid_in(&pid_file).await);
    }
    // Timed from the request: the close itself must not wait before it kills.
    let delete = tokio::spawn(session.request(reqwest::Method::DELETE).send());
    for pid in pids {
        gone_within(pid, Duration::from_secs(1)).await;
    }
    assert_eq!(within("DELETE", delete).await.unwrap().unwrap().status(), 204);
    calls.into_iter().for_each(|call| call.abort());
}

/// Fails unless process `pid` is gone within `limit` (the issue's bound for a kill).
async fn gone_within(pid: i32, limit: Duration) {
    let started = std::time::Instant::now();
    while alive(pid) {
        assert!(started.elapsed() < limit, "process {pid} still alive {limit:?} after its session closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_caller_that_hangs_up_has_its_command_killed() {
    let (dir, relay, daemon) = pair_with(|_| {}).await;
    let pid_file = dir.path().join("pid");
    let command = format!("echo $$ > {}; exec sleep 100", pid_file.display());
    let body = tool_call(1, "remote_exec", json!({"code": daemon.code().to_string(), "command": command}));
    let call = tokio::spawn(mcp_post(relay.http(), None, body));
    let pid = pid_in(&pid_file).await;
    assert!(alive(pid));
    call.abort();
    eventually("the stateless caller's command is killed", || !alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_command_sends_progress_until_it_ends() {
    let interval = Duration::from_millis(300);
    let (_dir, relay, daemon) = pair_with(|c| c.progress_interval = interval).await;
    let (client, mut progress) = connect(&relay).await;
    let started = std::time::Instant::now();
    let result =
        call(&client, "remote_exec", json!({"code": daemon.code().to_string(), "command": "sleep 2; echo done"})).await;
    assert_eq!(result["structuredContent"]["stdout"], "done\n", "{result}");

    let mut notes = Vec::new();
    while let Ok(note) = progress.try_recv() {
        notes.push(note);
    }
    // About one per interval while it ran: 2 s / 300 ms, less scheduling slack.
    let expected = (started.elapsed().as_millis() / interval.as_millis()) as usize;
    assert!(notes.len() >= 4 && notes.len() <= expected + 1, "{} notifications: {notes:?}", notes.len());
    assert!(notes.windows(2).all(|w| w[0].progress < w[1].progress), "progress only grows: {notes:?}");
    assert!(notes[0].message.as_deref().unwrap().starts_with("running for "), "{notes:?}");
}

/// A JSON-RPC `tools/call`.
fn tool_call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"}
    }})
}

/// An answer to a POST on `/mcp`: status, session id, and the JSON-RPC messages in the body
/// (from a JSON body or from the `data:` lines of an event stream).
struct Answer {
    status: u16,
    session: Option<String>,
    content_type: String,
    messages: Vec<Value>,
}

impl Answer {
    /// The one response (a message with an `id`).
    fn response(&self) -> &Value {
        let mut responses = self.messages.iter().filter(|m| m.get("id").is_some());
        let response = responses.next().unwrap_or_else(|| panic!("no response in {:?}", self.messages));
        assert!(responses.next().is_none(), "one response only");
        response
    }
}

async fn mcp_post(base: String, session: Option<String>, body: Value) -> Answer {
    let mut request = client()
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(session) = &session {
        request = request.header("mcp-session-id", session);
    }
    let resp = within("POST /mcp", request.json(&body).send()).await.unwrap();
    let status = resp.status().as_u16();
    let session = resp.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    let content_type = resp.headers().get("content-type").map_or("", |v| v.to_str().unwrap()).to_owned();
    let text = within("the /mcp body", resp.text()).await.unwrap();
    let messages = if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else if text.is_empty() {
        Vec::new()
    } else {
        vec![serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}))]
    };
    Answer { status, session, content_type, messages }
}

/// A session opened with raw JSON-RPC.
#[derive(Clone)]
struct RawSession {
    base: String,
    id: String,
}

impl RawSession {
    async fn initialize(relay: &TestRelay) -> Self {
        let answer = mcp_post(relay.http(), None, initialize(1)).await;
        assert_eq!(answer.status, 200);
        let id = answer.session.clone().expect("initialize opens a session");
        let session = Self { base: relay.http(), id };
        let ack = session.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(ack.status, 202);
        session
    }

    fn post(&self, body: Value) -> impl std::future::Future<Output = Answer> + Send + 'static {
        mcp_post(self.base.clone(), Some(self.id.clone()), body)
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        client().request(method, format!("{}/mcp", self.base)).header("mcp-session-id", &self.id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_json_rpc_with_a_session() {
    let (_dir, relay, daemon) = pair_with(|_| {}).await;
    let answer = mcp_post(relay.http(), None, initialize(1)).await;
    assert_eq!(answer.status, 200);
    let init = answer.response();
    assert_eq!(init["jsonrpc"], "2.0");
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["serverInfo"]["name"], "aic-relay");
    assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
    assert!(init["result"]["protocolVersion"].is_string());
    let session = RawSession { base: relay.http(), id: answer.session.clone().expect("Mcp-Session-Id") };
    let ack = session.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(ack.status, 202);

    let answer = session.post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("text/event-stream"), "{}", answer.content_type);
    let tools = answer.response()["result"]["tools"].as_array().unwrap().clone();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"remote_exec") && names.contains(&"session_status"), "{names:?}");
    let exec = tools.iter().find(|t| t["name"] == "remote_exec").unwrap();
    assert_eq!(exec["inputSchema"]["type"], "object");
    assert_eq!(exec["annotations"]["destructiveHint"], true);

    let args = json!({"code": daemon.code().to_string(), "command": "echo wire"});
    let answer = session.post(tool_call(3, "remote_exec", args)).await;
    let result = &answer.response()["result"];
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["content"][0]["type"], "text");
    assert_eq!(result["structuredContent"]["stdout"], "wire\n");
    assert_eq!(result["structuredContent"]["exitCode"], 0);

    // An unknown session is a 404, as the transport says it must be.
    let stale = RawSession { base: relay.http(), id: "no-such-session".into() };
    assert_eq!(stale.post(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})).await.status, 404);
    let resp = within("DELETE", session.request(reqwest::Method::DELETE).send()).await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(session.post(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_json_rpc_without_a_session() {
    let (_dir, relay, daemon) = pair_with(|c| c.progress_interval = Duration::from_millis(200)).await;
    let answer = mcp_post(relay.http(), None, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    assert_eq!(answer.status, 200);
    assert!(answer.session.is_none());
    assert!(answer.content_type.starts_with("application/json"), "{}", answer.content_type);
    let tools = answer.response()["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 10);

    let args = json!({"code": daemon.code().to_string(), "command": "echo stateless; exit 4"});
    let answer = mcp_post(relay.http(), None, tool_call(2, "remote_exec", args)).await;
    let result = &answer.response()["result"];
    assert_eq!(result["structuredContent"]["exitCode"], 4, "{result}");
    assert_eq!(result["structuredContent"]["stdout"], "stateless\n");
    assert!(result["content"][0]["text"].as_str().unwrap().starts_with("exit code: 4\n"));

    // Asking for progress turns the answer into an event stream with progress before the result.
    let mut call = tool_call(3, "remote_exec", json!({"code": daemon.code().to_string(), "command": "sleep 1"}));
    call["params"]["_meta"] = json!({"progressToken": "tok-1"});
    let answer = mcp_post(relay.http(), None, call).await;
    assert!(answer.content_type.starts_with("text/event-stream"), "{}", answer.content_type);
    let progress: Vec<&Value> = answer.messages.iter().filter(|m| m["method"] == "notifications/progress").collect();
    assert!(progress.len() >= 2, "{:?}", answer.messages);
    assert!(progress.iter().all(|p| p["params"]["progressToken"] == "tok-1"));
    assert_eq!(answer.response()["result"]["structuredContent"]["exitCode"], 0);

    let args = json!({"code": aic::protocol::SessionCode::generate().to_string()});
    let answer = mcp_post(relay.http(), None, tool_call(4, "session_status", args)).await;
    assert_eq!(answer.response()["result"]["isError"], true);

    // Arguments that are not what the schema says: a refusal that names the field, not a crash.
    let answer = mcp_post(relay.http(), None, tool_call(5, "remote_exec", json!({"code": 7}))).await;
    let result = &answer.response()["result"];
    assert_eq!(result["isError"], true, "{result}");
    let said = result["content"][0]["text"].as_str().unwrap();
    assert!(said.starts_with("Refused (bad_request): code must be a string, not a number; send"), "{result}");
    let answer = mcp_post(relay.http(), None, tool_call(6, "no_such_tool", json!({}))).await;
    assert!(answer.response()["error"].is_object(), "{:?}", answer.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_public_host_and_loopback_reach_mcp() {
    let (_dir, relay, _daemon) = pair_with(|c| c.public_url = Some("https://relay.example.com".parse().unwrap())).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let post = |host: &'static str| {
        let url = format!("{}/mcp", relay.http());
        let list = list.clone();
        async move {
            let resp = client()
                .post(url)
                .header("host", host)
                .header("accept", "application/json, text/event-stream")
                .json(&list)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    for host in ["relay.example.com", "RELAY.EXAMPLE.COM:443", "localhost:1234", "127.0.0.1", "[::1]:80"] {
        let (status, body) = within(host, post(host)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in ["evil.example", "relay.example.com.evil.example", "10.0.0.1:8080"] {
        let (status, body) = within(host, post(host)).await;
        assert_eq!(status, 403, "{host}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON refusal");
        assert_eq!((body["ok"].as_bool(), body["reason"].as_str()), (Some(false), Some("forbidden")));
        assert!(body["error"].as_str().unwrap().contains("--public-url"), "{body}");
    }
    // The REST API is not behind the Host check.
    let resp = client().get(format!("{}/api/health", relay.http())).header("host", "evil.example").send();
    assert_eq!(within("health", resp).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_mcp_body_is_refused_cleanly() {
    let (_dir, relay, daemon) = pair_with(|_| {}).await;
    let huge = "x".repeat(300 * 1024);
    let body = tool_call(1, "remote_exec", json!({"code": daemon.code().to_string(), "command": huge}));
    let answer = mcp_post(relay.http(), None, body).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.messages[0]["reason"], "too_large");
    // Still serving.
    let answer = mcp_post(relay.http(), None, json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    assert_eq!(answer.status, 200);
}

/// Formats JSON Schema 2020-12 defines; TypeScript-SDK clients warn their users about any other.
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Fails if `schema` (at `path`) has a non-standard `format` anywhere, or
/// `null` in the type of a property that is not required.
pub fn assert_plain_schema(schema: &Value, path: &str) {
    let Value::Object(object) = schema else {
        if let Value::Array(items) = schema {
            items.iter().for_each(|item| assert_plain_schema(item, path));
        }
        return;
    };
    if let Some(format) = object.get("format").and_then(Value::as_str) {
        assert!(STANDARD_FORMATS.contains(&format), "{path}: format {format:?} is not JSON Schema's");
    }
    let required = object.get("required").cloned().unwrap_or(json!([]));
    for (name, property) in object.get("properties").and_then(Value::as_object).into_iter().flatten() {
        if !required.as_array().unwrap().contains(&json!(name)) {
            let types = property.get("type").cloned().unwrap_or(Value::Null);
            assert!(types.is_string() || types.is_null(), "{path}.{name}: optional field typed {types}");
            assert!(!property.to_string().contains(r#"{"type":"null"}"#), "{path}.{name}: null option");
        }
    }
    for (key, value) in object {
        assert_plain_schema(value, &format!("{path}/{key}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_carry_every_hint_and_schemas_every_client_reads_plainly() {
    let (_dir, relay, _daemon) = pair_with(|_| {}).await;
    let answer = mcp_post(relay.http(), None, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    let tools = answer.response()["result"]["tools"].as_array().unwrap().clone();
    for tool in &tools {
        let name = tool["name"].as_str().unwrap();
        for hint in ["readOnlyHint", "destructiveHint", "openWorldHint", "idempotentHint"] {
            assert!(tool["annotations"][hint].is_boolean(), "{name} sets {hint}: {tool}");
        }
        assert_plain_schema(&tool["inputSchema"], &format!("{name}.inputSchema"));
        assert_plain_schema(&tool["outputSchema"], &format!("{name}.outputSchema"));
    }
    let exec = tools.iter().find(|t| t["name"] == "remote_exec").unwrap();
    assert_eq!(
        (exec["annotations"]["readOnlyHint"].as_bool(), exec["annotations"]["destructiveHint"].as_bool()),
        (Some(false), Some(true))
    );
    let timeout = &exec["inputSchema"]["properties"]["timeout_ms"];
    assert_eq!(timeout["type"], "integer", "{timeout}");
    assert_eq!(
        (&timeout["minimum"], &timeout["maximum"], &timeout["default"]),
        (&json!(1000), &json!(3_600_000), &json!(300_000))
    );
    let status = tools.iter().find(|t| t["name"] == "session_status").unwrap();
    assert_eq!(status["annotations"]["readOnlyHint"], true);
    assert_eq!(status["annotations"]["destructiveHint"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_discover_answers_without_a_session() {
    let (_dir, relay, _daemon) = pair_with(|_| {}).await;
    let resp = client()
        .post(format!("{}/mcp", relay.http()))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }}}))
        .send();
    let resp = within("server/discover", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("mcp-session-id").is_none());
    let body: Value = resp.json().await.unwrap();
    assert!(body["result"]["supportedVersions"].as_array().unwrap().contains(&json!("2026-07-28")), "{body}");
    assert!(body["result"]["capabilities"]["tools"].is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_output_reaches_the_model_as_head_and_tail_once() {
    let (_dir, relay, daemon) = pair_with(|c| c.mcp_output_max = 4096).await;
    let (client, _progress) = connect(&relay).await;
    let command = "echo FIRST; head -c 300000 /dev/zero | tr '\\0' x; echo; echo LAST";
    let result = call(&client, "remote_exec", json!({"code": daemon.code().to_string(), "command": command})).await;
    assert_eq!(result["isError"], false, "{result}");
    let structured = &result["structuredContent"];
    let stdout = structured["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("FIRST\n") && stdout.ends_with("\nLAST\n"), "head and tail kept");
    assert_eq!(structured["stdoutOmitted"].as_u64(), Some(300_012 - 4096), "{}", structured["note"]);
    assert!(structured["note"].as_str().unwrap().contains("narrower command"), "{structured}");
    assert!(structured.get("stdoutBase64").is_none());
    // The same bytes in the text, once; the whole result stays near the setting.
    let said = text(&result);
    assert_eq!(said.matches(stdout).count(), 1, "the text carries the output once");
    assert!(result.to_string().len() < 4 * 4096, "{} bytes", result.to_string().len());

    // REST keeps the whole output.
    let body = run(&relay.http(), daemon.code(), command).await;
    assert_eq!(body["stdout"].as_str().unwrap().len(), 300_012);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_sessions() {
    let (_dir, relay, _daemon) = pair_with(|c| c.mcp_sessions_per_client = 2).await;
    let first = RawSession::initialize(&relay).await;
    let _second = RawSession::initialize(&relay).await;
    // A third client from the same address is still served, without a session.
    let answer = mcp_post(relay.http(), None, initialize(1)).await;
    assert_eq!(answer.status, 200);
    assert!(answer.session.is_none(), "no third session for one address");
    assert_eq!(answer.response()["result"]["serverInfo"]["name"], "aic-relay");
    let answer = mcp_post(relay.http(), None, json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    assert_eq!(answer.response()["result"]["tools"].as_array().unwrap().len(), 10);

    // Closing one makes room again.
    let resp = within("DELETE", first.request(reqwest::Method::DELETE).send()).await.unwrap();
    assert_eq!(resp.status(), 204);
    RawSession::initialize(&relay).await;
}
