//! `token-agent webhook`: the mutating admission webhook that injects the agent into pods that
//! opted in (docs/injection.md). The decision is [`crate::inject`], pure; this module serves it
//! over HTTPS with a certificate it reloads ([`certificate`]) or makes itself
//! ([`self_managed`]), and exposes metrics and probes on a plain-HTTP port.

pub mod certificate;
pub mod metrics;
pub mod routes;
pub mod self_managed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::inject::Policy;
use crate::k8s::KubeContext;
use crate::leader::{Elector, LeaderElectionConfig};
use crate::server::{self, Limits};
use certificate::ServingCertificate;
use metrics::WebhookMetrics;
use self_managed::SelfManagedTls;

/// The API server keeps connections to a webhook open and sends admissions concurrently.
pub const WEBHOOK_LIMITS: Limits = Limits {
    max_connections: 128,
    keep_alive: true,
};

/// Everything `token-agent webhook` was started with.
pub struct WebhookOptions {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls_dir: PathBuf,
    pub policy: Policy,
    pub self_managed: Option<SelfManagedTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// State the handlers share.
pub struct Webhook {
    pub policy: Policy,
    pub metrics: Arc<WebhookMetrics>,
    pub serving: Arc<ServingCertificate>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| WebhookError::Listen { addr, error })
}

/// Serves until `shutdown`.
pub async fn run(
    options: WebhookOptions,
    kube: KubeContext,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WebhookError> {
    let metrics = Arc::new(WebhookMetrics::new().map_err(|e| WebhookError::Setup(e.to_string()))?);
    let serving = Arc::new(ServingCertificate::new(metrics.clone()));
    let state = Arc::new(Webhook {
        policy: options.policy,
        metrics,
        serving: serving.clone(),
    });
    let tls_listener = bind(options.listen).await?;
    let plain_listener = bind(options.metrics_listen).await?;

    if let Err(e) = serving.load_dir(&options.tls_dir) {
        warn!(dir = %options.tls_dir.display(), error = %e, "no serving certificate yet; /readyz stays 503 until one loads");
    }
    tokio::spawn(
        serving
            .clone()
            .watch(options.tls_dir.clone(), shutdown.clone()),
    );
    if let Some(tls) = options.self_managed {
        start_self_managed(tls, &kube, serving.clone(), shutdown.clone()).await?;
    }

    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let bound = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    };
    info!(https = %bound(&tls_listener), metrics = %bound(&plain_listener), "webhook serving /mutate");
    let https = server::serve_router(
        tls_listener,
        routes::tls(state.clone()),
        WEBHOOK_LIMITS,
        move |tcp| acceptor.accept(tcp),
        shutdown.clone(),
    );
    let plain = server::serve_router(
        plain_listener,
        routes::plain(state),
        server::PROBE_LIMITS,
        |tcp| std::future::ready(Ok(tcp)),
        shutdown,
    );
    let (a, b) = tokio::join!(https, plain);
    a.and(b).map_err(|e| WebhookError::Setup(e.to_string()))
}

/// Elects a leader through the Lease; the leader keeps the certificate and caBundle current.
async fn start_self_managed(
    tls: SelfManagedTls,
    kube: &KubeContext,
    serving: Arc<ServingCertificate>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WebhookError> {
    let client = kube
        .client()
        .await
        .map_err(|e| WebhookError::Setup(e.to_string()))?;
    let election = LeaderElectionConfig {
        enabled: true,
        lease: tls.lease.clone(),
        namespace: Some(tls.namespace.clone()),
        ..LeaderElectionConfig::default()
    };
    let elector = Elector::new(&election, kube, crate::leader::identity(), Clock::system())
        .await
        .map_err(WebhookError::Setup)?;
    let (leading, leader) = watch::channel(false);
    tokio::spawn(elector.run(election.renew_every, leading, shutdown.clone()));
    tokio::spawn(tls.run(client, serving, leader, shutdown));
    Ok(())
}
