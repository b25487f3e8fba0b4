//! The webhook's serving certificate: read from `tls.crt` and `tls.key` in a directory (a
//! Secret volume, from cert-manager or from the self-managed bootstrap), reloaded when the
//! kubelet swaps the volume's `..data`, and handed to rustls per handshake. A pair that fails
//! to load never replaces the one in use (bank-vaults' `tlscertificate.go` does the same).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::watch::FileWatch;
use crate::webhook::metrics::WebhookMetrics;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
/// Larger files are not certificates a webhook serves.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    #[error("no PEM certificate in the certificate file")]
    NoCertificate,
    #[error("no usable PEM private key in the key file: {0}")]
    Key(String),
    #[error("the key does not belong to the certificate, or is of an unsupported type: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot parse the certificate: {0}")]
    Parse(String),
}

/// A certificate chain and key, checked to belong together, and when the leaf expires.
pub struct ServingPair {
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
}

impl ServingPair {
    /// Parses PEM text (the chain's first certificate is the leaf).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| CertificateError::Parse(e.to_string()))?;
        let leaf = chain.first().ok_or(CertificateError::NoCertificate)?;
        let not_after = not_after(leaf)?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| CertificateError::Key(e.to_string()))?;
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(CertificateError::Mismatch)?;
        Ok(ServingPair {
            key: Arc::new(certified),
            not_after,
        })
    }
}

/// When `cert` expires.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, CertificateError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| CertificateError::Parse(e.to_string()))?;
    let seconds = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, CertificateError> {
    let read = |error| CertificateError::Read {
        path: path.to_owned(),
        error,
    };
    if std::fs::metadata(path).map_err(read)?.len() > MAX_PEM_BYTES {
        return Err(CertificateError::TooLarge(path.to_owned()));
    }
    std::fs::read(path).map_err(read)
}

/// The certificate the TLS listener serves, replaced whole on reload.
pub struct ServingCertificate {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The PEM text last loaded from the directory, to tell a real change from a look.
    loaded: RwLock<Option<(Vec<u8>, Vec<u8>)>>,
    metrics: Arc<WebhookMetrics>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ServingCertificate {
    pub fn new(metrics: Arc<WebhookMetrics>) -> Self {
        ServingCertificate {
            current: RwLock::new(None),
            loaded: RwLock::new(None),
            metrics,
        }
    }

    /// Whether there is a certificate to serve (`/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Serves `pair` from the next handshake on.
    pub fn install(&self, pair: ServingPair) {
        if pair.not_after <= SystemTime::now() {
            warn!("the serving certificate has expired; the API server will refuse it");
        }
        self.metrics.certificate_loaded(true, Some(pair.not_after));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(pair.key);
    }

    /// Loads `dir`'s pair if it changed since the last load. A pair that does not load is
    /// counted and logged, and the one in use stays.
    pub fn load_dir(&self, dir: &Path) -> Result<bool, CertificateError> {
        let result = (|| {
            let cert = read_limited(&dir.join(CERT_FILE))?;
            let key = read_limited(&dir.join(KEY_FILE))?;
            let same = self
                .loaded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                == Some(&(cert.clone(), key.clone()));
            if same {
                return Ok(None);
            }
            let pair = ServingPair::from_pem(&cert, &key)?;
            Ok(Some((pair, cert, key)))
        })();
        match result {
            Ok(None) => Ok(false),
            Ok(Some((pair, cert, key))) => {
                info!(dir = %dir.display(), "serving certificate loaded");
                self.install(pair);
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some((cert, key));
                Ok(true)
            }
            Err(e) => {
                self.metrics.certificate_loaded(false, None);
                Err(e)
            }
        }
    }

    /// Reloads from `dir` whenever its files change (and every minute, in case an event was
    /// lost), until `shutdown`.
    pub async fn watch(self: Arc<Self>, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
        let files = [dir.join(CERT_FILE), dir.join(KEY_FILE)];
        let mut watch = FileWatch::new(files, Duration::from_millis(500), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = watch.changed() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Err(e) = self.load_dir(&dir) {
                let kept = if self.is_loaded() {
                    "the certificate in use stays"
                } else {
                    "no certificate to serve yet"
                };
                warn!(dir = %dir.display(), error = %e, "{kept}");
            }
        }
    }
}
