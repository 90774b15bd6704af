//! Faults an operator meets: the relay killed outright and started again, a
//! damaged state file, a stalled link, and the relay's data disk full. Each
//! side says what happened and loses nothing.

mod common;

use aic::protocol::agent::{Credentials, RelayMessage};
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
    // Fifteen pings' worth: a loaded machine may hold a ping back a second,
    // and the link must not fall before the stall the test makes.
    let silence = std::time::Duration::from_secs(3);
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

/// A tiny tmpfs mounted over a directory for one test, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts it, or says why not (this needs root).
    fn mount(at: &std::path::Path) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self(at.to_path_buf()))
    }

    /// Writes to a filler file until the disk is full (again: a write that
    /// failed may have given back what it took).
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::OpenOptions::new().create(true).append(true).open(self.0.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match filler.write(&block) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // The last bytes that fit, so not one more page is free.
        while filler.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    }

    fn make_room(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A fake agent's hello (a new machine's, without credentials): the relay's answer.
async fn hello(relay: &RelayProcess, credentials: Option<Credentials>) -> Option<RelayMessage> {
    use aic::protocol::agent::{AgentInfo, AgentMessage, PROTOCOL_VERSION};
    let mut ws = tokio_tungstenite::connect_async(format!("{}/agent/ws", relay.ws())).await.unwrap().0;
    let agent = AgentInfo { hostname: "new".into(), ..Default::default() };
    common::send(&mut ws, &AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent, credentials }).await;
    common::recv(&mut ws).await
}

/// New machines register until the relay refuses one: its words, and the
/// credentials of those it accepted.
async fn register_until_refused(relay: &RelayProcess) -> (String, Vec<Credentials>) {
    within("a new machine refused", async {
        let mut saved = Vec::new();
        loop {
            match hello(relay, None).await {
                Some(RelayMessage::Registered { code, token: Some(token), .. }) => {
                    saved.push(Credentials { code, token })
                }
                Some(RelayMessage::HelloRefused { message, .. }) => return (message, saved),
                other => panic!("a new machine's hello: {other:?}"),
            }
        }
    })
    .await
}

async fn exec_as(relay: &RelayProcess, key: Option<&str>, code: &str) -> (u16, serde_json::Value) {
    let mut request =
        client().post(format!("{}/api/v1/exec", relay.http())).json(&json!({"code": code, "command": "echo ok"}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let resp = within("exec", request.send()).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Skips a test that needs root to mount, saying why; under CI (which runs
/// as root) that is a failure instead.
fn cannot_mount(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "under CI this test must run: {why}");
    eprintln!("skipped: {why}");
}

/// `aic-relay account add EMAIL` on the data in `data`: the account's API key.
fn add_account(data: &std::path::Path, email: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["account", "add", email, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout.split_whitespace().find(|w| w.starts_with("aic_")).expect("an API key").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_is_named_what_needs_no_write_still_works_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let disk = match SmallDisk::mount(&data) {
        Ok(disk) => disk,
        Err(why) => return cannot_mount(&why),
    };
    // No caps on requests or new machines: below, machines register until the disk refuses one.
    let relay = RelayProcess::start(&data, &["--rate-limit", "0", "--registrations-per-day", "0"], &[]).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.code().to_string();
    let (linked, newcomer) = (add_account(&data, "linked@example.com"), add_account(&data, "newcomer@example.com"));
    assert_eq!(exec_as(&relay, Some(&linked), &code).await.0, 200, "the first account links before the disk fills");

    disk.fill();
    // What needs no write goes on: anonymous use, an account already linked, a known machine coming back.
    let (status, body) = exec_as(&relay, None, &code).await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("ok\n")), "{body}");
    assert_eq!(exec_as(&relay, Some(&linked), &code).await.0, 200);
    daemon.stop().await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    assert_eq!(daemon.code().to_string(), code, "the machine is back with its code");
    // What needs one is refused in words that say why and what to do, as often as it is tried.
    disk.fill();
    for _ in 0..3 {
        let (status, body) = exec_as(&relay, Some(&newcomer), &code).await;
        assert_eq!(status, 503, "{body}");
        let said = body["error"].as_str().unwrap();
        assert!(said.contains("disk holding its data directory is full") && said.contains("try again later"), "{said}");
    }
    // A new machine is refused too, in words that say why; one told it was
    // registered (room SQLite's files already held) really was saved.
    let (refusal, saved) = register_until_refused(&relay).await;
    assert!(refusal.contains("cannot register new machines right now"), "{refusal}");
    assert!(refusal.contains("disk holding its data directory is full"), "{refusal}");
    disk.make_room();
    for credentials in saved {
        assert!(matches!(hello(&relay, Some(credentials)).await, Some(RelayMessage::Registered { .. })), "lost");
    }
    let (status, body) = exec_as(&relay, Some(&newcomer), &code).await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("ok\n")), "{body}");
    assert!(matches!(hello(&relay, None).await, Some(RelayMessage::Registered { .. })));
    assert_eq!(exec_as(&relay, Some(&linked), &code).await.0, 200, "the first link is still there");
    daemon.stop().await;
    // The log named the cause once a spell of failures, not per request,
    // and said when each spell was over.
    let log = relay.stop().await;
    let (full, again) = ("disk holding its data directory is full", "the relay can write its database again");
    let said: Vec<&str> = log.lines().filter(|l| l.contains(full) || l.contains(again)).collect();
    assert!(!said.is_empty() && said.len().is_multiple_of(2), "{log}");
    for pair in said.chunks(2) {
        assert!(pair[0].contains(full) && pair[0].contains("free space") && pair[1].contains(again), "{log}");
    }
    assert!(said.len() / 2 < 4, "named per request, not once a spell: {log}");
}

/// Unmounts a directory when dropped, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `mount` with `args`, as root; the reason when it cannot.
fn mount(args: &[&str], at: &std::path::Path) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("mounting needs root".into());
    }
    let out = std::process::Command::new("mount").args(args).arg(at).arg(at).output().map_err(|e| e.to_string())?;
    out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_named_and_the_relay_starts_with_its_data_once_writable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    RelayProcess::start(&data, &[], &[]).await.stop().await;
    let before = std::fs::read(data.join("secret.key")).unwrap();
    if let Err(why) = mount(&["--bind"], &data) {
        return cannot_mount(&why);
    }
    let bound = Unmount(data.clone());
    if let Err(why) = mount(&["-o", "remount,bind,ro"], &data) {
        return cannot_mount(&why);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    drop(bound);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&data.display().to_string()) && stderr.contains("Read-only file system"), "{stderr}");
    // Writable again: the same secret, so every code and token it issued still holds.
    let relay = RelayProcess::start(&data, &[], &[]).await;
    assert_eq!(std::fs::read(data.join("secret.key")).unwrap(), before);
    relay.stop().await;
}
