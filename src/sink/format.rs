//! How a token is laid out in a file, and how it is read back for a warm restart.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::token::Token;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The token bytes only, no trailing newline (like a projected service-account token).
    #[default]
    Raw,
    /// `{"token", "token_type", "expires_at", "issued_at", "source", …metadata}`.
    Json,
    /// `NAME='token'` and `NAME_EXPIRES_AT='…'`, single-quoted so `source`/`.` in a shell and
    /// dotenv loaders read it back verbatim.
    Env,
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Format {
    pub fn render(self, token: &Token, source: &str, env_name: &str) -> Vec<u8> {
        match self {
            Format::Raw => token.secret().as_bytes().to_vec(),
            Format::Json => {
                let mut doc = Map::new();
                for (k, v) in &token.metadata {
                    doc.insert(k.clone(), Value::String(v.clone()));
                }
                doc.insert("token".into(), token.secret().into());
                doc.insert("token_type".into(), token.token_type.clone().into());
                doc.insert("expires_at".into(), rfc3339(token.expires_at).into());
                doc.insert("issued_at".into(), rfc3339(token.issued_at).into());
                doc.insert("source".into(), source.into());
                let mut out = serde_json::to_vec_pretty(&Value::Object(doc)).unwrap_or_default();
                out.push(b'\n');
                out
            }
            Format::Env => format!(
                "{env_name}={}\n{env_name}_EXPIRES_AT={}\n",
                shell_quote(token.secret()),
                shell_quote(&rfc3339(token.expires_at))
            )
            .into_bytes(),
        }
    }

    /// The token value stored in `content`, if it is in this format.
    pub fn read_token(self, content: &[u8], env_name: &str) -> Option<String> {
        let text = std::str::from_utf8(content).ok()?;
        match self {
            Format::Raw => Some(text.to_owned()),
            Format::Json => serde_json::from_str::<Value>(text)
                .ok()?
                .get("token")?
                .as_str()
                .map(str::to_owned),
            Format::Env => {
                let line = text
                    .lines()
                    .find_map(|l| l.strip_prefix(env_name)?.strip_prefix('='))?;
                shell_unquote(line)
            }
        }
    }
}

/// `'…'` with each `'` written as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shell_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace(r"'\''", "'"))
}

/// Default variable name for the `env` format: `orders-api` → `ORDERS_API_TOKEN`.
pub fn default_env_name(source: &str) -> String {
    let mut name: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name + "_TOKEN"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn token(value: &str) -> Token {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut t = Token::new(
            value.into(),
            "Bearer".into(),
            at,
            at + Duration::from_secs(60),
        );
        t.metadata
            .insert("controller_uri".into(), "https://mn:6308/".into());
        t
    }

    #[test]
    fn raw_is_exact_bytes() {
        assert_eq!(Format::Raw.render(&token("abc"), "s", "S"), b"abc");
        assert_eq!(Format::Raw.read_token(b"abc", "S").unwrap(), "abc");
    }

    #[test]
    fn json_has_every_field_and_round_trips() {
        let out = Format::Json.render(&token("abc"), "orders", "X");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["token"], "abc");
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["issued_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["expires_at"], "2023-11-14T22:14:20Z");
        assert_eq!(v["source"], "orders");
        assert_eq!(v["controller_uri"], "https://mn:6308/");
        assert_eq!(Format::Json.read_token(&out, "X").unwrap(), "abc");
    }

    #[test]
    fn env_quotes_safely_and_round_trips() {
        let tricky = "a'b $(rm -rf) `x` \"q\"";
        let out = Format::Env.render(&token(tricky), "s", "ORDERS_TOKEN");
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"ORDERS_TOKEN='a'\''b $(rm -rf) `x` "q"'"#
        );
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "ORDERS_TOKEN_EXPIRES_AT='2023-11-14T22:14:20Z'"
        );
        assert_eq!(
            Format::Env.read_token(&out, "ORDERS_TOKEN").unwrap(),
            tricky
        );
        let sh = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{text}\nprintf %s \"$ORDERS_TOKEN\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(sh.stdout).unwrap(),
            tricky,
            "a shell reads back the exact token"
        );
    }

    #[test]
    fn default_env_names() {
        assert_eq!(default_env_name("orders-api"), "ORDERS_API_TOKEN");
        assert_eq!(default_env_name("9lives.x"), "_9LIVES_X_TOKEN");
    }
}
