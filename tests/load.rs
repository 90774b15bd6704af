//! Load through one relay, bounded and on loopback: many machines, many
//! callers at once, and every caller gets exactly its own result.

mod common;

use std::collections::HashSet;

use common::{BULK_PATIENCE, RelayProcess, TestDaemon, client, daemon_config, within, within_for};
use futures_util::StreamExt;
use serde_json::json;

/// Machines linked to the relay at once.
const MACHINES: usize = 50;
/// Commands sent at once, spread over the machines.
const COMMANDS: usize = 1000;
/// Callers in flight at once (each waits for its command's result).
const IN_FLIGHT: usize = 200;

/// The relay's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commands_over_fifty_machines_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    // Limits per address off: one address stands for every caller here, and
    // for every machine (50 registrations were the whole daily cap: one
    // daemon registering again after a slow hello would have been refused).
    let args = ["--rate-limit", "0", "--registrations-per-day", "0", "--max-connections-per-ip", "4096"];
    let relay = RelayProcess::start(&dir.path().join("relay"), &args, &[]).await;
    let mut daemons = Vec::new();
    for i in 0..MACHINES {
        let mut config = daemon_config(&relay.ws(), &dir.path().join(format!("d{i}")));
        config.mode = Some(aic::daemon::Mode::Auto);
        config.max_concurrent = COMMANDS / MACHINES;
        daemons.push(TestDaemon::start_with(config).await);
    }
    let codes: Vec<String> = daemons.iter().map(|d| d.code().to_string()).collect();
    let http = relay.http();
    let pid = relay.child.id().unwrap();
    let before = rss_kib(pid);
    let http_client = client();

    let results = futures_util::stream::iter(0..COMMANDS)
        .map(|n| {
            let (url, code) = (format!("{http}/api/v1/exec"), codes[n % MACHINES].clone());
            let http_client = http_client.clone();
            async move {
                let body = json!({"code": code, "command": format!("echo {n}")});
                let resp = http_client.post(url).json(&body).send().await.unwrap();
                (n, resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    // A thousand processes started in one wait: a loaded debug run here took over PATIENCE.
    let results = within_for(BULK_PATIENCE, "a thousand commands", results).await;

    let mut seen = HashSet::new();
    for (n, status, body) in &results {
        assert_eq!(*status, 200, "command {n}: {body}");
        assert_eq!(body["stdout"], format!("{n}\n"), "command {n} got someone else's output: {body}");
        assert!(seen.insert(*n), "command {n} answered twice");
    }
    assert_eq!(seen.len(), COMMANDS, "none lost");
    // What the relay held for them is given back (allocators keep some: a bound, not an equality).
    let after = rss_kib(pid);
    eprintln!("relay RSS: {before} KiB before, {after} KiB after {COMMANDS} commands");
    assert!(after < before * 2 + 16 * 1024, "relay RSS grew from {before} KiB to {after} KiB");
    for daemon in daemons {
        daemon.stop().await;
    }
    relay.stop().await;
}

/// Registers one fake agent that never answers; its socket (kept open) and code.
async fn idle_agent(relay_ws: &str) -> (common::Ws, String) {
    use aic::protocol::agent::{AgentInfo, AgentMessage, PROTOCOL_VERSION, RelayMessage};
    let mut ws = tokio_tungstenite::connect_async(format!("{relay_ws}/agent/ws")).await.unwrap().0;
    let agent = AgentInfo { hostname: "idle".into(), ..Default::default() };
    common::send(&mut ws, &AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent, credentials: None }).await;
    match common::recv(&mut ws).await {
        Some(RelayMessage::Registered { code, .. }) => (ws, code.to_string()),
        other => panic!("expected a registration, got {other:?}"),
    }
}

/// Agents linked at once in the memory test.
const IDLE_AGENTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_link_costs_the_relay_kilobytes_not_a_read_buffer_of_128_kib() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--rate-limit", "0", "--registrations-per-day", "0", "--max-connections-per-ip", "4096"];
    let relay = RelayProcess::start(&dir.path().join("relay"), &args, &[]).await;
    let pid = relay.child.id().unwrap();
    // One link first, so that what every link shares (the store, the runtime) is counted before.
    let first = idle_agent(&relay.ws()).await;
    let before = rss_kib(pid);
    let mut links = Vec::new();
    for _ in 0..IDLE_AGENTS {
        links.push(within("an agent registration", idle_agent(&relay.ws())).await);
    }
    let per_agent = (rss_kib(pid).saturating_sub(before)) as f64 / IDLE_AGENTS as f64;
    eprintln!("relay RSS per idle agent link: {per_agent:.1} KiB");
    // The library's default read buffer alone was 128 KiB a link, allocated
    // and zeroed; the whole link now costs about 9 KiB (BENCHMARKS.md).
    assert!(per_agent < 32.0, "an idle agent link costs the relay {per_agent:.1} KiB");
    drop((first, links));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_caps_the_commands_one_link_carries() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&dir.path().join("relay"), &["--max-in-flight", "1"], &[]).await;
    let (mut ws, code) = idle_agent(&relay.ws()).await;
    let http = relay.http();
    let body = json!({"code": code, "command": "sleep 1", "timeout_ms": 1000});
    // The agent never answers, so the first command stays in flight.
    let first = tokio::spawn({
        let (http, body) = (http.clone(), body.clone());
        async move { common::exec(&http, body).await }
    });
    match common::recv(&mut ws).await {
        Some(aic::protocol::agent::RelayMessage::Exec(_)) => {}
        other => panic!("expected the first command, got {other:?}"),
    }
    let (status, answer) = common::exec(&http, body).await;
    assert_eq!(status, 429, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("already has 1 commands in flight"), "{message}");
    first.abort();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_works_the_moment_its_registration_is_answered() {
    use aic::protocol::agent::{AgentMessage, ExitStatus, RelayMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let args = ["--rate-limit", "0", "--registrations-per-day", "0"];
    let relay = RelayProcess::start(&dir.path().join("relay"), &args, &[]).await;
    // The relay used to answer the hello before it put the link in its hub:
    // a caller quick enough got 503 (agent offline). A race: the request is
    // written on a connection opened beforehand, the moment the code is known.
    for _ in 0..30 {
        let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut ws, code) = idle_agent(&relay.ws()).await;
        let body = json!({"code": code, "command": "true"}).to_string();
        let request = format!(
            "POST /api/v1/exec HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            relay.addr,
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let id = tokio::select! {
            msg = common::recv(&mut ws) => match msg {
                Some(RelayMessage::Exec(req)) => req.id,
                other => panic!("expected the command, got {other:?}"),
            },
            _ = tcp.read_to_string(&mut answer) => panic!("answered before the command reached the agent: {answer}"),
        };
        common::send(&mut ws, &AgentMessage::Exit { id, exit: ExitStatus::default() }).await;
        let mut answer = String::new();
        within("the answer", tcp.read_to_string(&mut answer)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    relay.stop().await;
}
