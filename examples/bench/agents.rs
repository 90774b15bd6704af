//! Simulated agents: they speak the real agent protocol (the crate's own
//! message types), register anew, answer every command at once without
//! running anything, and ping like a daemon so the relay keeps them.

use std::net::SocketAddr;

use aic::protocol::agent::{self, AgentInfo, AgentMessage, ExitStatus, PROTOCOL_VERSION, RelayMessage};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Small buffers: the generator holds thousands of these. What is fed
/// waits for the flush, so a command's `started` and `exit` leave in one
/// write as a daemon's do.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096)
}

/// Registers one simulated agent with the relay at `relay`, leaves it
/// answering on its own task until `stop`, and returns its code.
pub async fn register(relay: SocketAddr, stop: CancellationToken) -> anyhow::Result<String> {
    let url = format!("ws://{relay}/agent/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), true)
        .await
        .context("dialling the relay's agent endpoint")?;
    let info = AgentInfo {
        hostname: "sim".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        version: "bench".into(),
        capabilities: Vec::new(),
    };
    let hello = AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent: info, credentials: None };
    ws.send(Message::text(agent::encode(&hello))).await?;
    let code = match ws.next().await {
        Some(Ok(Message::Text(text))) => match agent::decode::<RelayMessage>(&text)? {
            RelayMessage::Registered { code, .. } => code.to_string(),
            other => bail!("the relay answered hello with a {} message", other.kind()),
        },
        _ => bail!("the relay closed the link before answering hello"),
    };
    tokio::spawn(serve(ws, stop));
    Ok(code)
}

/// Answers commands (started, then exit 0) and pings until `stop` or the link ends.
async fn serve(mut ws: Ws, stop: CancellationToken) {
    let mut ping = tokio::time::interval(agent::PING_INTERVAL);
    let mut seq = 0;
    loop {
        let reply = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ping.tick() => {
                seq += 1;
                vec![AgentMessage::Ping { seq }]
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => answer(&text),
                Some(Ok(_)) => continue,
                _ => return,
            },
        };
        for msg in reply {
            if ws.feed(Message::text(agent::encode(&msg))).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
    let _ = ws.close(None).await;
}

/// What a simulated agent says to one relay message.
fn answer(text: &str) -> Vec<AgentMessage> {
    match agent::decode::<RelayMessage>(text) {
        Ok(RelayMessage::Exec(req)) => {
            let exit = ExitStatus { exit_code: 0, duration_ms: 0, truncated: false, timed_out: false };
            vec![AgentMessage::Started { id: req.id }, AgentMessage::Exit { id: req.id, exit }]
        }
        Ok(RelayMessage::Ping { seq }) => vec![AgentMessage::Pong { seq }],
        _ => Vec::new(),
    }
}
