//! The agent WebSocket as a daemon (or an attacker) sees it: hellos,
//! refusals, malformed and oversized frames.

mod common;

use aic::protocol::agent::{
    self, AgentInfo, AgentMessage, Credentials, ExitStatus, HelloRefusal, PROTOCOL_VERSION, RelayMessage,
};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn dial(relay: &TestRelay) -> Ws {
    tokio_tungstenite::connect_async(format!("{}/agent/ws", relay.ws())).await.unwrap().0
}

fn hello(credentials: Option<Credentials>) -> AgentMessage {
    AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        agent: AgentInfo { hostname: "test".into(), ..Default::default() },
        credentials,
    }
}

async fn register(relay: &TestRelay) -> (Ws, Credentials) {
    let mut ws = dial(relay).await;
    send(&mut ws, &hello(None)).await;
    match recv(&mut ws).await {
        Some(RelayMessage::Registered { code, token: Some(token), .. }) => (ws, Credentials { code, token }),
        other => panic!("expected a registration, got {other:?}"),
    }
}

#[tokio::test]
async fn another_protocol_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut ws = dial(&relay).await;
    ws.send(Message::text(json!({"type": "hello", "protocol": 99, "future_field": true}).to_string())).await.unwrap();
    match recv(&mut ws).await {
        Some(RelayMessage::HelloRefused { reason: HelloRefusal::Version, message }) => {
            assert!(message.contains("version 1") && message.contains("version 99"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recv(&mut ws).await, None, "the link is closed after a refusal");
}

#[tokio::test]
async fn garbage_instead_of_hello_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut ws = dial(&relay).await;
    ws.send(Message::text("\u{0}not json at all")).await.unwrap();
    assert!(matches!(recv(&mut ws).await, Some(RelayMessage::HelloRefused { .. })));
    assert_eq!(recv(&mut ws).await, None);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_right_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (ws, creds) = register(&relay).await;
    drop(ws);

    let mut ws = dial(&relay).await;
    send(&mut ws, &hello(Some(Credentials { code: creds.code, token: "0".repeat(64) }))).await;
    assert!(matches!(recv(&mut ws).await, Some(RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, .. })));

    let mut ws = dial(&relay).await;
    let unknown = Credentials { code: aic::protocol::SessionCode::generate(), token: creds.token.clone() };
    send(&mut ws, &hello(Some(unknown))).await;
    assert!(matches!(recv(&mut ws).await, Some(RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, .. })));

    let mut ws = dial(&relay).await;
    send(&mut ws, &hello(Some(creds.clone()))).await;
    let Some(RelayMessage::Registered { code, token: Some(rotated), .. }) = recv(&mut ws).await else {
        panic!("the right token is accepted, with a new one")
    };
    assert_eq!(code, creds.code);
    assert_ne!(rotated, creds.token);
}

#[tokio::test]
async fn malformed_messages_get_an_error_and_the_link_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (mut ws, _) = register(&relay).await;
    for bad in ["{", r#"{"type":"nope"}"#, r#"{"type":"exit","id":"not-a-uuid"}"#] {
        ws.send(Message::text(bad)).await.unwrap();
        match recv(&mut ws).await {
            Some(RelayMessage::Error { message }) => assert!(message.starts_with("unreadable message"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert!(matches!(recv(&mut ws).await, Some(RelayMessage::Error { .. })));
    send(&mut ws, &AgentMessage::Ping { seq: 7 }).await;
    assert_eq!(recv(&mut ws).await, Some(RelayMessage::Pong { seq: 7 }));
}

#[tokio::test]
async fn an_oversized_frame_ends_that_link_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (mut big, _) = register(&relay).await;
    let (mut other, _) = register(&relay).await;
    let _ = big.send(Message::text("x".repeat(agent::MAX_FRAME + 1))).await;
    assert_eq!(recv(&mut big).await, None);
    send(&mut other, &AgentMessage::Ping { seq: 1 }).await;
    assert_eq!(recv(&mut other).await, Some(RelayMessage::Pong { seq: 1 }));
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (mut first, creds) = register(&relay).await;
    let mut second = dial(&relay).await;
    send(&mut second, &hello(Some(creds.clone()))).await;
    assert!(matches!(recv(&mut second).await, Some(RelayMessage::Registered { .. })));
    assert_eq!(recv(&mut first).await, None, "the older link is closed");

    // Commands now go to the newer link.
    let http = relay.http();
    let code = creds.code.to_string();
    let call = tokio::spawn(async move { exec(&http, json!({"code": code, "command": "echo hi"})).await });
    let Some(RelayMessage::Exec(req)) = recv(&mut second).await else { panic!("no exec on the newer link") };
    assert_eq!(req.command, "echo hi");
    assert_eq!(req.requester.who, "anonymous");
    assert_eq!(req.requester.ip, "127.0.0.1");
    send(&mut second, &AgentMessage::Output { id: req.id, stream: agent::Stream::Stdout, data: b"hi\n".to_vec() })
        .await;
    send(
        &mut second,
        &AgentMessage::Exit { id: req.id, exit: ExitStatus { exit_code: 0, duration_ms: 1, ..Default::default() } },
    )
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body["stdout"].as_str()), (200, Some("hi\n")));
}

#[tokio::test]
async fn a_daemon_at_its_concurrency_limit_asks_callers_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(aic::daemon::Mode::Auto);
    config.max_concurrent = 1;
    let daemon = TestDaemon::start_with(config).await;
    let code = daemon.code().to_string();

    let busy = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .header("accept", "text/event-stream")
        .json(&json!({"code": code, "command": "echo started; exec sleep 30"}))
        .send()
        .await
        .unwrap();
    let mut stream = busy.bytes_stream();
    within("the first command to start", async {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("started") {
            seen.extend_from_slice(&stream.next().await.unwrap().unwrap());
        }
    })
    .await;

    let resp = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .json(&json!({"code": code, "command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "rate_limited");
    assert!(body["error"].as_str().unwrap().contains("already running 1 command(s)"), "{body}");
}

async fn hello_with(relay: &TestRelay, creds: &Credentials) -> Option<RelayMessage> {
    let mut ws = dial(relay).await;
    send(&mut ws, &hello(Some(creds.clone()))).await;
    recv(&mut ws).await
}

fn rotated(reply: Option<RelayMessage>) -> String {
    match reply {
        Some(RelayMessage::Registered { token: Some(token), .. }) => token,
        other => panic!("expected acceptance with a new token, got {other:?}"),
    }
}

#[tokio::test]
async fn a_daemon_that_dies_before_saving_its_new_token_still_gets_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (ws, first) = register(&relay).await;
    drop(ws);
    let with = |token: &str| Credentials { code: first.code, token: token.to_owned() };

    // The daemon reconnects and is sent a new token, but dies before saving it.
    let lost = rotated(hello_with(&relay, &first).await);
    // It comes back with the token it saved, which still works...
    let saved = rotated(hello_with(&relay, &first).await);
    // ...and once the newest token has been used, every older one is dead.
    let current = rotated(hello_with(&relay, &with(&saved)).await);
    for stale in [&first.token, &lost] {
        let reply = hello_with(&relay, &with(stale)).await;
        assert!(
            matches!(reply, Some(RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, .. })),
            "a stale token was accepted: {reply:?}"
        );
    }
    rotated(hello_with(&relay, &with(&current)).await);
}

/// Sends an exec as `key` (with extra headers) and returns what a raw agent receives.
async fn exec_seen_by_agent(relay: &TestRelay, key: &str, headers: &[(&str, &str)]) -> String {
    let (mut ws, creds) = register(relay).await;
    let mut request = client()
        .post(format!("{}/api/v1/exec", relay.http()))
        .bearer_auth(key)
        .json(&json!({"code": creds.code.to_string(), "command": "true"}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let call = tokio::spawn(request.send());
    let frame = within("the exec frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains("\"exec\"") => return text.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("link ended: {other:?}"),
            }
        }
    })
    .await;
    call.abort();
    frame
}

#[tokio::test]
async fn the_daemon_sees_masked_emails_and_the_real_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let key = relay.account("lukas@wearable.com").await;
    let frame = exec_seen_by_agent(&relay, &key, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert!(!frame.contains("lukas@wearable.com") && !frame.contains("wearable.com"), "{frame}");
    let RelayMessage::Exec(req) = agent::decode(&frame).unwrap() else { panic!("{frame}") };
    assert_eq!(req.requester.who, "lu****@wear****.com");
    assert_eq!(req.requester.ip, "127.0.0.1", "X-Forwarded-For is ignored from an untrusted peer");
    relay.stop().await;

    let mut config = aic::relay::Config::new(dir.path().to_path_buf());
    config.proxies = aic::relay::limit::Proxies(vec!["127.0.0.1/32".parse().unwrap()]);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let frame = exec_seen_by_agent(&relay, &key, &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")]).await;
    let RelayMessage::Exec(req) = agent::decode(&frame).unwrap() else { panic!("{frame}") };
    assert_eq!(req.requester.ip, "203.0.113.7", "behind a trusted proxy, the client it saw");
}

#[tokio::test]
async fn once_the_new_token_is_saved_the_old_one_is_dead_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (ws, first) = register(&relay).await;
    drop(ws);
    let mut ws = dial(&relay).await;
    send(&mut ws, &hello(Some(first.clone()))).await;
    let new = rotated(recv(&mut ws).await);
    send(&mut ws, &AgentMessage::TokenSaved).await;
    // Frames are handled in order: the pong means the acknowledgement is done.
    send(&mut ws, &AgentMessage::Ping { seq: 9 }).await;
    assert_eq!(recv(&mut ws).await, Some(RelayMessage::Pong { seq: 9 }));

    // Someone holding the old token (a backup, a cloned image) cannot take the machine over.
    let reply = hello_with(&relay, &first).await;
    assert!(matches!(reply, Some(RelayMessage::HelloRefused { reason: HelloRefusal::UnknownCode, .. })), "{reply:?}");
    // The live link was not disturbed.
    send(&mut ws, &AgentMessage::Ping { seq: 10 }).await;
    assert_eq!(recv(&mut ws).await, Some(RelayMessage::Pong { seq: 10 }));
    rotated(hello_with(&relay, &Credentials { code: first.code, token: new }).await);
}
