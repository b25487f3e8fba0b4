//! What `/readyz` reports and what `once` returns: per-source readiness, shared between the
//! source loops and the HTTP server. Holds no token.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
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

/// Shared state of every source plus the liveness heartbeat.
/// Clears a source's [`Busy`] mark when dropped (also when the operation is cancelled).
pub struct BusyGuard<'a> {
    status: &'a Status,
    source: &'a str,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.status.update(self.source, |s| s.busy = None);
    }
}

#[derive(Debug)]
pub struct Status {
    sources: RwLock<BTreeMap<String, SourceStatus>>,
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
    pub fn register(&self, name: &str, required: bool) {
        let mut map = self.sources.write().unwrap_or_else(|p| p.into_inner());
        map.insert(
            name.to_owned(),
            SourceStatus {
                name: name.to_owned(),
                required,
                ..Default::default()
            },
        );
    }

    /// Forgets a source a reload removed.
    pub fn unregister(&self, name: &str) {
        let mut map = self.sources.write().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        let mut map = self.sources.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(name) {
            f(s);
        }
    }

    /// Every source, with `ready` re-evaluated against `now` (a token that expired while its
    /// source kept failing is no longer ready).
    pub fn snapshot(&self, now: SystemTime) -> Vec<SourceStatus> {
        let map = self.sources.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|s| SourceStatus {
                ready: s.standby || (s.ready && s.expires_at.is_some_and(|e| e > now)),
                ..s.clone()
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

    /// Marks `source` busy with `what` until the returned guard is dropped.
    pub fn busy<'a>(
        &'a self,
        source: &'a str,
        what: &'static str,
        limit: Duration,
    ) -> BusyGuard<'a> {
        let since = Instant::now();
        self.update(source, |s| s.busy = Some(Busy { what, since, limit }));
        BusyGuard {
            status: self,
            source,
        }
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
        let map = self.sources.read().unwrap_or_else(|p| p.into_inner());
        for s in map.values() {
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
        status.register("a", true);
        status.register("b", false);
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
}
