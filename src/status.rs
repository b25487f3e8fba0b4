//! What `/readyz` reports and what `once` returns: per-source readiness, shared between the
//! source loops and the HTTP server. Holds no token.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// Shared state of every source plus the liveness heartbeat.
#[derive(Debug, Default)]
pub struct Status {
    sources: RwLock<BTreeMap<String, SourceStatus>>,
    heartbeat_unix_ms: AtomicU64,
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
                ready: s.ready && s.expires_at.is_some_and(|e| e > now),
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

    pub fn beat(&self, now: SystemTime) {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.heartbeat_unix_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the scheduler's heartbeat is more recent than `max_age`.
    pub fn alive(&self, now: SystemTime, max_age: Duration) -> bool {
        let last =
            UNIX_EPOCH + Duration::from_millis(self.heartbeat_unix_ms.load(Ordering::Relaxed));
        now.duration_since(last)
            .map(|age| age <= max_age)
            .unwrap_or(true)
    }
}
