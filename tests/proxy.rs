//! The reverse-proxy snippets in packaging/proxy/, run for real: nginx and
//! Caddy in front of a relay pass the daemon's WebSocket, stream server-sent
//! events as they come (not buffered to the end), and keep the Host that the
//! MCP endpoint checks. Each proxy's part of the shipped file is used as is;
//! only addresses and TLS are swapped for loopback ones.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{TestDaemon, TestRelay, client, within};
use futures_util::StreamExt;

/// Whether the proxy binary is here; under CI it must be.
fn have(binary: &str) -> bool {
    let found =
        std::process::Command::new(binary).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
            || std::process::Command::new(binary).arg("version").stdout(Stdio::null()).status().is_ok();
    assert!(found || std::env::var_os("CI").is_none(), "{binary} is missing; .ci/run installs it");
    if !found {
        eprintln!("SKIPPED: {binary} is not installed (apt-get install nginx-light caddy)");
    }
    found
}

fn nginx_config(dir: &Path, port: u16, relay: u16) -> String {
    let snippet = std::fs::read_to_string("packaging/proxy/nginx.conf").unwrap();
    let snippet: String = snippet
        .lines()
        .filter(|l| !l.contains("ssl_certificate") && !l.contains("listen [::]:443"))
        .map(|l| l.replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};")))
        .map(|l| l.replace("127.0.0.1:8080", &format!("127.0.0.1:{relay}")))
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.display();
    format!(
        // One process (no master and workers), so killing it leaves nothing behind.
        "daemon off; master_process off; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{}}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{snippet}\n}}\n"
    )
}

fn caddy_config(port: u16, relay: u16) -> String {
    let snippet = std::fs::read_to_string("packaging/proxy/Caddyfile").unwrap();
    let snippet = snippet
        .replace("relay.example.com {", &format!("http://127.0.0.1:{port} {{"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{relay}"));
    format!("{{\n\tadmin off\n\tauto_https off\n}}\n{snippet}")
}

/// Starts the proxy and waits until it listens on `port`; `None` if it
/// exited first (the port, picked free and let go, was taken meanwhile).
async fn start_proxy(which: &str, dir: &Path, port: u16, relay: u16) -> Option<tokio::process::Child> {
    let mut command = match which {
        "nginx" => {
            std::fs::write(dir.join("nginx.conf"), nginx_config(dir, port, relay)).unwrap();
            let mut c = tokio::process::Command::new("nginx");
            c.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
            c
        }
        _ => {
            std::fs::write(dir.join("Caddyfile"), caddy_config(port, relay)).unwrap();
            let mut c = tokio::process::Command::new("caddy");
            c.args(["run", "--adapter", "caddyfile", "--config"]).arg(dir.join("Caddyfile"));
            c.env("XDG_DATA_HOME", dir).env("XDG_CONFIG_HOME", dir).env("HOME", dir);
            c
        }
    };
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true).spawn().unwrap();
    let pid = child.id().unwrap();
    // Its own socket, not whoever else may listen on the port: looked for in /proc.
    within("the proxy to listen", async {
        while child.try_wait().unwrap().is_none() {
            if servers::listens_on(pid, port) {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    })
    .await
    .map(|()| child)
}

/// A relay, and `which` proxy in front of it on a port picked free. The port
/// is let go before the proxy binds it, and another test may take it
/// meanwhile: then the proxy exits, and another port (and a relay whose
/// public URL names it) is tried.
async fn proxied(which: &str, dir: &Path) -> (TestRelay, tokio::process::Child, u16) {
    for attempt in 0..5 {
        let port = servers::free_port();
        let mut config = aic::relay::Config::new(dir.join(format!("relay-{attempt}")));
        config.public_url = Some(format!("http://127.0.0.1:{port}").parse().unwrap());
        config.proxies = aic::relay::limit::Proxies(vec!["127.0.0.1".parse().unwrap()]);
        let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
        if let Some(proxy) = start_proxy(which, dir, port, relay.addr.port()).await {
            return (relay, proxy, port);
        }
        relay.stop().await;
    }
    panic!("{which} exited five times without listening: were its ports taken?");
}

/// Runs a command over SSE through the proxy that prints a line, then waits
/// until the test has seen that line before it ends: buffering proxies never
/// deliver it in time, and the test fails.
async fn streams_unbuffered(base: &str, code: &str, gate: &Path) {
    let command = format!("echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second", gate.display());
    let resp = client()
        .post(format!("{base}/api/v1/exec"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"code": code, "command": command, "timeout_ms": 20000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    within("the first line, while the command still runs", async {
        while !seen.contains("first") {
            seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
        }
    })
    .await;
    assert!(!seen.contains("event: result"), "the command ended before its gate opened: {seen}");
    std::fs::write(gate, b"").unwrap();
    within("the result", async {
        while !seen.contains("event: result") {
            seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
        }
    })
    .await;
    assert!(seen.contains("second"), "{seen}");
}

async fn behind(which: &str) {
    if !have(which) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (relay, mut proxy, port) = proxied(which, dir.path()).await;
    let base = format!("http://127.0.0.1:{port}");
    let daemon = TestDaemon::start(&format!("ws://127.0.0.1:{port}"), &dir.path().join("d")).await;
    streams_unbuffered(&base, &daemon.code().to_string(), &dir.path().join("gate")).await;
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let mcp = client()
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(mcp.status(), 200, "the MCP Host check sees the proxied Host: {}", mcp.text().await.unwrap());
    daemon.stop().await;
    let _ = proxy.kill().await;
    relay.stop().await;
}

#[tokio::test]
async fn nginx_snippet_passes_websockets_and_streams() {
    behind("nginx").await;
}

#[tokio::test]
async fn caddy_snippet_passes_websockets_and_streams() {
    behind("caddy").await;
}
