//! The web pages in a real headless Chromium (Debian's `chromium`, driven by
//! npm's `playwright-core`, pinned in tests/browser/package.json): sign-in by
//! a mailed link, the dashboard (a key made and revoked, a machine renamed), a
//! cross-site POST refused, the OAuth consent continuing to the client, and
//! that app revoked on the dashboard.
//! Screenshots at desktop and phone widths are kept in
//! target/test-artifacts/browser/.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aic::relay;
use common::{TestDaemon, TestRelay, within};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// Node, Chromium and the pinned playwright-core (`.ci/run` installs them), or `None` with the reason.
fn tools() -> Option<PathBuf> {
    let modules = std::env::var_os("AIC_BROWSER_MODULES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/aic-ci/browser/node_modules")
    });
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing = [
        (!node).then_some("node"),
        (!Path::new("/usr/bin/chromium").exists()).then_some("/usr/bin/chromium (apt-get install chromium)"),
        (!modules.join("playwright-core").exists())
            .then_some("playwright-core (npm ci in tests/browser, as .ci/run does)"),
    ];
    let missing: Vec<&str> = missing.into_iter().flatten().collect();
    if missing.is_empty() {
        return Some(modules);
    }
    if std::env::var_os("CI").is_some() {
        panic!("browser test tools missing under CI: {missing:?}");
    }
    eprintln!("skipped: missing {missing:?}");
    None
}

/// An SMTP sink (tests/signin/smtp_sink.py) writing decoded mail to `dir`; its port.
async fn smtp_sink(dir: &Path) -> Option<(u16, tokio::process::Child)> {
    let python = std::env::var("AIC_SMTP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signin/smtp_sink.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = within("the SMTP sink's port", lines.next_line()).await.ok()??;
    Some((port.trim().parse().ok()?, child))
}

#[tokio::test]
async fn sign_in_dashboard_csrf_and_consent_in_chromium() {
    let Some(modules) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    std::fs::create_dir(&mail_dir).unwrap();
    let Some((smtp_port, _sink)) = smtp_sink(&mail_dir).await else {
        assert!(std::env::var_os("CI").is_none(), "no SMTP sink (python3-aiosmtpd) under CI");
        return;
    };
    let mut config = relay::Config::new(dir.path().join("relay"));
    config.mail = Some(relay::mail::MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{smtp_port}"),
        from: "relay@example.com".into(),
    });
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let code = daemon.online().await.canonical();

    let registered: Value = common::client()
        .post(format!("{}/register", relay.http()))
        .json(&json!({"redirect_uris": ["http://127.0.0.1:9/callback"], "client_name": "Browser Test App"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authorize = format!(
        "{}/authorize?response_type=code&client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=xyz\
         &resource={}",
        relay.http(),
        registered["client_id"].as_str().unwrap(),
        format!("{}/mcp/oauth", relay.http()).replace(':', "%3A").replace('/', "%2F"),
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/browser");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/signin.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .env("RELAY", relay.http())
        .env("MAIL_DIR", &mail_dir)
        .env("CODE", &code)
        .env("AUTHORIZE_URL", &authorize)
        .env("SHOTS", &shots)
        .env("MODULES", &modules)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the browser run finished").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "ok signed in by the mailed link",
        "ok key shown once",
        "ok machine renamed",
        "ok key revoked",
        "ok cross-site POST refused",
        "ok consent continued to the client with code, state and iss",
        "ok the dashboard lists the connected app",
        "ok app revoked on the dashboard",
        "ok the revoked token is refused with a sign-in challenge",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    for name in ["04-dashboard-empty", "06-dashboard-machine", "09-consent", "10-connected-app"] {
        for width in ["desktop", "phone"] {
            assert!(shots.join(format!("{name}-{width}.png")).exists(), "{name}-{width}");
        }
    }
    let alias: String =
        sqlx::query_scalar("SELECT alias FROM links").fetch_one(relay.state.store.pool()).await.unwrap();
    assert_eq!(alias, "box");
    let revoked: Option<i64> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys").fetch_one(relay.state.store.pool()).await.unwrap();
    assert!(revoked.is_some(), "the key was revoked");
    daemon.stop().await;
    relay.stop().await;
}
