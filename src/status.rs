//! What `/readyz` reports and what `once` returns: per-source readiness, shared between the
//! source loops and the HTTP server. Holds no token.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    #[serde(skip)]
    pub required: bool,
    /// An unexpired token is in every sink of the source.
    pub ready: bool,
    #[serde(serialize_with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    pub last_error_reason: Option<&'static str>,
    /// Waiting for leadership (another replica holds the Lease): counts as ready.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
    /// A bounded operation in progress: what, since when, and how long it may take.
    #[serde(skip)]
    pub busy: Option<Busy>,
    /// The loop panicked (this many times) and is not running again yet.
    #[serde(skip)]
    pub panicked: Option<u32>,
}

/// A fetch or a sink write under way. Each has a bound (a fetch its HTTP timeout, a write a
/// fixed limit); one that outlives its bound means the loop is stuck (a hung volume, say), and
/// `/healthz` turns 503 so the kubelet restarts the agent. Measured on the monotonic clock: an
/// NTP step of the wall clock is not a stuck loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Busy {
    pub what: &'static str,
    pub since: Instant,
    pub limit: Duration,
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// One source's line. Its loop holds it and reports into it directly: a refresh reports
/// several times (busy, done, ready), and looking the name up in a map of 12 000 under one
/// write lock shared by every loop was a measurable part of the refresh (BENCHMARKS.md).
#[derive(Debug)]
pub struct SourceEntry(Mutex<SourceStatus>);

impl SourceEntry {
    pub fn new(name: &str, required: bool) -> Arc<SourceEntry> {
        Arc::new(SourceEntry(Mutex::new(SourceStatus {
            name: name.to_owned(),
            required,
            ..Default::default()
        })))
    }

    pub fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.lock());
    }

    /// Whether the source holds readiness back until it has a token.
    pub fn required(&self) -> bool {
        self.lock().required
    }

    /// Marks the source busy with `what` until the returned guard is dropped.
    pub fn busy(&self, what: &'static str, limit: Duration) -> BusyGuard<'_> {
        let since = Instant::now();
        self.update(|s| s.busy = Some(Busy { what, since, limit }));
        BusyGuard { entry: self }
    }

    fn lock(&self) -> MutexGuard<'_, SourceStatus> {
        // Plain fields, each written whole: a poisoned entry is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Clears a source's [`Busy`] mark when dropped (also when the operation is cancelled).
pub struct BusyGuard<'a> {
    entry: &'a SourceEntry,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.entry.update(|s| s.busy = None);
    }
}

/// Shared state of every source plus the liveness heartbeat.
#[derive(Debug)]
pub struct Status {
    /// The entry of every running source, by name; the map's lock is taken when sources come
    /// and go and when the server reads them, not on a refresh.
    sources: RwLock<BTreeMap<String, Arc<SourceEntry>>>,
    /// The last beat, on the monotonic clock; the first counts from creation, so `/healthz`
    /// is 200 from the start and 503 only if the heartbeat never gets going.
    heartbeat: Mutex<Instant>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            sources: RwLock::default(),
            heartbeat: Mutex::new(Instant::now()),
        }
    }
}

impl Status {
    /// Shows a new source's entry.
    pub fn register(&self, entry: &Arc<SourceEntry>) {
        let name = entry.lock().name.clone();
        self.write().insert(name, Arc::clone(entry));
    }

    /// Shows the entry of a new version of a running source in place of the old one's. The
    /// old readiness stands until the new loop reports; the old loop's busy mark does not
    /// come along (that loop has stopped, or clears only its own entry when it does).
    pub fn replace(&self, entry: &Arc<SourceEntry>) {
        let mut map = self.write();
        let mut new = entry.lock();
        if let Some(old) = map.get(&new.name).filter(|old| !Arc::ptr_eq(old, entry)) {
            let old = old.lock();
            new.ready = old.ready;
            new.expires_at = old.expires_at;
            new.last_error_reason = old.last_error_reason;
            new.standby = old.standby;
        }
        map.insert(new.name.clone(), Arc::clone(entry));
    }

    /// Forgets a source a reload removed.
    pub fn unregister(&self, name: &str) {
        self.write().remove(name);
    }

    /// Updates the entry of the source named `name`, if it runs (for the supervisor, which
    /// knows sources by name).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        let entry = self.read().get(name).cloned();
        if let Some(entry) = entry {
            entry.update(f);
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<SourceEntry>>> {
        self.sources.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<SourceEntry>>> {
        self.sources.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every source, with `ready` re-evaluated against `now` (a token that expired while its
    /// source kept failing is no longer ready).
    pub fn snapshot(&self, now: SystemTime) -> Vec<SourceStatus> {
        self.read()
            .values()
            .map(|entry| {
                let s = entry.lock();
                SourceStatus {
                    ready: s.standby || (s.ready && s.expires_at.is_some_and(|e| e > now)),
                    ..s.clone()
                }
            })
            .collect()
    }

    /// True once every required source is ready.
    pub fn all_required_ready(&self, now: SystemTime) -> bool {
        self.snapshot(now)
            .iter()
            .filter(|s| s.required)
            .all(|s| s.ready)
    }

    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// `Ok` while the heartbeat is more recent than `max_age`, no source loop is down after a
    /// panic and no operation has outlived its bound; otherwise why not (names a source and an
    /// operation, never a secret).
    pub fn liveness(&self, max_age: Duration) -> Result<(), String> {
        let now = Instant::now();
        let last = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(last) > max_age {
            return Err("the scheduler heartbeat stopped".into());
        }
        for entry in self.read().values() {
            let s = entry.lock();
            if let Some(panics) = s.panicked {
                return Err(format!(
                    "source `{}`: its loop panicked ({panics} time(s)) and is not running",
                    s.name
                ));
            }
            if let Some(b) = s.busy {
                let took = now.duration_since(b.since);
                if took > b.limit {
                    return Err(format!(
                        "source `{}`: {} has been running for {}s (limit {}s)",
                        s.name,
                        b.what,
                        took.as_secs(),
                        b.limit.as_secs()
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_needs_a_recent_heartbeat_from_the_start() {
        let status = Status::default();
        let max_age = Duration::from_secs(30);
        assert_eq!(
            status.liveness(max_age),
            Ok(()),
            "alive before the first beat"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            status.liveness(max_age),
            Err("the scheduler heartbeat stopped".into()),
            "…but only for as long as one beat may be late"
        );
        status.beat();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(status.liveness(max_age), Ok(()));
    }

    #[test]
    fn readiness_is_re_evaluated_against_expiry() {
        let status = Status::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        status.register(&SourceEntry::new("a", true));
        status.register(&SourceEntry::new("b", false));
        assert!(!status.all_required_ready(now));
        status.update("a", |s| {
            s.ready = true;
            s.expires_at = Some(now + Duration::from_secs(10));
        });
        assert!(
            status.all_required_ready(now),
            "an optional source does not hold readiness back"
        );
        assert!(
            !status.all_required_ready(now + Duration::from_secs(10)),
            "not ready once expired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_version_keeps_the_readiness_not_the_busy_mark_of_the_old() {
        let status = Status::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let old = SourceEntry::new("a", false);
        status.register(&old);
        old.update(|s| {
            s.ready = true;
            s.expires_at = Some(now + Duration::from_secs(60));
            s.last_error_reason = Some("http_5xx");
        });
        let stuck = old.busy("sink write", Duration::from_secs(1));

        let new = SourceEntry::new("a", true);
        status.replace(&new);
        let [line] = status.snapshot(now).try_into().unwrap();
        assert!(line.ready && line.required, "{line:?}");
        assert_eq!(line.expires_at, Some(now + Duration::from_secs(60)));
        assert_eq!(line.last_error_reason, Some("http_5xx"));
        assert_eq!(
            line.busy, None,
            "the old loop's write is not the new loop's"
        );

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            status.liveness(Duration::MAX),
            Ok(()),
            "the old entry is gone"
        );
        drop(stuck);
        old.update(|s| s.ready = false);
        assert!(
            status.snapshot(now)[0].ready,
            "the old loop reports into its own entry"
        );
        status.update("a", |s| s.panicked = Some(1));
        assert!(
            new.0.lock().unwrap().panicked.is_some(),
            "by name is the new entry"
        );
        status.replace(&new);
        assert_eq!(
            status.snapshot(now).len(),
            1,
            "replacing with itself keeps one entry"
        );
    }
}
