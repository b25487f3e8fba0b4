//! `kind: http` and `kind: exec`. The shipped http examples (Apinizer, AppViewX, MindSphere)
//! run against the same vendor mocks as the dedicated kinds, with only their URLs pointed at
//! the mock.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::mindsphere::{BASE, MindSphere};
use common::{Mock, Reply, example, vendors};
use token_agent::agent::{Agent, OnceOutcome};
use token_agent::clock::Clock;
use token_agent::config::Config;

async fn once_yaml(yaml: &str) -> OnceOutcome {
    let config = Config::parse(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    Agent::build(&config, Clock::system())
        .unwrap()
        .once()
        .await
        .remove(0)
}

#[tokio::test]
async fn http_example_apinizer_against_the_apinizer_mock() {
    let mock = Mock::start(vendors::apinizer("ops-user", "p@ss&word", true)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = example(
        "http-apinizer.yaml",
        "https://apinizer-manager.example.com",
        &mock,
        dir.path(),
        &[
            ("APINIZER_USERNAME", "ops-user"),
            ("file:/var/run/secrets/apinizer/password", "p@ss&word"),
        ],
    );
    once_yaml(&yaml).await.result.unwrap();
    let r = &mock.requests()[0];
    assert_eq!(
        r.form_value("client_secret").as_deref(),
        Some("p@ss&word"),
        "urlencode kept the & inside the value"
    );
    assert_eq!(r.header("accept"), Some("application/json"));
    assert!(
        std::fs::read_to_string(dir.path().join("apinizer-http.token"))
            .unwrap()
            .starts_with("ey")
    );

    let wrong = yaml.replace("{{ secret('password') | urlencode }}", "nope");
    std::fs::remove_file(dir.path().join("apinizer-http.token")).unwrap();
    let err = once_yaml(&wrong).await.result.unwrap_err();
    assert!(
        err.contains("HTTP 401: unauthorized_client: Bad credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn http_example_appviewx_against_the_appviewx_mock() {
    let mock = Mock::start(vendors::appviewx("avx-id", "55AU#NO8%*Z")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = example(
        "http-appviewx.yaml",
        "https://appviewx.example.com:31443",
        &mock,
        dir.path(),
        &[
            ("AVX_CLIENT_ID", "avx-id"),
            (
                "file:/var/run/secrets/appviewx/client-secret",
                "55AU#NO8%*Z",
            ),
        ],
    );
    once_yaml(&yaml).await.result.unwrap();
    assert_eq!(
        mock.requests()[0].basic_raw(),
        Some(("avx-id".into(), "55AU#NO8%*Z".into()))
    );
    assert!(
        std::fs::read_to_string(dir.path().join("appviewx-http.token"))
            .unwrap()
            .starts_with("ey")
    );
}

#[tokio::test]
async fn http_example_mindsphere_against_the_mindsphere_mock() {
    let service = MindSphere::new(&["user_tenant_1"]);
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = example(
        "http-mindsphere.yaml",
        "https://gateway.eu1.mindsphere.io",
        &mock,
        dir.path(),
        &[
            ("MDSP_CLIENT_ID", "mdsp-client"),
            ("file:/var/run/secrets/mdsp/client-secret", "mdsp-s3cret"),
        ],
    );
    once_yaml(&yaml).await.result.unwrap();
    let r = &mock.requests()[0];
    assert_eq!(r.path, format!("{BASE}/oauth/token"));
    let key = base64::engine::general_purpose::STANDARD.encode("mdsp-client:mdsp-s3cret");
    assert_eq!(
        r.header("x-space-auth-key"),
        Some(format!("Basic {key}").as_str())
    );
    assert_eq!(r.json()["userTenant"], "user_tenant_1");
}

#[tokio::test]
async fn http_get_with_a_secret_in_the_query_and_a_text_answer() {
    let mock = Mock::start(|r| {
        if r.query.as_deref() == Some("key=SENTINEL-KEY&aud=x") {
            Reply::text(200, "opaque-token\n")
        } else {
            Reply::text(403, "denied")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "SENTINEL-KEY").unwrap();
    let yaml = format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: h\n    kind: http\n    method: GET\n    url: \"{}/token?key={{{{ secret('key') }}}}&aud=x\"\n    secrets: {{ key: {{ file: '{}' }} }}\n    response: {{ format: text }}\n    ttl: 5m\n    sinks: [ {{ file: {{ path: h.token }} }} ]\n",
        dir.path().display(),
        mock.url(""),
        key.display()
    );
    once_yaml(&yaml).await.result.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("h.token")).unwrap(),
        "opaque-token"
    );
    let first = &mock.requests()[0];
    assert_eq!(first.method, "GET");
    let agent = concat!("token-agent/", env!("CARGO_PKG_VERSION"));
    assert_eq!(first.headers["user-agent"], agent);
    assert_eq!(first.headers["accept"], "*/*");

    // The same source in a fresh directory, whose key file holds a wrong key.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join("key"), "SENTINEL-WRONG").unwrap();
    let bad = yaml.replace(
        &dir.path().display().to_string(),
        &fresh.path().display().to_string(),
    );
    let err = once_yaml(&bad).await.result.unwrap_err();
    assert!(err.contains("answered HTTP 403"), "{err}");
    assert!(
        !err.contains("SENTINEL"),
        "the secret in the URL is never shown: {err}"
    );
}

#[tokio::test]
async fn http_headers_of_the_config_win_over_the_agents_defaults() {
    let mock = Mock::start(|_| Reply::text(200, "opaque-token")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: h\n    kind: http\n    url: '{}'\n    headers: {{ User-Agent: 'legacy-client/2', Accept: text/plain }}\n    response: {{ format: text }}\n    ttl: 5m\n    sinks: [ {{ file: {{ path: h.token }} }} ]\n",
        dir.path().display(),
        mock.url("/token"),
    );
    once_yaml(&yaml).await.result.unwrap();
    let request = &mock.requests()[0];
    assert_eq!(request.headers["user-agent"], "legacy-client/2");
    assert_eq!(request.headers["accept"], "text/plain");
    assert_eq!(request.headers.get_all("user-agent").iter().count(), 1);
}

#[test]
fn http_validate_catches_template_and_request_errors() {
    let cases = [
        (
            "    url: \"https://x/{{ secret('nope') }}\"\n",
            "sources[0].url: no secret named `nope`",
        ),
        (
            "    url: https://x/t\n    body: \"{{ unclosed\"\n",
            "sources[0].body:",
        ),
        (
            "    url: https://x/t\n    method: DELETE\n",
            "sources[0].method: `DELETE` is not one of",
        ),
        (
            "    url: https://x/t\n    method: GET\n    body: x\n",
            "sources[0].body: a GET request has no body",
        ),
        ("    url: ftp://x/t\n", "sources[0].url: scheme `ftp`"),
        (
            "    url: https://x/t\n    headers: { 'Bad Header': x }\n",
            "not a valid HTTP header name",
        ),
        (
            "    url: https://x/t\n    secrets: { k: hunter2 }\n",
            "sources[0].secrets.k: credential written in the config",
        ),
    ];
    for (extra, want) in cases {
        let yaml = format!(
            "sources:\n  - name: h\n    kind: http\n{extra}    sinks: [ {{ file: {{ path: a }} }} ]\n"
        );
        let err = Config::parse(&yaml, Path::new("h.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want `{want}` in:\n{err}");
    }
}

fn exec_yaml(dir: &Path, body: &str) -> String {
    format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: x\n    kind: exec\n{body}    sinks: [ {{ file: {{ path: x.token }} }} ]\n",
        dir.display()
    )
}

#[tokio::test]
async fn exec_reads_text_or_json_from_stdout() {
    let dir = tempfile::tempdir().unwrap();
    once_yaml(&exec_yaml(
        dir.path(),
        "    command: [printf, 'tok-exec\\n']\n    response: { format: text }\n    ttl: 10m\n",
    ))
    .await
    .result
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.token")).unwrap(),
        "tok-exec"
    );
    let dir = tempfile::tempdir().unwrap();
    once_yaml(&exec_yaml(dir.path(), "    command: [printf, '{\"token\":\"tok-json\",\"expires_in\":60}']\n    response: { token: /token }\n")).await.result.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.token")).unwrap(),
        "tok-json"
    );
}

#[tokio::test]
async fn exec_passes_credentials_by_env_and_stdin_only_and_clears_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("stdin-secret");
    std::fs::write(&secret, "from-stdin").unwrap();
    let body = format!(
        "    shell: true\n    command: ['printf \"%s|%s|%s|%s\" \"$API_KEY\" \"$(cat)\" \"${{TA_TEST_AGENT_ONLY:-absent}}\" \"$REGION\"']\n    env: {{ REGION: eu }}\n    secret_env: {{ API_KEY: {{ env: TA_TEST_EXEC_KEY }} }}\n    stdin: {{ file: '{}' }}\n    response: {{ format: text }}\n    ttl: 1m\n",
        secret.display()
    );
    // The agent's own environment is under test: the binary gets it, no `set_var` in a
    // process whose other tests run in parallel threads.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, exec_yaml(dir.path(), &body)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-agent"))
        .args(["once", "--config", config.to_str().unwrap()])
        .env("TA_TEST_EXEC_KEY", "from-env")
        .env("TA_TEST_AGENT_ONLY", "must-not-leak")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.token")).unwrap(),
        "from-env|from-stdin|absent|eu"
    );
}

#[tokio::test]
async fn exec_failures_are_clear_and_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("exec-secret");
    std::fs::write(&secret, "SENTINEL-EXEC").unwrap();
    let leaky = format!(
        "    shell: true\n    command: ['echo \"bad key $K\" >&2; exit 3']\n    secret_env: {{ K: {{ file: '{}' }} }}\n    ttl: 1m\n",
        secret.display()
    );
    let cases = [
        (leaky.as_str(), "exited with 3: bad key <redacted>"),
        (
            "    command: [/nonexistent/tool]\n    ttl: 1m\n",
            "command /nonexistent/tool cannot start",
        ),
        (
            "    command: [true]\n    response: { format: text }\n    ttl: 1m\n",
            "the token is empty",
        ),
        (
            "    command: [printf, 'not json']\n    ttl: 1m\n",
            "body is not JSON",
        ),
        (
            "    shell: true\n    command: ['head -c 2000000 /dev/zero | tr \"\\\\0\" x']\n    response: { format: text }\n    ttl: 1m\n",
            "larger than 1048576 bytes",
        ),
    ];
    for (body, want) in cases {
        let err = once_yaml(&exec_yaml(dir.path(), body))
            .await
            .result
            .unwrap_err();
        assert!(err.contains(want), "want `{want}` in `{err}`");
        assert!(!err.contains("SENTINEL-EXEC"));
    }
}

#[tokio::test]
async fn exec_timeout_kills_the_command() {
    let started = Instant::now();
    let (_dir, pid_file) = run_until_timeout("echo $$ > PID; exec sleep 30").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_dies(&pid_file, "the timed-out command is still running").await;
}

/// A shell command's own children (a pipeline, a background job) die with it: the command
/// runs in a process group of its own and the whole group is killed.
#[tokio::test]
async fn exec_timeout_kills_what_the_shell_started() {
    let (_dir, pid_file) = run_until_timeout("sleep 30 & echo $! > PID; wait").await;
    assert_dies(
        &pid_file,
        "the shell's background child outlived the timeout",
    )
    .await;
}

/// Runs `script` (`PID` stands for a file the script writes a pid to) as a `shell: true`
/// exec source with a 300 ms timeout, checks that it timed out, and returns that file.
async fn run_until_timeout(script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = script.replace("PID", &pid_file.display().to_string());
    let body =
        format!("    shell: true\n    command: ['{command}']\n    timeout: 300ms\n    ttl: 1m\n");
    let err = once_yaml(&exec_yaml(dir.path(), &body))
        .await
        .result
        .unwrap_err();
    assert!(err.contains("timed out after 300ms"), "{err}");
    (dir, pid_file)
}

/// Waits up to 5 s for the process whose pid is in `pid_file` to be gone (or a zombie).
async fn assert_dies(pid_file: &Path, message: &str) {
    let pid = std::fs::read_to_string(pid_file).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'));
        if !alive {
            break;
        }
        assert!(Instant::now() < deadline, "{message} (pid {pid})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn exec_validate_catches_bad_commands() {
    let cases = [
        (
            "    command: []\n",
            "sources[0].command: must name a program",
        ),
        (
            "    command: [a, b]\n    shell: true\n",
            "give one string for /bin/sh -c",
        ),
        (
            "    command: [a]\n    env: { 1BAD: x }\n",
            "sources[0].env.1BAD: not a valid variable name",
        ),
        (
            "    command: [a]\n    secret_env: { K: hunter2 }\n",
            "sources[0].secret_env.K: credential written in the config",
        ),
        (
            "    command: [a]\n    timeout: 0s\n",
            "sources[0].timeout: must be greater than zero",
        ),
    ];
    for (extra, want) in cases {
        let yaml = format!(
            "sources:\n  - name: x\n    kind: exec\n{extra}    sinks: [ {{ file: {{ path: a }} }} ]\n"
        );
        let err = Config::parse(&yaml, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want `{want}` in:\n{err}");
    }
}
