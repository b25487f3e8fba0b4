//! Wall-clock time as the agent sees it.
//!
//! Expiry is a wall-clock fact (`exp`, `expires_at`), so the scheduler reasons in
//! [`SystemTime`]. Tests need to move that clock with `tokio::time::advance` and to make it
//! jump backwards; [`Clock::manual`] follows tokio's (pausable) clock plus a settable skew.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

#[derive(Debug)]
struct Manual {
    base: SystemTime,
    start: tokio::time::Instant,
    skew_ms: AtomicI64,
}

impl Clock {
    /// The real system clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// `base` plus the time elapsed on tokio's clock (which tests can pause and advance).
    pub fn manual(base: SystemTime) -> Self {
        Clock {
            manual: Some(Arc::new(Manual {
                base,
                start: tokio::time::Instant::now(),
                skew_ms: AtomicI64::new(0),
            })),
        }
    }

    /// Moves a manual clock by `delta_ms` (negative = backwards); no effect on the system clock.
    pub fn jump(&self, delta_ms: i64) {
        if let Some(m) = &self.manual {
            m.skew_ms.fetch_add(delta_ms, Ordering::SeqCst);
        }
    }

    pub fn now(&self) -> SystemTime {
        match &self.manual {
            None => SystemTime::now(),
            Some(m) => {
                let t = m.base + m.start.elapsed();
                let skew = m.skew_ms.load(Ordering::SeqCst);
                if skew >= 0 {
                    t + Duration::from_millis(skew as u64)
                } else {
                    t - Duration::from_millis(skew.unsigned_abs())
                }
            }
        }
    }
}
