//! Scrubbing of text that came from outside (an issuer's error body) before it is logged.

/// Longest remote message kept in an error.
const MAX_REMOTE_MESSAGE: usize = 300;

/// Replaces every occurrence of the given secrets with `<redacted>` (as they are, and in the
/// base64 and URL encodings a server may echo them in), then drops control characters and
/// truncates, so an issuer that echoes a credential back cannot make the agent log it.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        for form in encodings(secret) {
            out = out.replace(&form, "<redacted>");
        }
    }
    let mut out: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.chars().count() > MAX_REMOTE_MESSAGE {
        out = out.chars().take(MAX_REMOTE_MESSAGE).collect::<String>() + "…";
    }
    out
}

/// A secret as it is and as a server may echo it back: base64 (padded or not, standard or
/// URL-safe) and URL-encoded (form style with `+`, or `%20`). Longest first, so a form that
/// contains another is replaced whole.
fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let mut forms = vec![
        secret.to_owned(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        form.replace('+', "%20"),
        form,
    ];
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// `scheme://host[:port]/path` of a URL: query strings and user info may carry credentials.
pub fn url_for_display(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        port_suffix(url)
    ) + url.path()
}

fn port_suffix(url: &url::Url) -> String {
    url.port().map(|p| format!(":{p}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets_controls_and_length() {
        assert_eq!(
            scrub("bad secret hunter22\nagain hunter22", &["hunter22", "ab"]),
            "bad secret <redacted> again <redacted>"
        );
        assert_eq!(scrub(&"x".repeat(400), &[]).chars().count(), 301);
    }

    #[test]
    fn a_secret_holding_control_characters_is_still_found() {
        let secret = "hun\tter\n22";
        let text = format!("the server says: bad secret {secret}, try again");
        let out = scrub(&text, &[secret]);
        assert_eq!(out, "the server says: bad secret <redacted>, try again");
    }

    #[test]
    fn base64_and_url_encoded_forms_are_scrubbed_too() {
        let secret = "p@ss w+rd/ü?";
        for form in [
            "cEBzcyB3K3JkL8O8Pw==",        // base64
            "p%40ss+w%2Brd%2F%C3%BC%3F",   // form-urlencoded
            "p%40ss%20w%2Brd%2F%C3%BC%3F", // percent-encoded
        ] {
            let out = scrub(&format!("echo: {form}."), &[secret]);
            assert_eq!(out, "echo: <redacted>.", "{form}");
        }
        // Base64url differs from base64 where `+` and `/` would be.
        let secret = "a??b>>~";
        for form in ["YT8/Yj4+fg==", "YT8_Yj4-fg"] {
            let out = scrub(&format!("echo: {form}."), &[secret]);
            assert_eq!(out, "echo: <redacted>.", "{form}");
        }
    }

    #[test]
    fn urls_lose_query_and_userinfo() {
        let u =
            url::Url::parse("https://user:pw@idp.example.com:8443/oauth/token?key=s3cret").unwrap();
        assert_eq!(
            url_for_display(&u),
            "https://idp.example.com:8443/oauth/token"
        );
    }
}
