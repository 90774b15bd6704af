//! Faults an operator meets: the relay killed outright and started again, and
//! a damaged state file. Each side says what happened and loses nothing.

mod common;

use common::{RelayProcess, TestDaemon, client, eventually, within};
use serde_json::json;

/// Whether some process runs exactly `sh -c <command>` or its `sleep`.
fn running(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_answers_its_callers_at_once_and_gets_its_daemons_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&dir.path().join("relay"), &[], &[]).await;
    let addr = relay.addr;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.code();

    // A caller waits on a command far longer than the test.
    let url = format!("{}/api/v1/exec", relay.http());
    let body = json!({"code": code.to_string(), "command": "sleep 7321"});
    let caller = tokio::spawn(async move { client().post(url).json(&body).send().await.map(|r| r.status()) });
    eventually("the command to run", || running("sleep 7321")).await;

    drop(relay); // SIGKILL: no goodbye to anyone.
    let heard = within("the caller to hear that the relay is gone", caller).await.unwrap();
    assert!(heard.is_err() || heard.as_ref().is_ok_and(|s| s.is_server_error()), "{heard:?}");
    daemon.offline().await;
    eventually("the orphaned command to be killed", || !running("sleep 7321")).await;

    let relay = RelayProcess::start_on(&dir.path().join("relay"), &addr.to_string(), &[], &[]).await;
    assert_eq!(daemon.online().await, code, "the same code after the relay's restart");
    let ran = common::run(&relay.http(), code, "echo back").await;
    assert_eq!(ran["stdout"], "back\n");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_damaged_state_file_stops_the_daemon_naming_it_and_no_new_code_is_minted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = state.join("state.json");
    std::fs::write(&file, "{\"credentials\": {\"code\": ").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-daemon"))
        .args(["run", "--relay", "ws://127.0.0.1:9", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(state.join("aic.sock"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "names the file: {stderr}");
    assert!(!stderr.contains("Session:"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"credentials\": {\"code\": ", "the file is left as it was");
}

/// A TCP proxy that forwards until `stall` is set, then holds both
/// connections open and forwards nothing: a link that hangs without closing.
async fn stalling_proxy(to: std::net::SocketAddr, stall: tokio_util::sync::CancellationToken) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::TcpStream::connect(to).await.unwrap();
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(forward(ri, wo, stall.clone()));
            tokio::spawn(forward(ro, wi, stall.clone()));
        }
    });
    addr
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stall: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n.unwrap_or(0),
            () = stall.cancelled() => break,
        };
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Stalled: keep both halves open, move nothing, until the test ends.
    std::future::pending::<()>().await;
    drop((from, to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_stalls_without_closing_is_noticed_by_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let silence = std::time::Duration::from_secs(1);
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.link_timeout = silence;
    let relay = common::TestRelay::start_with(config, "127.0.0.1:0").await;
    let stall = tokio_util::sync::CancellationToken::new();
    let proxy = stalling_proxy(relay.addr, stall.clone()).await;
    let mut config = common::daemon_config(&format!("ws://{proxy}"), &dir.path().join("daemon"));
    config.ping_interval = std::time::Duration::from_millis(200);
    config.link_timeout = silence;
    let mut daemon = TestDaemon::start_with(config).await;
    let status = format!("{}/api/v1/status/{}", relay.http(), daemon.code());
    let online = || async { client().get(&status).send().await.unwrap().json::<serde_json::Value>().await.unwrap() };
    assert_eq!(online().await["online"], true);

    stall.cancel();
    daemon.offline().await;
    within("the relay to see the machine offline", async {
        while online().await["online"] != false {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    stall.cancel();
    daemon.stop().await;
    relay.stop().await;
}
