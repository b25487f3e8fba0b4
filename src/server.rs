//! `/metrics`, `/healthz` and `/readyz`. Nothing served here can contain a token: metrics
//! carry only bounded labels and `/readyz` only names, times and reasons.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::observability::Observability;

pub fn router(view: Arc<Observability>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(view)
}

async fn metrics(State(view): State<Arc<Observability>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        view.metrics.encode(),
    )
}

async fn healthz(State(view): State<Arc<Observability>>) -> impl IntoResponse {
    match view.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(view): State<Arc<Observability>>) -> impl IntoResponse {
    let sources = view.status.snapshot(view.clock.now());
    let ready = sources.iter().filter(|s| s.required).all(|s| s.ready);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ready": ready, "sources": sources })),
    )
}

/// Binds `addr` (so a port conflict is reported before the agent starts).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    view: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(view))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Grace period for open connections after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
