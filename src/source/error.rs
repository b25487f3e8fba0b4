//! Why a fetch failed, as a readable message and as a closed set of metric reasons.

use std::time::Duration;

use crate::credential::CredentialError;
use crate::error::Reason;
use crate::http::HttpError;

/// A failed fetch. Messages name the endpoint (without query string) and what the issuer said
/// (scrubbed), never a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot read credential: {0}")]
    Credential(#[from] CredentialError),
    #[error("command {command} {detail}")]
    Command { command: String, detail: String },
    #[error("command {command} timed out after {timeout:?}")]
    CommandTimeout { command: String, timeout: Duration },
    #[error("output of command {command} is larger than {limit} bytes")]
    CommandOutputTooLarge { command: String, limit: usize },
    #[error("{url} refused: {detail}")]
    Rejected { url: String, detail: String },
    #[error("invalid response from {url}: {detail}")]
    InvalidResponse { url: String, detail: String },
    #[error("token from {url} had already expired when it arrived (expiry {expires_at})")]
    ExpiredOnArrival { url: String, expires_at: String },
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
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Http(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Every reason [`Reason::reason`] can return, for documentation and tests.
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

impl Reason for FetchError {
    fn reason(&self) -> &'static str {
        match self {
            FetchError::Http(e) => e.reason(),
            FetchError::Credential(_) => "credential_unreadable",
            FetchError::CommandTimeout { .. } => "timeout",
            FetchError::CommandOutputTooLarge { .. } => "response_too_large",
            FetchError::Rejected { .. } => "rejected",
            FetchError::Command { .. } => "command_failed",
            FetchError::InvalidResponse { .. } => "invalid_response",
            FetchError::ExpiredOnArrival { .. } => "expired_on_arrival",
        }
    }
}
