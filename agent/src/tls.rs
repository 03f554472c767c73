//! HTTPS on the video port, and certificate hot reload.
//!
//! The certificate and key are PEM files, mounted the way a `kubernetes.io/tls` Secret is (`tls.crt`, `tls.key`).
//! The kubelet renews such a volume by swapping a `..data` symlink, and cert-manager rewrites the files in place, so
//! as for the keyring the agent polls the files' content instead of trusting change notifications. Each handshake
//! asks the resolver for the pair in use; a reload swaps it atomically, so new handshakes get the new certificate
//! while open connections keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

/// ALPN protocols offered, best first: HTTP/2 for players that multiplex segment requests, HTTP/1.1 for the rest.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key pair cannot be served. Messages name the files, never the key's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not valid PEM: {source}")]
    CertificatePem { path: PathBuf, source: pem::Error },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1) or it is not valid PEM: {why}")]
    KeyPem { path: PathBuf, why: &'static str },
    #[error("{path}: the first certificate cannot be parsed as X.509: {why}")]
    Certificate { path: PathBuf, why: String },
    #[error("the key in {key} cannot be used: {source}")]
    Key { key: PathBuf, source: rustls::Error },
    #[error("the key in {key} does not match the certificate in {cert}: {source}")]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The pair in use, handed to every handshake. Swapped whole, so a handshake sees an old or a new pair, never a mix.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The agent's TLS side: the files it watches, the pair it serves, and the acceptor built around them.
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The files' bytes last loaded, and those last refused (so a bad pair is reported once, not once per poll).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    loaded: (Vec<u8>, Vec<u8>),
    refused: Option<(Vec<u8>, Vec<u8>)>,
}

/// A parsed pair, with the certificate's notAfter (Unix seconds) for the expiry metric.
struct Loaded {
    key: CertifiedKey,
    not_after: i64,
    serial: String,
}

impl Tls {
    /// Loads the pair, failing if it cannot be served: the agent should not start on a certificate it cannot use.
    pub fn load(cert_path: PathBuf, key_path: PathBuf, metrics: &Metrics) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let loaded = parse_pair(&cert_path, &key_path, &cert_pem, &key_pem, &provider)?;
        metrics.tls_cert_expiry.set(loaded.not_after);
        tracing::info!(cert = %cert_path.display(), serial = %loaded.serial, not_after = loaded.not_after, "TLS certificate loaded");
        let resolver = Arc::new(Resolver { current: ArcSwap::from_pointee(loaded.key) });
        // Modern defaults: TLS 1.3 and 1.2 with rustls' AEAD-only suites; no client certificates.
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let seen = Seen { loaded: (cert_pem, key_pem), refused: None };
        Ok(Tls { cert_path, key_path, provider, resolver, acceptor, seen: Mutex::new(seen) })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files if they changed. `Ok(true)` when a new pair is in use; a pair that cannot be served is
    /// refused (an error the first time it is seen, `Ok(false)` after) and the last good one stays.
    pub fn reload(&self, metrics: &Metrics) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.loaded.0 == cert_pem && seen.loaded.1 == key_pem {
            seen.refused = None;
            return Ok(false);
        }
        if seen.refused.as_ref().is_some_and(|(c, k)| *c == cert_pem && *k == key_pem) {
            return Ok(false);
        }
        match parse_pair(&self.cert_path, &self.key_path, &cert_pem, &key_pem, &self.provider) {
            Ok(loaded) => {
                self.resolver.current.store(Arc::new(loaded.key));
                metrics.tls_cert_expiry.set(loaded.not_after);
                metrics.tls_reloads.inc();
                tracing::info!(serial = %loaded.serial, not_after = loaded.not_after, "TLS certificate reloaded");
                *seen = Seen { loaded: (cert_pem, key_pem), refused: None };
                Ok(true)
            }
            Err(e) => {
                seen.refused = Some((cert_pem, key_pem));
                Err(e)
            }
        }
    }

    /// Polls the files until the process ends. A refused pair is logged once and counted once; a half-written
    /// renewal (new certificate, old key) is refused and picked up on a later poll once both files agree.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tick.tick().await;
            let this = self.clone();
            let m = metrics.clone();
            // File reads are blocking; a hung volume must not stall a runtime thread.
            let result = tokio::task::spawn_blocking(move || this.reload(&m)).await;
            match result {
                Ok(Ok(_)) => last_error.clear(),
                Ok(Err(e)) => {
                    let e = e.to_string();
                    if e != last_error {
                        metrics.tls_reload_errors.inc();
                        tracing::error!(error = %e, "TLS certificate not reloaded; still serving the last good one");
                        last_error = e;
                    }
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    Ok((read(cert)?, read(key)?))
}

fn parse_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertificatePem { path: cert_path.to_owned(), source })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: cert_path.to_owned() });
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::Certificate { path: cert_path.to_owned(), why: e.to_string() })?;
    let not_after = parsed.validity().not_after.timestamp();
    let serial = parsed.raw_serial_as_string();
    // The key file's content never reaches a message: only which kind of problem it has.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::KeyPem { path: key_path.to_owned(), why: pem_problem(&e) })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|source| match source {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Mismatch { cert: cert_path.to_owned(), key: key_path.to_owned(), source }
        }
        source => TlsError::Key { key: key_path.to_owned(), source },
    })?;
    Ok(Loaded { key, not_after, serial })
}

fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::NoItemsFound => "no private key section",
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "bad base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}
