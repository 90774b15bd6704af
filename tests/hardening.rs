//! What a hostile daemon, client or neighbour cannot make the relay do: hold
//! requests past their deadline, pile up commands or output on one link.
//! The fake agent here speaks the real WebSocket protocol.

mod common;

use std::time::Duration;

use aic::protocol::agent::{self, AgentInfo, AgentMessage, Credentials, ExecRequest, PROTOCOL_VERSION, RelayMessage};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, msg: &AgentMessage) {
    ws.send(Message::text(agent::encode(msg))).await.unwrap();
}

/// The next protocol message, skipping control frames; `None` once closed.
async fn recv(ws: &mut Ws) -> Option<RelayMessage> {
    within("a relay message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(agent::decode(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
}

/// A fake agent, registered: its socket and its code.
async fn fake_agent(relay: &TestRelay) -> (Ws, Credentials) {
    let mut ws = tokio_tungstenite::connect_async(format!("{}/agent/ws", relay.ws())).await.unwrap().0;
    let agent = AgentInfo { hostname: "fake".into(), ..Default::default() };
    send(&mut ws, &AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent, credentials: None }).await;
    match recv(&mut ws).await {
        Some(RelayMessage::Registered { code, token: Some(token), .. }) => (ws, Credentials { code, token }),
        other => panic!("expected a registration, got {other:?}"),
    }
}

/// The next command the relay hands the fake agent.
async fn next_exec(ws: &mut Ws) -> ExecRequest {
    match recv(ws).await {
        Some(RelayMessage::Exec(req)) => req,
        other => panic!("expected an exec, got {other:?}"),
    }
}

fn call(relay: &TestRelay, body: serde_json::Value) -> JoinHandle<(u16, serde_json::Value)> {
    let http = relay.http();
    tokio::spawn(async move { exec(&http, body).await })
}

async fn output(ws: &mut Ws, id: uuid::Uuid, data: Vec<u8>) {
    send(ws, &AgentMessage::Output { id, stream: agent::Stream::Stdout, data }).await;
}

async fn exit(ws: &mut Ws, id: uuid::Uuid) {
    send(ws, &AgentMessage::Exit { id, exit_code: 0, duration_ms: 1, truncated: false, timed_out: false }).await;
}

#[tokio::test]
async fn a_command_the_machine_never_finishes_ends_at_its_timeout_plus_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().to_path_buf());
    config.exec_grace = Duration::from_millis(300);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let (mut ws, creds) = fake_agent(&relay).await;
    let caller = call(&relay, json!({"code": creds.code.to_string(), "command": "yes", "timeout_ms": 1000}));
    let req = next_exec(&mut ws).await;
    // Started, some output, and then nothing: never an exit.
    send(&mut ws, &AgentMessage::Started { id: req.id }).await;
    output(&mut ws, req.id, b"y\n".to_vec()).await;

    let (status, body) = within("the relay's own deadline", caller).await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["reason"], "machine_timeout");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("did not answer") && message.contains("(1 s)"), "{message}");
    assert_eq!(recv(&mut ws).await, Some(RelayMessage::Cancel { id: req.id }), "the machine is told to stop");
}

#[tokio::test]
async fn commands_in_flight_on_one_link_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().to_path_buf());
    config.max_in_flight = 2;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let (mut ws, creds) = fake_agent(&relay).await;
    let body = json!({"code": creds.code.to_string(), "command": "sleep 1"});
    let first = call(&relay, body.clone());
    let one = next_exec(&mut ws).await;
    let _second = call(&relay, body.clone());
    next_exec(&mut ws).await;

    let (status, refused) = exec(&relay.http(), body.clone()).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["reason"], "rate_limited");
    assert!(refused["error"].as_str().unwrap().contains("2 commands in flight"), "{refused}");

    // Once one ends, there is room again.
    exit(&mut ws, one.id).await;
    assert_eq!(first.await.unwrap().0, 200);
    let _third = call(&relay, body);
    next_exec(&mut ws).await;
}

#[tokio::test]
async fn output_past_the_link_budget_is_dropped_and_that_command_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().to_path_buf());
    config.max_link_buffer = 100_000;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let (mut ws, creds) = fake_agent(&relay).await;
    let body = json!({"code": creds.code.to_string(), "command": "cat big"});
    let first = call(&relay, body.clone());
    let a = next_exec(&mut ws).await;
    let second = call(&relay, body);
    let b = next_exec(&mut ws).await;

    output(&mut ws, a.id, vec![b'a'; 60_000]).await;
    output(&mut ws, b.id, vec![b'b'; 60_000]).await;
    assert_eq!(recv(&mut ws).await, Some(RelayMessage::Cancel { id: b.id }), "the command over budget is stopped");
    exit(&mut ws, a.id).await;
    exit(&mut ws, b.id).await;

    let (status, kept) = first.await.unwrap();
    assert_eq!((status, kept["stdout"].as_str().unwrap().len(), &kept["truncated"]), (200, 60_000, &json!(false)));
    let (status, cut) = second.await.unwrap();
    assert_eq!((status, cut["stdout"].as_str().unwrap(), &cut["truncated"]), (200, "", &json!(true)));
}
