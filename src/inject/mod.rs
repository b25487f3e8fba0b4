//! Sidecar injection: what a mutating admission webhook does to a pod that opted in with the
//! label `token-agent.io/inject: "true"` (docs/injection.md). Pure from end to end — the
//! annotations are read into [`Settings`], [`mutate`] turns them into a JSON patch, [`review`]
//! answers an AdmissionReview — so the HTTPS server (`token-agent webhook`) stays thin and every
//! decision is testable without a cluster.

pub mod mutate;
pub mod quantity;
pub mod review;
pub mod settings;

pub use mutate::mutate;
pub use review::{Outcome, Policy, Verdict, review};
pub use settings::{InjectorDefaults, Invalid, Mode, Request, Settings};
