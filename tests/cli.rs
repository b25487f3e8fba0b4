//! The `token-agent` binary as users run it: exit codes, messages, signals, endpoints, and the
//! promise that no credential or token is ever printed.

mod common;

use common::process::AgentProcess;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Mock, Reply, secret_file};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("TOKEN_AGENT_CONFIG");
    c
}

fn output(args: &[&str]) -> Output {
    agent(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        body.replace("{dir}", &dir.join("tokens").display().to_string()),
    )
    .unwrap();
    path.display().to_string()
}

fn client() -> reqwest::Client {
    token_agent::install_crypto_provider();
    reqwest::Client::new()
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = client()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn help_and_version() {
    let o = output(&["--help"]);
    assert!(o.status.success());
    let help = text(&o);
    for word in [
        "run",
        "once",
        "validate",
        "dev",
        "Examples:",
        "--log-format",
    ] {
        assert!(help.contains(word), "{word} missing from --help");
    }
    let o = output(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("token-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn validate_reports_every_problem_with_location_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "sources:\n  - name: a\n    kind: oauth2\n    token_url: ftp://x\n    client_id: a\n    client_secret: SENTINEL-INLINE\n    sinks:\n      - file: { path: ../escape }\n",
    );
    let o = output(&["validate", "--config", &config]);
    assert_eq!(o.status.code(), Some(64));
    let out = text(&o);
    assert!(
        out.contains(&format!("{config}:4:5: sources[0].token_url: scheme `ftp`")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{config}:6:5: sources[0].client_secret: credential written in the config"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{config}:8:17: sources[0].sinks[0].file.path: contains `..`"
        )),
        "{out}"
    );
    assert!(out.contains("3 problem(s)"), "{out}");
    assert!(
        !out.contains("SENTINEL-INLINE"),
        "the inline secret's value is not echoed: {out}"
    );

    let o = output(&["validate", "--config", "/nonexistent.yaml"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).contains("/nonexistent.yaml: cannot read"));

    let ok = write_config(
        dir.path(),
        "sources:\n  - { name: a, kind: oauth2, token_url: 'https://x/t', auth: none, sinks: [ { file: { path: a } } ] }\n",
    );
    let o = output(&["validate", "-c", &ok]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("ok (1 source(s))"));
}

#[test]
fn every_shipped_example_validates() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = entry.unwrap().path();
        let o = output(&["validate", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", path.display(), text(&o));
    }
}

fn two_sources(ok_url: &str, bad_url: &str, bad_required: bool) -> String {
    format!(
        "defaults: {{ file: {{ dir: '{{dir}}' }}, http: {{ timeout: 2s }} }}\nserver: {{ enabled: false }}\nsources:\n  - {{ name: good, kind: oauth2, token_url: '{ok_url}', auth: none, sinks: [ {{ file: {{ path: good.token }} }} ] }}\n  - {{ name: bad, required: {bad_required}, kind: oauth2, token_url: '{bad_url}', auth: none, sinks: [ {{ file: {{ path: bad.token }} }} ] }}\n"
    )
}

#[tokio::test]
async fn once_exits_nonzero_naming_required_failures_only() {
    let good =
        Mock::start(|_| Reply::json(200, json!({"access_token": "tok-good", "expires_in": 300})))
            .await;
    let bad = Mock::start(|_| Reply::json(401, json!({"error": "invalid_client"}))).await;
    let dir = tempfile::tempdir().unwrap();

    let config = write_config(
        dir.path(),
        &two_sources(&good.url("/t"), &bad.url("/t"), true),
    );
    let o = tokio::task::spawn_blocking(move || output(&["once", "--config", &config]))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("required source(s) without a token: bad"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tokens/good.token")).unwrap(),
        "tok-good"
    );

    let config = write_config(
        dir.path(),
        &two_sources(&good.url("/t"), &bad.url("/t"), false),
    );
    let o = tokio::task::spawn_blocking(move || output(&["once", "--config", &config]))
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "an optional source may fail: {}",
        text(&o)
    );
}

#[tokio::test]
async fn once_reuses_a_valid_token_already_on_disk() {
    let mock =
        Mock::start(|_| Reply::json(200, json!({"access_token": "tok-1", "expires_in": 3600})))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &two_sources(&mock.url("/t"), &mock.url("/t"), true),
    );
    for _ in 0..2 {
        let c = config.clone();
        let o = tokio::task::spawn_blocking(move || output(&["once", "--config", &c]))
            .await
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(mock.requests().len(), 2, "the second run fetched nothing");
}

#[tokio::test]
async fn run_serves_endpoints_and_stops_cleanly_on_sigterm() {
    let mock =
        Mock::start(|_| Reply::json(200, json!({"access_token": "tok-run", "expires_in": 300})))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "defaults: {{ file: {{ dir: '{{dir}}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - {{ name: s, kind: oauth2, token_url: '{}', auth: none, sinks: [ {{ file: {{ path: s.token }} }} ] }}\n",
            mock.url("/t")
        ),
    );
    let mut child = AgentProcess::start(&mut agent(&["run", "--config", &config]));
    let base = child.base_url().await;
    wait_for("readiness", async || {
        http_get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
    let (_, ready) = http_get(&format!("{base}/readyz")).await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["sources"][0]["name"], "s");
    assert_eq!(ready["sources"][0]["ready"], true);
    assert_eq!(http_get(&format!("{base}/healthz")).await.unwrap().0, 200);
    let (code, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("token_agent_refresh_total{result=\"success\",source=\"s\"} 1"),
        "{metrics}"
    );
    assert_eq!(http_get(&format!("{base}/nope")).await.unwrap().0, 404);
    let post = client()
        .post(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    let (status, _) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn dev_writes_rotating_tokens_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let mut child = AgentProcess::start(&mut agent(&[
        "dev",
        "--dir",
        tokens.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token-ttl",
        "2s",
    ]));
    let base = child.base_url().await;
    let read = |name: &str| std::fs::read_to_string(tokens.join(name)).unwrap_or_default();
    wait_for("first token", async || !read("demo-api.token").is_empty()).await;
    let first = read("demo-api.token");
    wait_for("rotation", async || {
        let now = read("demo-api.token");
        !now.is_empty() && now != first
    })
    .await;
    assert!(read("demo.env").starts_with("DEMO_ENV_TOKEN='"));
    // The threads that wrote the tokens keep the process's nice level; the runtime's sit one
    // below (src/priority.rs).
    let levels = thread_levels(child.id());
    let of = |name: &str| -> Vec<i32> {
        levels
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, level)| *level)
            .collect()
    };
    let process = of("token-agent");
    assert_eq!(process.len(), 1, "{levels:?}");
    let runtime = of("tokio-rt-worker");
    let writers = of("sink-volume");
    assert!(!runtime.is_empty() && !writers.is_empty(), "{levels:?}");
    assert!(runtime.iter().all(|l| *l == process[0] + 1), "{levels:?}");
    assert!(writers.iter().all(|l| *l == process[0]), "{levels:?}");
    let (code, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("token_agent_token_valid{source=\"demo-api\"} 1"),
        "{metrics}"
    );
    let (status, log) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("token refreshed"), "{log}");
    assert!(!log.contains(&first), "the token never appears in the log");
    assert!(
        !log.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {log}"
    );
}

/// The name and nice level of each thread of process `pid` (a thread that ends meanwhile is
/// left out).
fn thread_levels(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // The fields after the name in parentheses; the nice level is the 19th of the line.
            let after_name = &stat[stat.rfind(')')? + 2..];
            let level = after_name.split(' ').nth(16)?.parse().ok()?;
            Some((name.trim().to_owned(), level))
        })
        .collect()
}

/// Everything an agent run printed, served and left on disk, for the secret sentinel checks.
struct Observed {
    printed: String,
    metrics: String,
    ready: String,
    /// Every file under the sink directory, by path.
    files: Vec<(String, String)>,
}

/// The inside of `s` as a JSON string: how a JSON log line writes it.
fn json_escaped(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap();
    json[1..json.len() - 1].to_owned()
}

/// `s` as it is and in every encoding a careless log line or an echoing server could carry
/// it in: base64 (standard, URL-safe, with and without padding), URL-encoded (`+` or `%20`)
/// and escaped inside a JSON string (also with `\/`); each also as a JSON log writes it.
fn encoded_forms(s: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let url: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
    let json = json_escaped(s);
    let forms = [
        s.to_owned(),
        STANDARD.encode(s),
        STANDARD_NO_PAD.encode(s),
        URL_SAFE.encode(s),
        URL_SAFE_NO_PAD.encode(s),
        url.replace('+', "%20"),
        url,
        json.replace('/', "\\/"),
        json,
    ];
    let logged = forms.iter().map(|f| json_escaped(f));
    forms.iter().cloned().chain(logged).collect()
}

impl Observed {
    /// Neither the credentials nor the tokens, in any form, were printed or served; no
    /// credential is in any file the sinks wrote.
    fn assert_absent(&self, credentials: &[&str], tokens: &[&str]) {
        let forms = |needles: &[&str]| -> Vec<String> {
            needles.iter().flat_map(|n| encoded_forms(n)).collect()
        };
        let (credentials, tokens) = (forms(credentials), forms(tokens));
        for (what, body) in [
            ("output", &self.printed),
            ("metrics", &self.metrics),
            ("readyz", &self.ready),
        ] {
            for needle in credentials.iter().chain(&tokens) {
                assert!(!body.contains(needle), "{needle} leaked into {what}");
            }
        }
        for (path, body) in &self.files {
            for needle in &credentials {
                assert!(!body.contains(needle), "{needle} leaked into {path}");
            }
        }
    }
}

/// Every file below `dir`, read as text.
fn files_below(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_below(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    found
}

/// Runs `args` at trace level until `done`, scrapes `/metrics` and `/readyz`, stops it with
/// SIGTERM (asserting exit 0) and returns what it printed, served and wrote below `sinks`.
async fn observe(
    args: &[&str],
    sinks: &Path,
    what: &str,
    done: impl AsyncFnMut() -> bool,
) -> Observed {
    let mut child = AgentProcess::start(agent(args).env("RUST_LOG", "trace"));
    let base = child.base_url().await;
    wait_for(what, done).await;
    let (_, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    let (_, ready) = http_get(&format!("{base}/readyz")).await.unwrap();
    let (status, printed) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{printed}");
    Observed {
        printed,
        metrics,
        ready,
        files: files_below(sinks),
    }
}

/// Runs the agent at trace level through successes and failures (client_secret_basic and
/// client_secret_post), then searches everything it printed or served for the credentials
/// and the tokens.
#[tokio::test]
async fn no_credential_or_token_is_ever_printed_or_served() {
    // `/`, `+`, `=` and `@` make every encoded form differ from the plain one.
    const SECRET: &str = "SENTINEL/SECRET+7d1f=0c";
    const ID: &str = "SENTINEL@CLIENT-ID-99ab";
    const TOKEN: &str = "SENTINEL+TOKEN/4e2a9b";
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let mock = Mock::start(move |r| {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        // An issuer that echoes the credentials back, in every form, must not get them logged:
        // the Authorization header and the form body it received as they are, the secret in
        // base64, and inside JSON with `/` escaped (PHP's json_encode).
        let authorization = r.header("authorization").unwrap_or("none").to_owned();
        let body = String::from_utf8_lossy(&r.body).into_owned();
        match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3 {
            0 => Reply::json(200, json!({"access_token": format!("{TOKEN}-{}", fastrand::u64(..)), "expires_in": 2})),
            1 => Reply::json(401, json!({"error": "invalid_client", "error_description": format!("client {ID} secret {SECRET} rejected; you sent {authorization} and {body}; hint {}", STANDARD.encode(SECRET))})),
            _ => Reply::text(500, &format!(r#"internal error {{"client_secret":"{}"}}"#, SECRET.replace('/', "\\/"))),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret_path = secret_file(dir.path(), "secret", SECRET);
    let source = |name: &str, auth: &str| {
        format!(
            "  - name: {name}\n    kind: oauth2\n    auth: {auth}\n    token_url: '{}'\n    client_id: {ID}\n    client_secret: {{ file: '{secret_path}' }}\n    sinks: [ {{ file: {{ path: {name}.token }} }}, {{ file: {{ path: {name}.json, format: json }} }}, {{ file: {{ path: {name}.env, format: env }} }} ]\n",
            mock.url("/token?key=SENTINEL-QUERY")
        )
    };
    let config = write_config(
        dir.path(),
        &format!(
            "defaults: {{ file: {{ dir: '{{dir}}' }}, retry: {{ initial: 100ms, max: 200ms }}, refresh: {{ min_interval: 100ms }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n{}{}",
            source("basic", "basic"),
            source("post", "post")
        ),
    );
    let seen = observe(
        &["--log-format", "json", "run", "--config", &config],
        &dir.path().join("tokens"),
        "several refresh cycles",
        async || mock.requests().len() >= 12,
    )
    .await;
    let printed = &seen.printed;
    assert!(
        printed.contains("refresh failed"),
        "the failures were logged"
    );
    assert!(
        printed.contains("<redacted>"),
        "echoed credentials were scrubbed, not dropped silently"
    );
    assert!(printed.lines().count() > 50, "trace logging was on");
    let written = std::fs::read_to_string(dir.path().join("tokens/basic.token")).unwrap();
    assert!(written.starts_with(TOKEN), "the sink did receive the token");
    let basic = mock.requests().iter().find_map(|r| r.basic_raw()).unwrap();
    let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    assert_eq!(basic.1, encoded, "the credential did go over the wire");
    // The Basic credentials as sent: base64 of `id:secret`, which no form of either holds.
    let headers: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| {
            Some(
                r.header("authorization")?
                    .strip_prefix("Basic ")?
                    .to_owned(),
            )
        })
        .collect();
    assert!(!headers.is_empty());
    let mut credentials = vec![SECRET, ID, "SENTINEL-QUERY"];
    credentials.extend(headers.iter().map(String::as_str));
    seen.assert_absent(&credentials, &[TOKEN]);
}

/// The same promise for every kind: mindsphere (all tenants), odin_oa, http and exec, at
/// trace level, with issuers that echo credentials back in errors.
#[tokio::test]
async fn no_kind_prints_or_serves_its_credentials_or_tokens() {
    use common::mindsphere::{BASE, MindSphere};
    const OA_TOKEN: &str = "SENTINEL-APS-TOKEN";
    let mut service = MindSphere::new(&["t1", "t2", "t3"]);
    service.client_secret = "SENTINEL-MDSP-SECRET";
    service.lifetime = 3;
    let mdsp = service.start().await;
    let odin = Mock::start(|r| {
        let auth = r.basic_raw().map(|(_, p)| p).unwrap_or_default();
        let body = format!("<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>status</name><value><i4>0</i4></value></member><member><name>result</name><value><struct><member><name>aps_token</name><value><string>{OA_TOKEN}-{}</string></value></member></struct></value></member></struct></value></param></params></methodResponse>", auth.len());
        Reply::text(200, &body)
    })
    .await;
    let http = Mock::start(|r| {
        let key = r.header("x-api-key").unwrap_or_default().to_owned();
        Reply::json(401, json!({"error": "invalid_client", "error_description": format!("key {key} is revoked")}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| secret_file(dir.path(), name, value);
    let mdsp_secret = file("mdsp", "SENTINEL-MDSP-SECRET");
    let oa_password = file("oa", "SENTINEL-OA-PASSWORD");
    let http_key = file("key", "SENTINEL-HTTP-KEY");
    let exec_key = file("exec", "SENTINEL-EXEC-KEY");
    let config = write_config(
        dir.path(),
        &format!(
            "defaults: {{ file: {{ dir: '{{dir}}' }}, retry: {{ initial: 100ms, max: 200ms }}, refresh: {{ min_interval: 100ms }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n\
  - {{ name: mdsp, kind: mindsphere, base_url: '{}', client_id: mdsp-client, client_secret: {{ file: '{mdsp_secret}' }}, app_name: a, app_version: '1', host_tenant: hosttenant, all_tenants: true, sinks: [ {{ file: {{ path: 'mdsp/{{tenant}}.token' }} }} ] }}\n\
  - {{ name: oa, kind: odin_oa, url: '{}', username: u, password: {{ file: '{oa_password}' }}, account_id: 1, ttl: 10s, sinks: [ {{ file: {{ path: oa.token }} }} ] }}\n\
  - {{ name: web, kind: http, url: \"{}?k={{{{ secret('key') }}}}\", headers: {{ X-Api-Key: \"{{{{ secret('key') }}}}\" }}, secrets: {{ key: {{ file: '{http_key}' }} }}, sinks: [ {{ file: {{ path: web.token }} }} ] }}\n\
  - {{ name: cmd, kind: exec, shell: true, command: ['printf \"SENTINEL-EXEC-TOKEN-%s\" \"${{#K}}\"; echo \"failed with $K\" >&2'], secret_env: {{ K: {{ file: '{exec_key}' }} }}, response: {{ format: text }}, ttl: 1s, sinks: [ {{ file: {{ path: cmd.token }} }} ] }}\n",
            mdsp.url(BASE),
            odin.url("/RPC2"),
            http.url("/t"),
        ),
    );
    let tokens = dir.path().join("tokens");
    let seen = observe(
        &["run", "--config", &config],
        &tokens,
        "tokens of every kind and a failing http source",
        async || {
            tokens.join("oa.token").exists()
                && tokens.join("cmd.token").exists()
                && tokens.join("mdsp/t3.token").exists()
                && http.requests().len() >= 3
        },
    )
    .await;
    let printed = &seen.printed;
    assert!(
        printed.contains("key <redacted> is revoked"),
        "the http error was logged, scrubbed"
    );

    let credentials = [
        "SENTINEL-MDSP-SECRET",
        "SENTINEL-OA-PASSWORD",
        "SENTINEL-HTTP-KEY",
        "SENTINEL-EXEC-KEY",
    ];
    let mut tokens_issued: Vec<String> = [OA_TOKEN, "SENTINEL-EXEC-TOKEN"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for t in ["t1", "t2", "t3"] {
        tokens_issued
            .push(std::fs::read_to_string(tokens.join(format!("mdsp/{t}.token"))).unwrap());
    }
    let tokens_issued: Vec<&str> = tokens_issued.iter().map(String::as_str).collect();
    seen.assert_absent(&credentials, &tokens_issued);
}
