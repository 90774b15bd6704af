//! The relay's web pages: email sign-in and the account's dashboard. Plain
//! server-rendered HTML with one small stylesheet and no script; every page
//! carries a strict Content-Security-Policy, and every POST must come from a
//! page of this relay (`Sec-Fetch-Site` / `Origin` against the public URL).

mod dashboard;
mod login;
pub mod page;

pub use login::{SESSION_COOKIE, internal};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
use super::origin::PublicUrl;

/// What the web handlers share: the relay, and the address it is reached at.
#[derive(Clone)]
pub struct Web {
    /// The relay's state (store, keys, hub, mailer).
    pub state: AppState,
    /// The public URL: links in mail, the CSRF check and cookie flags go by it.
    pub public: PublicUrl,
}

impl Web {
    /// Whether cookies must be `Secure` (and so may carry the `__Host-` prefix):
    /// always but for a relay reached over plain http (on loopback).
    pub fn secure(&self) -> bool {
        self.public.as_str().starts_with("https://")
    }

    /// A cookie's name: `__Host-` prefixed where the browser accepts that.
    pub fn cookie_name(&self, base: &str) -> String {
        if self.secure() { format!("__Host-{base}") } else { base.to_owned() }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, path `/`, Secure when served over https.
    /// `max_age` zero deletes it.
    pub fn set_cookie(&self, base: &str, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure() { "; Secure" } else { "" };
        let text = format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            self.cookie_name(base),
            max_age.as_secs()
        );
        HeaderValue::from_str(&text).expect("cookie values are hex")
    }

    /// A cookie the request carries, by base name.
    pub fn cookie(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        let name = self.cookie_name(base);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    }

    /// `scheme://host[:port]` of the public URL, as browsers send it in `Origin`.
    fn origin(&self) -> &str {
        let base = self.public.as_str();
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        match base[after_scheme..].find('/') {
            Some(slash) => &base[..after_scheme + slash],
            None => base,
        }
    }
}

/// The web routes, with their headers and the CSRF check.
pub fn router(web: Arc<Web>) -> Router<AppState> {
    Router::new()
        .route("/login", get(login::form).post(login::ask))
        .route("/login/link", get(login::link_page).post(login::redeem))
        .route("/login/code", post(login::code))
        .route("/logout", post(dashboard::sign_out))
        .route("/dashboard", get(dashboard::show))
        .route("/dashboard/keys", post(dashboard::create_key))
        .route("/dashboard/keys/revoke", post(dashboard::revoke_key))
        .route("/dashboard/apps/revoke", post(dashboard::revoke_app))
        .route("/dashboard/machines/rename", post(dashboard::rename))
        .route("/dashboard/reactivation", post(dashboard::reactivation))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&web), guard))
        .route("/static/aic.css", get(stylesheet))
        .with_state(web)
}

/// Refuses a POST that did not come from one of this relay's own pages, and
/// puts the security headers on every answer.
pub async fn guard(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !same_origin(request.headers(), web.origin()) {
        let page = page::Page::new("Refused").para(
            "This form was sent from another site, so it was refused. Open the page on this relay and send it again.",
        );
        return secure_headers(&web, (StatusCode::FORBIDDEN, page.html()).into_response());
    }
    let response = next.run(request).await;
    secure_headers(&web, response)
}

/// Whether a request comes from this relay's own pages. `Sec-Fetch-Site`
/// (sent by every current browser, and not settable by a page) decides when
/// present; `Origin` is then not needed (a page with `no-referrer`, as ours,
/// makes Chrome send `Origin: null`). Without it, `Origin` must be ours.
/// A request with neither is refused.
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    match (text("sec-fetch-site"), text(header::ORIGIN.as_str())) {
        (Some(site), _) => matches!(site, "same-origin" | "none"),
        (None, Some(given)) => given.eq_ignore_ascii_case(origin),
        (None, None) => false,
    }
}

/// The Content-Security-Policy of every page: nothing but this relay's
/// stylesheet, forms posting only here, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

fn secure_headers(web: &Web, mut response: Response) -> Response {
    let headers = response.headers_mut();
    let pairs = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Sign-in links carry their secret in the URL: no page passes it on.
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (header::HeaderName::from_static("permissions-policy"), "camera=(), microphone=(), geolocation=()"),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if web.secure() {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    response
}

async fn stylesheet() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
        (header::CACHE_CONTROL, "public, max-age=3600"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, include_str!("aic.css")).into_response()
}

/// Events in a sliding window per key (a client address, or one key for all):
/// the sign-in limits that do not live in the store.
#[derive(Debug)]
pub struct Window {
    max: usize,
    period: Duration,
    hits: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys tracked before the idle ones are dropped.
const MAX_KEYS: usize = 100_000;

impl Window {
    /// At most `max` events per `period` per key.
    pub fn new(max: usize, period: Duration) -> Self {
        Self { max, period, hits: Mutex::new(HashMap::new()) }
    }

    /// Counts an event for `key`, or refuses it (counting nothing) when the window is full.
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap();
        if hits.len() >= MAX_KEYS {
            hits.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < self.period));
        }
        let queue = hits.entry(key.to_owned()).or_default();
        while queue.front().is_some_and(|t| now.duration_since(*t) >= self.period) {
            queue.pop_front();
        }
        if queue.len() >= self.max {
            return false;
        }
        queue.push_back(now);
        true
    }
}

/// The sign-in limits kept in memory (the per-email ones count links in the store).
#[derive(Debug)]
pub struct Limits {
    /// Links asked for per client address.
    pub per_ip: Window,
    /// Links asked for by everybody together.
    pub global: Window,
}

impl Default for Limits {
    fn default() -> Self {
        let quarter = Duration::from_secs(15 * 60);
        Self { per_ip: Window::new(10, quarter), global: Window::new(500, quarter) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_from_our_own_pages_pass() {
        let origin = "https://relay.example.com";
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("origin", origin)]), origin));
        assert!(same_origin(&headers(&[("origin", origin)]), origin));
        assert!(same_origin(&headers(&[("sec-fetch-site", "none")]), origin));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")]),
            origin
        ));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")]), origin));
        assert!(!same_origin(&headers(&[("origin", "https://evil.example")]), origin));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("origin", "null")]), origin));
        assert!(!same_origin(&headers(&[("origin", "null")]), origin));
        assert!(!same_origin(&headers(&[]), origin));
    }

    #[test]
    fn a_window_counts_per_key() {
        let window = Window::new(2, Duration::from_secs(60));
        assert!(window.allow("a") && window.allow("a"));
        assert!(!window.allow("a"));
        assert!(window.allow("b"));
    }
}
