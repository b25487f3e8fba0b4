//! Everything a source loop reports, as typed events: one `emit` writes the log line, counts
//! the metric and updates `/readyz` together, so the three can never drift apart (vector's
//! `internal_events`). The loop decides; this file only tells.

use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use super::LOG_TARGET;
use crate::error::{Reason, cause_chain};
use crate::metrics::SourceMetrics;
use crate::names::InstanceId;
use crate::observability::Observability;
use crate::sink::{SinkError, Written};
use crate::source::FetchError;
use crate::status::{BusyGuard, SourceEntry};
use crate::token::Token;

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// Where one source's events go: its name, its own series and status line, and the
/// observability view every source shares (metrics registry, clock).
pub(super) struct Reporter<'a> {
    pub source: &'a str,
    pub series: &'a SourceMetrics,
    pub status: &'a SourceEntry,
    pub view: &'a Observability,
}

/// One thing that happened to a source.
pub(super) trait Event {
    fn emit(self, to: &Reporter);
}

impl Reporter<'_> {
    pub fn emit(&self, event: impl Event) {
        event.emit(self);
    }

    /// Marks the source busy with `what` (bounded by `limit`) for `/healthz` until the guard
    /// is dropped, also when the operation is cancelled.
    pub fn busy(&self, what: &'static str, limit: Duration) -> BusyGuard<'_> {
        self.status.busy(what, limit)
    }

    fn set_error_reason(&self, reason: Option<&'static str>) {
        self.status.update(|s| s.last_error_reason = reason);
    }
}

/// A token left by an earlier run is reused instead of fetched.
pub(super) struct Adopted {
    pub expires_at: SystemTime,
}

impl Event for Adopted {
    fn emit(self, to: &Reporter) {
        info!(target: LOG_TARGET, source = %to.source, expires_at = %rfc3339(self.expires_at), "reusing the still-valid token found on disk");
    }
}

/// Another replica holds the Lease: the source waits, and counts as ready meanwhile.
pub(super) struct StandingBy;

impl Event for StandingBy {
    fn emit(self, to: &Reporter) {
        to.status.update(|s| s.standby = true);
        info!(target: LOG_TARGET, source = %to.source, "standing by: another replica holds the lease");
    }
}

/// This replica took the Lease over: the source runs again.
pub(super) struct Resumed;

impl Event for Resumed {
    fn emit(self, to: &Reporter) {
        to.status.update(|s| s.standby = false);
    }
}

/// The wall clock moved behind a token's issue time: every token is refreshed now.
pub(super) struct ClockWentBack;

impl Event for ClockWentBack {
    fn emit(self, to: &Reporter) {
        warn!(target: LOG_TARGET, source = %to.source, "wall clock moved backwards; refreshing now");
    }
}

/// A fetch in which every instance succeeded.
pub(super) struct Refreshed {
    pub took: Duration,
    pub now: SystemTime,
    pub fetched: usize,
    pub instances: usize,
    pub expires_at: Option<SystemTime>,
    pub next_refresh: SystemTime,
}

impl Event for Refreshed {
    fn emit(self, to: &Reporter) {
        to.series.observe_fetch(self.took, true);
        to.series.set_last_success(self.now);
        to.set_error_reason(None);
        let expires_at = self
            .expires_at
            .map(|t| rfc3339(t).to_string())
            .unwrap_or_default();
        info!(
            target: LOG_TARGET,
            source = %to.source,
            outcome = "success",
            duration_ms = self.took.as_millis() as u64,
            fetched = self.fetched,
            instances = self.instances,
            expires_at,
            next_refresh = %rfc3339(self.next_refresh),
            "token refreshed"
        );
    }
}

/// One failure in a fetch: of the whole fetch (instance [`InstanceId::single`]), or of one
/// instance in it, with the token that stays in place for it, if any.
pub(super) struct Failure<'a> {
    pub instance: &'a str,
    pub error: &'a FetchError,
    pub current: Option<&'a Token>,
}

/// A fetch that failed as a whole or for some instances: one log line and one count per
/// failure, and the first failure's reason on `/readyz`.
pub(super) struct RefreshFailed<'a> {
    pub took: Duration,
    pub now: SystemTime,
    pub next_attempt: SystemTime,
    pub failures: Vec<Failure<'a>>,
}

impl Event for RefreshFailed<'_> {
    fn emit(self, to: &Reporter) {
        to.series.observe_fetch(self.took, false);
        let duration_ms = self.took.as_millis() as u64;
        let next_attempt = rfc3339(self.next_attempt);
        for f in &self.failures {
            let reason = f.error.reason();
            to.view.metrics.count_failure(to.source, reason);
            let (source, instance, error) = (to.source, f.instance, cause_chain(f.error));
            match f.current.filter(|t| !t.is_expired(self.now)) {
                // Less than a quarter of its life left and still failing: say so loudly.
                Some(t) if t.remaining(self.now) < t.lifetime() / 4 => warn!(
                    target: LOG_TARGET,
                    source = %source, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                    expires_at = %rfc3339(t.expires_at),
                    "refresh keeps failing and the token in place expires soon"
                ),
                Some(t) => warn!(
                    target: LOG_TARGET,
                    source = %source, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                    expires_at = %rfc3339(t.expires_at),
                    "refresh failed; the current token stays in place"
                ),
                None => error!(
                    target: LOG_TARGET,
                    source = %source, instance, outcome = "failure", duration_ms, reason, %error, %next_attempt,
                    "refresh failed and no valid token is available"
                ),
            }
        }
        to.set_error_reason(self.failures.first().map(|f| f.error.reason()));
    }
}

/// An instance the source held is no longer listed upstream (a tenant that left).
pub(super) struct InstanceGone<'a> {
    pub instance: &'a InstanceId,
}

impl Event for InstanceGone<'_> {
    fn emit(self, to: &Reporter) {
        info!(target: LOG_TARGET, source = %to.source, instance = %self.instance, "instance went away upstream");
    }
}

/// A write to the sink at `index`, done or failed.
pub(super) struct SinkWrite<'a> {
    pub index: usize,
    pub label: &'a str,
    pub instance: &'a InstanceId,
    pub took: Duration,
    pub result: &'a Result<Written, SinkError>,
}

impl Event for SinkWrite<'_> {
    fn emit(self, to: &Reporter) {
        to.series.sink_written(self.index, self.took);
        let (source, instance, sink) = (to.source, self.instance, self.label);
        match self.result {
            Ok(Written::Replaced) => {
                debug!(target: LOG_TARGET, source = %source, instance = %instance, sink = %sink, "token written")
            }
            Ok(Written::Unchanged) => {}
            Err(e) => {
                to.view.metrics.count_sink_failure(source, sink, e.reason());
                warn!(target: LOG_TARGET, source = %source, instance = %instance, sink = %sink, reason = e.reason(), error = %cause_chain(e), "sink write failed; the previous token stays in place");
            }
        }
    }
}

/// The outputs of a gone instance removed from one sink, or not.
pub(super) struct InstanceRemoval<'a> {
    pub label: &'a str,
    pub instance: &'a InstanceId,
    pub result: &'a Result<(), SinkError>,
}

impl Event for InstanceRemoval<'_> {
    fn emit(self, to: &Reporter) {
        let (source, instance, sink) = (to.source, self.instance, self.label);
        match self.result {
            Ok(()) => {
                info!(target: LOG_TARGET, source = %source, instance = %instance, sink = %sink, "files of a removed instance deleted")
            }
            Err(e) => {
                to.view.metrics.count_sink_failure(source, sink, e.reason());
                warn!(target: LOG_TARGET, source = %source, instance = %instance, sink = %sink, reason = e.reason(), error = %cause_chain(e), "cannot remove the files of a removed instance");
            }
        }
    }
}

/// Where the source stands after a round: valid or not, until when, and when it fetches next.
pub(super) struct Published {
    pub valid: bool,
    pub expires_at: Option<SystemTime>,
    pub next_refresh: SystemTime,
}

impl Event for Published {
    fn emit(self, to: &Reporter) {
        to.series.set_valid(self.valid);
        to.series.set_next_refresh(self.next_refresh);
        if let Some(e) = self.expires_at {
            to.series.set_expiry(e);
        }
        to.status.update(|s| {
            s.ready = self.valid;
            s.expires_at = self.expires_at;
        });
    }
}

/// The loop ended (shutdown).
pub(super) struct Stopped;

impl Event for Stopped {
    fn emit(self, to: &Reporter) {
        debug!(target: LOG_TARGET, source = %to.source, "source loop stopped");
    }
}

/// A credential file of the source changed while it was backing off after a failure: it
/// fetches now instead of when the backoff ends.
pub(super) struct CredentialsChanged {
    pub was_due: SystemTime,
}

impl Event for CredentialsChanged {
    fn emit(self, to: &Reporter) {
        info!(target: LOG_TARGET, source = %to.source, backoff_was_until = %rfc3339(self.was_due), "a credential file changed; fetching now instead of waiting out the backoff");
    }
}

/// A reload removed a sink (or its source): what it wrote was removed by its own rules, or not.
pub(super) struct SinkRetired<'a> {
    pub label: &'a str,
    pub instances: usize,
    pub result: &'a Result<(), SinkError>,
}

impl Event for SinkRetired<'_> {
    fn emit(self, to: &Reporter) {
        let (source, sink) = (to.source, self.label);
        match self.result {
            Ok(()) => {
                info!(target: LOG_TARGET, source = %source, sink = %sink, instances = self.instances, "sink removed from the configuration: its outputs are removed")
            }
            Err(e) => {
                to.view.metrics.count_sink_failure(source, sink, e.reason());
                warn!(target: LOG_TARGET, source = %source, sink = %sink, reason = e.reason(), error = %cause_chain(e), "sink removed from the configuration: cannot remove its outputs; remove them by hand")
            }
        }
    }
}
