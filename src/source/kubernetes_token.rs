//! `kind: kubernetes_token` — a token for a ServiceAccount from the TokenRequest API
//! (`serviceaccounts/token` create), with chosen audiences and lifetime. For workloads that need
//! an audience-bound token somewhere a projected volume cannot reach (another namespace's
//! Secret, a file with a different owner).

use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde::Deserialize;

use super::response::{check_token_text, refuse_expired};
use super::{BuildContext, BuildError, FetchError, Now, Problems, SingleTokenSource, Source, SourceKind};
use crate::error::cause_chain;
use crate::http::HttpError;
use crate::k8s::KubeContext;
use crate::names::{is_dns_label, is_dns_subdomain};
use crate::redact::scrub;
use crate::token::Token;

/// The API server's floor for `expirationSeconds`.
const MIN_EXPIRATION: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTokenConfig {
    pub service_account: String,
    /// Defaults to the agent's own namespace (in-cluster) or the kubeconfig's.
    pub namespace: Option<String>,
    /// Intended audiences (`aud`); empty means the API server's own.
    #[serde(default, deserialize_with = "crate::de::strings")]
    pub audiences: Vec<String>,
    /// Requested lifetime (at least 10m; the server may shorten it).
    #[serde(default = "default_expiration", with = "crate::de::duration")]
    pub expiration: Duration,
}

fn default_expiration() -> Duration {
    Duration::from_secs(3600)
}

impl SourceKind for KubernetesTokenConfig {
    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if !is_dns_subdomain(&self.service_account) {
            problems.push((
                "service_account".into(),
                format!(
                    "`{}` is not a valid ServiceAccount name",
                    self.service_account
                ),
            ));
        }
        if let Some(ns) = self
            .namespace
            .as_deref()
            .filter(|ns| !is_dns_label(ns))
        {
            problems.push((
                "namespace".into(),
                format!("`{ns}` is not a valid namespace name"),
            ));
        }
        if self.expiration < MIN_EXPIRATION {
            problems.push((
                "expiration".into(),
                "must be at least 10m (the API server's minimum)".into(),
            ));
        }
        problems
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(KubernetesTokenSource {
            config: self.clone(),
            kube: ctx.kube.clone(),
        }))
    }
}

pub struct KubernetesTokenSource {
    config: KubernetesTokenConfig,
    kube: KubeContext,
}

impl SingleTokenSource for KubernetesTokenSource {
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        let c = &self.config;
        let client = self.kube.client().await.map_err(|e| HttpError::Connect {
            url: "the Kubernetes API".into(),
            detail: e.to_string(),
        })?;
        let namespace = c
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let shown = format!(
            "serviceaccounts/{}/token in namespace {namespace}",
            c.service_account
        );
        let api: Api<ServiceAccount> = Api::namespaced(client, &namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: c.audiences.clone(),
                expiration_seconds: Some(i64::try_from(c.expiration.as_secs()).unwrap_or(i64::MAX)),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let answer = api
            .create_token_request(&c.service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => {
                    let hint = if status.code == 403 {
                        " (the agent's service account needs `create` on `serviceaccounts/token`)"
                    } else {
                        ""
                    };
                    HttpError::Status {
                        url: shown.clone(),
                        status: status.code,
                        remote: Some(format!("{}{hint}", scrub(&status.message, &[]))),
                        retry_after: None,
                    }
                }
                other => HttpError::Connect {
                    url: shown.clone(),
                    detail: cause_chain(&other),
                },
            })?;
        let invalid = |detail: String| FetchError::invalid(&shown, detail);
        let status = answer
            .status
            .ok_or_else(|| invalid("no status in the TokenRequest answer".into()))?;
        check_token_text(&status.token).map_err(invalid)?;
        let seconds = status.expiration_timestamp.0.as_second();
        let expires_at = UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(seconds).map_err(|_| invalid("expiration before 1970".into()))?,
            );
        let issued = now();
        refuse_expired(expires_at, issued, &shown)?;
        Ok(Token::new(
            status.token.into(),
            "Bearer".into(),
            issued,
            expires_at,
        ))
    }
}
