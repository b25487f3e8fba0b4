//! The credential that flows from a source to its sinks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

/// A fetched token and what is known about its lifetime.
///
/// The value lives in a [`SecretString`] (zeroed on drop) and `Debug` never prints it, so a
/// token cannot leak through `{:?}`, a panic message or a tracing field by accident.
#[derive(Clone)]
pub struct Token {
    value: SecretString,
    /// `token_type` as reported by the issuer (`Bearer` when it did not say).
    pub token_type: String,
    /// When the agent received the token (wall clock).
    pub issued_at: SystemTime,
    /// When the token stops being valid (wall clock).
    pub expires_at: SystemTime,
    /// Non-secret facts from the response that sinks may publish (for example `controller_uri`).
    pub metadata: BTreeMap<String, String>,
}

impl Token {
    pub fn new(
        value: SecretString,
        token_type: String,
        issued_at: SystemTime,
        expires_at: SystemTime,
    ) -> Self {
        Self {
            value,
            token_type,
            issued_at,
            expires_at,
            metadata: BTreeMap::new(),
        }
    }

    /// The secret value. Callers must only hand it to a sink or an outgoing request.
    pub fn secret(&self) -> &str {
        self.value.expose_secret()
    }

    /// Total lifetime as issued (zero if the issuer reported an expiry in the past).
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// A short, non-reversible fingerprint used to tell tokens apart without revealing them.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.secret().as_bytes())
    }

    /// True when both carry the same secret value.
    pub fn same_value(&self, other: &Token) -> bool {
        self.secret() == other.secret()
    }
}

/// SHA-256 of `bytes`, hex encoded (`hex` encodes by table: this runs on every file write,
/// and a `format!` per byte cost more than the hash, BENCHMARKS.md).
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("token_type", &self.token_type)
            .field(
                "issued_at",
                &humantime::format_rfc3339_seconds(self.issued_at).to_string(),
            )
            .field(
                "expires_at",
                &humantime::format_rfc3339_seconds(self.expires_at).to_string(),
            )
            .field("metadata", &self.metadata)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = Token::new(
            "s3cr3t-token-value".into(),
            "Bearer".into(),
            now,
            now + Duration::from_secs(60),
        );
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("2023-11-14T22:13:20Z"), "{shown}");
        assert_eq!(t.lifetime(), Duration::from_secs(60));
        assert_eq!(t.remaining(now + Duration::from_secs(70)), Duration::ZERO);
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
