//! What an HTTP error body says, for the message of an [`super::HttpError::Status`].

use serde_json::Value;

use crate::redact::scrub;

/// What an error body says, from the shapes the supported issuers use: RFC 6749
/// (`error`, `error_description`; also Apinizer), AppViewX (`appStatusCode`, `message`) and
/// MindSphere (`errors[0].code`, `errors[0].message`). Scrubbed of `secrets`.
pub fn describe_error_body(body: &[u8], secrets: &[&str]) -> Option<String> {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        // A short plain-text answer (API-Portal's, say) is the message itself; HTML is not.
        let text = std::str::from_utf8(body).ok()?.trim();
        let plain = !text.is_empty() && !text.starts_with('<') && text.len() <= 1024;
        return plain.then(|| scrub(text, secrets));
    };
    let text = |p: &str| {
        json.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let pairs = [
        ("/error", "/error_description"),
        ("/appStatusCode", "/message"),
        ("/errors/0/code", "/errors/0/message"),
    ];
    let described = pairs
        .iter()
        .find_map(|(code, message)| match (text(code), text(message)) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (Some(c), None) => Some(c.to_owned()),
            (None, Some(m)) => Some(m.to_owned()),
            (None, None) => None,
        })?;
    Some(scrub(&described, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_each_vendor() {
        let rfc = br#"{"error":"unauthorized_client","error_description":"Bad credentials"}"#;
        assert_eq!(
            describe_error_body(rfc, &[]).unwrap(),
            "unauthorized_client: Bad credentials"
        );
        let avx = br#"{"response":null,"message":"Client Password is incorrect::[Invalid Client credential]","appStatusCode":"OAUTH_CLNT_015","tags":{},"headers":null}"#;
        assert_eq!(
            describe_error_body(avx, &[]).unwrap(),
            "OAUTH_CLNT_015: Client Password is incorrect::[Invalid Client credential]"
        );
        let mdsp = br#"{"errors":[{"code":"mdsp.core.generic.unauthorized","logref":"x","message":"Not authorized"}]}"#;
        assert_eq!(
            describe_error_body(mdsp, &[]).unwrap(),
            "mdsp.core.generic.unauthorized: Not authorized"
        );
        let echo = br#"{"error":"invalid_client","error_description":"secret hunter22 is wrong"}"#;
        assert_eq!(
            describe_error_body(echo, &["hunter22"]).unwrap(),
            "invalid_client: secret <redacted> is wrong"
        );
        assert_eq!(describe_error_body(b"<html>", &[]), None);
        assert_eq!(
            describe_error_body(b"Mandatory property missing\n", &[]).unwrap(),
            "Mandatory property missing"
        );
        assert_eq!(describe_error_body(b"", &[]), None);
    }
}
