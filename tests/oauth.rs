//! OAuth 2.1 end to end with a client the project did not write: rmcp's OAuth
//! client discovers the relay's metadata from `/mcp/oauth`'s 401, registers
//! (by DCR, or by a Client ID Metadata Document served over HTTPS), sends the
//! user through sign-in and consent (played here as a browser would), trades
//! the code with PKCE, and runs `remote_exec` on a machine whose code is past
//! its first hour once the operator approves the link. Refresh tokens work
//! once; a dormant account's token gets 403 `reactivation_required`. The
//! account sees its connected apps on the dashboard and revokes them there;
//! a client revokes its own tokens at `/oauth/revoke` (RFC 7009).

#[path = "signin/browser.rs"]
mod browser;
mod common;

use std::sync::Arc;
use std::time::Duration;

use aic::relay::{self, accounts, signin};
use browser::Browser;
use common::{TestDaemon, TestRelay, within};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{AuthClient, AuthorizationManager, AuthorizationRequest, AuthorizationSession};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// The client's redirect: a loopback address (its port may differ from the registered one).
const REDIRECT: &str = "http://127.0.0.1:38123/callback";

/// A relay whose codes leave their first hour at once, and a daemon in auto mode on it.
async fn setup(tune: impl FnOnce(&mut relay::Config)) -> (tempfile::TempDir, TestRelay, TestDaemon) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = relay::Config::new(dir.path().join("relay"));
    config.anonymous_window = Duration::ZERO;
    tune(&mut config);
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let mut daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    daemon.online().await;
    (dir, relay, daemon)
}

/// A browser signed in as `email` (by a link the operator printed).
async fn signed_in(relay: &TestRelay, email: &str) -> Browser {
    let (store, keys) = (&relay.state.store, &relay.state.keys);
    let token = signin::create_link(store, keys, email, None, "/dashboard", relay::now_ms()).await.unwrap();
    let mut browser = Browser::new(relay.http());
    assert_eq!(browser.post("/login/link", &[("t", &token)]).await.status(), 303);
    browser
}

/// Plays the user at the authorization URL: consent page, Allow, and the
/// page that continues to the client; returns where it continues to.
async fn consent(browser: &mut Browser, auth_url: &str, client_name: &str) -> String {
    let (status, page) = browser.get(auth_url).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(client_name) && page.contains("asks to act as"), "{page}");
    let mut fields: Vec<(String, String)> = page
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once("\" value=\"").unwrap();
            let value =
                rest.split('"').next().unwrap().replace("&amp;", "&").replace("&#39;", "'").replace("&quot;", "\"");
            (name.to_owned(), value)
        })
        .collect();
    fields.push(("decision".into(), "allow".into()));
    let form: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let answer = browser.post("/authorize", &form).await;
    assert_eq!(answer.status(), 200, "a page that continues, not a redirect");
    let page = answer.text().await.unwrap();
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"0;url="), "{page}");
    let href = page.split("id=\"continue\" href=\"").nth(1).unwrap().split('"').next().unwrap();
    href.replace("&amp;", "&")
}

/// Discovers, registers, authorizes and trades the code: an authorized manager.
async fn authorize(
    relay: &TestRelay,
    browser: &mut Browser,
    request: AuthorizationRequest,
    name: &str,
) -> AuthorizationManager {
    let resource = format!("{}/mcp/oauth", relay.http());
    let mut manager = within("discovery", AuthorizationManager::new(resource.as_str())).await.unwrap();
    let metadata = within("metadata", manager.resolve_metadata()).await.expect("the relay's OAuth metadata");
    manager.set_metadata(metadata.metadata);
    let session =
        within("registration", AuthorizationSession::new(manager, request)).await.map_err(|(_, e)| e).unwrap();
    let auth_url = session.get_authorization_url().to_owned();
    assert!(auth_url.contains("code_challenge_method=S256"), "{auth_url}");
    let callback = consent(browser, &auth_url, name).await;
    assert!(
        callback.starts_with(REDIRECT) && callback.contains(&format!("iss={}", urlenc(&relay.http()))),
        "{callback}"
    );
    within("token", session.handle_callback_url(&callback)).await.expect("tokens for the code");
    session.auth_manager
}

fn urlenc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

/// Runs `uname -s` on the machine through `/mcp/oauth` as the authorized client.
async fn exec_through(
    relay: &TestRelay,
    manager: AuthorizationManager,
    code: &str,
) -> (Value, Arc<tokio::sync::Mutex<AuthorizationManager>>) {
    let auth = AuthClient::new(reqwest::Client::default(), manager);
    let shared = Arc::clone(&auth.auth_manager);
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp/oauth", relay.http()));
    let client =
        within("MCP initialize", ().serve(StreamableHttpClientTransport::with_client(auth, config))).await.unwrap();
    let Value::Object(args) = json!({"code": code, "command": "echo via-oauth"}) else { unreachable!() };
    let result =
        within("remote_exec", client.call_tool(CallToolRequestParams::new("remote_exec").with_arguments(args))).await;
    let value = serde_json::to_value(result.unwrap()).unwrap();
    within("MCP close", client.cancel()).await.unwrap();
    (value, shared)
}

async fn approve_pending(relay: &TestRelay, email: &str) {
    let rows = sqlx::query_scalar::<_, i64>("SELECT id FROM links WHERE state = 'pending'")
        .fetch_all(relay.state.store.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one pending link for {email}");
    let agent: i64 = sqlx::query_scalar("SELECT agent_id FROM links WHERE id = $1")
        .bind(rows[0])
        .fetch_one(relay.state.store.pool())
        .await
        .unwrap();
    let approved = accounts::set_link_state(
        &relay.state.store,
        agent,
        rows[0],
        &[accounts::LinkState::Pending],
        accounts::LinkState::Active,
    );
    assert!(approved.await.unwrap());
}

async fn raw_post(url: &str, token: &str, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
    let response = common::client()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn an_oauth_client_registers_signs_in_and_runs_a_command_with_rotating_refresh_tokens() {
    let (_dir, relay, daemon) = setup(|_| {}).await;
    let code = daemon.code().canonical();

    // Without a token, /mcp/oauth answers 401 and says where its metadata is.
    let response = common::client().post(format!("{}/mcp/oauth", relay.http())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp/oauth", relay.http());
    assert!(challenge.starts_with(&format!("Bearer resource_metadata=\"{metadata_url}\"")), "{challenge}");
    let prm: Value = common::client().get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(prm["resource"], format!("{}/mcp/oauth", relay.http()));
    let asm = server_metadata(&relay).await;
    assert_eq!(asm["issuer"], relay.http());
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));

    let mut browser = signed_in(&relay, "gus@example.com").await;
    let request = AuthorizationRequest::new(REDIRECT).with_client_name("Test DCR client");
    let manager = authorize(&relay, &mut browser, request, "Test DCR client").await;
    let tokens = serde_json::to_value(manager.get_credentials().await.unwrap().1.expect("tokens")).unwrap();
    let first_refresh = tokens["refresh_token"].as_str().expect("a refresh token").to_owned();
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // The code is past its first hour: the account's first use waits for the operator.
    let (result, manager) = exec_through(&relay, manager, &code).await;
    assert_eq!(result["isError"], true, "{result}");
    assert!(result.to_string().contains("approval_required"), "{result}");
    approve_pending(&relay, "gus@example.com").await;
    let manager = Arc::try_unwrap(manager).ok().expect("the client is closed").into_inner();
    let (result, manager) = exec_through(&relay, manager, &code).await;
    assert_eq!(result["structuredContent"]["stdout"], "via-oauth\n", "{result}");

    // Refreshing gives a new pair; the old refresh token is refused.
    let manager = Arc::try_unwrap(manager).ok().expect("the client is closed").into_inner();
    within("refresh", manager.refresh_token()).await.expect("a refreshed pair");
    let client_id = manager.get_credentials().await.unwrap().0;
    let replay = common::client()
        .post(format!("{}/token", relay.http()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(browser::urlencoded(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first_refresh),
            ("client_id", &client_id),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(replay.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // A day after the web sign-in, the account's tokens are dormant.
    sqlx::query("UPDATE accounts SET last_sign_in_at = $1 WHERE email = 'gus@example.com'")
        .bind(relay::now_ms() - 25 * 3600 * 1000)
        .execute(relay.state.store.pool())
        .await
        .unwrap();
    let fresh = manager.get_access_token().await.unwrap();
    assert_ne!(fresh, access, "refreshing replaced the access token");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let (status, _, body) = raw_post(&format!("{}/mcp/oauth", relay.http()), &fresh, ping).await;
    assert_eq!(status, 403, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "reactivation_required");
    assert_eq!(body["login_url"], format!("{}/login", relay.http()));
    relay.stop().await;
}

/// Serves one client metadata document over HTTPS on loopback, with a
/// certificate from a CA of its own; returns its URL and the CA to trust.
async fn serve_document(
    document: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (String, rustls_pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/client.json", listener.local_addr().unwrap().port());
    let body = document(&url);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let mut buf = vec![0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(format!("{head}{body}").as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (url, ca.der().clone())
}

#[tokio::test]
async fn a_client_described_by_its_metadata_document_connects() {
    let (url, ca) = serve_document(|url| {
        json!({"client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT]}).to_string()
    })
    .await;
    let wrong =
        |_: &str| json!({"client_id": "https://elsewhere.example/c.json", "redirect_uris": [REDIRECT]}).to_string();
    let (other, other_ca) = serve_document(wrong).await;
    let (_dir, relay, daemon) = setup(|config| {
        config.anonymous_window = Duration::from_secs(3600);
        config.cimd = relay::oauth::cimd::CimdPolicy { allow_loopback: true, extra_roots: vec![ca, other_ca] };
    })
    .await;
    let mut browser = signed_in(&relay, "ida@example.com").await;
    let request = AuthorizationRequest::new(REDIRECT).with_client_metadata_url(url.as_str());
    let manager = authorize(&relay, &mut browser, request, "Doc Client").await;
    assert_eq!(manager.get_credentials().await.unwrap().0, url, "the document's URL is the client_id");
    let (result, _) = exec_through(&relay, manager, &daemon.code().canonical()).await;
    assert_eq!(result["structuredContent"]["stdout"], "via-oauth\n", "{result}");

    // A document that names another client_id is refused, and nothing is sent to its redirect.
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let (status, page) = browser
        .get(&format!(
            "/authorize?response_type=code&client_id={}&redirect_uri={}&code_challenge={challenge}&code_challenge_method=S256",
            urlenc(&other),
            urlenc(REDIRECT)
        ))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("names another client_id"), "{page}");
    relay.stop().await;
}

#[tokio::test]
async fn a_stale_token_and_a_foreign_redirect_are_refused() {
    let (_dir, relay, _daemon) = setup(|_| {}).await;
    let url = format!("{}/mcp/oauth", relay.http());
    let (status, headers, _) =
        raw_post(&url, "aico_not-a-token", json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));

    let client_id = &register(&relay, "x").await;

    // Not signed in: /authorize sends the browser to sign in, and back to itself after.
    let query = format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&code_challenge={}&code_challenge_method=S256&state=s",
        urlenc(REDIRECT),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let mut stranger = Browser::new(relay.http());
    let response = stranger.http.get(format!("{}/authorize?{query}", relay.http())).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/login?next=%2Fauthorize%3Fresponse_type%3Dcode"), "{location}");
    let (_, login) = stranger.get(&location).await;
    let next = format!("/authorize?{query}");
    assert!(login.contains(&format!("name=\"next\" value=\"{}\"", next.replace('&', "&amp;"))), "{login}");
    let (store, keys) = (&relay.state.store, &relay.state.keys);
    let token = signin::create_link(store, keys, "hal@example.com", None, &next, relay::now_ms()).await.unwrap();
    let signed = stranger.post("/login/link", &[("t", &token)]).await;
    assert_eq!(signed.headers()["location"].to_str().unwrap(), next);
    let (status, page) = stranger.get(&next).await;
    assert!(status == 200 && page.contains("asks to act as"), "{page}");

    let mut browser = signed_in(&relay, "hal@example.com").await;
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let (status, page) = browser
        .get(&format!(
            "/authorize?response_type=code&client_id={client_id}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb\
             &code_challenge={challenge}&code_challenge_method=S256&state=s"
        ))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("did not register"), "{page}");
    let bad = common::client()
        .post(format!("{}/register", relay.http()))
        .json(&json!({"redirect_uris": ["http://evil.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    relay.stop().await;
}

#[tokio::test]
async fn registrations_and_revocations_count_against_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = relay::Config::new(dir.path().to_path_buf());
    config.rate_limit = 2;
    let relay = TestRelay::start_with(config, "127.0.0.1:0").await;
    let register = || {
        common::client().post(format!("{}/register", relay.http())).json(&json!({"redirect_uris": [REDIRECT]})).send()
    };
    assert_eq!(register().await.unwrap().status(), 201);
    assert_eq!(register().await.unwrap().status(), 201);
    let refused = register().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let form = [("token", "aicr_x"), ("client_id", "aicc_x")];
    assert_eq!(form_post(&relay, "/oauth/revoke", &form).await.0, 429, "revocations count too");
    relay.stop().await;
}

/// RFC 7636's example verifier, and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// A form POST to the relay's OAuth endpoints: status and JSON body.
async fn form_post(relay: &TestRelay, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = common::client()
        .post(format!("{}{path}", relay.http()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(browser::urlencoded(form))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The relay's authorization server metadata (RFC 8414).
async fn server_metadata(relay: &TestRelay) -> Value {
    let url = format!("{}/.well-known/oauth-authorization-server", relay.http());
    common::client().get(url).send().await.unwrap().json().await.unwrap()
}

/// Registers a client by DCR; its id.
async fn register(relay: &TestRelay, name: &str) -> String {
    let answer: Value = common::client()
        .post(format!("{}/register", relay.http()))
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["client_id"].as_str().unwrap().to_owned()
}

/// Connects `client_id` to the browser's account as a client would: the
/// user allows it, the client trades the code. Its access and refresh tokens.
async fn connect(relay: &TestRelay, browser: &mut Browser, client_id: &str, shown_name: &str) -> (String, String) {
    let auth_url = format!(
        "/authorize?response_type=code&client_id={client_id}&redirect_uri={}&code_challenge={CHALLENGE}\
         &code_challenge_method=S256&state=s",
        urlenc(REDIRECT)
    );
    let callback = url::Url::parse(&consent(browser, &auth_url, shown_name).await).unwrap();
    let code = callback.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let (status, tokens) = form_post(
        relay,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    (tokens["access_token"].as_str().unwrap().to_owned(), tokens["refresh_token"].as_str().unwrap().to_owned())
}

/// An MCP `ping` at `/mcp/oauth` with `token`: status, and the `WWW-Authenticate` challenge if any.
async fn ping(relay: &TestRelay, token: &str) -> (u16, Option<String>) {
    let url = format!("{}/mcp/oauth", relay.http());
    let (status, headers, _) = raw_post(&url, token, json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    (status, headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()))
}

/// A refresh with `refresh`: status and body.
async fn refresh(relay: &TestRelay, refresh: &str, client_id: &str) -> (u16, Value) {
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("client_id", client_id)];
    form_post(relay, "/token", &form).await
}

/// An RFC 7009 revocation of `token` by `client_id`: status and body.
async fn revoke(relay: &TestRelay, token: &str, client_id: &str) -> (u16, Value) {
    let form = [("token", token), ("token_type_hint", "refresh_token"), ("client_id", client_id)];
    form_post(relay, "/oauth/revoke", &form).await
}

/// The "Connected apps" section of the account's dashboard.
async fn apps_section(browser: &mut Browser) -> String {
    let (status, page) = browser.get("/dashboard").await;
    assert_eq!(status, 200, "{page}");
    let section = page.split("<section id=\"apps\">").nth(1).expect("a Connected apps section");
    section.split("</section>").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_dashboard_lists_connected_apps_and_revoke_ends_their_tokens_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(relay::Config::new(dir.path().to_path_buf()), "127.0.0.1:0").await;
    let client_id = register(&relay, "Claude <Code> & co").await;
    let shown = "Claude &lt;Code&gt; &amp; co";
    let mut mine = signed_in(&relay, "jo@example.com").await;
    let mut theirs = signed_in(&relay, "kim@example.com").await;
    assert!(apps_section(&mut mine).await.contains("No apps connected"));
    let (access, refresh_token) = connect(&relay, &mut mine, &client_id, shown).await;
    let (their_access, their_refresh) = connect(&relay, &mut theirs, &client_id, shown).await;
    // Authorised an hour ago; the MCP call now is its last use.
    sqlx::query(
        "UPDATE oauth_grants SET authorized_at = authorized_at - 3600000, last_used_at = authorized_at - 3600000",
    )
    .execute(relay.state.store.pool())
    .await
    .unwrap();
    assert_eq!(ping(&relay, &access).await.0, 200);
    relay.state.usage.flush(&relay.state.store).await.unwrap();

    // Listed by name (escaped: it is the client's own text), with when it was authorised and last used.
    let (authorized_at, last_used_at): (i64, i64) =
        sqlx::query_as("SELECT g.authorized_at, g.last_used_at FROM oauth_grants g JOIN accounts a ON a.id = g.account_id WHERE a.email = 'jo@example.com'")
            .fetch_one(relay.state.store.pool())
            .await
            .unwrap();
    let section = apps_section(&mut mine).await;
    assert!(section.contains(&format!("<td data-label=\"App\">{shown}</td>")), "{section}");
    assert!(!section.contains("<Code>"), "{section}");
    assert!(section.contains(&aic::duration::utc(authorized_at)), "{section}");
    assert!(section.contains(&format!("<td data-label=\"Last used\">{}</td>", aic::duration::utc(last_used_at))));
    assert!(last_used_at >= authorized_at + 3_500_000, "the MCP call counts as a use");

    // Another site's page cannot revoke it.
    let field = [("client_id", client_id.as_str())];
    let forged = mine.post_from("/dashboard/apps/revoke", &field, "https://evil.example", "cross-site").await;
    assert_eq!(forged.status(), 403);
    assert_eq!(ping(&relay, &access).await.0, 200);

    let revoked = mine.post("/dashboard/apps/revoke", &[("client_id", &client_id)]).await;
    assert_eq!(revoked.status(), 303);
    let location = revoked.headers()["location"].to_str().unwrap().to_owned();
    let (_, page) = mine.get(&location).await;
    assert!(page.contains("App disconnected"), "{page}");
    let section = apps_section(&mut mine).await;
    assert!(!section.contains(shown) && section.contains("No apps connected"), "{section}");

    // The old access token starts a new sign-in; the refresh token is refused.
    let (status, challenge) = ping(&relay, &access).await;
    assert_eq!(status, 401);
    let challenge = challenge.expect("a WWW-Authenticate challenge");
    assert!(challenge.starts_with("Bearer resource_metadata=") && challenge.contains("error=\"invalid_token\""));
    let (status, body) = refresh(&relay, &refresh_token, &client_id).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // The other account's grant of the same client acts on, and renews.
    assert_eq!(ping(&relay, &their_access).await.0, 200);
    assert!(apps_section(&mut theirs).await.contains(shown));
    let (status, body) = refresh(&relay, &their_refresh, &client_id).await;
    assert_eq!(status, 200, "{body}");

    // Revoking what is not (any more) the account's changes nothing and says so.
    let again = mine.post("/dashboard/apps/revoke", &[("client_id", &client_id)]).await;
    assert_eq!(again.headers()["location"].to_str().unwrap(), "/dashboard?note=not-found");
    relay.stop().await;
}

#[tokio::test]
async fn a_client_revokes_its_own_tokens_as_rfc_7009_says() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(relay::Config::new(dir.path().to_path_buf()), "127.0.0.1:0").await;
    let asm = server_metadata(&relay).await;
    assert_eq!(asm["revocation_endpoint"], format!("{}/oauth/revoke", relay.http()));
    let (app, other_app) = (register(&relay, "App").await, register(&relay, "Other").await);
    let mut browser = signed_in(&relay, "lu@example.com").await;
    let (access, refresh_token) = connect(&relay, &mut browser, &app, "App").await;
    let (second_access, second_refresh) = connect(&relay, &mut browser, &app, "App").await;

    assert_eq!(revoke(&relay, "aicr_never-issued", &app).await.0, 200, "an unknown token is 200");
    assert_eq!(form_post(&relay, "/oauth/revoke", &[("client_id", &app)]).await.0, 400, "no token");
    let (status, body) = revoke(&relay, &refresh_token, &other_app).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
    assert_eq!(ping(&relay, &access).await.0, 200, "another client's revocation ends nothing");

    // A refresh token ends with its access token; the client's other sign-in acts on.
    assert_eq!(revoke(&relay, &refresh_token, &app).await, (200, json!({})));
    assert_eq!(ping(&relay, &access).await.0, 401);
    assert_eq!(refresh(&relay, &refresh_token, &app).await.1["error"], "invalid_grant");
    assert_eq!(revoke(&relay, &refresh_token, &app).await.0, 200, "already revoked is 200");
    assert_eq!(ping(&relay, &second_access).await.0, 200);

    // An access token ends alone: its refresh token still renews.
    assert_eq!(revoke(&relay, &second_access, &app).await.0, 200);
    assert_eq!(ping(&relay, &second_access).await.0, 401);
    let (status, renewed) = refresh(&relay, &second_refresh, &app).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(ping(&relay, renewed["access_token"].as_str().unwrap()).await.0, 200);
    assert!(apps_section(&mut browser).await.contains("App"), "still connected");
    relay.stop().await;
}

#[tokio::test]
async fn a_spent_refresh_token_presented_again_ends_what_it_bought() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(relay::Config::new(dir.path().to_path_buf()), "127.0.0.1:0").await;
    let app = register(&relay, "App").await;
    let mut browser = signed_in(&relay, "mo@example.com").await;
    let (_, stolen) = connect(&relay, &mut browser, &app, "App").await;
    let (_, other_sign_in) = connect(&relay, &mut browser, &app, "App").await;
    let (status, renewed) = refresh(&relay, &stolen, &app).await;
    assert_eq!(status, 200, "{renewed}");
    let (access, next) = (renewed["access_token"].as_str().unwrap(), renewed["refresh_token"].as_str().unwrap());

    // At once (two instances of one client refreshing together): only refused.
    assert_eq!(refresh(&relay, &stolen, &app).await.1["error"], "invalid_grant");
    assert_eq!(ping(&relay, access).await.0, 200);
    // Later, one of the two presenting it is not the client: its chain ends.
    sqlx::query("UPDATE oauth_tokens SET used_at = used_at - 60000 WHERE used_at IS NOT NULL")
        .execute(relay.state.store.pool())
        .await
        .unwrap();
    assert_eq!(refresh(&relay, &stolen, &app).await.1["error"], "invalid_grant");
    assert_eq!(ping(&relay, access).await.0, 401, "the access token it bought ended");
    assert_eq!(refresh(&relay, next, &app).await.1["error"], "invalid_grant", "and the refresh token");
    let (status, body) = refresh(&relay, &other_sign_in, &app).await;
    assert_eq!(status, 200, "another sign-in of the app renews: {body}");
    relay.stop().await;
}
