//! `api_portal:` sink — publishes each token into webMethods API-Portal as an external access
//! token (seed 004): `POST /abs/apirepository/accesstokens/external` the first time (the answer
//! is the bare token id), `PUT …/external/<id>` on renewal (404: the portal lost it, create it
//! again), `DELETE …/external/<id>` on removal or `token-agent revoke`.
//!
//! The id must survive restarts, or each restart would create a duplicate entry: it is kept in
//! a small state file, `<state_dir>/api-portal/<source>/<instance>-<portal>.json`, written
//! atomically like the token files. Only ids found there are ever deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::atomic::{self, Ownership};
use crate::config::HttpSettings;
use crate::redact::url_for_display;
use crate::secret::SecretRef;
use crate::source::client::{self, HttpClients};
use crate::template::Templates;
use crate::token::Token;

const PATH: &str = "/abs/apirepository/accesstokens/external";
/// The keys API-Portal requires in every property list.
pub const MANDATORY_KEYS: [&str; 2] = ["applicationName", "Access Token Type"];
/// What property templates may use besides `secret(…)`.
pub const TEMPLATE_VALUES: [&str; 6] = [
    "token",
    "expires_at",
    "issued_at",
    "token_type",
    "source",
    "tenant",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPortalConfig {
    /// `http(s)://<host>:<port>` of API-Portal.
    pub url: String,
    /// A user of the API Consumption Approvers group.
    pub username: SecretRef,
    pub password: SecretRef,
    /// The portal user id the token belongs to (from API-Portal's e-mail).
    pub user: String,
    /// Key/value templates sent as `propertyList`.
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Property {
    pub key: String,
    pub value: String,
}

impl ApiPortalConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => problems.push((
                "url".into(),
                format!("`{}` is not an http(s) URL", self.url),
            )),
        }
        if self.user.trim().is_empty() {
            problems.push(("user".into(), "must be the portal user id".into()));
        }
        for key in MANDATORY_KEYS {
            if !self.properties.iter().any(|p| p.key == key) {
                problems.push((
                    "properties".into(),
                    format!("API-Portal requires a `{key}` property"),
                ));
            }
        }
        let templates = Templates::new();
        for (i, p) in self.properties.iter().enumerate() {
            if let Err(e) = templates.check("value", &p.value, &[], &TEMPLATE_VALUES) {
                problems.push((format!("properties[{i}].value"), e.message));
            }
        }
        problems
    }

    pub fn inline_secrets(&self) -> bool {
        self.password.is_inline()
    }

    pub fn build(
        &self,
        source: &str,
        state_dir: &Path,
        http: &HttpSettings,
        clients: &HttpClients,
    ) -> Result<ApiPortalSink, String> {
        let base = url::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        let client = clients.get(http).map_err(|e| e.to_string())?;
        Ok(ApiPortalSink {
            inner: Arc::new(Inner {
                client,
                shown: url_for_display(&base).trim_end_matches('/').to_owned(),
                base: self.url.trim_end_matches('/').to_owned(),
                timeout: http.timeout,
                config: self.clone(),
                source: source.to_owned(),
                state_dir: state_dir.to_owned(),
                templates: Templates::new(),
            }),
        })
    }
}

/// Why the portal could not be told. Never contains the token or the credentials.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error(transparent)]
    Request(#[from] crate::source::FetchError),
    #[error("cannot read the portal credentials: {0}")]
    Credential(#[from] crate::secret::SecretError),
    #[error("{0}")]
    Template(String),
    #[error("{url} answered with an unusable token id")]
    BadId { url: String },
    #[error("state file {path}: {detail}")]
    State { path: PathBuf, detail: String },
}

impl PortalError {
    pub fn reason(&self) -> &'static str {
        match self {
            PortalError::Request(e) => e.reason(),
            PortalError::Credential(_) => "credential_unreadable",
            PortalError::Template(_) => "template",
            PortalError::BadId { .. } => "invalid_response",
            PortalError::State { .. } => "state",
        }
    }
}

/// What the state file remembers: which portal, which user, which id.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub source: String,
    pub instance: String,
    pub portal: String,
    pub user: String,
    pub token_id: String,
}

/// Every recorded id under `state_dir`, with its file.
pub fn recorded(state_dir: &Path) -> Vec<(PathBuf, State)> {
    let Ok(sources) = std::fs::read_dir(state_dir.join("api-portal")) else {
        return Vec::new();
    };
    sources
        .flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| {
            Some((
                f.path(),
                serde_json::from_slice::<State>(&std::fs::read(f.path()).ok()?).ok()?,
            ))
        })
        .collect()
}

#[derive(Clone)]
pub struct ApiPortalSink {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base: String,
    shown: String,
    timeout: Duration,
    config: ApiPortalConfig,
    source: String,
    state_dir: PathBuf,
    templates: Templates,
}

impl std::fmt::Debug for ApiPortalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPortalSink")
            .field("portal", &self.inner.shown)
            .field("source", &self.inner.source)
            .finish()
    }
}

/// A token id goes into a URL path: only what API-Portal ids are made of.
fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ApiPortalSink {
    pub fn label(&self) -> String {
        format!("api_portal:{}", self.inner.shown)
    }

    /// `<state_dir>/api-portal/<source>/<instance>-<portal hash>.json`
    fn state_path(&self, instance: &str) -> PathBuf {
        let i = &self.inner;
        let portal =
            &crate::token::fingerprint(format!("{}|{}", i.shown, i.config.user).as_bytes())[..12];
        let name = if instance.is_empty() {
            "_".to_owned()
        } else {
            instance.to_owned()
        };
        i.state_dir
            .join("api-portal")
            .join(&i.source)
            .join(format!("{name}-{portal}.json"))
    }

    fn load_id(&self, instance: &str) -> Option<String> {
        let state: State =
            serde_json::from_slice(&std::fs::read(self.state_path(instance)).ok()?).ok()?;
        (state.source == self.inner.source && usable_id(&state.token_id)).then_some(state.token_id)
    }

    fn save_id(&self, instance: &str, id: &str) -> Result<(), PortalError> {
        let path = self.state_path(instance);
        let fail = |detail: String| PortalError::State {
            path: path.clone(),
            detail,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let state = State {
            source: self.inner.source.clone(),
            instance: instance.to_owned(),
            portal: self.inner.shown.clone(),
            user: self.inner.config.user.clone(),
            token_id: id.to_owned(),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| fail(e.to_string()))?;
        atomic::write(
            &path,
            &bytes,
            Ownership {
                mode: 0o600,
                uid: None,
                gid: None,
            },
        )
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
    ) -> Result<(reqwest::RequestBuilder, Vec<String>), PortalError> {
        let c = &self.inner.config;
        let (user, password) = (c.username.load()?, c.password.load()?);
        let pair = STANDARD.encode(format!(
            "{}:{}",
            user.expose_secret(),
            password.expose_secret()
        ));
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Basic {pair}")).map_err(|_| {
                PortalError::Template(
                    "the portal username or password is not valid in a header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let builder = self
            .inner
            .client
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, auth);
        Ok((
            builder,
            vec![
                user.expose_secret().to_owned(),
                password.expose_secret().to_owned(),
            ],
        ))
    }

    fn body(&self, token: &Token, instance: &str) -> Result<serde_json::Value, PortalError> {
        let i = &self.inner;
        let values: BTreeMap<String, String> = [
            ("token", token.secret().to_owned()),
            (
                "expires_at",
                humantime::format_rfc3339_seconds(token.expires_at).to_string(),
            ),
            (
                "issued_at",
                humantime::format_rfc3339_seconds(token.issued_at).to_string(),
            ),
            ("token_type", token.token_type.clone()),
            ("source", i.source.clone()),
            ("tenant", instance.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut list = Vec::with_capacity(i.config.properties.len());
        for p in &i.config.properties {
            let value = i
                .templates
                .render(
                    &format!("properties.{}", p.key),
                    &p.value,
                    &BTreeMap::new(),
                    &values,
                )
                .map_err(|e| PortalError::Template(e.to_string()))?;
            list.push(json!({ "key": p.key, "value": value }));
        }
        Ok(json!({ "user": i.config.user, "propertyList": list }))
    }

    /// Creates or renews the portal entry for `instance`.
    pub async fn write(&self, token: &Token, instance: &str) -> Result<(), PortalError> {
        let body = self.body(token, instance)?;
        let shown = format!("{}{PATH}", self.inner.shown);
        if let Some(id) = self.load_id(instance) {
            let (request, mut secrets) = self.request(
                reqwest::Method::PUT,
                format!("{}{PATH}/{id}", self.inner.base),
            )?;
            secrets.push(token.secret().to_owned());
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let reply = client::send(request.json(&body), &shown, self.inner.timeout).await?;
            if reply.status != 404 {
                reply.success(&shown, &refs)?;
                return Ok(());
            }
            tracing::info!(source = %self.inner.source, portal = %self.inner.shown, "the portal no longer knows the token id; creating the entry again");
        }
        let (request, mut secrets) =
            self.request(reqwest::Method::POST, format!("{}{PATH}", self.inner.base))?;
        secrets.push(token.secret().to_owned());
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let reply = client::send(request.json(&body), &shown, self.inner.timeout)
            .await?
            .success(&shown, &refs)?;
        let id = String::from_utf8_lossy(&reply.body)
            .trim()
            .trim_matches('"')
            .to_owned();
        if !usable_id(&id) {
            return Err(PortalError::BadId { url: shown });
        }
        self.save_id(instance, &id)
    }

    /// Deletes the entry this agent created for `instance`, and forgets its id.
    pub async fn remove(&self, instance: &str) -> Result<(), PortalError> {
        match self.load_id(instance) {
            Some(id) => self.delete_recorded(&self.state_path(instance), &id).await,
            None => Ok(()),
        }
    }

    /// The portal this sink talks to, as shown in logs and state files.
    pub fn portal(&self) -> &str {
        &self.inner.shown
    }

    /// Deletes a recorded id (this sink's, or one left by a removed sink or source for the same
    /// portal) with this sink's credentials, then removes its state file. A 404 counts as done.
    pub async fn delete_recorded(&self, state_file: &Path, id: &str) -> Result<(), PortalError> {
        if !usable_id(id) {
            return Ok(());
        }
        let shown = format!("{}{PATH}", self.inner.shown);
        let (request, secrets) = self.request(
            reqwest::Method::DELETE,
            format!("{}{PATH}/{id}", self.inner.base),
        )?;
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let reply = client::send(request, &shown, self.inner.timeout).await?;
        if reply.status != 404 {
            reply.success(&shown, &refs)?;
        }
        atomic::remove(state_file).map_err(|e| PortalError::State {
            path: state_file.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Whether a state file belongs to this very sink.
    pub fn owns(&self, source: &str, portal: &str, user: &str) -> bool {
        source == self.inner.source && portal == self.inner.shown && user == self.inner.config.user
    }

    /// Instances with a stored id (for `revoke`).
    pub fn stored_instances(&self) -> Vec<String> {
        let dir = self
            .inner
            .state_dir
            .join("api-portal")
            .join(&self.inner.source);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| serde_json::from_slice::<State>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|s| s.portal == self.inner.shown && s.user == self.inner.config.user)
            .map(|s| s.instance)
            .collect()
    }
}
