//! HTTP for every kind that talks to a server (sources and sinks alike): resolved settings,
//! the client cache, one capped `send`, Basic authentication, and the errors they share.
//! A leaf: it imports nothing of the sources, the sinks or the configuration.

mod basic;
mod clients;
mod error;
mod error_body;

use std::path::PathBuf;
use std::time::Duration;

pub use self::basic::{basic_auth, basic_credentials};
pub use self::clients::{ClientBuildError, HttpClients};
pub use self::error::HttpError;
pub use self::error_body::describe_error_body;
use crate::error::cause_chain;

/// Largest response body read from a server.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Fully resolved HTTP settings of one source (and of the HTTP sinks it feeds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpSettings {
    /// Per-request timeout, connect included.
    pub timeout: Duration,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Why an endpoint is not an `http(s)` URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    NotAUrl(url::ParseError),
    #[error("scheme `{0}` is not http or https")]
    Scheme(String),
}

/// Parses an endpoint that must be `http` or `https`.
pub fn http_url(text: &str) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(text).map_err(UrlError::NotAUrl)?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(UrlError::Scheme(other.to_owned())),
    }
}

/// Whether `text` is a plain `http://` URL to a host other than this machine: tokens and
/// credentials would cross the network in clear text.
pub fn is_cleartext_remote(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false; // not a URL: `check` says so
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    url.scheme() == "http" && !loopback
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
) -> Result<Reply, HttpError> {
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
        return Err(HttpError::TooLarge {
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
            return Err(HttpError::TooLarge {
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
    pub fn success(self, url: &str, secrets: &[&str]) -> Result<Reply, HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(HttpError::Status {
            url: url.to_owned(),
            status: self.status,
            remote: describe_error_body(&self.body, secrets),
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

/// Turns a reqwest error into an [`HttpError`] without its URL (which may carry a query
/// string) and with its cause chain spelled out.
fn classify(error: reqwest::Error, url: &str, timeout: Duration) -> HttpError {
    let url = url.to_owned();
    if error.is_timeout() {
        return HttpError::Timeout { url, timeout };
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
        HttpError::Tls { url, detail }
    } else if error.is_connect() {
        HttpError::Connect { url, detail }
    } else {
        HttpError::Request { url, detail }
    }
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
