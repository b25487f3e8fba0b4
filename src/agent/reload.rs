//! Applying a new configuration as a difference, never as a restart: a source whose effective
//! settings ([`crate::config::SourcePrint`]) are unchanged keeps its loop — token, schedule,
//! backoff, series, API-Portal ids — and is not fetched again; a changed source starts over
//! (its outputs stay until the new token replaces them); an added source starts; a removed
//! one stops and its sinks retire what they wrote (unless `on_remove: keep`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::warn;

use super::build::Builder;
use super::source_loop::Stop;
use super::supervise::Supervisor;
use super::{Agent, AgentBuildError, LOG_TARGET, claim_named_places};
use crate::config::{Config, OnRemove, SourceConfig};

/// How long a reload waits for a stopped loop to finish (an in-flight write, its retiring)
/// before it goes on without it.
const STOP_WAIT: Duration = Duration::from_secs(90);

/// A checked configuration to apply, and where to say how it went.
pub struct Reload {
    pub config: Config,
    pub reply: oneshot::Sender<Result<ReloadOutcome, AgentBuildError>>,
}

/// What a reload did, by source name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

impl Agent {
    /// Applies `config` to the running loops. Every new or changed source is built first, so
    /// one that cannot be built (an unreadable CA file) changes nothing at all.
    pub(super) async fn reload(
        &self,
        config: Config,
        supervisor: &mut Supervisor,
        tasks: &mut JoinSet<()>,
    ) -> Result<ReloadOutcome, AgentBuildError> {
        let view = &self.context.observability;
        let builder = Builder {
            view,
            clients: &self.clients,
            kube: &self.kube,
            state_dir: &self.state_dir,
            election: self.election.is_some(),
        };
        let mut outcome = ReloadOutcome::default();
        let mut fresh = Vec::new();
        let mut kept = HashSet::new();
        for s in &config.sources {
            match supervisor.member(&s.name) {
                Some(m) if m.source.print.same_settings(&s.print) => {
                    kept.insert(s.name.as_str());
                }
                running => {
                    let built = builder.source_loop(&config, s, false)?;
                    fresh.push((Arc::new(built), running.is_some()));
                }
            }
        }
        outcome.unchanged = kept.len();
        let wanted: HashMap<&str, &SourceConfig> = config
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let going: Vec<String> = supervisor
            .names()
            .filter(|n| !kept.contains(n))
            .map(str::to_owned)
            .collect();
        let mut stopping = Vec::new();
        for name in going {
            let Some(member) = supervisor.member(&name) else {
                continue;
            };
            let old = &member.source;
            let retired: Vec<usize> = match wanted.get(name.as_str()) {
                // Sinks the new version no longer has.
                Some(new) => (0..old.sinks.len())
                    .filter(|&i| !old.print.sink_kept_in(i, &new.print))
                    .collect(),
                None => (0..old.sinks.len()).collect(),
            };
            let how = match old.on_remove {
                OnRemove::Delete if !retired.is_empty() => Stop::Retire(retired.into()),
                _ => Stop::Keep,
            };
            if wanted.contains_key(name.as_str()) {
                outcome.changed.push(name.clone());
            } else {
                outcome.removed.push(name.clone());
            }
            stopping.extend(supervisor.remove(&name, how));
        }
        for stop in stopping {
            if tokio::time::timeout(STOP_WAIT, stop.closed())
                .await
                .is_err()
            {
                warn!(target: LOG_TARGET, limit = ?STOP_WAIT, "a stopped source loop is still finishing its work; the reload goes on without it");
            }
        }
        for name in outcome.removed.iter().chain(&outcome.changed) {
            self.context.places.release_source(name);
        }
        for name in &outcome.removed {
            view.metrics.remove_series(name);
            view.status.unregister(name);
        }
        for (source, replaces) in fresh {
            if !replaces {
                outcome.added.push(source.name.clone());
            }
            builder.register(&source, replaces);
            supervisor.add(tasks, source, &self.context);
        }
        let running: Vec<_> = supervisor.members().map(|m| m.source.clone()).collect();
        claim_named_places(&self.context.places, &running);
        view.metrics.set_sources(supervisor.len());
        for names in [
            &mut outcome.added,
            &mut outcome.changed,
            &mut outcome.removed,
        ] {
            names.sort();
        }
        Ok(outcome)
    }
}
