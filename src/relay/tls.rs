//! HTTPS and WSS served by the relay itself: a certificate and key from PEM
//! files, read again on request (SIGHUP), so a renewed certificate needs no
//! restart and a bad one never replaces a good one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The relay's certificate, swappable while it serves.
#[derive(Debug)]
pub struct Tls {
    /// The certificate chain file (PEM, leaf first).
    cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    key: PathBuf,
    /// What new connections are served with. A std lock: held only to clone an `Arc`.
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads `cert` and `key`; fails with what is wrong with them.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let config = read_config(cert, key)?;
        Ok(Self { cert: cert.to_path_buf(), key: key.to_path_buf(), current: RwLock::new(config) })
    }

    /// Reads the files again. On an error the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = read_config(&self.cert, &self.key)?;
        *self.current.write().unwrap() = config;
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap()))
    }
}

fn read_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the TLS certificate {}: not valid PEM", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}: expected a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("the TLS key does not fit the certificate in {}", cert.display()))?;
    // HTTP/1.1 only: the agent's WebSocket and the SSE streams use it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
