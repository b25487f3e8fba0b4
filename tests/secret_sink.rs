//! The Secret sink at the request level: a real `kube::Client` over `tower_test::mock`, every
//! call checked (method, path, query, content type, body), and every API error Status mapped
//! to a clear error and metric reason (the controller-rs verifier pattern).

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use token_agent::agent::Agent;
use token_agent::clock::Clock;
use token_agent::config::Config;
use token_agent::k8s::KubeContext;
use token_agent::names::InstanceId;
use token_agent::sink::secret::SecretSinkConfig;
use token_agent::sink::{Sink, SinkContext, SinkKind};
use token_agent::token::Token;
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn client() -> (KubeContext, ApiHandle) {
    token_agent::install_crypto_provider();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        KubeContext::with_client(kube::Client::new(service, "team-a")),
        handle,
    )
}

fn token(value: &str) -> Token {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    Token::new(
        value.into(),
        "Bearer".into(),
        now,
        now + Duration::from_secs(600),
    )
}

fn sink(yaml: &str, kube: &KubeContext) -> Box<dyn Sink> {
    let config: SecretSinkConfig = serde_saphyr::from_str(yaml).unwrap();
    config
        .build(
            "orders",
            &SinkContext {
                file: &Default::default(),
                kube,
                state_dir: std::path::Path::new("/nonexistent"),
                http: &token_agent::config::HttpConfig::default().resolve(&Default::default()),
                clients: &Default::default(),
            },
        )
        .unwrap()
}

async fn next(
    handle: &mut ApiHandle,
) -> (
    http::Method,
    String,
    http::HeaderMap,
    Value,
    SendResponse<Response<Body>>,
) {
    let (request, send) = handle.next_request().await.expect("a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (
        parts.method,
        parts.uri.to_string(),
        parts.headers,
        json,
        send,
    )
}

fn status(code: u16, reason: &str, message: &str, kind: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "details": {"name": "x", "kind": kind}, "code": code});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// Answers the look before a first write: no such Secret.
async fn absent(handle: &mut ApiHandle, uri: &str) {
    let (method, got, _, _, send) = next(handle).await;
    assert_eq!((method, got.as_str()), (http::Method::GET, uri));
    send.send_response(status(
        404,
        "NotFound",
        "secrets \"x\" not found",
        "secrets",
    ));
}

fn echo(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn decode(data: &Value, key: &str) -> String {
    String::from_utf8(STANDARD.decode(data[key].as_str().unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn applies_an_opaque_secret_with_server_side_apply() {
    let (kube, mut handle) = client();
    let s = sink(
        "name: orders-token\nkeys: { token: access-token, expires_at: expires-at, json: token.json }\nlabels: { team: a }\nannotations: { note: x }\nowner: { api_version: apps/v1, kind: Deployment, name: web, uid: 1234-5678 }\n",
        &kube,
    );
    let s = std::sync::Arc::new(s);
    let sink = s.clone();
    let write =
        tokio::spawn(async move { sink.write(&token("tok-1"), &InstanceId::single()).await });

    // The first write looks, and creates what is absent.
    absent(
        &mut handle,
        "/api/v1/namespaces/team-a/secrets/orders-token",
    )
    .await;
    let (method, uri, _, body, send) = next(&mut handle).await;
    assert_eq!(method, http::Method::POST);
    assert_eq!(
        uri,
        "/api/v1/namespaces/team-a/secrets?&fieldManager=token-agent"
    );
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "orders-token");
    assert_eq!(body["metadata"]["namespace"], "team-a");
    assert_eq!(
        body["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "token-agent", "team": "a"})
    );
    assert_eq!(
        body["metadata"]["annotations"],
        json!({"note": "x", "token-agent.io/source": "orders", "token-agent.io/expires-at": "2027-01-15T08:10:00Z"})
    );
    assert_eq!(
        body["metadata"]["ownerReferences"],
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "1234-5678"}])
    );
    assert_eq!(decode(&body["data"], "access-token"), "tok-1");
    assert_eq!(decode(&body["data"], "expires-at"), "2027-01-15T08:10:00Z");
    let doc: Value = serde_json::from_str(&decode(&body["data"], "token.json")).unwrap();
    assert_eq!(doc["token"], "tok-1");
    send.send_response(echo(201, &body));
    write.await.unwrap().unwrap();

    // Later writes apply, forced, without looking again.
    let write = tokio::spawn(async move { s.write(&token("tok-2"), &InstanceId::single()).await });
    let (method, uri, headers, applied, send) = next(&mut handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        uri,
        "/api/v1/namespaces/team-a/secrets/orders-token?&force=true&fieldManager=token-agent"
    );
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/apply-patch+yaml"
    );
    assert_eq!(decode(&applied["data"], "access-token"), "tok-2");
    assert_eq!(applied["metadata"], body["metadata"]);
    send.send_response(echo(200, &applied));
    write.await.unwrap().unwrap();
}

#[tokio::test]
async fn renders_a_docker_config_json_for_registries() {
    let (kube, mut handle) = client();
    let s = sink(
        "name: pull\nnamespace: builds\ntype: kubernetes.io/dockerconfigjson\nregistry: { server: registry.example.com, username: robot }\n",
        &kube,
    );
    let write =
        tokio::spawn(async move { s.write(&token("reg-tok"), &InstanceId::single()).await });
    absent(&mut handle, "/api/v1/namespaces/builds/secrets/pull").await;
    let (_, uri, _, body, send) = next(&mut handle).await;
    assert!(
        uri.starts_with("/api/v1/namespaces/builds/secrets?"),
        "{uri}"
    );
    assert_eq!(body["type"], "kubernetes.io/dockerconfigjson");
    let config: Value = serde_json::from_str(&decode(&body["data"], ".dockerconfigjson")).unwrap();
    let entry = &config["auths"]["registry.example.com"];
    assert_eq!(entry["username"], "robot");
    assert_eq!(entry["password"], "reg-tok");
    assert_eq!(entry["auth"], STANDARD.encode("robot:reg-tok"));
    send.send_response(echo(201, &body));
    write.await.unwrap().unwrap();
}

#[tokio::test]
async fn api_errors_become_clear_errors_and_reasons() {
    let cases = [
        (
            status(
                403,
                "Forbidden",
                "secrets \"orders-token\" is forbidden: User \"system:serviceaccount:team-a:agent\" cannot patch resource \"secrets\"",
                "secrets",
            ),
            "forbidden",
            "needs `get`, `create` and `patch` on `secrets` in namespace `team-a`",
        ),
        (
            status(
                404,
                "NotFound",
                "namespaces \"team-a\" not found",
                "namespaces",
            ),
            "namespace_not_found",
            "namespace `team-a` does not exist",
        ),
        (
            status(
                409,
                "AlreadyExists",
                "secrets \"orders-token\" already exists",
                "secrets",
            ),
            "conflict",
            "answered 409 AlreadyExists",
        ),
        (
            status(
                422,
                "Invalid",
                "Secret \"orders-token\" is invalid: data[tok-1]: Invalid value",
                "secrets",
            ),
            "invalid",
            "answered 422 Invalid",
        ),
        (
            status(429, "TooManyRequests", "too many requests", "secrets"),
            "throttled",
            "answered 429",
        ),
        (
            status(500, "InternalError", "etcd unavailable", "secrets"),
            "api_error",
            "answered 500",
        ),
    ];
    for (response, reason, want) in cases {
        let (kube, mut handle) = client();
        let s = sink("name: orders-token\n", &kube);
        let write =
            tokio::spawn(async move { s.write(&token("tok-1"), &InstanceId::single()).await });
        absent(
            &mut handle,
            "/api/v1/namespaces/team-a/secrets/orders-token",
        )
        .await;
        let (_, _, _, _, send) = next(&mut handle).await;
        send.send_response(response);
        let err = write.await.unwrap().unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
        assert!(err.to_string().contains(want), "want `{want}` in `{err}`");
        assert!(
            !err.to_string().contains("tok-1"),
            "the token is scrubbed from API messages: {err}"
        );
    }
}

#[tokio::test]
async fn removal_deletes_only_secrets_this_agent_made() {
    for (labels, source, deleted) in [
        (
            json!({"app.kubernetes.io/managed-by": "token-agent"}),
            "orders",
            true,
        ),
        (
            json!({"app.kubernetes.io/managed-by": "helm"}),
            "orders",
            false,
        ),
        (
            json!({"app.kubernetes.io/managed-by": "token-agent"}),
            "someone-else",
            false,
        ),
    ] {
        let (kube, mut handle) = client();
        let s = sink("name: 'mdsp-{tenant}'\n", &kube);
        let remove =
            tokio::spawn(async move { s.remove(&InstanceId::tenant("t1").unwrap()).await });
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method, uri.as_str()),
            (
                http::Method::GET,
                "/api/v1/namespaces/team-a/secrets/mdsp-t1"
            )
        );
        let existing = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mdsp-t1", "namespace": "team-a", "uid": "u-1", "labels": labels, "annotations": {"token-agent.io/source": source}}});
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&existing).unwrap()))
                .unwrap(),
        );
        if !deleted {
            // A wrong DELETE would wait for its answer forever: the removal must end without
            // sending anything after the GET.
            let ended = tokio::time::timeout(Duration::from_secs(2), remove).await;
            let result = ended.unwrap_or_else(|_| {
                panic!("{labels} / {source}: a second request (a DELETE?) was sent")
            });
            result.unwrap().unwrap();
            continue;
        }
        {
            let (method, uri, _, body, send) = next(&mut handle).await;
            assert_eq!(
                (method, uri.as_str()),
                (
                    http::Method::DELETE,
                    "/api/v1/namespaces/team-a/secrets/mdsp-t1?"
                )
            );
            assert_eq!(
                body["preconditions"]["uid"], "u-1",
                "deletes exactly the object it inspected"
            );
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&existing).unwrap()))
                    .unwrap(),
            );
        }
        remove.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_failing_secret_does_not_hold_back_the_file_sink() {
    let (kube, mut handle) = client();
    let issuer =
        token_agent::dev::issuer::Issuer::start("c", "s3cret-value", Duration::from_secs(60))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "allow_inline_secrets: true\ndefaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: s3cret-value\n    sinks:\n      - secret: {{ name: orders-token }}\n      - file: {{ path: orders.token }}\n",
        dir.path().display(),
        issuer.token_url()
    );
    let config = Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let agent = Agent::build_with(&config, Clock::system(), kube).unwrap();
    let view = agent.observability();
    let once = tokio::spawn(agent.once());
    let (_, _, _, _, send) = next(&mut handle).await;
    send.send_response(status(403, "Forbidden", "cannot patch", "secrets"));
    let outcome = once.await.unwrap().remove(0);
    assert!(outcome.result.is_err());
    assert!(
        std::fs::read_to_string(dir.path().join("orders.token"))
            .unwrap()
            .starts_with("ey"),
        "the file was written anyway"
    );
    let metrics = view.metrics.encode();
    assert!(metrics.contains("token_agent_sink_failures_total{reason=\"forbidden\",sink=\"secret:(own namespace)/orders-token\",source=\"orders\"} 1"), "{metrics}");
    assert!(
        !view.status.all_required_ready(SystemTime::now()),
        "readiness reflects the Secret too"
    );
}

#[test]
fn validate_catches_bad_secret_sinks() {
    let cases = [
        (
            "{ name: Orders_Token }",
            "sources[0].sinks[0].secret.name: `Orders_Token` is not a valid Secret name",
        ),
        (
            "{ name: ok, namespace: 'bad.ns' }",
            "secret.namespace: `bad.ns` is not a valid namespace name",
        ),
        (
            "{ name: ok, type: kubernetes.io/dockerconfigjson }",
            "secret.registry: `type: kubernetes.io/dockerconfigjson` needs",
        ),
        (
            "{ name: ok, registry: { server: r, username: u } }",
            "secret.registry: only applies to",
        ),
        (
            "{ name: ok, keys: { token: 'a/b' } }",
            "secret.keys: `a/b` is not a valid data key",
        ),
        (
            "{ name: ok, labels: { app.kubernetes.io/managed-by: me } }",
            "secret.labels: `app.kubernetes.io/managed-by` is set by the agent",
        ),
        ("{ name: ok, type: Bogus }", "unknown variant `Bogus`"),
    ];
    for (sink, want) in cases {
        let yaml = format!(
            "sources:\n  - name: s\n    kind: oauth2\n    token_url: https://x/t\n    auth: none\n    sinks:\n      - secret: {sink}\n"
        );
        let err = Config::parse(&yaml, Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want `{want}` in:\n{err}");
    }
}
