//! Token sinks. A sink only writes; when and how often is the scheduler's business.
//!
//! Adding a kind means one file here and one arm in [`SinkConfig`] and [`Sink`].

pub mod api_portal;
pub mod atomic;
pub mod file;
pub mod format;
pub mod secret;

use serde::Deserialize;

pub use self::atomic::{AtomicError, Written};
pub use self::secret::{KubeContext, SecretError};
use crate::config::FileDefaults;
use crate::token::Token;

/// One entry of a source's `sinks:` list, keyed by kind (`- file: { … }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    File(file::FileSinkConfig),
    Secret(Box<secret::SecretSinkConfig>),
    ApiPortal(Box<api_portal::ApiPortalConfig>),
}

/// What sinks are built with: file defaults and the (lazily created) Kubernetes client.
pub struct SinkContext<'a> {
    pub file: &'a FileDefaults,
    pub kube: &'a KubeContext,
    /// Where sinks keep state across restarts (API-Portal token ids).
    pub state_dir: &'a std::path::Path,
    /// The source's HTTP settings and the shared clients (for HTTP sinks).
    pub http: &'a crate::config::HttpSettings,
    pub clients: &'a crate::source::client::HttpClients,
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Secret(_) => "secret",
            SinkConfig::ApiPortal(_) => "api_portal",
        }
    }

    /// Problems as `(field relative to this sink entry, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        match self {
            SinkConfig::File(c) => c
                .check()
                .into_iter()
                .map(|(f, m)| (format!("file.{f}"), m))
                .collect(),
            SinkConfig::Secret(c) => c
                .check()
                .into_iter()
                .map(|(f, m)| (format!("secret.{f}"), m))
                .collect(),
            SinkConfig::ApiPortal(c) => c
                .check()
                .into_iter()
                .map(|(f, m)| (format!("api_portal.{f}"), m))
                .collect(),
        }
    }

    /// Whether this sink writes one named place (a file, a Secret), which per-tenant sources
    /// must name with `{tenant}`. API-Portal keeps one entry per tenant by itself.
    pub fn names_one_place(&self) -> bool {
        !matches!(self, SinkConfig::ApiPortal(_))
    }

    /// Field names of credentials written inline.
    pub fn inline_secrets(&self) -> Vec<&'static str> {
        match self {
            SinkConfig::ApiPortal(c) if c.inline_secrets() => vec!["api_portal.password"],
            _ => vec![],
        }
    }

    /// Whether the sink's location contains `{tenant}`.
    pub fn is_per_instance(&self) -> bool {
        match self {
            SinkConfig::File(c) => c.path.to_string_lossy().contains(file::TENANT),
            SinkConfig::Secret(c) => c.name.contains(file::TENANT),
            SinkConfig::ApiPortal(_) => false,
        }
    }

    /// The place this sink writes to, with the field that names it, so two sinks never write
    /// the same place.
    pub fn target(
        &self,
        file_defaults: &FileDefaults,
    ) -> Option<(&'static str, std::path::PathBuf)> {
        match self {
            SinkConfig::File(c) => Some(("file.path", c.dir(file_defaults).join(&c.path))),
            SinkConfig::Secret(c) => Some((
                "secret.name",
                std::path::PathBuf::from(format!(
                    "secret://{}/{}",
                    c.namespace.as_deref().unwrap_or(""),
                    c.name
                )),
            )),
            SinkConfig::ApiPortal(_) => None,
        }
    }

    pub fn build(&self, source: &str, ctx: &SinkContext) -> Result<Sink, String> {
        Ok(match self {
            SinkConfig::File(c) => Sink::File(c.build(source, ctx.file)),
            SinkConfig::Secret(c) => Sink::Secret(c.build(source, ctx.kube)),
            SinkConfig::ApiPortal(c) => {
                Sink::ApiPortal(c.build(source, ctx.state_dir, ctx.http, ctx.clients)?)
            }
        })
    }
}

/// Why a write failed; the previous token stays in place.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    File(#[from] AtomicError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Portal(#[from] api_portal::PortalError),
    #[error("sink task failed: {0}")]
    Join(String),
}

impl SinkError {
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::File(e) => e.reason(),
            SinkError::Secret(e) => e.reason(),
            SinkError::Portal(e) => e.reason(),
            SinkError::Join(_) => "internal",
        }
    }
}

/// A runnable sink.
#[derive(Debug, Clone)]
pub enum Sink {
    File(file::FileSink),
    Secret(secret::SecretSink),
    ApiPortal(api_portal::ApiPortalSink),
}

impl Sink {
    /// Bounded, secret-free label for metrics and logs.
    pub fn label(&self) -> String {
        match self {
            Sink::File(s) => s.label(),
            Sink::Secret(s) => s.label(),
            Sink::ApiPortal(s) => s.label(),
        }
    }

    /// Writes `token` for `instance` ([`crate::source::SINGLE`] for single-token sources).
    pub async fn write(&self, token: &Token, instance: &str) -> Result<Written, SinkError> {
        match self {
            Sink::File(s) => {
                let (s, token, instance) = (s.clone(), token.clone(), instance.to_owned());
                tokio::task::spawn_blocking(move || s.write(&token, &instance))
                    .await
                    .map_err(|e| SinkError::Join(e.to_string()))?
                    .map_err(SinkError::from)
            }
            // Server-side apply of identical content is a no-op on the server; the agent
            // only calls write when the token changed.
            Sink::Secret(s) => s
                .write(token, instance)
                .await
                .map(|()| Written::Replaced)
                .map_err(SinkError::from),
            Sink::ApiPortal(s) => s
                .write(token, instance)
                .await
                .map(|()| Written::Replaced)
                .map_err(SinkError::from),
        }
    }

    /// Removes what was written for an instance that went away.
    pub async fn remove(&self, instance: &str) -> Result<(), SinkError> {
        match self {
            Sink::File(s) => {
                let (s, instance) = (s.clone(), instance.to_owned());
                tokio::task::spawn_blocking(move || s.remove(&instance))
                    .await
                    .map_err(|e| SinkError::Join(e.to_string()))?
                    .map_err(SinkError::from)
            }
            Sink::Secret(s) => s.remove(instance).await.map_err(SinkError::from),
            Sink::ApiPortal(s) => s.remove(instance).await.map_err(SinkError::from),
        }
    }

    /// A token left by an earlier run, for a warm restart.
    pub async fn load_existing(&self) -> Option<Token> {
        match self {
            Sink::File(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.load_existing())
                    .await
                    .ok()
                    .flatten()
            }
            // Warm restarts read the file sinks; a Secret is simply applied again.
            Sink::Secret(_) | Sink::ApiPortal(_) => None,
        }
    }
}
