//! Why an HTTP exchange failed, for sources and sinks alike.

use std::time::Duration;

use crate::error::Reason;

/// A failed request. Messages name the endpoint (without query string) and what the server
/// said (scrubbed), never a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("TLS handshake with {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("request to {url} failed: {detail}")]
    Request { url: String, detail: String },
    #[error("{url} answered HTTP {status}{}", describe(.remote))]
    Status {
        url: String,
        status: u16,
        remote: Option<String>,
        /// The server's `Retry-After`, honoured by the scheduler.
        retry_after: Option<Duration>,
    },
    #[error("response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

fn describe(remote: &Option<String>) -> String {
    remote
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

impl HttpError {
    /// How long the server asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl Reason for HttpError {
    fn reason(&self) -> &'static str {
        match self {
            HttpError::Timeout { .. } => "timeout",
            HttpError::Connect { .. } => "connect",
            HttpError::Tls { .. } => "tls",
            HttpError::Request { .. } => "request",
            HttpError::Status { status, .. } if *status == 429 => "throttled",
            HttpError::Status { status, .. } if *status >= 500 => "http_5xx",
            HttpError::Status { .. } => "http_4xx",
            HttpError::TooLarge { .. } => "response_too_large",
        }
    }
}
