//! Prometheus metrics, in one registry owned by the agent (no global state, so tests do not
//! leak series into each other). The agent records around sources and sinks; sources and sinks
//! themselves know nothing about metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const FETCH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

pub struct Metrics {
    registry: Registry,
    refresh_duration: HistogramVec,
    refresh_total: IntCounterVec,
    refresh_failures: IntCounterVec,
    token_expiry: GaugeVec,
    last_success: GaugeVec,
    token_valid: IntGaugeVec,
    next_refresh: GaugeVec,
    sink_write_duration: HistogramVec,
    sink_failures: IntCounterVec,
    sources: IntGauge,
    leader: IntGauge,
}

/// `prometheus` only fails registration on a duplicate or malformed name, which the fixed
/// names below never are; such a failure is a programming error caught by the tests.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        // Names and label sets are constants: construction cannot fail.
        let m = (|| -> prometheus::Result<Metrics> {
            Ok(Metrics {
                refresh_duration: registered(
                    &r,
                    histogram(
                        "token_agent_refresh_duration_seconds",
                        "Duration of each fetch attempt.",
                        FETCH_BUCKETS,
                        &["source", "kind"],
                    )?,
                ),
                refresh_total: registered(
                    &r,
                    IntCounterVec::new(
                        opts("token_agent_refresh_total", "Fetch attempts by result."),
                        &["source", "result"],
                    )?,
                ),
                refresh_failures: registered(
                    &r,
                    IntCounterVec::new(
                        opts(
                            "token_agent_refresh_failures_total",
                            "Failed fetches by reason.",
                        ),
                        &["source", "reason"],
                    )?,
                ),
                token_expiry: registered(
                    &r,
                    GaugeVec::new(
                        opts(
                            "token_agent_token_expiry_timestamp_seconds",
                            "Expiry of the current token (Unix time).",
                        ),
                        &["source"],
                    )?,
                ),
                last_success: registered(
                    &r,
                    GaugeVec::new(
                        opts(
                            "token_agent_token_last_success_timestamp_seconds",
                            "Time of the last successful fetch (Unix time).",
                        ),
                        &["source"],
                    )?,
                ),
                token_valid: registered(
                    &r,
                    IntGaugeVec::new(
                        opts(
                            "token_agent_token_valid",
                            "1 while an unexpired token is in every sink of the source.",
                        ),
                        &["source"],
                    )?,
                ),
                next_refresh: registered(
                    &r,
                    GaugeVec::new(
                        opts(
                            "token_agent_next_refresh_timestamp_seconds",
                            "When the next fetch is planned (Unix time).",
                        ),
                        &["source"],
                    )?,
                ),
                sink_write_duration: registered(
                    &r,
                    histogram(
                        "token_agent_sink_write_duration_seconds",
                        "Duration of each sink write.",
                        WRITE_BUCKETS,
                        &["source", "sink"],
                    )?,
                ),
                sink_failures: registered(
                    &r,
                    IntCounterVec::new(
                        opts(
                            "token_agent_sink_failures_total",
                            "Failed sink writes by reason.",
                        ),
                        &["source", "sink", "reason"],
                    )?,
                ),
                sources: registered(
                    &r,
                    IntGauge::with_opts(opts("token_agent_sources", "Configured sources."))?,
                ),
                leader: registered(
                    &r,
                    IntGauge::with_opts(opts(
                        "token_agent_leader",
                        "1 while this replica holds the lease (always 1 without leader election).",
                    ))?,
                ),
                registry: r.clone(),
            })
        })();
        let m = match m {
            Ok(m) => m,
            Err(e) => unreachable!("static metric definitions are valid: {e}"),
        };
        if let Ok(info) = IntGaugeVec::new(
            opts("token_agent_build_info", "Build information."),
            &["version"],
        ) {
            registered(&m.registry, info)
                .with_label_values(&[env!("CARGO_PKG_VERSION")])
                .set(1);
        }
        #[cfg(target_os = "linux")]
        {
            let _ = m.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        m
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Creates a source's series at zero, so `rate()` and absence alerts work from the start.
    pub fn register_source(&self, source: &str, kind: &str, sinks: &[String]) {
        for result in ["success", "failure"] {
            self.refresh_total.with_label_values(&[source, result]);
        }
        self.refresh_duration.with_label_values(&[source, kind]);
        self.token_valid.with_label_values(&[source]).set(0);
        for sink in sinks {
            self.sink_write_duration.with_label_values(&[source, sink]);
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_sources(&self, n: usize) {
        self.sources.set(n as i64);
    }

    /// One fetch attempt: its duration and whether it (entirely) succeeded.
    pub fn observe_fetch(&self, source: &str, kind: &str, took: Duration, success: bool) {
        self.refresh_duration
            .with_label_values(&[source, kind])
            .observe(took.as_secs_f64());
        let result = if success { "success" } else { "failure" };
        self.refresh_total
            .with_label_values(&[source, result])
            .inc();
    }

    /// One failure (of the whole fetch, or of one instance in it).
    pub fn count_failure(&self, source: &str, reason: &str) {
        self.refresh_failures
            .with_label_values(&[source, reason])
            .inc();
    }

    pub fn set_last_success(&self, source: &str, at: SystemTime) {
        self.last_success.with_label_values(&[source]).set(unix(at));
    }

    /// Expiry of the token in place (the earliest, for a per-tenant source).
    pub fn set_expiry(&self, source: &str, expires_at: SystemTime) {
        self.token_expiry
            .with_label_values(&[source])
            .set(unix(expires_at));
    }

    pub fn sink_written(&self, source: &str, sink: &str, took: Duration) {
        self.sink_write_duration
            .with_label_values(&[source, sink])
            .observe(took.as_secs_f64());
    }

    pub fn sink_failed(&self, source: &str, sink: &str, took: Duration, reason: &str) {
        self.sink_write_duration
            .with_label_values(&[source, sink])
            .observe(took.as_secs_f64());
        self.sink_failures
            .with_label_values(&[source, sink, reason])
            .inc();
    }

    pub fn set_valid(&self, source: &str, valid: bool) {
        self.token_valid
            .with_label_values(&[source])
            .set(i64::from(valid));
    }

    pub fn set_next_refresh(&self, source: &str, at: SystemTime) {
        self.next_refresh.with_label_values(&[source]).set(unix(at));
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
