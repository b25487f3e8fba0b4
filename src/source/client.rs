//! The HTTP client shared by HTTP-based sources: one rustls provider, optional extra CA and
//! client certificate, proxies from the environment, a per-request timeout and a capped body.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::error::FetchError;
use crate::config::HttpSettings;

/// Largest response body read from an issuer.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

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

/// Clients keyed by their TLS material, so thousands of sources share a handful of
/// connection pools instead of one each.
#[derive(Default)]
pub struct HttpClients {
    by_tls: Mutex<HashMap<TlsFiles, reqwest::Client>>,
}

/// `(ca_file, client_cert, client_key)`: what makes two clients differ.
type TlsFiles = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

impl HttpClients {
    pub fn get(&self, settings: &HttpSettings) -> Result<reqwest::Client, ClientBuildError> {
        let key = (
            settings.ca_file.clone(),
            settings.client_cert.clone(),
            settings.client_key.clone(),
        );
        let mut cache = self.by_tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(settings)?;
        cache.insert(key, client.clone());
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

/// A response read in full (up to [`MAX_RESPONSE_BYTES`]).
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` (seconds or an HTTP date), capped at an hour.
    pub retry_after: Option<Duration>,
}

/// Sends `request`, classifying transport failures, and reads at most [`MAX_RESPONSE_BYTES`].
pub async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
    timeout: Duration,
) -> Result<Reply, FetchError> {
    let mut response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(e, url, timeout))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
            limit: MAX_RESPONSE_BYTES,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| classify(e, url, timeout))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit: MAX_RESPONSE_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        body,
        retry_after,
    })
}

impl Reply {
    /// `Ok(self)` for a 2xx answer; otherwise the status as an error with what the service
    /// said, scrubbed of `secrets`.
    pub fn success(self, url: &str, secrets: &[&str]) -> Result<Reply, FetchError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(FetchError::Status {
            url: url.to_owned(),
            status: self.status,
            remote: super::response::describe_error_body(&self.body, secrets),
            retry_after: self.retry_after,
        })
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`, capped at one hour.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value.trim())
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// Turns a reqwest error into a [`FetchError`] without its URL (which may carry a query
/// string) and with its cause chain spelled out.
fn classify(error: reqwest::Error, url: &str, timeout: Duration) -> FetchError {
    let url = url.to_owned();
    if error.is_timeout() {
        return FetchError::Timeout { url, timeout };
    }
    let error = error.without_url();
    let detail = cause_chain(&error);
    let is_tls = {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut found = false;
        while let Some(c) = cause {
            if c.downcast_ref::<rustls::Error>().is_some() {
                found = true;
            }
            cause = c.source();
        }
        found || detail.contains("certificate") || detail.contains("tls handshake")
    };
    if is_tls {
        FetchError::Tls { url, detail }
    } else if error.is_connect() {
        FetchError::Connect { url, detail }
    } else {
        FetchError::Request { url, detail }
    }
}

/// `outer: inner: innermost`, skipping repeated messages.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let got = parse_retry_after(&later).unwrap().as_secs();
        assert!((88..=90).contains(&got), "{got}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
