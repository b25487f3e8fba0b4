//! `kind: http` — any token endpoint, described by templates: method, URL, headers and body
//! are rendered from named credentials (`{{ secret("name") }}`, `{{ basic("id", "pw") }}`),
//! and the answer is read as JSON (pointers) or as plain text.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::response::{self, ResponseMapping};
use super::{BuildContext, BuildError, FetchError, Now, Problems, SingleTokenSource, Source, SourceKind};
use crate::credential::CredentialRef;
use crate::http::{self, HttpError, UrlError};
use crate::redact::url_for_display;
use crate::template::Templates;
use crate::token::Token;

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template.
    pub url: String,
    /// Header templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body template (sent as is; set `Content-Type` in `headers`).
    pub body: Option<String>,
    /// Credentials the templates may use, by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, CredentialRef>,
    #[serde(default)]
    pub response: ResponseMapping,
    /// Lifetime to assume when the answer and the token carry no expiry.
    #[serde(default, with = "crate::de::duration")]
    pub ttl: Option<Duration>,
}

fn default_method() -> String {
    "POST".into()
}

impl HttpSourceConfig {
    fn secret_names(&self) -> Vec<&str> {
        self.secrets.keys().map(String::as_str).collect()
    }

    /// Every template with its field name.
    fn templates(&self) -> Vec<(String, &str)> {
        let mut all = vec![("url".to_owned(), self.url.as_str())];
        all.extend(
            self.headers
                .iter()
                .map(|(k, v)| (format!("headers.{k}"), v.as_str())),
        );
        if let Some(body) = &self.body {
            all.push(("body".into(), body));
        }
        all
    }

    /// The URL with every secret shown as `<secret>`, without query: what logs may show.
    fn display_url(&self, templates: &Templates) -> Result<String, String> {
        let masked: BTreeMap<String, String> = self
            .secrets
            .keys()
            .map(|k| (k.clone(), "secret".to_owned()))
            .collect();
        let rendered = templates
            .render("url", &self.url, &masked, &BTreeMap::new())
            .map_err(|e| e.message)?;
        let url = http::http_url(&rendered).map_err(|e| match e {
            UrlError::NotAUrl(e) => format!("not a URL once rendered: {e}"),
            scheme => scheme.to_string(),
        })?;
        Ok(url_for_display(&url))
    }
}

impl SourceKind for HttpSourceConfig {
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        Some(("url", &self.url))
    }

    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if !METHODS.contains(&self.method.as_str()) {
            problems.push((
                "method".into(),
                format!("`{}` is not one of {}", self.method, METHODS.join(", ")),
            ));
        }
        let templates = Templates::new();
        for (field, source) in self.templates() {
            if let Err(e) = templates.check(&field, source, &self.secret_names(), &[]) {
                problems.push((field, e.message));
            }
        }
        match self.display_url(&templates) {
            Ok(_) => {}
            Err(message) => problems.push(("url".into(), message)),
        }
        for name in self.headers.keys() {
            if ::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push((
                    format!("headers.{name}"),
                    "not a valid HTTP header name".into(),
                ));
            }
        }
        if self.body.is_some() && self.method == "GET" {
            problems.push(("body".into(), "a GET request has no body".into()));
        }
        for (field, message) in self.response.check() {
            problems.push((format!("response.{field}"), message));
        }
        problems
    }

    fn inline_secrets(&self) -> Vec<String> {
        self.secrets
            .iter()
            .filter(|(_, r)| r.is_inline())
            .map(|(k, _)| format!("secrets.{k}"))
            .collect()
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let templates = Templates::new();
        let display_url = self
            .display_url(&templates)
            .map_err(|e| BuildError::Invalid(format!("url: {e}")))?;
        let method = ::http::Method::from_bytes(self.method.as_bytes())
            .map_err(|e| BuildError::Invalid(format!("method: {e}")))?;
        Ok(Box::new(HttpSource {
            client: ctx.clients.get(ctx.http)?,
            templates,
            display_url,
            method,
            timeout: ctx.http.timeout,
            config: self.clone(),
        }))
    }
}

pub struct HttpSource {
    client: http::Client,
    templates: Templates,
    display_url: String,
    method: ::http::Method,
    timeout: Duration,
    config: HttpSourceConfig,
}

impl SingleTokenSource for HttpSource {
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        let c = &self.config;
        let mut secrets = BTreeMap::new();
        for (name, reference) in &c.secrets {
            secrets.insert(name.clone(), reference.load()?.expose_secret().to_owned());
        }
        let render = |field: &str, source: &str| {
            self.templates
                .render(field, source, &secrets, &BTreeMap::new())
                .map_err(|e| HttpError::Request {
                    url: self.display_url.clone(),
                    detail: e.to_string(),
                })
        };
        let url = render("url", &c.url)?;
        let mut request = self.client.request(self.method.clone(), url.as_str());
        for (name, source) in &c.headers {
            let mut value = ::http::header::HeaderValue::from_str(&render(
                &format!("headers.{name}"),
                source,
            )?)
            .map_err(|_| HttpError::Request {
                url: self.display_url.clone(),
                detail: format!("header `{name}` renders to an invalid value"),
            })?;
            value.set_sensitive(true);
            request = request.header(name.as_str(), value);
        }
        if let Some(body) = &c.body {
            request = request.body(render("body", body)?);
        }
        let reply = http::send(request, &self.display_url, self.timeout).await?;
        let values: Vec<&str> = secrets.values().map(String::as_str).collect();
        let reply = reply.success(&self.display_url, &values)?;
        response::token_from_body(&reply.body, &c.response, c.ttl, now(), &self.display_url)
    }
}
