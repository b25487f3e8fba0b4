//! `/metrics`, `/healthz` and `/readyz`. Nothing served here can contain a token: metrics
//! carry only bounded labels and `/readyz` only names, times and reasons.

use std::future::Future;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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

/// How connections are served: the agent's probe and metrics server takes one request per
/// connection; the webhook keeps connections alive for the API server, which reuses them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub keep_alive: bool,
}

/// The agent's `/metrics`, `/healthz` and `/readyz`.
pub const PROBE_LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    keep_alive: false,
};

/// Serves until `shutdown` turns true, then waits for open connections to finish: HTTP/1.1, one
/// request per connection, each bounded by [`HEADER_READ_TIMEOUT`], [`MAX_REQUEST_HEAD`] and
/// [`CONNECTION_LIMIT`], at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    listener: TcpListener,
    view: Arc<Observability>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_router(
        listener,
        router(view),
        PROBE_LIMITS,
        |tcp| std::future::ready(Ok(tcp)),
        shutdown,
    )
    .await
}

/// Serves `router` on the streams `accept` makes of each TCP connection (TLS, or the TCP
/// stream itself), within `limits`; the handshake counts against [`HEADER_READ_TIMEOUT`].
/// Until `shutdown`, then open connections finish their request within [`SHUTDOWN_GRACE`].
///
/// hyper's own connection builder rather than `axum::serve`, which sets no timer and so no
/// header-read timeout, and has no connection cap.
pub async fn serve_router<A, F, S>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    accept: A,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    A: Fn(TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = std::io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()), // never closed
            },
            _ = stopped(&mut shutdown) => break,
        };
        let tcp = tokio::select! {
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
        // Responses are written whole: Nagle's algorithm would only hold the last segment
        // back for the client's delayed ACK (~40 ms on a kept-alive connection).
        let _ = tcp.set_nodelay(true);
        let (service, mut stop, accept) = (service.clone(), shutdown.clone(), accept.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection refused during its handshake");
                    return;
                }
                Err(_) => return,
            };
            // Without keep-alive (probes, scrapes) a client cannot hold a slot between its
            // requests.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(limits.keep_alive)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_LIMIT) => {}
                _ = stopped(&mut stop) => {}
            }
            // The request in flight, if any, is answered; then the connection closes.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        });
    }
    // Until every open connection is done (each within its own grace).
    let _ = permits
        .acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// Until `shutdown` turns true (the guard `wait_for` returns is not `Send`: dropped here).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
