//! TLS for the listeners (rustls on aws-lc-rs; TLS 1.2 and 1.3 only).
//!
//! The certificate and key are re-read when their files change (rewritten
//! in place, or replaced by a rename, as cert-manager and SPIFFE agents
//! do): new connections get the new certificate, open ones keep theirs. A
//! new pair that does not load is logged and the old one kept. Client
//! certificates are verified against a CA bundle when one is configured,
//! and each connection's certificate is handed to the handlers
//! ([`ClientCertificate`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::RwLock;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Every client presents one the CA vouches for.
    Required,
    /// A client may present one (which is then verified) or none.
    Optional,
}

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs that client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (when a CA is set).
    pub client_auth: ClientAuth,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a certificate chain and key into a pair rustls can serve.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    fn file(what: &'static str, path: &Path, reason: &dyn std::fmt::Display) -> TlsError {
        TlsError::File {
            what,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(file("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file("private key", key, &e))?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        file(
            "private key",
            key,
            &format!("does not fit the certificate: {e}"),
        )
    })
}

/// What identifies a version of a file: when it last changed and its size.
/// A rename over it (a new inode) changes both as far as `metadata` shows.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The current certificate, swapped when the files change.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// A server's TLS: the acceptor for new connections and the task keeping
/// its certificate current.
pub(crate) struct ServerTls {
    acceptor: TlsAcceptor,
    _watch: crate::background::Background,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CA (all must load) and starts
    /// watching the certificate files.
    pub(crate) fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let cert = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(load_pair(&settings.cert, &settings.key)?)),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| TlsError::File {
                        what: "client CA bundle",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let (added, _) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(TlsError::File {
                        what: "client CA bundle",
                        path: path.clone(),
                        reason: "no usable CA certificate in the file".into(),
                    });
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match settings.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?,
                )
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        // gRPC is HTTP/2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let watch = tokio::spawn(watch(cert, settings.cert.clone(), settings.key.clone()));
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            _watch: crate::background::Background(watch),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// Re-reads the pair whenever either file changes; keeps the old pair (and
/// says so) when the new one does not load, and tries again at the next
/// change.
async fn watch(cert: Arc<ReloadingCert>, cert_path: PathBuf, key_path: PathBuf) {
    let mut seen = (fingerprint(&cert_path), fingerprint(&key_path));
    let mut tick = tokio::time::interval(RELOAD_CHECK);
    loop {
        tick.tick().await;
        let now = (fingerprint(&cert_path), fingerprint(&key_path));
        if now == seen {
            continue;
        }
        seen = now;
        match load_pair(&cert_path, &key_path) {
            Ok(pair) => {
                *cert.current.write() = Arc::new(pair);
                tracing::info!(cert = %cert_path.display(), "TLS certificate reloaded: new connections use it");
            }
            Err(e) => tracing::error!(
                error = %e,
                "the changed TLS certificate or key does not load: still serving the previous one"
            ),
        }
    }
}
