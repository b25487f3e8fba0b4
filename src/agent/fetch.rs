//! Asking a source for tokens, and taking in what it answered: new tokens, failures, tenants
//! that went away, and when to fetch next.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::LoopContext;
use super::report::{Failure, InstanceGone, RefreshFailed, Refreshed};
use super::source_loop::SourceLoop;
use super::state::LoopState;
use crate::error::cause_chain;
use crate::names::InstanceId;
use crate::schedule::refresh_delay;
use crate::source::{Fetch, FetchContext, FetchError, InstanceOutcome};

/// Failed instances named in the summary `once` prints; the rest are counted.
const MAX_NAMED: usize = 10;

/// With no instance to hold (a tenant list that came back empty), look again this often.
const EMPTY_RELIST: Duration = Duration::from_secs(300);

impl SourceLoop {
    /// One fetch, bounded by the global concurrency cap and marked busy for `/healthz`.
    /// Returns how long the fetch itself took.
    pub(super) async fn fetch(
        &self,
        context: &LoopContext,
        not_due: &BTreeSet<InstanceId>,
    ) -> (Result<Fetch, FetchError>, Duration) {
        // Waiting for a permit holds only the small semaphore future: at start every source
        // waits here at once, and the boxed fetch exists only once it may run.
        let _permit = context.fetch_permits.acquire().await;
        let report = self.reporter(context);
        let _busy = report.busy("fetch", self.fetch_limit);
        let started = tokio::time::Instant::now();
        let clock = context.observability.clock.clone();
        let now = move || clock.now();
        let result = self
            .source
            .fetch(&FetchContext { now: &now, not_due })
            .await;
        (result, started.elapsed())
    }

    /// Takes in a fetch outcome and reports it (one event per attempt, one log line per failed
    /// instance). Returns a summary of what failed, if anything did.
    pub(super) fn apply(
        &self,
        context: &LoopContext,
        state: &mut LoopState,
        outcome: Result<Fetch, FetchError>,
        took: Duration,
    ) -> Option<String> {
        let report = self.reporter(context);
        let now = context.observability.clock.now();
        let fetch = match outcome {
            Ok(fetch) => fetch,
            Err(e) => {
                self.back_off(state, now, e.retry_after());
                let whole = InstanceId::single();
                report.emit(RefreshFailed {
                    took,
                    now,
                    next_attempt: state.next_fetch,
                    failures: vec![Failure {
                        instance: whole.as_str(),
                        error: &e,
                        current: state.instances.get(whole.as_str()).map(|i| &i.token),
                    }],
                });
                return Some(cause_chain(&e));
            }
        };
        let random = fastrand::f64();
        let mut failures: Vec<(InstanceId, FetchError)> = Vec::new();
        let mut fetched = 0usize;
        let mut listed: BTreeSet<InstanceId> = BTreeSet::new();
        for (key, outcome) in fetch.instances {
            listed.insert(key.clone());
            match outcome {
                InstanceOutcome::Fetched(token) => {
                    let refresh_at = now + refresh_delay(&self.refresh, &token, now, random);
                    state.insert(key, token, refresh_at);
                    fetched += 1;
                }
                InstanceOutcome::Failed(e) => failures.push((key, e)),
                InstanceOutcome::Kept => {}
            }
        }
        let gone: Vec<InstanceId> = state
            .instances
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            state.instances.remove(key.as_str());
            report.emit(InstanceGone { instance: &key });
            if self.remove_gone {
                state
                    .removals
                    .extend((0..self.sinks.len()).map(|i| (key.clone(), i)));
            }
        }
        state.listed = true;
        state.next_sink_retry = now;
        let earliest_refresh = state.instances.values().map(|i| i.refresh_at).min();
        if failures.is_empty() && fetch.refused.is_empty() {
            state.fetch_backoff.reset();
            // Nothing to hold (no tenants yet): look again after max_interval at the latest.
            state.next_fetch =
                earliest_refresh.unwrap_or(now + self.refresh.max_interval.min(EMPTY_RELIST));
            report.emit(Refreshed {
                took,
                now,
                fetched,
                instances: state.instances.len(),
                expires_at: state.earliest_expiry(),
                next_refresh: state.next_fetch,
            });
            return None;
        }
        // Refused ids first: the source listed them before it fetched anything.
        let all_failures = fetch
            .refused
            .iter()
            .map(|(k, e)| (k.as_str(), e))
            .chain(failures.iter().map(|(k, e)| (k.as_str(), e)));
        let retry_after = all_failures
            .clone()
            .filter_map(|(_, e)| e.retry_after())
            .max();
        self.back_off(state, now, retry_after);
        if let Some(earliest) = earliest_refresh {
            state.next_fetch = state.next_fetch.min(earliest);
        }
        let failures: Vec<Failure> = all_failures
            .map(|(instance, error)| Failure {
                instance,
                error,
                current: state.instances.get(instance).map(|i| &i.token),
            })
            .collect();
        let mut named = failures
            .iter()
            .take(MAX_NAMED)
            .map(|f| f.instance)
            .collect::<Vec<_>>()
            .join(", ");
        if failures.len() > MAX_NAMED {
            named.push_str(&format!(" and {} more", failures.len() - MAX_NAMED));
        }
        let summary = format!(
            "{} instance(s) failed: {named}; first error: {}",
            failures.len(),
            cause_chain(failures[0].error)
        );
        report.emit(RefreshFailed {
            took,
            now,
            next_attempt: state.next_fetch,
            failures,
        });
        Some(summary)
    }

    fn back_off(&self, state: &mut LoopState, now: SystemTime, retry_after: Option<Duration>) {
        let delay = state.fetch_backoff.next_delay(fastrand::f64());
        state.next_fetch = now + retry_after.map_or(delay, |r| r.max(delay));
    }
}
