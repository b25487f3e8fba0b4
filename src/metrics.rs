//! Prometheus metrics, in one registry owned by the agent (no global state, so tests do not
//! leak series into each other). The agent records around sources and sinks; sources and sinks
//! themselves know nothing about metrics.
//!
//! The series every source has (fetch histogram and counts, expiry, validity, sink write
//! histograms) live in a compact [`SourceMetrics`] per source and are written straight into
//! the text exposition at scrape time: `prometheus` metric objects cost ~2.2 KiB per source,
//! a fifth of the agent's memory at 10 000 sources (BENCHMARKS.md). Sparse and global series
//! (failures by reason, leader, build info, process) stay in the `prometheus` registry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const FETCH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

pub struct Metrics {
    registry: Registry,
    refresh_failures: IntCounterVec,
    sink_failures: IntCounterVec,
    sources: IntGauge,
    leader: IntGauge,
    config_reloads: IntCounterVec,
    config_last_success: Gauge,
    config_last_ok: IntGauge,
    config_info: IntGaugeVec,
    notify: IntCounterVec,
    per_source: RwLock<Vec<Arc<SourceMetrics>>>,
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
        // Names and label sets are constants: construction cannot fail.
        let m = (|| -> prometheus::Result<Metrics> {
            Ok(Metrics {
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
                config_reloads: registered(
                    &r,
                    IntCounterVec::new(
                        opts(
                            "token_agent_config_reloads_total",
                            "Configuration reloads by result (success, failure).",
                        ),
                        &["result"],
                    )?,
                ),
                config_last_success: registered(
                    &r,
                    Gauge::with_opts(opts(
                        "token_agent_config_last_reload_success_timestamp_seconds",
                        "When the configuration in force was loaded (Unix time).",
                    ))?,
                ),
                config_last_ok: registered(
                    &r,
                    IntGauge::with_opts(opts(
                        "token_agent_config_last_reload_successful",
                        "1 if the last configuration load succeeded, 0 if the file now there was refused.",
                    ))?,
                ),
                config_info: registered(
                    &r,
                    IntGaugeVec::new(
                        opts(
                            "token_agent_config_info",
                            "1, labelled with a hash of the configuration file in force.",
                        ),
                        &["hash"],
                    )?,
                ),
                notify: registered(
                    &r,
                    IntCounterVec::new(
                        opts(
                            "token_agent_notify_total",
                            "Notify actions run after a token change, by result (success, failure, timeout).",
                        ),
                        &["source", "action", "result"],
                    )?,
                ),
                registry: r.clone(),
                per_source: RwLock::default(),
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
        let mut text = String::from_utf8(out).unwrap_or_default();
        let sources = self.per_source.read().unwrap_or_else(|e| e.into_inner());
        encode_per_source(&mut text, &sources);
        text
    }

    /// Creates a source's series (at zero, so `rate()` and absence alerts work from the start)
    /// and publishes them: the handle the agent records them through.
    pub fn register_source(
        &self,
        source: &str,
        kind: &'static str,
        sinks: &[String],
    ) -> Arc<SourceMetrics> {
        let series = self.series_for(source, kind, sinks);
        self.publish_series(series.clone());
        series
    }

    /// A source's series, at zero, not yet in the exposition (see [`Metrics::publish_series`]).
    pub fn series_for(
        &self,
        source: &str,
        kind: &'static str,
        sinks: &[String],
    ) -> Arc<SourceMetrics> {
        Arc::new(SourceMetrics {
            source: source.into(),
            kind,
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            fetch: Buckets::new(FETCH_BUCKETS),
            valid: AtomicBool::new(false),
            expiry: Timestamp::default(),
            last_success: Timestamp::default(),
            next_refresh: Timestamp::default(),
            sinks: sinks
                .iter()
                .map(|label| (label.as_str().into(), Buckets::new(WRITE_BUCKETS)))
                .collect(),
        })
    }

    /// Puts the series of a source not published yet in the exposition (at start: no search).
    pub fn add_series(&self, series: Arc<SourceMetrics>) {
        let mut all = self.per_source.write().unwrap_or_else(|e| e.into_inner());
        all.push(series);
    }

    /// Puts `series` in the exposition, in place of the series of a source of the same name.
    pub fn publish_series(&self, series: Arc<SourceMetrics>) {
        let mut all = self.per_source.write().unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|s| s.source == series.source) {
            Some(slot) => *slot = series,
            None => all.push(series),
        }
    }

    /// Takes the series of a source a reload removed out of the exposition.
    pub fn remove_series(&self, source: &str) {
        let mut all = self.per_source.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|s| &*s.source != source);
    }

    /// The configuration hashed `hash` is in force since `at` (start or a successful reload).
    pub fn config_loaded(&self, hash: &str, at: SystemTime, reloaded: bool) {
        if reloaded {
            self.config_reloads.with_label_values(&["success"]).inc();
        } else {
            // Both results exist from the start, so `increase()` sees the first failure.
            for result in ["success", "failure"] {
                self.config_reloads.with_label_values(&[result]);
            }
        }
        self.config_last_success.set(unix(at));
        self.config_last_ok.set(1);
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// A reload was refused; the configuration in force stays.
    pub fn config_reload_failed(&self) {
        self.config_reloads.with_label_values(&["failure"]).inc();
        self.config_last_ok.set(0);
    }

    /// One notify action of `source` ran, with `result` (success, failure, timeout).
    pub fn count_notify(&self, source: &str, action: &str, result: &str) {
        self.notify
            .with_label_values(&[source, action, result])
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_sources(&self, n: usize) {
        self.sources.set(n as i64);
    }

    /// One failure (of the whole fetch, or of one instance in it).
    pub fn count_failure(&self, source: &str, reason: &str) {
        self.refresh_failures
            .with_label_values(&[source, reason])
            .inc();
    }

    /// One failed sink write (its duration goes to [`SourceMetrics::sink_written`]).
    pub fn count_sink_failure(&self, source: &str, sink: &str, reason: &str) {
        self.sink_failures
            .with_label_values(&[source, sink, reason])
            .inc();
    }
}

/// The series of one source, recorded without locks or lookups.
pub struct SourceMetrics {
    source: Box<str>,
    kind: &'static str,
    success: AtomicU64,
    failure: AtomicU64,
    fetch: Buckets,
    valid: AtomicBool,
    expiry: Timestamp,
    last_success: Timestamp,
    next_refresh: Timestamp,
    /// One write histogram per sink, in the source's sink order.
    sinks: Box<[(Box<str>, Buckets)]>,
}

impl SourceMetrics {
    /// One fetch attempt: its duration and whether it (entirely) succeeded.
    pub fn observe_fetch(&self, took: Duration, success: bool) {
        self.fetch.observe(took);
        let counter = if success {
            &self.success
        } else {
            &self.failure
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_last_success(&self, at: SystemTime) {
        self.last_success.set(at);
    }

    /// Expiry of the token in place (the earliest, for a per-tenant source).
    pub fn set_expiry(&self, expires_at: SystemTime) {
        self.expiry.set(expires_at);
    }

    pub fn set_valid(&self, valid: bool) {
        self.valid.store(valid, Ordering::Relaxed);
    }

    pub fn set_next_refresh(&self, at: SystemTime) {
        self.next_refresh.set(at);
    }

    /// A write (successful or not) to the sink at `index`.
    pub fn sink_written(&self, index: usize, took: Duration) {
        if let Some((_, buckets)) = self.sinks.get(index) {
            buckets.observe(took);
        }
    }
}

/// A histogram as plain atomics: per-bucket counts (not cumulative), count and sum.
struct Buckets {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// f64 bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, took: Duration) {
        let v = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A Unix-time gauge that is absent until first set.
struct Timestamp(AtomicU64);

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp(AtomicU64::new(f64::NAN.to_bits()))
    }
}

impl Timestamp {
    fn set(&self, at: SystemTime) {
        self.0.store(unix(at).to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Ordering::Relaxed))).filter(|v| !v.is_nan())
    }
}

/// Reads one gauge of a source; `None` while it has never been set.
type GaugeValue = fn(&SourceMetrics) -> Option<f64>;

/// Appends the per-source families in the text exposition format (version 0.0.4), labels in
/// name order as the `prometheus` encoder writes them.
fn encode_per_source(out: &mut String, sources: &[Arc<SourceMetrics>]) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    if sources.is_empty() {
        return;
    }
    family(
        out,
        "token_agent_refresh_duration_seconds",
        "histogram",
        "Duration of each fetch attempt.",
    );
    for s in sources {
        let labels = format!("kind=\"{}\",source=\"{}\"", s.kind, escape(&s.source));
        histogram(
            out,
            "token_agent_refresh_duration_seconds",
            &labels,
            &s.fetch,
        );
    }
    family(
        out,
        "token_agent_refresh_total",
        "counter",
        "Fetch attempts by result.",
    );
    for s in sources {
        let source = escape(&s.source);
        for (result, n) in [("failure", &s.failure), ("success", &s.success)] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "token_agent_refresh_total{{result=\"{result}\",source=\"{source}\"}} {n}"
            );
        }
    }
    let gauges: [(&str, &str, GaugeValue); 4] = [
        (
            "token_agent_token_expiry_timestamp_seconds",
            "Expiry of the current token (Unix time).",
            |s| s.expiry.get(),
        ),
        (
            "token_agent_token_last_success_timestamp_seconds",
            "Time of the last successful fetch (Unix time).",
            |s| s.last_success.get(),
        ),
        (
            "token_agent_token_valid",
            "1 while an unexpired token is in every sink of the source.",
            |s| Some(f64::from(u8::from(s.valid.load(Ordering::Relaxed)))),
        ),
        (
            "token_agent_next_refresh_timestamp_seconds",
            "When the next fetch is planned (Unix time).",
            |s| s.next_refresh.get(),
        ),
    ];
    for (name, help, value) in gauges {
        if sources.iter().all(|s| value(s).is_none()) {
            continue;
        }
        family(out, name, "gauge", help);
        for s in sources {
            if let Some(v) = value(s) {
                let _ = writeln!(
                    out,
                    "{name}{{source=\"{}\"}} {}",
                    escape(&s.source),
                    number(v)
                );
            }
        }
    }
    if sources.iter().all(|s| s.sinks.is_empty()) {
        return;
    }
    family(
        out,
        "token_agent_sink_write_duration_seconds",
        "histogram",
        "Duration of each sink write.",
    );
    for s in sources {
        for (sink, buckets) in s.sinks.iter() {
            let labels = format!("sink=\"{}\",source=\"{}\"", escape(sink), escape(&s.source));
            histogram(
                out,
                "token_agent_sink_write_duration_seconds",
                &labels,
                buckets,
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, b: &Buckets) {
    let mut cumulative = 0;
    for (bound, count) in b.bounds.iter().zip(b.counts.iter()) {
        cumulative += count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            number(*bound)
        );
    }
    let count = b.count.load(Ordering::Relaxed);
    let sum = f64::from_bits(b.sum.load(Ordering::Relaxed));
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", number(sum));
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// A sample value as the exposition format spells it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Label value escaping of the text format: backslash, double quote and line feed.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec};

    /// What README promises: a source's series exist at zero before its first event.
    #[test]
    fn a_sources_series_exist_at_zero_from_the_start() {
        let m = Metrics::new();
        m.register_source("orders", "oauth2", &["file:/t/orders.token".to_owned()]);
        let text = m.encode();
        for series in [
            "token_agent_refresh_total{result=\"failure\",source=\"orders\"} 0",
            "token_agent_refresh_total{result=\"success\",source=\"orders\"} 0",
            "token_agent_token_valid{source=\"orders\"} 0",
            "token_agent_refresh_duration_seconds_count{kind=\"oauth2\",source=\"orders\"} 0",
            "token_agent_sink_write_duration_seconds_count{sink=\"file:/t/orders.token\",source=\"orders\"} 0",
        ] {
            assert!(text.contains(series), "missing `{series}` in:\n{text}");
        }
    }

    /// The hand-written exposition says exactly what the `prometheus` encoder says for the
    /// same series (escaping, bucket bounds, cumulative counts, sums, label order).
    #[test]
    fn per_source_text_matches_the_prometheus_encoder() {
        let (source, sinks) = (
            "a\"b\\c",
            ["file:/x\ny".to_owned(), "secret:ns/n".to_owned()],
        );
        let m = Metrics::new();
        let s = m.register_source(source, "oauth2", &sinks);
        let unregistered = m.register_source("idle", "http", &[]);
        let at = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let fetches = [(20, true), (3_000, false), (100_000, true), (5, true)];
        for (ms, ok) in fetches {
            s.observe_fetch(Duration::from_millis(ms), ok);
        }
        s.sink_written(0, Duration::from_micros(700));
        s.sink_written(0, Duration::from_secs(9));
        s.sink_written(7, Duration::from_secs(1)); // no such sink: ignored
        s.set_valid(true);
        s.set_expiry(at);
        s.set_next_refresh(at);
        drop(unregistered);

        let r = Registry::new();
        let hist = |name: &str, help: &str, b: &[f64], labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
                .unwrap();
            r.register(Box::new(h.clone())).unwrap();
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["source"]).unwrap();
            r.register(Box::new(g.clone())).unwrap();
            g
        };
        let fetch = hist(
            "token_agent_refresh_duration_seconds",
            "Duration of each fetch attempt.",
            FETCH_BUCKETS,
            &["source", "kind"],
        );
        let total = IntCounterVec::new(
            Opts::new("token_agent_refresh_total", "Fetch attempts by result."),
            &["source", "result"],
        )
        .unwrap();
        r.register(Box::new(total.clone())).unwrap();
        for (ms, ok) in fetches {
            fetch
                .with_label_values(&[source, "oauth2"])
                .observe(Duration::from_millis(ms).as_secs_f64());
            total
                .with_label_values(&[source, if ok { "success" } else { "failure" }])
                .inc();
        }
        fetch.with_label_values(&["idle", "http"]);
        total.with_label_values(&["idle", "success"]);
        total.with_label_values(&["idle", "failure"]);
        let valid = gauge(
            "token_agent_token_valid",
            "1 while an unexpired token is in every sink of the source.",
        );
        valid.with_label_values(&[source]).set(1.0);
        valid.with_label_values(&["idle"]).set(0.0);
        let t = unix(at);
        gauge(
            "token_agent_token_expiry_timestamp_seconds",
            "Expiry of the current token (Unix time).",
        )
        .with_label_values(&[source])
        .set(t);
        gauge(
            "token_agent_next_refresh_timestamp_seconds",
            "When the next fetch is planned (Unix time).",
        )
        .with_label_values(&[source])
        .set(t);
        let writes = hist(
            "token_agent_sink_write_duration_seconds",
            "Duration of each sink write.",
            WRITE_BUCKETS,
            &["source", "sink"],
        );
        writes
            .with_label_values(&[source, &sinks[0]])
            .observe(0.0007);
        writes.with_label_values(&[source, &sinks[0]]).observe(9.0);
        writes.with_label_values(&[source, &sinks[1]]);

        let mut reference = Vec::new();
        TextEncoder::new()
            .encode(&r.gather(), &mut reference)
            .unwrap();
        let mut ours = String::new();
        encode_per_source(&mut ours, &m.per_source.read().unwrap());
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(
            sorted(&ours),
            sorted(&String::from_utf8(reference).unwrap())
        );
        assert!(
            ours.contains(r#"source="a\"b\\c""#) && ours.contains(r#"sink="file:/x\ny""#),
            "{ours}"
        );
    }
}
