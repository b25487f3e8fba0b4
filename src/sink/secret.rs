//! `secret:` sink — a Kubernetes Secret kept current with server-side apply (field manager
//! `token-agent`, forced), so other pods can mount the token or pull images with it.
//!
//! The Secret is labelled `app.kubernetes.io/managed-by: token-agent` and annotated with
//! `token-agent.io/source` and `token-agent.io/expires-at`. The sink never adopts a Secret it
//! did not make: the first write of each Secret since start looks first, creates it when
//! absent, and refuses (reason `conflict`, nothing changed) one that lacks the label or names
//! another source. Only Secrets carrying both (for this source) are ever deleted, when a
//! tenant goes away.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;

use super::format::Format;
use super::{
    BoxFuture, BuildError, Problems, Sink, SinkContext, SinkError, SinkKind, TENANT, Written,
    replaced,
};
use crate::error::{Reason, cause_chain};
use crate::http::basic_credentials;
use crate::k8s::{KubeContext, NoClient};
use crate::names::{InstanceId, is_config_key, is_dns_label, is_dns_subdomain};
use crate::redact::scrub;
use crate::token::Token;

pub const FIELD_MANAGER: &str = "token-agent";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "token-agent");
pub const SOURCE_ANNOTATION: &str = "token-agent.io/source";
pub const EXPIRES_ANNOTATION: &str = "token-agent.io/expires-at";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSinkConfig {
    /// Secret name; per-tenant sources put `{tenant}` in it.
    pub name: String,
    /// Defaults to the agent's own namespace (in-cluster) or the kubeconfig's.
    pub namespace: Option<String>,
    #[serde(default, rename = "type")]
    pub secret_type: SecretType,
    #[serde(default)]
    pub keys: SecretKeys,
    /// For `type: kubernetes.io/dockerconfigjson`: the registry and user the token is for.
    pub registry: Option<Registry>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Makes the Secret owned by this object (garbage-collected with it).
    pub owner: Option<Owner>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum SecretType {
    #[default]
    Opaque,
    #[serde(rename = "kubernetes.io/dockerconfigjson")]
    DockerConfigJson,
}

impl SecretType {
    fn as_str(self) -> &'static str {
        match self {
            SecretType::Opaque => "Opaque",
            SecretType::DockerConfigJson => "kubernetes.io/dockerconfigjson",
        }
    }
}

/// Data keys of an `Opaque` Secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeys {
    #[serde(default = "default_token_key")]
    pub token: String,
    /// Also store the expiry (RFC 3339) under this key.
    pub expires_at: Option<String>,
    /// Also store the `json` file format under this key.
    pub json: Option<String>,
}

fn default_token_key() -> String {
    "token".into()
}

impl Default for SecretKeys {
    fn default() -> Self {
        SecretKeys {
            token: default_token_key(),
            expires_at: None,
            json: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub server: String,
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl SinkKind for SecretSinkConfig {
    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if !is_dns_subdomain(&self.name.replace(TENANT, "t")) {
            problems.push((
                "name".into(),
                format!(
                    "`{}` is not a valid Secret name (lower-case DNS subdomain)",
                    self.name
                ),
            ));
        }
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            problems.push((
                "namespace".into(),
                format!("`{ns}` is not a valid namespace name"),
            ));
        }
        let keys = [
            Some(&self.keys.token),
            self.keys.expires_at.as_ref(),
            self.keys.json.as_ref(),
        ];
        for key in keys.into_iter().flatten() {
            if !is_config_key(key) {
                problems.push((
                    "keys".into(),
                    format!("`{key}` is not a valid data key ([-._a-zA-Z0-9]+)"),
                ));
            }
        }
        match (self.secret_type, &self.registry) {
            (SecretType::DockerConfigJson, None) => problems.push((
                "registry".into(),
                "`type: kubernetes.io/dockerconfigjson` needs `registry: { server, username }`"
                    .into(),
            )),
            (SecretType::Opaque, Some(_)) => problems.push((
                "registry".into(),
                "only applies to `type: kubernetes.io/dockerconfigjson`".into(),
            )),
            _ => {}
        }
        for key in self.labels.keys().chain(self.annotations.keys()) {
            if key == MANAGED_BY.0 || key.starts_with("token-agent.io/") {
                problems.push(("labels".into(), format!("`{key}` is set by the agent")));
            }
        }
        problems
    }

    fn is_per_instance(&self) -> bool {
        self.name.contains(TENANT)
    }

    fn target(&self, _: &Path) -> Option<(&'static str, PathBuf)> {
        let namespace = self.namespace.as_deref().unwrap_or("");
        Some((
            "name",
            PathBuf::from(format!("secret://{namespace}/{}", self.name)),
        ))
    }

    /// Every replica sees the same Secret: only the Lease holder writes it.
    fn needs_leader(&self) -> bool {
        true
    }

    fn build(&self, source: &str, ctx: &SinkContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(SecretSink {
            config: Arc::new(self.clone()),
            source: source.to_owned(),
            kube: ctx.kube.clone(),
            written: Arc::default(),
        }))
    }
}

/// Why a Secret could not be written. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Client(#[from] NoClient),
    #[error(
        "secret {secret}: forbidden: the service account needs `get`, `create` and `patch` on `secrets` in namespace `{namespace}` ({message})"
    )]
    Forbidden {
        secret: String,
        namespace: String,
        message: String,
    },
    #[error("secret {secret}: namespace `{namespace}` does not exist")]
    NamespaceNotFound { secret: String, namespace: String },
    #[error("secret {secret}: the API server answered {code} {reason}: {message}")]
    Api {
        secret: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("secret {secret}: cannot reach the API server: {detail}")]
    Connect { secret: String, detail: String },
    #[error(
        "secret {secret} exists and token-agent did not create it for source `{source_name}`: refusing to take it over (delete it, or name another Secret)"
    )]
    NotOurs { secret: String, source_name: String },
}

impl Reason for SecretError {
    fn reason(&self) -> &'static str {
        match self {
            SecretError::Client(_) => "kube_client",
            SecretError::Forbidden { .. } => "forbidden",
            SecretError::NamespaceNotFound { .. } => "namespace_not_found",
            SecretError::Api { code: 409, .. } => "conflict",
            SecretError::Api { code: 422, .. } => "invalid",
            SecretError::Api { code: 429, .. } => "throttled",
            SecretError::Api { .. } => "api_error",
            SecretError::Connect { .. } => "connect",
            SecretError::NotOurs { .. } => "conflict",
        }
    }
}

#[derive(Clone)]
pub struct SecretSink {
    config: Arc<SecretSinkConfig>,
    source: String,
    kube: KubeContext,
    /// Instances whose Secret this sink created or found its own since start.
    written: Arc<Mutex<HashSet<InstanceId>>>,
}

impl std::fmt::Debug for SecretSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSink")
            .field("name", &self.config.name)
            .field("source", &self.source)
            .finish()
    }
}

impl SecretSink {
    fn is_per_instance(&self) -> bool {
        self.config.name.contains(TENANT)
    }

    fn name(&self, instance: &InstanceId) -> String {
        self.config.name.replace(TENANT, instance.as_str())
    }

    async fn api(&self) -> Result<(Api<Secret>, String), SecretError> {
        let client = self.kube.client().await?;
        let namespace = self
            .config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok((Api::namespaced(client, &namespace), namespace))
    }

    /// The Secret as this sink wants it (the whole intent of field manager `token-agent`).
    pub fn desired(&self, token: &Token, instance: &InstanceId, namespace: &str) -> Secret {
        let c = &self.config;
        let expires_at = humantime::format_rfc3339_seconds(token.expires_at).to_string();
        let mut data = BTreeMap::new();
        match (c.secret_type, &c.registry) {
            (SecretType::DockerConfigJson, Some(r)) => {
                let auth = basic_credentials(&r.username, token.secret());
                let doc = serde_json::json!({ "auths": { &r.server: { "username": r.username, "password": token.secret(), "auth": auth } } });
                data.insert(
                    ".dockerconfigjson".to_owned(),
                    ByteString(doc.to_string().into_bytes()),
                );
            }
            _ => {
                data.insert(
                    c.keys.token.clone(),
                    ByteString(token.secret().as_bytes().to_vec()),
                );
                if let Some(key) = &c.keys.expires_at {
                    data.insert(key.clone(), ByteString(expires_at.clone().into_bytes()));
                }
                if let Some(key) = &c.keys.json {
                    data.insert(
                        key.clone(),
                        ByteString(Format::Json.render(token, &self.source, "")),
                    );
                }
            }
        }
        let mut labels = c.labels.clone();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let mut annotations = c.annotations.clone();
        annotations.insert(SOURCE_ANNOTATION.into(), self.source.clone());
        annotations.insert(EXPIRES_ANNOTATION.into(), expires_at);
        let owner_references = c.owner.as_ref().map(|o| {
            vec![OwnerReference {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
                ..Default::default()
            }]
        });
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name(instance)),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references,
                ..Default::default()
            },
            type_: Some(c.secret_type.as_str().to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// Whether a Secret carries this agent's label and this source's annotation.
    fn is_ours(&self, secret: &Secret) -> bool {
        let meta = &secret.metadata;
        let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0));
        let source = meta.annotations.as_ref().and_then(|a| a.get(SOURCE_ANNOTATION));
        label.is_some_and(|v| v == MANAGED_BY.1) && source.is_some_and(|s| *s == self.source)
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashSet<InstanceId>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the Secret for `instance` holding `token`: the first time since start, creates
    /// it or checks that it is ours; then server-side apply.
    async fn apply(&self, token: &Token, instance: &InstanceId) -> Result<(), SecretError> {
        let (api, namespace) = self.api().await?;
        let name = self.name(instance);
        let secret = self.desired(token, instance, &namespace);
        let failed = |e| classify(e, &namespace, &name, &[token.secret()]);
        if !self.written().contains(instance) {
            match api.get_opt(&name).await.map_err(failed)? {
                None => {
                    // Create, not apply: a Secret someone makes in the meantime is a 409, never
                    // taken over.
                    let params = PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    };
                    api.create(&params, &secret).await.map_err(failed)?;
                    self.written().insert(instance.clone());
                    return Ok(());
                }
                Some(existing) if !self.is_ours(&existing) => {
                    return Err(SecretError::NotOurs {
                        secret: format!("{namespace}/{name}"),
                        source_name: self.source.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&secret))
            .await
            .map_err(failed)?;
        self.written().insert(instance.clone());
        Ok(())
    }

    /// Deletes the Secret of an instance that went away — only if this agent made it.
    async fn delete(&self, instance: &InstanceId) -> Result<(), SecretError> {
        if !self.is_per_instance() {
            return Ok(());
        }
        self.delete_ours(instance).await
    }

    /// Deletes the Secret of `instance` if it exists and this agent made it.
    async fn delete_ours(&self, instance: &InstanceId) -> Result<(), SecretError> {
        let (api, namespace) = self.api().await?;
        let name = self.name(instance);
        let existing = match api
            .get_opt(&name)
            .await
            .map_err(|e| classify(e, &namespace, &name, &[]))?
        {
            Some(s) => s,
            None => return Ok(()),
        };
        if !self.is_ours(&existing) {
            return Ok(());
        }
        self.written().remove(instance);
        let params = DeleteParams {
            preconditions: existing.metadata.uid.map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(classify(e, &namespace, &name, &[])),
        }
    }
}

impl Sink for SecretSink {
    fn label(&self) -> String {
        format!(
            "secret:{}/{}",
            self.config
                .namespace
                .as_deref()
                .unwrap_or("(own namespace)"),
            self.config.name
        )
    }

    /// Server-side apply of identical content is a no-op on the server; the agent only calls
    /// write when the token changed.
    fn write<'a>(
        &'a self,
        token: &'a Token,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(replaced(self.apply(token, instance)))
    }

    fn remove<'a>(&'a self, instance: &'a InstanceId) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.delete(instance).await.map_err(Into::into) })
    }

    fn retire<'a>(
        &'a self,
        instances: &'a [InstanceId],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            for instance in instances {
                self.delete_ours(instance).await?;
            }
            Ok(())
        })
    }
}

fn classify(error: kube::Error, namespace: &str, name: &str, secrets: &[&str]) -> SecretError {
    let secret = format!("{namespace}/{name}");
    match error {
        kube::Error::Api(status) => {
            let message = scrub(&status.message, secrets);
            match status.code {
                403 => SecretError::Forbidden {
                    secret,
                    namespace: namespace.to_owned(),
                    message,
                },
                404 if status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "namespaces")
                    || status.message.contains("namespaces") =>
                {
                    SecretError::NamespaceNotFound {
                        secret,
                        namespace: namespace.to_owned(),
                    }
                }
                code => SecretError::Api {
                    secret,
                    code,
                    reason: status.reason.clone(),
                    message,
                },
            }
        }
        other => SecretError::Connect {
            secret,
            detail: scrub(&cause_chain(&other), secrets),
        },
    }
}
