//! `kind: mindsphere` against a mock of the Token Management Service written from seed 001:
//! what goes over the wire (auth header, bodies, batch sizes, pages), per-tenant files,
//! partial failures, 429, and tenants that come and go.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::mindsphere::{BASE, MindSphere};
use common::{Mock, Recorded};
use serde_json::{Value, json};
use token_agent::agent::{Agent, OnceOutcome};
use token_agent::clock::Clock;
use token_agent::config::Config;

fn config(mock: &Mock, dir: &Path, mode: &str, sink: &str) -> Config {
    // Hidden, so the listings of token files below do not see it.
    let secret = dir.join(".client-secret");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&secret, "mdsp-s3cret").unwrap();
    let yaml = format!(
        "defaults:\n  file: {{ dir: '{}' }}\n  retry: {{ initial: 100ms, max: 300ms }}\n  refresh: {{ min_interval: 100ms }}\nsources:\n  - name: mdsp\n    kind: mindsphere\n    base_url: '{}'\n    client_id: mdsp-client\n    client_secret: {{ file: '{}' }}\n    app_name: application_x\n    app_version: 1.0.0\n    host_tenant: hosttenant\n{mode}    sinks:\n      - file: {{ path: '{sink}' }}\n",
        dir.display(),
        mock.url(BASE),
        secret.display()
    );
    Config::parse(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// An all-tenants source writing `mdsp/{tenant}.token`.
fn all_tenants_config(mock: &Mock, dir: &Path) -> Config {
    config(mock, dir, "    all_tenants: true\n", "mdsp/{tenant}.token")
}

async fn once(config: &Config) -> OnceOutcome {
    Agent::build(config, Clock::system())
        .unwrap()
        .once()
        .await
        .remove(0)
}

fn posts<'a>(reqs: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    reqs.iter()
        .filter(|r| r.path == format!("{BASE}{path}"))
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn service_with(tenants: &[String]) -> MindSphere {
    MindSphere::new(&tenants.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant{i:03}")).collect()
}

#[tokio::test]
async fn single_user_tenant_sends_the_documented_request() {
    let service = MindSphere::new(&["user_tenant_1"]);
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(
        &mock,
        dir.path(),
        "    user_tenant: user_tenant_1\n",
        "mdsp.json",
    );
    let token_agent::sink::SinkConfig::File(f) = &mut c.sources[0].sinks[0] else {
        unreachable!()
    };
    f.format = token_agent::sink::format::Format::Json;
    once(&c).await.result.unwrap();

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/technicaltokenmanager/v3/oauth/token")
    );
    let key = base64::engine::general_purpose::STANDARD.encode("mdsp-client:mdsp-s3cret");
    assert_eq!(
        r.header("x-space-auth-key"),
        Some(format!("Basic {key}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        r.json(),
        json!({"appName": "application_x", "appVersion": "1.0.0", "hostTenant": "hosttenant", "userTenant": "user_tenant_1"})
    );

    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("mdsp.json")).unwrap()).unwrap();
    assert_eq!(doc["token_type"], "bearer");
    // timestamp (5 s ago) + expires_in (1799 s): 1794 s from now, not 1799.
    let left = common::seconds_left(&doc);
    assert!((1790..=1794).contains(&left), "{left}");
}

#[tokio::test]
async fn a_tenant_list_is_fetched_in_batches_of_the_configured_size() {
    for (batch, want) in [(None, vec![5, 2]), (Some(2), vec![2, 2, 2, 1])] {
        let names = tenants(7);
        let service = service_with(&names);
        let mock = service.start().await;
        let dir = tempfile::tempdir().unwrap();
        let batch_line = batch
            .map(|b| format!("    batch_size: {b}\n"))
            .unwrap_or_default();
        let mode = format!("    user_tenants: [{}]\n{batch_line}", names.join(", "));
        once(&config(&mock, dir.path(), &mode, "mdsp/{tenant}.token"))
            .await
            .result
            .unwrap();
        let reqs = mock.requests();
        let batches = posts(&reqs, "/oauthTokens");
        let sizes: Vec<usize> = batches
            .iter()
            .map(|r| r.json()["userTenantIds"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, want);
        assert_eq!(batches[0].json()["hostTenantId"], "hosttenant");
        assert_eq!(batches[0].json()["appName"], "application_x");
        let sent: Vec<String> = batches
            .iter()
            .flat_map(|r| {
                r.json()["userTenantIds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(sent, names, "every tenant once, in order");
        let expected: Vec<String> = names.iter().map(|t| format!("{t}.token")).collect();
        assert_eq!(files(&dir.path().join("mdsp")), expected);
        let t3 = std::fs::read_to_string(dir.path().join("mdsp/tenant003.token")).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t3.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims["ten"], "tenant003",
            "each file holds its own tenant's token"
        );
    }
}

#[tokio::test]
async fn all_tenants_pages_through_user_tenants_with_the_operator_token() {
    for n in [0usize, 100, 101, 250] {
        let names = tenants(n);
        let service = service_with(&names);
        let mock = service.start().await;
        let dir = tempfile::tempdir().unwrap();
        let outcome = once(&all_tenants_config(&mock, dir.path())).await;
        outcome.result.unwrap();
        let reqs = mock.requests();
        let single = posts(&reqs, "/oauth/token");
        assert_eq!(single.len(), 1, "one operator token");
        assert_eq!(single[0].json()["userTenant"], "hosttenant");
        assert_eq!(single[0].json()["hostTenant"], "hosttenant");
        let pages: Vec<String> = posts(&reqs, "/userTenants")
            .iter()
            .map(|r| r.query.clone().unwrap())
            .collect();
        let want_pages: Vec<String> = (0..n.div_ceil(100).max(1))
            .map(|p| format!("page={p}&size=100"))
            .collect();
        assert_eq!(pages, want_pages, "{n} tenants");
        let listing = posts(&reqs, "/userTenants");
        assert!(listing.iter().all(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer ey"))
        }));
        assert!(
            listing
                .iter()
                .all(|r| r.header("x-space-auth-key").is_none()),
            "listing uses the bearer token only"
        );
        assert_eq!(
            posts(&reqs, "/oauthTokens").len(),
            n.div_ceil(5),
            "{n} tenants"
        );
        assert_eq!(files(&dir.path().join("mdsp")).len(), n);
    }
}

#[tokio::test]
async fn a_failed_batch_does_not_discard_the_other_tenants() {
    let names = tenants(12);
    let service = service_with(&names);
    *service.failing_tenant.lock().unwrap() = Some("tenant007".into());
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let outcome = once(&all_tenants_config(&mock, dir.path())).await;
    let err = outcome.result.unwrap_err();
    assert!(
        err.contains("5 instance(s) failed: tenant005, tenant006, tenant007, tenant008, tenant009"),
        "{err}"
    );
    assert!(
        err.contains("HTTP 500: mdsp.core.generic.internalServerError: Internal error"),
        "{err}"
    );
    let written = files(&dir.path().join("mdsp"));
    assert_eq!(written.len(), 7, "{written:?}");
    assert!(
        written.contains(&"tenant010.token".to_owned())
            && !written.contains(&"tenant007.token".to_owned())
    );
}

#[tokio::test]
async fn throttling_is_honoured_and_stops_further_batches() {
    let names = tenants(12);
    let mut service = service_with(&names);
    service.retry_after = 2;
    service.throttle("/oauthTokens", 1);
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = all_tenants_config(&mock, dir.path());
    let agent = Agent::build(&c, Clock::system()).unwrap();
    let view = agent.observability();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(agent.run(rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(&dir.path().join("mdsp")).len() < 12 {
        assert!(
            Instant::now() < deadline,
            "all tenants eventually get tokens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    stop.send(true).unwrap();
    task.await.unwrap();
    let reqs = mock.requests();
    let batches = posts(&reqs, "/oauthTokens");
    assert_eq!(
        batches.len(),
        4,
        "one throttled call, no more calls in that attempt, then 3 batches"
    );
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After: 2 was honoured over the 100 ms backoff ({took:?})"
    );
    assert!(
        view.metrics.encode().contains(
            "token_agent_refresh_failures_total{reason=\"throttled\",source=\"mdsp\"} 12"
        )
    );
}

/// A 429 on the operator token or on the tenant listing fails the whole attempt, is counted
/// as `throttled`, and the next attempt waits for `Retry-After` (2 s) over the 100 ms backoff.
#[tokio::test]
async fn throttling_of_the_operator_token_or_the_listing_is_honoured() {
    for path in ["/oauth/token", "/userTenants"] {
        let names = tenants(3);
        let mut service = service_with(&names);
        service.retry_after = 2;
        service.throttle(path, 1);
        let mock = service.start().await;
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::build(&all_tenants_config(&mock, dir.path()), Clock::system()).unwrap();
        let view = agent.observability();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let task = tokio::spawn(agent.run(rx));
        let deadline = Instant::now() + Duration::from_secs(15);
        while files(&dir.path().join("mdsp")).len() < 3 {
            assert!(Instant::now() < deadline, "{path}: no tokens after the 429");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        stop.send(true).unwrap();
        task.await.unwrap();
        let reqs = mock.requests();
        assert_eq!(
            posts(&reqs, path).len(),
            2,
            "{path}: the 429, then one retry"
        );
        assert_eq!(
            posts(&reqs, "/oauthTokens").len(),
            1,
            "{path}: no batch while throttled"
        );
        assert!(
            took >= Duration::from_secs(2),
            "{path}: Retry-After: 2 was honoured over the 100 ms backoff ({took:?})"
        );
        let metrics = view.metrics.encode();
        assert!(
            metrics.contains(
                "token_agent_refresh_failures_total{reason=\"throttled\",source=\"mdsp\"} 1\n"
            ),
            "{path}: {metrics}"
        );
    }
}

/// With all tenants, a retry fetches only the tenants that are due (those whose batch failed),
/// and the operator token is reused for each listing while it has more than a minute left.
#[tokio::test]
async fn only_due_tenants_are_refetched_and_the_operator_token_is_reused() {
    let names = tenants(12);
    let service = service_with(&names);
    *service.failing_tenant.lock().unwrap() = Some("tenant007".into());
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::build(&all_tenants_config(&mock, dir.path()), Clock::system()).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(rx));
    let wait_files = async |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while files(&dir.path().join("mdsp")).len() < n {
            assert!(Instant::now() < deadline, "{n} tenants never got tokens");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_files(7).await;
    // Let a retry or two fail as well, then let the batch through.
    let deadline = Instant::now() + Duration::from_secs(15);
    while posts(&mock.requests(), "/oauthTokens").len() < 5 {
        assert!(Instant::now() < deadline, "no retry of the failed batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *service.failing_tenant.lock().unwrap() = None;
    wait_files(12).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let reqs = mock.requests();
    let batches: Vec<Vec<String>> = posts(&reqs, "/oauthTokens")
        .iter()
        .map(|r| {
            r.json()["userTenantIds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    let failed: Vec<String> = names[5..10].to_vec();
    assert_eq!(
        batches[..3],
        [names[..5].to_vec(), failed.clone(), names[10..].to_vec()]
    );
    for later in &batches[3..] {
        assert_eq!(
            later, &failed,
            "a retry asks only for the tenants that are due"
        );
    }
    let listings = posts(&reqs, "/userTenants").len();
    assert!(
        listings >= 3,
        "every attempt lists the tenants ({listings})"
    );
    assert_eq!(
        posts(&reqs, "/oauth/token").len(),
        1,
        "one operator token (30 min) for {listings} listings"
    );
}

/// An operator token with a minute or less left is not reused: with 3 s tokens, every
/// listing gets a fresh one.
#[tokio::test]
async fn a_short_lived_operator_token_is_fetched_for_each_listing() {
    let mut service = MindSphere::new(&["alpha"]);
    service.lifetime = 3;
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::build(&all_tenants_config(&mock, dir.path()), Clock::system()).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(rx));
    let deadline = Instant::now() + Duration::from_secs(15);
    while posts(&mock.requests(), "/userTenants").len() < 2 {
        assert!(Instant::now() < deadline, "no second listing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    // The order of calls: each listing directly after its own operator token.
    let calls: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.path.trim_start_matches(BASE).to_owned())
        .filter(|p| p != "/oauthTokens")
        .collect();
    assert!(calls.len() >= 4, "{calls:?}");
    for pair in calls.chunks(2) {
        assert_eq!(pair[0], "/oauth/token", "{calls:?}");
        if let Some(listing) = pair.get(1) {
            assert_eq!(listing, "/userTenants", "{calls:?}");
        }
    }
}

#[tokio::test]
async fn tenants_that_come_and_go_get_files_and_lose_them() {
    for keep in [false, true] {
        let mut service = MindSphere::new(&["alpha", "beta"]);
        service.lifetime = 3; // refreshes about every 2 s
        let mock = service.start().await;
        let dir = tempfile::tempdir().unwrap();
        let mode = if keep {
            "    all_tenants: true\n    on_removed: keep\n"
        } else {
            "    all_tenants: true\n"
        };
        let mut c = config(&mock, dir.path(), mode, "mdsp/{tenant}.token");
        c.defaults.refresh.min_interval = Some(Duration::from_millis(100));
        let agent = Agent::build(&c, Clock::system()).unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(agent.run(rx));
        let wait = async |want: &[&str]| {
            let want: Vec<String> = want.iter().map(|t| format!("{t}.token")).collect();
            let deadline = Instant::now() + Duration::from_secs(15);
            while files(&dir.path().join("mdsp")) != want {
                assert!(
                    Instant::now() < deadline,
                    "want {want:?}, have {:?}",
                    files(&dir.path().join("mdsp"))
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        wait(&["alpha", "beta"]).await;
        service.set_tenants(&["beta", "gamma"]);
        if keep {
            wait(&["alpha", "beta", "gamma"]).await;
            // gamma's file comes before the removals of the same round: only a later listing
            // shows that alpha is kept, not merely not removed yet.
            let listings = || {
                let requests = mock.requests();
                requests
                    .iter()
                    .filter(|r| r.path.ends_with("/userTenants"))
                    .count()
            };
            let seen = listings();
            let deadline = Instant::now() + Duration::from_secs(15);
            while listings() < seen + 2 {
                assert!(Instant::now() < deadline, "no further listing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                files(&dir.path().join("mdsp")),
                ["alpha.token", "beta.token", "gamma.token"]
            );
        } else {
            wait(&["beta", "gamma"]).await;
            assert!(!dir.path().join("mdsp/.alpha.token.meta.json").exists());
        }
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn documented_errors_reach_the_outcome_without_credentials() {
    let service = MindSphere::new(&["t1"]);
    let mock = service.start().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join(".wrong-secret");
    std::fs::write(&wrong, "wrong-s3cret").unwrap();
    let yaml = format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - {{ name: m, kind: mindsphere, base_url: '{}', client_id: mdsp-client, client_secret: {{ file: '{}' }}, app_name: a, app_version: '1', host_tenant: hosttenant, user_tenant: t1, sinks: [ {{ file: {{ path: m.token }} }} ] }}\n",
        dir.path().display(),
        mock.url(BASE),
        wrong.display()
    );
    let c = Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let err = once(&c).await.result.unwrap_err();
    assert!(
        err.contains("HTTP 401: mdsp.core.generic.unauthorized: Not authorized"),
        "{err}"
    );
    assert!(!err.contains("wrong-s3cret"));

    let c = config(&mock, dir.path(), "    user_tenant: stranger\n", "s.token");
    let err = once(&c).await.result.unwrap_err();
    assert!(
        err.contains(
            "HTTP 403: mdsp.core.generic.forbidden: Tenant has not authorized the application"
        ),
        "{err}"
    );
}

#[test]
fn validate_catches_contradictory_and_missing_fields() {
    let base = "sources:\n  - name: m\n    kind: mindsphere\n    client_id: c\n    client_secret: { env: S }\n    app_name: a\n    app_version: '1'\n    host_tenant: h\n";
    let cases = [
        (
            "    sinks: [ { file: { path: m.token } } ]\n",
            "sources[0].user_tenant: give exactly one of",
        ),
        (
            "    user_tenant: u\n    all_tenants: true\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "give exactly one of",
        ),
        (
            "    all_tenants: true\n    batch_size: 6\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "sources[0].batch_size: must be 1 to 5",
        ),
        (
            "    all_tenants: true\n    page_size: 101\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "sources[0].page_size: must be 1 to 100",
        ),
        (
            "    all_tenants: true\n    sinks: [ { file: { path: m.token } } ]\n",
            "sources[0].sinks[0]: this source yields one token per tenant",
        ),
        (
            "    user_tenant: u\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "sources[0].sinks[0]: `{tenant}` only applies",
        ),
        (
            "    user_tenants: [a, a, ../x]\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "sources[0].user_tenants[1]: `a` is listed twice",
        ),
        (
            "    user_tenants: [a, ../x]\n    sinks: [ { file: { path: '{tenant}.token' } } ]\n",
            "sources[0].user_tenants[1]: `../x` cannot be used in a file name",
        ),
    ];
    for (rest, want) in cases {
        let err = Config::parse(&format!("{base}{rest}"), Path::new("m.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want `{want}` in:\n{err}");
    }
}

#[tokio::test]
async fn malformed_answers_fail_cleanly() {
    use common::Reply;
    let cases: Vec<(Reply, &str)> = vec![
        (Reply::text(200, "<html>gateway</html>"), "body is not JSON"),
        (
            Reply::json(200, json!({"access_token": 5})),
            "no `access_token`",
        ),
        (
            Reply::json(200, json!({"access_token": "a", "token_type": "bearer"})),
            "no `expires_in`",
        ),
        (
            Reply::json(
                500,
                json!({"errors": [{"code": "mdsp.core.generic.internalServerError", "logref": "x", "message": "boom"}]}),
            ),
            "HTTP 500: mdsp.core.generic.internalServerError: boom",
        ),
    ];
    for (reply, want) in cases {
        let mock = Mock::start(move |_| reply.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let err = once(&config(
            &mock,
            dir.path(),
            "    user_tenant: u\n",
            "m.token",
        ))
        .await
        .result
        .unwrap_err();
        assert!(err.contains(want), "want `{want}` in `{err}`");
    }

    // Discovery: a listing without `userTenants` fails the whole fetch (nothing is removed).
    let service = MindSphere::new(&["a"]);
    let real = service.start().await;
    let op_token = {
        let dir = tempfile::tempdir().unwrap();
        once(&config(
            &real,
            dir.path(),
            "    user_tenant: hosttenant\n",
            "op.token",
        ))
        .await
        .result
        .unwrap();
        std::fs::read_to_string(dir.path().join("op.token")).unwrap()
    };
    let listing = Mock::start(move |r| {
        if r.path.ends_with("/oauth/token") {
            Reply::json(200, json!({"access_token": op_token, "expires_in": 1799}))
        } else {
            Reply::json(
                200,
                json!({"page": {"totalPages": 1, "number": 0}, "tenants": []}),
            )
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = once(&config(
        &listing,
        dir.path(),
        "    all_tenants: true\n",
        "{tenant}.token",
    ))
    .await
    .result
    .unwrap_err();
    assert!(err.contains("no `userTenants` list"), "{err}");

    // A batch answer without `oauthTokens` fails each requested tenant, by name.
    let batch = Mock::start(|r| {
        if r.path.ends_with("/oauthTokens") {
            Reply::json(200, json!({"tokens": []}))
        } else {
            Reply::json(404, json!({}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = once(&config(
        &batch,
        dir.path(),
        "    user_tenants: [a, b]\n",
        "{tenant}.token",
    ))
    .await
    .result
    .unwrap_err();
    assert!(
        err.contains("2 instance(s) failed: a, b") && err.contains("no token for tenant `a`"),
        "{err}"
    );
}
