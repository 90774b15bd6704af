//! Pulling and pushing files through a real relay and daemon: bytes exact,
//! SHA-256 checked, `Range` resumes, refusals, and the operator's approval.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aic::daemon::Mode;
use aic::protocol::control::{Decision, Event, Op};
use aic::tui::client::Client;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Site {
    dir: tempfile::TempDir,
    relay: TestRelay,
    daemon: TestDaemon,
}

impl Site {
    async fn start(mode: Mode, max_file: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = aic::relay::Config::new(dir.path().join("relay"));
        config.max_file = max_file;
        let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
        let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
        config.mode = Some(mode);
        config.max_file = max_file;
        let daemon = TestDaemon::start_with(config).await;
        std::fs::create_dir(dir.path().join("files")).unwrap();
        Self { dir, relay, daemon }
    }

    async fn auto() -> Self {
        Self::start(Mode::Auto, aic::protocol::files::DEFAULT_MAX_FILE).await
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("files").join(name)
    }

    fn url(&self, path: &Path) -> String {
        format!("{}/api/v1/files/{}?path={}", self.relay.http(), self.daemon.code(), path.display())
    }

    fn push(&self, path: &Path, query: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        client().put(format!("{}{query}", self.url(path))).body(body)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("daemon/aic.sock")
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    send_for(PATIENCE, req).await
}

/// [`send`], for a transfer whose request body may take up to `limit` to go.
async fn send_for(limit: Duration, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = within_for(limit, "the transfer", req.send()).await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, within("the body", resp.bytes()).await.unwrap().to_vec())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

async fn round_trip(site: &Site, name: &str, bytes: Vec<u8>) {
    let path = site.path(name);
    let (status, _, body) = send(site.push(&path, "&mode=0640", bytes.clone())).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let pushed = json(&body);
    assert_eq!(pushed["sha256"], sha256(&bytes));
    assert_eq!(pushed["size"], bytes.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);

    let (status, headers, pulled) = send(client().get(site.url(&path))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-content-sha256"], sha256(&bytes).as_str());
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    assert!(pulled == bytes, "the pulled bytes differ from the pushed ones");
}

/// A local user's links in a directory anyone can write redirect nothing:
/// the daemon (root, usually) neither writes nor reads through them, and a
/// path with `..` is refused, so what the operator approves is what is used;
/// a replaced setuid file lends only its permission bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_a_local_user_planted_redirect_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::auto().await;
    let (open, real) = (site.path("open"), site.path("real"));
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&real, open.join("dir")).unwrap();
    std::os::unix::fs::symlink(real.join("secret"), open.join("log")).unwrap();

    let (status, _, body) = send(site.push(&open.join("dir/x"), "", b"planted".to_vec())).await;
    assert_eq!(status, 400, "{}", json(&body));
    assert!(json(&body)["error"].as_str().unwrap().contains("aic does not follow it"), "{}", json(&body));
    assert!(!real.join("x").exists(), "nothing was written through the link");

    let (status, _, body) = send(client().get(site.url(&open.join("log")))).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body)["error"].as_str().unwrap().contains("aic does not follow it"), "{}", json(&body));

    // A file a local user made setuid lends the file replacing it only its permissions.
    let tool = site.path("tool");
    std::fs::write(&tool, b"theirs").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4777)).unwrap();
    assert_eq!(send(site.push(&tool, "&overwrite=true", b"ours".to_vec())).await.0, 201);
    assert_eq!(std::fs::metadata(&tool).unwrap().permissions().mode() & 0o7777, 0o777);

    let (status, _, body) = send(site.push(&site.path("real/../x"), "", b"x".to_vec())).await;
    assert_eq!(status, 400, "{}", json(&body));
    assert!(json(&body)["error"].as_str().unwrap().contains("'..'"), "{}", json(&body));
    assert!(!site.path("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_every_byte_value_round_trip_exactly() {
    let site = Site::auto().await;
    round_trip(&site, "motd", b"welcome to web-1\n\xc3\xa9t\xc3\xa9\n".to_vec()).await;
    let every: Vec<u8> = (0..=255u8).cycle().take(256 * 1031).collect();
    round_trip(&site, "every.bin", every).await;
    round_trip(&site, "empty", Vec::new()).await;

    let (_, headers, _) = send(client().get(site.url(&site.path("motd")))).await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let (_, headers, _) = send(client().get(site.url(&site.path("every.bin")))).await;
    assert_eq!(headers["content-type"], "application/octet-stream");
    // Nothing but the files themselves was left in their directory.
    let mut names: Vec<_> = std::fs::read_dir(site.path("")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["empty", "every.bin", "motd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_resumes_with_range() {
    let site = Site::auto().await;
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(site.path("big"), &bytes).unwrap();
    let url = site.url(&site.path("big"));

    let (status, headers, tail) = send(client().get(&url).header("range", "bytes=600000-")).await;
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 600000-999999/1000000");
    assert_eq!(headers["x-content-sha256"], sha256(&bytes).as_str(), "the whole file's checksum, to check the join");
    let mut joined = bytes[..600_000].to_vec();
    joined.extend_from_slice(&tail);
    assert_eq!(sha256(&joined), sha256(&bytes));

    let (status, _, middle) = send(client().get(&url).header("range", "bytes=10-19")).await;
    assert_eq!((status, &middle[..]), (206, &bytes[10..20]));
    let (status, headers, _) = send(client().get(&url).header("range", "bytes=1000000-")).await;
    assert_eq!(
        (status, &headers["content-range"]),
        (416, &"bytes */1000000".parse::<reqwest::header::HeaderValue>().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_do_and_leave_nothing_behind() {
    let site = Site::start(Mode::Auto, 4096).await;
    let path = site.path("conf");
    std::fs::write(&path, b"old").unwrap();

    let (status, _, body) = send(site.push(&path, "", b"new".to_vec())).await;
    assert_eq!((status, json(&body)["reason"].as_str()), (409, Some("exists")));
    assert!(json(&body)["error"].as_str().unwrap().contains("overwrite=true"));
    assert_eq!(std::fs::read(&path).unwrap(), b"old");

    let wrong = sha256(b"something else");
    let req = site.push(&path, "&overwrite=true", b"new".to_vec()).header("x-content-sha256", wrong);
    let (status, _, body) = send(req).await;
    assert_eq!((status, json(&body)["reason"].as_str()), (422, Some("checksum_mismatch")), "{}", json(&body));
    assert_eq!(std::fs::read(&path).unwrap(), b"old");

    let req = site.push(&path, "&overwrite=true", b"new".to_vec()).header("x-content-sha256", sha256(b"new"));
    assert_eq!(send(req).await.0, 201);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");

    let link = site.path("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let (status, _, body) = send(site.push(&link, "&overwrite=true", b"via link".to_vec())).await;
    assert_eq!(status, 400, "{}", json(&body));
    assert!(json(&body)["error"].as_str().unwrap().contains("symbolic link"));
    assert_eq!(std::fs::read(&path).unwrap(), b"new", "nothing was written through the link");

    let (status, _, body) = send(client().get(site.url(&site.path("")))).await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("tar czf"), "{}", json(&body));
    let (status, _, body) = send(client().get(site.url(&site.path("missing")))).await;
    assert_eq!((status, json(&body)["reason"].as_str()), (404, Some("not_found")));

    let (status, _, _) = send(site.push(&site.path("big"), "", vec![0; 4097])).await;
    assert_eq!(status, 413);
    std::fs::write(site.path("big"), vec![0; 4097]).unwrap();
    assert_eq!(send(client().get(site.url(&site.path("big")))).await.0, 413);

    let mut names: Vec<_> = std::fs::read_dir(site.path("")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["big", "conf", "link"], "no temporary file is left");
}

async fn queued(client: &mut Client) -> aic::protocol::control::Approval {
    within("the push in the approval queue", async {
        loop {
            if let Event::ApprovalQueued(a) = client.next_event().await.unwrap() {
                return a;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_push_waits_for_the_operator() {
    let site = Site::start(Mode::Supervised, aic::protocol::files::DEFAULT_MAX_FILE).await;
    let mut watcher = Client::connect(&site.socket()).await.unwrap();
    watcher.call(Op::Subscribe).await.unwrap();
    let path = site.path("nginx.conf");
    let bytes = vec![b'x'; 3 * 1024 * 1024 + 200 * 1024];

    let denied = tokio::spawn(send(site.push(&path, "&mode=0644", bytes.clone())));
    let approval = queued(&mut watcher).await;
    let described = format!("push 3.2 MiB to {}, mode 0644", path.display());
    assert_eq!(approval.command, described);
    watcher.call(Op::Deny { command: approval.id }).await.unwrap();
    let (status, _, body) = within("the denied push", denied).await.unwrap();
    assert_eq!((status, json(&body)["reason"].as_str()), (403, Some("denied")));
    assert!(!path.exists());

    let approved = tokio::spawn(send(site.push(&path, "&mode=0644", bytes.clone())));
    let approval = queued(&mut watcher).await;
    watcher.call(Op::Approve { command: approval.id }).await.unwrap();
    let (status, _, body) = within("the approved push", approved).await.unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // The traffic ring shows both, described, and none of the file's bytes.
    let traffic = watcher.call(Op::Traffic).await.unwrap();
    let entries: Vec<aic::protocol::control::TrafficEntry> = serde_json::from_value(traffic).unwrap();
    let shown: Vec<_> = entries.iter().map(|e| (e.command.as_str(), e.exit_code)).collect();
    assert_eq!(shown, [(described.as_str(), None), (described.as_str(), Some(0))]);

    // Whether the path exists is told only after the operator's yes: the
    // push without overwrite waits in the queue, then is refused.
    let again = tokio::spawn(send(site.push(&path, "&mode=0644", b"other".to_vec())));
    let approval = queued(&mut watcher).await;
    assert_eq!(approval.command, format!("push 5 B to {}, mode 0644", path.display()));
    watcher.call(Op::Approve { command: approval.id }).await.unwrap();
    let (status, _, body) = within("the push over a file", again).await.unwrap();
    assert_eq!((status, json(&body)["reason"].as_str()), (409, Some("exists")));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(entries.iter().all(|e| !e.tail.contains("xxxx")));
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_round_trips_and_a_slow_reader_keeps_the_relay_small() {
    const SIZE: usize = 200 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let cap = (SIZE + 1).to_string();
    let relay = RelayProcess::start(&dir.path().join("relay"), &["--max-file", &cap, "--rate-limit", "0"], &[]).await;
    let mut config = daemon_config(&relay.ws(), &dir.path().join("daemon"));
    config.mode = Some(Mode::Auto);
    config.max_file = SIZE as u64 + 1;
    let daemon = TestDaemon::start_with(config).await;
    let bytes: Vec<u8> = (0..SIZE as u64).map(|i| (i ^ (i >> 11) ^ (i >> 23)) as u8).collect();
    let want = sha256(&bytes);
    let path = dir.path().join("release.tar");
    let url = format!("{}/api/v1/files/{}?path={}", relay.http(), daemon.code(), path.display());

    let pid = relay.child.id().unwrap();
    let before = rss(pid);
    let req = client().put(&url).header("x-content-sha256", &want).body(bytes);
    // 200 MiB up in one wait: a loaded debug build may take longer than PATIENCE.
    let (status, _, body) = send_for(BULK_PATIENCE, req).await;
    assert_eq!((status, json(&body)["sha256"].as_str()), (201, Some(want.as_str())));
    let pushed = rss(pid).saturating_sub(before);
    assert!(pushed < 64 * 1024 * 1024, "the relay grew by {} MiB during a 200 MiB push", pushed >> 20);

    let mut resp = within("the pull", client().get(&url).send()).await.unwrap();
    assert_eq!(resp.headers()["x-content-sha256"], want.as_str());
    let (mut hasher, mut got, mut peak) = (Sha256::new(), 0usize, before);
    while let Some(chunk) = within("a chunk", resp.chunk()).await.unwrap() {
        hasher.update(&chunk);
        got += chunk.len();
        // A slow reader: a pause every MiB, while the daemon could send far faster.
        if got % (1024 * 1024) < chunk.len() {
            tokio::time::sleep(std::time::Duration::from_millis(4)).await;
            peak = peak.max(rss(pid));
        }
    }
    assert_eq!(got, SIZE);
    assert_eq!(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>(), want);
    let growth = peak.saturating_sub(before);
    assert!(growth < 64 * 1024 * 1024, "the relay grew by {} MiB while a slow reader pulled", growth >> 20);
    eprintln!(
        "relay RSS: {} MiB at start, +{} MiB after the push, +{} MiB at most during the pull",
        before >> 20,
        pushed >> 20,
        growth >> 20
    );
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_reset_stops_a_waiting_pull_and_withdraws_it() {
    let site = Site::start(Mode::Supervised, aic::protocol::files::DEFAULT_MAX_FILE).await;
    let mut watcher = Client::connect(&site.socket()).await.unwrap();
    watcher.call(Op::Subscribe).await.unwrap();
    let path = site.path("secret.key");
    std::fs::write(&path, b"k").unwrap();
    let waiting = tokio::spawn(send(client().get(site.url(&path))));
    let approval = queued(&mut watcher).await;
    assert_eq!(approval.command, format!("pull 1 B from {}", path.display()));

    watcher.call(Op::CodeReset).await.unwrap();
    let (status, _, body) = within("the stopped pull", waiting).await.unwrap();
    assert_eq!((status, json(&body)["reason"].as_str()), (403, Some("forbidden")), "{}", json(&body));
    within("the approval withdrawn", async {
        loop {
            if let Event::ApprovalDecided { command, decision } = watcher.next_event().await.unwrap()
                && command == approval.id
            {
                return assert_eq!(decision, Decision::Withdrawn);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_mid_push_leaves_nothing_behind() {
    let site = Site::auto().await;
    let path = site.path("half");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let push = tokio::spawn(site.push(&path, "", Vec::new()).header("content-length", "1000000").body(body).send());
    tx.send(Ok(vec![7u8; 300_000])).await.unwrap();
    // The daemon has the temporary file open once the first bytes are written.
    eventually("the temporary file", || std::fs::read_dir(site.path("")).unwrap().count() == 1).await;
    push.abort();
    drop(tx);
    eventually("the temporary file removed", || std::fs::read_dir(site.path("")).unwrap().count() == 0).await;
    assert!(!path.exists());
}
