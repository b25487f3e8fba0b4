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
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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

/// Longest a client may take to send its request headers (slow-loris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one connection may stay open, kept alive or not.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Connections served at once; more wait in the listen backlog. Probes and scrapes need a
/// handful: a flood cannot take the agent's memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 32;

/// Largest request head (request line and headers) read; a bigger one gets HTTP 431. A probe
/// or a scrape sends a few hundred bytes, and hyper's default (~400 KiB) times
/// [`MAX_CONNECTIONS`] would be memory a client could make the agent hold.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Grace period for open connections after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` turns true, then waits for open connections to finish: HTTP/1.1, one
/// request per connection, each bounded by [`HEADER_READ_TIMEOUT`], [`MAX_REQUEST_HEAD`] and
/// [`CONNECTION_LIMIT`], at most [`MAX_CONNECTIONS`] at once.
///
/// hyper's own connection builder rather than `axum::serve`, which sets no timer and so no
/// header-read timeout, and has no connection cap.
pub async fn serve(
    listener: TcpListener,
    view: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(router(view));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()), // never closed
            },
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (service, mut stop) = (service.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // One request per connection: probes and scrapes gain nothing from keep-alive, and
            // a client cannot hold a slot between its requests.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIMIT) => {}
                _ = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    // Until every open connection is done (each within its own grace).
    let _ = permits.acquire_many(MAX_CONNECTIONS as u32).await;
    Ok(())
}

/// Until `shutdown` turns true (the guard `wait_for` returns is not `Send`: dropped here).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
