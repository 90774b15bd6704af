//! Exec round-trip benchmark: a relay and a daemon in this process on
//! loopback, `true` run N times through `POST /api/v1/exec` on one kept-alive
//! connection, against the cost of spawning `sh -c true` directly.
//!
//! ```sh
//! cargo run --release --example exec_roundtrip -- 500
//! ```
//!
//! With a PostgreSQL and a NATS URL after the count, two relays share them
//! (README, "Scaling out"): the daemon on the first, and `true` timed through
//! the first and, routed over NATS, through the second. Then the daemon stops
//! and the second relay's refusal (503 `agent_offline`: NATS says no relay
//! answers for the machine) is timed as often.
//!
//! ```sh
//! cargo run --release --example exec_roundtrip -- 500 postgres://aic@127.0.0.1/aic nats://127.0.0.1:4222
//! ```

use std::time::{Duration, Instant};

use aic::daemon::{self, LinkStatus, Mode};
use aic::relay::{self, AppState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    format!("p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms", at(0.5), at(0.9), at(0.99), at(1.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let cluster = args.get(2).cloned().zip(args.get(3).cloned());
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();

    let relays = start_relays(dir.path(), cluster.as_ref(), &shutdown).await?;
    let addr = relays[0].0;

    let state_dir = dir.path().join("daemon");
    let mut config = daemon::Config::new(format!("ws://{addr}"), state_dir.clone(), state_dir.join("aic.sock"));
    config.mode = Some(Mode::Auto);
    let (tx, mut status) = watch::channel(LinkStatus::default());
    let daemon_stop = CancellationToken::new();
    let mut daemon = Some(tokio::spawn(daemon::run(config, tx, daemon_stop.clone())));
    let code = status.wait_for(|s| s.connected).await?.code.expect("a code");

    let body = serde_json::json!({"code": code.to_string(), "command": "true"});
    let through_relay = time_exec(&format!("http://{addr}/api/v1/exec"), &body, runs).await?;
    let through_two = match relays.get(1) {
        Some((other, _)) => Some(time_exec(&format!("http://{other}/api/v1/exec"), &body, runs).await?),
        None => None,
    };
    let refused = match relays.get(1) {
        Some((other, _)) => {
            daemon_stop.cancel();
            daemon.take().expect("the daemon runs").await??;
            Some(time_refusals(&format!("http://{other}"), &code.to_string(), runs).await?)
        }
        None => None,
    };
    let mut spawn_only = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        tokio::process::Command::new("sh").args(["-c", "true"]).status().await?;
        spawn_only.push(started.elapsed());
    }
    println!("{runs} runs of `true`");
    println!("  through the relay:   {}", percentiles(through_relay));
    if let Some(two) = through_two {
        println!("  through two relays:  {}", percentiles(two));
    }
    if let Some(refused) = refused {
        println!("  offline, refused:    {}", percentiles(refused));
    }
    println!("  sh -c true directly: {}", percentiles(spawn_only));

    shutdown.cancel();
    daemon_stop.cancel();
    for (_, relay) in relays {
        relay.await??;
    }
    if let Some(daemon) = daemon {
        daemon.await??;
    }
    Ok(())
}

/// One relay on SQLite in `dir`, or two on the PostgreSQL and NATS of `cluster`.
async fn start_relays(
    dir: &std::path::Path,
    cluster: Option<&(String, String)>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<(std::net::SocketAddr, Relay)>> {
    let mut relays = Vec::new();
    for _ in 0..if cluster.is_some() { 2 } else { 1 } {
        let mut config = relay::Config::new(dir.join("relay"));
        config.rate_limit = 0;
        config.database_url = cluster.map(|(db, _)| db.clone());
        config.nats_url = cluster.map(|(_, nats)| nats.clone());
        let state = AppState::open(config, None, shutdown.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        relays.push((listener.local_addr()?, tokio::spawn(relay::serve(listener, state))));
    }
    Ok(relays)
}

/// A relay serving in a task of its own.
type Relay = tokio::task::JoinHandle<anyhow::Result<()>>;

/// `body` posted to `url` `runs` times on one kept-alive connection, after 20 to warm up.
async fn time_exec(url: &str, body: &serde_json::Value, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..20 {
        client.post(url).json(body).send().await?.bytes().await?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let resp = client.post(url).json(body).send().await?;
        assert!(resp.status().is_success());
        resp.bytes().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `true` for the machine `code`, whose daemon has stopped, posted to the relay
/// at `base` `runs` times (once its status says offline): each must be refused
/// with 503 `agent_offline`.
async fn time_refusals(base: &str, code: &str, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let status = format!("{base}/api/v1/status/{code}");
    while client.get(&status).send().await?.json::<serde_json::Value>().await?["online"] == true {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = serde_json::json!({"code": code, "command": "true"});
    let url = format!("{base}/api/v1/exec");
    let mut samples = Vec::with_capacity(runs);
    for n in 0..runs + 20 {
        let started = Instant::now();
        let resp = client.post(&url).json(&body).send().await?;
        let (code, body) = (resp.status(), resp.bytes().await?);
        let elapsed = started.elapsed();
        anyhow::ensure!(code == 503, "expected 503 agent_offline, got {code}: {}", String::from_utf8_lossy(&body));
        if n >= 20 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}
