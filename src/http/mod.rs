//! HTTP for every kind that talks to a server (sources and sinks alike): the client (hyper,
//! rustls, proxies from the environment), resolved settings, the client cache, one capped
//! `send`, Basic authentication, and the errors they share.
//! A leaf: it imports nothing of the sources, the sinks or the configuration.

mod basic;
mod client;
mod clients;
mod error;
mod error_body;
mod proxy;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

pub use self::basic::{basic_auth, basic_credentials};
pub use self::client::{Client, ClientBuildError, RequestBuilder, Target};
pub use self::clients::HttpClients;
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
/// `timeout` bounds all of it, connect and body included.
pub async fn send(
    request: RequestBuilder,
    url: &str,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let (client, request) = request.build().map_err(|e| HttpError::Request {
        url: url.to_owned(),
        detail: cause_chain(&*e),
    })?;
    let exchange = async {
        let response = client
            .execute(request)
            .await
            .map_err(|e| classify(&e, e.is_connect(), url, timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let too_large = || HttpError::TooLarge {
            url: url.to_owned(),
            limit: MAX_RESPONSE_BYTES,
        };
        if response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                Some(_) => too_large(),
                None => classify(&*e, false, url, timeout),
            })?;
        Ok(Reply {
            status,
            body: body.to_bytes().into(),
            retry_after,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(HttpError::Timeout {
                url: url.to_owned(),
                timeout,
            })
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

/// Turns a transport error into an [`HttpError`] with its cause chain spelled out (the
/// chain never holds the URL, which may carry a query string).
fn classify(
    error: &(dyn std::error::Error + 'static),
    connecting: bool,
    url: &str,
    timeout: Duration,
) -> HttpError {
    let url = url.to_owned();
    let detail = cause_chain(error);
    let mut timed_out = false;
    let mut tls = detail.contains("certificate") || detail.contains("tls handshake");
    let mut cause = Some(error);
    while let Some(c) = cause {
        tls |= c.downcast_ref::<rustls::Error>().is_some();
        timed_out |= c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        cause = c.source();
    }
    if timed_out {
        HttpError::Timeout { url, timeout }
    } else if tls {
        HttpError::Tls { url, detail }
    } else if connecting {
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
