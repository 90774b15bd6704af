//! The daemon's side of TLS to the relay: the public roots by default, or
//! only the certificate authority the operator pinned (`--ca-cert`), for a
//! relay with a private or self-signed certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::Connector;

/// How to dial the relay: `None` means the public roots (webpki-roots).
/// With `ca`, that file's certificates are the only ones trusted.
pub fn connector(ca: Option<&Path>) -> anyhow::Result<Option<Connector>> {
    let Some(ca) = ca else { return Ok(None) };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading the relay's CA certificate {}", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("reading {}: not a PEM certificate", ca.display()))?;
        roots.add(cert).with_context(|| format!("{} holds a certificate rustls cannot use", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Connector::Rustls(Arc::new(config))))
}
