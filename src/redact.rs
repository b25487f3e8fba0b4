//! Scrubbing of text that came from outside (an issuer's error body) before it is logged.

/// Longest remote message kept in an error.
const MAX_REMOTE_MESSAGE: usize = 300;

/// Replaces every occurrence of the given secrets with `<redacted>`, drops control characters
/// and truncates, so an issuer that echoes a credential back cannot make the agent log it.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "<redacted>");
    }
    if out.chars().count() > MAX_REMOTE_MESSAGE {
        out = out.chars().take(MAX_REMOTE_MESSAGE).collect::<String>() + "…";
    }
    out
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
    fn urls_lose_query_and_userinfo() {
        let u =
            url::Url::parse("https://user:pw@idp.example.com:8443/oauth/token?key=s3cret").unwrap();
        assert_eq!(
            url_for_display(&u),
            "https://idp.example.com:8443/oauth/token"
        );
    }
}
