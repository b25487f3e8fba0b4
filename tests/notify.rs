//! Telling the app (`notify:`), with the `token-agent run` binary: an app that reads its token
//! file on SIGHUP always reads the token it was signalled for (never the one before the
//! rename), hanging actions delay neither delivery nor another source, and what a command or
//! webhook hears names the source and the file but never holds the token.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::AgentProcess;
use common::{Mock, Reply, Running, SpawnGuarded, scrape as metrics, series_value as metric};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

/// An app: writes its pid, and on SIGHUP appends what its token file holds to a log, one line
/// per signal. `wait` returns as soon as a trapped signal arrives.
const APP: &str = r#"trap 'cat "$TOKEN"; echo' HUP
echo $$ > "$PIDFILE"
while :; do sleep 5 & wait $!; kill $! 2>/dev/null; done"#;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn start_agent(config: &Path) -> AgentProcess {
    AgentProcess::start(Command::new(BIN).args(["run", "--config", &config.display().to_string()]))
}

/// Starts the app as `program` (a copy of `sh` under another name, so it can be found by
/// name), logging to `log`.
fn start_app(program: &Path, token: &Path, pid_file: &Path, log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let app = Command::new(program)
        .args(["-c", APP])
        .env("TOKEN", token)
        .env("PIDFILE", pid_file)
        .stdout(log)
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(pid_file).is_empty() {
        assert!(Instant::now() < deadline, "the app never wrote its pid");
        std::thread::sleep(Duration::from_millis(10));
    }
    app
}

/// Rotates `rotations` tokens in lock step with the app: the issuer hands out token n only
/// after the app logged n - 1 reads, so each signal can be matched with the token it was for.
async fn every_read_is_the_new_token(rotations: usize, target: &str, dir: &Path, app: &Path) {
    let tokens = dir.join("tokens");
    let (token, pid_file, log) = (
        tokens.join("app.token"),
        dir.join("app.pid"),
        dir.join("reads.log"),
    );
    std::fs::create_dir_all(&tokens).unwrap();
    let _app = start_app(app, &token, &pid_file, &log);
    let issued = std::sync::atomic::AtomicUsize::new(0);
    let log_seen = log.clone();
    let mock = Mock::start(move |_| {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        // Lock step, bounded: a lost signal shows as a missing line, not a hang.
        let deadline = Instant::now() + Duration::from_secs(3);
        while lines(&log_seen).len() < n - 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        Reply::json(
            200,
            json!({"access_token": format!("tok-{n}"), "expires_in": 1}),
        )
    })
    .await;
    let target = target.replace("{pid_file}", &pid_file.display().to_string());
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - name: app\n    kind: oauth2\n    token_url: '{}'\n    auth: none\n    refresh: {{ at: 5%, jitter: 0%, min_interval: 10ms }}\n    sinks: [ {{ file: {{ path: app.token }} }} ]\n    notify: [ {{ signal: {{ name: HUP, {target} }} }} ]\n",
            tokens.display(),
            mock.url("/token")
        ),
    )
    .unwrap();
    let agent = start_agent(&config);
    agent
        .wait_until(
            &format!("{rotations} reads"),
            Duration::from_secs(120),
            || lines(&log).len() >= rotations,
        )
        .await;
    let reads = lines(&log);
    for (i, read) in reads.iter().take(rotations).enumerate() {
        assert_eq!(
            read,
            &format!("tok-{}", i + 1),
            "signal {} found the wrong token in the file; reads so far: {:?}",
            i + 1,
            &reads[..=i]
        );
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_signalled_by_pid_file_always_reads_the_new_token() {
    let dir = tempfile::tempdir().unwrap();
    every_read_is_the_new_token(
        200,
        "pid_file: '{pid_file}'",
        dir.path(),
        Path::new("/bin/sh"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_found_by_process_name_is_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("ta-notify-app");
    std::fs::copy("/bin/sh", &app).unwrap();
    every_read_is_the_new_token(20, "process: ta-notify-app", dir.path(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_actions_delay_neither_delivery_nor_another_source() {
    let issuer = Mock::start(|r| {
        Reply::json(
            200,
            json!({"access_token": format!("tok{}", r.path), "expires_in": 1}),
        )
    })
    .await;
    let never = Mock::start(|_| Reply::json(200, json!({})).after(Duration::from_secs(120))).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let source = |name: &str, notify: &str| {
        format!(
            "  - name: {name}\n    kind: oauth2\n    token_url: '{}'\n    auth: none\n    refresh: {{ at: 50%, jitter: 0%, min_interval: 10ms }}\n    sinks: [ {{ file: {{ path: {name}.token }} }} ]\n{notify}",
            issuer.url(&format!("/{name}"))
        )
    };
    let hanging = format!(
        "    notify:\n      - exec: {{ command: [/bin/sleep, '60'], timeout: 1s }}\n      - http: {{ url: '{}', timeout: 1s }}\n",
        never.url("/hook")
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n{}{}",
            tokens.display(),
            source("hung", &hanging),
            source("other", "    notify: [ { exec: { command: [/bin/true] } } ]\n"),
        ),
    )
    .unwrap();
    let mut agent = start_agent(&config);
    let base = agent.base_url().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fetched = |path: &str| issuer.requests().iter().filter(|r| r.path == path).count();
    let elapsed = started.elapsed().as_secs_f64();
    // Tokens live 1 s and are refreshed at half-life: about 2 fetches a second, each.
    let expected = (elapsed * 2.0 * 0.6) as usize;
    let (hung, other) = (fetched("/hung"), fetched("/other"));
    assert!(
        hung >= expected,
        "hung: {hung} fetches in {elapsed:.1}s:\n{}",
        agent.printed()
    );
    assert!(other >= expected, "other: {other} fetches in {elapsed:.1}s");
    let m = metrics(&base).await;
    for action in ["exec", "http"] {
        let series = format!(
            "token_agent_notify_total{{action=\"{action}\",result=\"timeout\",source=\"hung\"}}"
        );
        assert!(metric(&m, &series) >= 2.0, "{series}:\n{m}");
    }
    let ok = "token_agent_notify_total{action=\"exec\",result=\"success\",source=\"other\"}";
    assert!(metric(&m, ok) >= expected as f64, "{ok}:\n{m}");
    assert!(agent.printed().contains("notify action timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_webhooks_hear_the_source_and_file_but_never_the_token() {
    const TOKEN: &str = "SENTINEL-TOKEN-a1b2c3";
    let issuer =
        Mock::start(|_| Reply::json(200, json!({"access_token": TOKEN, "expires_in": 3600}))).await;
    let hook = Mock::start(|_| Reply::text(204, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (env_out, starts) = (dir.path().join("env.txt"), dir.path().join("starts.log"));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - name: s\n    kind: oauth2\n    token_url: '{}'\n    auth: none\n    sinks: [ {{ file: {{ path: s.token }} }} ]\n    notify:\n      - exec: {{ command: [/bin/sh, -c, 'env > {}'] }}\n      - exec: {{ command: [/bin/sh, -c, 'echo start >> {}'], on_start: true }}\n      - http: {{ url: '{}', headers: {{ X-Hook: yes }} }}\n",
            tokens.display(),
            issuer.url("/token"),
            env_out.display(),
            starts.display(),
            hook.url("/hook")
        ),
    )
    .unwrap();
    let agent = start_agent(&config);
    agent
        .wait_until("the webhook", Duration::from_secs(20), || {
            !hook.requests().is_empty()
        })
        .await;
    agent
        .wait_until("both commands", Duration::from_secs(20), || {
            env_out.exists() && !lines(&starts).is_empty()
        })
        .await;
    let env = std::fs::read_to_string(&env_out).unwrap();
    let file: PathBuf = tokens.join("s.token");
    for expected in [
        "TOKEN_AGENT_SOURCE=s".to_owned(),
        format!("TOKEN_AGENT_FILE={}", file.display()),
        "TOKEN_AGENT_EXPIRES_AT=".to_owned(),
    ] {
        assert!(env.contains(&expected), "{expected} missing from:\n{env}");
    }
    assert!(!env.contains(TOKEN) && !env.contains("RUST_LOG"), "{env}");
    let call = &hook.requests()[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.header("x-hook"), Some("yes"));
    let body = call.json();
    assert_eq!(body["source"], "s");
    assert_eq!(body["file"], file.display().to_string());
    assert!(
        body["expires_at"]
            .as_str()
            .is_some_and(|e| e.ends_with('Z'))
    );
    assert!(!String::from_utf8_lossy(&call.body).contains(TOKEN));
    let (status, printed) = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success());
    assert!(!printed.contains(TOKEN));

    // A warm restart reuses the token: only the `on_start: true` action runs again.
    std::fs::remove_file(&env_out).unwrap();
    let agent = start_agent(&config);
    agent
        .wait_until("the on_start action", Duration::from_secs(20), || {
            lines(&starts).len() == 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !env_out.exists(),
        "an action without on_start ran for a reused token"
    );
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(issuer.requests().len(), 1, "the token was not reused");
}
