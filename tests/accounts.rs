//! The access rules with accounts: every row of DESIGN.md's table, aliases,
//! the operator's blocks and approvals, code reset, rate limits.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use aic::protocol::SessionCode;
use aic::protocol::control::{Event, Op};
use aic::tui::client::Client;
use common::*;
use serde_json::{Value, json};

struct Site {
    dir: tempfile::TempDir,
    relay: TestRelay,
    daemon: TestDaemon,
}

impl Site {
    /// A relay whose codes work anonymously for `window`, and one daemon in auto mode.
    async fn new(window: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = aic::relay::Config::new(dir.path().join("relay"));
        config.anonymous_window = window;
        let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
        let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
        Self { dir, relay, daemon }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("daemon/aic.sock")
    }

    fn code(&self) -> String {
        self.daemon.code().to_string()
    }

    /// `POST /api/v1/exec` as `key` (None: anonymous); status and raw body.
    async fn exec_raw(&self, key: Option<&str>, code: &str, command: &str) -> (u16, Vec<u8>) {
        let mut request = client()
            .post(format!("{}/api/v1/exec", self.relay.http()))
            .json(&json!({"code": code, "command": command}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let resp = within("exec", request.send()).await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    async fn exec(&self, key: Option<&str>, code: &str, command: &str) -> (u16, Value) {
        let (status, body) = self.exec_raw(key, code, command).await;
        (status, serde_json::from_slice(&body).unwrap())
    }

    async fn status(&self, key: &str, code: &str) -> (u16, Value) {
        let resp =
            client().get(format!("{}/api/v1/status/{code}", self.relay.http())).bearer_auth(key).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn console(&self, args: &[&str]) -> (i32, String, String) {
        let said = common::console(&self.socket(), args).await;
        (said.code, said.stdout, said.stderr)
    }

    async fn admins(&self) -> Vec<Value> {
        let (code, out, err) = self.console(&["admins", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

fn hostname() -> String {
    aic::daemon::link::agent_info().hostname
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_use_in_the_first_hour_links_the_machine_under_its_host_name() {
    let site = Site::new(Duration::from_secs(3600)).await;
    let key = site.relay.account("ops@example.com").await;
    let (status, body) = site.exec(Some(&key), &site.code(), "echo linked").await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("linked\n")), "{body}");

    // The alias works wherever the code does.
    let alias = hostname();
    let (status, body) = site.exec(Some(&key), &alias, "echo by-alias").await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("by-alias\n")), "{body}");
    let (status, body) = site.status(&key, &alias.to_uppercase()).await;
    assert_eq!((status, body["code"].as_str(), body["online"].as_bool()), (200, Some(alias.as_str()), Some(true)));

    let admins = site.admins().await;
    assert_eq!(admins.len(), 1);
    assert_eq!(admins[0]["email"], "op****@exam****.com");
    assert_eq!(admins[0]["alias"], alias);
    assert_eq!(admins[0]["state"], "active");
    let (_, human, _) = site.console(&["admins"]).await;
    assert!(human.contains("op****@exam****.com") && !human.contains("ops@example.com"), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_link_after_the_first_hour_waits_for_the_operator() {
    let site = Site::new(Duration::ZERO).await;
    let key = site.relay.account("late@example.com").await;
    let mut watcher = Client::connect(&site.socket()).await.unwrap();
    watcher.call(Op::Subscribe).await.unwrap();

    for _ in 0..2 {
        let (status, body) = site.exec(Some(&key), &site.code(), "echo hi").await;
        assert_eq!((status, body["reason"].as_str()), (403, Some("approval_required")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("operator's approval"));
    }
    // The operator hears of the new link.
    within("the accounts event", async { while !matches!(watcher.next_event().await.unwrap(), Event::Accounts) {} })
        .await;
    assert_eq!(site.admins().await[0]["state"], "pending");

    let (code, out, err) = site.console(&["admins", "approve", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("la****@exam****.com") && out.contains("is now active"), "{out}");
    // An active link works although the code is past its first hour; anonymous use does not.
    let (status, body) = site.exec(Some(&key), &site.code(), "echo approved").await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("approved\n")), "{body}");
    let (status, body) = site.exec(None, &site.code(), "echo anon").await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("anonymous_expired")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_account_is_refused_at_once_until_unblocked() {
    let site = Site::new(Duration::from_secs(3600)).await;
    let key = site.relay.account("blocked@example.com").await;
    assert_eq!(site.exec(Some(&key), &site.code(), "true").await.0, 200);

    let id = site.admins().await[0]["id"].as_str().unwrap().to_owned();
    let (code, _, err) = site.console(&["admins", "block", &id]).await;
    assert_eq!(code, 0, "{err}");
    let (status, body) = site.exec(Some(&key), &site.code(), "echo no").await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("blocked")));
    let (status, _) = site.exec(Some(&key), &hostname(), "echo no").await;
    assert_eq!(status, 403, "the alias is blocked too");
    let (_, listed, _) = site.console(&["admins"]).await;
    assert!(listed.contains("Blocked:\n  1. bl****@exam****.com"), "{listed}");

    let (code, _, err) = site.console(&["admins", "unblock", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(site.exec(Some(&key), &site.code(), "echo back").await.1["stdout"], "back\n");
    let (code, _, err) = site.console(&["admins", "approve", "1"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is active; that cannot be changed"), "{err}");
    let (code, _, err) = site.console(&["admins", "block", "9"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no linked account 9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_revoked_keys_get_401_and_unknown_machines_404() {
    let site = Site::new(Duration::from_secs(3600)).await;
    let key = site.relay.account("keys@example.com").await;
    for bad in ["aic_nope_nope", "not-a-key", &format!("{key}x")] {
        let (status, body) = site.exec(Some(bad), &site.code(), "true").await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("unauthorized")), "{bad}");
    }
    let resp = client()
        .post(format!("{}/api/v1/exec", site.relay.http()))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({"code": site.code(), "command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let (status, body) = site.exec(Some(&key), &SessionCode::generate().to_string(), "true").await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("not_found")));
    let (status, _) = site.exec(Some(&key), "no-such-alias", "true").await;
    assert_eq!(status, 404);

    assert_eq!(site.exec(Some(&key), &site.code(), "true").await.0, 200);
    let key_id = aic::relay::accounts::parse_key(&key).unwrap().0.to_owned();
    let revoke = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["key", "revoke", &key_id, "--data-dir"])
        .arg(&site.relay.data_dir)
        .output()
        .await
        .unwrap();
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    let (status, body) = site.exec(Some(&key), &site.code(), "true").await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("unauthorized")), "revoked while the relay runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_are_made_unique_per_account() {
    let site = Site::new(Duration::from_secs(3600)).await;
    let second = TestDaemon::start(&site.relay.ws(), &site.dir.path().join("second")).await;
    let key = site.relay.account("two@example.com").await;
    assert_eq!(site.exec(Some(&key), &site.code(), "true").await.0, 200);
    assert_eq!(site.exec(Some(&key), &second.code().to_string(), "true").await.0, 200);
    let host = hostname();
    let (_, first) = site.status(&key, &host).await;
    let (_, other) = site.status(&key, &format!("{host}-2")).await;
    assert_eq!(first["code"], host);
    assert_eq!(other["code"], format!("{host}-2"));
    // Each alias reaches its own machine.
    let (_, a) = site.exec(Some(&key), &host, "echo $PWD").await;
    assert_eq!(a["exitCode"], 0);
    let other_key = site.relay.account("other@example.com").await;
    assert_eq!(site.exec(Some(&other_key), &second.code().to_string(), "true").await.0, 200);
    let (status, other) = site.status(&other_key, &host).await;
    assert_eq!((status, other["online"].as_bool()), (200, Some(true)), "another account starts at the plain name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_reset_drops_every_link_and_the_old_code() {
    let mut site = Site::new(Duration::from_secs(3600)).await;
    let key = site.relay.account("reset@example.com").await;
    let old = site.code();
    assert_eq!(site.exec(Some(&key), &old, "true").await.0, 200);
    assert_eq!(site.admins().await.len(), 1);

    let (code, out, err) = site.console(&["code", "reset", "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    let new: SessionCode = out.lines().next().unwrap().strip_prefix("New session code: ").unwrap().parse().unwrap();
    within("the new code", site.daemon.status.wait_for(|s| s.code == Some(new))).await.unwrap();

    assert!(site.admins().await.is_empty(), "links are gone");
    let unknown = SessionCode::generate().to_string();
    assert_eq!(site.exec_raw(Some(&key), &old, "true").await, site.exec_raw(Some(&key), &unknown, "true").await);
    assert_eq!(site.exec_raw(None, &old, "true").await, site.exec_raw(None, &unknown, "true").await);
    assert_eq!(site.exec(Some(&key), &hostname(), "true").await.0, 404, "the alias went with the link");
    // The new code's first hour starts: the account links again at once.
    let (status, body) = site.exec(Some(&key), &new.to_string(), "echo again").await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("again\n")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_hit_the_rate_limit_and_learn_nothing() {
    let site = Site::new(Duration::ZERO).await;
    let real = site.code();
    let mut answers = std::collections::HashMap::<(u16, Vec<u8>), usize>::new();
    let (mut retry_after, mut limited) = (None, 0);
    // Guesses until a few are refused: one that keeps going past its 429s is
    // answered more and more slowly (tests/hardening.rs).
    for i in 0..1000 {
        let code = if i == 60 { real.clone() } else { SessionCode::generate().to_string() };
        let resp = client().get(format!("{}/api/v1/status/{code}", site.relay.http())).send().await.unwrap();
        let status = resp.status().as_u16();
        if status == 429 {
            retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            limited += 1;
        }
        *answers.entry((status, resp.bytes().await.unwrap().to_vec())).or_default() += 1;
        if limited == 5 {
            break;
        }
    }
    let statuses: Vec<u16> = answers.keys().map(|(s, _)| *s).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    let others: Vec<_> = answers.keys().filter(|(s, _)| *s != 429).collect();
    assert_eq!(others.len(), 1, "every answer that was not 429 is the same bytes: {others:?}");
    assert_eq!(others[0].0, 403);
    // 120 a minute, less the daemon's registration from the same address,
    // plus the few that trickle back in while the loop runs.
    let allowed = answers[others[0]];
    assert!((115..200).contains(&allowed), "{allowed} answered before the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_go_through_the_same_account_rules() {
    let site = Site::new(Duration::ZERO).await;
    let key = site.relay.account("mcp@example.com").await;
    let call = |auth: Option<String>, code: String| {
        let http = site.relay.http();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "remote_exec", "arguments": {"code": code, "command": "echo mcp"}}});
            let mut request = client()
                .post(format!("{http}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .json(&body);
            if let Some(auth) = auth {
                request = request.bearer_auth(auth);
            }
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer["result"].clone()
        }
    };
    let text = |r: &Value| r["content"][0]["text"].as_str().unwrap_or_default().to_owned();
    let refused = call(Some("aic_bad_key".into()), site.code()).await;
    assert!(text(&refused).starts_with("Refused (unauthorized)"), "{refused}");
    let pending = call(Some(key.clone()), site.code()).await;
    assert!(text(&pending).starts_with("Refused (approval_required)"), "{pending}");
    assert_eq!(site.console(&["admins", "approve", "1"]).await.0, 0);
    let ran = call(Some(key), hostname()).await;
    assert_eq!(ran["structuredContent"]["stdout"], "mcp\n", "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_status_and_agent_registration_count_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = aic::relay::Config::new(dir.path().join("relay"));
    config.rate_limit = 3;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;

    // MCP's session_status is a code-guessing oracle too: it is counted like the REST API.
    let guess = |n: u64| {
        let http = relay.http();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": "session_status", "arguments": {"code": SessionCode::generate().to_string()}}});
            let resp = client()
                .post(format!("{http}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.headers().get("retry-after").is_some())
        }
    };
    let mut answers = Vec::new();
    for n in 0..5 {
        answers.push(guess(n).await);
    }
    assert_eq!(&answers[..3], &[(200, false); 3], "{answers:?}");
    assert_eq!(answers[3], (429, true), "{answers:?}");

    // So does registering daemons: the WebSocket upgrade itself is refused.
    let ws = format!("{}/agent/ws", relay.ws());
    let err = tokio_tungstenite::connect_async(&ws).await.expect_err("past the limit");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 429),
        other => panic!("expected HTTP 429, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_lookup_is_not_a_use_the_operator_sees() {
    let site = Site::new(Duration::from_secs(3600)).await;
    let key = site.relay.account("looker@example.com").await;
    // What the operator's list shows, with the uses noted so far written (the relay does it every few seconds).
    let last_used = || async {
        site.relay.state.usage.flush(&site.relay.state.store).await.unwrap();
        site.admins().await[0]["last_used_ms"].as_u64().unwrap()
    };
    assert_eq!(site.exec(Some(&key), &site.code(), "true").await.0, 200);
    let used = last_used().await;
    // The clock moves on, so that a lookup noted as a use would show.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(site.status(&key, &site.code()).await.0, 200);
    assert_eq!(last_used().await, used, "a lookup is not a use");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(site.exec(Some(&key), &site.code(), "true").await.0, 200);
    assert!(last_used().await > used, "a command is");
}
