//! The `token-agent` binary: argument parsing and wiring only; the work is in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use token_agent::agent::Agent;
use token_agent::clock::Clock;
use token_agent::config::{Config, ConfigErrors, ServerConfig};
use token_agent::observability::Observability;
use token_agent::priority;
use token_agent::reload::ConfigReloader;
use token_agent::telemetry::{self, LogFormat};
use token_agent::{dev, server};

mod process_memory;

/// Configuration errors exit with EX_USAGE, like linkerd2-proxy.
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "token-agent",
    version,
    about = "Keeps short-lived credentials fresh: fetches tokens before they expire and writes them where apps read them.",
    after_help = "Examples:\n  token-agent dev                                  # demo issuer on loopback, tokens rotating in ./tokens\n  token-agent validate --config /etc/token-agent/config.yaml\n  token-agent once --config config.yaml            # init container: fetch everything, then exit\n  token-agent run --config config.yaml             # sidecar / Deployment\n  RUST_LOG=token_agent=debug token-agent --log-format json run --config config.yaml"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keep every source's token fresh until SIGTERM/SIGINT.
    Run {
        #[arg(long, short, env = "TOKEN_AGENT_CONFIG")]
        config: PathBuf,
        /// Elect a leader among replicas through a Lease (same as `leader_election.enabled`).
        #[arg(long)]
        leader_elect: bool,
    },
    /// Fetch every source once, write every sink, exit 0 only if all required sources succeeded.
    Once {
        #[arg(long, short, env = "TOKEN_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Delete the API-Portal entries this agent created for a source, and forget their ids.
    Revoke {
        #[arg(long, short, env = "TOKEN_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        source: String,
    },
    /// Check a configuration without network access; exit 64 on any problem.
    Validate {
        #[arg(long, short, env = "TOKEN_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// The injector: a mutating admission webhook that adds token-agent to pods labelled
    /// `token-agent.io/inject: "true"` (docs/injection.md).
    Webhook(Box<WebhookArgs>),
    /// Demo: an embedded issuer on 127.0.0.1 and tokens rotating every ~25 s in ./tokens.
    Dev {
        /// Where the demo tokens are written.
        #[arg(long, default_value = "tokens")]
        dir: PathBuf,
        /// Metrics and health endpoints (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Lifetime of the demo tokens.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
    },
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// HTTPS: `POST /mutate`, `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "TOKEN_AGENT_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "TOKEN_AGENT_WEBHOOK_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// Directory holding `tls.crt` and `tls.key` (a Secret volume); reloaded when it changes.
    #[arg(
        long,
        env = "TOKEN_AGENT_WEBHOOK_TLS_DIR",
        default_value = "/etc/token-agent-webhook/tls"
    )]
    tls_dir: PathBuf,
    /// The image injected as the agent (a pod's `token-agent.io/image` overrides it).
    #[arg(long, env = "TOKEN_AGENT_AGENT_IMAGE")]
    agent_image: String,
    #[arg(long, env = "TOKEN_AGENT_AGENT_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    agent_pull_policy: String,
    /// The webhook's own namespace: its pods, like kube-system's, are never injected.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Make and renew the CA and serving certificate, keep them in `--tls-secret`, and keep
    /// the caBundle of `--webhook-config` current (one replica at a time, by `--lease`).
    #[arg(long, env = "TOKEN_AGENT_WEBHOOK_SELF_MANAGED_TLS", requires_all = ["tls_secret", "webhook_config", "service", "lease"])]
    self_managed_tls: bool,
    #[arg(long, env = "TOKEN_AGENT_WEBHOOK_TLS_SECRET")]
    tls_secret: Option<String>,
    #[arg(long, env = "TOKEN_AGENT_WEBHOOK_CONFIG")]
    webhook_config: Option<String>,
    #[arg(long, env = "TOKEN_AGENT_WEBHOOK_SERVICE")]
    service: Option<String>,
    #[arg(long, env = "TOKEN_AGENT_WEBHOOK_LEASE")]
    lease: Option<String>,
    /// Lifetime of the serving certificate; renewed with a third left.
    #[arg(long, default_value = "168h", value_parser = humantime::parse_duration)]
    cert_validity: Duration,
    /// Lifetime of the CA; renewed with a third left, the old one trusted until it expires.
    #[arg(long, default_value = "87600h", value_parser = humantime::parse_duration)]
    ca_validity: Duration,
    /// How often the leader checks the certificate, the Secret and the caBundle.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    check_every: Duration,
}

fn main() -> ExitCode {
    process_memory::tune_allocator();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    token_agent::install_crypto_provider();
    // Two workers are plenty for I/O-bound work. File writes run on one thread per volume, a
    // second only for a slow volume (sink/volume.rs); the small blocking pool takes one-off
    // work, so ten thousand sources do not become hundreds of OS threads.
    //
    // The runtime's threads run a nice level below the writer threads, which a thread started
    // here, at the process's own level, starts (priority.rs).
    if let Err(e) = priority::start_full_priority_starter() {
        warn!(
            "cannot start the thread that starts writer threads: {e}; they start at the runtime's lower priority"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .on_thread_start(priority::lower_this_thread)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate { config } => Ok(validate(&config)),
            Command::Run {
                config,
                leader_elect,
            } => match Config::read(&config)
                .and_then(|text| Ok((Config::parse_live(&text, &config)?, text)))
            {
                Ok((mut c, text)) => {
                    warn_about(&c);
                    c.leader_election.enabled |= leader_elect;
                    let live = LiveConfig {
                        path: config,
                        text,
                        leader_elect,
                    };
                    run_until_signal(c, false, Some(live)).await
                }
                Err(errors) => Ok(refuse(&config, &errors)),
            },
            Command::Once { config } => match load(&config) {
                Ok(c) => once(c).await,
                Err(code) => Ok(code),
            },
            Command::Revoke { config, source } => match load(&config) {
                Ok(c) => revoke(c, &source).await,
                Err(code) => Ok(code),
            },
            Command::Webhook(args) => webhook(*args).await,
            Command::Dev {
                dir,
                listen,
                token_ttl,
            } => dev(dir, listen, token_ttl).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a config, printing every problem and returning the exit code on failure.
fn load(path: &Path) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            warn_about(&config);
            Ok(config)
        }
        Err(errors) => Err(refuse(path, &errors)),
    }
}

fn warn_about(config: &Config) {
    for w in config.warnings() {
        warn!("{w}");
    }
}

/// Prints every problem of the configuration at `path`; the exit code to leave with.
fn refuse(path: &Path, errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
    ExitCode::from(EX_USAGE)
}

/// The file `run` was started from, watched for live reconfiguration.
struct LiveConfig {
    path: PathBuf,
    text: String,
    leader_elect: bool,
}

fn validate(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} source(s))",
                path.display(),
                config.sources.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; stopping"),
            _ = terminate => info!("SIGTERM received; stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

async fn start_server(
    server: &ServerConfig,
    view: Arc<Observability>,
    shutdown: watch::Receiver<bool>,
    fallback: bool,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !server.enabled {
        return Ok(None);
    }
    let listener = match server::bind(server.listen).await {
        Ok(l) => l,
        Err(e) if fallback => {
            warn!(listen = %server.listen, error = %e, "address in use; serving metrics on a free port instead");
            server::bind(SocketAddr::new(server.listen.ip(), 0)).await?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", server.listen)),
    };
    let addr = listener.local_addr()?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = server::serve(listener, view, shutdown).await {
            warn!(error = %e, "HTTP server stopped");
        }
    })))
}

async fn run_until_signal(
    config: Config,
    fallback_port: bool,
    live: Option<LiveConfig>,
) -> anyhow::Result<ExitCode> {
    let agent = Agent::build(&config, Clock::system())?;
    let shutdown = shutdown_on_signal();
    let (reloads, reload_requests) = mpsc::channel(1);
    if let Some(live) = live {
        let reloader = ConfigReloader::new(
            live.path,
            &live.text,
            &config,
            live.leader_elect,
            reloads,
            agent.observability(),
        );
        tokio::spawn(reloader.run(shutdown.clone()));
    }
    let http = start_server(
        &config.server,
        agent.observability(),
        shutdown.clone(),
        fallback_port,
    )
    .await?;
    info!(sources = config.sources.len(), "token-agent started");
    tokio::spawn(async {
        tokio::time::sleep(process_memory::START_UP_SETTLED).await;
        match process_memory::release_start_up_code() {
            Ok(kib) => debug!(
                kib,
                "unmapped the start-up code; its pages stay in the page cache"
            ),
            Err(e) => debug!(error = %e, "could not unmap the start-up code"),
        }
    });
    drop(config); // the agent holds what it needs; the parsed file is large at scale
    agent.run_with_reloads(shutdown, reload_requests).await;
    if let Some(handle) = http {
        let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, handle).await;
    }
    info!("token-agent stopped");
    Ok(ExitCode::SUCCESS)
}

async fn once(config: Config) -> anyhow::Result<ExitCode> {
    let agent = Agent::build(&config, Clock::system())?;
    let outcomes = agent.once().await;
    let mut failed_required = Vec::new();
    for o in &outcomes {
        match (&o.result, o.required) {
            (Ok(()), _) => info!(source = %o.source, "ok"),
            (Err(e), true) => {
                eprintln!("source `{}` failed: {e}", o.source);
                failed_required.push(o.source.as_str());
            }
            (Err(e), false) => warn!(source = %o.source, error = %e, "optional source failed"),
        }
    }
    if failed_required.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "required source(s) without a token: {}",
            failed_required.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

async fn revoke(config: Config, source: &str) -> anyhow::Result<ExitCode> {
    let agent = Agent::build(&config, Clock::system())?;
    match agent.revoke(source).await {
        Ok(n) => {
            println!(
                "revoked {n} API-Portal entr{} of source `{source}`",
                if n == 1 { "y" } else { "ies" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn webhook(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    use token_agent::inject::{InjectorDefaults, Policy};
    use token_agent::webhook::{self, WebhookOptions, self_managed::SelfManagedTls};
    let self_managed = match (
        args.self_managed_tls,
        args.tls_secret,
        args.webhook_config,
        args.service,
        args.lease,
    ) {
        (true, Some(secret), Some(webhook_config), Some(service), Some(lease)) => {
            Some(SelfManagedTls {
                namespace: args.namespace.clone(),
                secret,
                webhook_config,
                service,
                lease,
                cert_validity: args.cert_validity,
                ca_validity: args.ca_validity,
                check_every: args.check_every,
            })
        }
        _ => None,
    };
    let options = WebhookOptions {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        tls_dir: args.tls_dir,
        policy: Policy {
            defaults: InjectorDefaults {
                image: args.agent_image,
                pull_policy: args.agent_pull_policy,
            },
            excluded_namespaces: vec!["kube-system".into(), args.namespace],
        },
        self_managed,
    };
    webhook::run(options, Default::default(), shutdown_on_signal()).await?;
    info!("webhook stopped");
    Ok(ExitCode::SUCCESS)
}

async fn dev(dir: PathBuf, listen: SocketAddr, ttl: Duration) -> anyhow::Result<ExitCode> {
    let secret: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
    let issuer = dev::issuer::Issuer::start("dev-client", &secret, ttl).await?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dev::config(&issuer.token_url(), &secret, &dir, &listen.to_string())
        .map_err(|e| anyhow::anyhow!("built-in dev config is invalid: {e}"))?;
    info!(
        issuer = %issuer.token_url(),
        tokens = %dir.display(),
        ttl = %humantime::format_duration(ttl),
        "dev mode: demo issuer on loopback; watch the files in the tokens directory rotate (Ctrl-C to stop)"
    );
    run_until_signal(config, true, None).await
}
