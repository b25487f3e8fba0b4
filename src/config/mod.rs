//! The YAML configuration: what it looks like, how it is parsed, and how it is checked.
//!
//! Parsing uses `serde-saphyr` (maintained, already in kube's tree) with `deny_unknown_fields`
//! on every struct. Checks that need the whole document (duplicate names, path escapes, inline
//! secrets) run afterwards and are located through [`locate::Locator`].

pub mod error;
pub mod fingerprint;
pub mod locate;
mod overlap;
mod parse;
pub mod percent;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use self::error::{ConfigError, ConfigErrors};
pub use self::fingerprint::SourcePrint;
use self::locate::Locator;
pub use self::percent::Percent;
use crate::http::HttpSettings;
use crate::leader::LeaderElectionConfig;
use crate::notifier::NotifyConfig;
use crate::sink::SinkConfig;
use crate::sink::file::FileDefaults;
use crate::source::SourceSpec;

/// Largest configuration file accepted (a typo'd path to a big file fails fast). 32 MiB holds
/// 50 000 sources of up to ~650 bytes each; the YAML budget scales with the text
/// (`parse::yaml_options`), so the file size is what bounds the parser's work.
const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

/// Where state lives unless `state_dir` says otherwise: not in the token volume, which the
/// apps mount (and can often write), so a planted state file cannot steer a DELETE.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/token-agent";

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings every source inherits unless it overrides them.
    #[serde(default)]
    pub defaults: Defaults,
    /// The HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub server: ServerConfig,
    /// Allow credentials written directly in this file (a warning is logged for each).
    #[serde(default)]
    pub allow_inline_secrets: bool,
    /// Several replicas: only the Lease holder runs sources that write Secrets.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// Where state that must survive restarts is kept (API-Portal token ids). Default:
    /// `/var/lib/token-agent`, outside the token volume that apps mount and may write.
    pub state_dir: Option<PathBuf>,
    /// How many fetches may run at once across all sources.
    #[serde(default = "default_max_concurrent_fetches")]
    pub max_concurrent_fetches: usize,
    pub sources: Vec<SourceConfig>,
}

fn default_max_concurrent_fetches() -> usize {
    32
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub file: FileDefaults,
}

/// When to refresh. Every field is optional so a source can override just one of them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Fraction of the lifetime after which a token is refreshed (default 80%).
    pub at: Option<Percent>,
    /// Up to this fraction of the lifetime is taken off at random so replicas spread out
    /// (default 10%).
    pub jitter: Option<Percent>,
    /// Never refresh more often than this (default 10s).
    #[serde(default, with = "crate::de::duration")]
    pub min_interval: Option<Duration>,
    /// Never wait longer than this (default 24h).
    #[serde(default, with = "crate::de::duration")]
    pub max_interval: Option<Duration>,
}

/// Backoff after a failed fetch or write.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay (default 1s); it doubles on each failure.
    #[serde(default, with = "crate::de::duration")]
    pub initial: Option<Duration>,
    /// Largest delay (default 5m).
    #[serde(default, with = "crate::de::duration")]
    pub max: Option<Duration>,
}

/// HTTP client settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Per-request timeout, connect included (default 10s).
    #[serde(default, with = "crate::de::duration")]
    pub timeout: Option<Duration>,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (needs `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Refuse plain `http://` endpoints on other hosts (default true; loopback is always
    /// allowed). `false` allows them with a warning at `validate` and at start.
    pub require_https: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            enabled: true,
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}

fn default_true() -> bool {
    true
}

/// One token source and where its token goes.
///
/// The kind-specific fields sit beside these common ones (`kind: oauth2`, `token_url: …`);
/// unknown fields are rejected by the kind's own struct.
#[derive(Debug, Deserialize)]
pub struct SourceConfig {
    /// Unique; used in file names, metric labels and logs.
    pub name: String,
    /// `once` fails and `/readyz` stays 503 while a required source has no valid token.
    #[serde(default = "default_true")]
    pub required: bool,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    pub sinks: Vec<SinkConfig>,
    /// Remove the source's outputs when a reload removes it (`delete`, the default) or leave
    /// them in place (`keep`).
    #[serde(default)]
    pub on_remove: OnRemove,
    /// Told after each token change is in place in every sink (`notifier.rs`).
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    #[serde(flatten)]
    pub spec: SourceSpec,
    /// Its effective settings as a reload compares them (filled in by [`Config::parse`]).
    #[serde(skip)]
    pub print: SourcePrint,
}

/// What happens to a source's outputs when a reload removes the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRemove {
    /// Each sink removes what it wrote by its own rules: files and their metadata are
    /// deleted, Secrets only if this agent created them, API-Portal entries are DELETEd.
    #[default]
    Delete,
    /// Everything stays where it is.
    Keep,
}

/// Fully resolved refresh policy of one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    pub at: Percent,
    pub jitter: Percent,
    pub min_interval: Duration,
    pub max_interval: Duration,
}

/// Fully resolved retry policy of one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RefreshConfig {
    /// This override on top of `base`, on top of the built-in defaults.
    pub fn resolve(&self, base: &RefreshConfig) -> RefreshPolicy {
        RefreshPolicy {
            at: self
                .at
                .or(base.at)
                .unwrap_or(Percent::from_fraction_unchecked(0.8)),
            jitter: self
                .jitter
                .or(base.jitter)
                .unwrap_or(Percent::from_fraction_unchecked(0.1)),
            min_interval: self
                .min_interval
                .or(base.min_interval)
                .unwrap_or(Duration::from_secs(10)),
            max_interval: self
                .max_interval
                .or(base.max_interval)
                .unwrap_or(Duration::from_secs(24 * 3600)),
        }
    }
}

impl RetryConfig {
    pub fn resolve(&self, base: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            initial: self
                .initial
                .or(base.initial)
                .unwrap_or(Duration::from_secs(1)),
            max: self.max.or(base.max).unwrap_or(Duration::from_secs(300)),
        }
    }
}

impl HttpConfig {
    /// `require_https` with `base` (the defaults) applied.
    pub fn requires_https(&self, base: &HttpConfig) -> bool {
        self.require_https.or(base.require_https).unwrap_or(true)
    }

    pub fn resolve(&self, base: &HttpConfig) -> HttpSettings {
        HttpSettings {
            timeout: self
                .timeout
                .or(base.timeout)
                .unwrap_or(Duration::from_secs(10)),
            ca_file: self.ca_file.clone().or_else(|| base.ca_file.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| base.client_cert.clone()),
            client_key: self.client_key.clone().or_else(|| base.client_key.clone()),
        }
    }
}

impl Config {
    /// Reads, parses and checks `path`, returning every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse(&Config::read(path)?, path)
    }

    /// The text of `path`, refused when unreadable or larger than a configuration may be.
    pub fn read(path: &Path) -> Result<String, ConfigErrors> {
        let whole_file = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                position: None,
                path: String::new(),
                message,
            }])
        };
        let size = std::fs::metadata(path)
            .map_err(|e| whole_file(format!("cannot read: {e}")))?
            .len();
        if size > MAX_CONFIG_BYTES {
            return Err(whole_file(format!(
                "is {size} bytes; a configuration may be at most {MAX_CONFIG_BYTES}"
            )));
        }
        std::fs::read_to_string(path).map_err(|e| whole_file(format!("cannot read: {e}")))
    }

    /// Parses and checks `text`; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let locator = Locator::new(text);
        let config = parse::deserialize(text, file, &locator).map_err(|e| ConfigErrors(vec![e]))?;
        let problems = validate::check(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(path, message)| ConfigError {
                        file: file.to_owned(),
                        position: locator.find(&path),
                        path,
                        message,
                    })
                    .collect(),
            ))
        }
    }

    /// Like [`Config::parse`], with each source's [`SourcePrint`] filled in, for `run`, which
    /// compares them at every reload. Kept out of `parse`: it reads the document a second time
    /// (~30 % of parsing at 10 000 sources), which `validate` and `once` do not need.
    pub fn parse_live(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let mut config = Config::parse(text, file)?;
        let prints = fingerprint::prints(text, &config);
        for (source, print) in config.sources.iter_mut().zip(prints) {
            source.print = print;
        }
        Ok(config)
    }

    /// The state directory, resolved (default [`DEFAULT_STATE_DIR`]).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }

    /// Warnings that do not stop the agent (inline secrets when allowed).
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }
}

#[cfg(test)]
mod tests;
