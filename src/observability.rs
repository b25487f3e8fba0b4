//! What the agent shows the outside — metrics, per-source status and the liveness heartbeat —
//! with the clock they are read against. The agent writes it; the HTTP server only reads it,
//! so the server depends on this view and never on the agent.

use std::time::Duration;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::status::Status;

/// How often the agent's liveness heartbeat ticks.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);

/// The heartbeat may miss this many beats before `/healthz` reports the agent as stuck.
const MISSED_BEATS: u32 = 6;

pub struct Observability {
    pub metrics: Metrics,
    pub status: Status,
    pub clock: Clock,
}

impl Observability {
    pub fn new(clock: Clock) -> Self {
        Observability {
            metrics: Metrics::new(),
            status: Status::default(),
            clock,
        }
    }

    /// `Ok` while the heartbeat is recent and no fetch or write has outlived its bound;
    /// otherwise why not (for `/healthz`).
    pub fn liveness(&self) -> Result<(), String> {
        self.status.liveness(HEARTBEAT_PERIOD * MISSED_BEATS)
    }
}
