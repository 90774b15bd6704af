//! File transfer throughput: a relay and a daemon in this process on
//! loopback; a file of N MiB pushed through `PUT /api/v1/files/{code}` and
//! pulled back through `GET`, each timed end to end (SHA-256 on the daemon
//! included), with the bytes compared.
//!
//! ```sh
//! cargo run --release --example file_transfer -- 100
//! ```

use std::time::Instant;

use aic::daemon::{self, LinkStatus, Mode};
use aic::relay::{self, AppState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100);
    let size = mib * 1024 * 1024;
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();

    let mut config = relay::Config::new(dir.path().join("relay"));
    config.rate_limit = 0;
    config.max_file = size;
    let state = AppState::open(config, None, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let relay = tokio::spawn(relay::serve(listener, state));

    let state_dir = dir.path().join("daemon");
    let mut config = daemon::Config::new(format!("ws://{addr}"), state_dir.clone(), state_dir.join("aic.sock"));
    config.mode = Some(Mode::Auto);
    config.max_file = size;
    let (tx, mut status) = watch::channel(LinkStatus::default());
    let daemon = tokio::spawn(daemon::run(config, tx, shutdown.clone()));
    let code = status.wait_for(|s| s.connected).await?.code.expect("a code");

    let bytes: Vec<u8> = (0..size).map(|i| (i ^ (i >> 9) ^ (i >> 21)) as u8).collect();
    let path = dir.path().join("payload");
    let url = format!("http://{addr}/api/v1/files/{code}?path={}", path.display());
    let client = reqwest::Client::builder().no_proxy().build()?;

    let started = Instant::now();
    let resp = client.put(&url).body(bytes.clone()).send().await?;
    anyhow::ensure!(resp.status().as_u16() == 201, "push: {}", resp.text().await?);
    let push = started.elapsed();

    let started = Instant::now();
    let pulled = client.get(&url).send().await?.bytes().await?;
    let pull = started.elapsed();
    anyhow::ensure!(pulled[..] == bytes[..], "the pulled bytes differ");

    let rate = |d: std::time::Duration| size as f64 / 1e6 / d.as_secs_f64();
    println!("{mib} MiB through relay and daemon on loopback");
    println!("  push: {:.2} s, {:.0} MB/s", push.as_secs_f64(), rate(push));
    println!("  pull: {:.2} s, {:.0} MB/s", pull.as_secs_f64(), rate(pull));

    shutdown.cancel();
    relay.await??;
    daemon.await??;
    Ok(())
}
