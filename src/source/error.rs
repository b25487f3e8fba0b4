//! Why a fetch failed, as a readable message and as a closed set of metric reasons.

use crate::secret::SecretError;

/// A failed fetch. Messages name the endpoint (without query string) and what the issuer said
/// (scrubbed), never a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read credential: {0}")]
    Credential(#[from] SecretError),
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout {
        url: String,
        timeout: std::time::Duration,
    },
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
        /// The issuer's `Retry-After`, honoured by the scheduler.
        retry_after: Option<std::time::Duration>,
    },
    #[error("command {command} {detail}")]
    Command { command: String, detail: String },
    #[error("{url} refused: {detail}")]
    Rejected { url: String, detail: String },
    #[error("response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("invalid response from {url}: {detail}")]
    InvalidResponse { url: String, detail: String },
    #[error("token from {url} had already expired when it arrived (expiry {expires_at})")]
    ExpiredOnArrival { url: String, expires_at: String },
}

fn describe(remote: &Option<String>) -> String {
    remote
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

impl FetchError {
    /// An answer from `url` (already redacted for display) that cannot be used.
    pub fn invalid(url: &str, detail: impl Into<String>) -> Self {
        FetchError::InvalidResponse {
            url: url.to_owned(),
            detail: detail.into(),
        }
    }

    /// How long the issuer asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The metric label for this failure: a small closed set, never free text.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Credential(_) => "credential_unreadable",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::Request { .. } => "request",
            FetchError::Status { status, .. } if *status == 429 => "throttled",
            FetchError::Status { status, .. } if *status >= 500 => "http_5xx",
            FetchError::Status { .. } => "http_4xx",
            FetchError::TooLarge { .. } => "response_too_large",
            FetchError::Rejected { .. } => "rejected",
            FetchError::Command { .. } => "command_failed",
            FetchError::InvalidResponse { .. } => "invalid_response",
            FetchError::ExpiredOnArrival { .. } => "expired_on_arrival",
        }
    }

    /// Every reason [`FetchError::reason`] can return, for documentation and tests.
    pub const REASONS: &'static [&'static str] = &[
        "credential_unreadable",
        "timeout",
        "connect",
        "tls",
        "request",
        "throttled",
        "http_5xx",
        "http_4xx",
        "response_too_large",
        "rejected",
        "command_failed",
        "invalid_response",
        "expired_on_arrival",
    ];
}
