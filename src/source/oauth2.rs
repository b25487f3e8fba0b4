//! `kind: oauth2` — the OAuth2 client-credentials grant (RFC 6749 §4.4) and the vendor APIs
//! that are variants of it (Apinizer, AppViewX), selected by configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::response::{self, ResponseMapping};
use super::{BuildContext, BuildError, FetchError, Now, Problems, SingleTokenSource, Source, SourceKind};
use crate::credential::{CredentialError, CredentialRef, names_a_secret};
use crate::http;
use crate::redact::url_for_display;
use crate::token::Token;

/// Form/JSON parameters the agent sets itself; `params` may not override them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "scope",
    "audience",
    "resource",
    "client_id",
    "client_secret",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint (http or https).
    pub token_url: String,
    /// Client id: a literal string, `{ file: … }` or `{ env: … }`.
    pub client_id: Option<CredentialRef>,
    /// Client secret: `{ file: … }` or `{ env: … }` (literal only with `allow_inline_secrets`).
    pub client_secret: Option<CredentialRef>,
    /// How the client authenticates.
    #[serde(default)]
    pub auth: ClientAuth,
    #[serde(default = "default_grant_type")]
    pub grant_type: String,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// Extra body parameters, sent alongside (never instead of) the ones above: literal, or
    /// `{ file: … }` / `{ env: … }` for credentials (read on every fetch).
    #[serde(default)]
    pub params: BTreeMap<String, CredentialRef>,
    /// Extra request headers, literal or `{ file: … }` / `{ env: … }`.
    #[serde(default)]
    pub headers: BTreeMap<String, CredentialRef>,
    /// Request body encoding.
    #[serde(default)]
    pub body: BodyEncoding,
    /// Where the token and its expiry are in the response.
    #[serde(default)]
    pub response: ResponseMapping,
    /// Lifetime to assume when the response and the token carry no expiry.
    #[serde(default, with = "crate::de::duration")]
    pub ttl: Option<Duration>,
}

fn default_grant_type() -> String {
    "client_credentials".into()
}

/// Client authentication method.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_secret_basic`: `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    #[default]
    Basic,
    /// HTTP Basic without the RFC 6749 form-encoding of id and secret, as AppViewX expects.
    BasicRaw,
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post,
    /// No client authentication (credentials go in `params`/`headers`, or none are needed).
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A flat JSON object with the same parameters.
    Json,
}

impl SourceKind for OAuth2Config {
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        Some(("token_url", &self.token_url))
    }

    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if let Err(e) = http::http_url(&self.token_url) {
            problems.push(("token_url".into(), e.to_string()));
        }
        if self.auth != ClientAuth::None {
            if self.client_id.is_none() {
                problems.push((
                    "client_id".into(),
                    format!("required with `auth: {}`", self.auth.name()),
                ));
            }
            if self.client_secret.is_none() {
                problems.push((
                    "client_secret".into(),
                    format!("required with `auth: {}`", self.auth.name()),
                ));
            }
        }
        for key in self
            .params
            .keys()
            .filter(|k| RESERVED_PARAMS.contains(&k.as_str()))
        {
            problems.push((
                format!("params.{key}"),
                format!("`{key}` is set by the agent; use the source's own `{key}`/`auth` fields"),
            ));
        }
        for (name, value) in &self.headers {
            if let CredentialRef::Inline(text) = value
                && ::http::header::HeaderValue::from_str(text).is_err()
            {
                problems.push((
                    format!("headers.{name}"),
                    "not a valid HTTP header value (control characters?)".into(),
                ));
            }
            if ::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push((
                    format!("headers.{name}"),
                    "not a valid HTTP header name".into(),
                ));
            } else if name.eq_ignore_ascii_case("authorization") && self.auth != ClientAuth::None {
                problems.push((
                    format!("headers.{name}"),
                    "conflicts with client authentication; set `auth: none`".into(),
                ));
            }
        }
        for (field, message) in self.response.check() {
            problems.push((format!("response.{field}"), message));
        }
        if self.ttl.is_some_and(|t| t.is_zero()) {
            problems.push(("ttl".into(), "must be greater than zero".into()));
        }
        problems
    }

    /// The client secret written in the YAML, and literal headers or params whose name says
    /// they carry a credential (`headers.Authorization`, `params.client_assertion`).
    fn inline_secrets(&self) -> Vec<String> {
        let secret = self.client_secret.iter().filter(|s| s.is_inline());
        let mut fields: Vec<String> = secret.map(|_| "client_secret".into()).collect();
        for (kind, map) in [("headers", &self.headers), ("params", &self.params)] {
            let literal = map.iter().filter(|(name, v)| v.is_inline() && names_a_secret(name));
            fields.extend(literal.map(|(name, _)| format!("{kind}.{name}")));
        }
        fields
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let url = http::http_url(&self.token_url)
            .map_err(|e| BuildError::Invalid(format!("token_url: {e}")))?;
        Ok(Box::new(OAuth2Source {
            client: ctx.clients.get(ctx.http)?,
            display_url: url_for_display(&url),
            url,
            timeout: ctx.http.timeout,
            config: self.clone(),
        }))
    }
}

impl ClientAuth {
    fn name(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::BasicRaw => "basic_raw",
            ClientAuth::Post => "post",
            ClientAuth::None => "none",
        }
    }
}

/// A configured client-credentials source.
pub struct OAuth2Source {
    client: http::Client,
    url: url::Url,
    display_url: String,
    timeout: Duration,
    config: OAuth2Config,
}

impl SingleTokenSource for OAuth2Source {
    /// Requests one token. No retries here: the scheduler owns timing.
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        let c = &self.config;
        let client_id = c.client_id.as_ref().map(CredentialRef::load).transpose()?;
        let client_secret = c.client_secret.as_ref().map(CredentialRef::load).transpose()?;

        let extra_params = load_all(&c.params)?;
        let extra_headers = load_all(&c.headers)?;
        let mut params: Vec<(&str, &str)> = vec![("grant_type", c.grant_type.as_str())];
        for (key, value) in [
            ("scope", &c.scope),
            ("audience", &c.audience),
            ("resource", &c.resource),
        ] {
            if let Some(v) = value {
                params.push((key, v.as_str()));
            }
        }
        params.extend(extra_params.iter().map(|(k, v)| (*k, v.expose_secret())));
        if c.auth == ClientAuth::Post
            && let (Some(id), Some(secret)) = (&client_id, &client_secret)
        {
            params.push(("client_id", id.expose_secret()));
            params.push(("client_secret", secret.expose_secret()));
        }

        let mut request = self
            .client
            .post(&self.url)
            .header(::http::header::ACCEPT, "application/json");
        request = match c.body {
            BodyEncoding::Form => request.form(&params),
            BodyEncoding::Json => request.json(&params.iter().cloned().collect::<BTreeMap<_, _>>()),
        };
        if let (Some(id), Some(secret)) = (&client_id, &client_secret)
            && let Some(header) = basic_header(c.auth, id, secret)
        {
            request = request.header(::http::header::AUTHORIZATION, header);
        }
        for (name, value) in &extra_headers {
            let mut value = ::http::header::HeaderValue::from_str(value.expose_secret())
                .map_err(|_| CredentialError::Unusable {
                    field: format!("headers.{name}"),
                    why: "not a valid HTTP header value",
                })?;
            value.set_sensitive(true);
            request = request.header(*name, value);
        }

        let reply = http::send(request, &self.display_url, self.timeout).await?;
        // Everything that may be a credential is scrubbed from what the issuer answers.
        let extra = extra_params.iter().chain(&extra_headers).map(|(_, v)| v);
        let secrets: Vec<&str> = [&client_id, &client_secret]
            .into_iter()
            .flatten()
            .chain(extra)
            .map(|s| s.expose_secret())
            .collect();
        let reply = reply.success(&self.display_url, &secrets)?;
        response::token_from_body(&reply.body, &c.response, c.ttl, now(), &self.display_url)
    }
}

/// The current value of each extra header or parameter (files and variables are read now).
fn load_all(
    map: &BTreeMap<String, CredentialRef>,
) -> Result<Vec<(&str, SecretString)>, CredentialError> {
    map.iter()
        .map(|(name, value)| Ok((name.as_str(), value.load()?)))
        .collect()
}

/// The `Authorization` header value for basic methods; `None` for the others.
fn basic_header(
    auth: ClientAuth,
    id: &SecretString,
    secret: &SecretString,
) -> Option<::http::header::HeaderValue> {
    let (id, secret) = (id.expose_secret(), secret.expose_secret());
    match auth {
        ClientAuth::Basic => Some(http::basic_auth(&form_encode(id), &form_encode(secret))),
        ClientAuth::BasicRaw => Some(http::basic_auth(id, secret)),
        ClientAuth::Post | ClientAuth::None => None,
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1).
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn basic_header_encodes_per_rfc_6749_unless_raw() {
        let id = SecretString::from("my id");
        let secret = SecretString::from("p@ss:w%rd");
        let rfc = basic_header(ClientAuth::Basic, &id, &secret).unwrap();
        assert_eq!(
            rfc.to_str().unwrap(),
            format!("Basic {}", STANDARD.encode("my+id:p%40ss%3Aw%25rd"))
        );
        assert!(rfc.is_sensitive());
        let raw = basic_header(ClientAuth::BasicRaw, &id, &secret).unwrap();
        assert_eq!(
            raw.to_str().unwrap(),
            format!("Basic {}", STANDARD.encode("my id:p@ss:w%rd"))
        );
        assert!(basic_header(ClientAuth::Post, &id, &secret).is_none());
    }
}
