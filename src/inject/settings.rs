//! What a pod asks for: its `token-agent.io/…` annotations, read and checked in full before
//! anything is injected. Every problem names its annotation; the config annotation gets the same
//! checks as `token-agent validate`, with line and column. A pod that asked for tokens and asked
//! wrongly is denied: it must not start without them.

use std::path::{Component, Path};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::inject::quantity::Quantity;
use crate::names::{is_dns_label, is_dns_subdomain, shown};

/// Every annotation the injector reads starts with this.
pub const PREFIX: &str = "token-agent.io/";
/// The label that opts a pod in (the webhook's objectSelector matches it too).
pub const INJECT_LABEL: &str = "token-agent.io/inject";
/// Set on an injected pod, so a second admission (reinvocation) leaves it alone.
pub const STATUS_ANNOTATION: &str = "token-agent.io/status";
pub const INJECTED: &str = "injected";

/// The agent's config file inside the agent container.
pub const CONFIG_DIR: &str = "/etc/token-agent";
pub const CONFIG_FILE: &str = "config.yaml";
/// Where the `secrets` annotation's Secrets are mounted, one directory each.
pub const SECRETS_DIR: &str = "/var/run/secrets/token-agent";
/// The agent's defaults, used for a `config-map` config the injector cannot read.
pub const DEFAULT_TOKEN_DIR: &str = "/var/run/tokens";
pub const DEFAULT_PORT: u16 = 9090;
/// The image's user, used when the pod names none (or root).
pub const DEFAULT_UID: i64 = 65532;

/// Measured (BENCHMARKS.md, "The injected agent"): a sidecar with a handful of sources uses
/// ~1 millicore and ~8 MiB; the limit leaves room for a few hundred tenants.
pub const DEFAULT_CPU_REQUEST: &str = "5m";
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "64Mi";
/// How long the app may be held back waiting for its first tokens before the kubelet restarts
/// the agent (which then resumes with its state).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// The annotations, by key after [`PREFIX`]; anything else under the prefix is a typo.
pub const KNOWN: &[&str] = &[
    "config",
    "config-map",
    "secrets",
    "mode",
    "containers",
    "path",
    "file-user",
    "file-group",
    "cpu-request",
    "memory-request",
    "memory-limit",
    "image",
    "port",
    "init-first",
    "startup-timeout",
    "status",
];

/// What the webhook was started with: the image and pull policy injected by default.
#[derive(Debug, Clone)]
pub struct InjectorDefaults {
    pub image: String,
    pub pull_policy: String,
}

/// How the agent runs beside the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): a native sidecar
    /// whose startup probe holds the app back until the first tokens are written, and which
    /// never keeps a Job from completing.
    Native,
    /// `once` as an init container, then `run` as a regular container (before 1.29).
    Classic,
    /// `once` only: the tokens a Job needs, never refreshed.
    InitOnly,
}

/// Where the agent's config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The `config` annotation, delivered as a file by a downward-API volume.
    Annotation,
    /// A ConfigMap, mounted as a directory (its key `config.yaml`).
    ConfigMap(String),
}

/// One pod's injection settings, every default resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: ConfigSource,
    pub secrets: Vec<String>,
    pub mode: Mode,
    /// Containers (app or init) that get the token mount; `None`: the defaults.
    pub containers: Option<Vec<String>>,
    /// Where the agent writes (its `defaults.file.dir`).
    pub token_dir: String,
    /// Where the selected containers see the tokens.
    pub path: String,
    /// The agent's state directory (an emptyDir of its own).
    pub state_dir: String,
    pub port: u16,
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub image: String,
    pub pull_policy: String,
    pub init_first: bool,
    pub startup_timeout: Duration,
}

/// One refused annotation, or a pod the agent cannot be added to as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The full annotation name, e.g. `token-agent.io/mode`; empty for the pod as a whole.
    pub annotation: String,
    pub message: String,
}

impl Invalid {
    /// A problem with the annotation `token-agent.io/<key>`.
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Invalid {
            annotation: format!("{PREFIX}{key}"),
            message: message.into(),
        }
    }

    /// A problem with the pod itself (a name the injector needs is taken, a malformed spec).
    pub fn pod(message: impl Into<String>) -> Self {
        Invalid {
            annotation: String::new(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config's own errors already start with `token-agent.io/config:LINE:COLUMN`.
        if self.annotation.is_empty() || self.message.starts_with(&self.annotation) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.annotation, self.message)
        }
    }
}

impl std::error::Error for Invalid {}

/// What [`Settings::read`] found: a pod not asking, or asking (rightly or not).
#[derive(Debug)]
pub enum Request {
    /// Not opted in by the label.
    NotOptedIn,
    /// Carries [`STATUS_ANNOTATION`]: injected before.
    AlreadyInjected,
    Inject(Box<Settings>),
    Invalid(Vec<Invalid>),
}

/// Reads the annotations one at a time, collecting every problem.
struct Reader<'a> {
    annotations: &'a Map<String, Value>,
    problems: Vec<Invalid>,
}

impl<'a> Reader<'a> {
    fn get(&mut self, key: &str) -> Option<&'a str> {
        match self.annotations.get(&format!("{PREFIX}{key}"))? {
            Value::String(s) => Some(s.as_str()),
            _ => {
                self.refuse(key, "must be a string");
                None
            }
        }
    }

    fn refuse(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Invalid::new(key, message));
    }

    /// A comma-separated list of Kubernetes names (empty items dropped): DNS labels
    /// (container names) or, with `label` false, subdomains (Secret names).
    fn names(&mut self, key: &str, label: bool) -> Option<Vec<String>> {
        let text = self.get(key)?;
        let names: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            self.refuse(
                key,
                "is empty; name at least one, or leave the annotation out",
            );
            return None;
        }
        for name in &names {
            let valid = if label {
                is_dns_label(name)
            } else {
                is_dns_subdomain(name)
            };
            if !valid {
                let (chars, max) = if label {
                    ("`-`", 63)
                } else {
                    ("`-` and `.`", 253)
                };
                self.refuse(
                    key,
                    format!(
                        "`{}` is not a valid name (lowercase letters, digits, {chars}; at most {max} characters)",
                        shown(name)
                    ),
                );
                return None;
            }
        }
        Some(names)
    }

    fn id(&mut self, key: &str) -> Option<i64> {
        let text = self.get(key)?;
        match text.trim().parse::<i64>() {
            Ok(id) if (1..=i64::from(i32::MAX)).contains(&id) => Some(id),
            Ok(0) if key == "file-group" => Some(0),
            Ok(0) => {
                self.refuse(key, "0 is root; the agent never runs as root");
                None
            }
            _ => {
                self.refuse(
                    key,
                    format!(
                        "`{}` is not a user or group id (1 to 2147483647)",
                        shown(text)
                    ),
                );
                None
            }
        }
    }

    fn quantity(&mut self, key: &str, default: &str) -> (String, Option<Quantity>) {
        let Some(text) = self.get(key) else {
            return (default.to_owned(), Quantity::parse(default));
        };
        let text = text.trim();
        match Quantity::parse(text) {
            Some(q) => (text.to_owned(), Some(q)),
            None => {
                self.refuse(
                    key,
                    format!(
                        "`{}` is not a Kubernetes quantity (e.g. `5m`, `16Mi`)",
                        shown(text)
                    ),
                );
                (default.to_owned(), None)
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<String> {
        let text = self.get(key)?.trim();
        let path = Path::new(text);
        let clean = path.is_absolute()
            && path.components().count() > 1
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && !text.contains(':')
            && text.len() <= 1024;
        if clean {
            Some(text.trim_end_matches('/').to_owned())
        } else {
            self.refuse(
                key,
                format!(
                    "`{}` must be an absolute path below `/`, without `..` or `:`",
                    shown(text)
                ),
            );
            None
        }
    }
}

/// What the agent's own config says the injector must follow: where it writes and listens.
struct AgentConfig {
    token_dir: String,
    state_dir: String,
    port: u16,
}

/// Checks the `config` annotation as `validate` would, plus what running as an injected,
/// capability-less sidecar requires.
fn check_config(text: &str) -> Result<AgentConfig, Vec<Invalid>> {
    let key = "config";
    let config = Config::parse(text, Path::new(&format!("{PREFIX}{key}"))).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|e| Invalid {
                annotation: format!("{PREFIX}{key}"),
                message: e.to_string(),
            })
            .collect::<Vec<_>>()
    })?;
    let mut problems = Vec::new();
    let mut refuse = |message: String| problems.push(Invalid::new(key, message));
    if config.allow_inline_secrets {
        refuse("allow_inline_secrets: anyone who can read the pod can read its annotations; put credentials in a Secret and name it in token-agent.io/secrets".into());
    }
    if !config.server.enabled {
        refuse("server.enabled: the startup probe needs /readyz; leave the server on".into());
    }
    if config.server.listen.ip().is_loopback() {
        refuse(format!(
            "server.listen: {} is loopback; the kubelet probes the pod's IP (use 0.0.0.0:PORT)",
            config.server.listen
        ));
    }
    let file = &config.defaults.file;
    if file.uid.is_some() || file.gid.is_some() {
        refuse("defaults.file.uid/gid: changing owners needs CAP_CHOWN, which the injected agent does not have; set token-agent.io/file-user and file-group instead".into());
    }
    for (i, source) in config.sources.iter().enumerate() {
        for (j, sink) in source.sinks.iter().enumerate() {
            if sink.name() != "file" {
                continue;
            }
            if let Some((_, target)) = sink.kind().target(&file.dir)
                && !target.starts_with(&file.dir)
            {
                refuse(format!(
                    "sources[{i}].sinks[{j}]: writes {} outside defaults.file.dir {}, the only directory on the token volume",
                    target.display(),
                    file.dir.display()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(AgentConfig {
        token_dir: display(&file.dir),
        state_dir: display(&config.state_dir()),
        port: config.server.listen.port(),
    })
}

fn display(path: &Path) -> String {
    path.to_string_lossy().trim_end_matches('/').to_owned()
}

impl Settings {
    /// Reads what `pod` (the JSON the API server sent) asks for.
    pub fn read(pod: &Value, defaults: &InjectorDefaults) -> Request {
        let metadata = &pod["metadata"];
        if metadata["labels"][INJECT_LABEL].as_str() != Some("true") {
            return Request::NotOptedIn;
        }
        let empty = Map::new();
        let annotations = metadata["annotations"].as_object().unwrap_or(&empty);
        if annotations.get(STATUS_ANNOTATION).and_then(Value::as_str) == Some(INJECTED) {
            return Request::AlreadyInjected;
        }
        let mut r = Reader {
            annotations,
            problems: Vec::new(),
        };
        for key in annotations.keys() {
            if let Some(rest) = key.strip_prefix(PREFIX)
                && !KNOWN.contains(&rest)
            {
                r.refuse(
                    rest,
                    format!(
                        "unknown annotation; known: {}",
                        KNOWN[..KNOWN.len() - 1].join(", ")
                    ),
                );
            }
        }
        if let Some(status) = r.get("status") {
            r.refuse(
                "status",
                format!(
                    "`{}` is not `{INJECTED}`; this annotation is the injector's own",
                    shown(status)
                ),
            );
        }

        let inline = r.get("config");
        let config_map = r.names("config-map", false);
        let mut agent = AgentConfig {
            token_dir: DEFAULT_TOKEN_DIR.into(),
            state_dir: crate::config::DEFAULT_STATE_DIR.into(),
            port: DEFAULT_PORT,
        };
        let config = match (inline, config_map) {
            (Some(_), Some(_)) => {
                r.refuse("config", "set either config or config-map, not both");
                ConfigSource::Annotation
            }
            (Some(text), None) => {
                match check_config(text) {
                    Ok(checked) => agent = checked,
                    Err(problems) => r.problems.extend(problems),
                }
                ConfigSource::Annotation
            }
            (None, Some(names)) => {
                if names.len() > 1 {
                    r.refuse("config-map", "names one ConfigMap");
                }
                ConfigSource::ConfigMap(names.concat())
            }
            (None, None) => {
                if !annotations.contains_key(&format!("{PREFIX}config-map")) {
                    r.refuse(
                        "config",
                        "the pod opted in (label token-agent.io/inject) but names no config: set token-agent.io/config (the agent's YAML) or token-agent.io/config-map",
                    );
                }
                ConfigSource::Annotation
            }
        };
        if let Some(text) = r.get("port") {
            match text.trim().parse::<u16>() {
                Ok(port) if port > 0 => {
                    if config == ConfigSource::Annotation && port != agent.port {
                        r.refuse(
                            "port",
                            format!(
                                "{port} differs from the config's server.listen port {}; with an inline config the port comes from the config",
                                agent.port
                            ),
                        );
                    }
                    agent.port = port;
                }
                _ => r.refuse("port", format!("`{}` is not a port (1-65535)", shown(text))),
            }
        }

        let secrets = r.names("secrets", false).unwrap_or_default();
        let mode = match r.get("mode").map(str::trim) {
            None | Some("native") => Mode::Native,
            Some("classic") => Mode::Classic,
            Some("init-only") => Mode::InitOnly,
            Some(other) => {
                r.refuse(
                    "mode",
                    format!(
                        "`{}` is not one of native, classic, init-only",
                        shown(other)
                    ),
                );
                Mode::Native
            }
        };
        let containers = r.names("containers", true);
        let path = r.path("path").unwrap_or_else(|| agent.token_dir.clone());

        let security = &pod["spec"]["securityContext"];
        let pod_user = security["runAsUser"].as_i64().filter(|&u| u > 0);
        let pod_group = security["fsGroup"]
            .as_i64()
            .or_else(|| security["runAsGroup"].as_i64());
        let run_as_user = r.id("file-user").or(pod_user).unwrap_or(DEFAULT_UID);
        let run_as_group = r.id("file-group").or(pod_group).unwrap_or(DEFAULT_UID);

        let (cpu_request, _) = r.quantity("cpu-request", DEFAULT_CPU_REQUEST);
        let (memory_request, request) = r.quantity("memory-request", DEFAULT_MEMORY_REQUEST);
        let (memory_limit, limit) = r.quantity("memory-limit", DEFAULT_MEMORY_LIMIT);
        if let (Some(request), Some(limit)) = (request, limit)
            && request > limit
        {
            r.refuse(
                "memory-request",
                format!("{memory_request} is above the memory limit {memory_limit}"),
            );
        }

        let image = match r.get("image").map(str::trim) {
            Some(image) if !image.is_empty() && !image.contains(char::is_whitespace) => {
                image.to_owned()
            }
            Some(image) => {
                r.refuse(
                    "image",
                    format!("`{}` is not an image reference", shown(image)),
                );
                defaults.image.clone()
            }
            None => defaults.image.clone(),
        };
        let init_first = match r.get("init-first").map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                r.refuse(
                    "init-first",
                    format!("`{}` is not true or false", shown(other)),
                );
                false
            }
        };
        let startup_timeout = match r.get("startup-timeout") {
            None => DEFAULT_STARTUP_TIMEOUT,
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => d,
                _ => {
                    r.refuse(
                        "startup-timeout",
                        format!(
                            "`{}` is not a duration between 1s and 24h (e.g. `5m`)",
                            shown(text)
                        ),
                    );
                    DEFAULT_STARTUP_TIMEOUT
                }
            },
        };

        if !r.problems.is_empty() {
            return Request::Invalid(r.problems);
        }
        Request::Inject(Box::new(Settings {
            config,
            secrets,
            mode,
            containers,
            token_dir: agent.token_dir,
            path,
            state_dir: agent.state_dir,
            port: agent.port,
            run_as_user,
            run_as_group,
            cpu_request,
            memory_request,
            memory_limit,
            image,
            pull_policy: defaults.pull_policy.clone(),
            init_first,
            startup_timeout,
        }))
    }
}
