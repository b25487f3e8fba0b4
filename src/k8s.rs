//! The Kubernetes API client, created on first use and shared by everything that talks to the
//! API server (the Secret sink, `kind: kubernetes_token`, leader election). A leaf.

use std::sync::Arc;

use tokio::sync::OnceCell;

/// No client could be made (no service account token in a pod, no kubeconfig outside).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no Kubernetes client: {0} (in a pod, mount a service account token; outside, set KUBECONFIG)"
)]
pub struct NoClient(pub String);

/// The lazily created client: an agent whose configuration never touches the API server never
/// reads a kubeconfig.
#[derive(Clone, Default)]
pub struct KubeContext {
    client: Arc<OnceCell<kube::Client>>,
}

impl KubeContext {
    /// A context with a client already made (tests, or a caller that built its own).
    pub fn with_client(client: kube::Client) -> Self {
        KubeContext {
            client: Arc::new(OnceCell::new_with(Some(client))),
        }
    }

    pub async fn client(&self) -> Result<kube::Client, NoClient> {
        self.client
            .get_or_try_init(|| async {
                crate::install_crypto_provider();
                kube::Client::try_default()
                    .await
                    .map_err(|e| NoClient(e.to_string()))
            })
            .await
            .cloned()
    }
}
