//! OAuth 2.1 for MCP clients that cannot send an API key (claude.ai, ChatGPT,
//! and every client that speaks OAuth): `/mcp/oauth` is the MCP endpoint that
//! demands a token (401 with `resource_metadata` without one), described by
//! RFC 9728 protected-resource metadata; the relay is its own authorization
//! server (RFC 8414 metadata, `/authorize` with sign-in and consent, `/token`
//! with PKCE S256 and rotating refresh tokens, `/register` for DCR, Client ID
//! Metadata Documents, and `/oauth/revoke` for RFC 7009). A token acts exactly
//! as its account's API key, until it expires or is revoked (by its client, or
//! by the account on its dashboard).

pub mod cimd;
mod flow;
pub mod grants;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::origin::PublicUrl;
use super::web::Web;

/// The path of the MCP endpoint that requires a token.
pub const MCP_PATH: &str = "/mcp/oauth";

/// What the OAuth handlers share.
pub struct OAuth {
    /// The web side: store, keys, cookies, the public URL.
    pub web: Arc<Web>,
    /// Client ID Metadata Documents, fetched and cached.
    pub documents: cimd::Fetcher,
}

impl OAuth {
    /// The resource tokens are issued for: the `/mcp/oauth` URL, exactly.
    pub fn resource(&self) -> String {
        resource(&self.web.public)
    }

    /// The issuer: the relay's bare origin.
    pub fn issuer(&self) -> String {
        origin(&self.web.public)
    }
}

/// The resource URL of a relay at `public`.
pub fn resource(public: &PublicUrl) -> String {
    public.join(MCP_PATH)
}

/// `scheme://host[:port]` of `public`.
pub fn origin(public: &PublicUrl) -> String {
    let base = public.as_str();
    let after = base.find("://").map_or(0, |i| i + 3);
    match base[after..].find('/') {
        Some(slash) => base[..after + slash].to_owned(),
        None => base.to_owned(),
    }
}

/// Where the protected-resource metadata of a relay at `public` is.
pub fn resource_metadata_url(public: &PublicUrl) -> String {
    let path = public.as_str().strip_prefix(&origin(public)).unwrap_or("");
    format!("{}/.well-known/oauth-protected-resource{path}{MCP_PATH}", origin(public))
}

/// The metadata and OAuth routes (the guarded MCP route is added by the
/// caller). Authorizing (which may fetch a client's document), token requests,
/// revocations and registrations count against the caller's rate limit.
pub fn router(web: Arc<Web>, policy: cimd::CimdPolicy) -> Router<AppState> {
    let limit = axum::middleware::from_fn_with_state(web.state.clone(), super::limit::middleware);
    let oauth = Arc::new(OAuth { web: Arc::clone(&web), documents: cimd::Fetcher::new(policy) });
    let pages = Router::new()
        .route("/authorize", get(flow::authorize).post(flow::consent))
        .layer(axum::middleware::from_fn_with_state(web, super::web::guard))
        .with_state(Arc::clone(&oauth));
    let endpoints = Router::new()
        .route("/token", axum::routing::post(flow::token))
        .route("/register", axum::routing::post(flow::register))
        .route("/oauth/revoke", axum::routing::post(flow::revoke))
        .with_state(Arc::clone(&oauth));
    Router::new()
        .route("/.well-known/oauth-protected-resource", get(protected_resource))
        .route("/.well-known/oauth-protected-resource/{*path}", get(protected_resource))
        .route("/.well-known/oauth-authorization-server", get(authorization_server))
        .route("/.well-known/oauth-authorization-server/{*path}", get(authorization_server))
        .with_state(oauth)
        .merge(pages.merge(endpoints).layer(limit))
}

/// RFC 9728: the resource, and who issues its tokens.
async fn protected_resource(State(oauth): State<Arc<OAuth>>) -> Response {
    let body = json!({
        "resource": oauth.resource(),
        "authorization_servers": [oauth.issuer()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp"],
        "resource_name": "aic relay",
        "resource_documentation": oauth.web.public.join("/skill/SKILL.md"),
    });
    json_response(StatusCode::OK, body)
}

/// RFC 8414: the authorization server's endpoints and what it supports.
async fn authorization_server(State(oauth): State<Arc<OAuth>>) -> Response {
    let public = &oauth.web.public;
    let body = json!({
        "issuer": oauth.issuer(),
        "authorization_endpoint": public.join("/authorize"),
        "token_endpoint": public.join("/token"),
        "registration_endpoint": public.join("/register"),
        "revocation_endpoint": public.join("/oauth/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["mcp"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    });
    json_response(StatusCode::OK, body)
}

/// A JSON answer that no cache keeps.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What [`require_token`] checks with.
#[derive(Clone)]
pub struct Guard {
    /// The relay, to check tokens against.
    pub state: AppState,
    /// Its public URL, named in the challenge.
    pub public: PublicUrl,
}

/// Middleware for `/mcp/oauth`: without a valid bearer token, 401 with the
/// `WWW-Authenticate` challenge that points to the resource metadata (so the
/// client signs in, or refreshes); a dormant account's token gets 403
/// `reactivation_required`. A valid one goes on to the MCP endpoint.
pub async fn require_token(State(guard): State<Guard>, request: Request, next: axum::middleware::Next) -> Response {
    let given = request.headers().contains_key(header::AUTHORIZATION);
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let checked = match peer {
        Some(peer) => super::access::authenticate(&guard.state, request.headers(), peer).await,
        None => Err(super::error::ApiError::internal()),
    };
    match checked {
        Ok(caller) if caller.account.is_some() => next.run(request).await,
        Err(err) if err.status != StatusCode::UNAUTHORIZED => err.into_response(),
        _ => challenge(&guard.public, given),
    }
}

/// The 401 that starts (or, for a stale token, restarts) a client's OAuth flow.
fn challenge(public: &PublicUrl, token_given: bool) -> Response {
    let error = if token_given { ", error=\"invalid_token\"" } else { "" };
    let value = format!("Bearer resource_metadata=\"{}\", scope=\"mcp\"{error}", resource_metadata_url(public));
    let body = json!({
        "ok": false,
        "error": format!("This endpoint needs a current OAuth access token; your MCP client gets one by signing you in. \
                          Clients without OAuth use {} (anonymous in a code's first hour, or with an API key).", public.join("/mcp")),
        "reason": "unauthorized",
    });
    let mut response = json_response(StatusCode::UNAUTHORIZED, body);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
