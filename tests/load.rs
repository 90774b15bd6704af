//! Load through one relay, bounded and on loopback: many machines, many
//! callers at once, and every caller gets exactly its own result.

mod common;

use std::collections::HashSet;

use common::{RelayProcess, TestDaemon, client, daemon_config, within};
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
    // Limits per address off: one address stands for every caller here.
    let args = ["--rate-limit", "0", "--max-connections-per-ip", "4096"];
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
    let results = within("a thousand commands", results).await;

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
