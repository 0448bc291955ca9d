//! Native TLS (rustls): loads the PEM certificate chain and key (RSA, ECDSA P-256/P-384 or
//! Ed25519), serves them to every handshake, and reloads them on SIGHUP without a restart. A
//! reload that fails keeps the old certificate and logs why.
//!
//! Session resumption: the server issues stateless session tickets (AEAD-encrypted with a key
//! that rotates every 6 hours, kept only in this process), so a reconnecting client skips the
//! certificate signature and chain — the most expensive part of a full handshake with an RSA
//! key — and the server holds no per-client session state (`BENCHMARKS.md`, "Connect cost").

use parking_lot::RwLock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The current certificate, swapped on reload.
#[derive(Debug)]
pub struct ReloadableCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read tls.cert {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM in tls.cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "tls.cert {} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a private key from tls.key {}: {e}",
            files.key.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable tls.key {}: {e}", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("tls.cert and tls.key do not match: {e}"))?;
    Ok(Arc::new(ck))
}

impl ReloadableCert {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = load(&files)?;
        Ok(Arc::new(ReloadableCert {
            files,
            current: RwLock::new(current),
        }))
    }

    /// Reloads the files; keeps the old certificate if they are unusable.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.files)?;
        *self.current.write() = fresh;
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Why the certificate or key cannot be used; the text names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

impl From<String> for TlsError {
    fn from(message: String) -> Self {
        TlsError(message)
    }
}

/// A TLS acceptor that always uses the current certificate (HTTP/1.1 only: WebSocket upgrades
/// need it) and issues session tickets.
pub fn acceptor(cert: Arc<ReloadableCert>) -> Result<TlsAcceptor, TlsError> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(cert);
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless tickets: TLS 1.3 resumption (and TLS 1.2's) without a server-side cache; the
    // default stateful cache holds 256 sessions, which a reconnect storm of thousands of
    // clients evicts before they come back.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| format!("TLS session tickets cannot be set up: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
