//! Turning an issuer's JSON answer into a [`Token`]: where the token and its expiry are, and
//! what an error body says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use super::error::FetchError;
use super::jwt;
use crate::token::Token;

/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// How the answer is read: JSON with pointers, or the whole body as the token.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Json,
    /// The body, trimmed, is the token; expiry from its JWT `exp` or `ttl`.
    Text,
}

/// Where the fields are in a JSON response, as JSON pointers (RFC 6901).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseMapping {
    #[serde(default)]
    pub format: ResponseFormat,
    /// The token (default `/access_token`).
    #[serde(default = "default_token_pointer")]
    pub token: String,
    /// Seconds until expiry (default `/expires_in`).
    #[serde(default = "default_expires_in_pointer")]
    pub expires_in: String,
    /// Absolute expiry: epoch seconds or an RFC 3339 string (default `/expires_at`).
    #[serde(default = "default_expires_at_pointer")]
    pub expires_at: String,
    /// Token type (default `/token_type`).
    #[serde(default = "default_token_type_pointer")]
    pub token_type: String,
}

fn default_token_pointer() -> String {
    "/access_token".into()
}
fn default_expires_in_pointer() -> String {
    "/expires_in".into()
}
fn default_expires_at_pointer() -> String {
    "/expires_at".into()
}
fn default_token_type_pointer() -> String {
    "/token_type".into()
}

impl Default for ResponseMapping {
    fn default() -> Self {
        ResponseMapping {
            format: ResponseFormat::Json,
            token: default_token_pointer(),
            expires_in: default_expires_in_pointer(),
            expires_at: default_expires_at_pointer(),
            token_type: default_token_type_pointer(),
        }
    }
}

impl ResponseMapping {
    /// Configuration problems as `(field, message)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        [
            ("token", &self.token),
            ("expires_in", &self.expires_in),
            ("expires_at", &self.expires_at),
            ("token_type", &self.token_type),
        ]
        .into_iter()
        .filter(|(_, p)| !p.is_empty() && !p.starts_with('/'))
        .map(|(field, p)| {
            (
                field,
                format!(
                    "`{p}` is not a JSON pointer: it must start with `/`, like `/access_token`"
                ),
            )
        })
        .collect()
    }
}

/// Builds a token from a successful answer in the configured format.
pub fn token_from_body(
    body: &[u8],
    mapping: &ResponseMapping,
    ttl: Option<Duration>,
    now: SystemTime,
    url: &str,
) -> Result<Token, FetchError> {
    match mapping.format {
        ResponseFormat::Json => token_from_json(body, mapping, ttl, now, url),
        ResponseFormat::Text => token_from_text(body, ttl, now, url),
    }
}

/// The whole body (trimmed) is the token.
fn token_from_text(
    body: &[u8],
    ttl: Option<Duration>,
    now: SystemTime,
    url: &str,
) -> Result<Token, FetchError> {
    let invalid = |detail: String| FetchError::invalid(url, detail);
    let value = std::str::from_utf8(body)
        .map_err(|_| invalid("body is not UTF-8 text".into()))?
        .trim();
    check_token_text(value).map_err(invalid)?;
    let expires_at = jwt::expiry(value)
        .or_else(|| ttl.and_then(|t| now.checked_add(t)))
        .ok_or_else(|| {
            invalid(
                "no expiry: the token is not a JWT with `exp` and no `ttl` is configured".into(),
            )
        })?;
    refuse_expired(expires_at, now, url)?;
    Ok(Token::new(value.into(), "Bearer".into(), now, expires_at))
}

/// Builds a token from a successful JSON response.
///
/// Expiry comes from `expires_in`, else `expires_at`, else the JWT `exp` claim, else `ttl`.
pub fn token_from_json(
    body: &[u8],
    mapping: &ResponseMapping,
    ttl: Option<Duration>,
    now: SystemTime,
    url: &str,
) -> Result<Token, FetchError> {
    let invalid = |detail: String| FetchError::invalid(url, detail);
    let json: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body is not JSON ({e})")))?;
    let value = match lookup(&json, &mapping.token) {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Null) | None => {
            return Err(invalid(format!("no token at `{}`", mapping.token)));
        }
        Some(_) => {
            return Err(invalid(format!(
                "the value at `{}` is not a string",
                mapping.token
            )));
        }
    };
    check_token_text(value).map_err(invalid)?;
    let expires_at = expiry_from_json(&json, mapping, now).map_err(invalid)?;
    let expires_at = expires_at
        .or_else(|| jwt::expiry(value))
        .or_else(|| ttl.and_then(|t| now.checked_add(t)))
        .ok_or_else(|| {
            invalid(format!(
                "no expiry: nothing at `{}` or `{}`, the token is not a JWT with `exp`, and no `ttl` is configured",
                mapping.expires_in, mapping.expires_at
            ))
        })?;
    refuse_expired(expires_at, now, url)?;
    let token_type = lookup(&json, &mapping.token_type)
        .and_then(Value::as_str)
        .unwrap_or("Bearer");
    Ok(Token::new(
        value.into(),
        token_type.chars().take(32).collect(),
        now,
        expires_at,
    ))
}

/// `serde_json`'s `Value::pointer` without its allocation per segment (it unescapes each
/// into a new `String`, four lookups per refresh); pointers with escapes go to it.
fn lookup<'v>(json: &'v Value, pointer: &str) -> Option<&'v Value> {
    if pointer.contains('~') {
        return json.pointer(pointer);
    }
    if pointer.is_empty() {
        return Some(json);
    }
    pointer
        .strip_prefix('/')?
        .split('/')
        .try_fold(json, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => index(segment).and_then(|i| items.get(i)),
            _ => None,
        })
}

/// An array index as RFC 6901 writes it: digits, no sign, no leading zero.
fn index(segment: &str) -> Option<usize> {
    let digits = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = segment.len() > 1 && segment.starts_with('0');
    (digits && !leading_zero)
        .then(|| segment.parse().ok())
        .flatten()
}

/// A token that is already expired when it arrives is refused.
pub fn refuse_expired(
    expires_at: SystemTime,
    now: SystemTime,
    url: &str,
) -> Result<(), FetchError> {
    if expires_at <= now {
        return Err(FetchError::ExpiredOnArrival {
            url: url.to_owned(),
            expires_at: humantime::format_rfc3339_seconds(expires_at).to_string(),
        });
    }
    Ok(())
}

/// A token must be non-empty printable text of reasonable size: anything else would break the
/// file formats and the apps reading them.
pub fn check_token_text(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the token is empty".into());
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("the token contains control characters".into());
    }
    Ok(())
}

fn expiry_from_json(
    json: &Value,
    mapping: &ResponseMapping,
    now: SystemTime,
) -> Result<Option<SystemTime>, String> {
    if let Some(v) = lookup(json, &mapping.expires_in).filter(|v| !v.is_null()) {
        let secs = number(v)
            .ok_or_else(|| format!("`{}` is not a number of seconds", mapping.expires_in))?;
        if !(0.0..=1e10).contains(&secs) {
            return Err(format!("`{}` is out of range", mapping.expires_in));
        }
        return Ok(now.checked_add(Duration::from_secs_f64(secs)));
    }
    if let Some(v) = lookup(json, &mapping.expires_at).filter(|v| !v.is_null()) {
        if let Some(secs) = number(v).filter(|s| (0.0..=1e11).contains(s)) {
            return Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(secs)));
        }
        if let Some(at) = v
            .as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        {
            return Ok(Some(at));
        }
        return Err(format!(
            "`{}` is neither epoch seconds nor an RFC 3339 time",
            mapping.expires_at
        ));
    }
    Ok(None)
}

/// A JSON number, or a string holding one (some issuers quote their numbers).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    const URL: &str = "https://idp/token";

    #[test]
    fn lookup_agrees_with_serde_json_pointer() {
        let json: Value = serde_json::json!({
            "a": {"b": [10, {"c": "x"}], "": "empty", "0": "zero"},
            "list": ["p", "q"],
            "t~k": "tilde", "s/l": "slash", "+1": "plus"
        });
        let pointers = [
            "",
            "/",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/01",
            "/a/b/+1",
            "/a/b/-1",
            "/a/b/",
            "/a/",
            "/a/0",
            "/list/1",
            "/list/1/x",
            "/t~0k",
            "/s~1l",
            "/+1",
            "a",
            "/missing",
            "/a/b/1/c/d",
            "/list/18446744073709551616",
        ];
        for pointer in pointers {
            assert_eq!(lookup(&json, pointer), json.pointer(pointer), "{pointer:?}");
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn parse(body: &str, ttl: Option<Duration>) -> Result<Token, FetchError> {
        token_from_json(
            body.as_bytes(),
            &ResponseMapping::default(),
            ttl,
            now(),
            URL,
        )
    }

    #[test]
    fn expiry_precedence() {
        let t = parse(
            r#"{"access_token":"a","expires_in":60,"expires_at":1700009999}"#,
            None,
        )
        .unwrap();
        assert_eq!(t.expires_at, now() + Duration::from_secs(60));
        let t = parse(r#"{"access_token":"a","expires_in":"120"}"#, None).unwrap();
        assert_eq!(t.expires_at, now() + Duration::from_secs(120));
        let t = parse(r#"{"access_token":"a","expires_at":1700000100}"#, None).unwrap();
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_100)
        );
        let t = parse(
            r#"{"access_token":"a","expires_at":"2023-11-14T22:15:00Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_100)
        );
        let t = parse(r#"{"access_token":"a"}"#, Some(Duration::from_secs(900))).unwrap();
        assert_eq!(t.expires_at, now() + Duration::from_secs(900));
        assert_eq!(t.token_type, "Bearer");
    }

    #[test]
    fn jwt_exp_is_used_before_ttl() {
        use base64::Engine;
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1700000300}"#);
        let body = format!(r#"{{"access_token":"h.{claims}.s","token_type":"bearer"}}"#);
        let t = parse(&body, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_300)
        );
        assert_eq!(t.token_type, "bearer");
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let cases = [
            ("not json", "body is not JSON"),
            (
                r#"{"token":"a","expires_in":5}"#,
                "no token at `/access_token`",
            ),
            (r#"{"access_token":42,"expires_in":5}"#, "is not a string"),
            (
                r#"{"access_token":"","expires_in":5}"#,
                "the token is empty",
            ),
            (
                r#"{"access_token":"a\nb","expires_in":5}"#,
                "control characters",
            ),
            (
                r#"{"access_token":"a","expires_in":"soon"}"#,
                "not a number of seconds",
            ),
            (r#"{"access_token":"a","expires_in":-1}"#, "out of range"),
            (
                r#"{"access_token":"a","expires_at":"tomorrow"}"#,
                "neither epoch seconds",
            ),
            (r#"{"access_token":"a"}"#, "no expiry"),
        ];
        for (body, want) in cases {
            let err = parse(body, None).unwrap_err();
            assert_eq!(err.reason(), "invalid_response", "{body}");
            assert!(err.to_string().contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn expired_on_arrival() {
        let err = parse(r#"{"access_token":"a","expires_at":1600000000}"#, None).unwrap_err();
        assert_eq!(err.reason(), "expired_on_arrival");
        let err = parse(r#"{"access_token":"a","expires_in":0}"#, None).unwrap_err();
        assert_eq!(err.reason(), "expired_on_arrival");
    }

    #[test]
    fn text_bodies() {
        let text = ResponseMapping {
            format: ResponseFormat::Text,
            ..Default::default()
        };
        let t = token_from_body(
            b"  opaque-token\n",
            &text,
            Some(Duration::from_secs(60)),
            now(),
            URL,
        )
        .unwrap();
        assert_eq!(
            (t.secret(), t.expires_at),
            ("opaque-token", now() + Duration::from_secs(60))
        );
        assert!(
            token_from_body(b"opaque", &text, None, now(), URL)
                .unwrap_err()
                .to_string()
                .contains("no expiry")
        );
        assert!(
            token_from_body(b"  \n", &text, Some(Duration::from_secs(1)), now(), URL)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            token_from_body(
                &[0xff, 0xfe],
                &text,
                Some(Duration::from_secs(1)),
                now(),
                URL
            )
            .unwrap_err()
            .to_string()
            .contains("UTF-8")
        );
    }

    #[test]
    fn custom_pointers() {
        let mapping = ResponseMapping {
            token: "/response".into(),
            ..Default::default()
        };
        let t = token_from_json(
            br#"{"response":"tok","message":null}"#,
            &mapping,
            Some(Duration::from_secs(9)),
            now(),
            URL,
        )
        .unwrap();
        assert_eq!(t.secret(), "tok");
        assert_eq!(
            ResponseMapping {
                token: "response".into(),
                ..Default::default()
            }
            .check()
            .len(),
            1
        );
    }
}
