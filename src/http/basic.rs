//! HTTP Basic authentication (RFC 7617), built in one place for every kind that uses it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;

/// `base64(user:password)`: the credentials part of a Basic `Authorization` header.
pub fn basic_credentials(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

/// `Basic base64(user:password)`, marked sensitive so it never shows in debug output.
pub fn basic_auth(user: &str, password: &str) -> HeaderValue {
    // Base64 is printable ASCII, always a valid header value: the fallback is never taken.
    let mut value = HeaderValue::from_str(&format!("Basic {}", basic_credentials(user, password)))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_marks_sensitive() {
        // RFC 7617 §2's example.
        let value = basic_auth("Aladdin", "open sesame");
        assert_eq!(
            value.to_str().unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(value.is_sensitive());
        let odd = basic_auth("a\nb", "p\u{0}w");
        assert_eq!(
            odd.to_str().unwrap(),
            format!("Basic {}", basic_credentials("a\nb", "p\u{0}w"))
        );
    }
}
