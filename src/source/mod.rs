//! Token sources. A source only fetches: no sleeping, no retrying, no writing.
//!
//! Adding a kind means one file here and one arm in [`SourceSpec`] and [`Source`].

pub mod error;
pub mod http;
pub mod jwt;
pub mod oauth2;
pub mod response;
#[cfg(test)]
pub mod scripted;

use std::time::SystemTime;

use serde::Deserialize;

pub use self::error::FetchError;
use self::http::{ClientBuildError, HttpClients};
use crate::config::HttpSettings;
use crate::token::Token;

/// The kind-specific part of a source, selected by `kind:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    Oauth2(oauth2::OAuth2Config),
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
        }
    }

    /// Problems as `(field relative to the source, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        match self {
            SourceSpec::Oauth2(c) => c.check(),
        }
    }

    /// Field names of credentials written inline in the YAML.
    pub fn inline_secrets(&self) -> Vec<&'static str> {
        match self {
            SourceSpec::Oauth2(c) => c.inline_secrets(),
        }
    }

    pub fn build(&self, http: &HttpSettings, clients: &HttpClients) -> Result<Source, BuildError> {
        Ok(match self {
            SourceSpec::Oauth2(c) => Source::OAuth2(Box::new(c.build(http, clients)?)),
        })
    }
}

/// A runnable source.
pub enum Source {
    OAuth2(Box<oauth2::OAuth2Source>),
    #[cfg(test)]
    Scripted(scripted::Scripted),
}

impl Source {
    /// Fetches one token; `now` stamps its issue time (injected so tests control the clock).
    pub async fn fetch(&self, now: impl Fn() -> SystemTime) -> Result<Token, FetchError> {
        match self {
            Source::OAuth2(s) => s.fetch(now).await,
            #[cfg(test)]
            Source::Scripted(s) => s.fetch(now).await,
        }
    }
}
