//! The relay's public address, and the `Host` check that keeps a web page
//! from reaching the MCP endpoint through DNS rebinding: only the public
//! host and loopback names are answered.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header, uri::Authority};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Reason};

/// Host names every relay answers to, whatever its public URL: a client on
/// the relay's own machine, or an SSH tunnel to it.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The base URL clients reach the relay at (`https://relay.example.com`):
/// http or https, a host, an optional port and path prefix, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    base: String,
    host: String,
}

impl PublicUrl {
    /// The URL as text, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// The host, lower case, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `path` (starting with `/`) under this base.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `given`, or else the URL the listen address implies (`http://<listen>`,
    /// or `https://<listen>` when the relay serves TLS itself).
    pub fn given_or_listen(given: Option<&PublicUrl>, listen: std::net::SocketAddr, tls: bool) -> Result<Self, String> {
        match given {
            Some(url) => Ok(url.clone()),
            None => format!("{}://{listen}", if tls { "https" } else { "http" }).parse(),
        }
    }

    /// The hosts whose requests the MCP endpoint answers: this one and loopback.
    pub fn allowed_hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.host.clone()];
        hosts.extend(LOOPBACK_HOSTS.iter().map(|h| h.to_string()).filter(|h| *h != self.host));
        hosts
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad =
            |why: &str| format!("{text:?} is not a usable public URL: {why}; give one like https://relay.example.com");
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"`\\<>{}|^".contains(c)) {
            return Err(bad("it contains spaces, quotes or other characters a URL cannot have"));
        }
        let uri: Uri = text.parse().map_err(|_| bad("it does not parse as a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("it must start with http:// or https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it must not carry a user name or password"));
        }
        if authority.host().is_empty() {
            return Err(bad("it has no host"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(bad("it must not have a query or a fragment"));
        }
        let path = uri.path().trim_end_matches('/');
        let base =
            format!("{}://{}{path}", uri.scheme_str().unwrap_or("https"), authority.as_str().to_ascii_lowercase());
        Ok(Self { base, host: normalize_host(authority.host()) })
    }
}

/// `host` as compared: lower case, no IPv6 brackets, no trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request naming `authority` (a `Host` header value) may be answered.
pub fn host_allowed(authority: &str, allowed: &[String]) -> bool {
    let Ok(authority) = authority.parse::<Authority>() else { return false };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = normalize_host(authority.host());
    allowed.contains(&host)
}

/// Middleware: refuses, with a JSON 403, requests whose `Host` (or HTTP/2
/// `:authority`) is not an allowed host.
pub async fn check_host(State(allowed): State<Arc<AllowedHosts>>, request: Request, next: Next) -> Response {
    let named = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    match named {
        Some(host) if host_allowed(&host, &allowed.hosts) => next.run(request).await,
        named => {
            let shown = named.as_deref().map_or("no host".to_owned(), |h| format!("host {:?}", truncate(h, 100)));
            ApiError::new(
                StatusCode::FORBIDDEN,
                Reason::Forbidden,
                format!(
                    "This relay answers MCP requests only for its own address ({}) and loopback; the request named {shown}. \
                     Use {}, or, if that is not the address clients reach the relay at, restart the relay with --public-url set to it.",
                    allowed.public,
                    allowed.public.join("/mcp"),
                ),
            )
            .into_response()
        }
    }
}

/// What [`check_host`] compares against.
#[derive(Debug)]
pub struct AllowedHosts {
    /// The relay's public URL, named in the refusal.
    pub public: PublicUrl,
    /// Host names answered ([`PublicUrl::allowed_hosts`]).
    pub hosts: Vec<String>,
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_checked_and_trimmed() {
        let url: PublicUrl = "https://Relay.Example.com/".parse().unwrap();
        assert_eq!((url.as_str(), url.host()), ("https://relay.example.com", "relay.example.com"));
        assert_eq!(url.join("/mcp"), "https://relay.example.com/mcp");
        let url: PublicUrl = "http://[::1]:8080/aic/".parse().unwrap();
        assert_eq!((url.as_str(), url.host()), ("http://[::1]:8080/aic", "::1"));
        for bad in [
            "relay.example.com",
            "ftp://x",
            "https://",
            "https://u:p@x",
            "https://x/?a=1",
            "https://x/a b",
            "https://x/'",
        ] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_public_host_and_loopback_are_allowed_with_any_port() {
        let allowed = "https://relay.example.com".parse::<PublicUrl>().unwrap().allowed_hosts();
        for ok in [
            "relay.example.com",
            "RELAY.example.com:443",
            "relay.example.com.",
            "localhost:8080",
            "127.0.0.1",
            "[::1]:9",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for no in ["evil.example", "relay.example.com.evil.example", "127.0.0.2", "", "a@relay.example.com", "[::2]"] {
            assert!(!host_allowed(no, &allowed), "{no}");
        }
    }
}
