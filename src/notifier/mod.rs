//! Telling the app that its token changed (`notify:` on a source): a signal, a command or a
//! webhook, run after the new token is durably in place in **every** sink of the source —
//! never before the rename (spiffe-helper#250) — and never with the token itself.
//!
//! Each source with actions has one runner task. The loop hands it the latest change and goes
//! on at once, so a failing or hanging action delays neither token delivery nor another
//! source. Changes that arrive while an action runs coalesce into one (a batch of tenants is
//! one notification). A failed action is retried after 1, 2, 4, 8 and 16 s, unless a newer
//! change comes first; every run is counted in `token_agent_notify_total{source,action,result}`.

mod exec;
mod http;
mod signal;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kind::Problems;
use crate::observability::Observability;

/// Retries of a failed action for one change.
const MAX_RETRIES: u32 = 5;

/// Log target of every notify event.
const LOG_TARGET: &str = module_path!();

/// One entry of a source's `notify:` list, keyed by action (`- signal: { … }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum NotifyConfig {
    Signal(signal::SignalAction),
    Exec(exec::ExecAction),
    Http(http::HttpAction),
}

impl NotifyConfig {
    /// The action's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            NotifyConfig::Signal(_) => "signal",
            NotifyConfig::Exec(_) => "exec",
            NotifyConfig::Http(_) => "http",
        }
    }

    /// Problems as `(field under the action's key, message)`.
    pub fn check(&self) -> Problems {
        match self {
            NotifyConfig::Signal(a) => a.check(),
            NotifyConfig::Exec(a) => a.check(),
            NotifyConfig::Http(a) => a.check(),
        }
    }

    /// Fields holding a credential written in the YAML itself.
    pub fn inline_secrets(&self) -> Vec<String> {
        match self {
            NotifyConfig::Http(a) => a.inline_secrets(),
            _ => Vec::new(),
        }
    }

    /// The URL a webhook calls, for the clear-text check of `validate`.
    pub fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        match self {
            NotifyConfig::Http(a) => Some(("url", &a.url)),
            _ => None,
        }
    }

    /// Whether the action also runs for a token an earlier run left and this one reuses.
    fn on_start(&self) -> bool {
        match self {
            NotifyConfig::Signal(a) => a.on_start,
            NotifyConfig::Exec(a) => a.on_start,
            NotifyConfig::Http(a) => a.on_start,
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            NotifyConfig::Signal(_) => Duration::from_secs(5),
            NotifyConfig::Exec(a) => a.timeout(),
            NotifyConfig::Http(a) => a.timeout(),
        }
    }

    async fn run(
        &self,
        source: &str,
        change: &Change,
        client: Option<&crate::http::Client>,
    ) -> Result<(), NotifyError> {
        match self {
            NotifyConfig::Signal(a) => a.run(),
            NotifyConfig::Exec(a) => a.run(source, change).await,
            NotifyConfig::Http(a) => match client {
                Some(client) => a.run(client, source, change).await,
                None => Err(NotifyError("no HTTP client".into())),
            },
        }
    }
}

/// Why an action failed: a message that names what was tried, never a token or credential.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// A token change, as the actions hear of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The earliest expiry among the tokens that changed.
    pub expires_at: SystemTime,
    /// The token file, when one instance changed and a sink keeps it in a file.
    pub file: Option<PathBuf>,
    /// Only reused tokens of an earlier run (actions without `on_start: true` skip it).
    pub adopted: bool,
}

/// The actions of one source, ready to run.
pub struct Notifier {
    actions: Box<[NotifyConfig]>,
    /// For `http` actions, built with the source's HTTP settings.
    client: Option<crate::http::Client>,
}

impl Notifier {
    pub fn new(actions: Vec<NotifyConfig>, client: Option<crate::http::Client>) -> Self {
        Notifier {
            actions: actions.into(),
            client,
        }
    }

    /// Whether any action needs an HTTP client.
    pub fn needs_http(actions: &[NotifyConfig]) -> bool {
        actions.iter().any(|a| matches!(a, NotifyConfig::Http(_)))
    }

    /// Starts the runner of `source`; it ends when the returned [`Announcer`] is dropped.
    pub fn start(self: &Arc<Self>, source: &str, view: Arc<Observability>) -> Announcer {
        let (sender, changes) = watch::channel(None);
        tokio::spawn(run(self.clone(), source.to_owned(), view, changes));
        Announcer(sender)
    }
}

/// Where a source loop hands changes to its runner.
pub struct Announcer(watch::Sender<Option<Change>>);

impl Announcer {
    /// Replaces any change the runner has not started on yet.
    pub fn announce(&self, change: Change) {
        self.0.send_replace(Some(change));
    }
}

async fn run(
    notifier: Arc<Notifier>,
    source: String,
    view: Arc<Observability>,
    mut changes: watch::Receiver<Option<Change>>,
) {
    'changes: while changes.changed().await.is_ok() {
        let Some(change) = changes.borrow_and_update().clone() else {
            continue;
        };
        let mut pending: Vec<&NotifyConfig> = notifier
            .actions
            .iter()
            .filter(|a| !change.adopted || a.on_start())
            .collect();
        for attempt in 0..=MAX_RETRIES {
            let mut failed = Vec::new();
            for action in pending {
                let outcome = tokio::time::timeout(
                    action.timeout(),
                    action.run(&source, &change, notifier.client.as_ref()),
                )
                .await;
                let result = match &outcome {
                    Ok(Ok(())) => "success",
                    Ok(Err(_)) => "failure",
                    Err(_) => "timeout",
                };
                view.metrics.count_notify(&source, action.name(), result);
                match outcome {
                    Ok(Ok(())) => {
                        info!(target: LOG_TARGET, source = %source, action = action.name(), "told the app about the new token")
                    }
                    Ok(Err(e)) => {
                        warn!(target: LOG_TARGET, source = %source, action = action.name(), attempt = attempt + 1, error = %e, "notify action failed");
                        failed.push(action);
                    }
                    Err(_) => {
                        warn!(target: LOG_TARGET, source = %source, action = action.name(), attempt = attempt + 1, timeout = ?action.timeout(), "notify action timed out");
                        failed.push(action);
                    }
                }
            }
            pending = failed;
            if pending.is_empty() {
                break;
            }
            if attempt == MAX_RETRIES {
                warn!(target: LOG_TARGET, source = %source, retries = MAX_RETRIES, "giving up on notify actions for this change; the next change tries again");
                break;
            }
            tokio::select! {
                // 1, 2, 4, 8, 16 s, each shortened by up to 25 % so replicas spread out.
                _ = tokio::time::sleep(Duration::from_secs(1 << attempt).mul_f64(1.0 - 0.25 * fastrand::f64())) => {}
                // A newer change: start over with it (every action hears of the newest token).
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    changes.mark_changed();
                    continue 'changes;
                }
            }
        }
    }
}

/// The checks every action with a timeout shares.
fn check_timeout(timeout: Option<Duration>, problems: &mut Problems, at: &str) {
    if timeout.is_some_and(|t| t.is_zero()) {
        problems.push((format!("{at}.timeout"), "must be more than 0s".into()));
    }
}
