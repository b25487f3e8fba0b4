//! The agent: one independent loop per source that owns all timing — when to fetch, how long
//! to back off, when to retry a sink — and reports what happened.
//!
//! This file wires sources and sinks from the configuration and runs them (`run`, `once`,
//! `revoke`). The rest, one concept a file: `source_loop` (the loop of one source), `fetch`
//! (asking the source, applying its answer), `deliver` (handing tokens to sinks), `places`
//! (which sink writes which place), `state`
//! (what a loop knows between wake-ups), `instances` (its tokens by tenant), `election`
//! (leader election and the standby gate), `report` (typed events: log, metric and status in
//! one call), `supervise` (restarting a loop that panicked). The agent never names a kind:
//! it talks to [`Source`] and [`Sink`] only.

mod build;
mod credentials;
mod deliver;
mod election;
mod fetch;
mod instances;
mod places;
mod reload;
mod report;
mod source_loop;
mod state;
mod supervise;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, warn};

use self::build::Builder;
use self::credentials::CredentialWatch;
use self::places::Places;
pub use self::reload::{Reload, ReloadOutcome};
use self::source_loop::{LoopSink, SinkPlace, SourceLoop};
use self::supervise::Supervisor;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::cause_chain;
use crate::http::HttpClients;
use crate::k8s::KubeContext;
use crate::kind::BuildError;
use crate::leader::LeaderElectionConfig;
use crate::observability::{HEARTBEAT_PERIOD, Observability};
use crate::sink::{Sink, SinkConfig, SinkSet};

/// Every event of the agent logs under this one target (`token_agent::agent`), whichever of
/// its files emits it, so `RUST_LOG` filters and JSON log consumers see the agent as one.
const LOG_TARGET: &str = module_path!();

/// Longest the start-up clean-up of removed sinks' remote entries may run (serial calls, each
/// bounded by its HTTP timeout, to a portal that may be unreachable).
const ORPHAN_CLEAN_UP_LIMIT: Duration = Duration::from_secs(300);

/// Grace beyond the HTTP timeout before a fetch counts as stuck.
const FETCH_GRACE: Duration = Duration::from_secs(30);

/// What every source loop shares: where to report, the global fetch cap, and leadership.
struct LoopContext {
    observability: Arc<Observability>,
    fetch_permits: Semaphore,
    /// Whether this replica may run sources whose sinks need the Lease (always, without
    /// election).
    leader: watch::Sender<bool>,
    /// Which sink writes which place.
    places: Places,
}

/// A source or one of its sinks could not be built (a CA file is unreadable, …); names the
/// source.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {error}")]
pub struct AgentBuildError {
    pub source_name: String,
    #[source]
    pub error: BuildError,
}

pub struct Agent {
    loops: Vec<SourceLoop>,
    context: Arc<LoopContext>,
    election: Option<LeaderElectionConfig>,
    kube: KubeContext,
    state_dir: PathBuf,
    /// Shared by every source, also those a reload adds.
    clients: HttpClients,
}

/// Outcome of one source in `once` mode.
#[derive(Debug)]
pub struct OnceOutcome {
    pub source: String,
    pub required: bool,
    pub result: Result<(), String>,
}

impl Agent {
    pub fn build(config: &Config, clock: Clock) -> Result<Agent, AgentBuildError> {
        Self::build_with(config, clock, KubeContext::default())
    }

    /// Like [`Agent::build`], with a given Kubernetes client context (tests, embedding).
    pub fn build_with(
        config: &Config,
        clock: Clock,
        kube: KubeContext,
    ) -> Result<Agent, AgentBuildError> {
        let view = Arc::new(Observability::new(clock));
        let election = &config.leader_election;
        let clients = HttpClients::default();
        let state_dir = config.state_dir();
        let builder = Builder {
            view: &view,
            clients: &clients,
            kube: &kube,
            state_dir: &state_dir,
            election: election.enabled,
        };
        let mut loops = Vec::with_capacity(config.sources.len());
        for s in &config.sources {
            let built = builder.source_loop(config, s, true)?;
            view.status.register(&built.status);
            view.metrics.add_series(built.metrics.clone());
            loops.push(built);
        }
        let places = Places::default();
        claim_named_places(&places, &loops);
        view.metrics.set_sources(loops.len());
        view.metrics.set_leader(!election.enabled);
        let agent = Agent {
            loops,
            context: Arc::new(LoopContext {
                observability: view,
                fetch_permits: Semaphore::new(config.max_concurrent_fetches.max(1)),
                leader: watch::Sender::new(!election.enabled),
                places,
            }),
            election: election.enabled.then(|| election.clone()),
            kube,
            state_dir,
            clients,
        };
        Ok(agent)
    }

    /// Metrics, status and clock: what the HTTP server shows.
    pub fn observability(&self) -> Arc<Observability> {
        self.context.observability.clone()
    }

    /// Before the first write: each sink kind removes what killed writes left behind.
    async fn sweep_leftovers(&self) {
        let sinks = sinks_of(&self.loops);
        let set = SinkSet {
            sinks: &sinks,
            state_dir: &self.state_dir,
        };
        SinkConfig::sweep_leftovers(&set).await;
    }

    /// `token-agent revoke`: deletes everything the sinks of `source` recorded as created (the
    /// API-Portal entries) and forgets it. Returns how many entries were deleted.
    pub async fn revoke(&self, source: &str) -> Result<usize, String> {
        let Some(source) = self.loops.iter().find(|l| l.name == source) else {
            return Err(format!("no source named `{source}` in the configuration"));
        };
        let mut deleted = 0;
        for LoopSink { sink, label, .. } in &source.sinks {
            deleted += sink
                .revoke()
                .await
                .map_err(|e| format!("{label}: {}", cause_chain(&e)))?;
        }
        Ok(deleted)
    }

    /// Deletes what earlier runs created for sinks that are no longer configured (each kind
    /// decides what that is and says what it did).
    pub async fn revoke_orphans(&self) {
        revoke_orphans(&self.loops, &self.state_dir).await;
    }

    /// Runs every source until `shutdown` turns true, then lets in-flight writes finish.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_with_reloads(shutdown, mpsc::channel(1).1).await;
    }

    /// Like [`Agent::run`], applying each configuration `reloads` delivers as a difference
    /// (`reload.rs`), and cutting the failure backoff of a source short when a credential file
    /// it reads changes (`credentials.rs`).
    ///
    /// The heartbeat starts first, so `/healthz` never waits on start-up work; the clean-up of
    /// orphans (remote calls, possibly to an unreachable portal) runs beside the sources, cut
    /// off after [`ORPHAN_CLEAN_UP_LIMIT`].
    pub async fn run_with_reloads(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut reloads: mpsc::Receiver<Reload>,
    ) {
        let mut tasks = JoinSet::new();
        let view = self.context.observability.clone();
        let mut heartbeat_stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                view.status.beat();
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT_PERIOD) => {}
                    _ = heartbeat_stop.wait_for(|stop| *stop) => break,
                }
            }
        });
        self.sweep_leftovers().await;
        let loops: Vec<Arc<SourceLoop>> = std::mem::take(&mut self.loops)
            .into_iter()
            .map(Arc::new)
            .collect();
        let (orphans_of, state_dir, mut stop) =
            (loops.clone(), self.state_dir.clone(), shutdown.clone());
        tasks.spawn(async move {
            let clean_up = revoke_orphans(&orphans_of, &state_dir);
            tokio::select! {
                done = tokio::time::timeout(ORPHAN_CLEAN_UP_LIMIT, clean_up) => if done.is_err() {
                    warn!(target: LOG_TARGET, limit = ?ORPHAN_CLEAN_UP_LIMIT, "the clean-up of removed sinks' entries ran out of time; the rest is tried at the next start");
                },
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
        if let Some(election) = self.election.clone() {
            let (context, kube, stop) = (self.context.clone(), self.kube.clone(), shutdown.clone());
            tasks.spawn(async move { election::elect(election, kube, context, stop).await });
        }
        let mut supervisor = Supervisor::default();
        for source in loops {
            supervisor.add(&mut tasks, source, &self.context);
        }
        let mut credentials = CredentialWatch::new(&supervisor);
        let mut reloading = true;
        loop {
            tokio::select! {
                joined = tasks.join_next_with_id() => match joined {
                    Some(joined) => supervisor.ended(joined, &mut tasks, &self.context),
                    None => break,
                },
                reload = reloads.recv(), if reloading && !*shutdown.borrow() => match reload {
                    Some(reload) => {
                        let outcome = self.reload(reload.config, &mut supervisor, &mut tasks).await;
                        credentials = CredentialWatch::new(&supervisor);
                        let _ = reload.reply.send(outcome);
                    }
                    None => reloading = false,
                },
                changed = credentials.changed() => credentials.poke(&changed, &supervisor),
                // Dropped at once: the reload branch awaits while holding the select's output.
                () = async { drop(shutdown.wait_for(|stop| *stop).await) }, if !supervisor.is_stopping() => supervisor.stop_all(),
            }
        }
    }

    /// Fetches (or adopts) one token per source, writes every sink, and reports per source.
    pub async fn once(self) -> Vec<OnceOutcome> {
        self.sweep_leftovers().await;
        let mut tasks = JoinSet::new();
        for source in self.loops {
            let context = self.context.clone();
            tasks.spawn(async move {
                let result = source.once(&context).await;
                OnceOutcome {
                    source: source.name,
                    required: source.status.required(),
                    result,
                }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) => outcomes.push(o),
                Err(e) => error!(error = %e, "a source task ended abnormally"),
            }
        }
        outcomes.sort_by(|a, b| a.source.cmp(&b.source));
        outcomes
    }
}

/// Records the places sinks name outright, so that no tenant id can take one over. Needed only
/// while some sink picks its place by tenant id; claiming is idempotent, so a reload simply
/// claims again for every loop.
fn claim_named_places<L: Borrow<SourceLoop>>(places: &Places, loops: &[L]) {
    let sinks = || {
        loops.iter().flat_map(|l| {
            l.borrow()
                .sinks
                .iter()
                .enumerate()
                .map(move |(i, s)| (l.borrow(), i, s))
        })
    };
    if !sinks().any(|(_, _, s)| matches!(s.place, SinkPlace::PerTenant(_))) {
        return;
    }
    for (source, index, sink) in sinks() {
        if let SinkPlace::Named(place) = &sink.place {
            let _ = places.claim(place, &source.owner(index)); // a duplicate: refused by `validate`
        }
    }
}

/// Every sink of `loops`, for the kind-level hooks.
fn sinks_of<L: Borrow<SourceLoop>>(loops: &[L]) -> Vec<&dyn Sink> {
    let sinks = loops.iter().flat_map(|l| &l.borrow().sinks);
    sinks.map(|s| s.sink.as_ref()).collect()
}

/// Each sink kind deletes what earlier runs created for sinks no longer configured.
async fn revoke_orphans<L: Borrow<SourceLoop>>(loops: &[L], state_dir: &Path) {
    let sinks = sinks_of(loops);
    let set = SinkSet {
        sinks: &sinks,
        state_dir,
    };
    SinkConfig::revoke_orphans(&set).await;
}
