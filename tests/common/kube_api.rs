//! A stateful stand-in for the Kubernetes API server, for end-to-end tests of the binary
//! through a kubeconfig. It follows the real API for the calls token-agent makes: Secrets
//! (create, which answers `409 AlreadyExists` for an existing name; server-side apply with
//! `application/apply-patch+yaml` and `fieldManager`; get; delete with uid preconditions), ServiceAccount TokenRequests, and Leases with `resourceVersion`
//! optimistic locking — with real Status bodies (`NotFound`, `Forbidden`, `Conflict`, …) so
//! kube's `is_not_found()` and friends work. What it does not cover: field ownership merging
//! between several managers, admission, RBAC rules (403 is injected by the test), watches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub const TOKEN: &str = "standin-bearer-token";

#[derive(Default)]
pub struct Store {
    pub namespaces: BTreeSet<String>,
    /// (kind, namespace, name) → object
    pub objects: BTreeMap<(String, String, String), Value>,
    /// Every request: (method, path, query).
    pub log: Vec<(String, String, String)>,
}

#[derive(Clone)]
pub struct KubeApi {
    pub addr: SocketAddr,
    pub store: Arc<Mutex<Store>>,
    /// Answer 403 to Secret writes while set.
    pub forbid_secrets: Arc<AtomicBool>,
    /// Never answer Lease calls while set (a hung API server).
    pub hang_leases: Arc<AtomicBool>,
    version: Arc<AtomicU64>,
}

fn status(code: StatusCode, reason: &str, message: String, kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {"name": name, "kind": kind}, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// `404 NotFound` for `kind` (e.g. `secrets`, `leases.coordination.k8s.io`) named `name`.
fn not_found(kind: &str, name: &str) -> Response {
    let short = kind.split('.').next().unwrap_or(kind);
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
        short,
        name,
    )
}

impl KubeApi {
    pub async fn start(namespaces: &[&str]) -> KubeApi {
        let api = KubeApi {
            addr: "127.0.0.1:0".parse().unwrap(),
            store: Arc::new(Mutex::new(Store {
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
            forbid_secrets: Arc::default(),
            hang_leases: Arc::default(),
            version: Arc::new(AtomicU64::new(100)),
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/secrets", post(secret_create))
            .route("/api/v1/namespaces/{ns}/secrets/{name}", any(secret))
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                post(token_request),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(lease_create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                any(lease),
            )
            .route(
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
                any(webhook_config),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        KubeApi { addr, ..api }
    }

    /// A kubeconfig pointing at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\nusers:\n- name: agent\n  user:\n    token: {TOKEN}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: agent\n    namespace: {namespace}\ncurrent-context: standin\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Stores `object` as the test's setup (a chart would have created it).
    pub fn put(&self, kind: &str, ns: &str, name: &str, mut object: Value) {
        stamp(&mut object, None, self.next_version());
        self.store
            .lock()
            .unwrap()
            .objects
            .insert((kind.into(), ns.into(), name.into()), object);
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&(kind.into(), ns.into(), name.into()))
            .cloned()
    }

    fn next_version(&self) -> String {
        self.version.fetch_add(1, Ordering::SeqCst).to_string()
    }

    fn authorized(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        query: &BTreeMap<String, String>,
    ) -> bool {
        let mut store = self.store.lock().unwrap();
        let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        store
            .log
            .push((method.to_string(), path.to_owned(), q.join("&")));
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"))
    }
}

impl KubeApi {
    /// `403 Forbidden` for a Secret write while `forbid_secrets` is set.
    fn forbidden(&self, verb: &str, ns: &str, name: &str) -> Option<Response> {
        self.forbid_secrets.load(Ordering::SeqCst).then(|| {
            let message = format!(
                "secrets \"{name}\" is forbidden: User \"system:serviceaccount:{ns}:token-agent\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
            );
            status(StatusCode::FORBIDDEN, "Forbidden", message, "secrets", name)
        })
    }
}

/// `POST …/secrets`: creates, or `409 AlreadyExists` (never replaces).
async fn secret_create(
    State(api): State<KubeApi>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/namespaces/{ns}/secrets");
    if !api.authorized(&headers, &Method::POST, &path, &query) {
        return unauthorized();
    }
    if !api.store.lock().unwrap().namespaces.contains(&ns) {
        return not_found("namespaces", &ns);
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        let message = "error decoding JSON".to_owned();
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            message,
            "secrets",
            "",
        );
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(forbidden) = api.forbidden("create", &ns, &name) {
        return forbidden;
    }
    let key = ("Secret".to_owned(), ns.clone(), name.clone());
    let version = api.next_version();
    let mut store = api.store.lock().unwrap();
    if store.objects.contains_key(&key) {
        let message = format!("secrets \"{name}\" already exists");
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            message,
            "secrets",
            &name,
        );
    }
    stamp(&mut object, None, version);
    store.objects.insert(key, object.clone());
    (StatusCode::CREATED, Json(object)).into_response()
}

impl KubeApi {
    /// While `hang_leases` is set, a Lease call waits here for as long as a test runs.
    async fn maybe_hang(&self) {
        if self.hang_leases.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
}

fn unauthorized() -> Response {
    status(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Unauthorized".into(),
        "",
        "",
    )
}

/// Fills in the metadata the server owns.
fn stamp(object: &mut Value, existing: Option<&Value>, version: String) {
    let meta = &mut object["metadata"];
    let uid = existing
        .and_then(|e| e["metadata"]["uid"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("uid-{version}"));
    meta["uid"] = json!(uid);
    meta["resourceVersion"] = json!(version);
    meta["creationTimestamp"] = existing
        .map(|e| e["metadata"]["creationTimestamp"].clone())
        .unwrap_or(json!("2026-11-22T00:00:00Z"));
}

async fn secret(
    State(api): State<KubeApi>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if !api.authorized(
        &headers,
        &method,
        &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
        &query,
    ) {
        return unauthorized();
    }
    if !api.store.lock().unwrap().namespaces.contains(&ns) {
        return not_found("namespaces", &ns);
    }
    let key = ("Secret".to_owned(), ns.clone(), name.clone());
    match method {
        Method::GET => match api.get("Secret", &ns, &name) {
            Some(obj) => Json(obj).into_response(),
            None => not_found("secrets", &name),
        },
        Method::PATCH => {
            if let Some(forbidden) = api.forbidden("patch", &ns, &name) {
                return forbidden;
            }
            if headers.get("content-type").and_then(|v| v.to_str().ok())
                != Some("application/apply-patch+yaml")
            {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format".into(),
                    "secrets",
                    &name,
                );
            }
            if !query.contains_key("fieldManager") {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(), "secrets", &name);
            }
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "error decoding YAML".into(),
                    "secrets",
                    &name,
                );
            };
            if object["metadata"]["name"] != json!(name)
                || object["kind"] != "Secret"
                || object["apiVersion"] != "v1"
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name on the URL".into(),
                    "secrets",
                    &name,
                );
            }
            let version = api.next_version();
            let mut store = api.store.lock().unwrap();
            let existing = store.objects.get(&key).cloned();
            stamp(&mut object, existing.as_ref(), version);
            store.objects.insert(key, object.clone());
            let code = if existing.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (code, Json(object)).into_response()
        }
        Method::DELETE => {
            let precondition: Option<String> = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["preconditions"]["uid"].as_str().map(str::to_owned));
            let mut store = api.store.lock().unwrap();
            match store.objects.get(&key).cloned() {
                None => not_found("secrets", &name),
                Some(obj)
                    if precondition
                        .as_ref()
                        .is_some_and(|uid| obj["metadata"]["uid"] != json!(uid)) =>
                {
                    status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "Precondition failed: UID in precondition does not match".into(),
                        "secrets",
                        &name,
                    )
                }
                Some(obj) => {
                    store.objects.remove(&key);
                    Json(obj).into_response()
                }
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed".into(),
            "secrets",
            &name,
        ),
    }
}

async fn token_request(
    State(api): State<KubeApi>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    if !api.authorized(
        &headers,
        &Method::POST,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
        &BTreeMap::new(),
    ) {
        return unauthorized();
    }
    let has_sa = api.get("ServiceAccount", &ns, &name).is_some();
    if !has_sa {
        return not_found("serviceaccounts", &name);
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "error decoding".into(),
            "serviceaccounts",
            &name,
        );
    };
    let seconds = request["spec"]["expirationSeconds"]
        .as_u64()
        .unwrap_or(3600);
    if seconds < 600 {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes".into(), "serviceaccounts", &name);
    }
    let now = std::time::SystemTime::now();
    let expires = humantime::format_rfc3339_seconds(now + std::time::Duration::from_secs(seconds))
        .to_string();
    let n = api.next_version();
    let audiences = request["spec"]["audiences"].clone();
    let jwt = super::fake_jwt(
        json!({"sub": format!("system:serviceaccount:{ns}:{name}"), "aud": audiences, "exp": super::unix_now() + seconds, "n": n}),
    );
    request["status"] = json!({"token": jwt, "expirationTimestamp": expires});
    (StatusCode::CREATED, Json(request)).into_response()
}

async fn lease_create(
    State(api): State<KubeApi>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
    body: Bytes,
) -> Response {
    api.maybe_hang().await;
    if !api.authorized(
        &headers,
        &Method::POST,
        &format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"),
        &BTreeMap::new(),
    ) {
        return unauthorized();
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "error decoding".into(),
            "leases",
            "",
        );
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = ("Lease".to_owned(), ns.clone(), name.clone());
    let version = api.next_version();
    let mut store = api.store.lock().unwrap();
    if store.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
            "leases",
            &name,
        );
    }
    stamp(&mut object, None, version);
    store.objects.insert(key, object.clone());
    (StatusCode::CREATED, Json(object)).into_response()
}

async fn lease(
    State(api): State<KubeApi>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    api.maybe_hang().await;
    if !api.authorized(
        &headers,
        &method,
        &format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"),
        &BTreeMap::new(),
    ) {
        return unauthorized();
    }
    let key = ("Lease".to_owned(), ns.clone(), name.clone());
    match method {
        Method::GET => match api.get("Lease", &ns, &name) {
            Some(obj) => Json(obj).into_response(),
            None => not_found("leases.coordination.k8s.io", &name),
        },
        Method::PUT => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "error decoding".into(),
                    "leases",
                    &name,
                );
            };
            let version = api.next_version();
            let mut store = api.store.lock().unwrap();
            let Some(existing) = store.objects.get(&key).cloned() else {
                return not_found("leases.coordination.k8s.io", &name);
            };
            if object["metadata"]["resourceVersion"] != existing["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                    "leases",
                    &name,
                );
            }
            stamp(&mut object, Some(&existing), version);
            store.objects.insert(key, object.clone());
            Json(object).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed".into(),
            "leases",
            &name,
        ),
    }
}

/// A cluster-scoped MutatingWebhookConfiguration: GET, and PATCH with
/// `application/json-patch+json` (RFC 6902, `test` operations included, so a stale
/// resourceVersion in a `test` fails with 422 as on a real server).
async fn webhook_config(
    State(api): State<KubeApi>,
    method: Method,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let path =
        format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
    if !api.authorized(&headers, &method, &path, &BTreeMap::new()) {
        return unauthorized();
    }
    let kind = "mutatingwebhookconfigurations.admissionregistration.k8s.io";
    let Some(current) = api.get("MutatingWebhookConfiguration", "", &name) else {
        return not_found(kind, &name);
    };
    match method {
        Method::GET => Json(current).into_response(),
        Method::PATCH => {
            if headers.get("content-type").and_then(|v| v.to_str().ok())
                != Some("application/json-patch+json")
            {
                let message = "the body of the request was in an unknown format".into();
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    message,
                    kind,
                    &name,
                );
            }
            let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "error decoding patch".into(),
                    kind,
                    &name,
                );
            };
            let mut object = current.clone();
            if let Err(e) = json_patch::patch(&mut object, &patch) {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                    kind,
                    &name,
                );
            }
            stamp(&mut object, Some(&current), api.next_version());
            api.store.lock().unwrap().objects.insert(
                ("MutatingWebhookConfiguration".into(), String::new(), name),
                object.clone(),
            );
            Json(object).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed".into(),
            kind,
            &name,
        ),
    }
}
