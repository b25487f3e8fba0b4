//! The oauth2 source against in-process mock issuers: what goes over the wire, what comes
//! back, and every documented failure.

mod common;

use std::time::Duration;

use common::{Mock, Reply, fake_jwt, once, secret_file, unix_now, vendors};
use serde_json::json;

fn token_reply(expires_in: u64) -> Reply {
    Reply::json(
        200,
        json!({"access_token": "tok-abc", "token_type": "Bearer", "expires_in": expires_in}),
    )
}

fn source(url: &str, extra: &str) -> String {
    format!(
        "defaults: {{ file: {{ dir: '{{dir}}' }}, http: {{ timeout: 2s }} }}\nsources:\n  - name: s\n    kind: oauth2\n    token_url: '{url}'\n{extra}    sinks:\n      - file: {{ path: s.token }}\n      - file: {{ path: s.json, format: json }}\n"
    )
}

/// Seconds from now until the `expires_at` written in `s.json`.
fn seconds_left(dir: &tempfile::TempDir) -> i64 {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    common::seconds_left(&doc)
}

async fn run(yaml: &str) -> (Result<(), String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut out = once(yaml, dir.path()).await;
    (out.remove(0).result, dir)
}

#[tokio::test]
async fn basic_auth_sends_every_parameter_together() {
    let mock = Mock::start(|_| token_reply(300)).await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path(), "secret", "p@ss:w%rd\n");
    let extra = format!(
        "    client_id: 'my client'\n    client_secret: {{ file: '{secret}' }}\n    auth: basic\n    scope: orders.read orders.write\n    audience: https://orders.example.com\n    resource: https://orders.example.com/api\n    params: {{ tenant: acme }}\n    headers: {{ X-Extra: yes }}\n"
    );
    let (result, dir) = run(&source(&mock.url("/oauth/token"), &extra)).await;
    result.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "tok-abc"
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/oauth/token");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("x-extra"), Some("yes"));
    // RFC 6749 §2.3.1: id and secret are form-encoded before base64.
    assert_eq!(
        r.basic_raw(),
        Some(("my+client".into(), "p%40ss%3Aw%25rd".into()))
    );
    let mut form = r.form();
    form.sort();
    assert_eq!(
        form,
        vec![
            ("audience".into(), "https://orders.example.com".into()),
            ("grant_type".into(), "client_credentials".into()),
            ("resource".into(), "https://orders.example.com/api".into()),
            ("scope".into(), "orders.read orders.write".into()),
            ("tenant".into(), "acme".into()),
        ]
    );
}

#[tokio::test]
async fn post_auth_puts_credentials_in_the_body_only() {
    let mock = Mock::start(|_| token_reply(300)).await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path(), "secret", "s3cret");
    let extra = format!(
        "    client_id: id-1\n    client_secret: {{ file: '{secret}' }}\n    auth: post\n    scope: a\n    audience: b\n"
    );
    let (result, _dir) = run(&source(&mock.url("/t"), &extra)).await;
    result.unwrap();
    let r = &mock.requests()[0];
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.form_value("client_id").as_deref(), Some("id-1"));
    assert_eq!(r.form_value("client_secret").as_deref(), Some("s3cret"));
    assert_eq!(r.form_value("scope").as_deref(), Some("a"));
    assert_eq!(r.form_value("audience").as_deref(), Some("b"));
}

#[tokio::test]
async fn json_body_and_custom_response_pointers() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            json!({"data": {"token": "tok-json", "validUntil": unix_now() + 600, "type": "MAC"}}),
        )
    })
    .await;
    let extra = "    auth: none\n    body: json\n    scope: x\n    params: { tenant: t1 }\n    response: { token: /data/token, expires_at: /data/validUntil, token_type: /data/type }\n";
    let (result, dir) = run(&source(&mock.url("/t"), extra)).await;
    result.unwrap();
    let r = &mock.requests()[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"grant_type": "client_credentials", "scope": "x", "tenant": "t1"})
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(doc["token"], "tok-json");
    assert_eq!(doc["token_type"], "MAC");
    let left = seconds_left(&dir);
    assert!((590..=600).contains(&left), "{left}");
}

#[tokio::test]
async fn apinizer_variant_and_its_documented_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let password = secret_file(tmp.path(), "password", "pa55");
    let extra = format!(
        "    auth: post\n    client_id: admin\n    client_secret: {{ file: '{password}' }}\n"
    );
    for with_expires_in in [true, false] {
        let mock = Mock::start(vendors::apinizer("admin", "pa55", with_expires_in)).await;
        let (result, dir) = run(&source(&mock.url("/apiops/auth/token"), &extra)).await;
        result.unwrap();
        let left = seconds_left(&dir);
        // expires_in (3600) when present, else the JWT exp (1800).
        let want = if with_expires_in {
            3590..=3600
        } else {
            1790..=1800
        };
        assert!(want.contains(&left), "{left}");
    }

    let mock = Mock::start(vendors::apinizer("admin", "other", true)).await;
    let (result, dir) = run(&source(&mock.url("/apiops/auth/token"), &extra)).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("HTTP 401: unauthorized_client: Bad credentials"),
        "{err}"
    );
    assert!(!dir.path().join("s.token").exists());

    // Basic auth instead of the form: the portal refuses it, as seed 003 implies.
    let basic = extra.replace("    auth: post\n", "    auth: basic\n");
    let (result, _) = run(&source(&mock.url("/apiops/auth/token"), &basic)).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("HTTP 400: invalid_request: client credentials go in the form body"),
        "{err}"
    );

    let extra = extra.replace(
        "    auth: post\n",
        "    auth: post\n    grant_type: password\n",
    );
    let (result, _) = run(&source(&mock.url("/apiops/auth/token"), &extra)).await;
    assert!(
        result.unwrap_err().contains(
            "HTTP 400: unsupported_grant_type: GrantType value must be client_credentials!"
        )
    );

    let down = Mock::start(|_| {
        Reply::json(
            500,
            json!({"error": "server_error", "error_description": "An unexpected error occurred"}),
        )
    })
    .await;
    let (result, _) = run(&source(&down.url("/apiops/auth/token"), &extra)).await;
    assert!(
        result
            .unwrap_err()
            .contains("HTTP 500: server_error: An unexpected error occurred")
    );
}

/// The shipped example as a user copies it, against the mock written from the document.
#[tokio::test]
async fn the_appviewx_example_works_against_the_appviewx_mock() {
    let mock = Mock::start(vendors::appviewx("avx-id", "55AU#NO8%*Z")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::example(
        "appviewx.yaml",
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
    let out = once(&yaml, dir.path()).await;
    out[0].result.as_ref().unwrap();
    assert!(
        std::fs::read_to_string(dir.path().join("appviewx.token"))
            .unwrap()
            .starts_with("ey")
    );
}

#[tokio::test]
async fn appviewx_variant_and_its_documented_errors() {
    let mock = Mock::start(vendors::appviewx("97074e41-8af9", "55AU#NO8%*Zhgv")).await;
    let url = mock.url("/avxapi/acctmgmt-get-service-token?gwsource=external");
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("97074e41-8af9", "55AU#NO8%*Zhgv", None),
        (
            "97074e41-8af9",
            "wrong",
            Some(
                "HTTP 400: OAUTH_CLNT_015: Client Password is incorrect::[Invalid Client credential]",
            ),
        ),
        (
            "nobody",
            "55AU#NO8%*Zhgv",
            Some("HTTP 400: ACCT_SA_003: Service account is invalid/not found"),
        ),
    ];
    for (id, secret, want_error) in cases {
        let secret = secret_file(tmp.path(), "avx", secret);
        let extra = format!(
            "    auth: basic_raw\n    grant_type: Client_Credentials\n    client_id: '{id}'\n    client_secret: {{ file: '{secret}' }}\n    response: {{ token: /response }}\n"
        );
        let (result, dir) = run(&source(&url, &extra)).await;
        match want_error {
            None => {
                result.unwrap();
                let left = seconds_left(&dir);
                assert!(
                    (1190..=1200).contains(&left),
                    "expiry from the JWT exp claim: {left}"
                );
            }
            Some(want) => {
                let err = result.unwrap_err();
                assert!(err.contains(want), "{err}");
                assert!(!err.contains("55AU#NO8"), "no credential in errors: {err}");
            }
        }
    }
    // Without credentials the gateway says ACCT_SA_001.
    let (result, _) = run(&source(
        &url,
        "    auth: none\n    grant_type: Client_Credentials\n    response: { token: /response }\n",
    ))
    .await;
    assert!(result.unwrap_err().contains("ACCT_SA_001"));
    // RFC 6749's lowercase value is not the document's: the gateway's generic error.
    let secret = secret_file(tmp.path(), "avx", "55AU#NO8%*Zhgv");
    let (result, _) = run(&source(
        &url,
        &format!("    auth: basic_raw\n    client_id: '97074e41-8af9'\n    client_secret: {{ file: '{secret}' }}\n    response: {{ token: /response }}\n"),
    ))
    .await;
    let err = result.unwrap_err();
    assert!(
        err.contains("HTTP 500: avx-common-011: Error while processing."),
        "{err}"
    );
    // Requests carried the raw (not form-encoded) secret and the grant as a form.
    let first = &mock.requests()[0];
    assert_eq!(
        first.basic_raw(),
        Some(("97074e41-8af9".into(), "55AU#NO8%*Zhgv".into()))
    );
    assert_eq!(
        first.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(first.body, b"grant_type=Client_Credentials");
}

#[tokio::test]
async fn expiry_falls_back_from_jwt_to_ttl_and_fails_without_either() {
    let jwt = fake_jwt(json!({"exp": unix_now() + 120}));
    let with_jwt = Mock::start(move |_| Reply::json(200, json!({"access_token": jwt}))).await;
    let (r, dir) = run(&source(&with_jwt.url("/t"), "    auth: none\n")).await;
    r.unwrap();
    let left = seconds_left(&dir);
    assert!((110..=120).contains(&left));

    let opaque = Mock::start(|_| Reply::json(200, json!({"access_token": "opaque"}))).await;
    let (r, _) = run(&source(&opaque.url("/t"), "    auth: none\n    ttl: 15m\n")).await;
    r.unwrap();
    let (r, dir) = run(&source(&opaque.url("/t"), "    auth: none\n")).await;
    assert!(r.unwrap_err().contains("no expiry"));
    assert!(!dir.path().join("s.token").exists());

    let expired = Mock::start(|_| {
        Reply::json(
            200,
            json!({"access_token": "old", "expires_at": 1_600_000_000}),
        )
    })
    .await;
    let (r, _) = run(&source(&expired.url("/t"), "    auth: none\n")).await;
    assert!(r.unwrap_err().contains("had already expired"));
}

#[tokio::test]
async fn transport_and_response_failures_are_classified() {
    let too_big = "x".repeat(2 * 1024 * 1024);
    let too_big2 = too_big.clone();
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::json(
                400,
                json!({"error": "invalid_scope", "error_description": "scope x unknown"}),
            ),
            "HTTP 400: invalid_scope: scope x unknown",
        ),
        (
            Reply::text(503, "<html>maintenance</html>"),
            "answered HTTP 503",
        ),
        (
            Reply::text(200, "<html>not json</html>"),
            "body is not JSON",
        ),
        (
            Reply::text(200, "{\"access_token\": \"trunc"),
            "body is not JSON",
        ),
        (Reply::text(200, &too_big), "larger than 1048576 bytes"),
        (
            Reply::text(200, &too_big2).chunked(),
            "larger than 1048576 bytes",
        ),
        (
            token_reply(60).after(Duration::from_secs(5)),
            "timed out after 2s",
        ),
    ];
    for (reply, want) in cases {
        let mock = Mock::start(move |_| reply.clone()).await;
        let (r, dir) = run(&source(&mock.url("/t"), "    auth: none\n")).await;
        let err = r.unwrap_err();
        assert!(err.contains(want), "want `{want}` in `{err}`");
        assert!(!dir.path().join("s.token").exists());
    }
    let (_held, refusing) = common::refusing_addr();
    let url = format!("http://{refusing}/t");
    let (r, _) = run(&source(&url, "    auth: none\n")).await;
    let err = r.unwrap_err();
    assert!(err.contains(&format!("cannot connect to {url}")), "{err}");
}

#[tokio::test]
async fn an_unreadable_credential_is_reported_and_nothing_is_sent() {
    let mock = Mock::start(|_| token_reply(60)).await;
    let extra = "    client_id: a\n    client_secret: { file: /nonexistent/secret }\n";
    let (r, _) = run(&source(&mock.url("/t"), extra)).await;
    assert!(
        r.unwrap_err()
            .contains("cannot read credential file /nonexistent/secret")
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_url_query_string_never_reaches_an_error() {
    let mock = Mock::start(|_| Reply::text(500, "boom")).await;
    let (r, _) = run(&source(
        &mock.url("/t?api_key=SENTINEL-QUERY"),
        "    auth: none\n",
    ))
    .await;
    let err = r.unwrap_err();
    assert!(!err.contains("SENTINEL-QUERY"), "{err}");
    assert_eq!(
        mock.requests()[0].query.as_deref(),
        Some("api_key=SENTINEL-QUERY")
    );
}

#[tokio::test]
async fn extra_headers_and_params_take_credentials_from_files_and_never_echo_them() {
    // An issuer that refuses and echoes what it got, as some do.
    let mock = Mock::start(|r| {
        let echo = format!(
            "bad request: key={} assertion={}",
            r.header("x-api-key").unwrap_or_default(),
            r.form_value("client_assertion").unwrap_or_default()
        );
        Reply::text(400, &echo)
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = secret_file(tmp.path(), "key", "HEADER-SENTINEL-1\n");
    let assertion = secret_file(tmp.path(), "assertion", "PARAM-SENTINEL-2\n");
    let extra = format!(
        "    auth: none\n    params: {{ tenant: acme, client_assertion: {{ file: '{assertion}' }} }}\n    headers: {{ X-Api-Key: {{ file: '{key}' }}, X-Version: 2 }}\n"
    );
    let (r, _) = run(&source(&mock.url("/t"), &extra)).await;
    let err = r.unwrap_err();
    assert!(
        err.contains("bad request: key=<redacted> assertion=<redacted>"),
        "{err}"
    );
    let request = &mock.requests()[0];
    assert_eq!(request.header("x-api-key"), Some("HEADER-SENTINEL-1"));
    assert_eq!(request.header("x-version"), Some("2"));
    assert_eq!(
        request.form_value("client_assertion").as_deref(),
        Some("PARAM-SENTINEL-2")
    );
    assert_eq!(request.form_value("tenant").as_deref(), Some("acme"));
}

#[test]
fn a_literal_credential_in_headers_or_params_is_an_inline_secret() {
    let yaml = |extra: &str| {
        format!(
            "sources:\n  - name: s\n    kind: oauth2\n    token_url: https://x/t\n    auth: none\n{extra}    sinks: [ {{ file: {{ path: s.token }} }} ]\n"
        )
    };
    for (extra, field) in [
        (
            "    headers: { Authorization: Bearer abc }\n",
            "sources[0].headers.Authorization",
        ),
        (
            "    headers: { X-Api-Key: abc }\n",
            "sources[0].headers.X-Api-Key",
        ),
        (
            "    params: { client_assertion: eyJ }\n",
            "sources[0].params.client_assertion",
        ),
        (
            "    params: { password: p }\n",
            "sources[0].params.password",
        ),
    ] {
        let err = token_agent::config::Config::parse(&yaml(extra), std::path::Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{field}: credential written in the config")),
            "{err}"
        );
    }
    for extra in [
        "    headers: { X-Api-Key: { env: KEY } }\n",
        "    params: { tenant: acme, client_assertion: { file: /run/a } }\n    headers: { X-Request-Source: token-agent }\n",
    ] {
        token_agent::config::Config::parse(&yaml(extra), std::path::Path::new("c.yaml"))
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let mock = Mock::start(|r| match r.path.as_str() {
        "/moved" => token_reply(60),
        _ => {
            let mut moved = Reply::text(302, "moved");
            moved.headers.push(("location", "/moved".into()));
            moved
        }
    })
    .await;
    let (r, _) = run(&source(&mock.url("/t"), "    auth: none\n")).await;
    let err = r.unwrap_err();
    assert!(err.contains("302"), "{err}");
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/t"], "the Location was not visited");
}

#[tokio::test]
async fn the_credential_file_is_read_again_on_every_fetch() {
    // Tokens living 2 s: a running agent refreshes after about 1.5 s.
    let mock = Mock::start(|_| token_reply(2)).await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path(), "secret", "first-s3cret\n");
    let dir = tempfile::tempdir().unwrap();
    let yaml = source(
        &mock.url("/t"),
        &format!("    client_id: c\n    client_secret: {{ file: '{secret}' }}\n"),
    )
    .replace("{dir}", &dir.path().display().to_string())
    .replace(
        "http: { timeout: 2s }",
        "http: { timeout: 2s }, refresh: { min_interval: 100ms }",
    );
    let config = token_agent::config::Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let agent =
        token_agent::agent::Agent::build(&config, token_agent::clock::Clock::system()).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(shutdown));
    let secrets = || -> Vec<String> {
        mock.requests()
            .iter()
            .filter_map(|r| r.basic_raw().map(|(_, s)| s))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while secrets().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no first fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&secret, "rotated-s3cret\n").unwrap();
    while secrets().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        secrets()[..2],
        ["first-s3cret", "rotated-s3cret"],
        "no restart needed"
    );
}
