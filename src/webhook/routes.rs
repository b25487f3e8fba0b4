//! The webhook's HTTP surface: `POST /mutate` on the TLS port (and the probes, so an HTTPS
//! probe works too), `/metrics`, `/healthz` and `/readyz` on the plain port. Thin: the
//! decision is [`crate::inject::review`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::{debug, info, warn};

use crate::inject::{Outcome, review};
use crate::webhook::Webhook;

/// An AdmissionReview for a CREATE carries one object of at most the API server's 3 MiB, plus
/// the envelope.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

pub fn tls(state: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

pub fn plain(state: Arc<Webhook>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn mutate(State(hook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let started = Instant::now();
    match review(&body, &hook.policy) {
        Ok(verdict) => {
            let took = started.elapsed();
            hook.metrics
                .admitted(&verdict.namespace, verdict.outcome.label(), took);
            let pod = verdict.review["response"]["uid"]
                .as_str()
                .unwrap_or_default();
            match verdict.outcome {
                Outcome::Injected => info!(namespace = %verdict.namespace, uid = %pod, "injected"),
                Outcome::Skipped(why) => {
                    debug!(namespace = %verdict.namespace, uid = %pod, why, "skipped")
                }
                Outcome::Denied => {
                    let problems: Vec<String> =
                        verdict.problems.iter().map(ToString::to_string).collect();
                    warn!(namespace = %verdict.namespace, uid = %pod, problems = ?problems, "denied")
                }
            }
            Json(verdict.review).into_response()
        }
        Err(e) => {
            hook.metrics.admitted("", "invalid", started.elapsed());
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

async fn metrics(State(hook): State<Arc<Webhook>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hook.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(hook): State<Arc<Webhook>>) -> impl IntoResponse {
    if hook.serving.is_loaded() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate loaded yet\n",
        )
    }
}
