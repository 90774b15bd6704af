//! Client ID Metadata Documents: a client whose `client_id` is an HTTPS URL
//! is described by the JSON document at that URL. Fetching it on a client's
//! word is a server-side request forgery vector, so the fetch is narrow:
//! HTTPS only, to a public address (the one checked is the one dialled, so
//! DNS cannot swap it), within a few seconds and a few KiB, no redirects;
//! documents are cached by URL for a few minutes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

/// The whole fetch (resolve, connect, TLS, answer), at most.
const FETCH_TIME: Duration = Duration::from_secs(5);

/// Largest document read, in bytes.
const MAX_DOCUMENT: usize = 16 * 1024;

/// How long a fetched document is reused.
const CACHE_TIME: Duration = Duration::from_secs(300);

/// Which addresses a document may be fetched from, and which roots its
/// certificate may chain to.
#[derive(Debug, Clone, Default)]
pub struct CimdPolicy {
    /// Allow loopback addresses (tests serve documents on 127.0.0.1);
    /// private, link-local and other special addresses are always refused.
    pub allow_loopback: bool,
    /// Roots trusted beside the public web's (tests' own CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// What the relay takes from a client's document.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientDocument {
    /// Must equal the URL it was fetched from.
    pub client_id: String,
    /// Shown on the consent page.
    #[serde(default)]
    pub client_name: Option<String>,
    /// Where codes may be sent.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// Fetches and caches client documents.
#[derive(Debug, Default)]
pub struct Fetcher {
    policy: CimdPolicy,
    cache: Mutex<HashMap<String, (Instant, ClientDocument)>>,
}

impl Fetcher {
    /// A fetcher with `policy`.
    pub fn new(policy: CimdPolicy) -> Self {
        Self { policy, cache: Mutex::new(HashMap::new()) }
    }

    /// The document at `url`, from the cache or fetched now.
    pub async fn document(&self, url: &str) -> anyhow::Result<ClientDocument> {
        if let Some((at, doc)) = self.cache.lock().unwrap().get(url)
            && at.elapsed() < CACHE_TIME
        {
            return Ok(doc.clone());
        }
        let body = tokio::time::timeout(FETCH_TIME, self.fetch(url))
            .await
            .map_err(|_| anyhow::anyhow!("the client's metadata document did not arrive within {FETCH_TIME:?}"))??;
        let doc: ClientDocument =
            serde_json::from_slice(&body).context("the client's metadata document is not the JSON expected")?;
        if doc.client_id != url {
            bail!("the client's metadata document names another client_id than its own URL");
        }
        let mut cache = self.cache.lock().unwrap();
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(url.to_owned(), (Instant::now(), doc.clone()));
        Ok(doc)
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let parsed = url::Url::parse(url).context("the client_id is not a URL")?;
        let host = parsed.host_str().context("the client_id URL has no host")?.to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addr = self.pick_address(&host, port).await?;
        let stream = tokio::net::TcpStream::connect(addr).await.context("connecting to the client's host")?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .context("the client_id URL's host is not a valid name")?;
        let tls = tokio_rustls::TlsConnector::from(self.tls_config()).connect(name, stream).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, parsed.host_str().unwrap_or_default())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, concat!("aic-relay/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Empty::<axum::body::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if response.status() != hyper::StatusCode::OK {
            bail!("the client's metadata document answered {} (redirects are not followed)", response.status());
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT);
        let body =
            limited.collect().await.map_err(|_| anyhow::anyhow!("the client's metadata document is too large"))?;
        Ok(body.to_bytes().to_vec())
    }

    /// The first address of `host` the policy allows; refuses a host with any other.
    async fn pick_address(&self, host: &str, port: u16) -> anyhow::Result<SocketAddr> {
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
                .await
                .context("resolving the client_id URL's host")?
                .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !self.allowed(a.ip())) {
            bail!(
                "the client_id URL's host resolves to a private or special address; the relay fetches only public ones"
            );
        }
        Ok(addrs[0])
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return self.policy.allow_loopback;
        }
        public_address(ip)
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for cert in &self.policy.extra_roots {
            let _ = roots.add(cert.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// Whether `ip` is an ordinary public address (not private, loopback,
/// link-local, shared, documentation, multicast or unspecified).
pub fn public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_address(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || first == 0x2001 && v6.segments()[1] == 0xdb8)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched_from() {
        for ok in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(public_address(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "192.0.2.1",
        ] {
            assert!(!public_address(no.parse().unwrap()), "{no}");
        }
    }
}
