//! The TLS configuration of an HTTP client: the platform's roots (plus an extra CA bundle
//! when configured) checked by `rustls-platform-verifier`, and an optional client
//! certificate for mutual TLS. The same choices reqwest made for this agent before the
//! token path went to hyper directly.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ClientBuildError, HttpSettings};

/// A rustls client configuration for `settings`, with ALPN left to the connector.
pub fn client_config(settings: &HttpSettings) -> Result<ClientConfig, ClientBuildError> {
    crate::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = match &settings.ca_file {
        None => rustls_platform_verifier::Verifier::new(provider.clone()),
        Some(ca) => rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots(ca)?,
            provider.clone(),
        ),
    }
    .map_err(|e| ClientBuildError::Build(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Build(e.to_string()))?
        .dangerous() // not dangerous: the platform's verifier, as reqwest uses it
        .with_custom_certificate_verifier(Arc::new(verifier));
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
                ClientBuildError::Identity {
                    detail: format!("{} holds no usable PEM private key: {e}", key.display()),
                }
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientBuildError::Identity {
                    detail: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ClientBuildError::Identity {
            detail: "give both or neither".into(),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientBuildError> {
    std::fs::read(path).map_err(|source| ClientBuildError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of the PEM file at `path`; an error if it holds none or a broken one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let unusable = |detail: String| ClientBuildError::Certificate {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(e.to_string()))?;
    if certs.is_empty() {
        return Err(unusable("no certificate found".into()));
    }
    Ok(certs)
}

/// The extra CA bundle, each certificate checked to be one a verifier can use.
fn extra_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let certs = certificates(path)?;
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| ClientBuildError::Certificate {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(dir: &Path, files: &[(&str, &str)]) -> HttpSettings {
        let mut s = HttpSettings {
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        for (field, content) in files {
            let path = dir.join(field);
            std::fs::write(&path, content).unwrap();
            match *field {
                "ca" => s.ca_file = Some(path),
                "cert" => s.client_cert = Some(path),
                _ => s.client_key = Some(path),
            }
        }
        s
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = |files: &[(&str, &str)]| {
            client_config(&settings(dir.path(), files))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            err(&[("ca", "junk")])
                .contains("holds no usable PEM certificate: no certificate found")
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(err(&[("ca", broken)]).contains("holds no usable PEM certificate"));
        assert!(err(&[("cert", &cert.pem())]).contains("give both or neither"));
        let no_key = err(&[("cert", &cert.pem()), ("key", &cert.pem())]);
        assert!(
            no_key.contains("holds no usable PEM private key"),
            "{no_key}"
        );
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let mismatched = err(&[("cert", &cert.pem()), ("key", &other)]);
        assert!(
            mismatched.starts_with("client_cert/client_key:"),
            "{mismatched}"
        );
        // The good ones build, and no file content appears in any message above.
        assert_eq!(err(&[("ca", &cert.pem())]), "");
        assert_eq!(
            err(&[("cert", &cert.pem()), ("key", &key.serialize_pem())]),
            ""
        );
        for e in [no_key, mismatched] {
            assert!(!e.contains("PRIVATE KEY-----"), "{e}");
        }
    }
}
