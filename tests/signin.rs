//! Web sign-in end to end: a real SMTP sink (aiosmtpd) receives the mail, the
//! test reads the link from the decoded message and plays the browser (its
//! cookies, its `Origin`): one use per link, a code for another device, the
//! per-address limit, expired links, the dashboard, CSRF, and daily
//! re-activation of the keys made there.

#[path = "signin/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use aic::relay::{self, signin};
use browser::Browser;
use common::{TestRelay, within};
use reqwest::header;
use tokio::io::AsyncBufReadExt;

/// A Python with aiosmtpd (Debian's python3-aiosmtpd, which `.ci/run` installs).
fn smtp_python() -> Option<String> {
    let candidates = std::env::var("AIC_SMTP_PYTHON").into_iter().chain(["/usr/bin/python3".into(), "python3".into()]);
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("no python3 with aiosmtpd: .ci/run installs python3-aiosmtpd");
    }
    eprintln!("skipped: no python3 with aiosmtpd (apt-get install python3-aiosmtpd)");
    None
}

/// The SMTP sink, a child of the test, killed on drop.
struct Sink {
    port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Sink {
    async fn start() -> Option<Self> {
        let python = smtp_python()?;
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signin/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the SMTP sink");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = within("the SMTP sink's port", lines.next_line()).await.unwrap().expect("the sink prints its port");
        Some(Self { port: port.trim().parse().unwrap(), dir, _child: child })
    }

    fn mails(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        files
    }

    /// The `n`th message (from 1), once it has arrived.
    async fn mail(&self, n: usize) -> String {
        common::eventually("the sign-in mail", || self.mails().len() >= n).await;
        std::fs::read_to_string(&self.mails()[n - 1]).unwrap()
    }
}

/// The sign-in link in a mail.
fn link_in(mail: &str) -> String {
    let link = mail.split_whitespace().find(|w| w.contains("/login/link?t="));
    link.expect("a link in the mail").to_owned()
}

/// Asks for a link, reads the `n`th mail, and redeems the link here.
async fn sign_in(browser: &mut Browser, sink: &Sink, email: &str, n: usize) -> reqwest::Response {
    let asked = browser.post("/login", &[("email", email)]).await;
    assert_eq!(asked.status(), 200);
    let link = link_in(&sink.mail(n).await);
    let token = link.split("t=").nth(1).unwrap().to_owned();
    browser.post("/login/link", &[("t", &token)]).await
}

async fn relay_with_mail(dir: &Path, sink: &Sink) -> TestRelay {
    let mut config = relay::Config::new(dir.to_path_buf());
    config.mail = Some(relay::mail::MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", sink.port),
        from: "aic relay <relay@example.com>".into(),
    });
    TestRelay::start_with(config, "127.0.0.1:0").await
}

#[tokio::test]
async fn a_mailed_link_signs_its_browser_in_once_and_opens_the_dashboard() {
    let Some(sink) = Sink::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_mail(dir.path(), &sink).await;
    let mut browser = Browser::new(relay.http());

    let (status, page) = browser.get("/login").await;
    assert_eq!(status, 200);
    assert!(page.contains("Email me a sign-in link"), "{page}");
    let asked = browser.post("/login", &[("email", "Ann@Example.com")]).await;
    assert_eq!(asked.status(), 200);
    let csp = asked.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("form-action 'self'"), "{csp}");
    let page = asked.text().await.unwrap();
    assert!(page.contains("an****@exam****.com") && !page.contains("ann@example.com"), "{page}");

    let mail = sink.mail(1).await;
    assert!(mail.starts_with("To: ann@example.com\nSubject: Your aic sign-in link"), "{mail}");
    let link = link_in(&mail);
    assert!(link.starts_with(&format!("{}/login/link?t=", relay.http())), "{link}");
    // A GET (a mail scanner's prefetch) only shows the button.
    let (status, page) = browser.get(&link).await;
    assert_eq!(status, 200);
    assert!(page.contains("<button type=\"submit\" class=\"primary\">Sign in</button>"), "{page}");
    let (status, page) = browser.get("/dashboard").await;
    assert_eq!(status, 303, "not signed in yet: {page}");

    let token = link.split("t=").nth(1).unwrap().to_owned();
    let signed = browser.post("/login/link", &[("t", &token)]).await;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()[header::LOCATION], "/dashboard");
    let cookie = signed.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
    assert!(cookie.iter().any(|c| c.starts_with("aic-session=") && c.contains("HttpOnly; SameSite=Lax")), "{cookie:?}");
    let (status, page) = browser.get("/dashboard").await;
    assert_eq!(status, 200);
    assert!(page.contains("ann@example.com") && page.contains("Daily re-activation: on"), "{page}");

    // The link worked once: a second use is refused with a page that says what to do.
    let again = browser.post("/login/link", &[("t", &token)]).await;
    assert_eq!(again.status(), 410);
    assert!(again.text().await.unwrap().contains("Ask for a new link"));
    let (status, _) = browser.get(&link).await;
    assert_eq!(status, 410);
    relay.stop().await;
}

#[tokio::test]
async fn another_device_is_shown_a_code_for_the_browser_that_asked() {
    let Some(sink) = Sink::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_mail(dir.path(), &sink).await;
    let mut laptop = Browser::new(relay.http());
    assert_eq!(laptop.post("/login", &[("email", "bo@example.com")]).await.status(), 200);
    let token = link_in(&sink.mail(1).await).split("t=").nth(1).unwrap().to_owned();

    let mut phone = Browser::new(relay.http());
    let shown = phone.post("/login/link", &[("t", &token)]).await;
    assert_eq!(shown.status(), 200, "the phone is not signed in");
    assert!(phone.cookies.is_empty(), "{:?}", phone.cookies);
    let page = shown.text().await.unwrap();
    let code = page.split("<p class=\"code\">").nth(1).unwrap()[..6].to_owned();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{page}");

    // Typed on the phone (without the laptop's cookie) the code does nothing.
    assert_eq!(phone.post("/login/code", &[("code", &code)]).await.status(), 410);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = laptop.post("/login/code", &[("code", wrong)]).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("That is not the code"));
    let signed = laptop.post("/login/code", &[("code", &code)]).await;
    assert_eq!(signed.status(), 303);
    let (status, page) = laptop.get("/dashboard").await;
    assert_eq!(status, 200);
    assert!(page.contains("bo@example.com"), "{page}");
    relay.stop().await;
}

#[tokio::test]
async fn links_past_the_per_address_limit_are_refused_and_expired_ones_say_what_to_do() {
    let Some(sink) = Sink::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_mail(dir.path(), &sink).await;
    let mut browser = Browser::new(relay.http());
    for _ in 0..3 {
        assert_eq!(browser.post("/login", &[("email", "cy@example.com")]).await.status(), 200);
    }
    let refused = browser.post("/login", &[("email", "cy@example.com")]).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("wait 15 minutes"));
    // Another address is not held up by this one's limit.
    assert_eq!(browser.post("/login", &[("email", "di@example.com")]).await.status(), 200);
    sink.mail(4).await;
    assert_eq!(sink.mails().len(), 4, "no mail for the refused request");

    let (store, keys) = (&relay.state.store, &relay.state.keys);
    let sixteen_minutes_ago = relay::now_ms() - 16 * 60_000;
    let old =
        signin::create_link(store, keys, "cy@example.com", None, "/dashboard", sixteen_minutes_ago).await.unwrap();
    let (status, page) = browser.get(&format!("/login/link?t={old}")).await;
    assert_eq!(status, 410);
    assert!(page.contains("older than 15 minutes") && page.contains("href=\"/login\""), "{page}");
    assert_eq!(browser.post("/login/link", &[("t", &old)]).await.status(), 410);
    relay.stop().await;
}

/// The key in the page `POST /dashboard/keys` answers with.
async fn new_key(browser: &mut Browser) -> String {
    let made = browser.post("/dashboard/keys", &[]).await;
    assert_eq!(made.status(), 200);
    let page = made.text().await.unwrap();
    let key = page.split("id=\"new-key\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert!(key.starts_with("aic_"), "{page}");
    key
}

async fn status_with(relay: &TestRelay, key: &str) -> (u16, serde_json::Value) {
    let response = common::client()
        .get(format!("{}/api/v1/status/AIC-2345-6789-ABCD", relay.http()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn keys_made_on_the_dashboard_act_within_a_day_of_signing_in() {
    let Some(sink) = Sink::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_mail(dir.path(), &sink).await;
    let mut browser = Browser::new(relay.http());
    assert_eq!(sign_in(&mut browser, &sink, "ed@example.com", 1).await.status(), 303);

    // A POST from another site is refused and changes nothing.
    let forged = browser.post_from("/dashboard/keys", &[], "https://evil.example", "cross-site").await;
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("sent from another site"));
    let (_, page) = browser.get("/dashboard").await;
    assert!(page.contains("No API keys yet."), "{page}");

    let key = new_key(&mut browser).await;
    let (_, page) = browser.get("/dashboard").await;
    let key_id = aic::relay::accounts::parse_key(&key).unwrap().0.to_owned();
    assert!(page.contains(&format!("aic_{key_id}_…")) && !page.contains(&key), "{page}");
    assert_eq!(status_with(&relay, &key).await.0, 404, "the key acts: the code is only unknown");

    // A day and more after the sign-in, the key is dormant.
    sqlx::query("UPDATE accounts SET last_sign_in_at = $1 WHERE email = 'ed@example.com'")
        .bind(relay::now_ms() - 25 * 3600 * 1000)
        .execute(relay.state.store.pool())
        .await
        .unwrap();
    let (status, body) = status_with(&relay, &key).await;
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "reactivation_required");
    assert_eq!(body["login_url"], format!("{}/login", relay.http()));
    assert!(body["error"].as_str().unwrap().contains("sign in at"), "{body}");

    // Turned off on the dashboard (flagged as the riskier choice), the key acts again.
    let off = browser.post("/dashboard/reactivation", &[("on", "off")]).await;
    assert_eq!(off.status(), 303);
    let (_, page) = browser.get("/dashboard?note=reactivation-off").await;
    assert!(page.contains("Daily re-activation: off") && page.contains("<strong>Risk:</strong>"), "{page}");
    assert_eq!(status_with(&relay, &key).await.0, 404);

    // Revoked, it is refused as invalid.
    let revoked = browser.post("/dashboard/keys/revoke", &[("key_id", &key_id)]).await;
    assert_eq!(revoked.status(), 303);
    assert_eq!(status_with(&relay, &key).await.0, 401);

    // Signing out ends the session.
    assert_eq!(browser.post("/logout", &[]).await.status(), 200);
    assert_eq!(browser.get("/dashboard").await.0, 303);
    relay.stop().await;
}

#[tokio::test]
async fn the_operator_prints_a_link_when_the_relay_sends_no_mail() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut browser = Browser::new(relay.http());
    let asked = browser.post("/login", &[("email", "fi@example.com")]).await;
    assert!(asked.text().await.unwrap().contains("aic-relay login-link"));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["login-link", "Fi@Example.com", "--public-url", &relay.http(), "--data-dir"])
        .arg(dir.path())
        .output();
    let out = within("aic-relay login-link", out).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Sign-in link for fi@example.com"), "{text}");
    let token = link_in(&text).split("t=").nth(1).unwrap().to_owned();
    // Not bound to any browser: whoever opens it signs in.
    let mut other = Browser::new(relay.http());
    assert_eq!(other.post("/login/link", &[("t", &token)]).await.status(), 303);
    assert_eq!(other.get("/dashboard").await.0, 200);

    let set = |on: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
            .args(["account", "set", "fi@example.com", "--daily-reactivation", on, "--data-dir"])
            .arg(dir.path())
            .output()
    };
    let out = within("aic-relay account set", set("off")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Daily re-activation is off for fi@example.com.\n");
    let (_, page) = other.get("/dashboard").await;
    assert!(page.contains("Daily re-activation: off"), "{page}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_code_session_key_or_full_email_reaches_a_log_or_the_database() {
    let Some(sink) = Sink::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let args = ["--smtp-url", smtp.as_str(), "--mail-from", "relay@example.com"];
    let relay = common::RelayProcess::start(dir.path(), &args, &[("AIC_LOG", "debug")]).await;
    let mut laptop = Browser::new(relay.http());
    assert_eq!(laptop.post("/login", &[("email", "Secret.Person@example.com")]).await.status(), 200);
    let token = link_in(&sink.mail(1).await).split("t=").nth(1).unwrap().to_owned();
    let mut phone = Browser::new(relay.http());
    let page = phone.post("/login/link", &[("t", &token)]).await.text().await.unwrap();
    let code = page.split("<p class=\"code\">").nth(1).unwrap()[..6].to_owned();
    assert_eq!(laptop.post("/login/code", &[("code", &code)]).await.status(), 303);
    let made = laptop.post("/dashboard/keys", &[]).await.text().await.unwrap();
    let key = made.split("id=\"new-key\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    let secret = aic::relay::accounts::parse_key(&key).unwrap().1.to_owned();
    let session = laptop.cookies["aic-session"].clone();
    let browser_cookie = laptop.cookies.get("aic-signin").cloned();
    assert!(browser_cookie.is_none(), "the sign-in cookie is cleared once used");

    let log = relay.stop().await;
    assert!(log.contains("signed in on the web"), "{log}");
    let secrets = [("link", token.as_str()), ("session", session.as_str()), ("key", secret.as_str())];
    for (what, value) in secrets.iter().chain([("full email", "secret.person@example.com")].iter()) {
        assert!(!log.to_lowercase().contains(&value.to_lowercase()), "the log holds the {what}:\n{log}");
    }
    assert!(!log.contains(&format!("code={code}")) && !log.contains(&format!("\"{code}\"")), "{log}");
    for (path, bytes) in common::files_under(dir.path()) {
        for (what, value) in secrets {
            let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "{} holds the {what}", path.display());
        }
    }
}
