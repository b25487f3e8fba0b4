//! token-agent keeps short-lived credentials fresh for workloads on Kubernetes.
//!
//! The shape follows one rule: a [`source`] only fetches, a [`sink`] only writes, and the
//! [`agent`] (with the pure timing rules in [`schedule`]) owns every sleep, retry and deadline.
//! [`metrics`] wraps sources and sinks from the outside instead of living inside them.
#![forbid(unsafe_code)]

pub mod agent;
pub mod clock;
pub mod config;
pub mod dev;
pub mod leader;
pub mod metrics;
pub mod redact;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod template;
pub mod token;

/// Installs the single TLS crypto provider (ring) used by every HTTP client in the process.
///
/// reqwest is built with `rustls-no-provider` so that one provider serves both it and, later,
/// kube. Calling this more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
