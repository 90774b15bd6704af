//! The OAuth endpoints: `/authorize` (sign-in if needed, then consent, then
//! a page that continues to the client with `code`, `state` and `iss`),
//! `/token` (authorization code with PKCE S256, and refresh tokens that work
//! once), `/register` (Dynamic Client Registration) and `/oauth/revoke`
//! (RFC 7009 token revocation).

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::grants::{self, Grant};
use super::{OAuth, json_response};
use crate::relay::accounts;
use crate::relay::web::page::{Page, esc};
use crate::relay::{mask, now_ms, signin};

/// The parameters of an authorization request (query of the GET, fields of the consent POST).
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    state: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    /// On the consent POST: `allow` or `deny`.
    decision: Option<String>,
}

/// A client as the consent page names it.
struct Client {
    id: String,
    name: String,
    /// Who vouches for the name: the domain of its metadata document, or nobody (DCR).
    vouched_by: Option<String>,
    redirect_uris: Vec<String>,
}

/// A request that passed every check.
struct Checked {
    client: Client,
    redirect_uri: String,
    challenge: String,
    state: Option<String>,
    resource: String,
}

fn error_page(status: StatusCode, text: &str) -> Response {
    (status, Page::new("Cannot connect this app").para(text).html()).into_response()
}

async fn find_client(oauth: &OAuth, client_id: &str) -> Result<Client, String> {
    if client_id.starts_with("https://") {
        let doc = oauth.documents.document(client_id).await.map_err(|e| {
            format!("The app's description at {client_id} could not be used ({e:#}). Tell the app's makers.")
        })?;
        let host = url::Url::parse(client_id).ok().and_then(|u| u.host_str().map(str::to_owned));
        let name = doc.client_name.clone().unwrap_or_else(|| host.clone().unwrap_or_default());
        return Ok(Client { id: client_id.to_owned(), name, vouched_by: host, redirect_uris: doc.redirect_uris });
    }
    match grants::registered(&oauth.web.state.store, client_id).await {
        Ok(Some(r)) => {
            Ok(Client { id: client_id.to_owned(), name: r.name, vouched_by: None, redirect_uris: r.redirect_uris })
        }
        Ok(None) => Err("This app is not registered with this relay (or its registration expired). Connect it again \
             from the app."
            .into()),
        Err(e) => {
            tracing::error!("looking up an OAuth client: {e:#}");
            Err("The relay hit an internal error; try again.".into())
        }
    }
}

/// Whether a redirect URI may receive codes at all: HTTPS, or HTTP to loopback; no fragment.
pub fn redirect_allowed(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else { return false };
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match url.scheme() {
        "https" => url.host_str().is_some(),
        "http" => matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        _ => false,
    }
}

/// Whether `given` is one of `registered`, exactly; for loopback, any port (RFC 8252).
pub fn redirect_matches(registered: &[String], given: &str) -> bool {
    if !redirect_allowed(given) {
        return false;
    }
    let without_port = |uri: &str| {
        let mut url = url::Url::parse(uri).ok()?;
        (url.scheme() == "http").then_some(())?;
        url.set_port(None).ok()?;
        Some(url.to_string())
    };
    registered.iter().any(|r| r == given || (without_port(r).is_some() && without_port(r) == without_port(given)))
}

/// The client's redirect with `pairs` (and `state`, `iss`) added.
fn redirect_with(oauth: &OAuth, redirect_uri: &str, state: Option<&str>, pairs: &[(&str, &str)]) -> String {
    let Ok(mut url) = url::Url::parse(redirect_uri) else { return redirect_uri.to_owned() };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &oauth.issuer());
    }
    url.to_string()
}

/// Checks a request: client and redirect first (a failure there is shown,
/// never sent to an unchecked address), then the rest (sent back to the client).
async fn check(oauth: &OAuth, p: &AuthorizeParams) -> Result<Checked, Response> {
    let client_id = p.client_id.as_deref().unwrap_or_default();
    let client = find_client(oauth, client_id).await.map_err(|text| error_page(StatusCode::BAD_REQUEST, &text))?;
    let redirect_uri = p.redirect_uri.clone().unwrap_or_default();
    if !redirect_matches(&client.redirect_uris, &redirect_uri) {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "The app asked to be answered at an address it did not register, so the relay stopped here. Tell the app's makers.",
        ));
    }
    let fail = |text: &str| {
        let url = redirect_with(
            oauth,
            &redirect_uri,
            p.state.as_deref(),
            &[("error", "invalid_request"), ("error_description", text)],
        );
        (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response()
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(fail("response_type must be code"));
    }
    let challenge = p.code_challenge.clone().unwrap_or_default();
    if p.code_challenge_method.as_deref() != Some("S256") || !(43..=128).contains(&challenge.len()) {
        return Err(fail("PKCE is required, with code_challenge_method S256"));
    }
    let resource = p.resource.clone().unwrap_or_else(|| oauth.resource());
    if resource != oauth.resource() {
        return Err(fail("resource must be this relay's MCP endpoint for OAuth clients"));
    }
    Ok(Checked { client, redirect_uri, challenge, state: p.state.clone(), resource })
}

/// The signed-in account (id, email), if any.
async fn session(oauth: &OAuth, headers: &HeaderMap) -> anyhow::Result<Option<(i64, String)>> {
    let web = &oauth.web;
    let Some(cookie) = web.cookie(headers, crate::relay::web::SESSION_COOKIE) else { return Ok(None) };
    let Some(account) = signin::session_account(&web.state.store, &web.state.keys, &cookie, now_ms()).await? else {
        return Ok(None);
    };
    Ok(accounts::profile(&web.state.store, account).await?.map(|p| (account, p.email)))
}

/// `GET /authorize`: checks the request, signs the user in if needed, and asks for consent.
pub async fn authorize(
    State(oauth): State<Arc<OAuth>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    axum::extract::Query(p): axum::extract::Query<AuthorizeParams>,
) -> Response {
    let checked = match check(&oauth, &p).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let (_, email) = match session(&oauth, &headers).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let back = format!("/authorize?{}", raw.unwrap_or_default());
            let next: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
            return (StatusCode::SEE_OTHER, [(header::LOCATION, format!("/login?next={next}"))]).into_response();
        }
        Err(e) => return crate::relay::web::internal(e),
    };
    consent_page(&checked, &p, &email).html().into_response()
}

fn consent_page(c: &Checked, p: &AuthorizeParams, email: &str) -> Page {
    let vouch = match &c.client.vouched_by {
        Some(host) => format!("described by <strong>{}</strong>", esc(host)),
        None => "registered itself: its name is not verified".to_owned(),
    };
    let redirect_host = url::Url::parse(&c.redirect_uri).ok().and_then(|u| u.host_str().map(str::to_owned));
    let fields: String = [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
        ("state", &p.state),
        ("resource", &p.resource),
        ("scope", &p.scope),
    ]
    .iter()
    .filter_map(|(n, v)| v.as_ref().map(|v| format!("<input type=\"hidden\" name=\"{n}\" value=\"{}\">", esc(v))))
    .collect();
    Page::new("Connect an app").raw(&format!(
        "<section><p><strong>{name}</strong> ({vouch}) asks to act as <strong>{email}</strong> on this relay: \
         run commands on the machines your account is linked to, and look them up, exactly as your API keys can. \
         Machines' operators still approve, block and see everything it does.</p>\
         <p>It gets tokens that last an hour and that it renews for up to 30 days of use; with daily \
         re-activation on, they act only within a day of your last sign-in here. If you allow it, your browser goes back to <strong>{host}</strong>.</p>\
         <form method=\"post\" action=\"/authorize\" class=\"inline\">{fields}\
         <button type=\"submit\" name=\"decision\" value=\"allow\" class=\"primary\">Allow</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button></form></section>",
        name = esc(&c.client.name),
        email = esc(email),
        host = esc(redirect_host.as_deref().unwrap_or("the app")),
    ))
}

/// `POST /authorize`: the consent. Answered with a page that continues to
/// the client (a 302 after a form would be stopped by `form-action`).
pub async fn consent(State(oauth): State<Arc<OAuth>>, headers: HeaderMap, Form(p): Form<AuthorizeParams>) -> Response {
    let checked = match check(&oauth, &p).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let (account_id, email) = match session(&oauth, &headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return error_page(StatusCode::UNAUTHORIZED, "Your sign-in ended; start connecting the app again."),
        Err(e) => return crate::relay::web::internal(e),
    };
    let state = checked.state.as_deref();
    let url = if p.decision.as_deref() == Some("allow") {
        let grant = Grant {
            client_id: checked.client.id.clone(),
            account_id,
            redirect_uri: checked.redirect_uri.clone(),
            code_challenge: checked.challenge.clone(),
            resource: checked.resource.clone(),
        };
        let (store, keys, now) = (&oauth.web.state.store, &oauth.web.state.keys, now_ms());
        let issued = async {
            grants::authorize(store, account_id, &grant.client_id, &checked.client.name, now).await?;
            grants::issue_code(store, keys, &grant, now).await
        };
        let code = match issued.await {
            Ok(code) => code,
            Err(e) => return crate::relay::web::internal(e),
        };
        tracing::info!(who = %mask::email(&email), client = %checked.client.name, "OAuth client allowed");
        redirect_with(&oauth, &checked.redirect_uri, state, &[("code", &code)])
    } else {
        redirect_with(&oauth, &checked.redirect_uri, state, &[("error", "access_denied")])
    };
    Page::new("Returning to the app")
        .continue_to(&url)
        .raw(&format!(
            "<p><a class=\"button\" id=\"continue\" href=\"{}\">Continue to {}</a></p>",
            esc(&url),
            esc(&checked.client.name)
        ))
        .html()
        .into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, json!({"error": error, "error_description": description}))
}

/// The refusal of a `/token` or `/oauth/revoke` body that is not a form.
fn not_a_form() -> Response {
    token_error(StatusCode::BAD_REQUEST, "invalid_request", "send application/x-www-form-urlencoded fields")
}

/// The fields of a token request.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

/// Whether `verifier` hashes (SHA-256, base64url) to `challenge`.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !(43..=128).contains(&verifier.len()) {
        return false;
    }
    let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    crate::relay::keys::digest_eq(hashed.as_bytes(), challenge.as_bytes())
}

/// `POST /token`.
pub async fn token(State(oauth): State<Arc<OAuth>>, form: Result<Form<TokenForm>, FormRejection>) -> Response {
    let Ok(Form(f)) = form else { return not_a_form() };
    let (store, keys, now) = (&oauth.web.state.store, &oauth.web.state.keys, now_ms());
    let client_id = f.client_id.clone().unwrap_or_default();
    let mut family = None;
    let grant = match f.grant_type.as_deref() {
        Some("authorization_code") => {
            let code = f.code.as_deref().unwrap_or_default();
            match grants::take_code(store, keys, code, now).await {
                Ok(Some(grant)) => code_grant_checks(&f, grant),
                Ok(None) => Err("the code is unknown, expired or already used"),
                Err(e) => return crate::relay::web::internal(e),
            }
        }
        Some("refresh_token") => {
            let refresh = f.refresh_token.as_deref().unwrap_or_default();
            match grants::take_refresh(store, keys, refresh, &client_id, now).await {
                Ok(Some((grant, chain))) if f.resource.as_ref().is_none_or(|r| *r == grant.resource) => {
                    family = Some(chain);
                    Ok(grant)
                }
                Ok(Some(_)) => Err("resource differs from the one the token was issued for"),
                Ok(None) => Err("the refresh token is unknown, expired or already used"),
                Err(e) => return crate::relay::web::internal(e),
            }
        }
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use authorization_code or refresh_token",
            );
        }
    };
    let grant = match grant {
        Ok(grant) if grant.client_id == client_id => grant,
        Ok(_) => return token_error(StatusCode::BAD_REQUEST, "invalid_grant", "issued to another client"),
        Err(why) => return token_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
    };
    issued(grants::issue_tokens(store, keys, &grant, family.as_ref(), now).await)
}

/// The token response for a pair, or why there is none.
fn issued(tokens: anyhow::Result<Option<grants::Tokens>>) -> Response {
    match tokens {
        Ok(Some(t)) => json_response(
            StatusCode::OK,
            json!({
                "access_token": t.access,
                "token_type": "Bearer",
                "expires_in": grants::ACCESS_LIFETIME.as_secs(),
                "refresh_token": t.refresh,
                "scope": "mcp",
            }),
        ),
        Ok(None) => token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the account revoked this app's access; sign in and allow it again",
        ),
        Err(e) => crate::relay::web::internal(e),
    }
}

/// The fields of an RFC 7009 revocation request (`token_type_hint` is
/// ignored, as the RFC allows: the token itself says what it is).
#[derive(Debug, Default, Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009): a public client names itself by
/// `client_id` and ends one of its tokens; a refresh token ends its chain's
/// access tokens too. An unknown, expired or already revoked token is 200,
/// as the RFC says; another client's token is refused and left alone.
pub async fn revoke(State(oauth): State<Arc<OAuth>>, form: Result<Form<RevokeForm>, FormRejection>) -> Response {
    let Ok(Form(f)) = form else { return not_a_form() };
    let (Some(token), Some(client_id)) = (f.token.as_deref(), f.client_id.as_deref()) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_request", "send token and client_id");
    };
    match grants::revoke_token(&oauth.web.state.store, &oauth.web.state.keys, token, client_id).await {
        Ok(grants::Revocation::OtherClient) => token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "the token was issued to another client; nothing was revoked",
        ),
        Ok(done) => {
            if done == grants::Revocation::Revoked {
                tracing::info!(client = %client_id, "OAuth token revoked by its client");
            }
            json_response(StatusCode::OK, json!({}))
        }
        Err(e) => crate::relay::web::internal(e),
    }
}

/// The checks of an authorization-code exchange beyond the code itself.
fn code_grant_checks(f: &TokenForm, grant: Grant) -> Result<Grant, &'static str> {
    if f.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return Err("redirect_uri differs from the authorization request's");
    }
    if !pkce_matches(f.code_verifier.as_deref().unwrap_or_default(), &grant.code_challenge) {
        return Err("code_verifier does not match the code_challenge");
    }
    if f.resource.as_ref().is_some_and(|r| *r != grant.resource) {
        return Err("resource differs from the authorization request's");
    }
    Ok(grant)
}

/// A DCR request.
#[derive(Debug, Deserialize)]
pub struct Registration {
    redirect_uris: Vec<String>,
    client_name: Option<String>,
}

/// `POST /register`: Dynamic Client Registration for clients without a metadata document.
pub async fn register(
    State(oauth): State<Arc<OAuth>>,
    body: Result<axum::Json<Registration>, JsonRejection>,
) -> Response {
    let Ok(axum::Json(r)) = body else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", "send JSON with redirect_uris");
    };
    if r.redirect_uris.is_empty() || r.redirect_uris.len() > 10 || !r.redirect_uris.iter().all(|u| redirect_allowed(u))
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "give 1 to 10 redirect_uris, each https:// or http:// to 127.0.0.1, localhost or [::1]",
        );
    }
    let name: String =
        r.client_name.unwrap_or_else(|| "An MCP client".into()).chars().filter(|c| !c.is_control()).take(100).collect();
    let now = now_ms();
    match grants::register(&oauth.web.state.store, &name, &r.redirect_uris, now).await {
        Ok(client_id) => json_response(
            StatusCode::CREATED,
            json!({
                "client_id": client_id,
                "client_id_issued_at": now / 1000,
                "client_name": name,
                "redirect_uris": r.redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }),
        ),
        Err(e) => crate::relay::web::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_match_exactly_but_for_a_loopback_port() {
        let registered = vec!["http://127.0.0.1:3000/callback".to_owned(), "https://app.example/cb".to_owned()];
        assert!(redirect_matches(&registered, "http://127.0.0.1:3000/callback"));
        assert!(redirect_matches(&registered, "http://127.0.0.1:51234/callback"));
        assert!(redirect_matches(&registered, "https://app.example/cb"));
        for no in [
            "https://app.example/cb/",
            "https://app.example:8443/cb",
            "http://127.0.0.1:3000/other",
            "http://app.example/cb",
            "https://evil.example/cb",
            "https://app.example/cb#x",
        ] {
            assert!(!redirect_matches(&registered, no), "{no}");
        }
    }

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"));
        assert!(!pkce_matches("short", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
    }
}
