//! HTTP clients keyed by the settings they are built from, so thousands of sources share a
//! handful of connection pools instead of one each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::HttpSettings;

/// Why an HTTP client could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM certificate: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error("client_cert/client_key: {detail}")]
    Identity { detail: String },
    #[error("cannot build HTTP client: {0}")]
    Build(String),
}

/// One rustls provider, optional extra CA and client certificate, proxies from the
/// environment, no redirects followed. Keyed by every setting a client is built from (the TLS
/// files and the connect timeout), so no source inherits another's.
#[derive(Default)]
pub struct HttpClients {
    by_settings: Mutex<HashMap<HttpSettings, reqwest::Client>>,
}

impl HttpClients {
    pub fn get(&self, settings: &HttpSettings) -> Result<reqwest::Client, ClientBuildError> {
        let mut cache = self.by_settings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(settings) {
            return Ok(client.clone());
        }
        let client = build_client(settings)?;
        cache.insert(settings.clone(), client.clone());
        Ok(client)
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientBuildError> {
    std::fs::read(path).map_err(|source| ClientBuildError::Read {
        path: path.clone(),
        source,
    })
}

fn build_client(settings: &HttpSettings) -> Result<reqwest::Client, ClientBuildError> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("token-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(settings.timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &settings.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| {
            ClientBuildError::Certificate {
                path: ca.clone(),
                detail: e.to_string(),
            }
        })?;
        if certs.is_empty() {
            return Err(ClientBuildError::Certificate {
                path: ca.clone(),
                detail: "no certificate found".into(),
            });
        }
        builder = builder.tls_certs_merge(certs);
    }
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| ClientBuildError::Identity {
                    detail: e.to_string(),
                })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(ClientBuildError::Identity {
                detail: "give both or neither".into(),
            });
        }
    }
    builder
        .build()
        .map_err(|e| ClientBuildError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_never_inherits_another_sources_connect_timeout() {
        let clients = HttpClients::default();
        let short = HttpSettings {
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        let long = HttpSettings {
            timeout: Duration::from_secs(30),
            ..short.clone()
        };
        for settings in [&short, &short, &long, &long] {
            clients.get(settings).unwrap();
        }
        let cache = clients.by_settings.lock().unwrap();
        assert_eq!(cache.len(), 2, "one client per distinct settings");
    }
}
