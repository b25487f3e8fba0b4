//! `api_portal:` sink — publishes each token into webMethods API-Portal as an external access
//! token (as its REST API reference describes): `POST /abs/apirepository/accesstokens/external` the first time (the answer
//! is the bare token id), `PUT …/external/<id>` on renewal (404: the portal lost it, create it
//! again), `DELETE …/external/<id>` on removal or `token-agent revoke`.
//!
//! The id must survive restarts, or each restart would create a duplicate entry: it is kept in
//! a small state file, `<state_dir>/api-portal/<source>/<instance>-<portal>.json`, written
//! atomically like the token files. Only ids found there are ever deleted, and a state file is
//! believed only if the agent's own user owns it, nobody else may write it, and it is small
//! (see [`read_state`]): a planted file must never steer a DELETE. An entry is deleted only with
//! the credentials of a sink for the same portal *and* the same portal user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::atomic::{self, Ownership};
use super::{
    BoxFuture, BuildError, Problems, Sink, SinkContext, SinkError, SinkKind, SinkSet, Written,
    replaced,
};
use crate::credential::{CredentialError, CredentialRef};
use crate::error::{Reason, cause_chain};
use crate::http::{self, HttpError};
use crate::names::InstanceId;
use crate::redact::url_for_display;
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
    pub username: CredentialRef,
    pub password: CredentialRef,
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

impl SinkKind for ApiPortalConfig {
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        Some(("url", &self.url))
    }

    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if http::http_url(&self.url).is_err() {
            problems.push((
                "url".into(),
                format!("`{}` is not an http(s) URL", self.url),
            ));
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

    fn inline_secrets(&self) -> Vec<String> {
        if self.password.is_inline() {
            vec!["password".into()]
        } else {
            vec![]
        }
    }

    fn is_per_instance(&self) -> bool {
        false
    }

    /// One portal entry per tenant, kept apart by the portal itself.
    fn names_one_place(&self) -> bool {
        false
    }

    fn target(&self, _: &Path) -> Option<(&'static str, PathBuf)> {
        None
    }

    /// Every replica would create its own portal entry: only the Lease holder writes.
    fn needs_leader(&self) -> bool {
        true
    }

    /// Fails when the state directory cannot be written: every POST whose id cannot be stored
    /// would leave one more portal entry that nothing ever renews or deletes.
    fn build(&self, source: &str, ctx: &SinkContext) -> Result<Box<dyn Sink>, BuildError> {
        let base = http::http_url(&self.url).map_err(|e| BuildError::Invalid(format!("url: {e}")))?;
        let dir = ctx.state_dir.join("api-portal").join(source);
        std::fs::create_dir_all(&dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(&dir).map(drop))
            .map_err(|e| {
                BuildError::Invalid(format!(
                    "state_dir {} is not writable ({e}): API-Portal token ids must survive restarts; mount a volume there or set `state_dir`",
                    ctx.state_dir.display()
                ))
            })?;
        Ok(Box::new(ApiPortalSink {
            inner: Arc::new(Inner {
                client: ctx.clients.get(ctx.http)?,
                display_url: url_for_display(&base).trim_end_matches('/').to_owned(),
                base: self.url.trim_end_matches('/').to_owned(),
                timeout: ctx.http.timeout,
                config: self.clone(),
                source: source.to_owned(),
                state_dir: ctx.state_dir.to_owned(),
                templates: Templates::new(),
            }),
        }))
    }

    /// Entries recorded by sinks or sources that are no longer configured are deleted with the
    /// credentials of a configured sink for the same portal and portal user; without one (also when no portal
    /// sink is left at all), a warning says so.
    fn revoke_orphans<'a>(sinks: &'a SinkSet<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let portals: Vec<&ApiPortalSink> = sinks.of_kind().collect();
            for (path, state) in recorded(sinks.state_dir) {
                if portals
                    .iter()
                    .any(|p| p.owns(&state.source, &state.portal, &state.user))
                {
                    continue;
                }
                // The same portal *and* portal user: another user's credentials never delete.
                let same = |p: &&&ApiPortalSink| {
                    p.portal() == state.portal && p.inner.config.user == state.user
                };
                match portals.iter().find(same) {
                    Some(p) => match p.delete_recorded(&path, &state.token_id).await {
                        Ok(()) => {
                            info!(source = %state.source, portal = %state.portal, "deleted the API-Portal entry of a removed sink")
                        }
                        Err(e) => {
                            warn!(source = %state.source, portal = %state.portal, error = %cause_chain(&e), "cannot delete the API-Portal entry of a removed sink")
                        }
                    },
                    None => warn!(
                        source = %state.source, portal = %state.portal, state = %path.display(),
                        "an API-Portal entry of a removed sink remains: no configured sink has credentials for that portal and user; delete it in the portal, then remove the state file"
                    ),
                }
            }
        })
    }
}

/// Why the portal could not be told. Never contains the token or the credentials.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error(transparent)]
    Request(#[from] HttpError),
    #[error("cannot read the portal credentials: {0}")]
    Credential(#[from] CredentialError),
    #[error("{0}")]
    Template(String),
    #[error("{url} answered with an unusable token id")]
    BadId { url: String },
    #[error("state file {path}: {detail}")]
    State { path: PathBuf, detail: String },
}

impl Reason for PortalError {
    fn reason(&self) -> &'static str {
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

/// State files hold a few short strings: anything larger was not written by the agent.
const MAX_STATE_FILE: u64 = 4096;

/// Reads a state file, if the agent can trust it: a regular file (not followed through a
/// symlink), owned by the agent's effective uid, not writable by group or others, at most
/// [`MAX_STATE_FILE`] bytes, holding a [`State`].
pub fn read_state(path: &Path) -> Result<State, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not the agent's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("mode {:04o} lets others write it", meta.mode() & 0o7777));
    }
    if meta.len() > MAX_STATE_FILE {
        return Err(format!("{} bytes, more than a state file holds", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a state file: {e}"))
}

/// [`read_state`], saying in the log why a file that exists is not trusted.
fn trusted_state(path: &Path) -> Option<State> {
    match read_state(path) {
        Ok(state) => Some(state),
        Err(why) => {
            if path.exists() {
                warn!(state = %path.display(), reason = %why, "ignoring an API-Portal state file the agent cannot trust");
            }
            None
        }
    }
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
            let path = f.path();
            let state = trusted_state(&path)?;
            Some((path, state))
        })
        .collect()
}

#[derive(Clone)]
pub struct ApiPortalSink {
    inner: Arc<Inner>,
}

struct Inner {
    client: http::Client,
    base: String,
    display_url: String,
    timeout: Duration,
    config: ApiPortalConfig,
    source: String,
    state_dir: PathBuf,
    templates: Templates,
}

impl std::fmt::Debug for ApiPortalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPortalSink")
            .field("portal", &self.inner.display_url)
            .field("source", &self.inner.source)
            .finish()
    }
}

/// A token id goes into a URL path: only what API-Portal ids are made of.
fn usable_id(id: &str) -> bool {
    crate::names::fits(id, 128, |_| true, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
}

/// The instance a state file records (`""` for a single-token source), if it is one an
/// instance id can be.
fn recorded_instance(instance: &str) -> Option<InstanceId> {
    if instance.is_empty() {
        Some(InstanceId::single())
    } else {
        InstanceId::tenant(instance).ok()
    }
}

impl ApiPortalSink {
    /// `<state_dir>/api-portal/<source>/<instance>-<portal hash>.json`
    fn state_path(&self, instance: &InstanceId) -> PathBuf {
        let i = &self.inner;
        let portal = &crate::token::fingerprint(
            format!("{}|{}", i.display_url, i.config.user).as_bytes(),
        )[..12];
        let name = if instance.is_single() {
            "_"
        } else {
            instance.as_str()
        };
        i.state_dir
            .join("api-portal")
            .join(&i.source)
            .join(format!("{name}-{portal}.json"))
    }

    fn load_id(&self, instance: &InstanceId) -> Option<String> {
        let state = trusted_state(&self.state_path(instance))?;
        let ours = self.owns(&state.source, &state.portal, &state.user);
        (ours && usable_id(&state.token_id)).then_some(state.token_id)
    }

    fn save_id(&self, instance: &InstanceId, id: &str) -> Result<(), PortalError> {
        let path = self.state_path(instance);
        let fail = |detail: String| PortalError::State {
            path: path.clone(),
            detail,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let state = State {
            source: self.inner.source.clone(),
            instance: instance.as_str().to_owned(),
            portal: self.inner.display_url.clone(),
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
        method: ::http::Method,
        url: String,
    ) -> Result<(http::RequestBuilder, Vec<String>), PortalError> {
        let c = &self.inner.config;
        let (user, password) = (c.username.load()?, c.password.load()?);
        let auth = http::basic_auth(user.expose_secret(), password.expose_secret());
        let builder = self
            .inner
            .client
            .request(method, &url)
            .header(::http::header::AUTHORIZATION, auth);
        Ok((
            builder,
            vec![
                user.expose_secret().to_owned(),
                password.expose_secret().to_owned(),
            ],
        ))
    }

    fn body(
        &self,
        token: &Token,
        instance: &InstanceId,
    ) -> Result<serde_json::Value, PortalError> {
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
            ("tenant", instance.as_str().to_owned()),
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
    async fn publish(&self, token: &Token, instance: &InstanceId) -> Result<(), PortalError> {
        let body = self.body(token, instance)?;
        let display_url = format!("{}{PATH}", self.inner.display_url);
        if let Some(id) = self.load_id(instance) {
            let (request, mut secrets) = self.request(
                ::http::Method::PUT,
                format!("{}{PATH}/{id}", self.inner.base),
            )?;
            secrets.push(token.secret().to_owned());
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let reply = http::send(request.json(&body), &display_url, self.inner.timeout).await?;
            if reply.status != 404 {
                reply.success(&display_url, &refs)?;
                return Ok(());
            }
            info!(source = %self.inner.source, portal = %self.inner.display_url, "the portal no longer knows the token id; creating the entry again");
        }
        let (request, mut secrets) =
            self.request(::http::Method::POST, format!("{}{PATH}", self.inner.base))?;
        secrets.push(token.secret().to_owned());
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let reply = http::send(request.json(&body), &display_url, self.inner.timeout)
            .await?
            .success(&display_url, &refs)?;
        let id = String::from_utf8_lossy(&reply.body)
            .trim()
            .trim_matches('"')
            .to_owned();
        if !usable_id(&id) {
            return Err(PortalError::BadId { url: display_url });
        }
        self.save_id(instance, &id)
    }

    /// Deletes the entry this agent created for `instance`, and forgets its id.
    async fn unpublish(&self, instance: &InstanceId) -> Result<(), PortalError> {
        match self.load_id(instance) {
            Some(id) => self.delete_recorded(&self.state_path(instance), &id).await,
            None => Ok(()),
        }
    }

    /// The portal this sink talks to, as shown in logs and state files.
    fn portal(&self) -> &str {
        &self.inner.display_url
    }

    /// Deletes a recorded id (this sink's, or one left by a removed sink or source for the same
    /// portal) with this sink's credentials, then removes its state file. A 404 counts as done.
    async fn delete_recorded(&self, state_file: &Path, id: &str) -> Result<(), PortalError> {
        if !usable_id(id) {
            return Ok(());
        }
        let display_url = format!("{}{PATH}", self.inner.display_url);
        let (request, secrets) = self.request(
            ::http::Method::DELETE,
            format!("{}{PATH}/{id}", self.inner.base),
        )?;
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let reply = http::send(request, &display_url, self.inner.timeout).await?;
        if reply.status != 404 {
            reply.success(&display_url, &refs)?;
        }
        atomic::remove(state_file).map_err(|e| PortalError::State {
            path: state_file.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Whether a state file belongs to this very sink.
    fn owns(&self, source: &str, portal: &str, user: &str) -> bool {
        source == self.inner.source && portal == self.inner.display_url && user == self.inner.config.user
    }

    /// Instances with a stored id (for `revoke`).
    fn stored_instances(&self) -> Vec<InstanceId> {
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
            .filter_map(|e| trusted_state(&e.path()))
            .filter(|s| self.owns(&s.source, &s.portal, &s.user))
            .filter_map(|s| recorded_instance(&s.instance))
            .collect()
    }
}

impl Sink for ApiPortalSink {
    fn label(&self) -> String {
        format!("api_portal:{}", self.inner.display_url)
    }

    fn write<'a>(
        &'a self,
        token: &'a Token,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(replaced(self.publish(token, instance)))
    }

    fn remove<'a>(&'a self, instance: &'a InstanceId) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.unpublish(instance).await.map_err(Into::into) })
    }

    /// Every entry this sink recorded, whichever instances the loop knew of.
    fn retire<'a>(&'a self, _: &'a [InstanceId]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.revoke().await.map(drop) })
    }

    fn revoke(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(async move {
            let instances = self.stored_instances();
            for instance in &instances {
                self.unpublish(instance).await?;
            }
            Ok(instances.len())
        })
    }
}
