//! Scrubbing of text that came from outside (an issuer's error body) before it is logged.

/// Longest remote message kept in an error.
const MAX_REMOTE_MESSAGE: usize = 300;

/// Replaces every occurrence of the given secrets with `<redacted>` (as they are, and in the
/// base64, URL and JSON encodings a server may echo them in), then drops control characters
/// and truncates, so an issuer that echoes a credential back cannot make the agent log it.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= 4).collect();
    let mut out = text.to_owned();
    for secret in &secrets {
        for form in encodings(secret) {
            out = out.replace(&form, "<redacted>");
        }
    }
    let out = scrub_base64_runs(&out, &secrets);
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
/// URL-safe), URL-encoded (form style with `+`, or `%20`) and inside a JSON string (with `/`
/// escaped as `\/` too, as PHP's `json_encode` does; `\uXXXX` escapes of non-ASCII are not
/// covered). Longest first, so a form that contains another is replaced whole.
fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    let json = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(secret)
        .to_owned();
    let mut forms = vec![
        secret.to_owned(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        form.replace('+', "%20"),
        form,
        json.replace('/', "\\/"),
        json,
    ];
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Shortest run of base64 characters worth decoding: shorter runs are ordinary words.
const MIN_BASE64_RUN: usize = 8;

/// Standard base64 that tolerates what an echo leaves: missing padding, trailing bits.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Replaces each run of base64 characters whose decoding holds a secret (or its form-encoded
/// form): a secret encoded together with something else (`Basic base64(id:secret)` echoed
/// back) has no fixed form. A run ends at a character outside both base64 alphabets and after
/// its padding (`auth=<base64>`); text glued in front of it (`Basic%20<base64>`) is handled by
/// decoding from each of its first four characters; `\/` (JSON) is read as `/`.
fn scrub_base64_runs(text: &str, secrets: &[&str]) -> String {
    if secrets.is_empty() {
        return text.to_owned();
    }
    let needles: Vec<Vec<u8>> = secrets
        .iter()
        .flat_map(|s| {
            let form: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
            [s.as_bytes().to_vec(), form.into_bytes()]
        })
        .collect();
    let text = text.replace("\\/", "/");
    let is_base64 = |c: char| c.is_ascii_alphanumeric() || "+/-_".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(is_base64) {
        out.push_str(&rest[..start]);
        let body = rest[start..]
            .find(|c| !is_base64(c))
            .unwrap_or(rest.len() - start);
        let padding = rest[start + body..]
            .bytes()
            .take_while(|b| *b == b'=')
            .count();
        let run = &rest[start..start + body + padding];
        if body >= MIN_BASE64_RUN && holds_a_needle(&rest[start..start + body], &needles) {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        rest = &rest[start + body + padding..];
    }
    out.push_str(rest);
    out
}

/// Whether `run` (base64 characters of either alphabet, no padding) decodes to bytes that
/// hold one of `needles`, reading from any of its first four characters: whatever is glued in
/// front only adds bytes before the real ones once the groups line up.
fn holds_a_needle(run: &str, needles: &[Vec<u8>]) -> bool {
    use base64::Engine;
    let standard: Vec<u8> = run
        .bytes()
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        })
        .collect();
    (0..4).any(|skip| {
        let Some(mut part) = standard.get(skip..) else {
            return false;
        };
        if part.len() % 4 == 1 {
            part = &part[..part.len() - 1]; // not base64 at that length
        }
        LENIENT_BASE64.decode(part).is_ok_and(|bytes| {
            needles
                .iter()
                .any(|n| !n.is_empty() && bytes.windows(n.len()).any(|w| w == n.as_slice()))
        })
    })
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
    fn a_secret_base64_encoded_with_other_text_is_scrubbed() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "p@ss w+rd/ü?";
        let form = "p%40ss+w%2Brd%2F%C3%BC%3F";
        for header in [
            STANDARD.encode(format!("client:{secret}")),
            STANDARD.encode(format!("client:{form}")), // RFC 6749 Basic
            URL_SAFE_NO_PAD.encode(format!("{{\"client_secret\":\"{secret}\",\"x\":1}}")),
        ] {
            let out = scrub(
                &format!("rejected Authorization: Basic {header}, bye"),
                &[secret],
            );
            assert_eq!(
                out, "rejected Authorization: Basic <redacted>, bye",
                "{header}"
            );
            // Glued to what comes before, after padding, or with `/` escaped for JSON.
            for (echo, want) in [
                (format!("Basic%20{header}."), "Basic%<redacted>."),
                (format!("auth={header}."), "auth=<redacted>."),
                (format!("x{header}."), "<redacted>."),
                (format!("[{}]", header.replace('/', "\\/")), "[<redacted>]"),
            ] {
                assert_eq!(scrub(&echo, &[secret]), want, "{echo}");
            }
        }
        // Base64 that holds no secret, and ordinary words, are left alone.
        let plain = format!("id {} is unknown", STANDARD.encode("client:other"));
        assert_eq!(scrub(&plain, &[secret]), plain);
    }

    #[test]
    fn a_secret_escaped_inside_json_is_scrubbed() {
        let secret = "a/b\"c\\d";
        for form in [r#"a/b\"c\\d"#, r#"a\/b\"c\\d"#] {
            let out = scrub(&format!("{{\"echo\":\"{form}\"}}"), &[secret]);
            assert_eq!(out, "{\"echo\":\"<redacted>\"}", "{form}");
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
