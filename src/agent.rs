//! The agent: one independent loop per source that owns all timing — when to fetch, how long
//! to back off, when to retry a sink — and records what happened in metrics, logs and status.

mod instances;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use self::instances::Instances;
use crate::clock::Clock;
use crate::config::{Config, RefreshPolicy, RetryPolicy};
use crate::leader::{Elector, LeaderElectionConfig};
use crate::metrics::{Metrics, SourceMetrics};
use crate::schedule::{Backoff, refresh_delay};
use crate::sink::api_portal::ApiPortalSink;
use crate::sink::{KubeContext, Sink, SinkContext, Written};
use crate::source::client::{HttpClients, cause_chain};
use crate::source::{BuildError, Fetch, FetchContext, FetchError, InstanceOutcome, SINGLE, Source};
use crate::status::Status;
use crate::token::Token;

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// Longest sleep between two looks at the wall clock, so a clock that jumps (backwards, or
/// forwards after a suspend) is noticed within this time.
const CLOCK_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// Longest a sink write may take before the loop counts as stuck (see `/healthz`).
const SINK_WRITE_LIMIT: Duration = Duration::from_secs(60);

/// Grace beyond the HTTP timeout before a fetch counts as stuck.
const FETCH_GRACE: Duration = Duration::from_secs(30);

/// With no instance to hold (a tenant list that came back empty), look again this often.
const EMPTY_RELIST: Duration = Duration::from_secs(300);

/// How often the liveness heartbeat ticks.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);

/// State shared by the source loops and the HTTP server.
pub struct Shared {
    pub metrics: Metrics,
    pub status: Status,
    pub clock: Clock,
    fetch_permits: Semaphore,
    /// Whether this replica may run sources that write Secrets (always, without election).
    leader: watch::Sender<bool>,
}

/// A source could not be built (a CA file is unreadable, …); names the source.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {error}")]
pub struct AgentBuildError {
    pub source_name: String,
    #[source]
    pub error: BuildError,
}

struct SourceRunner {
    name: String,
    required: bool,
    /// This source's series (see `metrics.rs`).
    metrics: Arc<SourceMetrics>,
    source: Source,
    sinks: Vec<(Sink, String)>,
    refresh: RefreshPolicy,
    retry: RetryPolicy,
    /// A fetch running longer than this is stuck (its bound + grace).
    fetch_limit: Duration,
    /// Delete the files of instances that go away upstream.
    remove_gone: bool,
    /// Writes Secrets, so runs only on the Lease holder when leader election is on.
    needs_leader: bool,
}

pub struct Agent {
    runners: Vec<SourceRunner>,
    shared: Arc<Shared>,
    election: Option<LeaderElectionConfig>,
    kube: KubeContext,
    state_dir: std::path::PathBuf,
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
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            status: Status::default(),
            clock,
            fetch_permits: Semaphore::new(config.max_concurrent_fetches.max(1)),
            leader: watch::Sender::new(!config.leader_election.enabled),
        });
        let clients = HttpClients::default();
        let mut runners = Vec::with_capacity(config.sources.len());
        for s in &config.sources {
            let http = s.http.resolve(&config.defaults.http);
            let source = s
                .spec
                .build(&http, &clients, &kube)
                .map_err(|error| AgentBuildError {
                    source_name: s.name.clone(),
                    error,
                })?;
            let state_dir = config.state_dir();
            let ctx = SinkContext {
                file: &config.defaults.file,
                kube: &kube,
                state_dir: &state_dir,
                http: &http,
                clients: &clients,
            };
            let mut sinks: Vec<(Sink, String)> = Vec::with_capacity(s.sinks.len());
            for c in &s.sinks {
                let sink = c.build(&s.name, &ctx).map_err(|e| AgentBuildError {
                    source_name: s.name.clone(),
                    error: BuildError::Invalid(e),
                })?;
                let label = sink.label();
                sinks.push((sink, label));
            }
            shared.status.register(&s.name, s.required);
            let labels: Vec<String> = sinks.iter().map(|(_, label)| label.clone()).collect();
            let metrics = shared
                .metrics
                .register_source(&s.name, s.spec.kind(), &labels);
            runners.push(SourceRunner {
                name: s.name.clone(),
                metrics,
                required: s.required,
                source,
                sinks,
                refresh: s.refresh.resolve(&config.defaults.refresh),
                retry: s.retry.resolve(&config.defaults.retry),
                fetch_limit: s.spec.fetch_bound(http.timeout) + FETCH_GRACE,
                remove_gone: s.spec.removes_gone_instances(),
                needs_leader: config.leader_election.enabled
                    && s.sinks.iter().any(|k| k.kind() == "secret"),
            });
        }
        sweep_stale_temporaries(&runners);
        shared.metrics.set_sources(runners.len());
        shared.metrics.set_leader(!config.leader_election.enabled);
        let election = config
            .leader_election
            .enabled
            .then(|| config.leader_election.clone());
        Ok(Agent {
            runners,
            shared,
            election,
            kube,
            state_dir: config.state_dir(),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn portal_sinks(&self) -> impl Iterator<Item = (&str, &ApiPortalSink)> {
        self.runners.iter().flat_map(|r| {
            r.sinks.iter().filter_map(move |(sink, _)| match sink {
                Sink::ApiPortal(p) => Some((r.name.as_str(), p)),
                _ => None,
            })
        })
    }

    /// `token-agent revoke`: deletes every API-Portal entry recorded for `source` and forgets
    /// the ids. Returns how many were deleted.
    pub async fn revoke(&self, source: &str) -> Result<usize, String> {
        if !self.runners.iter().any(|r| r.name == source) {
            return Err(format!("no source named `{source}` in the configuration"));
        }
        let mut deleted = 0;
        for (_, portal) in self.portal_sinks().filter(|(name, _)| *name == source) {
            for instance in portal.stored_instances() {
                portal
                    .remove(&instance)
                    .await
                    .map_err(|e| format!("{}: {}", portal.label(), cause_chain(&e)))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes API-Portal entries recorded by sinks or sources that are no longer configured,
    /// with the credentials of a configured sink for the same portal; without one, says so.
    pub async fn revoke_orphans(&self) {
        for (path, state) in crate::sink::api_portal::recorded(&self.state_dir) {
            if self
                .portal_sinks()
                .any(|(_, p)| p.owns(&state.source, &state.portal, &state.user))
            {
                continue;
            }
            match self
                .portal_sinks()
                .find(|(_, p)| p.portal() == state.portal)
            {
                Some((_, p)) => match p.delete_recorded(&path, &state.token_id).await {
                    Ok(()) => {
                        info!(source = %state.source, portal = %state.portal, "deleted the API-Portal entry of a removed sink")
                    }
                    Err(e) => {
                        warn!(source = %state.source, portal = %state.portal, error = %cause_chain(&e), "cannot delete the API-Portal entry of a removed sink")
                    }
                },
                None => warn!(
                    source = %state.source, portal = %state.portal, state = %path.display(),
                    "an API-Portal entry of a removed sink remains: no configured sink has credentials for that portal; delete it in the portal, then remove the state file"
                ),
            }
        }
    }

    /// Runs every source until `shutdown` turns true, then lets in-flight writes finish.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.revoke_orphans().await;
        let mut tasks = JoinSet::new();
        let shared = self.shared.clone();
        let mut heartbeat_stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                shared.status.beat(shared.clock.now());
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT_PERIOD) => {}
                    _ = heartbeat_stop.wait_for(|stop| *stop) => break,
                }
            }
        });
        if let Some(election) = self.election.clone() {
            let (shared, kube, stop) = (self.shared.clone(), self.kube.clone(), shutdown.clone());
            tasks.spawn(async move { elect(election, kube, shared, stop).await });
        }
        for runner in self.runners {
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { runner.run(&shared, shutdown).await });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "a source loop ended abnormally");
            }
        }
    }

    /// Fetches (or adopts) one token per source, writes every sink, and reports per source.
    pub async fn once(self) -> Vec<OnceOutcome> {
        let mut tasks = JoinSet::new();
        for runner in self.runners {
            let shared = self.shared.clone();
            tasks.spawn(async move {
                let result = runner.once(&shared).await;
                OnceOutcome {
                    source: runner.name,
                    required: runner.required,
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

/// One token of a source (the only one, or a tenant's) and where it has been delivered.
struct Instance {
    token: Token,
    /// `delivered[i]`: sink `i` holds this token.
    delivered: Vec<bool>,
    refresh_at: SystemTime,
}

/// Removes what killed writes of an earlier run left in the sink directories, one directory
/// read each, before any write of this run starts.
fn sweep_stale_temporaries(runners: &[SourceRunner]) {
    let mut by_dir: BTreeMap<std::path::PathBuf, BTreeSet<String>> = BTreeMap::new();
    for (sink, _) in runners.iter().flat_map(|r| &r.sinks) {
        if let Sink::File(f) = sink
            && let Some((dir, prefixes)) = f.stale_prefixes()
        {
            by_dir.entry(dir).or_default().extend(prefixes);
        }
    }
    for (dir, prefixes) in by_dir {
        crate::sink::atomic::remove_stale_temporaries(&dir, &prefixes);
    }
}

/// Runs leader election until `shutdown`, publishing leadership to the source loops and the
/// `token_agent_leader` metric. Without a Kubernetes client it keeps trying, as a follower.
async fn elect(
    config: LeaderElectionConfig,
    kube: KubeContext,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let identity = crate::leader::identity();
    let elector = loop {
        match Elector::new(&config, &kube, identity.clone(), shared.clock.clone()).await {
            Ok(e) => break e,
            Err(e) => {
                error!(error = %e, "leader election cannot start; standing by");
                tokio::select! {
                    _ = tokio::time::sleep(config.renew_every) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    };
    info!(identity = %elector.identity(), lease = %config.lease, "leader election started");
    let (tx, mut rx) = (shared.leader.clone(), shared.leader.subscribe());
    let metrics_shared = shared.clone();
    let mirror = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            metrics_shared.metrics.set_leader(*rx.borrow());
        }
    });
    elector.run(config.renew_every, tx, shutdown).await;
    shared.metrics.set_leader(false);
    mirror.abort();
}

/// Per-source loop state.
struct Progress {
    instances: Instances<Instance>,
    /// A fetch has listed the instances (until then an empty set means "unknown").
    listed: bool,
    /// Files of instances that went away, still to be removed: (instance, sink index).
    removals: Vec<(String, usize)>,
    next_fetch: SystemTime,
    next_sink_retry: SystemTime,
    fetch_backoff: Backoff,
    sink_backoff: Backoff,
}

impl Progress {
    fn new(runner: &SourceRunner, adopted: Option<Token>, now: SystemTime) -> Self {
        let mut p = Progress {
            instances: Instances::default(),
            listed: false,
            removals: Vec::new(),
            next_fetch: now,
            next_sink_retry: now,
            fetch_backoff: Backoff::new(runner.retry),
            sink_backoff: Backoff::new(runner.retry),
        };
        if let Some(token) = adopted {
            p.next_fetch = now + refresh_delay(&runner.refresh, &token, now, fastrand::f64());
            p.insert(runner, SINGLE, token, p.next_fetch);
            p.listed = true;
        }
        p
    }

    fn insert(&mut self, runner: &SourceRunner, key: &str, token: Token, refresh_at: SystemTime) {
        // An issuer that hands out the same token again (same value and expiry) changes
        // nothing the sinks hold: keep what was delivered instead of rewriting it.
        if let Some(held) = self.instances.get_mut(key)
            && held.token.same_value(&token)
            && held.token.expires_at == token.expires_at
            && held.token.token_type == token.token_type
            && held.token.metadata == token.metadata
        {
            held.refresh_at = refresh_at;
            return;
        }
        let delivered = vec![false; runner.sinks.len()];
        self.instances.insert(
            key.to_owned(),
            Instance {
                token,
                delivered,
                refresh_at,
            },
        );
    }

    /// Instances whose token is not due before the next `min_interval`.
    fn fresh(&self, now: SystemTime, policy: &RefreshPolicy) -> BTreeSet<String> {
        self.instances
            .iter()
            .filter(|(_, i)| i.refresh_at > now + policy.min_interval)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn earliest_expiry(&self) -> Option<SystemTime> {
        self.instances.values().map(|i| i.token.expires_at).min()
    }

    /// Some sink still lacks a valid token, or a removal is pending.
    fn pending_sinks(&self, now: SystemTime) -> bool {
        !self.removals.is_empty()
            || self
                .instances
                .values()
                .any(|i| !i.token.is_expired(now) && i.delivered.iter().any(|d| !d))
    }

    /// Every instance has an unexpired token in every sink.
    fn valid(&self, now: SystemTime) -> bool {
        self.listed
            && self.removals.is_empty()
            && self
                .instances
                .values()
                .all(|i| !i.token.is_expired(now) && i.delivered.iter().all(|d| *d))
    }
}

impl SourceRunner {
    async fn run(&self, shared: &Shared, mut shutdown: watch::Receiver<bool>) {
        let clock = &shared.clock;
        let now = clock.now();
        // The source and sink futures are boxed: they are large (every source and sink kind)
        // and alive only while working, so an idle source's task stays small (BENCHMARKS.md).
        let adopted = Box::pin(self.adopt_existing(now)).await;
        let mut p = Progress::new(self, adopted, now);
        let mut leader = shared.leader.subscribe();
        loop {
            if self.needs_leader && !*leader.borrow_and_update() {
                shared.status.update(&self.name, |s| s.standby = true);
                info!(source = %self.name, "standing by: another replica holds the lease");
                tokio::select! {
                    _ = leader.wait_for(|l| *l) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                shared.status.update(&self.name, |s| s.standby = false);
                p.next_fetch = clock.now();
                continue;
            }
            let now = clock.now();
            if p.instances.values().any(|i| now < i.token.issued_at) {
                warn!(source = %self.name, "wall clock moved backwards; refreshing now");
                p.next_fetch = now;
                for i in p.instances.values_mut() {
                    i.refresh_at = now;
                }
            }
            if now >= p.next_fetch {
                let fresh = p.fresh(now, &self.refresh);
                let (outcome, took) = tokio::select! {
                    r = self.fetch(shared, &fresh) => r,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                self.after_fetch(shared, &mut p, outcome, took);
            }
            let now = clock.now();
            if now >= p.next_sink_retry {
                Box::pin(self.deliver(shared, &mut p, now)).await;
            }
            self.publish(shared, &p, now);

            let mut wake = p.next_fetch.min(now + CLOCK_CHECK_PERIOD);
            if p.pending_sinks(now) {
                wake = wake.min(p.next_sink_retry);
            }
            if let Some(expiry) = p.earliest_expiry().filter(|e| *e > now) {
                wake = wake.min(expiry);
            }
            let sleep = wake.duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = leader.changed(), if self.needs_leader => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        debug!(source = %self.name, "source loop stopped");
    }

    /// A token left in a sink by an earlier run that is still before its refresh point.
    async fn adopt_existing(&self, now: SystemTime) -> Option<Token> {
        let mut best: Option<Token> = None;
        for (sink, _) in &self.sinks {
            if let Some(t) = sink.load_existing().await
                && !refresh_delay(&self.refresh, &t, now, 0.0).is_zero()
                && best.as_ref().is_none_or(|b| t.expires_at > b.expires_at)
            {
                best = Some(t);
            }
        }
        if let Some(t) = &best {
            info!(source = %self.name, expires_at = %rfc3339(t.expires_at), "reusing the still-valid token found on disk");
        }
        best
    }

    /// One fetch, bounded by the global concurrency cap and marked busy for `/healthz`.
    /// Returns how long the fetch itself took.
    async fn fetch(
        &self,
        shared: &Shared,
        fresh: &BTreeSet<String>,
    ) -> (Result<Fetch, FetchError>, Duration) {
        // Waiting for a permit holds only the small semaphore future: at start every source
        // waits here at once, and the boxed fetch (~2.6 KiB) exists only once it may run.
        let _permit = shared.fetch_permits.acquire().await;
        let _busy = shared
            .status
            .busy(&self.name, "fetch", shared.clock.now(), self.fetch_limit);
        let started = tokio::time::Instant::now();
        let now = || shared.clock.now();
        let result = Box::pin(self.source.fetch(&FetchContext { now: &now, fresh })).await;
        (result, started.elapsed())
    }

    /// Applies a fetch outcome, records it, and logs one event per attempt (and one per failed
    /// instance). Returns a summary of what failed, if anything did.
    fn after_fetch(
        &self,
        shared: &Shared,
        p: &mut Progress,
        outcome: Result<Fetch, FetchError>,
        took: Duration,
    ) -> Option<String> {
        let now = shared.clock.now();
        let duration_ms = took.as_millis() as u64;
        let fetch = match outcome {
            Ok(fetch) => fetch,
            Err(e) => {
                self.metrics.observe_fetch(took, false);
                shared.metrics.count_failure(&self.name, e.reason());
                self.back_off(p, now, e.retry_after());
                self.log_failure(p, now, duration_ms, None, &e);
                shared
                    .status
                    .update(&self.name, |s| s.last_error_reason = Some(e.reason()));
                return Some(cause_chain(&e));
            }
        };
        let random = fastrand::f64();
        let mut failures: Vec<(String, FetchError)> = Vec::new();
        let mut fetched = 0usize;
        let listed: BTreeSet<String> = fetch.instances.iter().map(|(k, _)| k.clone()).collect();
        for (key, outcome) in fetch.instances {
            match outcome {
                InstanceOutcome::Fetched(token) => {
                    let refresh_at = now + refresh_delay(&self.refresh, &token, now, random);
                    p.insert(self, &key, token, refresh_at);
                    fetched += 1;
                }
                InstanceOutcome::Failed(e) => failures.push((key, e)),
                InstanceOutcome::Kept => {}
            }
        }
        let gone: Vec<String> = p
            .instances
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            p.instances.remove(&key);
            info!(source = %self.name, instance = %key, "instance went away upstream");
            if self.remove_gone {
                p.removals
                    .extend((0..self.sinks.len()).map(|i| (key.clone(), i)));
            }
        }
        p.listed = true;
        p.next_sink_retry = now;
        self.metrics.observe_fetch(took, failures.is_empty());
        let earliest_refresh = p.instances.values().map(|i| i.refresh_at).min();
        if failures.is_empty() {
            p.fetch_backoff.reset();
            self.metrics.set_last_success(now);
            shared
                .status
                .update(&self.name, |s| s.last_error_reason = None);
            // Nothing to hold (no tenants yet): look again after max_interval at the latest.
            p.next_fetch =
                earliest_refresh.unwrap_or(now + self.refresh.max_interval.min(EMPTY_RELIST));
            let expires_at = p
                .earliest_expiry()
                .map(rfc3339)
                .map(|t| t.to_string())
                .unwrap_or_default();
            info!(
                source = %self.name,
                outcome = "success",
                duration_ms,
                fetched,
                instances = p.instances.len(),
                expires_at,
                next_refresh = %rfc3339(p.next_fetch),
                "token refreshed"
            );
            return None;
        }
        let retry_after = failures.iter().filter_map(|(_, e)| e.retry_after()).max();
        self.back_off(p, now, retry_after);
        if let Some(earliest) = earliest_refresh {
            p.next_fetch = p.next_fetch.min(earliest);
        }
        for (key, e) in &failures {
            shared.metrics.count_failure(&self.name, e.reason());
            self.log_failure(p, now, duration_ms, Some(key), e);
        }
        let reason = failures[0].1.reason();
        shared
            .status
            .update(&self.name, |s| s.last_error_reason = Some(reason));
        let names: Vec<&str> = failures.iter().map(|(k, _)| k.as_str()).collect();
        Some(format!(
            "{} instance(s) failed: {}; first error: {}",
            failures.len(),
            names.join(", "),
            cause_chain(&failures[0].1)
        ))
    }

    fn back_off(&self, p: &mut Progress, now: SystemTime, retry_after: Option<Duration>) {
        let delay = p.fetch_backoff.next_delay(fastrand::f64());
        p.next_fetch = now + retry_after.map_or(delay, |r| r.max(delay));
    }

    fn log_failure(
        &self,
        p: &Progress,
        now: SystemTime,
        duration_ms: u64,
        instance: Option<&str>,
        e: &FetchError,
    ) {
        let reason = e.reason();
        let error = cause_chain(e);
        let next_attempt = rfc3339(p.next_fetch);
        let instance = instance.unwrap_or(SINGLE);
        let current = p
            .instances
            .get(instance)
            .map(|i| &i.token)
            .filter(|t| !t.is_expired(now));
        match current {
            // Less than a quarter of its life left and still failing: say so loudly.
            Some(t) if t.remaining(now) < t.lifetime() / 4 => warn!(
                source = %self.name, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                expires_at = %rfc3339(t.expires_at),
                "refresh keeps failing and the token in place expires soon"
            ),
            Some(t) => warn!(
                source = %self.name, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                expires_at = %rfc3339(t.expires_at),
                "refresh failed; the current token stays in place"
            ),
            None => error!(
                source = %self.name, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                "refresh failed and no valid token is available"
            ),
        }
    }

    /// Writes every valid token to every sink that lacks it, and removes the files of
    /// instances that went away.
    async fn deliver(&self, shared: &Shared, p: &mut Progress, now: SystemTime) {
        let mut failed = false;
        for (key, instance) in p
            .instances
            .iter_mut()
            .filter(|(_, i)| !i.token.is_expired(now))
        {
            for (i, (sink, label)) in self.sinks.iter().enumerate() {
                if instance.delivered[i] {
                    continue;
                }
                let started = tokio::time::Instant::now();
                let written = {
                    let _busy = shared.status.busy(
                        &self.name,
                        "sink write",
                        shared.clock.now(),
                        SINK_WRITE_LIMIT,
                    );
                    sink.write(&instance.token, key).await
                };
                self.metrics.sink_written(i, started.elapsed());
                match written {
                    Ok(w) => {
                        if w == Written::Replaced {
                            debug!(source = %self.name, instance = %key, sink = %label, "token written");
                        }
                        instance.delivered[i] = true;
                    }
                    Err(e) => {
                        failed = true;
                        shared
                            .metrics
                            .count_sink_failure(&self.name, label, e.reason());
                        warn!(source = %self.name, instance = %key, sink = %label, reason = e.reason(), error = %cause_chain(&e), "sink write failed; the previous token stays in place");
                    }
                }
            }
        }
        let mut still = Vec::new();
        for (key, i) in std::mem::take(&mut p.removals) {
            let (sink, label) = &self.sinks[i];
            match sink.remove(&key).await {
                Ok(()) => {
                    info!(source = %self.name, instance = %key, sink = %label, "files of a removed instance deleted")
                }
                Err(e) => {
                    failed = true;
                    shared
                        .metrics
                        .count_sink_failure(&self.name, label, e.reason());
                    warn!(source = %self.name, instance = %key, sink = %label, reason = e.reason(), error = %cause_chain(&e), "cannot remove the files of a removed instance");
                    still.push((key, i));
                }
            }
        }
        p.removals = still;
        if failed {
            p.next_sink_retry = now + p.sink_backoff.next_delay(fastrand::f64());
        } else {
            p.sink_backoff.reset();
        }
    }

    fn publish(&self, shared: &Shared, p: &Progress, now: SystemTime) {
        let valid = p.valid(now);
        let expires_at = p.earliest_expiry();
        self.metrics.set_valid(valid);
        self.metrics.set_next_refresh(p.next_fetch);
        if let Some(e) = expires_at {
            self.metrics.set_expiry(e);
        }
        shared.status.update(&self.name, |s| {
            s.ready = valid;
            s.expires_at = expires_at;
        });
    }

    /// `once` mode: adopt or fetch, write every sink, no retries.
    async fn once(&self, shared: &Shared) -> Result<(), String> {
        let now = shared.clock.now();
        let adopted = self.adopt_existing(now).await;
        let mut p = Progress::new(self, adopted, now);
        if !p.listed {
            let (outcome, took) = self.fetch(shared, &BTreeSet::new()).await;
            if let Some(problem) = self.after_fetch(shared, &mut p, outcome, took) {
                self.deliver(shared, &mut p, shared.clock.now()).await;
                return Err(format!("fetch failed: {problem}"));
            }
        }
        self.deliver(shared, &mut p, shared.clock.now()).await;
        self.publish(shared, &p, shared.clock.now());
        if p.pending_sinks(shared.clock.now()) {
            return Err("one or more sinks could not be written".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::scripted::Scripted;

    const SEC: Duration = Duration::from_secs(1);

    fn config(dir: &Path, names: &[&str]) -> Config {
        let sources: String = names
            .iter()
            .map(|n| format!("  - {{ name: {n}, kind: oauth2, token_url: 'http://127.0.0.1:9/t', auth: none, sinks: [ {{ file: {{ path: {n}.token }} }} ] }}\n"))
            .collect();
        let yaml = format!(
            "defaults:\n  refresh: {{ at: 80%, jitter: 10%, min_interval: 1s }}\n  retry: {{ initial: 1s, max: 8s }}\n  file: {{ dir: '{}' }}\nsources:\n{sources}",
            dir.display()
        );
        Config::parse(&yaml, Path::new("test.yaml")).unwrap()
    }

    fn agent(dir: &Path, scripts: &[Scripted]) -> (Agent, Clock) {
        let names: Vec<String> = (0..scripts.len()).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let clock = Clock::manual(SystemTime::now());
        let mut agent = Agent::build(&config(dir, &names), clock.clone()).unwrap();
        for (runner, script) in agent.runners.iter_mut().zip(scripts) {
            runner.source = Source::Scripted(script.clone());
        }
        (agent, clock)
    }

    fn start(agent: Agent) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        (tx, tokio::spawn(agent.run(rx)))
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    fn offsets(calls: &[SystemTime]) -> Vec<f64> {
        calls
            .iter()
            .map(|c| c.duration_since(calls[0]).unwrap().as_secs_f64())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_between_70_and_80_percent_of_the_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let script = Scripted::new([
            (Duration::ZERO, Ok(100 * SEC)),
            (Duration::ZERO, Ok(100 * SEC)),
            (Duration::ZERO, Ok(100 * SEC)),
        ]);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let shared = agent.shared();
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC).await;
        assert_eq!(read(dir.path(), "s0.token"), "token-1");
        assert!(shared.status.all_required_ready(shared.clock.now()));
        tokio::time::sleep(68 * SEC).await;
        assert_eq!(
            script.calls().len(),
            1,
            "no refresh before 70% of the lifetime"
        );
        tokio::time::sleep(12 * SEC).await;
        assert_eq!(script.calls().len(), 2, "refreshed by 80% of the lifetime");
        assert_eq!(read(dir.path(), "s0.token"), "token-2");
        let gap = offsets(&script.calls())[1];
        assert!((70.0..=80.0).contains(&gap), "refresh after {gap}s");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_keep_the_last_good_token_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = vec![(Duration::ZERO, Ok(60 * SEC))];
        steps.extend((0..20).map(|_| (Duration::ZERO, Err("idp down"))));
        let script = Scripted::new(steps);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let shared = agent.shared();
        let (stop, task) = start(agent);
        tokio::time::sleep(50 * SEC).await;
        // First refresh attempt happened between 42 s and 48 s, and failed.
        assert!(script.calls().len() >= 2);
        assert_eq!(
            read(dir.path(), "s0.token"),
            "token-1",
            "the last good token stays in place"
        );
        assert!(
            shared.status.all_required_ready(shared.clock.now()),
            "still ready while the token is valid"
        );
        tokio::time::sleep(20 * SEC).await;
        let now = shared.clock.now();
        assert!(
            !shared.status.all_required_ready(now),
            "not ready once the token has expired"
        );
        assert_eq!(
            shared.status.snapshot(now)[0].last_error_reason,
            Some("http_5xx")
        );
        assert_eq!(
            read(dir.path(), "s0.token"),
            "token-1",
            "an expired token is not deleted"
        );
        let at = offsets(&script.calls());
        let gaps: Vec<f64> = at.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
        for (gap, full) in gaps.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(
                *gap >= full * 0.75 - 1e-6 && *gap <= full + 1e-6,
                "gaps {gaps:?}"
            );
        }
        assert!(gaps.len() >= 3, "gaps {gaps:?}");
        stop.send(true).unwrap();
        task.await.unwrap();
        let metrics = shared.metrics.encode();
        assert!(
            metrics
                .contains("token_agent_refresh_failures_total{reason=\"http_5xx\",source=\"s0\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("token_agent_token_valid{source=\"s0\"} 0"),
            "{metrics}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_after_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let fail = (Duration::ZERO, Err("down"));
        let script = Scripted::new([fail, fail, fail, (Duration::ZERO, Ok(1000 * SEC)), fail]);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let (stop, task) = start(agent);
        tokio::time::sleep(9 * SEC).await;
        assert_eq!(
            script.calls().len(),
            4,
            "three failures (1 s, 2 s, 4 s backoff) then a success"
        );
        assert_eq!(read(dir.path(), "s0.token"), "token-4");
        tokio::time::sleep(900 * SEC).await;
        let at = offsets(&script.calls());
        assert!(at.len() >= 6, "{at:?}");
        assert!(
            (700.0..=800.0).contains(&(at[4] - at[3])),
            "refresh at 70-80% of the lifetime: {at:?}"
        );
        assert!(
            at[5] - at[4] <= 1.0 + 1e-6,
            "first retry after the success waits the initial delay again: {at:?}"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_that_jumps_backwards_forces_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let script = Scripted::new([
            (Duration::ZERO, Ok(3600 * SEC)),
            (Duration::ZERO, Ok(3600 * SEC)),
        ]);
        let (agent, clock) = agent(dir.path(), std::slice::from_ref(&script));
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC).await;
        clock.jump(-600_000);
        tokio::time::sleep(CLOCK_CHECK_PERIOD + SEC).await;
        assert_eq!(script.calls().len(), 2);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_does_not_delay_another() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Scripted::new([(3000 * SEC, Ok(100 * SEC))]);
        let fast = Scripted::new([(Duration::ZERO, Ok(100 * SEC))]);
        let (agent, _) = agent(dir.path(), &[slow, fast]);
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC).await;
        assert_eq!(read(dir.path(), "s1.token"), "token-1");
        assert_eq!(read(dir.path(), "s0.token"), "");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sink_is_retried_without_fetching_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s0.token")).unwrap(); // a directory where the file goes
        let script = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let shared = agent.shared();
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC / 2).await;
        assert!(
            !shared.status.all_required_ready(shared.clock.now()),
            "not ready while a sink lacks the token"
        );
        std::fs::remove_dir(dir.path().join("s0.token")).unwrap();
        tokio::time::sleep(5 * SEC).await;
        assert_eq!(read(dir.path(), "s0.token"), "token-1");
        assert_eq!(script.calls().len(), 1, "the token was not fetched again");
        assert!(shared.status.all_required_ready(shared.clock.now()));
        assert!(shared.metrics.encode().contains("reason=\"not_a_file\""));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// Every source is one task, alive for the agent's lifetime: its idle state must stay
    /// small (10 000 sources × 3 KiB was a quarter of the agent's memory).
    #[test]
    fn an_idle_source_loop_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, _) = agent(dir.path(), &[Scripted::default()]);
        let shared = agent.shared();
        let (_tx, rx) = watch::channel(false);
        let run = agent.runners[0].run(&shared, rx);
        assert!(size_of_val(&run) <= 1024, "{} bytes", size_of_val(&run));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_token_again_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut script = Scripted::new((0..10).map(|_| (Duration::ZERO, Ok(SEC))));
        let (mut agent, clock) = agent(dir.path(), &[Scripted::default()]);
        script.same_token_until = Some(clock.now() + 100 * SEC);
        agent.runners[0].source = Source::Scripted(script.clone());
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC).await;
        let inode = || {
            std::fs::metadata(dir.path().join("s0.token"))
                .unwrap()
                .ino()
        };
        let first = inode();
        tokio::time::sleep(97 * SEC).await;
        assert!(script.calls().len() >= 3, "{:?}", script.calls());
        assert_eq!(read(dir.path(), "s0.token"), "token-same");
        assert_eq!(inode(), first, "the file was not replaced");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn warm_restart_reuses_a_valid_token_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let first = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
        let (agent1, _) = agent(dir.path(), std::slice::from_ref(&first));
        let (stop, task) = start(agent1);
        tokio::time::sleep(SEC).await;
        stop.send(true).unwrap();
        task.await.unwrap();

        let second = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
        let (agent2, _) = agent(dir.path(), std::slice::from_ref(&second));
        let shared = agent2.shared();
        let (stop, task) = start(agent2);
        tokio::time::sleep(SEC).await;
        assert_eq!(
            second.calls().len(),
            0,
            "no fetch: the token on disk is still valid"
        );
        assert_eq!(read(dir.path(), "s0.token"), "token-1");
        assert!(shared.status.all_required_ready(shared.clock.now()));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrent_fetches_caps_fetches_across_sources() {
        let dir = tempfile::tempdir().unwrap();
        let slow = || Scripted::new([(10 * SEC, Ok(1000 * SEC))]);
        let scripts = [slow(), slow(), slow()];
        let names = ["s0", "s1", "s2"];
        let mut one_at_a_time = config(dir.path(), &names);
        one_at_a_time.max_concurrent_fetches = 1;
        let mut agent = Agent::build(&one_at_a_time, Clock::manual(SystemTime::now())).unwrap();
        for (runner, script) in agent.runners.iter_mut().zip(&scripts) {
            runner.source = Source::Scripted(script.clone());
        }
        let (stop, task) = start(agent);
        tokio::time::sleep(31 * SEC).await;
        let mut starts: Vec<SystemTime> = scripts.iter().flat_map(|s| s.calls()).collect();
        starts.sort();
        let at = offsets(&starts);
        assert_eq!(at.len(), 3);
        assert!(
            (at[1] - 10.0).abs() < 0.01 && (at[2] - 20.0).abs() < 0.01,
            "one fetch at a time: {at:?}"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_stuck_past_its_bound_fails_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let script = Scripted::new([(1000 * SEC, Ok(100 * SEC))]);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let shared = agent.shared();
        let (stop, task) = start(agent);
        let max_age = HEARTBEAT_PERIOD * 6;
        tokio::time::sleep(39 * SEC).await;
        assert_eq!(
            shared.status.liveness(shared.clock.now(), max_age),
            Ok(()),
            "a slow fetch within its bound is fine"
        );
        tokio::time::sleep(2 * SEC).await;
        let why = shared
            .status
            .liveness(shared.clock.now(), max_age)
            .unwrap_err();
        assert_eq!(
            why,
            "source `s0`: fetch has been running for 41s (limit 40s)"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(
            shared.status.liveness(shared.clock.now(), Duration::MAX),
            Ok(()),
            "the mark goes with the cancelled fetch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn once_reports_each_source() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Scripted::new([(Duration::ZERO, Ok(100 * SEC))]);
        let bad = Scripted::new([(Duration::ZERO, Err("nope"))]);
        let (agent, _) = agent(dir.path(), &[ok, bad]);
        let outcomes = agent.once().await;
        assert!(outcomes[0].result.is_ok());
        let err = outcomes[1].result.as_ref().unwrap_err();
        assert!(err.contains("HTTP 503") && err.contains("nope"), "{err}");
        assert_eq!(read(dir.path(), "s0.token"), "token-1");
    }
}
