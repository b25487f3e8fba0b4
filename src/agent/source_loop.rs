//! The loop of one source: fetch when due, deliver to every sink, back off on failure, sleep
//! until the next thing to do. It never returns before shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::LoopContext;
use super::report::{Adopted, ClockWentBack, CredentialsChanged, Reporter, Stopped};
use super::state::LoopState;
use crate::config::{OnRemove, RefreshPolicy, RetryPolicy, SourcePrint};
use crate::metrics::SourceMetrics;
use crate::names::InstanceId;
use crate::notifier::Notifier;
use crate::schedule::refresh_delay;
use crate::sink::{Sink, TENANT};
use crate::source::{Source, jwt};
use crate::status::SourceEntry;
use crate::token::Token;

/// Longest sleep between two looks at the wall clock, so a clock that jumps (backwards, or
/// forwards after a suspend) is noticed within this time.
pub(super) const CLOCK_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// One source and everything its loop runs with.
pub(super) struct SourceLoop {
    pub name: String,
    /// This source's series (see `metrics.rs`).
    pub metrics: Arc<SourceMetrics>,
    /// This source's line in `/readyz` and `/healthz` (see `status.rs`).
    pub status: Arc<SourceEntry>,
    pub source: Box<dyn Source>,
    pub sinks: Vec<LoopSink>,
    pub refresh: RefreshPolicy,
    pub retry: RetryPolicy,
    /// A fetch running longer than this is stuck (its bound + grace).
    pub fetch_limit: Duration,
    /// Delete the outputs of instances that go away upstream.
    pub remove_gone: bool,
    /// Some sink needs the Lease, so the loop runs only on the holder under leader election.
    pub needs_leader: bool,
    /// May reuse a token an earlier run left (at start, not after a reload added or changed it).
    pub adopt: bool,
    /// Its settings as a reload compares them.
    pub print: SourcePrint,
    pub on_remove: OnRemove,
    /// A credential file it reads changed: a running failure backoff is cut short.
    pub credentials_changed: Notify,
    /// Its `notify:` actions, if any.
    pub notifier: Option<Arc<Notifier>>,
}

/// What the agent asks of a running loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    No,
    /// Stop, leaving every output in place (shutdown, `on_remove: keep`).
    Keep,
    /// Stop, then remove what these sinks (by index) wrote: a reload removed them.
    Retire(Arc<[usize]>),
}

impl Stop {
    pub fn is_set(&self) -> bool {
        *self != Stop::No
    }
}

/// A sink of the loop, with what the loop needs to know about it.
pub(super) struct LoopSink {
    pub sink: Box<dyn Sink>,
    /// Bounded label for metrics and logs.
    pub label: String,
    pub place: SinkPlace,
}

/// The place a sink writes, as `places.rs` records it.
pub(super) enum SinkPlace {
    /// Kept by the sink itself (an API-Portal entry per tenant).
    None,
    /// One place, taken from the start.
    Named(Box<str>),
    /// A pattern with `{tenant}` in it, claimed before each tenant's first write.
    PerTenant(Box<str>),
}

impl LoopSink {
    /// The place this sink writes for tenant `instance`, if it picks its place by tenant.
    pub fn place_of(&self, instance: &InstanceId) -> Option<String> {
        match &self.place {
            SinkPlace::PerTenant(pattern) => Some(pattern.replace(TENANT, instance.as_str())),
            _ => None,
        }
    }
}

impl SourceLoop {
    pub(super) fn reporter<'a>(&'a self, context: &'a LoopContext) -> Reporter<'a> {
        Reporter {
            source: &self.name,
            series: &self.metrics,
            status: &self.status,
            view: &context.observability,
        }
    }

    fn new_state(&self, adopted: Option<Token>, now: SystemTime) -> LoopState {
        LoopState::new(self.sinks.len(), &self.refresh, self.retry, adopted, now)
    }

    /// Runs until `stop` is set, then retires the sinks it names.
    pub async fn run(&self, context: &LoopContext, mut stop: watch::Receiver<Stop>) {
        let clock = &context.observability.clock;
        let report = self.reporter(context);
        let now = clock.now();
        // The source and sink futures are boxed: they are large and alive only while working,
        // so an idle source's task stays small (BENCHMARKS.md).
        let adopted = match self.adopt {
            true => Box::pin(self.adopt_existing(context, now)).await,
            false => None,
        };
        let mut state = self.new_state(adopted, now);
        state.announcer = self
            .notifier
            .as_ref()
            .map(|n| n.start(&self.name, context.observability.clone()));
        let mut leader = context.leader.subscribe();
        loop {
            if self.needs_leader && !*leader.borrow_and_update() {
                if !self
                    .wait_for_leadership(context, &mut leader, &mut stop)
                    .await
                {
                    break;
                }
                state.next_fetch = clock.now();
                continue;
            }
            let now = clock.now();
            if state.instances.values().any(|i| now < i.token.issued_at) {
                report.emit(ClockWentBack);
                state.next_fetch = now;
                for i in state.instances.values_mut() {
                    i.refresh_at = now;
                }
            }
            if now >= state.next_fetch {
                let not_due = state.not_due(now, &self.refresh);
                let (outcome, took) = tokio::select! {
                    r = self.fetch(context, &not_due) => r,
                    _ = stop.wait_for(Stop::is_set) => break,
                };
                self.apply(context, &mut state, outcome, took);
            }
            if self.needs_leader && !*leader.borrow() {
                continue; // leadership lost during the fetch: write nothing more
            }
            let now = clock.now();
            if now >= state.next_sink_retry {
                Box::pin(self.deliver(context, &mut state, now)).await;
            }
            self.publish(context, &state, now);

            let mut wake = state.next_fetch.min(now + CLOCK_CHECK_PERIOD);
            if state.pending_sinks(now) {
                wake = wake.min(state.next_sink_retry);
            }
            if let Some(expiry) = state.earliest_expiry().filter(|e| *e > now) {
                wake = wake.min(expiry);
            }
            let sleep = wake.duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = leader.changed(), if self.needs_leader => {}
                _ = self.credentials_changed.notified() => {
                    let now = clock.now();
                    if !state.fetch_backoff.is_reset() && state.next_fetch > now {
                        report.emit(CredentialsChanged { was_due: state.next_fetch });
                        state.next_fetch = now;
                    }
                }
                _ = stop.wait_for(Stop::is_set) => break,
            }
        }
        report.emit(Stopped);
        let retired = match &*stop.borrow() {
            Stop::Retire(sinks) => sinks.clone(),
            _ => return,
        };
        Box::pin(self.retire(context, &state, &retired)).await;
    }

    /// A token left in a sink by an earlier run that is still before its refresh point.
    async fn adopt_existing(&self, context: &LoopContext, now: SystemTime) -> Option<Token> {
        let mut best: Option<Token> = None;
        for LoopSink { sink, .. } in &self.sinks {
            if let Some(t) = sink
                .load_existing()
                .await
                .and_then(|t| self.plausible(t, now))
                && !refresh_delay(&self.refresh, &t, now, 0.0).is_zero()
                && best.as_ref().is_none_or(|b| t.expires_at > b.expires_at)
            {
                best = Some(t);
            }
        }
        if let Some(t) = &best {
            self.reporter(context).emit(Adopted {
                expires_at: t.expires_at,
            });
        }
        best
    }

    /// A token found on disk as far as the agent believes its record: issued in the past,
    /// living no longer than `max_interval` (the agent would have fetched again by then), and
    /// expiring no later than its own `exp` claim when it is a JWT. A planted record with a
    /// far-future expiry so cannot keep an expired token in place, nor `/readyz` at 200.
    fn plausible(&self, mut token: Token, now: SystemTime) -> Option<Token> {
        if token.issued_at > now {
            return None;
        }
        let longest = token.issued_at.checked_add(self.refresh.max_interval);
        let claimed = jwt::expiry(token.secret());
        let cap = [longest, claimed].into_iter().flatten().min()?;
        token.expires_at = token.expires_at.min(cap);
        Some(token)
    }

    /// `once` mode: adopt or fetch, write every sink, no retries.
    pub async fn once(&self, context: &LoopContext) -> Result<(), String> {
        let clock = &context.observability.clock;
        let now = clock.now();
        let adopted = self.adopt_existing(context, now).await;
        let mut state = self.new_state(adopted, now);
        if !state.listed {
            let (outcome, took) = self.fetch(context, &BTreeSet::new()).await;
            if let Some(problem) = self.apply(context, &mut state, outcome, took) {
                self.deliver(context, &mut state, clock.now()).await;
                return Err(format!("fetch failed: {problem}"));
            }
        }
        self.deliver(context, &mut state, clock.now()).await;
        self.publish(context, &state, clock.now());
        if state.pending_sinks(clock.now()) {
            return Err("one or more sinks could not be written".into());
        }
        Ok(())
    }
}
