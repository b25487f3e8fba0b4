//! Token sources. A source only fetches: no sleeping, no retrying, no writing — the agent owns
//! all timing and the sinks all writing.
//!
//! A kind is one file holding its configuration, which implements [`SourceKind`] (checks and
//! build), and the runnable source it builds, which implements [`Source`] — or
//! [`SingleTokenSource`], for the kinds that fetch one token. Adding a kind is that file plus
//! one line in the registry below; `docs/architecture.md` walks through an example.

pub mod error;
pub mod jwt;
pub mod response;
pub mod xmlrpc;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

pub use self::error::FetchError;
use crate::http::{HttpClients, HttpSettings};
use crate::k8s::KubeContext;
use crate::kind::registry;
pub use crate::kind::{BoxFuture, BuildError, Problems};
use crate::names::InstanceId;
use crate::token::Token;

registry! {
    /// The kind-specific part of a source, selected by `kind:`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(tag = "kind")]
    pub enum SourceSpec: dyn SourceKind {
        "oauth2" => OAuth2(oauth2::OAuth2Config),
        "mindsphere" => MindSphere(mindsphere::MindSphereConfig),
        "odin_oa" => OdinOa(odin_oa::OdinOaConfig),
        "http" => Http(http::HttpSourceConfig),
        "exec" => Exec(exec::ExecConfig),
        "kubernetes_token" => KubernetesToken(kubernetes_token::KubernetesTokenConfig),
    }
}

/// The configuration side of a source kind: what `validate` checks and what the agent builds.
pub trait SourceKind {
    /// Problems as `(field relative to the source, message)`.
    fn check(&self) -> Problems;

    /// Fields holding a credential written in the YAML itself (refused unless
    /// `allow_inline_secrets`).
    fn inline_secrets(&self) -> Vec<String> {
        Vec::new()
    }

    /// The field and URL the source sends credentials to and gets tokens from, so that
    /// `validate` refuses plain `http://` to another host (unless `http.require_https: false`).
    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        None
    }

    /// Whether the source yields one token per instance (tenant), so that each sink naming one
    /// place must put `{tenant}` in it.
    fn is_multi_instance(&self) -> bool {
        false
    }

    /// The longest one fetch may legitimately take, given the HTTP timeout of one request:
    /// `/healthz` reports a fetch running past this (plus a grace) as stuck.
    fn fetch_bound(&self, http_timeout: Duration) -> Duration {
        http_timeout
    }

    /// Whether the outputs of an instance that goes away upstream are deleted.
    fn removes_gone_instances(&self) -> bool {
        true
    }

    /// The runnable source. Fails only on what the configuration names but `check` cannot see
    /// (an unreadable CA file, say).
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError>;
}

/// What sources are built with.
pub struct BuildContext<'a> {
    /// The source's HTTP settings, its defaults applied.
    pub http: &'a HttpSettings,
    /// The clients every HTTP kind shares.
    pub clients: &'a HttpClients,
    /// The Kubernetes client, made on first use.
    pub kube: &'a KubeContext,
}

/// A runnable source: fetches what is due when the agent asks, and nothing else.
pub trait Source: Send + Sync {
    /// Every instance the source has now, with a new token for each one that is due.
    fn fetch<'a>(&'a self, ctx: &'a FetchContext<'a>) -> BoxFuture<'a, Result<Fetch, FetchError>>;
}

/// A source with one token: it answers with [`InstanceId::single`], or fails as a whole.
pub trait SingleTokenSource: Send + Sync {
    fn fetch_token(&self, now: &Now) -> impl Future<Output = Result<Token, FetchError>> + Send;
}

impl<T: SingleTokenSource> Source for T {
    fn fetch<'a>(&'a self, ctx: &'a FetchContext<'a>) -> BoxFuture<'a, Result<Fetch, FetchError>> {
        Box::pin(async move { self.fetch_token(ctx.now).await.map(Fetch::single) })
    }
}

/// Wall-clock time, to stamp issue times (injected so tests control the clock).
pub type Now = dyn Fn() -> SystemTime + Send + Sync;

/// What the agent tells a source about the fetch it asks for.
pub struct FetchContext<'a> {
    pub now: &'a Now,
    /// Instances whose current token is not due yet: a multi-instance source may skip them.
    pub not_due: &'a BTreeSet<InstanceId>,
}

/// What a fetch produced for one instance (a tenant, or the single token of most sources).
#[derive(Debug)]
pub enum InstanceOutcome {
    /// A new token.
    Fetched(Token),
    /// This instance failed; the others are unaffected.
    Failed(FetchError),
    /// Not fetched because its current token is not due yet ([`FetchContext::not_due`]).
    Kept,
}

/// Every instance the source has now, with what happened to each. An instance the agent held
/// that is missing here is gone upstream (a tenant that left).
#[derive(Debug, Default)]
pub struct Fetch {
    pub instances: Vec<(InstanceId, InstanceOutcome)>,
    /// Instances listed upstream under an id no sink could use (not a safe file name): they
    /// count as failed and never reach a sink.
    pub refused: Vec<(String, FetchError)>,
}

impl Fetch {
    pub fn single(token: Token) -> Fetch {
        Fetch {
            instances: vec![(InstanceId::single(), InstanceOutcome::Fetched(token))],
            refused: Vec::new(),
        }
    }
}
