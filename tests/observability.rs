//! What operators see: the exact Prometheus series after success, failure and expiry (parsed
//! with a real exposition parser), `/readyz` going 503 → 200 → 503, `/healthz`, malformed
//! requests, and structured JSON logs with one event per refresh attempt.

mod common;

use common::process::AgentProcess;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Mock, Reply};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

struct Agent {
    process: AgentProcess,
    base: String,
}

impl Agent {
    async fn start(dir: &std::path::Path, token_url: &str) -> Agent {
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "defaults:\n  file: {{ dir: '{}' }}\n  retry: {{ initial: 100ms, max: 300ms }}\n  refresh: {{ at: 50%, min_interval: 100ms }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{token_url}'\n    auth: none\n    sinks:\n      - file: {{ path: orders.token }}\n      - file: {{ path: orders.json, format: json }}\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        let mut process = AgentProcess::start(
            Command::new(BIN)
                .args([
                    "--log-format",
                    "json",
                    "run",
                    "--config",
                    config.to_str().unwrap(),
                ])
                .env("RUST_LOG", "info"),
        );
        let base = process.base_url().await;
        Agent { process, base }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        token_agent::install_crypto_provider();
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("{}{path}", self.base)).await {
                return (r.status().as_u16(), r.text().await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never answered {path}");
    }

    async fn scrape(&self) -> Scrape {
        let (code, body) = self.get("/metrics").await;
        assert_eq!(code, 200);
        Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    async fn readyz(&self) -> (u16, serde_json::Value) {
        let (code, body) = self.get("/readyz").await;
        (code, serde_json::from_str(&body).unwrap())
    }

    /// How many times the agent has logged a failure with no valid token in place.
    fn no_token_events(&self) -> usize {
        self.process
            .printed()
            .matches("refresh failed and no valid token is available")
            .count()
    }

    async fn stop(self) -> Vec<String> {
        let process = self.process;
        let (status, printed) = tokio::task::spawn_blocking(move || process.terminate())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(0), "{printed}");
        printed.lines().map(str::to_owned).collect()
    }
}

/// Every sample as `name{label="value",…}` → value (histograms: their count).
fn series(scrape: &Scrape) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .map(|s| {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let value = match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
                Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn metrics_and_readiness_through_failure_success_and_expiry() {
    let up = Arc::new(AtomicBool::new(false));
    let idp_up = up.clone();
    let mock = Mock::start(move |_| {
        if idp_up.load(Ordering::SeqCst) {
            Reply::json(
                200,
                json!({"access_token": format!("tok-{}", fastrand::u32(..)), "expires_in": 6}),
            )
        } else {
            Reply::json(503, json!({"error": "temporarily_unavailable"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &mock.url("/token?secret-query=x")).await;

    // 1. The IdP is down: not ready, failures counted by reason.
    until("a failure", || async {
        series(&agent.scrape().await)
            .get("token_agent_refresh_failures_total{reason=\"http_5xx\",source=\"orders\"}")
            .is_some_and(|v| *v >= 1.0)
    })
    .await;
    let (code, ready) = agent.readyz().await;
    assert_eq!(code, 503);
    assert_eq!(
        ready,
        json!({"ready": false, "sources": [{"name": "orders", "ready": false, "expires_at": null, "last_error_reason": "http_5xx"}]})
    );
    let m = series(&agent.scrape().await);
    assert_eq!(m["token_agent_token_valid{source=\"orders\"}"], 0.0);
    assert_eq!(
        m["token_agent_refresh_total{result=\"success\",source=\"orders\"}"], 0.0,
        "{m:#?}"
    );
    assert!(m["token_agent_refresh_total{result=\"failure\",source=\"orders\"}"] >= 1.0);

    // 2. The IdP is back: ready, with every series an operator expects.
    up.store(true, Ordering::SeqCst);
    until("readiness", || async { agent.readyz().await.0 == 200 }).await;
    let (_, ready) = agent.readyz().await;
    assert_eq!(ready["sources"][0]["ready"], true);
    assert!(ready["sources"][0]["last_error_reason"].is_null());
    let m = series(&agent.scrape().await);
    let now = unix_now();
    assert!(m["token_agent_refresh_total{result=\"success\",source=\"orders\"}"] >= 1.0);
    assert_eq!(m["token_agent_token_valid{source=\"orders\"}"], 1.0);
    let expiry = m["token_agent_token_expiry_timestamp_seconds{source=\"orders\"}"];
    assert!(
        expiry > now && expiry <= now + 6.5,
        "expiry {expiry} vs now {now}"
    );
    let last = m["token_agent_token_last_success_timestamp_seconds{source=\"orders\"}"];
    assert!(last <= now && last > now - 5.0);
    assert!(m["token_agent_next_refresh_timestamp_seconds{source=\"orders\"}"] > now - 5.0);
    assert!(m["token_agent_refresh_duration_seconds{kind=\"oauth2\",source=\"orders\"}"] >= 2.0);
    let tokens = dir.path().join("tokens");
    for file in ["orders.token", "orders.json"] {
        let key = format!(
            "token_agent_sink_write_duration_seconds{{sink=\"file:{}\",source=\"orders\"}}",
            tokens.join(file).display()
        );
        assert!(m.get(&key).is_some_and(|v| *v >= 1.0), "{key} in {m:#?}");
    }
    assert_eq!(m["token_agent_sources{}"], 1.0);
    assert_eq!(
        m[&format!(
            "token_agent_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
    assert!(m["process_resident_memory_bytes{}"] > 1e6);
    assert!(m.contains_key("process_open_fds{}"));
    assert!(m.contains_key("process_cpu_seconds_total{}"));
    // Bounded label values only: no query string, no token.
    for key in m.keys() {
        assert!(
            !key.contains("secret-query") && !key.contains("tok-"),
            "{key}"
        );
    }
    let (code, health) = agent.get("/healthz").await;
    assert_eq!((code, health.as_str()), (200, "ok\n"));

    // 3. Down again: the token in place expires and readiness drops.
    let no_token_yet = agent.no_token_events();
    up.store(false, Ordering::SeqCst);
    until("expiry", || async { agent.readyz().await.0 == 503 }).await;
    until("a failed attempt after the expiry", || async {
        agent.no_token_events() > no_token_yet
    })
    .await;
    let (_, ready) = agent.readyz().await;
    assert_eq!(ready["sources"][0]["ready"], false);
    assert_eq!(ready["sources"][0]["last_error_reason"], "http_5xx");
    assert!(
        ready["sources"][0]["expires_at"]
            .as_str()
            .is_some_and(|t| humantime::parse_rfc3339(t).is_ok())
    );
    let m = series(&agent.scrape().await);
    assert_eq!(m["token_agent_token_valid{source=\"orders\"}"], 0.0);

    // Logs: JSON, one event per attempt with source, outcome, duration and times.
    let logs = agent.stop().await;
    let events: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let success = events
        .iter()
        .find(|e| e["outcome"] == "success")
        .expect("a success event");
    for field in [
        "source",
        "duration_ms",
        "expires_at",
        "next_refresh",
        "timestamp",
        "level",
    ] {
        assert!(!success[field].is_null(), "{field} missing in {success}");
    }
    let failure = events
        .iter()
        .find(|e| e["outcome"] == "failure")
        .expect("a failure event");
    for field in ["source", "duration_ms", "reason", "error", "next_attempt"] {
        assert!(!failure[field].is_null(), "{field} missing in {failure}");
    }
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("answered HTTP 503: temporarily_unavailable")
    );
    // Failures escalate with what is left: at the start (nothing in place) an error; after
    // the last success, while the token lives, a warning, then a louder one in its last
    // quarter, then an error once it has expired.
    let said = |e: &serde_json::Value| {
        (
            e["level"].as_str().unwrap_or_default().to_owned(),
            e["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let failures = |events: &[serde_json::Value]| -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for e in events
            .iter()
            .filter(|e| e["outcome"] == "failure")
            .map(said)
        {
            if seen.last() != Some(&e) {
                seen.push(e);
            }
        }
        seen
    };
    let no_token = (
        "ERROR".to_owned(),
        "refresh failed and no valid token is available".to_owned(),
    );
    let first_success = events
        .iter()
        .position(|e| e["outcome"] == "success")
        .unwrap();
    let last_success = events
        .iter()
        .rposition(|e| e["outcome"] == "success")
        .unwrap();
    assert_eq!(
        failures(&events[..first_success]),
        std::slice::from_ref(&no_token)
    );
    assert_eq!(
        failures(&events[last_success..]),
        [
            (
                "WARN".to_owned(),
                "refresh failed; the current token stays in place".to_owned()
            ),
            (
                "WARN".to_owned(),
                "refresh keeps failing and the token in place expires soon".to_owned()
            ),
            no_token
        ]
    );
}

#[tokio::test]
async fn malformed_requests_get_plain_errors() {
    let mock =
        Mock::start(|_| Reply::json(200, json!({"access_token": "t", "expires_in": 300}))).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &mock.url("/t")).await;
    assert_eq!(agent.get("/nope").await.0, 404);
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .delete(format!("{}/readyz", agent.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        405
    );
    // Over the limit, yet small enough that the whole request is sent before the agent
    // answers and closes: the answer is always readable.
    let huge = "x".repeat(2 * token_agent::server::MAX_REQUEST_HEAD);
    let r = client
        .get(format!("{}/metrics", agent.base))
        .header("x-huge", huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 431, "huge headers are refused");
    assert_eq!(
        agent.get("/healthz").await.0,
        200,
        "still serving afterwards"
    );
    agent.stop().await;
}

/// Slow-loris and connection floods: a client that never finishes its headers is cut off
/// after the header-read timeout, and connections beyond the cap wait instead of being
/// served (or eating descriptors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_excess_connections_are_bounded() {
    use token_agent::server;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let view = Arc::new(token_agent::observability::Observability::new(
        token_agent::clock::Clock::system(),
    ));
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve(listener, view, shutdown));

    // Every permitted connection stalls half-way through its headers.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..server::MAX_CONNECTIONS {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(c);
    }
    // One more, complete request: it waits while the others hold every permit.
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(1), late.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "served beyond the cap: {}",
        String::from_utf8_lossy(&answer)
    );
    // The stalled ones are closed by the header-read timeout (with a 408 or nothing at all)…
    let mut first = stalled.remove(0);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), first.read_to_end(&mut rest))
        .await
        .expect("a stalled client is cut off")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= server::HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "{took:?}"
    );
    // …which frees the permits, and the waiting request is answered.
    tokio::time::timeout(Duration::from_secs(15), late.read_to_end(&mut answer))
        .await
        .expect("the waiting request is served once permits are free")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

/// `/healthz` is what the kubelet sees: a write past its bound is an HTTP 503 naming it.
#[tokio::test]
async fn healthz_answers_503_over_http_when_a_write_outlives_its_bound() {
    use token_agent::server;
    let view = Arc::new(token_agent::observability::Observability::new(
        token_agent::clock::Clock::system(),
    ));
    let orders = token_agent::status::SourceEntry::new("orders", true);
    view.status.register(&orders);
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve(listener, view.clone(), shutdown));
    token_agent::install_crypto_provider();
    let get = || async {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(get().await, (200, "ok\n".to_owned()));
    // Within its bound: a bound no slow machine can outlive during one GET.
    let within = orders.busy("sink write", Duration::from_secs(3600));
    assert_eq!(get().await.0, 200, "within its bound");
    drop(within);
    let busy = orders.busy("sink write", Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    // How long it has been running depends on the machine's load; the rest is exact.
    let running = body
        .strip_prefix("source `orders`: sink write has been running for ")
        .and_then(|rest| rest.strip_suffix("s (limit 0s)\n"))
        .unwrap_or_else(|| panic!("unexpected body: {body:?}"));
    assert!(running.parse::<u64>().is_ok_and(|s| s >= 1), "{body}");
    drop(busy);
    assert_eq!(get().await.0, 200, "the mark goes with the write");
}
