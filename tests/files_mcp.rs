//! Files and machines as MCP clients and account holders see them: small
//! files in the tool result, large ones through one-use links, and an
//! account's machine list and aliases.

mod common;

use std::time::Duration;

use aic::daemon::Mode;
use common::*;
use serde_json::{Value, json};

struct Site {
    dir: tempfile::TempDir,
    relay: TestRelay,
    daemon: TestDaemon,
}

async fn site(tune: impl FnOnce(&mut aic::relay::Config)) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    tune(&mut config);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(Mode::Auto);
    let daemon = TestDaemon::start_with(config).await;
    Site { dir, relay, daemon }
}

/// Calls an MCP tool statelessly; returns the JSON-RPC result.
async fn call(site: &Site, key: Option<&str>, tool: &str, args: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}});
    let mut req = client()
        .post(format!("{}/mcp", site.relay.http()))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = within("tools/call", req.send()).await.unwrap();
    let answer: Value = within("its body", resp.json()).await.unwrap();
    answer["result"].clone()
}

fn texts(result: &Value) -> Vec<String> {
    result["content"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str().map(str::to_owned)).collect()
}

fn link_of(result: &Value) -> String {
    let link = result["content"].as_array().unwrap().iter().find(|c| c["type"] == "resource_link").expect("a link");
    link["uri"].as_str().unwrap().to_owned()
}

fn code(site: &Site) -> String {
    site.daemon.code().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_come_in_the_result_and_go_from_it() {
    let site = site(|_| {}).await;
    let path = site.dir.path().join("app.conf");
    let args = json!({"code": code(&site), "path": path, "content": "port = 8080\n", "mode": "0600"});
    let result = call(&site, None, "remote_push", args.clone()).await;
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(std::fs::read(&path).unwrap(), b"port = 8080\n");
    let refused = call(&site, None, "remote_push", args).await;
    assert_eq!(refused["isError"], true);
    assert!(texts(&refused)[0].starts_with("Refused (exists)"), "{refused}");

    let result = call(&site, None, "remote_pull", json!({"code": code(&site), "path": path})).await;
    assert_eq!(texts(&result)[1], "port = 8080\n", "{result}");

    let bin = site.dir.path().join("blob");
    std::fs::write(&bin, [0u8, 1, 2, 255]).unwrap();
    let result = call(&site, None, "remote_pull", json!({"code": code(&site), "path": bin})).await;
    let resource = &result["content"][1]["resource"];
    assert_eq!(resource["blob"], "AAEC/w==", "{result}");

    let args = json!({"code": code(&site), "path": site.dir.path().join("b2"), "content_base64": "AAEC/w=="});
    assert_eq!(call(&site, None, "remote_push", args).await["isError"], false);
    assert_eq!(std::fs::read(site.dir.path().join("b2")).unwrap(), [0u8, 1, 2, 255]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_move_through_links_that_work_once_and_expire() {
    let site = site(|c| c.mcp_inline_max = 1024).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let path = site.dir.path().join("release.tgz");
    std::fs::write(&path, &big).unwrap();

    let result = call(&site, None, "remote_pull", json!({"code": code(&site), "path": path})).await;
    assert!(texts(&result)[0].contains("stops working after one use"), "{result}");
    let url = link_of(&result);
    assert!(url.starts_with(&site.relay.http()), "{url}");
    let resp = within("the download", client().get(&url).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(within("its bytes", resp.bytes()).await.unwrap().to_vec(), big);
    let again = within("a second download", client().get(&url).send()).await.unwrap();
    assert_eq!(again.status(), 410, "a link works once");

    let copy = site.dir.path().join("copy.tgz");
    let result = call(&site, None, "remote_push", json!({"code": code(&site), "path": copy})).await;
    let url = link_of(&result);
    let resp = within("the upload", client().put(&url).body(big.clone()).send()).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(std::fs::read(&copy).unwrap(), big);
    let again = within("a second upload", client().put(&url).body(big.clone()).send()).await.unwrap();
    assert_eq!(again.status(), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_stop_working_when_they_expire() {
    let site = site(|c| {
        c.mcp_inline_max = 0;
        c.file_link_ttl = Duration::from_millis(300);
    })
    .await;
    let path = site.dir.path().join("log");
    std::fs::write(&path, b"some lines\n").unwrap();
    let result = call(&site, None, "remote_pull", json!({"code": code(&site), "path": path})).await;
    let url = link_of(&result);
    // The one wait in this file: the link's lifetime, made short for the test.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = within("a late download", client().get(&url).send()).await.unwrap();
    assert_eq!(resp.status(), 410);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("expired"), "{body}");
}

async fn machines(site: &Site, key: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{}/api/v1/machines", site.relay.http()));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = within("GET /api/v1/machines", req.send()).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn rename(site: &Site, key: &str, alias: &str, new: &str) -> (u16, Value) {
    let req = client()
        .patch(format!("{}/api/v1/machines/{alias}", site.relay.http()))
        .bearer_auth(key)
        .json(&json!({"alias": new}));
    let resp = within("PATCH /api/v1/machines", req.send()).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_lists_and_renames_its_machines() {
    let site = site(|_| {}).await;
    let (status, body) = machines(&site, None).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("unauthorized")));
    assert!(body["error"].as_str().unwrap().contains("needs an account"), "{body}");
    let refused = call(&site, None, "list_machines", json!({})).await;
    assert!(texts(&refused)[0].starts_with("Refused (unauthorized): Listing machines needs an account"), "{refused}");

    let key = site.relay.account("ops@example.com").await;
    let (_, body) = machines(&site, Some(&key)).await;
    assert_eq!(body["machines"], json!([]));
    // A first command links the machine under its host name.
    let run = json!({"code": code(&site), "command": "true"});
    let resp = client().post(format!("{}/api/v1/exec", site.relay.http())).bearer_auth(&key).json(&run);
    assert_eq!(within("exec", resp.send()).await.unwrap().status(), 200);
    let (status, body) = machines(&site, Some(&key)).await;
    assert_eq!(status, 200);
    let machine = &body["machines"][0];
    let host = aic::daemon::link::agent_info().hostname;
    assert_eq!((machine["alias"].as_str(), machine["online"].as_bool()), (Some(host.as_str()), Some(true)));
    assert_eq!((machine["link"].as_str(), machine["os"].as_str()), (Some("active"), Some(std::env::consts::OS)));
    assert!(machine.get("code").is_none(), "codes are not listed");

    let listed = call(&site, Some(&key), "list_machines", json!({})).await;
    assert_eq!(listed["structuredContent"]["machines"][0]["alias"], host.as_str(), "{listed}");

    let (status, renamed) = rename(&site, &key, &host, "web-prod").await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!((renamed["ok"].as_bool(), renamed["alias"].as_str()), (Some(true), Some("web-prod")), "{renamed}");
    assert_eq!(renamed["online"].as_bool(), Some(true), "{renamed}");
    assert_eq!(rename(&site, &key, &host, "x").await.0, 404);
    assert_eq!(rename(&site, &key, "web-prod", "has space").await.0, 400);
    assert_eq!(rename(&site, &key, "web-prod", &code(&site)).await.0, 400, "an alias may not look like a code");
    // The new alias works as a code.
    let notes = site.dir.path().join("notes");
    std::fs::write(&notes, b"renamed\n").unwrap();
    let pulled = call(&site, Some(&key), "remote_pull", json!({"code": "web-prod", "path": notes})).await;
    assert_eq!(pulled["isError"], false, "{pulled}");
    let (_, body) = machines(&site, Some(&key)).await;
    assert_eq!(body["machines"][0]["alias"], "web-prod");
}
