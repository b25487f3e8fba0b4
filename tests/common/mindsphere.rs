//! A mock of the Token Management Service v3 written from seed 001 and
//! shared/vendor-apis.md §4: same paths, `X-SPACE-AUTH-KEY`, bodies, the 5-tenant batch limit,
//! 100-id pages with bearer auth from an operator token, and `errors[]` bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};

use super::{Mock, Recorded, Reply, fake_jwt, unix_now};

pub const BASE: &str = "/api/technicaltokenmanager/v3";

#[derive(Clone)]
pub struct MindSphere {
    pub client_id: &'static str,
    pub client_secret: &'static str,
    pub host_tenant: &'static str,
    /// Tenants that authorized the app, in listing order.
    pub tenants: Arc<Mutex<Vec<String>>>,
    /// Token lifetime in seconds (the service: 1800, reported as `expires_in: 1799`).
    pub lifetime: u64,
    /// `/oauthTokens` calls whose batch contains this tenant answer 500.
    pub failing_tenant: Arc<Mutex<Option<String>>>,
    /// The next N calls to a path (`/oauth/token`, `/oauthTokens`, `/userTenants`) answer 429
    /// with `Retry-After: retry_after` (see [`MindSphere::throttle`]).
    throttled: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    pub retry_after: u64,
    /// Operator tokens handed out (only those may list tenants).
    operator_tokens: Arc<Mutex<BTreeSet<String>>>,
    issued: Arc<AtomicUsize>,
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"errors": [{"code": code, "logref": "3f0c1a2b", "message": message}]}),
    )
}

impl MindSphere {
    pub fn new(tenants: &[&str]) -> MindSphere {
        MindSphere {
            client_id: "mdsp-client",
            client_secret: "mdsp-s3cret",
            host_tenant: "hosttenant",
            tenants: Arc::new(Mutex::new(tenants.iter().map(|t| t.to_string()).collect())),
            lifetime: 1800,
            failing_tenant: Arc::default(),
            throttled: Arc::default(),
            retry_after: 1,
            operator_tokens: Arc::default(),
            issued: Arc::default(),
        }
    }

    pub async fn start(&self) -> Mock {
        let me = self.clone();
        Mock::start(move |r| me.handle(r)).await
    }

    /// Answers the next `times` calls to `path` (below [`BASE`]) with 429.
    pub fn throttle(&self, path: &'static str, times: usize) {
        self.throttled.lock().unwrap().insert(path, times);
    }

    /// 429 with `Retry-After` if `path` is throttled (and one throttled call fewer).
    fn throttled(&self, path: &str) -> Option<Reply> {
        let mut throttled = self.throttled.lock().unwrap();
        let left = throttled.get_mut(path).filter(|n| **n > 0)?;
        *left -= 1;
        let mut reply = error(
            429,
            "mdsp.core.generic.tooManyRequests",
            "Too many requests",
        );
        reply
            .headers
            .push(("retry-after", self.retry_after.to_string()));
        Some(reply)
    }

    pub fn set_tenants(&self, tenants: &[&str]) {
        *self.tenants.lock().unwrap() = tenants.iter().map(|t| t.to_string()).collect();
    }

    /// The token object the service returns: `timestamp` lags a little behind "now" so that
    /// expiry computed from it differs from now + expires_in.
    fn token(&self, tenant: &str) -> Value {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let lag_ms = if self.lifetime > 60 { 5_000 } else { 0 };
        let issued_ms = unix_now() * 1000 - lag_ms;
        json!({
            "access_token": fake_jwt(json!({"ten": tenant, "n": n, "iat": issued_ms / 1000, "exp": issued_ms / 1000 + self.lifetime})),
            "token_type": "bearer",
            "timestamp": issued_ms.to_string(),
            "expires_in": self.lifetime - 1,
            "scope": "mdsp:core:Admin3rdPartyTechUser",
            "jti": format!("jti-{n}"),
        })
    }

    fn authorized(&self, r: &Recorded) -> bool {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.client_id, self.client_secret))
        );
        r.header("x-space-auth-key") == Some(want.as_str())
    }

    fn handle(&self, r: &Recorded) -> Reply {
        let path = r.path.strip_prefix(BASE).unwrap_or("");
        if let Some(reply) = self.throttled(path) {
            return reply;
        }
        match (r.method.as_str(), path) {
            ("POST", "/oauth/token") | ("POST", "/oauthTokens") => {
                if !self.authorized(r) {
                    return error(401, "mdsp.core.generic.unauthorized", "Not authorized");
                }
                if !r
                    .header("content-type")
                    .is_some_and(|c| c.starts_with("application/json"))
                {
                    return error(
                        415,
                        "mdsp.core.generic.unsupportedMediaType",
                        "Content type must be application/json",
                    );
                }
                let body = r.json();
                let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
                if text("appName").is_none() || text("appVersion").is_none() {
                    return error(
                        400,
                        "mdsp.core.generic.invalidParameter",
                        "appName and appVersion are required",
                    );
                }
                if path == "/oauth/token" {
                    self.single(&body)
                } else {
                    self.batch(&body)
                }
            }
            ("GET", "/userTenants") => self.list(r),
            _ => error(404, "mdsp.core.generic.notFound", "Not found"),
        }
    }

    fn single(&self, body: &Value) -> Reply {
        let host = body.get("hostTenant").and_then(Value::as_str);
        let user = body.get("userTenant").and_then(Value::as_str);
        let (Some(host), Some(user)) = (host, user) else {
            return error(
                400,
                "mdsp.core.generic.invalidParameter",
                "hostTenant and userTenant are required",
            );
        };
        if host != self.host_tenant {
            return error(403, "mdsp.core.generic.forbidden", "Unknown host tenant");
        }
        let known =
            user == self.host_tenant || self.tenants.lock().unwrap().iter().any(|t| t == user);
        if !known {
            return error(
                403,
                "mdsp.core.generic.forbidden",
                "Tenant has not authorized the application",
            );
        }
        let token = self.token(user);
        if user == self.host_tenant {
            self.operator_tokens
                .lock()
                .unwrap()
                .insert(token["access_token"].as_str().unwrap().to_owned());
        }
        Reply::json(200, token)
    }

    fn batch(&self, body: &Value) -> Reply {
        if body.get("hostTenantId").and_then(Value::as_str) != Some(self.host_tenant) {
            return error(403, "mdsp.core.generic.forbidden", "Unknown host tenant");
        }
        let Some(ids) = body.get("userTenantIds").and_then(Value::as_array) else {
            return error(
                400,
                "mdsp.core.generic.invalidParameter",
                "userTenantIds is required",
            );
        };
        if ids.is_empty() || ids.len() > 5 {
            return error(
                400,
                "mdsp.core.generic.invalidParameter",
                "userTenantIds must hold 1 to 5 tenants",
            );
        }
        let ids: Vec<&str> = ids.iter().filter_map(Value::as_str).collect();
        if let Some(bad) = self.failing_tenant.lock().unwrap().as_deref()
            && ids.contains(&bad)
        {
            return error(
                500,
                "mdsp.core.generic.internalServerError",
                "Internal error",
            );
        }
        let tenants = self.tenants.lock().unwrap().clone();
        let tokens: Vec<Value> = ids
            .iter()
            .filter(|id| tenants.iter().any(|t| t == *id))
            .map(|id| json!({"userTenantId": id, "token": self.token(id)}))
            .collect();
        Reply::json(200, json!({"oauthTokens": tokens}))
    }

    fn list(&self, r: &Recorded) -> Reply {
        let bearer = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "));
        if !bearer.is_some_and(|t| self.operator_tokens.lock().unwrap().contains(t)) {
            return error(
                401,
                "mdsp.core.generic.unauthorized",
                "A token of the operator tenant is required",
            );
        }
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(r.query.as_deref().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let get = |k: &str| {
            query
                .iter()
                .find(|(q, _)| q == k)
                .and_then(|(_, v)| v.parse::<usize>().ok())
        };
        // vendor-apis.md §4: `page` (0-based) and `size` (at most 100); the agent must say
        // how many it wants rather than rely on a default the seed does not state.
        let Some(size) = get("size") else {
            return error(
                400,
                "mdsp.core.generic.invalidParameter",
                "size is required",
            );
        };
        let page = get("page").unwrap_or(0);
        if size == 0 || size > 100 {
            return error(
                400,
                "mdsp.core.generic.invalidParameter",
                "size must be 1 to 100",
            );
        }
        let tenants = self.tenants.lock().unwrap().clone();
        let slice: Vec<Value> = tenants
            .iter()
            .skip(page * size)
            .take(size)
            .map(|t| json!({"id": t}))
            .collect();
        Reply::json(
            200,
            json!({
                "page": {"size": size, "totalElements": tenants.len(), "totalPages": tenants.len().div_ceil(size), "number": page},
                "userTenants": slice,
            }),
        )
    }
}
