//! token-agent keeps short-lived credentials fresh for workloads on Kubernetes.
//!
//! The shape follows one rule: a [`source`] only fetches, a [`sink`] only writes, and the
//! [`agent`] (with the pure timing rules in [`schedule`]) owns every sleep, retry and deadline.
//! Sources and sinks never import each other nor the [`config`]; what they share lives in leaf
//! modules ([`http`], [`k8s`], [`names`], [`credential`], [`kind`]). `docs/architecture.md`
//! draws the picture.
#![forbid(unsafe_code)]

pub mod agent;
pub mod child;
pub mod clock;
pub mod config;
pub mod credential;
pub mod de;
pub mod dev;
pub mod error;
pub mod http;
pub mod inject;
pub mod k8s;
pub mod kind;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod notifier;
pub mod observability;
pub mod priority;
pub mod redact;
pub mod reload;
pub mod schedule;
pub mod server;
pub mod sink;
#[cfg(test)]
mod skipped;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod template;
pub mod token;
pub mod watch;
pub mod webhook;

/// Installs the single TLS crypto provider (ring) used by every HTTP client in the process.
///
/// The agent's HTTP client and kube share it; nothing else may pick another.
/// Calling this more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
