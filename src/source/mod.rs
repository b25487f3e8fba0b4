//! Token sources. A source only fetches: no sleeping, no retrying, no writing.
//!
//! Adding a kind means one file here and one arm in [`SourceSpec`] and [`Source`].

pub mod client;
pub mod error;
pub mod exec;
pub mod http;
pub mod jwt;
pub mod kubernetes_token;
pub mod mindsphere;
pub mod oauth2;
pub mod odin;
pub mod response;
#[cfg(test)]
pub mod scripted;
pub mod xmlrpc;

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::Deserialize;

use self::client::{ClientBuildError, HttpClients};
pub use self::error::FetchError;
use crate::config::HttpSettings;
use crate::sink::KubeContext;
use crate::token::Token;

/// The kind-specific part of a source, selected by `kind:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    Oauth2(oauth2::OAuth2Config),
    Mindsphere(mindsphere::MindSphereConfig),
    OdinOa(odin::OdinConfig),
    Http(http::HttpSourceConfig),
    Exec(exec::ExecConfig),
    KubernetesToken(kubernetes_token::KubernetesTokenConfig),
}

/// Why a source could not be built from a checked configuration (files it refers to).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("{0}")]
    Invalid(String),
}

impl SourceSpec {
    /// The `kind` label used in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Oauth2(_) => "oauth2",
            SourceSpec::Mindsphere(_) => "mindsphere",
            SourceSpec::OdinOa(_) => "odin_oa",
            SourceSpec::Http(_) => "http",
            SourceSpec::Exec(_) => "exec",
            SourceSpec::KubernetesToken(_) => "kubernetes_token",
        }
    }

    /// Problems as `(field relative to the source, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        match self {
            SourceSpec::Oauth2(c) => c.check(),
            SourceSpec::Mindsphere(c) => c.check(),
            SourceSpec::OdinOa(c) => c.check(),
            SourceSpec::Http(c) => c.check(),
            SourceSpec::Exec(c) => c.check(),
            SourceSpec::KubernetesToken(c) => c.check(),
        }
    }

    /// Whether the source yields one token per instance (tenant), so that each sink path
    /// must contain `{tenant}`.
    pub fn is_multi_instance(&self) -> bool {
        match self {
            SourceSpec::Mindsphere(c) => c.is_multi_instance(),
            _ => false,
        }
    }

    /// The longest one fetch may legitimately take, given the HTTP timeout of one request:
    /// `/healthz` reports a fetch running past this (plus a grace) as stuck.
    pub fn fetch_bound(&self, http_timeout: std::time::Duration) -> std::time::Duration {
        match self {
            SourceSpec::Exec(c) => c.timeout,
            // Discovery and batches: many requests in one fetch.
            SourceSpec::Mindsphere(c) if c.is_multi_instance() => http_timeout * 64,
            _ => http_timeout,
        }
    }

    /// Whether the files of an instance that goes away upstream are deleted.
    pub fn removes_gone_instances(&self) -> bool {
        match self {
            SourceSpec::Mindsphere(c) => c.on_removed == mindsphere::OnRemoved::Delete,
            _ => true,
        }
    }

    /// Field names of credentials written inline in the YAML.
    pub fn inline_secrets(&self) -> Vec<String> {
        let fields = match self {
            SourceSpec::Oauth2(c) => c.inline_secrets(),
            SourceSpec::Mindsphere(c) => c.inline_secrets(),
            SourceSpec::OdinOa(c) => c.inline_secrets(),
            SourceSpec::Http(c) => return c.inline_secrets(),
            SourceSpec::Exec(c) => return c.inline_secrets(),
            SourceSpec::KubernetesToken(_) => vec![],
        };
        fields.into_iter().map(String::from).collect()
    }

    pub fn build(
        &self,
        http: &HttpSettings,
        clients: &HttpClients,
        kube: &KubeContext,
    ) -> Result<Source, BuildError> {
        Ok(match self {
            SourceSpec::Oauth2(c) => Source::OAuth2(Box::new(c.build(http, clients)?)),
            SourceSpec::Mindsphere(c) => Source::MindSphere(Box::new(c.build(http, clients)?)),
            SourceSpec::OdinOa(c) => Source::Odin(Box::new(c.build(http, clients)?)),
            SourceSpec::Http(c) => Source::Http(Box::new(c.build(http, clients)?)),
            SourceSpec::Exec(c) => Source::Exec(Box::new(c.build())),
            SourceSpec::KubernetesToken(c) => Source::KubernetesToken(Box::new(c.build(kube))),
        })
    }
}

/// The instance key of a source that has a single token.
pub const SINGLE: &str = "";

/// What a fetch produced for one instance (a tenant, or the single token of most sources).
#[derive(Debug)]
pub enum InstanceOutcome {
    /// A new token.
    Fetched(Token),
    /// This instance failed; the others are unaffected.
    Failed(FetchError),
    /// Not fetched because its current token is not due yet (`FetchContext::fresh`).
    Kept,
}

/// Every instance the source has now, with what happened to each. An instance the agent held
/// that is missing here is gone upstream (a tenant that left).
#[derive(Debug)]
pub struct Fetch {
    pub instances: Vec<(String, InstanceOutcome)>,
}

impl Fetch {
    pub fn single(token: Token) -> Fetch {
        Fetch {
            instances: vec![(SINGLE.to_owned(), InstanceOutcome::Fetched(token))],
        }
    }
}

/// What the agent tells a source about the fetch it asks for.
pub struct FetchContext<'a> {
    /// Wall-clock time, to stamp issue times (injected so tests control the clock).
    pub now: &'a (dyn Fn() -> SystemTime + Send + Sync),
    /// Instances whose current token is not due: a multi-instance source may skip them.
    pub fresh: &'a BTreeSet<String>,
}

/// A runnable source.
pub enum Source {
    OAuth2(Box<oauth2::OAuth2Source>),
    MindSphere(Box<mindsphere::MindSphereSource>),
    Odin(Box<odin::OdinSource>),
    Http(Box<http::HttpSource>),
    Exec(Box<exec::ExecSource>),
    KubernetesToken(Box<kubernetes_token::KubernetesTokenSource>),
    #[cfg(test)]
    Scripted(scripted::Scripted),
}

impl Source {
    /// Fetches what is due. A single-token source answers with one instance, [`SINGLE`], or
    /// fails as a whole.
    pub async fn fetch(&self, ctx: &FetchContext<'_>) -> Result<Fetch, FetchError> {
        match self {
            Source::OAuth2(s) => s.fetch(ctx.now).await.map(Fetch::single),
            Source::MindSphere(s) => s.fetch(ctx).await,
            Source::Odin(s) => s.fetch(ctx.now).await.map(Fetch::single),
            Source::Http(s) => s.fetch(ctx.now).await.map(Fetch::single),
            Source::Exec(s) => s.fetch(ctx.now).await.map(Fetch::single),
            Source::KubernetesToken(s) => s.fetch(ctx.now).await.map(Fetch::single),
            #[cfg(test)]
            Source::Scripted(s) => s.fetch(ctx.now).await.map(Fetch::single),
        }
    }
}
