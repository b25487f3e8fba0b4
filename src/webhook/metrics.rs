//! The injector's metrics (vault-k8s counts injections by namespace and times requests; so do
//! we, plus the serving certificate, whose expiry is the injector's most likely outage).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Admission takes tens of microseconds; the buckets reach the API server's timeout range so
/// a stalled process still shows.
const ADMISSION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
];

pub struct WebhookMetrics {
    registry: Registry,
    admissions: IntCounterVec,
    duration: Histogram,
    certificate_loads: IntCounterVec,
    certificate_expiry: Gauge,
}

impl WebhookMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            Opts::new(
                "token_agent_webhook_admissions_total",
                "Pod admissions answered, by namespace and result (injected, skipped, denied, invalid: not an AdmissionReview).",
            ),
            &["namespace", "result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "token_agent_webhook_admission_duration_seconds",
                "Time to answer one AdmissionReview, from the request body read to the response built.",
            )
            .buckets(ADMISSION_BUCKETS.to_vec()),
        )?;
        let certificate_loads = IntCounterVec::new(
            Opts::new(
                "token_agent_webhook_certificate_loads_total",
                "Serving certificates loaded (from the TLS directory or made by this replica), by result; a failed load keeps the certificate in use.",
            ),
            &["result"],
        )?;
        let certificate_expiry = Gauge::new(
            "token_agent_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (0: none loaded yet).",
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(certificate_loads.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(WebhookMetrics {
            registry,
            admissions,
            duration,
            certificate_loads,
            certificate_expiry,
        })
    }

    pub fn admitted(&self, namespace: &str, result: &str, took: Duration) {
        self.admissions
            .with_label_values(&[namespace, result])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn certificate_loaded(&self, ok: bool, expires: Option<SystemTime>) {
        let result = if ok { "success" } else { "failure" };
        self.certificate_loads.with_label_values(&[result]).inc();
        if let Some(at) = expires {
            let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            self.certificate_expiry.set(seconds.as_secs_f64());
        }
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
