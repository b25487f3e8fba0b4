//! Live reconfiguration of `run`: the configuration file is watched (through its directory, so
//! a ConfigMap's `..data` swap is seen; see `watch.rs`), looked at again every
//! [`BACKSTOP`] by hash in case an event was lost, and reloaded on `SIGHUP`. A new text is
//! checked exactly as `validate` checks it; an invalid one changes nothing (the error is logged
//! with file, line and column, and counted). A valid one goes to the agent, which applies the
//! difference (`agent/reload.rs`). Settings that cannot change live are logged as applying at
//! the next restart and left as they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::agent::{Reload, ReloadOutcome};
use crate::config::Config;
use crate::config::fingerprint::{Digest, digest_of};
use crate::observability::Observability;
use crate::watch::FileWatch;

/// Quiet time after the last event before the file is read: an editor's save or a burst of
/// writes is one reload.
pub const QUIET: Duration = Duration::from_secs(1);

/// How often the file is hashed in case an event was missed.
pub const BACKSTOP: Duration = Duration::from_secs(60);

/// Log target of reload events.
const LOG_TARGET: &str = module_path!();

/// Settings read once at start; a reload that changes one says so and leaves it.
#[derive(Debug, PartialEq)]
struct RestartOnly {
    server: String,
    leader_election: String,
    state_dir: PathBuf,
    max_concurrent_fetches: usize,
}

impl RestartOnly {
    fn of(config: &Config) -> Self {
        RestartOnly {
            server: format!("{:?}", config.server),
            leader_election: format!("{:?}", config.leader_election),
            state_dir: config.state_dir(),
            max_concurrent_fetches: config.max_concurrent_fetches,
        }
    }

    /// The names of the settings that differ.
    fn changed(&self, new: &RestartOnly) -> Vec<&'static str> {
        [
            ("server", self.server != new.server),
            (
                "leader_election",
                self.leader_election != new.leader_election,
            ),
            ("state_dir", self.state_dir != new.state_dir),
            (
                "max_concurrent_fetches",
                self.max_concurrent_fetches != new.max_concurrent_fetches,
            ),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

/// A short, stable name for a configuration text (its SHA-256, 16 hex digits).
pub fn config_hash(text: &str) -> String {
    short_hex(&digest_of(&[text]))
}

fn short_hex(digest: &Digest) -> String {
    hex::encode(&digest[..8])
}

/// Watches one configuration file and hands each valid new version to the agent.
pub struct ConfigReloader {
    path: PathBuf,
    /// The text last read (applied or refused): an event that leaves it as it was is no change.
    seen: Digest,
    restart_only: RestartOnly,
    /// `--leader-elect` on the command line: it holds for every version of the file.
    leader_elect: bool,
    agent: mpsc::Sender<Reload>,
    view: Arc<Observability>,
}

impl ConfigReloader {
    /// For `config`, parsed from `text` at `path`, now in force in the agent behind `agent`.
    pub fn new(
        path: PathBuf,
        text: &str,
        config: &Config,
        leader_elect: bool,
        agent: mpsc::Sender<Reload>,
        view: Arc<Observability>,
    ) -> Self {
        view.metrics
            .config_loaded(&config_hash(text), view.clock.now(), false);
        ConfigReloader {
            path,
            seen: digest_of(&[text]),
            restart_only: RestartOnly::of(config),
            leader_elect,
            agent,
            view,
        }
    }

    /// Watches until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut files = FileWatch::new([self.path.clone()], QUIET, BACKSTOP);
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        if hangup.is_none() {
            warn!(target: LOG_TARGET, "cannot listen for SIGHUP; the file watch still reloads");
        }
        info!(target: LOG_TARGET, config = %self.path.display(), "watching the configuration for changes (SIGHUP reloads too)");
        loop {
            tokio::select! {
                change = files.changed() => {
                    // A backstop look reloads only when the text differs; so does an event.
                    let _ = change;
                    self.reload(false).await;
                }
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    info!(target: LOG_TARGET, "SIGHUP received; reloading the configuration");
                    self.reload(true).await;
                }
                // Dropped at once: the branches above await while holding the select's output.
                () = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
            }
        }
    }

    /// Reads the file and, if its text changed (or `forced`), checks and applies it. Returns
    /// what the agent did, or `None` when nothing was applied.
    pub async fn reload(&mut self, forced: bool) -> Option<ReloadOutcome> {
        let text = match Config::read(&self.path) {
            Ok(text) => text,
            Err(errors) => {
                // A file deleted for good (between a delete and its recreation, the quiet
                // time usually hides it). Counted once, not at every backstop look.
                let why = errors.to_string();
                let digest = digest_of(&["unreadable", &why]);
                if digest != self.seen {
                    self.seen = digest;
                    self.refused(&why);
                }
                return None;
            }
        };
        let digest = digest_of(&[&text]);
        if digest == self.seen && !forced {
            return None;
        }
        self.seen = digest;
        let mut config = match Config::parse_live(&text, &self.path) {
            Ok(config) => config,
            Err(errors) => {
                for e in &errors.0 {
                    error!(target: LOG_TARGET, "{e}");
                }
                self.refused(&format!("{} problem(s)", errors.0.len()));
                return None;
            }
        };
        config.leader_election.enabled |= self.leader_elect;
        for w in config.warnings() {
            warn!(target: LOG_TARGET, "{w}");
        }
        let restart_only = RestartOnly::of(&config);
        for setting in self.restart_only.changed(&restart_only) {
            warn!(target: LOG_TARGET, setting, "this setting changed in the configuration; it applies at the next restart, the running value stays");
        }
        let (reply, outcome) = oneshot::channel();
        if self.agent.send(Reload { config, reply }).await.is_err() {
            return None; // the agent has stopped
        }
        match outcome.await {
            Ok(Ok(outcome)) => {
                let hash = short_hex(&digest);
                self.view
                    .metrics
                    .config_loaded(&hash, self.view.clock.now(), true);
                info!(
                    target: LOG_TARGET,
                    hash,
                    added = ?outcome.added,
                    changed = ?outcome.changed,
                    removed = ?outcome.removed,
                    unchanged = outcome.unchanged,
                    "configuration reloaded"
                );
                Some(outcome)
            }
            Ok(Err(e)) => {
                error!(target: LOG_TARGET, "{e}");
                self.refused("a source could not be built");
                None
            }
            Err(_) => None,
        }
    }

    fn refused(&self, why: &str) {
        self.view.metrics.config_reload_failed();
        error!(target: LOG_TARGET, config = %self.path.display(), why, "the new configuration was refused; the running one stays in force");
    }
}
