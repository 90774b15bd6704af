//! Exec round-trip benchmark: a relay and a daemon in this process on
//! loopback, `true` run N times through `POST /api/v1/exec` on one kept-alive
//! connection, against the cost of spawning `sh -c true` directly.
//!
//! ```sh
//! cargo run --release --example exec_roundtrip -- 500
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
    let runs: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();

    let mut config = relay::Config::new(dir.path().join("relay"));
    config.rate_limit = 0;
    let state = AppState::open(config, None, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let relay = tokio::spawn(relay::serve(listener, state));

    let state_dir = dir.path().join("daemon");
    let mut config = daemon::Config::new(format!("ws://{addr}"), state_dir.clone(), state_dir.join("aic.sock"));
    config.mode = Some(Mode::Auto);
    let (tx, mut status) = watch::channel(LinkStatus::default());
    let daemon = tokio::spawn(daemon::run(config, tx, shutdown.clone()));
    let code = status.wait_for(|s| s.connected).await?.code.expect("a code");

    let client = reqwest::Client::builder().no_proxy().build()?;
    let body = serde_json::json!({"code": code.to_string(), "command": "true"});
    let url = format!("http://{addr}/api/v1/exec");
    for _ in 0..20 {
        client.post(&url).json(&body).send().await?.bytes().await?;
    }
    let mut through_relay = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let resp = client.post(&url).json(&body).send().await?;
        assert!(resp.status().is_success());
        resp.bytes().await?;
        through_relay.push(started.elapsed());
    }
    let mut spawn_only = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        tokio::process::Command::new("sh").args(["-c", "true"]).status().await?;
        spawn_only.push(started.elapsed());
    }
    println!("{runs} runs of `true`");
    println!("  through the relay:   {}", percentiles(through_relay));
    println!("  sh -c true directly: {}", percentiles(spawn_only));

    shutdown.cancel();
    relay.await??;
    daemon.await??;
    Ok(())
}
