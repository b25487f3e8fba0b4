//! Token sinks. A sink only writes (and removes what it wrote); when and how often is the
//! agent's business.
//!
//! A kind is one file holding its configuration, which implements [`SinkKind`] (checks and
//! build), and the runnable sink it builds, which implements [`Sink`]. Adding a kind is that
//! file plus one line in the registry below; `docs/architecture.md` walks through an example.

pub mod atomic;
pub mod format;
pub mod volume;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::atomic::{AtomicError, Written};
use crate::error::Reason;
use crate::http::{HttpClients, HttpSettings};
use crate::k8s::KubeContext;
use crate::kind::registry;
pub use crate::kind::{BoxFuture, BuildError, Problems};
use crate::names::InstanceId;
use crate::token::Token;

registry! {
    /// One entry of a source's `sinks:` list, keyed by kind (`- file: { … }`).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub enum SinkConfig: dyn SinkKind {
        "file" => File(file::FileSinkConfig),
        "secret" => Secret(secret::SecretSinkConfig),
        "api_portal" => ApiPortal(api_portal::ApiPortalConfig),
    }

    /// Before the first write of `run` or `once`: each kind removes what killed writes of an
    /// earlier run left behind ([`SinkKind::sweep_leftovers`]).
    per kind async fn sweep_leftovers(sinks: &SinkSet<'_>);

    /// When `run` starts: each kind deletes what earlier runs created for sinks that are no
    /// longer configured ([`SinkKind::revoke_orphans`]).
    per kind async fn revoke_orphans(sinks: &SinkSet<'_>);
}

/// The placeholder of per-tenant sinks: a path or name holding it names one place per tenant.
pub const TENANT: &str = "{tenant}";

/// A [`SinkKind::target`] as one comparable string: `a/./b` and `a//b` are `a/b`.
pub fn place(target: &Path) -> String {
    target
        .components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// The configuration side of a sink kind: what `validate` checks and what the agent builds.
pub trait SinkKind {
    /// Problems as `(field relative to the kind's entry, message)`.
    fn check(&self) -> Problems;

    /// Fields holding a credential written in the YAML itself.
    fn inline_secrets(&self) -> Vec<String> {
        Vec::new()
    }

    /// The field and URL the sink sends tokens and credentials to, so that `validate` refuses
    /// plain `http://` to another host (unless `http.require_https: false`).
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        None
    }

    /// Whether the sink's location contains `{tenant}` (one place per instance).
    fn is_per_instance(&self) -> bool;

    /// Whether this sink writes one named place (a file, a Secret), which per-tenant sources
    /// must name with `{tenant}`. A sink that keeps one entry per tenant by itself says no.
    fn names_one_place(&self) -> bool {
        true
    }

    /// The place this sink writes (a relative file path resolved against `default_dir`, the
    /// token directory of `defaults.file`), with the field that names it, so that `validate`
    /// refuses two sinks writing the same place.
    fn target(&self, default_dir: &Path) -> Option<(&'static str, PathBuf)>;

    /// Whether the sink has effects outside the pod that every replica would repeat (a
    /// Secret, a portal entry), so that with leader election only the Lease holder writes it.
    fn needs_leader(&self) -> bool {
        false
    }

    /// The runnable sink for source `source`.
    fn build(&self, source: &str, ctx: &SinkContext) -> Result<Box<dyn Sink>, BuildError>;

    /// Kind-level, before the first write of `run` or `once`: removes what killed writes of an
    /// earlier run left behind. Runs once per kind, with every sink of the agent.
    fn sweep_leftovers<'a>(_sinks: &'a SinkSet<'a>) -> BoxFuture<'a, ()>
    where
        Self: Sized,
    {
        Box::pin(async {})
    }

    /// Kind-level, when `run` starts: deletes what earlier runs created for sinks that are no
    /// longer configured. Runs once per kind, even when no sink of the kind is configured.
    fn revoke_orphans<'a>(_sinks: &'a SinkSet<'a>) -> BoxFuture<'a, ()>
    where
        Self: Sized,
    {
        Box::pin(async {})
    }
}

/// What sinks are built with.
pub struct SinkContext<'a> {
    /// `defaults.file`, for file sinks that do not set their own.
    pub file: &'a file::FileDefaults,
    pub kube: &'a KubeContext,
    /// Where sinks keep state across restarts (API-Portal token ids).
    pub state_dir: &'a Path,
    /// The source's HTTP settings and the shared clients (for HTTP sinks).
    pub http: &'a HttpSettings,
    pub clients: &'a HttpClients,
}

/// Every sink the agent built, and where sinks keep state: what the kind-level hooks see.
pub struct SinkSet<'a> {
    pub sinks: &'a [&'a dyn Sink],
    pub state_dir: &'a Path,
}

impl SinkSet<'_> {
    /// The sinks of one kind: those whose runtime type is `T`.
    pub fn of_kind<T: Sink>(&self) -> impl Iterator<Item = &T> {
        self.sinks
            .iter()
            .filter_map(|s| (*s as &dyn Any).downcast_ref::<T>())
    }
}

/// A runnable sink: writes what the agent hands it, and removes what it wrote.
pub trait Sink: Any + Send + Sync {
    /// Bounded, secret-free label for metrics and logs.
    fn label(&self) -> String;

    /// Writes `token` for `instance`; the previous token stays in place if this fails.
    fn write<'a>(
        &'a self,
        token: &'a Token,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<Written, SinkError>>;

    /// Removes what was written for an instance that went away upstream.
    fn remove<'a>(&'a self, instance: &'a InstanceId) -> BoxFuture<'a, Result<(), SinkError>>;

    /// The sink left the configuration (a reload removed it, or its source): deletes what it
    /// wrote for `instances` by the kind's own rules. Required, so that every kind decides.
    fn retire<'a>(&'a self, instances: &'a [InstanceId]) -> BoxFuture<'a, Result<(), SinkError>>;

    /// The file an app reads `instance`'s token from, for a sink that keeps it in one (what a
    /// notify action is told).
    fn file_of(&self, _instance: &InstanceId) -> Option<PathBuf> {
        None
    }

    /// A token an earlier run left here that still matches its record, for a warm restart.
    fn load_existing(&self) -> BoxFuture<'_, Option<Token>> {
        Box::pin(async { None })
    }

    /// `token-agent revoke`: deletes everything recorded as created by this sink, and says how
    /// many entries that was.
    fn revoke(&self) -> BoxFuture<'_, Result<usize, SinkError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Why a write or a removal failed: the kind's own error (its message and cause chain) and its
/// metric reason.
#[derive(Debug)]
pub struct SinkError {
    reason: &'static str,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// The metric label: a small closed set, never free text.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl<E: Reason + std::error::Error + Send + Sync + 'static> From<E> for SinkError {
    fn from(error: E) -> Self {
        SinkError {
            reason: error.reason(),
            error: Box::new(error),
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// For sinks whose write is a call to a remote API, which has no "unchanged": the call's
/// outcome as a write that replaced the token.
pub async fn replaced<E: Into<SinkError>>(
    call: impl Future<Output = Result<(), E>>,
) -> Result<Written, SinkError> {
    call.await.map_err(Into::into)?;
    Ok(Written::Replaced)
}

/// A blocking sink task that panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("sink task failed: {0}")]
struct TaskFailed(String);

impl Reason for TaskFailed {
    fn reason(&self) -> &'static str {
        "internal"
    }
}

/// Runs blocking file-system work of a sink that happens once per source (the sweep at start,
/// reading a token back) on tokio's blocking pool, off the async threads. Writes and removals
/// run on the threads of their volume instead ([`volume`]).
pub async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, SinkError>
where
    T: Send + 'static,
    E: Into<SinkError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(TaskFailed(e.to_string()).into()),
    }
}
