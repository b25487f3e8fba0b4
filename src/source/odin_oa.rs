//! `kind: odin_oa` — an APS token from Odin / Parallels Operations Automation through the
//! OpenAPI call `pem.APS.getAccountToken` (XML-RPC, as its OpenAPI reference describes).
//!
//! The answer is always a plain struct: `status` 0 with `result.aps_token` and
//! `result.controller_uri`, or a non-zero `status` with `error_message`, `module_id` and
//! `extype_id`. The token is opaque and lives 15–20 minutes, so `ttl` (default 15 m) drives
//! refresh.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::response::check_token_text;
use super::xmlrpc::{self, Value};
use super::{BuildContext, BuildError, FetchError, Now, Problems, SingleTokenSource, Source, SourceKind};
use crate::credential::CredentialRef;
use crate::http;
use crate::redact::{scrub, url_for_display};
use crate::token::Token;

const METHOD: &str = "pem.APS.getAccountToken";
/// The OpenAPI port of an Operations Automation management node.
const DEFAULT_PORT: u16 = 8440;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdinOaConfig {
    /// The management node's OpenAPI endpoint, e.g. `https://mn.example.com:8440/RPC2`.
    /// Without a port, 8440; without a path, `/RPC2`.
    pub url: String,
    /// HTTP Basic user, if the OpenAPI requires authentication.
    pub username: Option<CredentialRef>,
    pub password: Option<CredentialRef>,
    /// Account whose token is wanted (1 = the provider).
    pub account_id: i64,
    /// Subscription context (omitted when not set; 0 means none).
    pub subscription_id: Option<i64>,
    /// Token lifetime to assume (the token carries none).
    #[serde(default = "default_ttl", with = "crate::de::duration")]
    pub ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

impl OdinOaConfig {
    /// The endpoint with the documented defaults filled in.
    fn endpoint(&self) -> Result<url::Url, String> {
        let mut url = http::http_url(&self.url).map_err(|e| e.to_string())?;
        if url.port().is_none()
            && !self
                .url
                .contains(&format!(":{}", url.port_or_known_default().unwrap_or(0)))
        {
            let _ = url.set_port(Some(DEFAULT_PORT));
        }
        if url.path() == "/" && !self.url.trim_end().ends_with('/') {
            url.set_path("/RPC2");
        }
        Ok(url)
    }
}

impl SourceKind for OdinOaConfig {
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        Some(("url", &self.url))
    }

    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if let Err(message) = self.endpoint() {
            problems.push(("url".into(), message));
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push((
                "password".into(),
                "username and password go together".into(),
            ));
        }
        if self.account_id < 1 {
            problems.push((
                "account_id".into(),
                "must be 1 (provider) or a customer account id".into(),
            ));
        }
        if self.subscription_id.is_some_and(|s| s < 0) {
            problems.push(("subscription_id".into(), "must not be negative".into()));
        }
        if self.ttl < Duration::from_secs(10) {
            problems.push((
                "ttl".into(),
                "must be at least 10s (tokens live 15–20 minutes)".into(),
            ));
        }
        problems
    }

    fn inline_secrets(&self) -> Vec<String> {
        match &self.password {
            Some(p) if p.is_inline() => vec!["password".into()],
            _ => vec![],
        }
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let url = self
            .endpoint()
            .map_err(|e| BuildError::Invalid(format!("url: {e}")))?;
        Ok(Box::new(OdinOaSource {
            client: ctx.clients.get(ctx.http)?,
            display_url: url_for_display(&url),
            url,
            timeout: ctx.http.timeout,
            config: self.clone(),
        }))
    }
}

pub struct OdinOaSource {
    client: http::Client,
    url: url::Url,
    display_url: String,
    timeout: Duration,
    config: OdinOaConfig,
}

impl SingleTokenSource for OdinOaSource {
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        let c = &self.config;
        let mut args = vec![("account_id".to_owned(), Value::Int(c.account_id))];
        if let Some(sub) = c.subscription_id {
            args.push(("subscription_id".to_owned(), Value::Int(sub)));
        }
        let body = xmlrpc::method_call(METHOD, &[Value::Struct(args.into_iter().collect())]);
        let mut request = self
            .client
            .post(&self.url)
            .header(::http::header::CONTENT_TYPE, "text/xml")
            .body(body);
        let mut secrets = Vec::new();
        if let (Some(user), Some(password)) = (&c.username, &c.password) {
            let (user, password) = (user.load()?, password.load()?);
            let auth = http::basic_auth(user.expose_secret(), password.expose_secret());
            request = request.header(::http::header::AUTHORIZATION, auth);
            secrets = vec![user, password];
        }
        let reply = http::send(request, &self.display_url, self.timeout).await?;
        let secrets: Vec<&str> = secrets.iter().map(|s| s.expose_secret()).collect();
        let invalid = |detail: String| FetchError::invalid(&self.display_url, detail);
        let reply = reply.success(&self.display_url, &secrets)?;
        let text =
            String::from_utf8(reply.body).map_err(|_| invalid("body is not UTF-8".into()))?;
        let answer = match xmlrpc::parse_response(&text).map_err(invalid)? {
            Ok(v) => v,
            Err(fault) => {
                return Err(FetchError::Rejected {
                    url: self.display_url.clone(),
                    detail: scrub(
                        &format!("fault {}: {}", fault.code, fault.message),
                        &secrets,
                    ),
                });
            }
        };
        let status = answer
            .member("status")
            .and_then(Value::as_int)
            .ok_or_else(|| invalid("no integer `status`".into()))?;
        if status != 0 {
            let field = |name: &str| {
                answer.member(name).map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_int().map(|i| i.to_string()))
                        .unwrap_or_default()
                })
            };
            let detail = format!(
                "status {status}: {} (module_id {}, extype_id {})",
                field("error_message").unwrap_or_default(),
                field("module_id").unwrap_or_default(),
                field("extype_id").unwrap_or_default()
            );
            return Err(FetchError::Rejected {
                url: self.display_url.clone(),
                detail: scrub(&detail, &secrets),
            });
        }
        let result = answer
            .member("result")
            .ok_or_else(|| invalid("status 0 without a `result`".into()))?;
        let value = result
            .member("aps_token")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `result.aps_token`".into()))?;
        check_token_text(value).map_err(invalid)?;
        let issued = now();
        let expires = issued.checked_add(c.ttl).unwrap_or(issued); // ttl ≤ 1 year: never
        let mut token = Token::new(value.into(), "APS-Token".into(), issued, expires);
        if let Some(uri) = result.member("controller_uri").and_then(Value::as_str) {
            token
                .metadata
                .insert("controller_uri".into(), uri.chars().take(512).collect());
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> OdinOaConfig {
        OdinOaConfig {
            url: url.into(),
            username: None,
            password: None,
            account_id: 1,
            subscription_id: None,
            ttl: default_ttl(),
        }
    }

    #[test]
    fn endpoint_defaults() {
        assert_eq!(
            config("https://mn.example.com")
                .endpoint()
                .unwrap()
                .as_str(),
            "https://mn.example.com:8440/RPC2"
        );
        assert_eq!(
            config("http://mn:8080/").endpoint().unwrap().as_str(),
            "http://mn:8080/"
        );
        assert_eq!(
            config("https://mn:443/RPC2").endpoint().unwrap().as_str(),
            "https://mn/RPC2",
            "an explicit default port is kept"
        );
        assert_eq!(
            config("http://mn:9000").endpoint().unwrap().as_str(),
            "http://mn:9000/RPC2"
        );
        assert!(config("ftp://mn").endpoint().is_err());
    }
}
